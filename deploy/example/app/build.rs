//! Bakes two things into the binary, because the image it ships in is
//! `FROM scratch` and has no files besides the binary itself:
//!
//! - the build-time version: `APP_VERSION` from the build environment, else
//!   the crate version (the run-time `APP_VERSION` still wins; see config.rs);
//! - the SQL migrations in `migrations/*.sql`, in file-name order, so that
//!   `ferry-example migrate` in a one-off container needs nothing mounted.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=APP_VERSION");
    let version = env::var("APP_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"));
    println!(
        "cargo:rustc-env=FERRY_EXAMPLE_BUILD_VERSION={}",
        version.trim()
    );

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dir = manifest_dir.join("migrations");
    // A directory here makes cargo rerun this script when any file in it
    // is added, removed or changed.
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("read a migrations entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();

    let mut code = String::from("&[\n");
    for path in &files {
        let version = stem(path);
        writeln!(
            code,
            "    Migration {{ version: {version:?}, sql: include_str!({:?}) }},",
            path.display().to_string()
        )
        .expect("write to a String");
    }
    code.push_str("]\n");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    fs::write(&out, code).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}

fn stem(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_else(|| panic!("{}: migration file names must be UTF-8", path.display()));
    assert!(
        !stem.is_empty() && !stem.starts_with('.'),
        "{}: not a migration name",
        path.display()
    );
    stem.to_owned()
}
