//! The rules for secrets' names and values, shared by the coordinator
//! (which enforces them) and the CLI (which checks them before reading a
//! value or connecting, so a typo costs nothing).

/// Longest secret name; environment variable names are rarely a tenth of it.
pub const MAX_NAME_LEN: usize = 128;
/// Largest value: room for a PEM bundle or a service-account JSON, small
/// enough that a deploy carrying dozens of them stays a small message.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Checks a secret's name: an environment variable name
/// (`[A-Za-z_][A-Za-z0-9_]*`), at most [`MAX_NAME_LEN`] characters.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err(format!("{name:?} must start with a letter or '_'"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; a secret name is an environment variable name: letters, digits and '_'"
        ));
    }
    Ok(())
}

/// Checks a secret's value: not empty, at most [`MAX_VALUE_BYTES`], and no
/// NUL (an environment variable cannot hold one). Messages never quote it.
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes; at most {MAX_VALUE_BYTES} (64 KiB) are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(
            "the value contains a NUL character, which an environment variable cannot hold".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked() {
        for good in [
            "A",
            "_x",
            "DATABASE_URL",
            "api_key_2",
            &"K".repeat(MAX_NAME_LEN),
        ] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2FA",
            "WITH-DASH",
            "DOT.TED",
            "SP ACE",
            "ÜBER",
            &"K".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
        assert!(validate_secret_value("x").is_ok());
        assert!(validate_secret_value(&"x".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(validate_secret_value("").is_err());
        assert!(validate_secret_value(&"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        let err = validate_secret_value("hidden\0value").unwrap_err();
        assert!(err.contains("NUL") && !err.contains("hidden"), "{err}");
    }
}
