//! Resolution: each setting from its flag, else its environment variable
//! (else its legacy variable), else its default; the row's rules for empty
//! values and its range applied; then the rules that involve two settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::table::{self as t, Default, Kind, Setting};
use super::HttpSettings;
use super::{
    check_token, join_host_port, parse_bool, read_token_file, AuthTokenProblem, ClusterConfig,
    Config, ConfigError, Effective, HttpConfig, Origin, RaftTlsConfig, TlsConfig,
};
use crate::logging::Format as LogFormat;

/// A value found on the command line or in the environment, not yet parsed.
struct Raw {
    value: String,
    origin: Origin,
}

/// Looks settings up and records what it found.
struct Resolver<'a> {
    flags: HashMap<&'static str, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
    effective: Vec<Effective>,
}

impl Resolver<'_> {
    /// The variable `var` of `s`, with the row's empty rule applied: an
    /// empty or blank value is unset, or an error for a security setting.
    fn env_var(&self, s: &Setting, var: &'static str) -> Result<Option<Raw>, ConfigError> {
        match (self.env)(var) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => {
                if s.security {
                    Err(ConfigError::EmptySecurity {
                        origin: Origin::Env(var),
                    })
                } else {
                    Ok(None)
                }
            }
            Some(value) => Ok(Some(Raw {
                value,
                origin: Origin::Env(var),
            })),
        }
    }

    /// The flag, else the variable, else the legacy variable (with a
    /// warning either way it is set); `None` means the default applies.
    fn lookup(&mut self, s: &'static Setting) -> Result<Option<Raw>, ConfigError> {
        let found = match self.flags.get(s.flag) {
            Some(value) => {
                if s.security && value.trim().is_empty() {
                    return Err(ConfigError::EmptySecurity {
                        origin: Origin::Flag(s.flag),
                    });
                }
                Some(Raw {
                    value: value.clone(),
                    origin: Origin::Flag(s.flag),
                })
            }
            None => self.env_var(s, s.env)?,
        };
        let Some(legacy) = s.legacy_env else {
            return Ok(found);
        };
        // A shadowed legacy value is not parsed, only named.
        let legacy_set = (self.env)(legacy).is_some_and(|v| !v.trim().is_empty());
        if !legacy_set {
            return Ok(found);
        }
        match found {
            Some(raw) => {
                self.warnings.push(format!(
                    "{legacy} is deprecated and ignored because {} is set; remove it",
                    raw.origin
                ));
                Ok(Some(raw))
            }
            None => {
                self.warnings
                    .push(format!("{legacy} is deprecated; rename it to {}", s.env));
                self.env_var(s, legacy)
            }
        }
    }

    fn record(&mut self, s: &'static Setting, value: String, origin: Origin) {
        let value = if s.kind == Kind::Secret && !origin.is_default() {
            "<set>".to_owned()
        } else {
            value
        };
        self.effective.push(Effective {
            setting: s,
            value,
            origin,
        });
    }

    fn int(&mut self, s: &'static Setting) -> Result<(u64, Origin), ConfigError> {
        let Kind::Int { min, max, rule } = s.kind else {
            panic!("--{} is not an integer setting", s.flag);
        };
        let (n, origin) = match self.lookup(s)? {
            None => (s.int_default(), Origin::Default(s.flag)),
            Some(Raw { value, origin }) => {
                let trimmed = value.trim();
                let Ok(n) = trimmed.parse::<i64>() else {
                    return Err(ConfigError::InvalidInteger { origin, value });
                };
                if n < min || n > max {
                    return Err(ConfigError::OutOfRange {
                        origin,
                        value: trimmed.to_owned(),
                        rule,
                    });
                }
                // The range check above guarantees 0 <= min <= n.
                let n = u64::try_from(n).map_err(|_| ConfigError::InvalidInteger {
                    origin,
                    value: value.clone(),
                })?;
                (n, origin)
            }
        };
        self.record(s, n.to_string(), origin);
        Ok((n, origin))
    }

    /// An integer row without a default: `None` when unset.
    fn opt_int(&mut self, s: &'static Setting) -> Result<Option<(u64, Origin)>, ConfigError> {
        debug_assert!(s.default == Default::Unset);
        if self.flags.contains_key(s.flag) || self.env_var(s, s.env)?.is_some() {
            return self.int(s).map(Some);
        }
        self.record(s, "unset".to_owned(), Origin::Default(s.flag));
        Ok(None)
    }

    /// A text row without a default: `None` when unset.
    fn opt_text(&mut self, s: &'static Setting) -> Result<Option<(String, Origin)>, ConfigError> {
        debug_assert!(s.default == Default::Unset);
        let found = self.lookup(s)?;
        match &found {
            Some(raw) => self.record(s, raw.value.clone(), raw.origin),
            None => self.record(s, "unset".to_owned(), Origin::Default(s.flag)),
        }
        Ok(found.map(|raw| (raw.value, raw.origin)))
    }

    fn count(&mut self, s: &'static Setting) -> Result<(usize, Origin), ConfigError> {
        let (n, origin) = self.int(s)?;
        match usize::try_from(n) {
            Ok(n) => Ok((n, origin)),
            Err(_) => Err(ConfigError::OutOfRange {
                origin,
                value: n.to_string(),
                rule: "must fit in this platform's usize",
            }),
        }
    }

    fn bool(&mut self, s: &'static Setting) -> Result<bool, ConfigError> {
        let (b, origin) = match self.lookup(s)? {
            None => (s.bool_default(), Origin::Default(s.flag)),
            Some(raw) => match parse_bool(&raw.value) {
                Some(b) => (b, raw.origin),
                None => {
                    return Err(ConfigError::InvalidBool {
                        origin: raw.origin,
                        value: raw.value,
                    })
                }
            },
        };
        self.record(s, b.to_string(), origin);
        Ok(b)
    }

    fn text(&mut self, s: &'static Setting) -> Result<(String, Origin), ConfigError> {
        let (text, origin) = match self.lookup(s)? {
            None => (s.text_default().to_owned(), Origin::Default(s.flag)),
            Some(raw) => (raw.value, raw.origin),
        };
        self.record(s, text.clone(), origin);
        Ok((text, origin))
    }

    fn choice(&mut self, s: &'static Setting) -> Result<&'static str, ConfigError> {
        let Kind::Choice(choices) = s.kind else {
            panic!("--{} is not a choice setting", s.flag);
        };
        let (word, origin) = match self.lookup(s)? {
            None => (s.text_default(), Origin::Default(s.flag)),
            Some(raw) => {
                let given = raw.value.trim().to_ascii_lowercase();
                match choices.iter().find(|c| **c == given) {
                    Some(c) => (*c, raw.origin),
                    None => {
                        return Err(ConfigError::InvalidChoice {
                            origin: raw.origin,
                            value: raw.value,
                            choices,
                        })
                    }
                }
            }
        };
        self.record(s, word.to_owned(), origin);
        Ok(word)
    }

    /// A path; `None` when unset (security rows refuse empty values in
    /// [`Resolver::lookup`]).
    fn path(&mut self, s: &'static Setting) -> Result<Option<(PathBuf, Origin)>, ConfigError> {
        debug_assert!(s.default == Default::Unset);
        let found = self.lookup(s)?;
        match &found {
            Some(raw) => self.record(s, raw.value.clone(), raw.origin),
            None => self.record(s, "unset".to_owned(), Origin::Default(s.flag)),
        }
        Ok(found.map(|raw| (PathBuf::from(raw.value), raw.origin)))
    }

    /// Auth token sources in v1.16 order, first found wins: `--auth-token`,
    /// `--auth-token-file`, `DFLOCKD_AUTH_TOKEN`, `DFLOCKD_AUTH_TOKEN_FILE`.
    /// Only the winning source is read; an empty one that is consulted is
    /// an error (an operator who set a token meant to require one).
    fn auth_token(&mut self) -> Result<Option<String>, ConfigError> {
        Ok(self
            .token(&t::AUTH_TOKEN, Some(&t::AUTH_TOKEN_FILE))?
            .map(|(token, _)| token))
    }

    /// A token and its file (if it has one), in the order of
    /// [`Resolver::auth_token`]; the token and where it came from.
    fn token(
        &mut self,
        token_s: &'static Setting,
        file_s: Option<&'static Setting>,
    ) -> Result<Option<(String, Origin)>, ConfigError> {
        let file_flag = file_s.and_then(|f| self.flags.get(f.flag).cloned());
        // (token, where the token came from, the file it was read from)
        let found = if let Some(raw) = self.flags.get(token_s.flag).cloned() {
            let origin = Origin::Flag(token_s.flag);
            if raw.trim().is_empty() {
                return Err(ConfigError::EmptySecurity { origin });
            }
            Some((check_token(&raw, origin, None)?, origin, None))
        } else if let (Some(file_s), Some(file)) = (file_s, file_flag) {
            let origin = Origin::Flag(file_s.flag);
            if file.trim().is_empty() {
                return Err(ConfigError::EmptySecurity { origin });
            }
            let token = read_token_file(Path::new(&file), origin)?;
            Some((token, origin, Some(file)))
        } else if let Some(raw) = self.env_var(token_s, token_s.env)? {
            Some((check_token(&raw.value, raw.origin, None)?, raw.origin, None))
        } else if let Some(raw) = match file_s {
            Some(f) => self.env_var(f, f.env)?,
            None => None,
        } {
            let token = read_token_file(Path::new(&raw.value), raw.origin)?;
            Some((token, raw.origin, Some(raw.value)))
        } else {
            None
        };
        let (token, origin, file) = match found {
            None => {
                self.record(token_s, "unset".to_owned(), Origin::Default(token_s.flag));
                (None, Origin::Default(token_s.flag), None)
            }
            Some((token, origin, file)) => {
                self.record(token_s, String::new(), origin);
                (Some(token), origin, file)
            }
        };
        if let Some(file_s) = file_s {
            match file {
                Some(path) => self.record(file_s, path, origin),
                None => self.record(file_s, "unset".to_owned(), Origin::Default(file_s.flag)),
            }
        }
        Ok(token.map(|t| (t, origin)))
    }
}

/// Resolves every setting, in table order, then the rules that involve two
/// settings.
pub(super) fn resolve(
    flags: HashMap<&'static str, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut r = Resolver {
        flags,
        env,
        warnings: Vec::new(),
        effective: Vec::new(),
    };

    let (host, _) = r.text(&t::HOST)?;
    let (port, _) = r.int(&t::PORT)?;
    let port = port_of(port);
    let (default_lease_ttl_s, _) = r.int(&t::DEFAULT_LEASE_TTL)?;
    let (lease_sweep_interval_s, _) = r.int(&t::LEASE_SWEEP_INTERVAL)?;
    let (gc_interval_s, _) = r.int(&t::GC_INTERVAL)?;
    let (gc_max_idle_s, _) = r.int(&t::GC_MAX_IDLE)?;
    let (max_locks, _) = r.count(&t::MAX_LOCKS)?;
    let (max_connections, _) = r.count(&t::MAX_CONNECTIONS)?;
    let (max_connections_per_ip, _) = r.count(&t::MAX_CONNECTIONS_PER_IP)?;
    let (max_waiters, _) = r.count(&t::MAX_WAITERS)?;
    let (max_subscriptions, _) = r.count(&t::MAX_SUBSCRIPTIONS)?;
    let (key_events, _) = r.count(&t::KEY_EVENTS)?;
    let (read_timeout_s, _) = r.int(&t::READ_TIMEOUT)?;
    let (write_timeout_s, _) = r.int(&t::WRITE_TIMEOUT)?;
    let (shutdown_timeout_s, _) = r.int(&t::SHUTDOWN_TIMEOUT)?;
    let (threads, _) = r.count(&t::THREADS)?;
    let (spin_us, _) = r.int(&t::SPIN_US)?;
    let auto_release_on_disconnect = r.bool(&t::AUTO_RELEASE_ON_DISCONNECT)?;

    let tls_cert = r.path(&t::TLS_CERT)?;
    let tls_key = r.path(&t::TLS_KEY)?;
    let tls = match (tls_cert, tls_key) {
        (Some((cert, _)), Some((key, _))) => Some(TlsConfig { cert, key }),
        (None, None) => None,
        (Some((_, given)), None) => {
            return Err(ConfigError::TlsIncomplete {
                given,
                missing: "--tls-key (DFLOCKD_TLS_KEY)",
            })
        }
        (None, Some((_, given))) => {
            return Err(ConfigError::TlsIncomplete {
                given,
                missing: "--tls-cert (DFLOCKD_TLS_CERT)",
            })
        }
    };
    let (tls_handshake_timeout_s, _) = r.int(&t::TLS_HANDSHAKE_TIMEOUT)?;

    let auth_token = r.auth_token()?;
    let fence_state_file = r.path(&t::FENCE_STATE_FILE)?.map(|(path, _)| path);
    let (fence_reserve, _) = r.int(&t::FENCE_RESERVE)?;

    let (http_port, http_port_origin) = r.int(&t::HTTP_PORT)?;
    let http_port = port_of(http_port);
    let (http_host, http_host_origin) = r.text(&t::HTTP_HOST)?;
    let (session_idle_timeout_s, idle_origin) = r.int(&t::HTTP_SESSION_IDLE_TIMEOUT)?;
    let (max_sessions, max_sessions_origin) = r.count(&t::HTTP_MAX_SESSIONS)?;
    let (max_sessions_per_ip, max_sessions_per_ip_origin) =
        r.count(&t::HTTP_MAX_SESSIONS_PER_IP)?;
    let (http_max_connections_per_ip, http_max_conns_origin) =
        r.count(&t::HTTP_MAX_CONNECTIONS_PER_IP)?;
    let (rate_limit_per_ip, rate_origin) = r.int(&t::HTTP_RATE_LIMIT_PER_IP)?;
    let (burst, burst_origin) = r.int(&t::HTTP_RATE_LIMIT_BURST)?;
    let (sse_ping_interval_s, ping_origin) = r.int(&t::HTTP_SSE_PING_INTERVAL)?;
    let (cors, cors_origin) = r.text(&t::HTTP_CORS_ALLOWED_ORIGINS)?;
    let cors_allowed_origins: Vec<String> = cors
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();

    let log_level = match r.choice(&t::LOG_LEVEL)? {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let log_format = match r.choice(&t::LOG_FORMAT)? {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let debug = r.bool(&t::DEBUG)?;
    let log_level = if debug {
        log_level.max(log::LevelFilter::Debug)
    } else {
        log_level
    };

    let (cluster, orphan_ttl_s, raft_tick_ms) =
        resolve_cluster(&mut r, fence_state_file.is_some())?;

    // Rules involving two settings.
    if http_port != 0 && http_port == port {
        return Err(ConfigError::HttpPortConflict {
            origin: http_port_origin,
            port,
        });
    }
    if sse_ping_interval_s > 0
        && session_idle_timeout_s > 0
        && sse_ping_interval_s >= session_idle_timeout_s
    {
        return Err(ConfigError::SsePingNotBelowIdle {
            ping: ping_origin,
            ping_s: sse_ping_interval_s,
            idle: idle_origin,
            idle_s: session_idle_timeout_s,
        });
    }

    // HTTP options other than the port do nothing while HTTP is off, as
    // upstream; say so instead of ignoring them silently.
    if http_port == 0 {
        let given = [
            (http_host_origin, &t::HTTP_HOST),
            (idle_origin, &t::HTTP_SESSION_IDLE_TIMEOUT),
            (max_sessions_origin, &t::HTTP_MAX_SESSIONS),
            (max_sessions_per_ip_origin, &t::HTTP_MAX_SESSIONS_PER_IP),
            (http_max_conns_origin, &t::HTTP_MAX_CONNECTIONS_PER_IP),
            (rate_origin, &t::HTTP_RATE_LIMIT_PER_IP),
            (burst_origin, &t::HTTP_RATE_LIMIT_BURST),
            (ping_origin, &t::HTTP_SSE_PING_INTERVAL),
            (cors_origin, &t::HTTP_CORS_ALLOWED_ORIGINS),
        ];
        for (origin, s) in given {
            if !origin.is_default() {
                r.warnings.push(format!(
                    "{} has no effect while --http-port is 0 (HTTP API off)",
                    origin.with_flag(s.flag)
                ));
            }
        }
    }

    let http_host = if http_host.is_empty() {
        host.clone()
    } else {
        http_host
    };
    let http = HttpConfig {
        port: http_port,
        settings: HttpSettings {
            listen: join_host_port(&http_host, http_port),
            session_idle_timeout_s,
            max_sessions,
            max_sessions_per_ip,
            max_connections_per_ip: http_max_connections_per_ip,
            rate_limit_per_ip,
            rate_limit_burst: if burst == 0 { rate_limit_per_ip } else { burst },
            cors_allowed_origins,
            sse_ping_interval_s,
        },
        host: http_host,
    };

    Ok(Config {
        host,
        port,
        default_lease_ttl_s,
        lease_sweep_interval_s,
        gc_interval_s,
        gc_max_idle_s,
        max_locks,
        max_connections,
        max_connections_per_ip,
        threads,
        spin_us,
        max_waiters,
        max_subscriptions,
        key_events,
        read_timeout_s,
        write_timeout_s,
        shutdown_timeout_s,
        auto_release_on_disconnect,
        tls,
        tls_handshake_timeout_s,
        auth_token,
        fence_state_file,
        fence_reserve,
        http,
        log_level,
        log_format,
        debug,
        cluster,
        orphan_ttl_s,
        raft_tick_ms,
        effective: r.effective,
        warnings: r.warnings,
    })
}

fn port_of(value: u64) -> u16 {
    // The row's range (0-65535) was checked first, so it always fits.
    u16::try_from(value).unwrap_or(u16::MAX)
}

/// The cluster rows (spec/cluster.md §9), validated together when
/// `--raft-dir` is set; without it, each one given is a warning.
fn resolve_cluster(
    r: &mut Resolver<'_>,
    fence_state_file: bool,
) -> Result<(Option<ClusterConfig>, u64, u64), ConfigError> {
    let raft_dir = r.path(&t::RAFT_DIR)?;
    let node_id = r.opt_int(&t::NODE_ID)?;
    let raft_addr = r.opt_text(&t::RAFT_ADDR)?;
    let peers = r.opt_text(&t::CLUSTER_PEERS)?;
    let advertise = r.opt_text(&t::ADVERTISE_ADDR)?;
    let token = r.token(&t::RAFT_AUTH_TOKEN, Some(&t::RAFT_AUTH_TOKEN_FILE))?;
    let tls_cert = r.path(&t::RAFT_TLS_CERT)?;
    let tls_key = r.path(&t::RAFT_TLS_KEY)?;
    let tls_ca = r.path(&t::RAFT_TLS_CA)?;
    let admin = r.token(&t::ADMIN_TOKEN, None)?;
    let (orphan_ttl_s, orphan_origin) = r.int(&t::ORPHAN_TTL)?;
    let (tick_ms, tick_origin) = r.int(&t::RAFT_TICK)?;
    let join = r.bool(&t::JOIN)?;

    let Some((raft_dir, _)) = raft_dir else {
        let given = [
            node_id.map(|(_, o)| (o, &t::NODE_ID)),
            raft_addr.as_ref().map(|(_, o)| (*o, &t::RAFT_ADDR)),
            peers.as_ref().map(|(_, o)| (*o, &t::CLUSTER_PEERS)),
            advertise.as_ref().map(|(_, o)| (*o, &t::ADVERTISE_ADDR)),
            token.as_ref().map(|(_, o)| (*o, &t::RAFT_AUTH_TOKEN)),
            tls_cert.as_ref().map(|(_, o)| (*o, &t::RAFT_TLS_CERT)),
            tls_key.as_ref().map(|(_, o)| (*o, &t::RAFT_TLS_KEY)),
            tls_ca.as_ref().map(|(_, o)| (*o, &t::RAFT_TLS_CA)),
            admin.as_ref().map(|(_, o)| (*o, &t::ADMIN_TOKEN)),
            (!orphan_origin.is_default()).then_some((orphan_origin, &t::ORPHAN_TTL)),
            (!tick_origin.is_default()).then_some((tick_origin, &t::RAFT_TICK)),
        ];
        for (origin, s) in given.into_iter().flatten() {
            r.warnings.push(format!(
                "{} has no effect without --raft-dir (cluster mode off)",
                origin.with_flag(s.flag)
            ));
        }
        if join {
            r.warnings
                .push("--join has no effect without --raft-dir (cluster mode off)".into());
        }
        return Ok((None, orphan_ttl_s, tick_ms));
    };
    if fence_state_file {
        let origin = if r.flags.contains_key(t::FENCE_STATE_FILE.flag) {
            Origin::Flag(t::FENCE_STATE_FILE.flag)
        } else {
            Origin::Env(t::FENCE_STATE_FILE.env)
        };
        return Err(ConfigError::FenceFileInCluster { origin });
    }
    let missing = |what| ConfigError::ClusterMissing { missing: what };
    let (node_id, node_origin) = node_id.ok_or(missing("--node-id (DFLOCKD_NODE_ID)"))?;
    let (raft_addr, raft_addr_origin) =
        raft_addr.ok_or(missing("--raft-addr (DFLOCKD_RAFT_ADDR)"))?;
    let (peers, peers_origin) = peers.ok_or(missing("--cluster-peers (DFLOCKD_CLUSTER_PEERS)"))?;
    let raft_addr =
        crate::cluster::check_addr(raft_addr.trim()).map_err(|_| ConfigError::ClusterAddr {
            origin: raft_addr_origin,
            value: raft_addr.clone(),
        })?;
    let advertise_addr =
        match advertise {
            None => None,
            Some((a, origin)) => Some(crate::cluster::check_addr(a.trim()).map_err(|_| {
                ConfigError::ClusterAddr {
                    origin,
                    value: a.clone(),
                }
            })?),
        };
    let peers = crate::cluster::parse_peers(&peers).map_err(|e| ConfigError::ClusterPeers {
        origin: peers_origin,
        problem: e.to_string(),
    })?;
    if !peers.iter().any(|p| p.id == node_id) {
        return Err(ConfigError::ClusterPeers {
            origin: peers_origin,
            problem: format!(
                "does not list this member ({} is {node_id})",
                node_origin.with_flag(t::NODE_ID.flag)
            ),
        });
    }
    let raft_auth_token = match token {
        Some((tok, origin)) if tok.len() < crate::cluster::transport::MIN_TOKEN_BYTES => {
            return Err(ConfigError::AuthToken {
                origin,
                file: None,
                problem: AuthTokenProblem::TooShort,
            })
        }
        Some((tok, _)) => Some(tok),
        None => None,
    };
    let raft_tls = match (tls_cert, tls_key, tls_ca) {
        (None, None, None) => None,
        (Some((cert, _)), Some((key, _)), Some((ca, _))) => Some(RaftTlsConfig { cert, key, ca }),
        (cert, key, ca) => {
            let given = [&cert, &key, &ca]
                .into_iter()
                .flatten()
                .map(|(_, o)| *o)
                .next()
                .expect("one is set");
            let missing = if cert.is_none() {
                "--raft-tls-cert (DFLOCKD_RAFT_TLS_CERT)"
            } else if key.is_none() {
                "--raft-tls-key (DFLOCKD_RAFT_TLS_KEY)"
            } else {
                "--raft-tls-ca (DFLOCKD_RAFT_TLS_CA)"
            };
            return Err(ConfigError::RaftTlsIncomplete { given, missing });
        }
    };
    if raft_auth_token.is_none() && raft_tls.is_none() {
        return Err(ConfigError::RaftAuthMissing);
    }
    let cluster = ClusterConfig {
        raft_dir,
        node_id,
        raft_addr,
        peers,
        advertise_addr,
        raft_auth_token,
        raft_tls,
        admin_token: admin.map(|(t, _)| t),
        join,
    };
    Ok((Some(cluster), orphan_ttl_s, tick_ms))
}
