//! `prune`: delete backups the catalogue says have expired, file and
//! manifest, on the host holding them. A file already missing is reported,
//! never silently dropped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// One backup to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneItem {
    pub id: String,
    pub path: String,
}

/// `prune`'s spec: the expired backups of one (app, env) on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSpec {
    pub app: String,
    pub env: String,
    pub backups: Vec<PruneItem>,
}

/// What a prune did (the task's result), which the coordinator applies to
/// the catalogue: `deleted` leave it, `missing` stay listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub deleted: Vec<String>,
    /// Backups whose file was not on disk: kept in the catalogue, for an
    /// operator to look into.
    pub missing: Vec<String>,
}

impl KindSpec for PruneSpec {
    const NAME: &'static str = "prune";
    const CLI: &'static [&'static str] = &["backup"];
    const DOC: &'static str =
        "Delete expired backups (file and manifest) the catalogue names; report missing files.";

    fn validate(&self) -> Result<(), String> {
        crate::rules::dns_name(&self.app).map_err(|e| format!("prune spec: app: {e}"))?;
        crate::rules::dns_name(&self.env).map_err(|e| format!("prune spec: env: {e}"))?;
        for (i, b) in self.backups.iter().enumerate() {
            if uuid::Uuid::parse_str(&b.id).is_err() {
                return Err(format!("prune spec: backups[{i}].id: not a backup id"));
            }
            if !b.path.starts_with('/') || !b.path.ends_with(".dump.zst") || b.path.contains("/../")
            {
                return Err(format!(
                    "prune spec: backups[{i}].path: {:?} is not a backup file",
                    b.path
                ));
            }
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(600)
    }

    fn host_lock(&self) -> Option<String> {
        Some(format!("prune:{}/{}", self.app, self.env))
    }
}
