//! Ferry's ledger: one table per database (`ferry.migrations` unless the
//! app file names another) recording each migration applied: version, name,
//! checksum, when, how long it took, and by which job. It is created only by
//! a run that applies something, never by a dry run or a status.

use sqlx::{Connection, PgConnection, Row};

use super::error::MigrateError;
use super::layout::Migration;

/// The ledger's schema and table, both plain lowercase identifiers, so they
/// can be written into SQL unquoted and match what `psql \dt` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerName {
    schema: String,
    table: String,
}

impl Default for LedgerName {
    fn default() -> Self {
        LedgerName {
            schema: "ferry".into(),
            table: "migrations".into(),
        }
    }
}

impl LedgerName {
    /// `schema.table` or `table` (in the `ferry` schema).
    pub fn parse(text: &str) -> Result<Self, MigrateError> {
        let (schema, table) = text.split_once('.').unwrap_or(("ferry", text));
        for part in [schema, table] {
            let ok = !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(MigrateError::config(
                    format!("ledger table {text:?}"),
                    "expected table or schema.table, each a lowercase identifier (a-z, 0-9, _; at most 63 characters)",
                ));
            }
        }
        Ok(LedgerName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `schema.table`, to write into SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

impl std::fmt::Display for LedgerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.qualified())
    }
}

/// One applied migration, as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerRow {
    pub version: String,
    pub name: String,
    pub checksum: String,
    /// RFC 3339, UTC.
    pub applied_at: String,
    pub duration_ms: i64,
    pub job_id: Option<String>,
    /// `_sqlx_migrations` / `_prisma_migrations` when the row records a
    /// migration the app's own tool applied before Ferry took over.
    pub adopted_from: Option<String>,
}

/// Whether the ledger table exists (read-only: a catalog lookup).
pub async fn exists(conn: &mut PgConnection, ledger: &LedgerName) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(ledger.qualified())
        .fetch_one(conn)
        .await
}

/// Every row, oldest first; none when the table does not exist.
pub async fn read(
    conn: &mut PgConnection,
    ledger: &LedgerName,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    if !exists(conn, ledger).await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT version, name, checksum, \
         to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS applied_at, \
         duration_ms, job_id, adopted_from FROM {} ORDER BY applied_at, version",
        ledger.qualified()
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LedgerRow {
                version: r.try_get("version")?,
                name: r.try_get("name")?,
                checksum: r.try_get("checksum")?,
                applied_at: r.try_get("applied_at")?,
                duration_ms: r.try_get("duration_ms")?,
                job_id: r.try_get("job_id")?,
                adopted_from: r.try_get("adopted_from")?,
            })
        })
        .collect()
}

/// Creates the schema and table if missing. Called with the database's
/// migration lock held, so two runs never race to create them.
pub async fn ensure(conn: &mut PgConnection, ledger: &LedgerName) -> Result<(), sqlx::Error> {
    if exists(conn, ledger).await? {
        return Ok(());
    }
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {table} (
             version      text PRIMARY KEY,
             name         text NOT NULL,
             checksum     text NOT NULL,
             applied_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
             duration_ms  bigint NOT NULL,
             job_id       text,
             adopted_from text
         );",
        schema = ledger.schema(),
        table = ledger.qualified()
    );
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Records `m` as applied: in the migration's own transaction when it has
/// one, right after it otherwise.
pub async fn record(
    conn: &mut PgConnection,
    ledger: &LedgerName,
    m: &Migration,
    duration_ms: i64,
    job_id: Option<&str>,
    adopted_from: Option<&str>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {} (version, name, checksum, duration_ms, job_id, adopted_from) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        ledger.qualified()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&m.version)
        .bind(&m.name)
        .bind(&m.checksum)
        .bind(duration_ms)
        .bind(job_id)
        .bind(adopted_from)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_names_are_plain_identifiers() {
        assert_eq!(LedgerName::default().qualified(), "ferry.migrations");
        assert_eq!(
            LedgerName::parse("applied").unwrap().qualified(),
            "ferry.applied"
        );
        assert_eq!(
            LedgerName::parse("ops.ledger_2").unwrap().qualified(),
            "ops.ledger_2"
        );
        for bad in ["", "a.b.c", "Ferry.x", "x;drop", "1abc", "a.", ".a"] {
            let err = LedgerName::parse(bad).unwrap_err().to_string();
            assert!(err.contains("lowercase identifier"), "{bad}: {err}");
        }
    }
}
