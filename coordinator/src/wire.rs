//! Checks of the free-text fields that arrive over the network (an agent's
//! hostname and version, names, labels), in one place used by every
//! handler: bounded in length and free of control characters, so no peer
//! can make `ferry agents` unreadable, forge audit-log lines with newlines,
//! or send terminal escapes to an operator's screen.

use crate::error::CoordinatorError;

/// Longest hostname (DNS allows 253).
pub const MAX_HOSTNAME: usize = 253;
/// Longest version string an agent may report.
pub const MAX_VERSION: usize = 64;
/// Most job kinds an agent may say it runs, and the longest name of one.
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_CAPABILITY: usize = 64;

/// `value` trimmed, if it is at most `max` bytes of printable text (no
/// control characters: newlines, escapes, NUL); else an error naming
/// `field`, the limit and what is wrong, without repeating the value.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, CoordinatorError> {
    let value = value.trim();
    if value.len() > max {
        return Err(CoordinatorError::invalid(
            field,
            format!("is {} bytes; at most {max} are allowed", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(CoordinatorError::invalid(
            field,
            format!(
                "contains the control character U+{:04X}; only printable text is allowed",
                c as u32
            ),
        ));
    }
    Ok(value.to_string())
}

/// [`text`], also refusing an empty value.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, CoordinatorError> {
    let value = text(field, value, max)?;
    if value.is_empty() {
        return Err(CoordinatorError::invalid(field, "is empty"));
    }
    Ok(value)
}

/// An agent's list of job kinds: at most [`MAX_CAPABILITIES`], each a
/// short printable word.
pub fn capabilities(values: &[String]) -> Result<Vec<String>, CoordinatorError> {
    if values.len() > MAX_CAPABILITIES {
        return Err(CoordinatorError::invalid(
            "capabilities",
            format!(
                "lists {} kinds; at most {MAX_CAPABILITIES} are allowed",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .map(|v| required_text("capabilities", v, MAX_CAPABILITY))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_control_text_is_refused_without_echoing_it() {
        assert_eq!(text("version", " 1.2.3 ", MAX_VERSION).unwrap(), "1.2.3");
        let long = "9".repeat(1 << 20);
        let err = text("version", &long, MAX_VERSION).unwrap_err().to_string();
        assert!(
            err.contains("version") && err.contains("at most 64"),
            "{err}"
        );
        assert!(err.len() < 200, "the value is not repeated: {err}");
        let err = text("hostname", "web-1\nforged audit line", MAX_HOSTNAME)
            .unwrap_err()
            .to_string();
        assert!(err.contains("U+000A"), "{err}");
        assert!(text("hostname", "web\u{1b}[31m", MAX_HOSTNAME).is_err());
        assert!(required_text("hostname", "  ", MAX_HOSTNAME).is_err());
        assert!(capabilities(&["probe".into(), "deploy".into()]).is_ok());
        assert!(capabilities(&vec!["probe".to_string(); 65]).is_err());
    }
}
