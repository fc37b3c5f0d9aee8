//! Matching received lines against `<` patterns, the `<STATS>` shape check
//! and the `~ stats` conditions. Pure functions over bytes and JSON values.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::transcript::{Kind, Pat, StatsArray, StatsCond};

/// Matches `line` (without its LF) against `pats`. On success, the names
/// bound by `<TOKEN:name>`; on failure, why (the caller adds the line).
pub(crate) fn match_line(
    pats: &[Pat],
    vars: &HashMap<String, Vec<u8>>,
    line: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut binds = Vec::new();
    let mut rest = line;
    for pat in pats {
        match pat {
            Pat::Bytes(b) => rest = literal(rest, b, line.len() - rest.len())?,
            Pat::Var(name) => {
                let value = vars
                    .get(name)
                    .ok_or_else(|| format!("`{{{name}}}` is unbound"))?;
                rest = literal(rest, value, line.len() - rest.len())?;
            }
            Pat::Token(name) => {
                let ok = rest.len() >= 32
                    && rest[..32]
                        .iter()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
                if !ok {
                    return Err(format!(
                        "no token (32 lowercase hex digits) at {}",
                        quoted(rest)
                    ));
                }
                if let Some(name) = name {
                    binds.push((name.clone(), rest[..32].to_vec()));
                }
                rest = &rest[32..];
            }
            Pat::Int => {
                let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return Err(format!("no integer at {}", quoted(rest)));
                }
                rest = &rest[n..];
            }
            Pat::Json => {
                json_object(rest)?;
                rest = &[];
            }
            Pat::Stats => {
                let v = json_object(rest)?;
                stats_shape(&v).map_err(|e| format!("not a stats object: {e}"))?;
                rest = &[];
            }
            Pat::Any => rest = &[],
        }
    }
    if !rest.is_empty() {
        return Err(format!("unexpected {} at the end", quoted(rest)));
    }
    Ok(binds)
}

/// `rest` without its prefix `want`, or where and how they differ. `at` is
/// the offset of `rest` in the line.
fn literal<'a>(rest: &'a [u8], want: &[u8], at: usize) -> Result<&'a [u8], String> {
    if let Some(after) = rest.strip_prefix(want) {
        return Ok(after);
    }
    let same = rest.iter().zip(want).take_while(|(a, b)| a == b).count();
    let found = if same == rest.len() {
        "the end of the line".to_string()
    } else {
        quoted(&rest[same..])
    };
    Err(format!(
        "at byte {}: expected \"{}\", found {found}",
        at + same,
        show(&want[same..])
    ))
}

fn json_object(b: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(b).map_err(|e| format!("invalid JSON ({e})"))?;
    if !v.is_object() {
        return Err("JSON is not an object".into());
    }
    Ok(v)
}

/// Bytes as a readable string: printable ASCII as is, the rest escaped.
pub(crate) fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// How many bytes of a line a message quotes; the rest is cut and the
/// length given instead, so a server that sends 80 KB of garbage gets a
/// readable report.
pub const QUOTE_BYTES: usize = 200;

/// Bytes in double quotes, escaped as [`show`]; longer than
/// [`QUOTE_BYTES`], cut there and followed by the full length:
/// `"aaaa..." (81234 bytes)`.
pub(crate) fn quoted(b: &[u8]) -> String {
    if b.len() <= QUOTE_BYTES {
        format!("\"{}\"", show(b))
    } else {
        format!("\"{}...\" ({} bytes)", show(&b[..QUOTE_BYTES]), b.len())
    }
}

/// Checks the shape of a `stats` object (protocol.md §8): exactly the six
/// members (and `cluster` from a cluster member), and every array entry
/// with exactly its members and types.
pub fn stats_shape(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not an object")?;
    let mut want: Vec<&str> = StatsArray::ALL.iter().map(|a| a.name()).collect();
    want.push("connections");
    exact_members(obj, &want, &["cluster"], "the stats object")?;
    check_kind(&obj["connections"], Kind::Int, "connections")?;
    if let Some(cluster) = obj.get("cluster") {
        cluster_shape(cluster)?;
    }
    for array in StatsArray::ALL {
        let entries = obj[array.name()]
            .as_array()
            .ok_or_else(|| format!("`{}` is not an array", array.name()))?;
        let members = array.members();
        let required: Vec<&str> = members.iter().filter(|m| m.2).map(|m| m.0).collect();
        let optional: Vec<&str> = members.iter().filter(|m| !m.2).map(|m| m.0).collect();
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("{}[{i}]", array.name());
            let entry = entry
                .as_object()
                .ok_or_else(|| format!("`{at}` is not an object"))?;
            exact_members(entry, &required, &optional, &format!("`{at}`"))?;
            for (name, kind, _) in members {
                if let Some(value) = entry.get(*name) {
                    check_kind(value, *kind, &format!("{at}.{name}"))?;
                }
            }
        }
    }
    Ok(())
}

/// A cluster member's `cluster` object (protocol.md §8, cluster.md §7).
fn cluster_shape(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("`cluster` is not an object")?;
    let ints = [
        "node_id",
        "term",
        "commit_index",
        "applied_index",
        "snapshot_index",
    ];
    let mut all: Vec<&str> = ints.to_vec();
    all.extend(["role", "leader_id", "leader_addr", "voters"]);
    // `members` (the voters' and learners' addresses) is ours; upstream's
    // object has no such member.
    exact_members(obj, &all, &["members"], "`cluster`")?;
    for name in ints {
        check_kind(&obj[name], Kind::Int, &format!("cluster.{name}"))?;
    }
    check_kind(&obj["role"], Kind::Str, "cluster.role")?;
    // No leader known: both null.
    if !obj["leader_id"].is_null() {
        check_kind(&obj["leader_id"], Kind::Int, "cluster.leader_id")?;
    }
    if !obj["leader_addr"].is_null() {
        check_kind(&obj["leader_addr"], Kind::Str, "cluster.leader_addr")?;
    }
    let voters = obj["voters"]
        .as_array()
        .ok_or("`cluster.voters` is not an array")?;
    for (i, id) in voters.iter().enumerate() {
        check_kind(id, Kind::Int, &format!("cluster.voters[{i}]"))?;
    }
    if let Some(members) = obj.get("members") {
        let members = members
            .as_array()
            .ok_or("`cluster.members` is not an array")?;
        for (i, m) in members.iter().enumerate() {
            let at = format!("cluster.members[{i}]");
            let m = m
                .as_object()
                .ok_or_else(|| format!("`{at}` is not an object"))?;
            exact_members(
                m,
                &["id", "voter", "raft_addr", "client_addr"],
                &[],
                &format!("`{at}`"),
            )?;
            check_kind(&m["id"], Kind::Int, &format!("{at}.id"))?;
            if !m["voter"].is_boolean() {
                return Err(format!("`{at}.voter` is not a boolean"));
            }
            for name in ["raft_addr", "client_addr"] {
                if !m[name].is_null() {
                    check_kind(&m[name], Kind::Str, &format!("{at}.{name}"))?;
                }
            }
        }
    }
    Ok(())
}

fn exact_members(
    obj: &Map<String, Value>,
    required: &[&str],
    optional: &[&str],
    what: &str,
) -> Result<(), String> {
    if let Some(missing) = required.iter().find(|m| !obj.contains_key(**m)) {
        return Err(format!("{what} lacks `{missing}`"));
    }
    if let Some(extra) = obj
        .keys()
        .find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
    {
        return Err(format!("{what} has unexpected member `{extra}`"));
    }
    Ok(())
}

fn check_kind(v: &Value, kind: Kind, at: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Str => v.is_string(),
        // Counts and ids: a JSON integer, and none of them can be negative.
        Kind::Int => v.is_u64(),
        Kind::Num => v.as_f64().is_some_and(|x| x >= 0.0),
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::Str => "a string",
        Kind::Int => "an integer ≥ 0",
        Kind::Num => "a number ≥ 0",
    };
    Err(format!("`{at}` is {v}, not {want}"))
}

/// Evaluates one `~ stats` condition on a parsed `stats` object. `Err`
/// when the object lacks the array (not worth polling again).
pub(crate) fn stats_holds(
    stats: &Value,
    array: StatsArray,
    key: &str,
    cond: &StatsCond,
) -> Result<bool, String> {
    let entries = stats
        .get(array.name())
        .and_then(Value::as_array)
        .ok_or_else(|| format!("stats has no `{}` array", array.name()))?;
    let mut found = entries
        .iter()
        .filter(|e| e.get(array.key_member()).and_then(Value::as_str) == Some(key));
    Ok(match cond {
        StatsCond::Present => found.next().is_some(),
        StatsCond::Absent => found.next().is_none(),
        StatsCond::Equals { field, value } => {
            found.any(|e| e.get(field).is_some_and(|got| value_equals(got, value)))
        }
    })
}

/// `VALUE` of a `~ stats` line against a JSON member: as numbers when
/// `VALUE` is an integer, else as strings.
fn value_equals(got: &Value, want: &str) -> bool {
    if let Ok(n) = want.parse::<i64>() {
        return match got {
            Value::Number(g) => {
                g.as_i64() == Some(n)
                    || g.as_u64().is_some_and(|g| i64::try_from(g) == Ok(n))
                    || g.as_f64() == Some(n as f64)
            }
            _ => false,
        };
    }
    got.as_str() == Some(want)
}

/// The entries of `array` named `key`, as JSON text, for failure messages.
pub(crate) fn describe_entries(stats: &Value, array: StatsArray, key: &str) -> String {
    let Some(entries) = stats.get(array.name()).and_then(Value::as_array) else {
        return format!("no `{}` array", array.name());
    };
    let found: Vec<String> = entries
        .iter()
        .filter(|e| e.get(array.key_member()).and_then(Value::as_str) == Some(key))
        .map(Value::to_string)
        .collect();
    if found.is_empty() {
        format!("no `{}` entry for {key:?}", array.name())
    } else {
        format!("{} entry {}", array.name(), found.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOK: &str = "0123456789abcdef0123456789abcdef";

    fn pats(text: &str) -> Vec<Pat> {
        let s = super::super::transcript::parse("t", "t", format!("< {text}").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        match &s.steps[0].action {
            super::super::transcript::Action::Expect(super::super::transcript::Expect::Line(p)) => {
                p.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    fn check(pattern: &str, line: &str, expect: Result<(), &str>) {
        let got = match_line(&pats(pattern), &HashMap::new(), line.as_bytes()).map(|_| ());
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) if e.contains(want) => {}
            (got, want) => panic!("{pattern:?} vs {line:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn placeholders() {
        check("ok", "ok", Ok(()));
        check("ok", "ok ", Err("unexpected \" \" at the end"));
        check(
            "ok",
            "o",
            Err("at byte 1: expected \"k\", found the end of the line"),
        );
        check(
            "ok 1",
            "ok 2",
            Err("at byte 3: expected \"1\", found \"2\""),
        );
        check("ok <TOKEN> 33", &format!("ok {TOK} 33"), Ok(()));
        check(
            "ok <TOKEN> 33",
            &format!("ok {} 33", TOK.to_uppercase()),
            Err("no token"),
        );
        check("ok <TOKEN> 33", "ok 0123 33", Err("no token"));
        check("ok <TOKEN>", &format!("ok {TOK}0"), Err("at the end"));
        check("ok <INT>", "ok 12", Ok(()));
        check("ok <INT>", "ok -1", Err("no integer"));
        check("ok <INT>", "ok ", Err("no integer"));
        check("ok <JSON>", r#"ok {"a":[1]}"#, Ok(()));
        check("ok <JSON>", "ok [1]", Err("not an object"));
        check("ok <JSON>", "ok {", Err("invalid JSON"));
        check("a\\x3cb", "a<b", Ok(()));
        // Long lines are quoted cut, with their length.
        let long = "x".repeat(5000);
        check(
            "ok",
            &long,
            Err(&format!("found \"{}...\" (5000 bytes)", "x".repeat(200))),
        );
    }

    #[test]
    fn token_binding_and_substitution() {
        let line = format!("acquired {TOK} 33");
        let binds = match_line(
            &pats("acquired <TOKEN:t> <INT>"),
            &HashMap::new(),
            line.as_bytes(),
        )
        .unwrap();
        assert_eq!(binds, vec![("t".to_string(), TOK.as_bytes().to_vec())]);
        let vars: HashMap<_, _> = binds.into_iter().collect();
        let sub = vec![
            Pat::Bytes(b"ok ".to_vec()),
            Pat::Var("t".into()),
            Pat::Bytes(b" 33".to_vec()),
        ];
        assert!(match_line(&sub, &vars, format!("ok {TOK} 33").as_bytes()).is_ok());
        assert!(match_line(&sub, &vars, format!("ok {} 33", &TOK[..31]).as_bytes()).is_err());
    }

    fn good_stats() -> Value {
        json!({
            "connections": 2,
            "locks": [{"key": "a", "owner_conn_id": 1, "lease_expires_in_s": 31.5, "waiters": 1}],
            "semaphores": [{"key": "s", "limit": 3, "holders": 2, "waiters": 0}],
            "idle_locks": [{"key": "b", "idle_s": 0}],
            "idle_semaphores": [],
            "signal_channels": [{"pattern": "x.*", "listeners": 1},
                                {"pattern": "x.*", "group": "g", "listeners": 2}]
        })
    }

    #[test]
    fn stats_shape_accepts_protocol_example() {
        stats_shape(&good_stats()).unwrap();
        let example = r#"{"connections":2,"locks":[{"key":"job-7","owner_conn_id":1,"lease_expires_in_s":31.874,"waiters":1}],"semaphores":[{"key":"pool","limit":3,"holders":2,"waiters":0}],"idle_locks":[{"key":"job-1","idle_s":12.5}],"idle_semaphores":[],"signal_channels":[]}"#;
        stats_shape(&serde_json::from_str(example).unwrap()).unwrap();
        // A cluster member's, with and without a known leader.
        let mut v = good_stats();
        v["cluster"] = json!({"node_id": 2, "role": "follower", "term": 3, "leader_id": 1,
            "leader_addr": "127.0.0.1:7001", "commit_index": 9, "applied_index": 9,
            "snapshot_index": 1, "voters": [1, 2, 3]});
        stats_shape(&v).unwrap();
        v["cluster"]["members"] = json!([{"id": 1, "voter": true,
            "raft_addr": "127.0.0.1:7101", "client_addr": "127.0.0.1:7001"},
            {"id": 4, "voter": false, "raft_addr": null, "client_addr": null}]);
        stats_shape(&v).unwrap();
        v["cluster"]["leader_id"] = Value::Null;
        v["cluster"]["leader_addr"] = Value::Null;
        stats_shape(&v).unwrap();
    }

    #[test]
    fn stats_shape_rejects() {
        for (edit, want) in [
            (json!({"connections": -1}), "`connections` is -1"),
            (json!({"connections": 1.5}), "`connections` is 1.5"),
            (json!({"locks": null}), "`locks` is not an array"),
            (json!({"extra": 1}), "unexpected member `extra`"),
            (
                json!({"locks": [{"key": "a", "owner_conn_id": 1, "lease_expires_in_s": -0.5, "waiters": 0}]}),
                "`locks[0].lease_expires_in_s` is -0.5",
            ),
            (
                json!({"locks": [{"key": "a", "owner_conn_id": 1, "waiters": 0}]}),
                "`locks[0]` lacks `lease_expires_in_s`",
            ),
            (
                json!({"semaphores": [{"key": 1, "limit": 3, "holders": 2, "waiters": 0}]}),
                "`semaphores[0].key` is 1",
            ),
            (
                json!({"idle_locks": [{"key": "a", "idle_s": 1, "waiters": 0}]}),
                "unexpected member `waiters`",
            ),
            (
                json!({"signal_channels": [{"pattern": "a", "group": 3, "listeners": 1}]}),
                "`signal_channels[0].group` is 3",
            ),
            (json!({"cluster": []}), "`cluster` is not an object"),
            (json!({"cluster": {"node_id": 1}}), "`cluster` lacks `term`"),
            (
                json!({"cluster": {"node_id": 1, "term": -2, "commit_index": 3, "applied_index": 3,
                    "snapshot_index": 1, "role": "leader", "leader_id": 1,
                    "leader_addr": "127.0.0.1:7001", "voters": [1, 2, 3]}}),
                "`cluster.term` is -2",
            ),
            (
                json!({"cluster": {"node_id": 1, "term": 2, "commit_index": 3, "applied_index": 3,
                    "snapshot_index": 1, "role": "leader", "leader_id": 1,
                    "leader_addr": 7001, "voters": [1, 2, 3]}}),
                "`cluster.leader_addr` is 7001",
            ),
            (
                json!({"cluster": {"node_id": 1, "term": 2, "commit_index": 3, "applied_index": 3,
                    "snapshot_index": 1, "role": "leader", "leader_id": 1,
                    "leader_addr": null, "voters": [1],
                    "members": [{"id": 1, "voter": "yes", "raft_addr": null, "client_addr": null}]}}),
                "`cluster.members[0].voter` is not a boolean",
            ),
        ] {
            let mut v = good_stats();
            for (k, val) in edit.as_object().unwrap() {
                v[k] = val.clone();
            }
            let got = stats_shape(&v).unwrap_err();
            assert!(got.contains(want), "got {got:?}, want {want:?}");
        }
        let mut v = good_stats();
        v.as_object_mut().unwrap().remove("signal_channels");
        assert!(stats_shape(&v)
            .unwrap_err()
            .contains("lacks `signal_channels`"));
    }

    #[test]
    fn stats_conditions() {
        let v = good_stats();
        let eq = |f: &str, val: &str| StatsCond::Equals {
            field: f.into(),
            value: val.into(),
        };
        let holds = |a, k: &str, c: &StatsCond| stats_holds(&v, a, k, c).unwrap();
        assert!(holds(StatsArray::Locks, "a", &StatsCond::Present));
        assert!(!holds(StatsArray::Locks, "b", &StatsCond::Present));
        assert!(holds(StatsArray::Locks, "b", &StatsCond::Absent));
        assert!(holds(StatsArray::Locks, "a", &eq("waiters", "1")));
        assert!(!holds(StatsArray::Locks, "a", &eq("waiters", "0")));
        assert!(holds(StatsArray::Semaphores, "s", &eq("limit", "3")));
        assert!(holds(StatsArray::IdleLocks, "b", &eq("idle_s", "0")));
        assert!(holds(StatsArray::SignalChannels, "x.*", &eq("group", "g")));
        assert!(holds(
            StatsArray::SignalChannels,
            "x.*",
            &eq("listeners", "2")
        ));
        // A string value is never equal to a number, nor the other way round.
        assert!(!holds(StatsArray::Semaphores, "s", &eq("key", "3")));
        assert!(!holds(StatsArray::Locks, "a", &eq("waiters", "one")));
        assert!(describe_entries(&v, StatsArray::Locks, "a").contains("\"waiters\":1"));
        assert!(describe_entries(&v, StatsArray::Locks, "z").contains("no `locks` entry"));
    }
}
