//! What decoding rows needs on both backends: column access by name for
//! the rows of either ([`Columns`]), UUIDs, labels and string lists as JSON,
//! counters as SQL integers, and the embedded migrations. Each record's own
//! decoder lives with its record type, in the module of its concern.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{ColumnIndex, Decode, Row, SqlSafeStr, Type};
use uuid::Uuid;

use super::StoreError;

/// The `meta` key whose presence records that the first admin was added;
/// it is never deleted, which is what makes the bootstrap happen only once.
pub(crate) const BOOTSTRAP_KEY: &str = "bootstrap_admin";

/// `created_by` of the bootstrapped admin: nobody created it through the API.
pub(crate) const SYSTEM_ACTOR: &str = "system";

/// A migration compiled into the binary (version, description, SQL), so an
/// installed coordinator needs no `migrations/` directory beside it.
pub(crate) type EmbeddedMigration = (i64, &'static str, &'static str);

pub(crate) fn migrator(migrations: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Column access by name for the rows of either backend, so each record
/// type is decoded by one function instead of one per backend.
pub(crate) trait Columns {
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &'static str) -> Result<bool, StoreError>;
    fn bytes(&self, column: &'static str) -> Result<Vec<u8>, StoreError>;
}

impl<R> Columns for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &'static str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &'static str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// Labels are one JSON object of strings; building a `Value` cannot fail,
/// unlike `serde_json::to_string`, so there is no error to invent here.
pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
    .to_string()
}

/// A list of strings as one JSON array.
pub(crate) fn strings_json(values: &[String]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

pub(crate) fn strings(
    table: &'static str,
    column: &'static str,
    json: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column} {json:?}: {e}"),
    })
}

pub(crate) fn labels(
    table: &'static str,
    json: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("labels_json {json:?}: {e}"),
    })
}

pub(crate) fn uuid(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column} {text:?} is not a UUID: {e}"),
    })
}

pub(crate) fn opt_uuid(
    table: &'static str,
    column: &'static str,
    text: Option<String>,
) -> Result<Option<Uuid>, StoreError> {
    text.map(|text| uuid(table, column, &text)).transpose()
}

/// Seqs, attempts and counters are never negative; SQL integers are signed.
pub(crate) fn unsigned<T: TryFrom<i64>>(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Corrupt {
        table,
        reason: format!("{column} {value} is out of range"),
    })
}

pub(crate) fn parsed<T: std::str::FromStr<Err = String>>(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column}: {e}"),
    })
}

/// An unsigned counter as an SQL integer; a seq beyond `i64::MAX` cannot
/// occur (it would take millennia of events), so saturating is no loss.
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
