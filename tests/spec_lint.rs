//! The spec lint: the documents a client author learns from hold together.
//! Ordinary tests (STYLE.md convention 15), over `README.md` and every
//! Markdown file under `spec/`:
//!
//! * **Section references.** Every `§N` names a section that exists, in a
//!   document of this repository. A bare `§N` is a section of the document
//!   it appears in; `protocol.md §2.4`, `` `spec/http.md` §7``, a link
//!   followed by `§N` and the words `protocol` and `semantics` name another
//!   one; `§3, §5`, `§3–§7` and `§3 and §4` keep the document of the first.
//!   Any other word right before `§` (`reference §7.2`) is a document the
//!   reader does not have, and an error.
//! * **Links.** Every `[text](path#anchor)` points at a file or directory
//!   of the repository (no URLs, no absolute paths, nothing above the
//!   root), and its anchor at a heading of that Markdown file (GitHub's
//!   heading slugs).
//! * **Decisions.** Every `Dn` cited is a row of protocol.md §10.
//! * **Transcripts.** Every command of protocol.md §3 and every status word
//!   of §4 occurs in at least one transcript of `spec/conformance/`, unless
//!   [`NOT_IN_TRANSCRIPTS`] names it with the reason. That the same tables
//!   match the codec is `tests/spec_drift.rs`.
//! * **Flags.** `dflockd --help`, run from the built binary, and the README
//!   configuration table list the same flags, and agree for each on its
//!   environment variable, its default, its unit (seconds or not) and what
//!   0 means.
//!
//! Every check is a function over text, so the tests at the bottom plant
//! broken input and watch each one fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Status words and commands of protocol.md's tables that no transcript
/// can exercise, each with the reason. An entry that a transcript does
/// exercise is stale and fails the lint.
const NOT_IN_TRANSCRIPTS: &[(&str, &str)] = &[
    (
        "barrier",
        "cluster mode only (a single node answers error, as to an unknown command); \
         tested against three members in tests/it/cluster.rs",
    ),
    (
        "stable-ref",
        "cluster mode only (a single node answers error, as to an unknown command); \
         tested against three members in tests/it/cluster.rs",
    ),
    (
        "error_draining",
        "needs the server to be signalled (SIGTERM), which a runner holding only \
         an address cannot do; tests/it/shutdown.rs covers it",
    ),
    (
        "error_not_leader",
        "cluster mode only; the transcripts run against one standalone server \
         (the scripted client scenarios in spec/conformance/client/ play it)",
    ),
];

// ---------------------------------------------------------------------------
// Documents

/// A Markdown document: its path from the repository root (`/`-separated)
/// and its text.
struct Doc {
    path: String,
    text: String,
}

/// `README.md` and every `.md` file under `spec/`, sorted by path.
fn documents() -> Vec<Doc> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut paths = vec![PathBuf::from("README.md")];
    walk(Path::new("spec"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| Doc {
            text: std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            path: p.to_string_lossy().replace('\\', "/"),
        })
        .collect()
}

/// The lines of `text` outside fenced code blocks, as (1-based line
/// number, line).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| t.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m && t.trim_end() == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// `line` with the inside of every code span blanked (same byte length,
/// backticks kept), so offsets into it are offsets into `line`.
fn mask_code_spans(line: &str) -> String {
    let mut inside = false;
    let bytes: Vec<u8> = line
        .bytes()
        .map(|b| {
            if b == b'`' {
                inside = !inside;
                b
            } else if inside {
                b' '
            } else {
                b
            }
        })
        .collect();
    // Only ASCII was substituted, and only whole code spans' bytes.
    String::from_utf8(bytes).unwrap_or_default()
}

/// A heading line's level-free text, if `line` is an ATX heading.
fn heading(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches('#');
    (line.starts_with('#') && rest.starts_with(' ')).then(|| rest.trim())
}

/// The section numbers of a document: `7.14` for `### 7.14 ...`, `10` for
/// `## 10. ...`.
fn section_numbers(text: &str) -> BTreeSet<String> {
    prose_lines(text)
        .into_iter()
        .filter_map(|(_, l)| heading(l))
        .filter_map(|h| h.split(' ').next())
        .map(|n| n.trim_end_matches('.'))
        .filter(|n| is_section_number(n))
        .map(String::from)
        .collect()
}

fn is_section_number(n: &str) -> bool {
    !n.is_empty()
        && n.split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// GitHub's anchor for a heading: lowercased, punctuation dropped (hyphens
/// and underscores kept), spaces turned into hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a document's headings produce, duplicates numbered as
/// GitHub numbers them (`x`, `x-1`, `x-2`).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for h in prose_lines(text)
        .into_iter()
        .filter_map(|(_, l)| heading(l))
    {
        let s = slug(h);
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

/// The directory part of a repository path (`spec` for `spec/http.md`,
/// empty for `README.md`).
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `base/rel` with `.` and `..` resolved; `None` if it leaves the
/// repository.
fn join(base: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

// ---------------------------------------------------------------------------
// Section references

/// Words that may stand right before a `§N` of the same document.
const PROSE_WORDS: &[&str] = &[
    "of", "in", "and", "or", "see", "as", "by", "to", "from", "under", "with", "at", "per", "also",
    "via", "on", "is", "are", "for", "than", "then", "through",
];

/// What the text right before a `§` says about the document it names.
enum Qualifier {
    /// Nothing: the current document (or the previous reference's).
    None,
    /// A document of the repository, by path.
    Doc(String),
    /// A word that names no document of the repository.
    Unknown(String),
}

/// Resolves a document name as written in prose (`protocol.md`,
/// `spec/http.md`, `semantics`) from the document at `from`.
fn resolve_doc(from: &str, name: &str, docs: &BTreeMap<&str, &Doc>) -> Option<String> {
    let candidates = match name {
        "protocol" | "semantics" => vec![format!("spec/{name}.md")],
        n if n.ends_with(".md") => [join(dir_of(from), n), join("", n), join("spec", n)]
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![],
    };
    candidates
        .into_iter()
        .find(|c| docs.contains_key(c.as_str()))
}

/// Classifies the text before a `§` (everything from the start of the
/// document's prose up to it).
fn qualifier(before: &str, from: &str, docs: &BTreeMap<&str, &Doc>) -> Qualifier {
    let chunk = before
        .trim_end()
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default();
    if chunk.is_empty() || chunk.ends_with(|c: char| ",;:(|[—–-".contains(c)) {
        return Qualifier::None;
    }
    // `[spec/http.md](spec/http.md)`: the link target names the document.
    let name = match chunk.split_once("](") {
        Some((_, target)) => target.trim_end_matches(')'),
        None => chunk,
    };
    let name = name
        .trim_start_matches(['(', '[', '`', '*', '_'])
        .trim_end_matches(['`', ')', '*', '_'])
        .trim_end_matches("'s");
    if name.ends_with(".md") || name == "protocol" || name == "semantics" {
        return match resolve_doc(from, name, docs) {
            Some(path) => Qualifier::Doc(path),
            None => Qualifier::Unknown(name.to_string()),
        };
    }
    if PROSE_WORDS.contains(&name.to_lowercase().as_str()) {
        Qualifier::None
    } else {
        Qualifier::Unknown(name.to_string())
    }
}

/// The problems with the `§N` references of every document.
fn check_section_refs(docs: &[Doc]) -> Vec<String> {
    let by_path: BTreeMap<&str, &Doc> = docs.iter().map(|d| (d.path.as_str(), d)).collect();
    let sections: BTreeMap<&str, BTreeSet<String>> = docs
        .iter()
        .map(|d| (d.path.as_str(), section_numbers(&d.text)))
        .collect();
    let mut problems = Vec::new();
    for doc in docs {
        // The prose as one string, code spans blanked, with where each
        // line starts, so a qualifier may sit at the end of the line before.
        let mut prose = String::new();
        let mut masked = String::new();
        let mut starts = Vec::new();
        for (n, line) in prose_lines(&doc.text) {
            starts.push((prose.len(), n));
            prose.push_str(line);
            prose.push('\n');
            masked.push_str(&mask_code_spans(line));
            masked.push('\n');
        }
        let line_of = |at: usize| {
            starts
                .iter()
                .take_while(|(s, _)| *s <= at)
                .last()
                .map_or(0, |(_, n)| *n)
        };
        // The previous reference: where it ended and its document.
        let mut previous: Option<(usize, String)> = None;
        for (at, _) in masked.match_indices('§') {
            let after = &prose[at + '§'.len_utf8()..];
            let number: String = after
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.').to_string();
            let end = at + '§'.len_utf8() + number.len();
            let here = format!("{}:{}", doc.path, line_of(at));
            if !is_section_number(&number) {
                problems.push(format!("{here}: `§` without a section number"));
                continue;
            }
            let inherited = previous.as_ref().and_then(|(prev_end, prev_doc)| {
                let between = prose[*prev_end..at].trim();
                let joins = ["", ",", "–", "-", "and", "or", "to"].contains(&between);
                joins.then(|| prev_doc.clone())
            });
            let target = match inherited {
                Some(d) => d,
                None => match qualifier(&prose[..at], &doc.path, &by_path) {
                    Qualifier::None => doc.path.clone(),
                    Qualifier::Doc(d) => d,
                    Qualifier::Unknown(word) => {
                        problems.push(format!(
                            "{here}: `{word} §{number}`: `{word}` is not a document of this \
                             repository (name one: protocol.md, semantics.md, http.md, ...)"
                        ));
                        previous = None;
                        continue;
                    }
                },
            };
            if !sections[target.as_str()].contains(&number) {
                problems.push(format!("{here}: §{number} does not exist in {target}"));
            }
            previous = Some((end, target));
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Links

/// The problems with the Markdown links of every document. `exists` says
/// whether a repository path is a file or directory.
fn check_links(docs: &[Doc], exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    let anchors_of: BTreeMap<&str, BTreeSet<String>> = docs
        .iter()
        .map(|d| (d.path.as_str(), anchors(&d.text)))
        .collect();
    let mut problems = Vec::new();
    for doc in docs {
        for (n, line) in prose_lines(&doc.text) {
            let masked = mask_code_spans(line);
            for (at, _) in masked.match_indices("](") {
                let rest = &line[at + 2..];
                let Some(close) = rest.find(')') else {
                    continue;
                };
                let target = rest[..close].split(' ').next().unwrap_or_default();
                let here = format!("{}:{n}: `{target}`", doc.path);
                if target.contains("://") || target.starts_with("mailto:") {
                    problems.push(format!(
                        "{here}: a link outside the repository (the spec must stand alone)"
                    ));
                    continue;
                }
                if target.starts_with('/') {
                    problems.push(format!("{here}: an absolute path"));
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target, None),
                };
                let resolved = if path.is_empty() {
                    Some(doc.path.clone())
                } else {
                    join(dir_of(&doc.path), path)
                };
                let Some(resolved) = resolved else {
                    problems.push(format!("{here}: leaves the repository"));
                    continue;
                };
                if !exists(&resolved) {
                    problems.push(format!("{here}: {resolved} does not exist"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    match anchors_of.get(resolved.as_str()) {
                        Some(a) if a.contains(anchor) => {}
                        Some(_) => {
                            problems.push(format!("{here}: no heading of {resolved} has #{anchor}"))
                        }
                        None => problems.push(format!(
                            "{here}: an anchor into {resolved}, which is not a checked document"
                        )),
                    }
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Tables of protocol.md

/// The body rows of the Markdown table whose header line is `header`, each
/// split into trimmed cells; `None` if `doc` has no such table.
fn table(doc: &str, header: &str) -> Option<Vec<Vec<String>>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    lines.next().filter(|sep| sep.starts_with("|---"))?;
    Some(
        lines
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect(),
    )
}

/// The code spans of a cell.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The first code span of each row's first cell.
fn first_column_words(rows: &[Vec<String>]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| code_spans(&r[0]).first().map(|s| s.to_string()))
        .collect()
}

/// The decision numbers of protocol.md §10 (`D1` → 1).
fn decisions(protocol: &str) -> BTreeSet<u32> {
    table(protocol, "| # | Decision | Where | Upstream differs |")
        .expect("protocol.md §10 has the decisions table")
        .iter()
        .filter_map(|r| r[0].strip_prefix('D')?.parse().ok())
        .collect()
}

/// The problems with the `Dn` citations of every document.
fn check_decision_refs(docs: &[Doc], known: &BTreeSet<u32>) -> Vec<String> {
    let mut problems = Vec::new();
    for doc in docs {
        for (n, line) in prose_lines(&doc.text) {
            let masked = mask_code_spans(line);
            let bytes = masked.as_bytes();
            for (at, _) in masked.match_indices('D') {
                let glued_before = at > 0 && bytes[at - 1].is_ascii_alphanumeric();
                let digits: String = masked[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                let after = bytes.get(at + 1 + digits.len());
                let glued_after = after.is_some_and(|b| b.is_ascii_alphanumeric());
                if glued_before || glued_after || digits.is_empty() {
                    continue;
                }
                let number: u32 = digits.parse().unwrap_or(u32::MAX);
                if !known.contains(&number) {
                    problems.push(format!(
                        "{}:{n}: D{digits} is not a decision of protocol.md §10",
                        doc.path
                    ));
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Transcripts

/// The command words sent and the status words expected by one transcript.
/// Lines sent are counted per connection, so every third one, starting
/// with the first, is a command word.
fn transcript_words(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut commands = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut conn = "1".to_string();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('@') {
            if let Some(n) = rest.split(' ').next().filter(|_| !rest.ends_with(" close")) {
                conn = n.to_string();
            }
        } else if line == ">" || line.starts_with("> ") {
            let count = sent.entry(conn.clone()).or_insert(0);
            if count.is_multiple_of(3) {
                commands.insert(line.get(2..).unwrap_or_default().to_string());
            }
            *count += 1;
        } else if let Some(reply) = line.strip_prefix("< ") {
            let word = reply.split(' ').next().unwrap_or_default();
            if !word.starts_with('<') && word != "sig" {
                statuses.insert(word.to_string());
            }
        }
    }
    (commands, statuses)
}

/// The problems with transcript coverage: each word of `required` (the
/// protocol's commands and statuses) must occur in `seen` or be exempt, and
/// no exemption may be stale or unexplained.
fn check_coverage(
    required: &[String],
    seen: &BTreeSet<String>,
    exempt: &[(&str, &str)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for word in required {
        if !seen.contains(word) && !exempt.iter().any(|(w, _)| w == word) {
            problems.push(format!(
                "`{word}` is in protocol.md's tables but in no spec/conformance/*.txt \
                 transcript: add one, or list it in NOT_IN_TRANSCRIPTS with the reason"
            ));
        }
    }
    for (word, reason) in exempt {
        if seen.contains(*word) {
            problems.push(format!(
                "`{word}` is exempt from transcripts but a transcript exercises it: \
                 drop the stale entry"
            ));
        }
        if reason.trim().is_empty() {
            problems.push(format!("`{word}` is exempt without a reason"));
        }
    }
    problems
}

/// `(name, text)` of every transcript in `spec/conformance/`.
fn transcripts() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("spec/conformance").expect("read spec/conformance") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".txt") && name != "expected-failures.txt" {
            let text = std::fs::read_to_string(&path).expect("read transcript");
            out.push((name, text));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Flags: --help against the README table

/// One flag as `--help` describes it.
#[derive(Debug, Default)]
struct HelpFlag {
    /// The value placeholder of the usage line (`secs`, `n`), if any.
    placeholder: Option<String>,
    description: String,
}

/// The flags of an argh `--help` text: the usage line's placeholders and
/// the `Options:` section's descriptions (continuation lines joined).
fn parse_help(help: &str) -> BTreeMap<String, HelpFlag> {
    let mut flags: BTreeMap<String, HelpFlag> = BTreeMap::new();
    let mut lines = help.lines();
    for line in lines.by_ref() {
        if line.trim() == "Options:" {
            break;
        }
    }
    let mut current: Option<String> = None;
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || indent == 0 {
            break;
        }
        // `  --flag   description`, `  -x, --flag   description`, or a
        // continuation line (indented further).
        let option = match text.split_once(", ") {
            Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
            _ => text,
        };
        if indent <= 2 && option.starts_with("--") {
            let (name, rest) = option.split_once(' ').unwrap_or((option, ""));
            let name = name.trim_end_matches(',');
            let entry = flags.entry(name.to_string()).or_default();
            entry.description = rest.trim().to_string();
            current = Some(name.to_string());
        } else if let Some(entry) = current.as_ref().and_then(|c| flags.get_mut(c)) {
            if !entry.description.is_empty() {
                entry.description.push(' ');
            }
            entry.description.push_str(text);
        }
    }
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    for (flag, entry) in flags.iter_mut() {
        let needle = format!("{flag} <");
        if let Some(at) = usage.find(&needle) {
            let rest = &usage[at + needle.len()..];
            entry.placeholder = rest.split('>').next().map(String::from);
        }
    }
    flags
}

/// One flag as the README configuration table describes it.
#[derive(Debug)]
struct ReadmeFlag {
    env: Option<String>,
    default: String,
    meaning: String,
}

/// The rows of the README configuration table, one entry per flag (a row
/// may list several flags and, in the same order, their variables).
fn parse_readme_flags(readme: &str) -> BTreeMap<String, ReadmeFlag> {
    let rows = table(
        readme,
        "| Flag | Environment variable | Default | Meaning |",
    )
    .expect("README.md has the configuration table");
    let mut out = BTreeMap::new();
    for row in rows {
        let envs = code_spans(&row[1]);
        for (i, flag) in code_spans(&row[0]).into_iter().enumerate() {
            out.insert(
                flag.to_string(),
                ReadmeFlag {
                    env: envs.get(i).map(|e| e.to_string()),
                    default: row[2].clone(),
                    meaning: row[3].clone(),
                },
            );
        }
    }
    out
}

/// Whether a text speaks of a duration in seconds ("seconds between …",
/// not "requests per second").
fn mentions_seconds(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.match_indices("second").any(|(at, _)| {
        let before = lower[..at].trim_end();
        !(before.ends_with("per") || before.ends_with("per-"))
    })
}

/// What `--help` says 0 means: `0 = unlimited`.
fn help_zero_meaning(text: &str) -> Option<String> {
    zero_meaning(text, false)
}

/// What the README table says 0 means: `` `0` (no cap) ``, `(0: forever)`,
/// `` `0` (= the rate) ``.
fn readme_zero_meaning(text: &str) -> Option<String> {
    zero_meaning(text, true)
}

/// The phrase after a standalone `0 =` (and, for the README's forms, after
/// `0:` and `0 (`), up to the next punctuation.
fn zero_meaning(text: &str, readme_forms: bool) -> Option<String> {
    let plain = text.replace('`', "");
    for (at, _) in plain.match_indices('0') {
        let glued = plain[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '.')
            || plain[at + 1..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
        if glued {
            continue;
        }
        let rest = plain[at + 1..].trim_start();
        let meaning = if let Some(r) = rest.strip_prefix('=') {
            r
        } else if let Some(r) = rest.strip_prefix(':').filter(|_| readme_forms) {
            r
        } else if let Some(r) = rest.strip_prefix('(').filter(|_| readme_forms) {
            r.trim_start().trim_start_matches('=')
        } else {
            continue;
        };
        let end = meaning
            .find([',', ';', '(', ')', '.'])
            .unwrap_or(meaning.len());
        return Some(meaning[..end].trim().to_lowercase());
    }
    None
}

/// Whether a meaning of 0 switches the limit off.
fn disables(meaning: &str) -> bool {
    [
        "unlimited",
        "no cap",
        "no limit",
        "none",
        "off",
        "never",
        "forever",
        "no idle",
    ]
    .iter()
    .any(|w| meaning.contains(w))
}

/// Whether two descriptions of what 0 means agree: both switch the limit
/// off, or both say something else and share a word of four letters or
/// more.
fn same_zero_meaning(a: &str, b: &str) -> bool {
    if disables(a) || disables(b) {
        return disables(a) && disables(b);
    }
    let words = |s: &str| -> BTreeSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 4)
            .map(str::to_lowercase)
            .collect()
    };
    !words(a).is_disjoint(&words(b))
}

/// The default `--help` states: the word after the last `default `.
fn help_default(description: &str) -> Option<&str> {
    let at = description.rfind("default ")?;
    description[at + "default ".len()..]
        .split([' ', ',', ')'])
        .next()
}

/// The problems between `--help` and the README table.
fn check_flags(
    help: &BTreeMap<String, HelpFlag>,
    readme: &BTreeMap<String, ReadmeFlag>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for flag in help.keys().filter(|f| *f != "--help") {
        if !readme.contains_key(flag) {
            problems.push(format!("{flag} is in --help but not in the README table"));
        }
    }
    for (flag, row) in readme {
        let Some(h) = help.get(flag) else {
            problems.push(format!("{flag} is in the README table but not in --help"));
            continue;
        };
        let desc = &h.description;
        // The variable: when --help names variables, the README's is one.
        if let Some(env) = &row.env {
            if desc.contains("DFLOCKD_") && !desc.contains(env.as_str()) {
                problems.push(format!("{flag}: the README says {env}, --help does not"));
            }
        }
        // The default: numbers and booleans must be equal.
        if let Some(hd) = help_default(desc) {
            let rd = code_spans(&row.default)
                .first()
                .copied()
                .unwrap_or(row.default.as_str())
                .to_string();
            let comparable = |s: &str| s.parse::<i64>().is_ok() || s == "true" || s == "false";
            if (comparable(hd) || comparable(&rd)) && hd != rd {
                problems.push(format!(
                    "{flag}: default {hd} in --help, {rd} in the README table"
                ));
            }
        }
        // The unit: seconds in one, seconds in the other. The README's
        // sign of seconds is the variable's `_S` suffix.
        let help_secs = h.placeholder.as_deref() == Some("secs") || mentions_seconds(desc);
        let readme_secs =
            row.env.as_deref().is_some_and(|e| e.ends_with("_S")) || mentions_seconds(&row.meaning);
        if help_secs != readme_secs {
            problems.push(format!(
                "{flag}: {} in --help but {} in the README table",
                if help_secs { "seconds" } else { "not seconds" },
                if readme_secs {
                    "seconds"
                } else {
                    "not seconds"
                },
            ));
        }
        let millis = |s: &str| s.contains("millisecond") || s.split_whitespace().any(|w| w == "ms");
        if millis(desc) != millis(&row.meaning) {
            problems.push(format!(
                "{flag}: milliseconds in only one of --help and README"
            ));
        }
        // What 0 means.
        let readme_zero = readme_zero_meaning(&format!("{} {}", row.default, row.meaning));
        match (help_zero_meaning(desc), readme_zero) {
            (Some(h0), Some(r0)) if !same_zero_meaning(&h0, &r0) => problems.push(format!(
                "{flag}: 0 means `{h0}` in --help but `{r0}` in the README table"
            )),
            (Some(h0), None) => problems.push(format!(
                "{flag}: --help says 0 means `{h0}`, the README table does not say"
            )),
            (None, Some(r0)) => problems.push(format!(
                "{flag}: the README table says 0 means `{r0}`, --help does not say"
            )),
            _ => {}
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// The lint on this repository

fn fail_on(problems: Vec<String>, what: &str) {
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

#[test]
fn section_references_resolve() {
    let docs = documents();
    assert!(docs.iter().any(|d| d.path == "spec/protocol.md"));
    fail_on(check_section_refs(&docs), "broken § references");
}

#[test]
fn links_stay_in_the_repository_and_resolve() {
    let docs = documents();
    fail_on(
        check_links(&docs, &|p| Path::new(p).exists()),
        "broken links",
    );
}

#[test]
fn decisions_cited_exist() {
    let docs = documents();
    let protocol = &docs
        .iter()
        .find(|d| d.path == "spec/protocol.md")
        .expect("protocol.md")
        .text;
    let known = decisions(protocol);
    assert!(known.len() >= 19, "decisions table: {known:?}");
    fail_on(check_decision_refs(&docs, &known), "unknown decisions");
}

#[test]
fn every_command_and_status_word_is_in_a_transcript() {
    let protocol = std::fs::read_to_string("spec/protocol.md").expect("protocol.md");
    let commands = table(&protocol, "| Command | Line 2 | Line 3 | Replies |").expect("§3 table");
    let statuses = table(&protocol, "| Status | Meaning |").expect("§4 table");
    let mut required = first_column_words(&commands);
    let command_count = required.len();
    required.extend(first_column_words(&statuses));
    assert!(command_count >= 16 && required.len() > command_count + 10);
    let mut sent = BTreeSet::new();
    let mut expected = BTreeSet::new();
    let all = transcripts();
    assert!(all.len() >= 40, "found {} transcripts", all.len());
    for (_, text) in &all {
        let (c, s) = transcript_words(text);
        sent.extend(c);
        expected.extend(s);
    }
    let (commands, statuses) = required.split_at(command_count);
    let mut problems = check_coverage(commands, &sent, NOT_IN_TRANSCRIPTS);
    problems.extend(check_coverage(statuses, &expected, NOT_IN_TRANSCRIPTS));
    fail_on(problems, "transcript coverage");
}

#[test]
fn help_and_readme_table_agree() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dflockd"))
        .arg("--help")
        .output()
        .expect("run dflockd --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dflockd --help failed:\n{help}");
    let help = parse_help(&help);
    assert!(
        help.contains_key("--read-timeout") && help.len() > 20,
        "parsed no flags from --help: {help:?}"
    );
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    fail_on(
        check_flags(&help, &parse_readme_flags(&readme)),
        "--help and the README configuration table disagree",
    );
}

// ---------------------------------------------------------------------------
// The lint on planted input

fn doc(path: &str, text: &str) -> Doc {
    Doc {
        path: path.into(),
        text: text.into(),
    }
}

fn planted_docs(extra: &str) -> Vec<Doc> {
    vec![
        doc(
            "spec/protocol.md",
            "# P\n\n## 1. Framing\n\n### 1.3 Lines\n\n## 2. Life\n\nSee §1.3 and §2.\n",
        ),
        doc(
            "spec/semantics.md",
            "# S\n\n## 3. Acquire\n\nAs protocol.md §1.3.\n",
        ),
        doc("README.md", extra),
    ]
}

#[test]
fn planted_section_references_fail() {
    assert_eq!(
        check_section_refs(&planted_docs("Fine.\n")),
        Vec::<String>::new()
    );
    let good = "See [spec/protocol.md](spec/protocol.md) §1.3, §2, semantics §3, \
                `spec/semantics.md` §3 and protocol.md §1.3–§2.\n";
    assert_eq!(
        check_section_refs(&planted_docs(good)),
        Vec::<String>::new()
    );
    let cases = [
        (
            "Gone: protocol.md §9.\n",
            "§9 does not exist in spec/protocol.md",
        ),
        (
            "A step: semantics §3.5.\n",
            "§3.5 does not exist in spec/semantics.md",
        ),
        (
            "Kept: semantics §3, §1.3.\n",
            "§1.3 does not exist in spec/semantics.md",
        ),
        ("Order (reference §7.2).\n", "`reference` is not a document"),
        (
            "Wrapped, reference\n§7.7.\n",
            "`reference` is not a document",
        ),
        ("No sections here: §1.\n", "§1 does not exist in README.md"),
        ("See nowhere.md §1.\n", "`nowhere.md` is not a document"),
    ];
    for (text, expected) in cases {
        let problems = check_section_refs(&planted_docs(text));
        assert!(
            problems.len() == 1 && problems[0].contains(expected),
            "{text:?}: expected one problem with {expected:?}, got {problems:?}"
        );
    }
    // In code, `§n` is not a reference.
    assert!(check_section_refs(&planted_docs("Write `§n`.\n```\n§99\n```\n")).is_empty());
}

#[test]
fn planted_broken_links_fail() {
    let exists =
        |p: &str| ["spec/protocol.md", "spec/semantics.md", "README.md", "spec"].contains(&p);
    let check = |text: &str| check_links(&planted_docs(text), &exists);
    assert!(check("[p](spec/protocol.md#13-lines) [d](spec/) [s](#x)\n# X\n").is_empty());
    let cases = [
        (
            "[p](spec/protocol.md#14-lines)\n",
            "no heading of spec/protocol.md has #14-lines",
        ),
        ("[p](spec/nothing.md)\n", "spec/nothing.md does not exist"),
        (
            "[p](https://example.com/ref.md)\n",
            "outside the repository",
        ),
        (
            "[p](/work/shared/reference/dflockd-v1.md)\n",
            "an absolute path",
        ),
        ("[p](../../etc/passwd)\n", "leaves the repository"),
    ];
    for (text, expected) in cases {
        let problems = check(text);
        assert!(
            problems.len() == 1 && problems[0].contains(expected),
            "{text:?}: expected one problem with {expected:?}, got {problems:?}"
        );
    }
    // A link inside a code span is text.
    assert!(check("`[p](spec/nothing.md)`\n").is_empty());
}

#[test]
fn planted_unknown_decision_fails() {
    let known: BTreeSet<u32> = (1..=19).collect();
    let problems = check_decision_refs(
        &planted_docs("D1–D19, D7's tokens; `D99`; UTF-8D2x\n"),
        &known,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let problems = check_decision_refs(&planted_docs("As decided (D20).\n"), &known);
    assert!(
        problems.len() == 1 && problems[0].contains("D20"),
        "{problems:?}"
    );
}

#[test]
fn planted_status_missing_from_transcripts_fails() {
    let transcript =
        "@1\n> l\n> k\n> 0\n< ok <TOKEN> 33\n@2\n> sl\n> k\n> 0 2\n< timeout\n< sig k x\n";
    let (sent, seen) = transcript_words(transcript);
    assert_eq!(sent, BTreeSet::from(["l".to_string(), "sl".to_string()]));
    assert_eq!(
        seen,
        BTreeSet::from(["ok".to_string(), "timeout".to_string()])
    );
    let words = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    assert!(check_coverage(&words(&["ok", "timeout"]), &seen, &[]).is_empty());
    // A status word the protocol lists and no transcript expects.
    let problems = check_coverage(&words(&["ok", "timeout", "error_planted"]), &seen, &[]);
    assert!(
        problems.len() == 1 && problems[0].contains("`error_planted`"),
        "{problems:?}"
    );
    // Exempt with a reason: fine. Exempt but exercised, or without a
    // reason: not.
    assert!(check_coverage(
        &words(&["error_planted"]),
        &seen,
        &[("error_planted", "why")]
    )
    .is_empty());
    let stale = check_coverage(&words(&["timeout"]), &seen, &[("timeout", "why")]);
    assert!(stale.len() == 1 && stale[0].contains("stale"), "{stale:?}");
    let bare = check_coverage(&words(&["error_planted"]), &seen, &[("error_planted", " ")]);
    assert!(
        bare.len() == 1 && bare[0].contains("without a reason"),
        "{bare:?}"
    );
    // A pipelined connection: every third line sent is a command.
    let (sent, _) = transcript_words("> ping\n> _\n>\n> stats\n> _\n>\n@3 close\n");
    assert_eq!(
        sent,
        BTreeSet::from(["ping".to_string(), "stats".to_string()])
    );
}

#[test]
fn planted_flag_disagreements_fail() {
    let help = "Usage: dflockd [--read-timeout <secs>] [--max-waiters <n>] [--debug <bool>]\n\n\
        Intro.\n\nOptions:\n\
        \x20 --read-timeout    seconds allowed for a whole request, > 0 (env\n\
        \x20                   DFLOCKD_READ_TIMEOUT_S, default 23)\n\
        \x20 --max-waiters     maximum queued waiters per key, 0 = unlimited (env\n\
        \x20                   DFLOCKD_MAX_WAITERS, default 0)\n\
        \x20 --debug           log more (env DFLOCKD_DEBUG, default false)\n\
        \x20 --help, help      display usage information\n";
    let parsed = parse_help(help);
    assert_eq!(
        parsed["--read-timeout"].placeholder.as_deref(),
        Some("secs")
    );
    assert!(parsed["--max-waiters"]
        .description
        .ends_with("DFLOCKD_MAX_WAITERS, default 0)"));
    let table = |rows: &str| {
        format!("| Flag | Environment variable | Default | Meaning |\n|---|---|---|---|\n{rows}")
    };
    let good = "| `--read-timeout` | `DFLOCKD_READ_TIMEOUT_S` | `23` | a started request must finish within this |\n\
                | `--max-waiters` | `DFLOCKD_MAX_WAITERS` | `0` (no cap) | queue length per key |\n\
                | `--debug` | `DFLOCKD_DEBUG` | `false` | log more |\n";
    assert_eq!(
        check_flags(&parsed, &parse_readme_flags(&table(good))),
        Vec::<String>::new()
    );
    let cases = [
        (good.replace("`23`", "`30`"), "default 23 in --help, 30"),
        (
            good.replace(
                "a started request must",
                "milliseconds a started request may",
            ),
            "milliseconds in only one",
        ),
        (
            good.replace("queue length per key", "seconds a waiter may queue"),
            "not seconds in --help but seconds",
        ),
        (
            good.replace("(no cap)", "(= one)"),
            "0 means `unlimited` in --help",
        ),
        (
            good.replace(" (no cap)", ""),
            "the README table does not say",
        ),
        (
            good.replace("DFLOCKD_DEBUG", "DFLOCKD_VERBOSE"),
            "DFLOCKD_VERBOSE, --help does not",
        ),
        (
            good.replace("| `--debug` |", "| `--debug`, `--trace` |"),
            "--trace is in the README",
        ),
        (
            good.lines().take(2).collect::<Vec<_>>().join("\n"),
            "--debug is in --help",
        ),
    ];
    for (rows, expected) in cases {
        let problems = check_flags(&parsed, &parse_readme_flags(&table(&rows)));
        assert!(
            problems.len() == 1 && problems[0].contains(expected),
            "expected one problem with {expected:?}, got {problems:?}"
        );
    }
}

#[test]
fn text_helpers() {
    assert_eq!(slug("7.1 `l` — acquire a lock"), "71-l--acquire-a-lock");
    assert_eq!(slug("10. Compatibility notes"), "10-compatibility-notes");
    let a = anchors("# A\n## A\n```\n# not a heading\n```\n## A\n");
    assert_eq!(a, BTreeSet::from(["a".into(), "a-1".into(), "a-2".into()]));
    assert_eq!(
        section_numbers("## 7. X\n### 7.14 Y\n## Z\n### 2024 notes\n"),
        BTreeSet::from(["7".into(), "7.14".into(), "2024".into()])
    );
    assert_eq!(join("spec", "../README.md").as_deref(), Some("README.md"));
    assert_eq!(join("spec", "../../x"), None);
    assert_eq!(mask_code_spans("a `§1` §2"), "a `   ` §2");
    assert!(mentions_seconds("seconds between sweeps"));
    assert!(!mentions_seconds("requests per second per IP"));
    assert_eq!(
        readme_zero_meaning("`0` (no cap)").as_deref(),
        Some("no cap")
    );
    assert_eq!(
        readme_zero_meaning("`0` (= the rate)").as_deref(),
        Some("the rate")
    );
    assert_eq!(
        readme_zero_meaning("x (0: forever). Y").as_deref(),
        Some("forever")
    );
    assert_eq!(
        help_zero_meaning("0 = no limit (env X, default 5)").as_deref(),
        Some("no limit")
    );
    assert_eq!(help_zero_meaning("n, > 0 (env X, default 0)"), None);
    assert_eq!(
        help_zero_meaning("TCP port, 0-65535, 10 = x, 1.0 = y"),
        None
    );
    assert!(same_zero_meaning(
        "the open stream keeps it",
        "the open stream alone keeps it"
    ));
    assert!(same_zero_meaning("unlimited", "no cap"));
    assert!(!same_zero_meaning("unlimited", "the rate"));
}
