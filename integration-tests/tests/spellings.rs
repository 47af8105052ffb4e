//! Every status word is spelt once: job statuses, task states, outcomes and
//! rollout statuses are enums in `ferry_common::status`, and no other
//! non-test Rust source spells one as a string literal (SQL text quotes
//! them with single quotes, as the schema does, and is not affected).

use std::path::{Path, PathBuf};

const WORDS: &[&str] = &[
    "pending",
    "assigned",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "lost",
    "expired",
    "planned",
    "reverted",
    "revert_failed",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a file before its `#[cfg(test)]` module, without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_status_word_is_spelt_outside_its_enum() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["common", "coordinator", "agent", "cli"] {
        sources(&root.join(krate).join("src"), &mut files);
    }
    // The enums' home, and the store's test suites (whole files of tests,
    // which pin the stored words on purpose).
    let skip = [
        root.join("common/src/status.rs"),
        root.join("coordinator/src/store/conformance.rs"),
        root.join("coordinator/src/store/tests.rs"),
    ];
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !skip.contains(f)) {
        let text = code(file);
        for (n, line) in text.lines().enumerate() {
            for word in WORDS {
                if line.contains(&format!("\"{word}\"")) {
                    found.push(format!(
                        "{}:{}: \"{word}\"",
                        file.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "status words spelt outside ferry_common::status (use the enums):\n{}",
        found.join("\n")
    );
    assert!(
        files.len() > 50,
        "the sources were found ({} files)",
        files.len()
    );
}
