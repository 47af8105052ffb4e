//! Redacting secret values from log lines before an agent forwards them.
//!
//! A deploy hands secrets to containers and tools whose output the agent
//! streams to the coordinator; any of them may print a value (a failing
//! connection string, a debug dump of the environment). [`Redactor`]
//! replaces every occurrence of every value with `[redacted:NAME]`.
//!
//! Rules, and why:
//!
//! - Values shorter than [`Redactor::MIN_LEN`] characters (after trimming
//!   surrounding whitespace) are ignored: redacting `a` or `on` would turn
//!   every log line into noise while hiding nothing a guess would not find.
//!   Such a value is not protected in logs; secrets worth the name are
//!   longer.
//! - Values are matched trimmed, so a value stored with a trailing newline
//!   is still found inside a line.
//! - A multi-line value (a PEM key) is also matched line by line, since
//!   logs arrive one line at a time; lines shorter than `MIN_LEN` are left
//!   out as above.
//! - Occurrences that overlap (one value inside another, or the end of one
//!   being the start of the next) are merged into one replacement naming
//!   every secret involved, `[redacted:A,B]`, so no fragment of either
//!   survives.
//!
//! Matching uses one Aho-Corasick automaton over all values: a line is
//! scanned once however many secrets there are, and a line without any
//! comes back borrowed, unchanged.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};

/// Why a redactor could not be built (only for absurdly large inputs).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret redactor: {0}")]
pub struct RedactError(String);

/// Replaces secret values in text with `[redacted:NAME]`.
pub struct Redactor {
    /// `None` when no value was long enough to match.
    matcher: Option<AhoCorasick>,
    /// For each pattern of `matcher`, the index of its secret's name.
    owners: Vec<usize>,
    names: Vec<String>,
}

/// Names only: the values are what this type exists to hide.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("names", &self.names)
            .field("patterns", &self.owners.len())
            .finish()
    }
}

impl Redactor {
    /// Values with fewer characters than this (after trimming) are not
    /// redacted; see the module docs.
    pub const MIN_LEN: usize = 4;

    /// A redactor for `secrets`, pairs of (name, value).
    pub fn new<I, N, V>(secrets: I) -> Result<Self, RedactError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<str>,
    {
        let long_enough = |s: &&str| s.chars().count() >= Self::MIN_LEN;
        let mut names = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut owners = Vec::new();
        for (name, value) in secrets {
            let value = value.as_ref();
            let whole = value.trim();
            let lines = value.contains('\n').then(|| value.lines().map(str::trim));
            let candidates = std::iter::once(whole)
                .chain(lines.into_iter().flatten())
                .filter(long_enough);
            let owner = names.len();
            let mut any = false;
            for pattern in candidates {
                patterns.push(pattern.to_string());
                owners.push(owner);
                any = true;
            }
            if any {
                names.push(name.into());
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            // Standard semantics: the only kind that reports overlapping
            // matches, which the merging below needs.
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .map_err(|e| RedactError(e.to_string()))?,
            )
        };
        Ok(Redactor {
            matcher,
            owners,
            names,
        })
    }

    /// Whether no value is long enough to be redacted.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `line` with every occurrence of a secret value replaced; borrowed
    /// when there was none.
    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(line);
        };
        let mut found: Vec<(usize, usize, usize)> = matcher
            .find_overlapping_iter(line)
            .map(|m| (m.start(), m.end(), self.owners[m.pattern().as_usize()]))
            .collect();
        if found.is_empty() {
            return Cow::Borrowed(line);
        }
        // Overlapping matches come in order of their end; merge by start.
        found.sort_unstable();
        let mut out = String::with_capacity(line.len());
        let mut copied = 0;
        let mut i = 0;
        while i < found.len() {
            let (start, mut end, owner) = found[i];
            let mut owners = vec![owner];
            i += 1;
            while i < found.len() && found[i].0 < end {
                end = end.max(found[i].1);
                if !owners.contains(&found[i].2) {
                    owners.push(found[i].2);
                }
                i += 1;
            }
            // Patterns are whole UTF-8 strings, so matches start and end
            // on character boundaries.
            out.push_str(&line[copied..start]);
            out.push_str("[redacted:");
            for (n, owner) in owners.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&self.names[*owner]);
            }
            out.push(']');
            copied = end;
        }
        out.push_str(&line[copied..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(pairs: &[(&str, &str)]) -> Redactor {
        Redactor::new(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn every_occurrence_is_replaced_and_clean_lines_are_borrowed() {
        let r = redactor(&[("DB_PASSWORD", "hunter2!"), ("API_KEY", "sk_live_123")]);
        assert_eq!(
            r.redact("login with hunter2! failed; retry hunter2! with sk_live_123"),
            "login with [redacted:DB_PASSWORD] failed; retry [redacted:DB_PASSWORD] with [redacted:API_KEY]"
        );
        assert!(matches!(r.redact("nothing to see"), Cow::Borrowed(_)));
        assert!(matches!(r.redact(""), Cow::Borrowed(_)));
        assert_eq!(r.redact("hunter2!"), "[redacted:DB_PASSWORD]");
    }

    #[test]
    fn values_shorter_than_four_characters_are_ignored() {
        let r = redactor(&[
            ("SHORT", "abc"),
            ("EDGE", "abcd"),
            ("WIDE", "ünï"),
            ("BLANK", "   \n  "),
        ]);
        assert_eq!(r.redact("abc abcd ünï"), "abc [redacted:EDGE] ünï");
        let none = redactor(&[("ON", "on"), ("X", "x")]);
        assert!(none.is_empty());
        assert!(matches!(none.redact("turn it on"), Cow::Borrowed(_)));
    }

    #[test]
    fn overlapping_values_leave_no_fragment() {
        // The end of one is the start of the other.
        let r = redactor(&[("A", "abcdef"), ("B", "defghi")]);
        assert_eq!(r.redact("xxabcdefghixx"), "xx[redacted:A,B]xx");
        assert_eq!(r.redact("abcdef / defghi"), "[redacted:A] / [redacted:B]");
        // One inside the other.
        let r = redactor(&[("SHORT", "token"), ("LONG", "my-token-123")]);
        assert_eq!(r.redact("use my-token-123"), "use [redacted:LONG,SHORT]");
        assert_eq!(r.redact("a token here"), "a [redacted:SHORT] here");
        // Back to back, not overlapping: two replacements.
        let r = redactor(&[("A", "aaaa"), ("B", "bbbb")]);
        assert_eq!(r.redact("aaaabbbb"), "[redacted:A][redacted:B]");
        // A run longer than the value is covered whole.
        assert_eq!(r.redact("aaaaaa!"), "[redacted:A]!");
        // The same value under two names.
        let r = redactor(&[("PGPASSWORD", "s3cr3t-pw"), ("DB_PASSWORD", "s3cr3t-pw")]);
        assert_eq!(
            r.redact("pw=s3cr3t-pw"),
            "pw=[redacted:PGPASSWORD,DB_PASSWORD]"
        );
    }

    #[test]
    fn trimmed_and_multi_line_values_are_found_in_lines() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END KEY-----\n";
        let r = redactor(&[("TLS_KEY", pem), ("TOKEN", "abcd1234\n")]);
        assert_eq!(
            r.redact("line: MIIEvQIBADANBgkq"),
            "line: [redacted:TLS_KEY]"
        );
        assert_eq!(r.redact("token=abcd1234;"), "token=[redacted:TOKEN];");
        assert_eq!(r.redact(pem.trim()), "[redacted:TLS_KEY]");
    }

    #[test]
    fn unicode_around_and_inside_values() {
        let r = redactor(&[("PASS", "pässwörd")]);
        assert_eq!(r.redact("é pässwörd é"), "é [redacted:PASS] é");
    }

    #[test]
    fn many_values_are_matched_in_one_pass() {
        let values: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("SECRET_{i}"), format!("value-{i:05}-x")))
            .collect();
        let r = Redactor::new(values.iter().map(|(n, v)| (n.clone(), v))).unwrap();
        let line = format!("{} and {} ", values[7].1, values[4999].1).repeat(100);
        let redacted = r.redact(&line);
        assert!(!redacted.contains("value-"), "{redacted}");
        assert_eq!(redacted.matches("[redacted:SECRET_7]").count(), 100);
        assert_eq!(redacted.matches("[redacted:SECRET_4999]").count(), 100);
        let debug = format!("{r:?}");
        assert!(!debug.contains("value-"), "{debug}");
    }
}
