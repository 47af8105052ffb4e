//! `verify`: prove a backup restores. On the host holding the file: check
//! its SHA-256, restore it into a scratch database on the same server,
//! compare every table's row count with the manifest exactly, run the app
//! file's SQL checks, drop the scratch database. The coordinator records
//! the outcome in the catalogue. The checks' types ([`SqlCheck`]) are
//! this kind's own, which the app file's `[[databases.NAME.checks]]` uses.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;
use super::backup::{DbEngine, DbLocation, database_lock};

/// A comparison a check's single value must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CompareOp::Gt => left > right,
            CompareOp::Ge => left >= right,
            CompareOp::Lt => left < right,
            CompareOp::Le => left <= right,
            CompareOp::Eq => left == right,
            CompareOp::Ne => left != right,
        }
    }
}

/// What a check's value must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// `"> 0"`, `">= 10"`, `"!= 0"`: the value is a number compared so.
    Compare { op: CompareOp, value: f64 },
    /// Anything else: the value's text, exactly.
    Exact(String),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Compare { op, value } => write!(f, "{} {value}", op.as_str()),
            Expect::Exact(text) => write!(f, "{text:?}"),
        }
    }
}

impl Expect {
    /// Reads `expect`: a comparison operator and a number, or an exact value.
    pub fn parse(text: &str) -> Result<Expect, String> {
        let t = text.trim();
        // Longest operators first, so ">=" is not read as ">" "=...".
        for op in [
            CompareOp::Ge,
            CompareOp::Le,
            CompareOp::Ne,
            CompareOp::Gt,
            CompareOp::Lt,
            CompareOp::Eq,
        ] {
            if let Some(rest) = t.strip_prefix(op.as_str()) {
                let number = rest.trim();
                return match number.parse::<f64>() {
                    Ok(value) if value.is_finite() => Ok(Expect::Compare { op, value }),
                    _ => Err(format!(
                        "{text:?}: after {:?} comes a number, e.g. \"> 0\"; for an exact text, leave the operator out",
                        op.as_str()
                    )),
                };
            }
        }
        Ok(Expect::Exact(text.to_string()))
    }

    /// Whether `value` (a check's single result, as text; `None` for SQL
    /// NULL) passes; `Err` says why not.
    pub fn check(&self, value: Option<&str>) -> Result<(), String> {
        let shown = value.unwrap_or("NULL");
        match self {
            Expect::Exact(want) if value == Some(want.as_str()) => Ok(()),
            Expect::Exact(want) => Err(format!("got {shown:?}, expected exactly {want:?}")),
            Expect::Compare { op, value: right } => {
                let left = value.and_then(|v| v.trim().parse::<f64>().ok());
                match left {
                    Some(left) if op.holds(left, *right) => Ok(()),
                    Some(_) => Err(format!("got {shown}, expected {self}")),
                    None => Err(format!("got {shown:?}, not a number; expected {self}")),
                }
            }
        }
    }
}

/// `[[databases.NAME.checks]]`: a query whose one value must pass `expect`
/// when a backup is verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlCheck {
    pub sql: String,
    pub expect: Expect,
}

/// `verify`'s spec: the catalogued backup and what it must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub backup_id: String,
    pub app: String,
    pub env: String,
    pub database: String,
    #[serde(default)]
    pub engine: DbEngine,
    /// Where the server is: the scratch database is created there.
    pub location: DbLocation,
    /// The backup file on the host.
    pub path: String,
    /// What its SHA-256 must be.
    pub sha256: String,
    /// Every table's rows, as the manifest counted them.
    pub row_counts: BTreeMap<String, u64>,
    /// The app file's `[[databases.NAME.checks]]`.
    #[serde(default)]
    pub checks: Vec<SqlCheck>,
}

/// A restore takes about as long as the dump did; the same bound.
pub const VERIFY_TIMEOUT: Duration = super::backup::BACKUP_TIMEOUT;

impl KindSpec for VerifySpec {
    const NAME: &'static str = "verify";
    const CLI: &'static [&'static str] = &["backup"];
    const DOC: &'static str =
        "Verify a backup: checksum, restore into a scratch database, exact row counts, SQL checks.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: &str, r: Result<(), String>| {
            r.map_err(|e| format!("verify spec: {field}: {e}"))
        };
        at("app", rules::dns_name(&self.app))?;
        at("env", rules::dns_name(&self.env))?;
        at("database", rules::dns_name(&self.database))?;
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("verify spec: sha256: 64 hex digits expected".into());
        }
        if !self.path.starts_with('/') {
            return Err("verify spec: path: an absolute path expected".into());
        }
        self.location
            .validate(self.engine)
            .map_err(|e| format!("verify spec: {e}"))
    }

    fn secret_names(&self) -> Vec<String> {
        self.location.secret_names()
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    fn timeout(&self) -> Duration {
        VERIFY_TIMEOUT
    }

    fn host_lock(&self) -> Option<String> {
        Some(database_lock(&self.app, &self.env, &self.database))
    }
}

/// What a verification found (the task's result when it passes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub backup_id: String,
    /// Tables whose rows were counted and matched.
    pub tables: usize,
    /// Rows in all of them.
    pub rows: u64,
    /// Checks run and passed.
    pub checks: usize,
}
