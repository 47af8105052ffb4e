//! Adopting a database the app's own tool migrated until now, so that
//! switching to Ferry never runs a migration twice.
//!
//! Exactly what is read (read-only; the tool's table is never changed):
//!
//! - **sqlx** (layout `sqlx`): the table `_sqlx_migrations`, found through
//!   the connection's `search_path` as sqlx finds it: every row's `version`,
//!   `checksum` and `success`. A row with `success = true` is an applied
//!   migration: the file with that integer version counts as applied, and
//!   its SHA-384 (what sqlx stores as `checksum`) must match the file's, or
//!   the run is refused naming the file. A row with `success = false` is a
//!   migration sqlx started and did not finish: the run is refused until it
//!   is resolved (`sqlx migrate` calls such a database dirty).
//! - **Prisma** (layout `prisma`): the table `_prisma_migrations`: every
//!   row's `migration_name`, `checksum`, `finished_at` and `rolled_back_at`.
//!   A row with `finished_at` set and `rolled_back_at` null is an applied
//!   migration: the folder of that name counts as applied, and its
//!   `checksum` (SHA-256 of `migration.sql`, hex; line endings LF or CRLF
//!   both accepted, as Prisma does) must match. A row with neither set is a
//!   failed migration, and the run is refused until `prisma migrate
//!   resolve` marks it; rolled-back rows are ignored.
//! - Other layouts read no tool table.
//!
//! A run that applies anything first copies the adopted migrations into
//! Ferry's ledger (with `adopted_from` naming the table); from then on the
//! ledger alone decides, and the tool's table is no longer read for them.

use std::collections::BTreeMap;

use sha2::{Digest, Sha384};
use sqlx::{PgConnection, Row};

use super::error::{MigrateError, describe};
use super::layout::{Layout, Migration, sha256_hex};

pub const SQLX_TABLE: &str = "_sqlx_migrations";
pub const PRISMA_TABLE: &str = "_prisma_migrations";

/// The migrations the app's own tool recorded as applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRecords {
    /// The table they were read from (`_sqlx_migrations`), empty if none.
    pub table: &'static str,
    /// Version (as Ferry's ledger keys it) → the tool's checksum, hex.
    pub applied: BTreeMap<String, String>,
}

impl ToolRecords {
    /// `None` if the tool did not apply `m`; otherwise whether the file is
    /// still what the tool applied (`Err` holds the checksum it recorded).
    pub fn recorded(&self, m: &Migration) -> Option<Result<(), String>> {
        let recorded = self.applied.get(&m.version)?;
        let same = match self.table {
            SQLX_TABLE => hex::encode(Sha384::digest(m.sql.as_bytes())) == *recorded,
            _ => {
                let lf = m.sql.replace("\r\n", "\n");
                let crlf = lf.replace('\n', "\r\n");
                [
                    &m.checksum,
                    &sha256_hex(lf.as_bytes()),
                    &sha256_hex(crlf.as_bytes()),
                ]
                .iter()
                .any(|c| **c == *recorded)
            }
        };
        Some(if same { Ok(()) } else { Err(recorded.clone()) })
    }
}

/// Reads what the tool of `layout` recorded in `database`, if its table is
/// there. Refuses a database the tool left half-migrated.
pub async fn read(
    conn: &mut PgConnection,
    layout: Layout,
    database: &str,
) -> Result<ToolRecords, MigrateError> {
    let table = match layout {
        Layout::Sqlx => SQLX_TABLE,
        Layout::Prisma => PRISMA_TABLE,
        Layout::Drizzle | Layout::Plain => return Ok(ToolRecords::default()),
    };
    let db_err = |e: sqlx::Error| MigrateError::Database {
        database: database.to_owned(),
        reason: format!("reading {table}: {}", describe(&e)),
    };
    let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    if !present {
        return Ok(ToolRecords::default());
    }
    let mut applied = BTreeMap::new();
    if layout == Layout::Sqlx {
        let rows =
            sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
        for row in rows {
            let version: i64 = row.try_get("version").map_err(db_err)?;
            let checksum: Vec<u8> = row.try_get("checksum").map_err(db_err)?;
            let success: bool = row.try_get("success").map_err(db_err)?;
            if !success {
                return Err(MigrateError::Dirty {
                    database: database.to_owned(),
                    reason: format!(
                        "{SQLX_TABLE} records version {version} as started but not successful (a dirty database); fix the database and that row before migrating"
                    ),
                });
            }
            applied.insert(version.to_string(), hex::encode(checksum));
        }
    } else {
        let rows = sqlx::query(
            "SELECT migration_name, checksum, finished_at IS NOT NULL AS finished, \
             rolled_back_at IS NOT NULL AS rolled_back FROM _prisma_migrations ORDER BY started_at",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
        for row in rows {
            let name: String = row.try_get("migration_name").map_err(db_err)?;
            let checksum: String = row.try_get("checksum").map_err(db_err)?;
            let finished: bool = row.try_get("finished").map_err(db_err)?;
            let rolled_back: bool = row.try_get("rolled_back").map_err(db_err)?;
            match (finished, rolled_back) {
                (_, true) => {}
                (true, false) => {
                    applied.insert(name, checksum);
                }
                (false, false) => {
                    return Err(MigrateError::Dirty {
                        database: database.to_owned(),
                        reason: format!(
                            "{PRISMA_TABLE} records {name} as failed (finished_at and rolled_back_at both null); resolve it with `prisma migrate resolve` before migrating"
                        ),
                    });
                }
            }
        }
    }
    Ok(ToolRecords { table, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: &str, sql: &str) -> Migration {
        Migration {
            version: version.into(),
            name: "x".into(),
            file: format!("{version}/migration.sql"),
            sql: sql.into(),
            checksum: sha256_hex(sql.as_bytes()),
            no_transaction: false,
            breakpoints: false,
        }
    }

    #[test]
    fn sqlx_checksums_are_sha384_of_the_file() {
        let mut r = ToolRecords {
            table: SQLX_TABLE,
            ..Default::default()
        };
        r.applied.insert(
            "1".into(),
            hex::encode(Sha384::digest(b"CREATE TABLE a ();")),
        );
        assert_eq!(r.recorded(&m("1", "CREATE TABLE a ();")), Some(Ok(())));
        assert!(matches!(
            r.recorded(&m("1", "CREATE TABLE b ();")),
            Some(Err(_))
        ));
        assert_eq!(r.recorded(&m("2", "")), None);
    }

    #[test]
    fn prisma_checksums_accept_either_line_ending() {
        let mut r = ToolRecords {
            table: PRISMA_TABLE,
            ..Default::default()
        };
        r.applied.insert(
            "1_init".into(),
            sha256_hex(b"CREATE TABLE a ();\r\nSELECT 1;\r\n"),
        );
        assert_eq!(
            r.recorded(&m("1_init", "CREATE TABLE a ();\nSELECT 1;\n")),
            Some(Ok(()))
        );
        assert!(matches!(
            r.recorded(&m("1_init", "SELECT 2;")),
            Some(Err(_))
        ));
    }
}
