//! What is wrong with an app file, and how it is shown: `file:line: path:
//! message`, and "did you mean" for names.

use serde::Serialize;

/// One thing wrong in an app file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line of the offending key (or of the nearest enclosing one
    /// that exists in the file; 1 for the file as a whole).
    pub line: usize,
    /// Field path like `services.web.healthcheck.interval` or `smoke[0].url`;
    /// empty for TOML syntax errors outside any key.
    pub path: String,
    pub message: String,
}

/// What can go wrong with an app file.
#[derive(Debug, thiserror::Error)]
pub enum AppFileError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: {size} bytes; an app file may be at most {limit} bytes (a real one is a few KiB: is this the right file?)"
    )]
    TooLarge { file: String, size: u64, limit: u64 },
    /// Every problem found, in file order.
    #[error("{}", format_problems(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
    #[error("unknown environment {name:?}; {}", known_environments(name, known))]
    UnknownEnvironment { name: String, known: Vec<String> },
    #[error("{0}")]
    BadVersion(String),
}

impl AppFileError {
    /// The problems, for [`AppFileError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            AppFileError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// `file:line: path: message`, the form editors and terminals jump to.
pub fn format_problem(file: &str, p: &Problem) -> String {
    if p.path.is_empty() {
        format!("{file}:{}: {}", p.line, p.message)
    } else {
        format!("{file}:{}: {}: {}", p.line, p.path, p.message)
    }
}

fn format_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format_problem(file, p))
        .collect::<Vec<_>>()
        .join("\n")
}

fn known_environments(name: &str, known: &[String]) -> String {
    if known.is_empty() {
        return "the app file defines none".into();
    }
    let mut text = format!("the app file defines {}", known.join(", "));
    if let Some(s) = closest(name, known.iter().map(String::as_str)) {
        text.push_str(&format!(" (did you mean {s:?}?)"));
    }
    text
}

/// The candidate within a small edit distance of `word`, if any.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;
    use crate::appfile::*;

    #[test]
    fn messages_name_file_line_and_field_in_file_order() {
        let err = parse(
            "ferry.toml",
            &service("[services.web.healthcheck]\nhttp = \"/health\"\ninterval = \"soon\""),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            [
                "ferry.toml:7: services.web.healthcheck.http: an http check GETs the first container port, and this service has no ports; add ports = [3000] or use running_for",
                "ferry.toml:8: services.web.healthcheck.interval: \"soon\" is not a duration; expected something like \"30s\", \"5m\", \"1h\" or \"7d\"",
            ]
            .join("\n")
        );
    }

    #[test]
    fn unknown_environments_list_the_known_ones() {
        let f = ok(FULL);
        assert_eq!(
            f.environment("prod").unwrap_err().to_string(),
            "unknown environment \"prod\"; the app file defines production, staging"
        );
        assert_eq!(
            f.environment("stagin").unwrap_err().to_string(),
            "unknown environment \"stagin\"; the app file defines production, staging (did you mean \"staging\"?)"
        );
    }
}
