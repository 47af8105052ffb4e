//! The checking pass, and the rules on fields that several sections share.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{self, FieldPath};
use crate::rules::env_var_name;
use crate::time::parse_duration;

/// The checking pass: raw values in, typed values out, every broken rule
/// recorded with its field path.
#[derive(Default)]
pub(super) struct Check {
    pub(super) problems: Vec<(FieldPath, String)>,
}

impl Check {
    pub(super) fn err(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    /// `Ok` values through, errors recorded.
    pub(super) fn ok<T>(&mut self, path: &FieldPath, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.err(path, e)).ok()
    }

    /// A duration field, if given and well-formed; `positive` refuses 0.
    pub(super) fn duration(
        &mut self,
        path: &FieldPath,
        text: Option<&str>,
        positive: bool,
    ) -> Option<Duration> {
        let d = self.ok(path, parse_duration(text?))?;
        if positive && d.is_zero() {
            self.err(path, "must be above 0");
        }
        Some(d)
    }

    pub(super) fn env_map(
        &mut self,
        path: &FieldPath,
        raw: BTreeMap<String, raw::Scalar>,
    ) -> BTreeMap<String, String> {
        raw.into_iter()
            .map(|(k, v)| {
                self.ok(&path.key(&k), env_var_name(&k));
                (k, v.into_text())
            })
            .collect()
    }
}

pub(super) fn at_least_one(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("must be at least 1, got {n}")),
    }
}
