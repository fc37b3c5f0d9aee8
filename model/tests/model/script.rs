//! A transcript language for driving the reference machine, so that edge
//! cases read like the sessions they describe. One step per line:
//!
//! ```text
//! <ms> <who> <command...> [=> <expected outputs, separated by ';'>]
//! ```
//!
//! * `<ms>`: the virtual clock, in milliseconds (never goes back).
//! * `<who>`: `cN` for connection N, or `-` for the server.
//! * Server commands: `connect` (expects `=> cN`, the id it returns),
//!   `advance`, `drain`, `raise N` (the fence ceiling to N).
//! * Connection commands, as on the wire: `l KEY T [L]`, `sl KEY T N [L]`,
//!   `r|sr KEY TOK`, `n|sn KEY TOK [L]`, `e KEY [L]`, `se KEY N [L]`,
//!   `w|sw KEY T`, `stats`, `ping`, `listen PATTERN`, `auth TOKEN`, `invalid` (a malformed
//!   request), `fatal` (an overlong line), `bye` (the connection goes away).
//!   What the driver reports about the transport: `idle` and `stall` (the
//!   read deadline, without and with part of a request buffered), `cancel`.
//! * Expected outputs: `cN <reply line>` or `close cN WHY`, in order, WHY
//!   one of `draining`, `auth` (with the default 100 ms pause), `overlong`,
//!   `stalled`, `idle`, `slow`. Nothing
//!   after `=>` (or no `=>`) expects no output at all. `stats` replies are
//!   best checked with [`Machine::stats_view`] instead.
//! * `T<n>` anywhere stands for the token with fence `n`; `#` starts a comment.

use dflockd_model::token::token_text;
use dflockd_model::{Config, Machine, Op, Output, Space, Why};

/// Runs `script` on a new machine started at 0 and compares every output.
/// Returns the machine for further checks.
pub fn check(cfg: Config, script: &str) -> Machine {
    let salt_key = cfg.salt_key;
    let mut m = Machine::new(cfg, 0);
    for (n, raw) in script.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (step, expect) = match line.split_once("=>") {
            Some((s, e)) => (s.trim(), e.trim()),
            None => (line, ""),
        };
        let words: Vec<String> = step
            .split_whitespace()
            .map(|w| expand(w, salt_key))
            .collect();
        let at = |what: &str| format!("line {}: `{}`: {what}", n + 1, raw.trim());
        let now: u64 = words[0]
            .parse()
            .unwrap_or_else(|_| panic!("{}", at("bad time")));
        let who = words[1].as_str();
        let cmd: Vec<&str> = words[2..].iter().map(String::as_str).collect();
        let got = if who == "-" {
            match cmd.as_slice() {
                ["connect"] => {
                    let id = m.connect(now);
                    assert_eq!(format!("c{id}"), expect, "{}", at("connection id"));
                    continue;
                }
                ["advance"] => m.advance(now),
                ["drain"] => m.start_drain(now),
                ["raise", c] => m.raise_fence_ceiling(
                    now,
                    c.parse()
                        .unwrap_or_else(|_| panic!("{}", at("bad ceiling"))),
                ),
                _ => panic!("{}", at("unknown server command")),
            }
        } else {
            let conn: u64 = who
                .strip_prefix('c')
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("{}", at("bad connection")));
            if cmd == ["bye"] {
                m.disconnect(now, conn)
            } else if cmd == ["idle"] || cmd == ["stall"] {
                m.read_deadline(now, conn, cmd == ["stall"])
            } else if cmd == ["cancel"] {
                m.cancel(now, conn)
            } else {
                let op = parse_op(&cmd).unwrap_or_else(|| panic!("{}", at("bad request")));
                m.handle(now, conn, op)
            }
        };
        let want = parse_outputs(expect, salt_key);
        assert_eq!(
            render(&got),
            render(&want),
            "{}",
            at("outputs differ (left: got, right: expected)")
        );
    }
    m
}

/// `T<n>` → the token with fence n; anything else unchanged.
fn expand(word: &str, salt_key: [u64; 2]) -> String {
    match word.strip_prefix('T').and_then(|n| n.parse::<u64>().ok()) {
        Some(fence) => token_text(salt_key, fence),
        None => word.to_string(),
    }
}

fn parse_outputs(expect: &str, salt_key: [u64; 2]) -> Vec<Output> {
    expect
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let words: Vec<String> = item
                .split_whitespace()
                .map(|w| expand(w, salt_key))
                .collect();
            if words[0] == "close" {
                let conn = words[1][1..].parse().expect("close cN");
                let why = match words.get(2).map(String::as_str) {
                    Some("draining") => Why::Draining,
                    Some("auth") => Why::AuthFailed { pause_ms: 100 },
                    Some("overlong") => Why::Overlong,
                    Some("stalled") => Why::Stalled,
                    Some("idle") => Why::Idle,
                    Some("slow") => Why::SlowConsumer,
                    other => panic!("close c{conn}: unknown reason {other:?}"),
                };
                Output::Close { conn, why }
            } else {
                let conn = words[0][1..].parse().expect("cN line");
                Output::Reply {
                    conn,
                    line: words[1..].join(" "),
                }
            }
        })
        .collect()
}

fn render(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .map(|o| match o {
            Output::Reply { conn, line } => format!("c{conn} {line}"),
            Output::Close { conn, why } => format!("close c{conn} {why:?}"),
        })
        .collect()
}

fn parse_op(cmd: &[&str]) -> Option<Op> {
    let num = |s: &str| s.parse::<u64>().ok();
    let key = |s: &str| s.as_bytes().to_vec();
    let space = |c: &str| {
        if c.starts_with('s') {
            Space::Sem
        } else {
            Space::Lock
        }
    };
    Some(match cmd {
        ["l", k, t] => Op::Acquire {
            space: Space::Lock,
            key: key(k),
            timeout_s: num(t)?,
            limit: 1,
            lease_s: None,
        },
        ["l", k, t, l] => Op::Acquire {
            space: Space::Lock,
            key: key(k),
            timeout_s: num(t)?,
            limit: 1,
            lease_s: Some(num(l)?),
        },
        ["sl", k, t, n] => Op::Acquire {
            space: Space::Sem,
            key: key(k),
            timeout_s: num(t)?,
            limit: num(n)?,
            lease_s: None,
        },
        ["sl", k, t, n, l] => Op::Acquire {
            space: Space::Sem,
            key: key(k),
            timeout_s: num(t)?,
            limit: num(n)?,
            lease_s: Some(num(l)?),
        },
        [c @ ("r" | "sr"), k, tok] => Op::Release {
            space: space(c),
            key: key(k),
            token: tok.as_bytes().to_vec(),
        },
        [c @ ("n" | "sn"), k, tok] => Op::Renew {
            space: space(c),
            key: key(k),
            token: tok.as_bytes().to_vec(),
            lease_s: None,
        },
        [c @ ("n" | "sn"), k, tok, l] => Op::Renew {
            space: space(c),
            key: key(k),
            token: tok.as_bytes().to_vec(),
            lease_s: Some(num(l)?),
        },
        ["e", k] => Op::Enqueue {
            space: Space::Lock,
            key: key(k),
            limit: 1,
            lease_s: None,
        },
        ["e", k, l] => Op::Enqueue {
            space: Space::Lock,
            key: key(k),
            limit: 1,
            lease_s: Some(num(l)?),
        },
        ["se", k, n] => Op::Enqueue {
            space: Space::Sem,
            key: key(k),
            limit: num(n)?,
            lease_s: None,
        },
        ["se", k, n, l] => Op::Enqueue {
            space: Space::Sem,
            key: key(k),
            limit: num(n)?,
            lease_s: Some(num(l)?),
        },
        [c @ ("w" | "sw"), k, t] => Op::Wait {
            space: space(c),
            key: key(k),
            timeout_s: num(t)?,
        },
        ["stats"] => Op::Stats,
        ["ping"] => Op::Ping,
        ["listen", p] => Op::Listen {
            pattern: key(p),
            group: Vec::new(),
        },
        ["auth", tok] => Op::Auth {
            token: tok.as_bytes().to_vec(),
        },
        ["invalid"] => Op::Invalid { fatal: false },
        ["fatal"] => Op::Invalid { fatal: true },
        _ => return None,
    })
}
