//! Every status word is spelt once: job statuses, task states, outcomes and
//! rollout statuses are enums in `ferry_common::status`, and no other
//! non-test Rust source spells one as a string literal (SQL text quotes
//! them with single quotes, as the schema does, and is not affected).

use ferry_integration_tests::source::{code, rust_files, workspace};

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

#[test]
fn no_status_word_is_spelt_outside_its_enum() {
    let root = &workspace();
    let files: Vec<_> = ["common", "coordinator", "agent", "cli"]
        .iter()
        .flat_map(|krate| rust_files(&root.join(krate).join("src")))
        .collect();
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
