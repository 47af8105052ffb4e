//! `prune`: the expired backups the catalogue names, deleted from this
//! host, manifest first (a file without a manifest is nobody's backup), the
//! folder fsynced. A file already gone is reported, not hidden.

use std::path::Path;

use ferry_common::job::{PruneReport, PruneSpec};

use super::backup::{failed, sync_dir};
use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Runs `prune` tasks.
pub struct Prune;

#[async_trait::async_trait]
impl KindExecutor for Prune {
    type Spec = PruneSpec;
    async fn run(&self, spec: PruneSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        let mut report = PruneReport::default();
        for b in &spec.backups {
            let file = Path::new(&b.path);
            let manifest = b.path.replace(".dump.zst", ".manifest.json");
            if !file.exists() {
                ctx.log(
                    "prune",
                    "stderr",
                    &format!("{}: {} is missing", b.id, b.path),
                );
                report.missing.push(b.id.clone());
                continue;
            }
            for path in [Path::new(&manifest), file] {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(failed(format!("deleting {}: {e}", path.display()))),
                }
            }
            let _ = sync_dir(file);
            ctx.log("prune", "stdout", &format!("{}: deleted {}", b.id, b.path));
            report.deleted.push(b.id.clone());
        }
        Ok(Done {
            message: format!(
                "{} deleted, {} missing",
                report.deleted.len(),
                report.missing.len()
            ),
            result_json: serde_json::to_string(&report).map_err(|e| failed(e.to_string()))?,
        })
    }
}
