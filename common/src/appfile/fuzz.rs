//! Property tests of the parser: whatever text a user (or a broken editor)
//! gives it, it answers with an app file or with problems that point into
//! the file, and never panics.

use proptest::prelude::*;

use super::{AppFileError, parse};

/// The repository's example app file, a realistic base to damage.
const EXAMPLE: &str = include_str!("../../../deploy/example/ferry.toml");

fn check(text: &str) {
    match parse("fuzz.toml", text) {
        Ok(_) => {}
        Err(AppFileError::Invalid { problems, .. }) => {
            let lines = text.lines().count().max(1);
            for p in &problems {
                assert!(
                    p.line <= lines + 1,
                    "problem on line {} of a {lines}-line file: {p:?}",
                    p.line
                );
                assert!(!p.message.is_empty());
            }
        }
        Err(other) => panic!("parse gave a non-parse error: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text at all.
    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,400}") {
        check(&text);
    }

    /// The example with bytes cut out and others put in: near-valid files,
    /// where parsers go wrong.
    #[test]
    fn a_damaged_example_parses_or_is_refused(
        cuts in proptest::collection::vec((0usize..4096, 0usize..40), 0..6),
        inserts in proptest::collection::vec((0usize..4096, "[\\[\\]{}=\"'#.,\n a-z0-9_:/-]{1,12}"), 0..6),
    ) {
        let mut text = EXAMPLE.to_string();
        for (at, len) in cuts {
            let start = floor_char(&text, at % text.len().max(1));
            let end = floor_char(&text, (start + len).min(text.len()));
            text.replace_range(start..end, "");
        }
        for (at, piece) in inserts {
            let at = floor_char(&text, at % text.len().max(1));
            text.insert_str(at, &piece);
        }
        check(&text);
    }
}

/// The largest char boundary at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
