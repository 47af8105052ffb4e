//! What a run would do to one database, decided from the files and what the
//! database recorded, with no I/O: which migrations are applied, which the
//! app's own tool applied (to adopt), which are pending in order, and the
//! drift (files changed since they were applied; ledger rows with no file).

use std::collections::BTreeMap;

use super::adopt::ToolRecords;
use super::error::MigrateError;
use super::layout::MigrationSet;
use super::ledger::LedgerRow;

/// A difference between the files and the database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    pub version: String,
    /// The file, when there is one.
    pub file: Option<String>,
    pub reason: String,
    /// What the database recorded, and what the file's checksum is now
    /// (for a changed file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Versions Ferry's ledger holds and the files still match, file order.
    pub applied: Vec<String>,
    /// Indexes (into the set) of migrations the app's own tool applied and
    /// Ferry's ledger does not hold yet: recorded, never run.
    pub adopt: Vec<usize>,
    /// Indexes of the migrations to run, in order.
    pub pending: Vec<usize>,
    /// Pending migrations after the target version, not run this time.
    pub beyond_target: Vec<usize>,
    /// Applied files whose checksum changed: a run is refused.
    pub changed: Vec<Drift>,
    /// Ledger rows whose file is gone: reported, not refused.
    pub missing: Vec<Drift>,
}

impl Plan {
    /// All drift, changed files first.
    pub fn drift(&self) -> Vec<Drift> {
        self.changed.iter().chain(&self.missing).cloned().collect()
    }
}

/// The plan for a database whose ledger holds `ledger` and whose tool table
/// holds `tool`; `target` stops after that version (which must be a file).
pub fn plan(
    set: &MigrationSet,
    ledger: &[LedgerRow],
    tool: &ToolRecords,
    target: Option<&str>,
) -> Result<Plan, MigrateError> {
    let limit = match target {
        None => set.migrations.len(),
        Some(v) => {
            let Some(at) = set.migrations.iter().position(|m| m.version == v) else {
                return Err(MigrateError::config(
                    format!("target version {v:?}"),
                    format!(
                        "no such migration; versions are {}",
                        summary(set.migrations.iter().map(|m| m.version.as_str()))
                    ),
                ));
            };
            at + 1
        }
    };
    let rows: BTreeMap<&str, &LedgerRow> = ledger.iter().map(|r| (r.version.as_str(), r)).collect();
    let mut p = Plan::default();
    for (i, m) in set.migrations.iter().enumerate() {
        if let Some(row) = rows.get(m.version.as_str()) {
            // An adopted row carries the tool's checksum scheme no further:
            // Ferry recorded the file's SHA-256 when it adopted it.
            if row.checksum == m.checksum {
                p.applied.push(m.version.clone());
            } else {
                p.changed.push(changed(m, &row.checksum, &m.checksum));
            }
            continue;
        }
        match tool.recorded(m) {
            Some(Ok(())) => p.adopt.push(i),
            Some(Err(recorded)) => {
                let now = if tool.table == super::adopt::SQLX_TABLE {
                    "a different SHA-384".to_owned()
                } else {
                    m.checksum.clone()
                };
                let mut d = changed(m, &recorded, &now);
                d.reason = format!("{} applied it, and the file changed since", tool.table);
                p.changed.push(d);
            }
            None if i < limit => p.pending.push(i),
            None => p.beyond_target.push(i),
        }
    }
    for row in ledger {
        if set.get(&row.version).is_none() {
            p.missing.push(Drift {
                version: row.version.clone(),
                file: None,
                reason: format!(
                    "the ledger records {} ({}) as applied at {}, but no file has that version",
                    row.version, row.name, row.applied_at
                ),
                recorded: Some(row.checksum.clone()),
                now: None,
            });
        }
    }
    Ok(p)
}

fn changed(m: &super::layout::Migration, recorded: &str, now: &str) -> Drift {
    Drift {
        version: m.version.clone(),
        file: Some(m.file.clone()),
        reason: "applied, and the file changed since".into(),
        recorded: Some(recorded.to_owned()),
        now: Some(now.to_owned()),
    }
}

/// `a, b, c, … (N in all)` for an error message.
fn summary<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = items.collect();
    if all.is_empty() {
        return "(none)".into();
    }
    if all.len() <= 6 {
        return all.join(", ");
    }
    format!(
        "{}, …, {} ({} in all)",
        all[..3].join(", "),
        all[all.len() - 1],
        all.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::layout::{Files, Layout, load};

    fn set(n: usize) -> MigrationSet {
        let files: Files = (1..=n)
            .map(|v| (format!("{v}_m{v}.sql"), format!("SELECT {v};").into_bytes()))
            .collect();
        load(Layout::Sqlx, &files).unwrap()
    }

    fn row(set: &MigrationSet, v: &str) -> LedgerRow {
        let m = set.get(v).unwrap();
        LedgerRow {
            version: v.into(),
            name: m.name.clone(),
            checksum: m.checksum.clone(),
            applied_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1,
            job_id: None,
            adopted_from: None,
        }
    }

    #[test]
    fn pending_follows_file_order_after_the_applied() {
        let s = set(4);
        let p = plan(
            &s,
            &[row(&s, "1"), row(&s, "2")],
            &ToolRecords::default(),
            None,
        )
        .unwrap();
        assert_eq!(p.applied, ["1", "2"]);
        assert_eq!(p.pending, [2, 3]);
        assert!(p.drift().is_empty());
    }

    #[test]
    fn target_stops_the_run_and_must_exist() {
        let s = set(4);
        let p = plan(&s, &[], &ToolRecords::default(), Some("2")).unwrap();
        assert_eq!(p.pending, [0, 1]);
        assert_eq!(p.beyond_target, [2, 3]);
        let err = plan(&s, &[], &ToolRecords::default(), Some("9")).unwrap_err();
        assert!(err.to_string().contains("versions are 1, 2, 3, 4"), "{err}");
    }

    #[test]
    fn changed_files_and_rows_without_files_are_drift() {
        let s = set(2);
        let mut r1 = row(&s, "1");
        r1.checksum = "0".repeat(64);
        let mut gone = row(&s, "2");
        gone.version = "7".into();
        let p = plan(&s, &[r1, gone], &ToolRecords::default(), None).unwrap();
        assert_eq!(p.changed.len(), 1);
        assert_eq!(p.changed[0].file.as_deref(), Some("1_m1.sql"));
        assert_eq!(p.missing.len(), 1);
        assert!(p.missing[0].reason.contains("no file has that version"));
        assert_eq!(p.pending, [1]);
    }

    #[test]
    fn tool_records_are_adopted_not_run() {
        let s = set(3);
        let mut tool = ToolRecords {
            table: crate::migrate::adopt::PRISMA_TABLE,
            ..Default::default()
        };
        tool.applied
            .insert("1".into(), s.migrations[0].checksum.clone());
        let p = plan(&s, &[], &tool, None).unwrap();
        assert_eq!(p.adopt, [0]);
        assert_eq!(p.pending, [1, 2]);
    }
}
