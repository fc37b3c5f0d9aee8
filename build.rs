//! Embeds the conformance transcripts of `spec/conformance/` in the
//! library, so `dflockd conformance` runs the whole suite from any working
//! directory (an installed binary has no source tree next to it).
//! `--dir` still reads a directory instead.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = root.join("spec").join("conformance");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt") && n != "expected-failures.txt")
        .collect();
    names.sort();
    let mut out = String::from("/// (file name, bytes) of every transcript, sorted by name.\n");
    out.push_str("pub static TRANSCRIPTS: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let path = dir.join(name);
        writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("];\n");
    let expected = dir.join("expected-failures.txt");
    writeln!(
        out,
        "/// `expected-failures.txt`.\npub static EXPECTED_FAILURES: &str = include_str!({:?});",
        expected.display().to_string()
    )
    .expect("write to a String");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"))
        .join("conformance_embedded.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
