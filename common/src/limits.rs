//! Limits that the coordinator enforces and the CLI checks first, so a
//! request it would refuse is refused before it is sent, with the same
//! numbers in both messages.

use std::time::Duration;

/// Shortest join token lifetime: below a minute a token expires before
/// anyone can paste the enroll command.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Largest app file: far beyond any real one (a few KiB), well below the
/// 4 MiB a gRPC message may carry.
pub const MAX_APP_FILE_BYTES: u64 = 1 << 20;

/// Checks a join token lifetime against [`MIN_TOKEN_TTL`] and
/// [`MAX_TOKEN_TTL`]; the error names both.
pub fn check_token_ttl(ttl: Duration) -> Result<(), String> {
    if (MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(format!(
            "{} is out of range; a join token lives from {} to {}",
            crate::time::format_duration(ttl),
            crate::time::format_duration(MIN_TOKEN_TTL),
            crate::time::format_duration(MAX_TOKEN_TTL),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_outside_the_range_name_the_range() {
        assert!(check_token_ttl(Duration::from_secs(60)).is_ok());
        assert!(check_token_ttl(MAX_TOKEN_TTL).is_ok());
        for bad in [
            Duration::ZERO,
            Duration::from_millis(500),
            MAX_TOKEN_TTL * 2,
        ] {
            let err = check_token_ttl(bad).unwrap_err();
            assert!(err.contains("from 1m to 30d"), "{err}");
        }
    }
}
