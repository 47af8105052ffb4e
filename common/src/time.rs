//! Time as Ferry stores and shows it: milliseconds since the Unix epoch in
//! the store and on the wire, RFC 3339 (UTC) for people.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 text of a point in time, to the second.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// RFC 3339 text of a millisecond timestamp; empty for 0 ("never").
pub fn rfc3339_ms(ms: i64) -> String {
    if ms == 0 {
        return String::new();
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an `OffsetDateTime`.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Milliseconds since the epoch of RFC 3339 text (`2026-12-07T00:22:01Z`,
/// with any fraction of a second); `None` if it is not RFC 3339 or is
/// Docker's "never" (`0001-01-01T00:00:00Z`).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    let ms = to_ms(t);
    (ms > 0).then_some(ms)
}

/// A point in time as operators give it: a duration back from `now_ms`
/// (`10m`, `1h30m`, `2d`) or an RFC 3339 time.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(ms) = parse_rfc3339_ms(text) {
        return Ok(ms);
    }
    parse_duration_inner(text.trim())
        .map(|d| now_ms - d.as_millis() as i64)
        .ok_or_else(|| {
            format!(
                "{text:?} is neither a duration back from now (\"10m\", \"1h\", \"2d\") nor an RFC 3339 time (\"2026-01-31T09:00:00Z\")"
            )
        })
}

/// "3s ago", "5m ago", "2h ago", "4d ago" relative to `now_ms`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = ((now_ms - ms) / 1000).max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// Parses a duration like `90s`, `5m`, `1h`, `7d`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humanize_err(text, parse_duration_inner(text.trim()))
}

fn humanize_err(text: &str, r: Option<std::time::Duration>) -> Result<std::time::Duration, String> {
    r.ok_or_else(|| {
        format!(
            "{text:?} is not a duration; expected something like \"30s\", \"5m\", \"1h\" or \"7d\""
        )
    })
}

fn parse_duration_inner(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            unit = "ms".into();
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let ms = match unit.as_str() {
            "ms" => n,
            "s" => n.checked_mul(1000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            "d" => n.checked_mul(86_400_000)?,
            _ => return None,
        };
        total = total.checked_add(ms)?;
    }
    if !digits.is_empty() {
        return None;
    }
    Some(std::time::Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("10m", now), Ok(now - 600_000));
        assert_eq!(parse_since(" 1h30m ", now), Ok(now - 5_400_000));
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", 0),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        let err = parse_since("yesterday", now).unwrap_err();
        assert!(
            err.contains("\"yesterday\"") && err.contains("RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").unwrap_err().contains("\"30s\""));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339_ms(0), "");
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(ago(1_000, 31_000), "30s ago");
        assert_eq!(ago(0, 5), "never");
    }
}

/// Serde for `std::time::Duration` as text like `"7d"` or `"250ms"`, for
/// configuration files.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Like [`serde_duration`] for `Option<Duration>`.
pub mod serde_opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// The shortest exact text for a duration: `7d`, `90s`, `1500ms`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_format_exactly() {
        for text in ["7d", "90s", "1500ms", "2h", "0ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
