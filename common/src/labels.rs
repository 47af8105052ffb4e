//! Agent labels (`env=production,region=eu`): how jobs select hosts.

use std::collections::BTreeMap;

/// Parses `k=v,k2=v2`. Keys: lowercase letters, digits, `.`, `_`, `-`, `/`.
/// Values: anything without `,` or `=`. Empty input is no labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} must look like key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        validate_key(k)?;
        if v.contains('=') {
            return Err(format!(
                "label value {v:?} (for {k:?}) must not contain '='"
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k:?} is given twice"));
        }
    }
    Ok(out)
}

/// Checks a label key.
pub fn validate_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > 63 {
        return Err(format!("label key {k:?} must be 1 to 63 characters"));
    }
    if !k
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(format!(
            "label key {k:?} may only use lowercase letters, digits, '.', '_', '-' and '/'"
        ));
    }
    Ok(())
}

/// `k=v,k2=v2`, sorted by key.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let l = parse_labels("env=production, region=eu").unwrap();
        assert_eq!(format_labels(&l), "env=production,region=eu");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("env").unwrap_err().contains("key=value"));
        assert!(parse_labels("Env=x").unwrap_err().contains("lowercase"));
        assert!(parse_labels("a=1,a=2").unwrap_err().contains("twice"));
    }
}
