//! The configuration rules, table-driven where the settings table allows:
//! every integer row is checked for its default, precedence, range and
//! error texts without being listed here.

use super::table::{Kind, SETTINGS};
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Config::from_args_and_env(&args, &lookup)
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    match run(args, env) {
        Ok(Parsed::Run(cfg)) => cfg,
        other => panic!("args {args:?} env {env:?}: expected a config, got {other:?}"),
    }
}

/// One field of a config rendered as text, for table-driven checks.
fn field(cfg: &Config, name: &str) -> String {
    match name {
        "host" => cfg.host.clone(),
        "port" => cfg.port.to_string(),
        "default_lease_ttl_s" => cfg.default_lease_ttl_s.to_string(),
        "lease_sweep_interval_s" => cfg.lease_sweep_interval_s.to_string(),
        "gc_interval_s" => cfg.gc_interval_s.to_string(),
        "gc_max_idle_s" => cfg.gc_max_idle_s.to_string(),
        "max_locks" => cfg.max_locks.to_string(),
        "max_connections" => cfg.max_connections.to_string(),
        "max_connections_per_ip" => cfg.max_connections_per_ip.to_string(),
        "max_waiters" => cfg.max_waiters.to_string(),
        "max_subscriptions" => cfg.max_subscriptions.to_string(),
        "read_timeout_s" => cfg.read_timeout_s.to_string(),
        "write_timeout_s" => cfg.write_timeout_s.to_string(),
        "shutdown_timeout_s" => cfg.shutdown_timeout_s.to_string(),
        "auto_release" => cfg.auto_release_on_disconnect.to_string(),
        "tls" => cfg.tls.as_ref().map_or_else(
            || "none".to_owned(),
            |t| format!("{},{}", t.cert.display(), t.key.display()),
        ),
        "auth_token" => cfg.auth_token.clone().unwrap_or_else(|| "none".to_owned()),
        "fence_state_file" => cfg
            .fence_state_file
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        "http_port" => cfg.http.port.to_string(),
        "http_host" => cfg.http.host.clone(),
        "http_idle_s" => cfg.http.settings.session_idle_timeout_s.to_string(),
        "http_max_sessions" => cfg.http.settings.max_sessions.to_string(),
        "http_max_sessions_per_ip" => cfg.http.settings.max_sessions_per_ip.to_string(),
        "http_max_connections_per_ip" => cfg.http.settings.max_connections_per_ip.to_string(),
        "http_rate" => cfg.http.settings.rate_limit_per_ip.to_string(),
        "http_burst" => cfg.http.settings.rate_limit_burst.to_string(),
        "http_sse_ping_s" => cfg.http.settings.sse_ping_interval_s.to_string(),
        "cors" => cfg.http.settings.cors_allowed_origins.join("|"),
        "debug" => cfg.debug.to_string(),
        "log_level" => cfg.log_level.as_str().to_ascii_lowercase(),
        "log_format" => format!("{:?}", cfg.log_format).to_ascii_lowercase(),
        "tls_handshake_timeout_s" => cfg.tls_handshake_timeout_s.to_string(),
        "fence_reserve" => cfg.fence_reserve.to_string(),
        "warnings" => cfg.warnings.len().to_string(),
        "listen" => cfg.listen_addr(),
        "unsupported" => if cfg.unsupported().is_some() {
            "yes"
        } else {
            "no"
        }
        .to_owned(),
        flag => match int_field(cfg, flag) {
            Some(n) => n.to_string(),
            None => panic!("unknown field {name}"),
        },
    }
}

/// The field an integer setting fills, by its flag: the one place the
/// tests map rows to fields, so a row without a field fails
/// [`every_integer_row_fills_a_field`].
fn int_field(cfg: &Config, flag: &str) -> Option<u64> {
    let h = &cfg.http.settings;
    Some(match flag {
        "port" => cfg.port.into(),
        "default-lease-ttl" => cfg.default_lease_ttl_s,
        "lease-sweep-interval" => cfg.lease_sweep_interval_s,
        "gc-interval" => cfg.gc_interval_s,
        "gc-max-idle" => cfg.gc_max_idle_s,
        "max-locks" => cfg.max_locks as u64,
        "max-connections" => cfg.max_connections as u64,
        "max-connections-per-ip" => cfg.max_connections_per_ip as u64,
        "threads" => cfg.threads as u64,
        "spin-us" => cfg.spin_us,
        "max-waiters" => cfg.max_waiters as u64,
        "max-subscriptions" => cfg.max_subscriptions as u64,
        "key-events" => cfg.key_events as u64,
        "read-timeout" => cfg.read_timeout_s,
        "write-timeout" => cfg.write_timeout_s,
        "shutdown-timeout" => cfg.shutdown_timeout_s,
        "tls-handshake-timeout" => cfg.tls_handshake_timeout_s,
        "fence-reserve" => cfg.fence_reserve,
        "http-port" => cfg.http.port.into(),
        "http-session-idle-timeout" => h.session_idle_timeout_s,
        "http-max-sessions" => h.max_sessions as u64,
        "http-max-sessions-per-ip" => h.max_sessions_per_ip as u64,
        "http-max-connections-per-ip" => h.max_connections_per_ip as u64,
        "http-rate-limit-per-ip" => h.rate_limit_per_ip,
        "http-rate-limit-burst" => h.rate_limit_burst,
        "http-sse-ping-interval" => h.sse_ping_interval_s,
        "orphan-ttl" => cfg.orphan_ttl_s,
        "raft-tick" => cfg.raft_tick_ms,
        _ => return None,
    })
}

/// The one checker. `expect` is one of:
/// * `error: <text>`: fails, and the error displays exactly as `<text>`;
/// * `error^ <text>`: fails, and the error display starts with `<text>`;
/// * `exit <code>: <text>`: asks to exit, and the output contains `<text>`;
/// * `field=value ...`: succeeds with those fields (see [`field`]).
fn check(args: &[&str], env: &[(&str, &str)], expect: &str) {
    let got = run(args, env);
    let ctx = format!("args {args:?} env {env:?}");
    if let Some(want) = expect.strip_prefix("error: ") {
        match got {
            Err(e) => assert_eq!(e.to_string(), want, "{ctx}"),
            Ok(p) => panic!("{ctx}: expected error {want:?}, got {p:?}"),
        }
    } else if let Some(want) = expect.strip_prefix("error^ ") {
        match got {
            Err(e) => assert!(e.to_string().starts_with(want), "{ctx}: {e:?} vs {want:?}"),
            Ok(p) => panic!("{ctx}: expected error {want:?}, got {p:?}"),
        }
    } else if let Some(rest) = expect.strip_prefix("exit ") {
        let (want_code, want_text) = rest.split_once(": ").unwrap_or((rest, ""));
        match got {
            Ok(Parsed::Exit { code, output }) => {
                assert_eq!(code.to_string(), want_code, "{ctx}");
                assert!(
                    output.contains(want_text),
                    "{ctx}: {output:?} lacks {want_text:?}"
                );
            }
            other => panic!("{ctx}: expected exit, got {other:?}"),
        }
    } else {
        let cfg = match got {
            Ok(Parsed::Run(cfg)) => cfg,
            other => panic!("{ctx}: expected a config, got {other:?}"),
        };
        for pair in expect.split_whitespace() {
            let (name, want) = pair.split_once('=').unwrap_or((pair, ""));
            assert_eq!(field(&cfg, name), want, "{ctx}: field {name}");
        }
    }
}

type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

fn check_all(cases: &[Case<'_>]) {
    for (args, env, expect) in cases {
        check(args, env, expect);
    }
}

/// Every integer row: (`--flag`, variable, flag name for [`field`],
/// default, min, max, rule).
fn ints() -> Vec<(
    String,
    &'static str,
    &'static str,
    u64,
    i64,
    i64,
    &'static str,
)> {
    SETTINGS
        .iter()
        // Rows without a default (a member's id) are checked by the
        // cluster tests.
        .filter(|s| s.default != table::Default::Unset)
        .filter_map(|s| match s.kind {
            Kind::Int { min, max, rule } => {
                Some((s.dashed(), s.env, s.flag, s.int_default(), min, max, rule))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn every_integer_row_fills_a_field() {
    let cfg = config(&[], &[]);
    for (flag, _, name, default, ..) in ints() {
        assert_eq!(int_field(&cfg, name), Some(default), "{flag}");
    }
    assert!(ints().len() >= 20);
}

#[test]
fn defaults() {
    check(
        &[],
        &[],
        "host=127.0.0.1 port=6388 default_lease_ttl_s=33 lease_sweep_interval_s=1 \
         gc_interval_s=5 gc_max_idle_s=60 max_locks=1024 max_connections=0 \
         max_connections_per_ip=0 max_waiters=0 max_subscriptions=0 read_timeout_s=23 \
         write_timeout_s=5 shutdown_timeout_s=30 auto_release=true tls=none auth_token=none \
         fence_state_file=none http_port=0 http_host=127.0.0.1 http_idle_s=20 \
         http_max_sessions=0 http_max_sessions_per_ip=0 http_max_connections_per_ip=0 \
         http_rate=0 http_burst=0 http_sse_ping_s=15 cors= debug=false warnings=0 \
         listen=127.0.0.1:6388 unsupported=no log_level=info log_format=text \
         tls_handshake_timeout_s=5 fence_reserve=1048576",
    );
    for (_, _, name, default, ..) in ints() {
        check(&[], &[], &format!("{name}={default}"));
    }
}

#[test]
fn integer_precedence_flag_then_env_then_default() {
    for (flag, var, name, default, ..) in ints() {
        let (flag, var) = (flag.as_str(), var);
        // Empty or blank: unset (not a security setting).
        check(&[], &[(var, "")], &format!("{name}={default}"));
        check(&[], &[(var, " \t ")], &format!("{name}={default}"));
        check(&[], &[(var, "17")], &format!("{name}=17"));
        check(&[], &[(var, " 17 ")], &format!("{name}=17"));
        check(&[flag, "19"], &[], &format!("{name}=19"));
        check(&[flag, "19"], &[(var, "17")], &format!("{name}=19"));
        // A flag wins even over a broken environment value.
        check(&[flag, "19"], &[(var, "junk")], &format!("{name}=19"));
    }
}

#[test]
fn integer_errors_name_their_source() {
    let too_big = "9223372036854775808";
    for (flag, var, _, _, min, max, rule) in ints() {
        let flag = flag.as_str();
        let below = (min - 1).to_string();
        let below = below.as_str();
        let above = (max < i64::MAX).then(|| (max + 1).to_string());
        let above = above.as_deref();
        let eq = |v: &str| format!("{flag}={v}");
        check(
            &[flag, "abc"],
            &[],
            &format!("error: {flag}: invalid integer \"abc\""),
        );
        check(
            &[flag, ""],
            &[],
            &format!("error: {flag}: invalid integer \"\""),
        );
        check(
            &[&eq(too_big)],
            &[],
            &format!("error: {flag}: invalid integer \"{too_big}\""),
        );
        check(
            &[&eq(below)],
            &[],
            &format!("error: {flag}: {rule}, got {below}"),
        );
        check(
            &[],
            &[(var, "abc")],
            &format!("error: {var}: invalid integer \"abc\""),
        );
        check(
            &[],
            &[(var, "1.5")],
            &format!("error: {var}: invalid integer \"1.5\""),
        );
        check(
            &[],
            &[(var, "0x10")],
            &format!("error: {var}: invalid integer \"0x10\""),
        );
        check(
            &[],
            &[(var, too_big)],
            &format!("error: {var}: invalid integer \"{too_big}\""),
        );
        check(
            &[],
            &[(var, below)],
            &format!("error: {var}: {rule}, got {below}"),
        );
        if let Some(above) = above {
            check(
                &[flag, above],
                &[],
                &format!("error: {flag}: {rule}, got {above}"),
            );
            check(
                &[],
                &[(var, above)],
                &format!("error: {var}: {rule}, got {above}"),
            );
        }
    }
}

#[test]
#[rustfmt::skip]
fn durations_up_to_the_go_limit() {
    check_all(&[
        (&["--read-timeout", "9223372036"], &[], "read_timeout_s=9223372036"),
        (&["--default-lease-ttl", "9223372036"], &[], "default_lease_ttl_s=9223372036"),
        (&["--shutdown-timeout", "0"], &[], "shutdown_timeout_s=0"),
        (&["--write-timeout", "0"], &[], "write_timeout_s=0"),
        (&["--gc-max-idle", "0"], &[], "gc_max_idle_s=0"),
        (&["--read-timeout", "9223372037"], &[], "error: --read-timeout: must be between 1 and 9223372036 seconds, got 9223372037"),
        (&[], &[("DFLOCKD_SHUTDOWN_TIMEOUT_S", "99999999999")], "error: DFLOCKD_SHUTDOWN_TIMEOUT_S: must be between 0 and 9223372036 seconds, got 99999999999"),
        (&[], &[("DFLOCKD_GC_MAX_IDLE_S", "9223372036854775807")], "error: DFLOCKD_GC_MAX_IDLE_S: must be between 0 and 9223372036 seconds, got 9223372036854775807"),
    ]);
}

#[test]
#[rustfmt::skip]
fn flag_syntax_forms() {
    check_all(&[
        (&["--port", "7000"], &[], "port=7000"),
        (&["--port=7000"], &[], "port=7000"),
        (&["-port", "7000"], &[], "port=7000"),
        (&["-port=7000"], &[], "port=7000"),
        (&["--port", "1", "--port", "2"], &[], "port=2"),
        (&["--port=1", "-port", "2", "--port=3"], &[], "port=3"),
        (&["--auth-token=-dash-token"], &[], "auth_token=-dash-token"),
        (&["--auth-token", "-dash-token"], &[], "auth_token=-dash-token"),
        (&["--auth-token=a=b"], &[], "auth_token=a=b"),
        (&["--max-waiters", "5", "--"], &[], "max_waiters=5"),
        (&["---port", "1"], &[], "error: bad flag syntax: \"---port\""),
        (&["--=1"], &[], "error: bad flag syntax: \"--=1\""),
        (&["-"], &[], "error: unexpected argument \"-\": dflockd takes only flags (see --help)"),
        (&["serve"], &[], "error: unexpected argument \"serve\": dflockd takes only flags (see --help)"),
        (&["--", "x"], &[], "error: unexpected argument \"x\": dflockd takes only flags (see --help)"),
        (&["--port"], &[], "error: flag needs a value: --port (see --help)"),
        (&["--auth-token"], &[], "error: flag needs a value: --auth-token (see --help)"),
        (&["--bogus"], &[], "error: unknown flag --bogus (see --help)"),
        (&["-bogus=1"], &[], "error: unknown flag --bogus (see --help)"),
        (&["--bogus", "1"], &[], "error: unknown flag --bogus (see --help)"),
        (&["--Port", "1"], &[], "error: unknown flag --Port (see --help)"),
    ]);
}

#[test]
#[rustfmt::skip]
fn bool_forms() {
    const BAD: &str = "(use true/false, 1/0 or yes/no)";
    check_all(&[
        (&["--debug"], &[], "debug=true"),
        (&["-debug"], &[], "debug=true"),
        (&["--debug=true"], &[], "debug=true"),
        (&["--debug=false"], &[], "debug=false"),
        (&["--debug", "false"], &[], "debug=false"),
        (&["--debug", "FALSE"], &[], "debug=false"),
        (&["--debug=0"], &[], "debug=false"),
        (&["--debug=no"], &[], "debug=false"),
        (&["--debug=t"], &[], "debug=true"),
        (&["--debug", "--port", "7"], &[], "debug=true port=7"),
        (&["--port", "7", "--debug"], &[], "debug=true port=7"),
        (&["--auto-release-on-disconnect=false"], &[], "auto_release=false"),
        (&["--auto-release-on-disconnect", "false"], &[], "auto_release=false"),
        (&["--auto-release-on-disconnect"], &[], "auto_release=true"),
        (&["--auto-release-on-disconnect"], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "no")], "auto_release=true"),
        (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "no")], "auto_release=false"),
        (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "0")], "auto_release=false"),
        (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "False")], "auto_release=false"),
        (&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "")], "auto_release=true"),
        (&[], &[("DFLOCKD_DEBUG", "YES")], "debug=true"),
        (&[], &[("DFLOCKD_DEBUG", "1")], "debug=true"),
        (&["--debug=false"], &[("DFLOCKD_DEBUG", "true")], "debug=false"),
    ]);
    check(&["--debug=maybe"], &[], &format!("error: --debug: invalid boolean \"maybe\" {BAD}"));
    check(&["--debug="], &[], &format!("error: --debug: invalid boolean \"\" {BAD}"));
    check(&["--auto-release-on-disconnect=2"], &[], &format!("error: --auto-release-on-disconnect: invalid boolean \"2\" {BAD}"));
    check(&[], &[("DFLOCKD_DEBUG", "maybe")], &format!("error: DFLOCKD_DEBUG: invalid boolean \"maybe\" {BAD}"));
    check(&[], &[("DFLOCKD_AUTO_RELEASE_ON_DISCONNECT", "on")], &format!("error: DFLOCKD_AUTO_RELEASE_ON_DISCONNECT: invalid boolean \"on\" {BAD}"));
    // A bare boolean does not swallow a word that is not a boolean.
    check(&["--debug", "maybe"], &[], "error: unexpected argument \"maybe\": dflockd takes only flags (see --help)");
}

#[test]
#[rustfmt::skip]
fn strings_and_lists() {
    check_all(&[
        (&[], &[("DFLOCKD_HOST", "0.0.0.0")], "host=0.0.0.0 listen=0.0.0.0:6388 http_host=0.0.0.0"),
        (&["--host", "10.0.0.1"], &[("DFLOCKD_HOST", "0.0.0.0")], "host=10.0.0.1"),
        (&["--host", ""], &[("DFLOCKD_HOST", "0.0.0.0")], "host= listen=0.0.0.0:6388"),
        (&["--host", "::1"], &[], "host=::1 listen=[::1]:6388"),
        (&["--host", "fe80::1%eth0"], &[], "listen=[fe80::1%eth0]:6388"),
        (&["--host", "[::1]"], &[], "listen=[::1]:6388"),
        (&["--host", "localhost", "--port", "0"], &[], "listen=localhost:0"),
        (&["--http-host", "::"], &[], "http_host=:: host=127.0.0.1 warnings=1"),
        (&[], &[("DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS", " https://a.example, ,https://b.example,,")], "cors=https://a.example|https://b.example"),
        (&["--http-cors-allowed-origins", "*"], &[], "cors=*"),
        (&["--http-cors-allowed-origins", ",, ,"], &[], "cors="),
        (&["--fence-state-file", "/var/lib/dflockd/fence"], &[], "fence_state_file=/var/lib/dflockd/fence"),
        (&[], &[("DFLOCKD_FENCE_STATE_FILE", "/tmp/f")], "fence_state_file=/tmp/f"),
        (&["--fence-state-file", "/a"], &[("DFLOCKD_FENCE_STATE_FILE", "/b")], "fence_state_file=/a"),
        (&["--http-rate-limit-per-ip", "50"], &[], "http_rate=50 http_burst=50"),
        (&["--http-rate-limit-per-ip", "50", "--http-rate-limit-burst", "7"], &[], "http_rate=50 http_burst=7"),
    ]);
}

#[test]
#[rustfmt::skip]
fn legacy_gc_variables() {
    check_all(&[
        (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=7 warnings=1"),
        (&[], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "0")], "gc_max_idle_s=0 warnings=1"),
        (&[], &[("DFLOCKD_GC_INTERVAL_S", "8"), ("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=8 warnings=1"),
        (&["--gc-interval", "9"], &[("DFLOCKD_GC_LOOP_SLEEP", "7")], "gc_interval_s=9 warnings=1"),
        (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "")], "gc_interval_s=5 warnings=0"),
        // A shadowed legacy value is not parsed.
        (&[], &[("DFLOCKD_GC_MAX_IDLE_S", "1"), ("DFLOCKD_GC_MAX_UNUSED_TIME", "x")], "gc_max_idle_s=1 warnings=1"),
        (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "x")], "error: DFLOCKD_GC_LOOP_SLEEP: invalid integer \"x\""),
        (&[], &[("DFLOCKD_GC_LOOP_SLEEP", "0")], "error: DFLOCKD_GC_LOOP_SLEEP: must be between 1 and 9223372036 seconds, got 0"),
        (&[], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "-1")], "error: DFLOCKD_GC_MAX_UNUSED_TIME: must be between 0 and 9223372036 seconds, got -1"),
    ]);
    let cfg = config(&[], &[("DFLOCKD_GC_LOOP_SLEEP", "7")]);
    assert_eq!(cfg.warnings, ["DFLOCKD_GC_LOOP_SLEEP is deprecated; rename it to DFLOCKD_GC_INTERVAL_S"]);
    let cfg = config(&["--gc-max-idle", "3"], &[("DFLOCKD_GC_MAX_UNUSED_TIME", "7")]);
    assert_eq!(cfg.warnings, ["DFLOCKD_GC_MAX_UNUSED_TIME is deprecated and ignored because --gc-max-idle is set; remove it"]);
}

/// A scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("dflockd-config-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write temp file");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The text of [`ConfigError::EmptySecurity`] after its origin.
const EMPTY: &str = "is set but empty; a security setting must have a value or be left unset (an empty one never turns the feature off)";

#[test]
#[rustfmt::skip]
fn auth_token_sources_in_order() {
    let dir = TempDir::new();
    let flag_file = dir.file("flag-token", b"  from-flag-file\n");
    let env_file = dir.file("env-token", b"from-env-file\r\n");
    let tok = |t: &str| format!("auth_token={t}");
    let both_env: &[(&str, &str)] = &[("DFLOCKD_AUTH_TOKEN", " from-env "), ("DFLOCKD_AUTH_TOKEN_FILE", &env_file)];
    check(&["--auth-token", " from-flag\t", "--auth-token-file", &flag_file], both_env, &tok("from-flag"));
    check(&["--auth-token-file", &flag_file], both_env, &tok("from-flag-file"));
    check(&[], both_env, &tok("from-env"));
    check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &env_file)], &tok("from-env-file"));
    // An empty token variable is consulted before the file variable, and
    // an empty security setting is an error, never "off".
    check(&[], &[("DFLOCKD_AUTH_TOKEN", ""), ("DFLOCKD_AUTH_TOKEN_FILE", &env_file)], &format!("error: DFLOCKD_AUTH_TOKEN: {EMPTY}"));
    // A flag shadows the variables, empty or not (they are not read).
    check(&["--auth-token", "x"], &[("DFLOCKD_AUTH_TOKEN", ""), ("DFLOCKD_AUTH_TOKEN_FILE", "")], &tok("x"));
    // Inner spaces are kept; only the ends are trimmed.
    assert_eq!(config(&["--auth-token= with space "], &[]).auth_token.as_deref(), Some("with space"));
    // Lower-priority sources are not read, so a broken one does not matter.
    check(&["--auth-token", "x"], &[("DFLOCKD_AUTH_TOKEN_FILE", "/nonexistent/dflockd")], &tok("x"));
}

#[test]
#[rustfmt::skip]
fn auth_token_errors() {
    let dir = TempDir::new();
    let blank = dir.file("blank", b" \n\t \n");
    let empty = dir.file("empty", b"");
    let two_lines = dir.file("two-lines", b"abc\ndef\n");
    let binary = dir.file("binary", b"\xff\xfe");
    let huge = dir.file("huge", &vec![b'a'; MAX_AUTH_TOKEN_BYTES + 1]);
    let missing = dir.0.join("missing").display().to_string();
    let a_dir = dir.0.display().to_string();
    let longest = "a".repeat(MAX_AUTH_TOKEN_BYTES);
    let too_long = "a".repeat(MAX_AUTH_TOKEN_BYTES + 1);
    check(&["--auth-token", &longest], &[], &format!("auth_token={longest}"));
    check(&["--auth-token", "  "], &[], &format!("error: --auth-token: {EMPTY}"));
    check(&["--auth-token="], &[], &format!("error: --auth-token: {EMPTY}"));
    check(&["--auth-token", "a\nb"], &[], "error: --auth-token: token must not contain CR or LF");
    check(&["--auth-token", "a\rb"], &[], "error: --auth-token: token must not contain CR or LF");
    check(&["--auth-token", &too_long], &[], "error: --auth-token: token is longer than 65536 bytes");
    check(&[], &[("DFLOCKD_AUTH_TOKEN", " \t")], &format!("error: DFLOCKD_AUTH_TOKEN: {EMPTY}"));
    check(&[], &[("DFLOCKD_AUTH_TOKEN", "a\nb")], "error: DFLOCKD_AUTH_TOKEN: token must not contain CR or LF");
    check(&["--auth-token-file", &blank], &[], &format!("error: --auth-token-file: {blank}: token is empty after trimming whitespace"));
    check(&["--auth-token-file", &empty], &[], &format!("error: --auth-token-file: {empty}: token is empty after trimming whitespace"));
    check(&["--auth-token-file", &two_lines], &[], &format!("error: --auth-token-file: {two_lines}: token must not contain CR or LF"));
    check(&["--auth-token-file", &binary], &[], &format!("error: --auth-token-file: {binary}: token file is not valid UTF-8"));
    check(&["--auth-token-file", &huge], &[], &format!("error: --auth-token-file: {huge}: token is longer than 65536 bytes"));
    check(&["--auth-token-file", &missing], &[], &format!("error^ --auth-token-file: cannot read {missing}: "));
    check(&["--auth-token-file", &a_dir], &[], &format!("error^ --auth-token-file: cannot read {a_dir}: "));
    check(&["--auth-token-file", ""], &[], &format!("error: --auth-token-file: {EMPTY}"));
    check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &missing)], &format!("error^ DFLOCKD_AUTH_TOKEN_FILE: cannot read {missing}: "));
    check(&[], &[("DFLOCKD_AUTH_TOKEN_FILE", &blank)], &format!("error: DFLOCKD_AUTH_TOKEN_FILE: {blank}: token is empty after trimming whitespace"));
}

#[test]
fn auth_token_is_not_in_debug_output() {
    let cfg = config(&["--auth-token", "s3cret-value"], &[]);
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("s3cret-value"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
#[rustfmt::skip]
fn tls_needs_cert_and_key() {
    const RULE: &str = "TLS needs both a certificate and a key, or neither";
    check_all(&[
        (&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &[], "tls=c.pem,k.pem unsupported=no"),
        (&["--tls-cert", "c.pem"], &[("DFLOCKD_TLS_KEY", "k.pem")], "tls=c.pem,k.pem"),
        (&[], &[("DFLOCKD_TLS_CERT", "c.pem"), ("DFLOCKD_TLS_KEY", "k.pem")], "tls=c.pem,k.pem"),
    ]);
    check(&["--tls-cert", "", "--tls-key", ""], &[], &format!("error: --tls-cert: {EMPTY}"));
    check(&["--tls-cert", "c.pem"], &[], &format!("error: --tls-cert is set but --tls-key (DFLOCKD_TLS_KEY) is not: {RULE}"));
    check(&["--tls-key", "k.pem"], &[], &format!("error: --tls-key is set but --tls-cert (DFLOCKD_TLS_CERT) is not: {RULE}"));
    check(&[], &[("DFLOCKD_TLS_KEY", "k.pem")], &format!("error: DFLOCKD_TLS_KEY is set but --tls-cert (DFLOCKD_TLS_CERT) is not: {RULE}"));
    // An empty flag is an error, not a way to unset the variable.
    check(&["--tls-cert="], &[("DFLOCKD_TLS_CERT", "c.pem"), ("DFLOCKD_TLS_KEY", "k.pem")], &format!("error: --tls-cert: {EMPTY}"));
}

/// The "present but empty" rules, row by row (README, Configuration):
/// security settings refuse an empty or blank flag or variable; every
/// other variable that is empty or blank is unset; every other flag given
/// empty is parsed (an error for numbers, booleans and choices, the empty
/// text for text settings).
#[test]
fn present_but_empty_rules_for_every_row() {
    for s in SETTINGS {
        let flag = s.dashed();
        for blank in ["", " ", "\t \n"] {
            let with_flag = [format!("{flag}={blank}")];
            let with_flag: Vec<&str> = with_flag.iter().map(String::as_str).collect();
            let from_flag = run(&with_flag, &[]);
            let from_env = run(&[], &[(s.env, blank)]);
            if s.security {
                let want = |origin: String| format!("{origin}: {EMPTY}");
                assert_eq!(
                    from_flag.map(|_| ()).unwrap_err().to_string(),
                    want(flag.clone()),
                    "{flag}={blank:?}"
                );
                assert_eq!(
                    from_env.map(|_| ()).unwrap_err().to_string(),
                    want(s.env.to_owned()),
                    "{}={blank:?}",
                    s.env
                );
                continue;
            }
            // Every other variable: empty or blank = unset = the default.
            let default = config(&[], &[]);
            match from_env {
                Ok(Parsed::Run(cfg)) => assert_eq!(cfg, default, "{}={blank:?}", s.env),
                other => panic!("{}={blank:?}: {other:?}", s.env),
            }
            // Every other flag: parsed like any value.
            match (s.kind, from_flag) {
                (Kind::Int { .. }, Err(ConfigError::InvalidInteger { origin, .. }))
                | (Kind::Bool, Err(ConfigError::InvalidBool { origin, .. }))
                | (Kind::Choice(_), Err(ConfigError::InvalidChoice { origin, .. })) => {
                    assert_eq!(origin, Origin::Flag(s.flag));
                }
                (Kind::Text, Ok(Parsed::Run(cfg))) => {
                    let got = cfg
                        .effective
                        .iter()
                        .find(|e| e.setting.flag == s.flag)
                        .map(|e| e.value.clone());
                    assert_eq!(got.as_deref(), Some(blank), "{flag}");
                }
                (_, other) => panic!("{flag}={blank:?}: {other:?}"),
            }
        }
        // A legacy variable follows its row's rule too.
        if let Some(legacy) = s.legacy_env {
            assert_eq!(config(&[], &[(legacy, " ")]).warnings.len(), 0, "{legacy}");
        }
    }
    // What the empty text flags mean.
    check(
        &["--host="],
        &[("DFLOCKD_HOST", "10.0.0.1")],
        "host= listen=0.0.0.0:6388",
    );
    check(
        &["--http-host=", "--http-port=1"],
        &[],
        "http_host=127.0.0.1",
    );
    check(
        &["--http-cors-allowed-origins="],
        &[("DFLOCKD_HTTP_CORS_ALLOWED_ORIGINS", "*")],
        "cors=",
    );
}

#[test]
#[rustfmt::skip]
fn log_settings() {
    check_all(&[
        (&["--log-level", "warn"], &[], "log_level=warn debug=false"),
        (&["--log-level=TRACE"], &[], "log_level=trace"),
        (&[], &[("DFLOCKD_LOG_LEVEL", " error ")], "log_level=error"),
        (&["--log-level", "warn"], &[("DFLOCKD_LOG_LEVEL", "junk")], "log_level=warn"),
        // --debug is an alias for debug: the more verbose of the two wins.
        (&["--debug"], &[], "log_level=debug debug=true"),
        (&["--debug", "--log-level", "error"], &[], "log_level=debug"),
        (&["--debug", "--log-level", "trace"], &[], "log_level=trace"),
        (&[], &[("DFLOCKD_DEBUG", "1"), ("DFLOCKD_LOG_LEVEL", "warn")], "log_level=debug"),
        (&["--log-format", "json"], &[], "log_format=json"),
        (&[], &[("DFLOCKD_LOG_FORMAT", "Json")], "log_format=json"),
        (&["--log-level", "loud"], &[], "error: --log-level: \"loud\" is not one of error, warn, info, debug, trace"),
        (&[], &[("DFLOCKD_LOG_FORMAT", "xml")], "error: DFLOCKD_LOG_FORMAT: \"xml\" is not one of text, json"),
        (&["--tls-handshake-timeout", "1"], &[], "tls_handshake_timeout_s=1"),
        (&[], &[("DFLOCKD_TLS_HANDSHAKE_TIMEOUT_S", "0")], "error: DFLOCKD_TLS_HANDSHAKE_TIMEOUT_S: must be between 1 and 9223372036 seconds, got 0"),
    ]);
}

/// The start-up log line's fields: every row once, in table order, with
/// where its value came from; the token never appears.
#[test]
fn effective_settings_mask_secrets() {
    let cfg = config(
        &["--auth-token", "s3cret-value", "--port", "7"],
        &[("DFLOCKD_MAX_LOCKS", "9")],
    );
    let flags: Vec<&str> = cfg.effective.iter().map(|e| e.setting.flag).collect();
    let rows: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
    assert_eq!(flags, rows);
    let get = |f: &str| {
        cfg.effective
            .iter()
            .find(|e| e.setting.flag == f)
            .expect("row")
            .clone()
    };
    assert_eq!(
        (get("port").value, get("port").origin),
        ("7".to_owned(), Origin::Flag("port"))
    );
    assert_eq!(get("max-locks").origin, Origin::Env("DFLOCKD_MAX_LOCKS"));
    assert_eq!(get("auth-token").value, "<set>");
    assert_eq!(get("auth-token-file").value, "unset");
    assert!(!format!("{:?}", cfg.effective).contains("s3cret"));
    assert_eq!(
        config(&[], &[])
            .effective
            .iter()
            .find(|e| e.setting.flag == "auth-token")
            .map(|e| e.value.clone())
            .as_deref(),
        Some("unset")
    );
}

#[test]
#[rustfmt::skip]
fn exposure_without_auth() {
    let exposed = |args: &[&str]| config(args, &[]).exposed_without_auth();
    assert!(exposed(&[]).is_empty());
    assert!(exposed(&["--host", "::1"]).is_empty());
    assert!(exposed(&["--host", "localhost", "--http-port", "1"]).is_empty());
    assert_eq!(exposed(&["--host", "0.0.0.0"]), ["0.0.0.0:6388"]);
    assert_eq!(exposed(&["--host="]), ["0.0.0.0:6388"]);
    assert_eq!(exposed(&["--http-port", "1", "--http-host", "::"]), ["[::]:1"]);
    assert!(exposed(&["--host", "0.0.0.0", "--auth-token", "t"]).is_empty());
}

#[test]
#[rustfmt::skip]
fn http_port_must_differ_from_port() {
    check_all(&[
        (&["--http-port", "6389"], &[], "http_port=6389 unsupported=no"),
        (&["--http-port", "0", "--port", "0"], &[], "http_port=0 port=0"),
        (&["--http-port", "6388"], &[], "error: --http-port: must differ from --port (both are 6388)"),
        (&["--port", "7000"], &[("DFLOCKD_HTTP_PORT", "7000")], "error: DFLOCKD_HTTP_PORT: must differ from --port (both are 7000)"),
        (&[], &[("DFLOCKD_PORT", "7000"), ("DFLOCKD_HTTP_PORT", "7000")], "error: DFLOCKD_HTTP_PORT: must differ from --port (both are 7000)"),
    ]);
}

#[test]
#[rustfmt::skip]
fn sse_ping_below_session_idle_timeout() {
    check_all(&[
        (&["--http-session-idle-timeout", "16"], &[], "http_idle_s=16 http_sse_ping_s=15"),
        (&["--http-session-idle-timeout", "0"], &[], "http_idle_s=0"),
        (&["--http-sse-ping-interval", "0", "--http-session-idle-timeout", "1"], &[], "http_sse_ping_s=0"),
        (&["--http-session-idle-timeout", "10"], &[], "error: --http-sse-ping-interval: must be less than --http-session-idle-timeout when both are > 0 (15 >= 10)"),
        (&["--http-sse-ping-interval", "20"], &[], "error: --http-sse-ping-interval: must be less than --http-session-idle-timeout when both are > 0 (20 >= 20)"),
        (&[], &[("DFLOCKD_HTTP_SSE_PING_S", "30"), ("DFLOCKD_HTTP_SESSION_IDLE_S", "30")], "error: DFLOCKD_HTTP_SSE_PING_S: must be less than DFLOCKD_HTTP_SESSION_IDLE_S when both are > 0 (30 >= 30)"),
    ]);
}

#[test]
#[rustfmt::skip]
fn unsupported_features_are_reported_not_ignored() {
    let msg = |args: &[&str], env: &[(&str, &str)]| config(args, env).unsupported().unwrap_or_default();
    assert_eq!(msg(&["--http-port", "6389"], &[]), "");
    assert_eq!(msg(&[], &[("DFLOCKD_HTTP_PORT", "6389")]), "");
    // TLS is supported: the files are loaded (and checked) by `main`.
    assert_eq!(msg(&["--tls-cert", "c", "--tls-key", "k"], &[]), "");
    assert_eq!(msg(&[], &[("DFLOCKD_TLS_CERT", "c"), ("DFLOCKD_TLS_KEY", "k")]), "");
    // The HTTP API serves TLS too.
    assert_eq!(msg(&["--http-port", "6389", "--tls-cert", "c", "--tls-key", "k"], &[]), "");
    assert_eq!(msg(&["--http-port", "0"], &[]), "");
    // Inert HTTP options are warned about, one warning each.
    let cfg = config(&["--http-max-sessions", "5", "--http-cors-allowed-origins", "*"], &[("DFLOCKD_HTTP_SSE_PING_S", "3")]);
    assert_eq!(cfg.unsupported(), None);
    assert_eq!(cfg.warnings, [
        "--http-max-sessions has no effect while --http-port is 0 (HTTP API off)",
        "DFLOCKD_HTTP_SSE_PING_S (--http-sse-ping-interval) has no effect while --http-port is 0 (HTTP API off)",
        "--http-cors-allowed-origins has no effect while --http-port is 0 (HTTP API off)",
    ]);
    // With HTTP on, they apply.
    check(&["--http-port", "1", "--http-max-sessions", "5"], &[], "warnings=0 unsupported=no");
    check(&["--http-port", "1", "--http-rate-limit-per-ip", "5", "--http-rate-limit-burst", "9",
            "--http-max-sessions-per-ip", "2", "--http-max-connections-per-ip", "3",
            "--http-cors-allowed-origins", "*"], &[], "warnings=0 unsupported=no");
    check(&["--http-port", "1", "--http-sse-ping-interval", "5"], &[], "warnings=0 unsupported=no");
}

#[test]
#[rustfmt::skip]
fn version_and_help_exit_zero() {
    let version = format!("exit 0: dflockd {}", env!("CARGO_PKG_VERSION"));
    check_all(&[
        (&["--version"], &[], &version),
        (&["-version"], &[], &version),
        (&["--version=true"], &[], &version),
        (&["--port", "1", "--version"], &[], &version),
        // The environment is not consulted for --version.
        (&["--version"], &[("DFLOCKD_PORT", "junk")], &version),
        (&["--version=false"], &[], "port=6388"),
        (&["--version=maybe"], &[], "error: --version: invalid boolean \"maybe\" (use true/false, 1/0 or yes/no)"),
        (&["--version", "--bogus"], &[], "error: unknown flag --bogus (see --help)"),
        (&["--help"], &[], "exit 0: Usage: dflockd"),
        (&["-h"], &[], "exit 0: --auth-token-file"),
        (&["--help"], &[], "exit 0: --read-timeout <secs>           seconds a started request has to arrive in full"),
        (&["-help"], &[], "exit 0: DFLOCKD_FENCE_STATE_FILE"),
        (&["--port", "junk", "--help"], &[], "exit 0: Usage: dflockd"),
    ]);
}

/// Every row is a flag the parser takes (a value, or a bare boolean), and
/// the help text names every flag, variable and default.
#[test]
fn every_row_is_a_flag_and_in_the_help() {
    for s in SETTINGS {
        let value = match s.kind {
            Kind::Int { min, .. } => (min.max(1)).to_string(),
            Kind::Bool => "true".to_owned(),
            Kind::Choice(words) => words[0].to_owned(),
            Kind::Text | Kind::Path | Kind::Secret => "x".to_owned(),
        };
        let args = [s.dashed(), value];
        match args::parse(&args) {
            Ok(args::Args::Run(given)) => assert!(given.contains_key(s.flag), "{}", s.flag),
            other => panic!("{}: {other:?}", s.flag),
        }
    }
    let help = args::help();
    let in_help: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', ',']).next())
        .filter(|n| *n != "help" && *n != "version")
        .collect();
    let known: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
    assert_eq!(in_help, known, "{help}");
    for var in table::env_vars() {
        assert!(help.contains(var), "help does not mention {var}");
    }
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for s in SETTINGS {
        let shown = format!("(env {}", s.env);
        assert!(flat.contains(&shown), "help lacks {shown:?}");
        let shown = format!("default {})", s.default_text());
        assert!(
            flat.contains(&shown),
            "help lacks {shown:?} for --{}",
            s.flag
        );
    }
    assert!(
        help.lines().all(|l| l.len() <= 100 || !l.contains(' ')),
        "{help}"
    );
    let names: std::collections::HashSet<&str> = SETTINGS.iter().map(|s| s.flag).collect();
    assert_eq!(names.len(), SETTINGS.len(), "a flag appears twice");
}

/// Every row's default is read through the accessor its kind allows, and
/// the structs whose defaults the table sets agree with it.
#[test]
fn defaults_of_the_structs_come_from_the_table() {
    for s in SETTINGS {
        match s.kind {
            // A member's id and addresses have no default.
            Kind::Int { .. } | Kind::Text if s.default == table::Default::Unset => {
                assert!(
                    s.flag == "node-id" || s.help.contains("cluster mode"),
                    "--{}",
                    s.flag
                );
            }
            Kind::Int { min, max, .. } => {
                let d = s.int_default() as i64;
                assert!(
                    min <= d && d <= max,
                    "--{} default out of its range",
                    s.flag
                );
            }
            Kind::Bool => {
                s.bool_default();
            }
            Kind::Choice(words) => assert!(words.contains(&s.text_default()), "--{}", s.flag),
            Kind::Text => {
                s.text_default();
            }
            Kind::Path | Kind::Secret => {
                assert_eq!(s.default, table::Default::Unset, "--{}", s.flag);
                assert!(s.security, "--{} should be a security setting", s.flag);
            }
        }
    }
    let cfg = config(&[], &[]);
    let core = crate::core::CoreConfig::default();
    let from_cfg = cfg.core_config(core.fence_start, core.fence_ceiling, core.salt_key);
    assert_eq!(format!("{core:?}"), format!("{from_cfg:?}"));
    let server = ServerConfig::default();
    let from_cfg = cfg.server_config(core, None);
    assert_eq!(format!("{server:?}"), format!("{from_cfg:?}"));
    let http = crate::http::HttpSettings::default();
    assert_eq!(
        crate::http::HttpSettings {
            listen: http.listen.clone(),
            ..cfg.http.settings.clone()
        },
        http
    );
}

#[test]
fn core_config_maps_every_setting() {
    let cfg = config(
        &[
            "--default-lease-ttl=40",
            "--max-locks=7",
            "--max-waiters=3",
            "--auto-release-on-disconnect=false",
            "--gc-interval=2",
            "--gc-max-idle=0",
            "--auth-token=tok",
        ],
        &[],
    );
    let core = cfg.core_config(100, 200, [1, 2]);
    assert_eq!(core.default_lease_s, 40);
    assert_eq!(core.max_locks, 7);
    assert_eq!(core.max_waiters, 3);
    assert!(!core.auto_release_on_disconnect);
    assert_eq!(core.gc_interval_s, 2);
    assert_eq!(core.gc_max_idle_s, 0);
    assert_eq!(core.auth_token.as_deref(), Some(&b"tok"[..]));
    assert_eq!(core.fence_start, 100);
    assert_eq!(core.fence_ceiling, 200);
    assert_eq!(core.salt_key, [1, 2]);
    let core = config(&[], &[]).core_config(0, u64::MAX, [0, 0]);
    assert_eq!(core.auth_token, None);
}

#[test]
fn listen_addresses() {
    let cfg = config(&["--host", "::", "--port", "1"], &[]);
    assert_eq!(cfg.listen_addr(), "[::]:1");
    assert_eq!(cfg.http_listen_addr(), None);
    let cfg = config(&["--host", "::1", "--http-port", "2"], &[]);
    assert_eq!(cfg.http_listen_addr().as_deref(), Some("[::1]:2"));
    let cfg = config(&["--http-host", "127.0.0.2", "--http-port", "2"], &[]);
    assert_eq!(cfg.http_listen_addr().as_deref(), Some("127.0.0.2:2"));
}

// ---------------------------------------------------------------------------
// Cluster mode (spec/cluster.md §9).

const RAFT_TOKEN: &str = "a-member-token-of-at-least-32-bytes!";

/// A valid cluster member's flags plus `extra`.
fn member(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "--raft-dir",
        "/var/lib/dflockd/raft",
        "--node-id",
        "2",
        "--raft-addr",
        "127.0.0.1:7002",
        "--cluster-peers",
        "1=127.0.0.1:7001@127.0.0.1:6401,2=127.0.0.1:7002@127.0.0.1:6402,3=127.0.0.1:7003@127.0.0.1:6403",
        "--raft-auth-token",
        RAFT_TOKEN,
    ];
    args.extend_from_slice(extra);
    args
}

fn cluster_err(args: &[&str], env: &[(&str, &str)]) -> String {
    match run(args, env) {
        Err(e) => e.to_string(),
        Ok(p) => panic!("{args:?}: expected an error, got {p:?}"),
    }
}

#[test]
fn a_cluster_member_is_configured_and_then_refused_by_this_build() {
    let cfg = config(
        &member(&["--admin-token", "adm1n", "--orphan-ttl", "45"]),
        &[],
    );
    let c = cfg.cluster.as_ref().expect("cluster mode");
    assert_eq!(c.raft_dir, PathBuf::from("/var/lib/dflockd/raft"));
    assert_eq!((c.node_id, c.raft_addr.as_str()), (2, "127.0.0.1:7002"));
    assert_eq!(c.peers.len(), 3);
    assert_eq!(c.peers[2].client_addr, "127.0.0.1:6403");
    assert_eq!(c.raft_auth_token.as_deref(), Some(RAFT_TOKEN));
    assert_eq!(c.admin_token.as_deref(), Some("adm1n"));
    assert_eq!(
        (c.advertise_addr.as_ref(), c.raft_tls.as_ref()),
        (None, None)
    );
    assert_eq!(cfg.orphan_ttl_s, 45);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    // Secrets stay out of Debug output and the start-up line.
    let shown = format!("{cfg:?} {:?}", cfg.effective);
    assert!(
        !shown.contains(RAFT_TOKEN) && !shown.contains("adm1n"),
        "{shown}"
    );
    // Cluster mode runs in this build: nothing is refused.
    assert_eq!(cfg.unsupported(), None);
    assert_eq!(config(&[], &[]).unsupported(), None);
    assert_eq!(config(&[], &[]).orphan_ttl_s, 30);
}

#[test]
fn every_cluster_setting_has_its_variable() {
    let env = [
        ("DFLOCKD_RAFT_DIR", "/d"),
        ("DFLOCKD_NODE_ID", "1"),
        ("DFLOCKD_RAFT_ADDR", "[::1]:7001"),
        ("DFLOCKD_CLUSTER_PEERS", "1=[::1]:7001@[::1]:6401"),
        ("DFLOCKD_ADVERTISE_ADDR", "db1.example:6388"),
        ("DFLOCKD_RAFT_TLS_CERT", "c.pem"),
        ("DFLOCKD_RAFT_TLS_KEY", "k.pem"),
        ("DFLOCKD_RAFT_TLS_CA", "ca.pem"),
        ("DFLOCKD_ADMIN_TOKEN", "a"),
        ("DFLOCKD_ORPHAN_TTL_S", "5"),
    ];
    let cfg = config(&[], &env);
    let c = cfg.cluster.unwrap();
    assert_eq!((c.node_id, c.raft_addr.as_str()), (1, "[::1]:7001"));
    assert_eq!(c.advertise_addr.as_deref(), Some("db1.example:6388"));
    assert_eq!(
        c.raft_tls,
        Some(RaftTlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            ca: "ca.pem".into()
        })
    );
    assert_eq!(
        (c.raft_auth_token, c.admin_token.as_deref()),
        (None, Some("a"))
    );
    assert_eq!(cfg.orphan_ttl_s, 5);
    // The token from the environment, and from a file.
    let mut env2 = env[..5].to_vec();
    env2.push(("DFLOCKD_RAFT_AUTH_TOKEN", RAFT_TOKEN));
    assert_eq!(
        config(&[], &env2)
            .cluster
            .unwrap()
            .raft_auth_token
            .as_deref(),
        Some(RAFT_TOKEN)
    );
    let dir = TempDir::new();
    let file = dir.file("raft-token", format!("  {RAFT_TOKEN}\n").as_bytes());
    let mut env3 = env[..5].to_vec();
    env3.push(("DFLOCKD_RAFT_AUTH_TOKEN_FILE", &file));
    assert_eq!(
        config(&[], &env3)
            .cluster
            .unwrap()
            .raft_auth_token
            .as_deref(),
        Some(RAFT_TOKEN)
    );
    // The flag wins over the file.
    let flagged = config(
        &member(&[]),
        &[("DFLOCKD_RAFT_AUTH_TOKEN_FILE", "/nonexistent")],
    );
    assert_eq!(
        flagged.cluster.unwrap().raft_auth_token.as_deref(),
        Some(RAFT_TOKEN)
    );
}

#[test]
#[rustfmt::skip]
fn cluster_errors_name_the_setting() {
    let without = |flag: &str| -> Vec<&'static str> {
        let args = member(&[]);
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            if args[i] == flag { i += 2; continue; }
            out.push(args[i]);
            i += 1;
        }
        out
    };
    assert_eq!(cluster_err(&without("--node-id"), &[]), "--raft-dir is set but --node-id (DFLOCKD_NODE_ID) is not: cluster mode needs it");
    assert_eq!(cluster_err(&without("--raft-addr"), &[]), "--raft-dir is set but --raft-addr (DFLOCKD_RAFT_ADDR) is not: cluster mode needs it");
    assert_eq!(cluster_err(&without("--cluster-peers"), &[]), "--raft-dir is set but --cluster-peers (DFLOCKD_CLUSTER_PEERS) is not: cluster mode needs it");
    assert!(cluster_err(&without("--raft-auth-token"), &[]).starts_with("--raft-dir is set but the members are not authenticated"));
    assert_eq!(cluster_err(&member(&["--node-id", "0"]), &[]), "--node-id: must be > 0, got 0");
    assert_eq!(cluster_err(&member(&["--node-id", "x"]), &[]), "--node-id: invalid integer \"x\"");
    assert_eq!(cluster_err(&member(&["--node-id", "4"]), &[]), "--cluster-peers: does not list this member (--node-id is 4)");
    assert_eq!(cluster_err(&without("--node-id"), &[("DFLOCKD_NODE_ID", "9")]), "--cluster-peers: does not list this member (DFLOCKD_NODE_ID (--node-id) is 9)");
    assert_eq!(cluster_err(&member(&["--cluster-peers", "1=a:1@b:2,1=c:3@d:4"]), &[]), "--cluster-peers: member id 1 is listed twice");
    assert_eq!(cluster_err(&without("--cluster-peers"), &[("DFLOCKD_CLUSTER_PEERS", "2=nope")]), "DFLOCKD_CLUSTER_PEERS: \"2=nope\" is not id=raftHost:port@clientHost:port");
    assert_eq!(cluster_err(&member(&["--raft-addr", "7002"]), &[]), "--raft-addr: \"7002\" is not host:port with a port 1-65535");
    assert_eq!(cluster_err(&member(&["--advertise-addr", "h:0"]), &[]), "--advertise-addr: \"h:0\" is not host:port with a port 1-65535");
    assert_eq!(cluster_err(&member(&["--raft-auth-token", "short"]), &[]), "--raft-auth-token: token is shorter than 32 bytes");
    assert_eq!(cluster_err(&member(&["--raft-tls-cert", "c"]), &[]), "--raft-tls-cert is set but --raft-tls-key (DFLOCKD_RAFT_TLS_KEY) is not: mutual TLS between members needs --raft-tls-cert, --raft-tls-key and --raft-tls-ca, or none of them");
    assert_eq!(cluster_err(&member(&[]), &[("DFLOCKD_RAFT_TLS_KEY", "k"), ("DFLOCKD_RAFT_TLS_CERT", "c")]), "DFLOCKD_RAFT_TLS_CERT is set but --raft-tls-ca (DFLOCKD_RAFT_TLS_CA) is not: mutual TLS between members needs --raft-tls-cert, --raft-tls-key and --raft-tls-ca, or none of them");
    assert_eq!(cluster_err(&member(&["--fence-state-file", "/f"]), &[]), "--fence-state-file: cannot be used with --raft-dir: in cluster mode the fence counter is part of the replicated state");
    assert_eq!(cluster_err(&member(&[]), &[("DFLOCKD_FENCE_STATE_FILE", "/f")]), "DFLOCKD_FENCE_STATE_FILE: cannot be used with --raft-dir: in cluster mode the fence counter is part of the replicated state");
    assert_eq!(cluster_err(&member(&["--orphan-ttl", "0"]), &[]), "--orphan-ttl: must be between 1 and 9223372036 seconds, got 0");
    // Empty security settings are errors, never "off".
    for flag in ["--raft-dir=", "--raft-auth-token=", "--raft-tls-ca=", "--admin-token="] {
        let e = cluster_err(&member(&[flag]), &[]);
        assert!(e.ends_with(EMPTY), "{flag}: {e}");
    }
    let mut no_token = without("--raft-auth-token");
    no_token.push("--raft-auth-token-file= ");
    assert!(cluster_err(&no_token, &[]).ends_with(EMPTY));
    // A short token from a file names the variable and the file.
    let dir = TempDir::new();
    let file = dir.file("short", b"tiny\n");
    let e = cluster_err(&without("--raft-auth-token"), &[("DFLOCKD_RAFT_AUTH_TOKEN_FILE", &file)]);
    assert_eq!(e, "DFLOCKD_RAFT_AUTH_TOKEN_FILE: token is shorter than 32 bytes");
}

#[test]
fn cluster_settings_without_raft_dir_are_warned_about() {
    let cfg = config(
        &["--node-id", "3", "--admin-token", "x"],
        &[("DFLOCKD_ORPHAN_TTL_S", "9")],
    );
    assert_eq!(cfg.cluster, None);
    assert_eq!(cfg.unsupported(), None);
    assert_eq!(
        cfg.warnings,
        [
            "--node-id has no effect without --raft-dir (cluster mode off)",
            "--admin-token has no effect without --raft-dir (cluster mode off)",
            "DFLOCKD_ORPHAN_TTL_S (--orphan-ttl) has no effect without --raft-dir (cluster mode off)",
        ]
    );
    // A fence state file without --raft-dir is fine, as ever.
    assert!(config(&["--fence-state-file", "/f"], &[])
        .warnings
        .is_empty());
}

#[test]
fn spin_us_reaches_the_runtime_setting() {
    let core = crate::core::CoreConfig::default();
    let spin = |args: &[&str], env: &[(&str, &str)]| {
        config(args, env).server_config(core.clone(), None).spin
    };
    assert_eq!(spin(&[], &[]), std::time::Duration::from_micros(50));
    assert_eq!(spin(&["--spin-us=0"], &[]), std::time::Duration::ZERO);
    assert_eq!(
        spin(&[], &[("DFLOCKD_SPIN_US", "120")]),
        std::time::Duration::from_micros(120)
    );
}
