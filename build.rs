//! Embeds the conformance transcripts of `spec/conformance/` in the
//! library, so `dflockd conformance` runs the whole suite from any working
//! directory (an installed binary has no source tree next to it).
//! `--dir` still reads a directory instead. The client scenario scripts of
//! `spec/conformance/client/` are embedded the same way, for
//! `dflockd conformance serve`.

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
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let dest = out_dir.join("conformance_embedded.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));

    // The client scenario scripts of `dflockd conformance serve`.
    let client = dir.join("client");
    println!("cargo:rerun-if-changed={}", client.display());
    let mut names: Vec<String> = std::fs::read_dir(&client)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", client.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    let mut out = String::from("/// (file name, bytes) of every client script, sorted by name.\n");
    out.push_str("pub static CLIENT_SCRIPTS: &[(&str, &[u8])] = &[\n");
    for name in &names {
        writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            client.join(name).display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("];\n");
    let dest = out_dir.join("conformance_client_embedded.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
