//! Spec drift, as ordinary tests (STYLE.md convention 15): the command and
//! status tables of `spec/protocol.md` against the codec's lists, every
//! status word exercised by a transcript (or named as time-dependent in
//! `spec/conformance/README.md`), and the sans-IO rule of `src/core` and
//! `src/wire` (convention 1), and the README's configuration table against
//! the settings table (`dflockd::config::SETTINGS`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dflockd::wire::{Status, COMMANDS, NOT_LEADER};

const PROTOCOL: &str = "spec/protocol.md";
const CONFORMANCE: &str = "spec/conformance";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The body rows of the Markdown table whose header line is `header`, each
/// split into trimmed cells. Panics if the table is missing, so renaming a
/// column is noticed.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    assert!(
        lines.next().is_some(),
        "{PROTOCOL} has no table with header `{header}`"
    );
    let sep = lines.next().unwrap_or_default();
    assert!(
        sep.starts_with("|---"),
        "`{header}` is not followed by a separator row"
    );
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The `code spans` of a Markdown cell or paragraph.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A first-column cell that is one code span: its content.
fn code_cell(cell: &str) -> &str {
    let inner = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`'));
    inner.unwrap_or_else(|| panic!("first cell {cell:?} is not one code span"))
}

/// The README's configuration table lists every setting of the settings
/// table, with its variable and its default, and nothing else (besides
/// `--version`): a new setting is one row in `src/config/table.rs`, and
/// this test says what the README must add.
#[test]
fn readme_configuration_table_matches_the_settings() {
    use dflockd::config::SETTINGS;
    let doc = read("README.md");
    let rows = table(&doc, "| Flag | Environment variable | Default | Meaning |");
    let mut listed = BTreeSet::new();
    for row in &rows {
        let flags = code_spans(&row[0]);
        let vars = code_spans(&row[1]);
        for flag in &flags {
            if *flag == "--version" {
                continue;
            }
            let s = SETTINGS
                .iter()
                .find(|s| s.dashed() == *flag)
                .unwrap_or_else(|| panic!("README lists {flag}, which is not a setting"));
            assert!(
                vars.contains(&s.env),
                "README: the row of {flag} does not name {}",
                s.env
            );
            let default = row[2].replace('`', "");
            assert!(
                default.starts_with(&s.default_text()),
                "README: the default of {flag} is {:?}, the table says {:?}",
                row[2],
                s.default_text()
            );
            listed.insert(s.flag);
        }
    }
    let missing: Vec<String> = SETTINGS
        .iter()
        .filter(|s| !listed.contains(s.flag))
        .map(|s| s.dashed())
        .collect();
    assert!(
        missing.is_empty(),
        "README's configuration table lacks {missing:?}"
    );
}

/// `ok`, `acquired`, every bare status, then `error_not_leader`, in the
/// protocol's order.
fn status_words() -> Vec<&'static str> {
    let mut words = vec!["ok", "acquired"];
    words.extend(Status::ALL.iter().map(|s| s.as_str()));
    words.push(NOT_LEADER);
    words
}

#[test]
fn command_table_matches_wire_commands() {
    let doc = read(PROTOCOL);
    let rows = table(&doc, "| Command | Line 2 | Line 3 | Replies |");
    let commands: Vec<&str> = rows.iter().map(|r| code_cell(&r[0])).collect();
    assert_eq!(commands, COMMANDS, "{PROTOCOL} §3 against wire::COMMANDS");
}

#[test]
fn status_table_matches_wire_statuses() {
    let doc = read(PROTOCOL);
    let rows = table(&doc, "| Status | Meaning |");
    let statuses: Vec<&str> = rows.iter().map(|r| code_cell(&r[0])).collect();
    assert_eq!(
        statuses,
        status_words(),
        "{PROTOCOL} §4 against ok, acquired, wire::Status::ALL and wire::NOT_LEADER"
    );
}

#[test]
fn command_table_replies_are_status_words() {
    let doc = read(PROTOCOL);
    let words = status_words();
    for row in table(&doc, "| Command | Line 2 | Line 3 | Replies |") {
        let replies = row.last().expect("a Replies cell");
        for span in code_spans(replies) {
            let word = span.split(' ').next().unwrap_or_default();
            assert!(
                words.contains(&word),
                "{PROTOCOL} §3, {}: reply `{span}` does not start with a status word",
                row[0]
            );
        }
    }
}

/// The status word of every `<` line of every transcript file, and of
/// every client scenario script (`spec/conformance/client/`, where `<`
/// lines are what the scripted server sends: the only place a status a
/// single-node server never sends, such as `error_not_leader`, can be
/// exercised).
fn transcript_statuses() -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for dir in [CONFORMANCE.to_string(), format!("{CONFORMANCE}/client")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if !name.ends_with(".txt") || name == "expected-failures.txt" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read transcript");
            for line in text.lines() {
                if let Some(pattern) = line.strip_prefix("< ") {
                    seen.insert(pattern.split(' ').next().unwrap_or_default().to_string());
                }
            }
        }
    }
    seen
}

/// The status words `spec/conformance/README.md` names as time-dependent
/// (and so absent from the transcripts).
fn time_dependent_statuses() -> Vec<String> {
    let readme = read(&format!("{CONFORMANCE}/README.md"));
    let start = readme
        .find("Time-dependent behaviour")
        .expect("README.md has the time-dependent paragraph");
    let paragraph = readme[start..].split("\n\n").next().unwrap_or_default();
    let words = status_words();
    code_spans(paragraph)
        .into_iter()
        .filter(|s| words.contains(s))
        .map(String::from)
        .collect()
}

#[test]
fn every_status_word_is_in_a_transcript_or_time_dependent() {
    let seen = transcript_statuses();
    let timed = time_dependent_statuses();
    assert!(
        !timed.is_empty(),
        "README.md's time-dependent paragraph names no status word"
    );
    let missing: Vec<&str> = status_words()
        .into_iter()
        .filter(|w| !seen.contains(*w) && !timed.iter().any(|t| t == w))
        .collect();
    assert!(
        missing.is_empty(),
        "status words no transcript expects and README.md does not call time-dependent: {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// The core and the codec do no I/O.

/// What `src/core` and `src/wire` must never mention: sockets, the runtime,
/// the clock, randomness.
const BANNED: &[&str] = &[
    "std::net",
    "smol",
    "async_io",
    "async_net",
    "Instant::now",
    "SystemTime",
    "getrandom",
    "thread_rng",
    "rand::",
];

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `(line, pattern)` for every banned mention in `text`. A mention is a
/// match not glued to a longer identifier (`smol` is banned, `smoldering`
/// is not).
fn banned_mentions(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for pat in BANNED {
            let hit = line.match_indices(pat).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + pat.len()..].chars().next();
                let glued_before = pat.starts_with(is_ident) && before.is_some_and(is_ident);
                let glued_after = pat.ends_with(is_ident) && after.is_some_and(is_ident);
                !glued_before && !glued_after
            });
            if hit {
                found.push((i + 1, *pat));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_and_wire_do_no_io() {
    let mut files = Vec::new();
    rust_files(Path::new("src/core"), &mut files);
    rust_files(Path::new("src/wire"), &mut files);
    assert!(
        files.len() >= 2,
        "found no sources under src/core and src/wire"
    );
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, pat) in banned_mentions(&text) {
            violations.push(format!("{}:{line}: `{pat}`", file.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "src/core and src/wire must not touch sockets, smol, the clock or an RNG \
         (STYLE.md convention 1):\n{}",
        violations.join("\n")
    );
}

#[test]
fn banned_mentions_ignore_longer_identifiers() {
    let text = "use std::net::TcpStream;\nlet smoldering = 1;\n// smol\nlet t = Instant::now();\noperand::x\nlet x = rand::random();\nInstant::now_ish";
    assert_eq!(
        banned_mentions(text),
        vec![
            (1, "std::net"),
            (3, "smol"),
            (4, "Instant::now"),
            (6, "rand::")
        ]
    );
}

#[test]
fn table_reader() {
    let doc = "x\n| A | B |\n|---|---|\n| `a` | b `ok` c |\n| `c` | d |\n\n| A | B |\n";
    assert_eq!(
        table(doc, "| A | B |"),
        vec![vec!["`a`", "b `ok` c"], vec!["`c`", "d"]]
    );
    assert_eq!(code_spans("b `ok` c `x y`"), vec!["ok", "x y"]);
}

/// The property names in spec/semantics.md §11 are exactly the ones the
/// stateright model checks, in the same groups.
#[test]
fn semantics_properties_match_the_model() {
    let doc = read("spec/semantics.md");
    let section = &doc[doc.find("## 11. Properties").expect("§11 exists")..];
    let group = |start: &str, end: Option<&str>| -> Vec<String> {
        let from = section
            .find(start)
            .unwrap_or_else(|| panic!("{start} in §11"));
        let rest = &section[from..];
        let rest = match end.and_then(|e| rest.find(e)) {
            Some(to) => &rest[..to],
            None => rest,
        };
        rest.lines()
            .filter_map(|l| l.strip_prefix("* **"))
            .filter_map(|l| l.split("**").next())
            .map(str::to_owned)
            .collect()
    };
    let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    use dflockd_model::checker::{ALWAYS, EVENTUALLY, SOMETIMES};
    assert_eq!(group("Always:", Some("Sometimes")), names(&ALWAYS));
    assert_eq!(group("Sometimes", Some("Eventually:")), names(&SOMETIMES));
    assert_eq!(group("Eventually:", None), names(&EVENTUALLY));
}

// ---------------------------------------------------------------------------
// Only the engine calls the core.

/// `text` without comments and without the contents of string literals:
/// what the compiler sees as code (close enough for a name search: raw
/// strings and char literals holding a quote are not used where it runs).
fn code_only(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut prev = '\0';
        for c in line.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                    out.push('"');
                }
                continue;
            }
            if c == '/' && prev == '/' {
                out.pop();
                break;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Lines of `text` (1-based) whose code names the core's type `Core`
/// (`CoreConfig`, `CoreMetrics` and the module path `core::` are fine: they
/// are data and a namespace, not the transition function).
fn core_mentions(text: &str) -> Vec<usize> {
    code_only(text)
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.match_indices("Core").any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + 4..].chars().next();
                !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
            })
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// spec/ARCHITECTURE.md, "The engine": `src/engine` is the only door to the
/// core. Outside `src/core` and `src/engine`, no code of the server, its
/// fronts or its integration tests names the `Core` type, so none can call
/// it; they apply `engine::Input`s through the door. The differential
/// comparator (`src/differential.rs`) is one exception by design: it
/// drives the bare core against the model. Cluster mode's replicated
/// state machine (`src/cluster/machine.rs`) is the other: it is the door
/// of the replicated core, applying committed log entries (spec/cluster.md
/// §3), and the engine's door hands it requests through `Replicator`.
#[test]
fn only_the_engine_calls_the_core() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    rust_files(Path::new("tests/it"), &mut files);
    files.push(PathBuf::from("fuzz/fuzz_targets/server_conn.rs"));
    let exempt = |p: &Path| {
        p.starts_with("src/core")
            || p.starts_with("src/engine")
            || p == Path::new("src/differential.rs")
            || p == Path::new("src/cluster/machine.rs")
    };
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| !exempt(f)) {
        let text = std::fs::read_to_string(file).expect("read source");
        checked += 1;
        for line in core_mentions(&text) {
            violations.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(checked > 20, "found only {checked} sources to check");
    assert!(
        violations.is_empty(),
        "only src/engine may call the core; apply an engine::Input through the door instead:\n{}",
        violations.join("\n")
    );
}

#[test]
fn core_mentions_are_code_not_comments_or_strings() {
    let text = "use crate::core::{Core, Time};\n// Core in a comment\nlet s = \"Core\"; let c = CoreConfig::default();\nlet x = Core::new(cfg, now); // Core\nlet y = self.core.now();";
    assert_eq!(core_mentions(text), vec![1, 4]);
}

/// The arrows of spec/ARCHITECTURE.md point one way: a front never imports
/// the other front or the server that composes them, and the engine
/// imports no front.
#[test]
fn fronts_do_not_import_each_other() {
    let rules: [(&str, &[&str]); 3] = [
        ("src/tcp", &["crate::http", "crate::server"]),
        ("src/http", &["crate::tcp", "crate::server"]),
        (
            "src/engine",
            &["crate::tcp", "crate::http", "crate::server"],
        ),
    ];
    let mut violations = Vec::new();
    for (dir, banned) in rules {
        let mut files = Vec::new();
        rust_files(Path::new(dir), &mut files);
        assert!(!files.is_empty(), "no sources under {dir}");
        for file in files {
            let code = code_only(&std::fs::read_to_string(&file).expect("read source"));
            for (i, line) in code.lines().enumerate() {
                for b in banned {
                    if line.contains(b) {
                        violations.push(format!("{}:{}: `{b}`", file.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
