//! Runtime dispatch between the two engines, so each query of the store is
//! written once: a [`Pool`] of either backend, [`Query`]s in `$N` SQL with
//! typed [`Arg`]s bound to whichever backend runs them, rows returned as
//! [`Row`] (which implements [`Columns`], so the decoders of `rows` read
//! them), transactions ([`Tx`]) and multi-row statements ([`Tx::bulk`]).
//!
//! `$N` placeholders are positional on PostgreSQL; SQLite numbers them in
//! order of first use, so every statement must use `$1`, `$2`, … first in
//! that order (a later reuse of a number is fine).
//!
//! The few places where the engines really differ are functions here,
//! each saying why: how a write transaction starts, row locks, id lists,
//! and how a multi-row statement carries its rows.

use std::borrow::Cow;

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Executor, Transaction};
use uuid::Uuid;

use super::rows::Columns;
use super::{Backend, StoreError};

/// Rows per multi-row statement on SQLite: at most 10 parameters a row
/// keeps a statement well below SQLite's limit of 32766 parameters.
const SQLITE_ROWS_PER_STATEMENT: usize = 1000;

/// A connection pool of either backend.
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    pub fn backend(&self) -> Backend {
        match self {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// A transaction that may write. SQLite: `BEGIN IMMEDIATE`, which takes
    /// the one write lock up front: a deferred transaction that later tries
    /// to write fails at once with `SQLITE_BUSY` instead of waiting, and
    /// could act on a stale read. PostgreSQL: the server's default.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// A transaction of the job methods. PostgreSQL: at `READ COMMITTED`
    /// whatever the server's default, since they count a job's tasks after
    /// locking the job and must see what committed before the lock was
    /// granted (see `engine`). SQLite: as [`Pool::begin`].
    pub async fn begin_jobs(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => Tx::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?,
            ),
        })
    }
}

/// A transaction of either backend; dropped without [`Tx::commit`], it
/// rolls back.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Runs `WITH name (columns) AS (rows) statement` for `rows` (each as
    /// many args as `columns`, of their types: a mismatch is a bug in the
    /// caller's code and panics); nothing if `rows` is empty.
    /// The engines differ in how a statement carries many rows: PostgreSQL
    /// takes one array per column (`UNNEST`), a single statement however
    /// many rows; SQLite has no arrays, so it gets `VALUES` lists, several
    /// statements for many rows.
    pub async fn bulk(
        &mut self,
        name: &str,
        columns: &[(&str, Ty)],
        rows: Vec<Vec<Arg>>,
        statement: &str,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let names = columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Tx::Sqlite(tx) => {
                let mut rows = rows.into_iter().peekable();
                while rows.peek().is_some() {
                    let chunk: Vec<Vec<Arg>> =
                        rows.by_ref().take(SQLITE_ROWS_PER_STATEMENT).collect();
                    // Plain `?` placeholders, in order (see `Query::sqlite`).
                    let row = format!("({})", vec!["?"; columns.len()].join(", "));
                    let values = vec![row.as_str(); chunk.len()].join(", ");
                    let sql = format!("WITH {name} ({names}) AS (VALUES {values}) {statement}");
                    let args = chunk.into_iter().flatten();
                    tx.execute(bind_sqlite(sqlx::query(AssertSqlSafe(sql)), args))
                        .await?;
                }
            }
            Tx::Postgres(tx) => {
                let arrays = columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ty))| format!("${}::{}[]", i + 1, ty.postgres()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "WITH {name} ({names}) AS (SELECT * FROM UNNEST({arrays})) {statement}"
                );
                let mut q = sqlx::query::<Postgres>(AssertSqlSafe(sql));
                let mut by_column: Vec<Vec<Arg>> = columns.iter().map(|_| Vec::new()).collect();
                for row in rows {
                    for (i, arg) in row.into_iter().enumerate() {
                        by_column[i].push(arg);
                    }
                }
                for ((column, ty), args) in columns.iter().zip(by_column) {
                    let (c, t) = (*column, *ty);
                    q = match ty {
                        Ty::Text => q.bind(column_of(args, c, t, |a| match a {
                            Arg::Text(v) => Ok(Some(v)),
                            Arg::OptText(v) => Ok(v),
                            other => Err(other),
                        })),
                        Ty::Int => q.bind(column_of(args, c, t, |a| match a {
                            Arg::Int(v) => Ok(Some(v)),
                            Arg::OptInt(v) => Ok(v),
                            other => Err(other),
                        })),
                        Ty::Bool => q.bind(column_of(args, c, t, |a| match a {
                            Arg::Bool(v) => Ok(v),
                            other => Err(other),
                        })),
                        Ty::Bytes => q.bind(column_of(args, c, t, |a| match a {
                            Arg::Bytes(v) => Ok(v),
                            other => Err(other),
                        })),
                    };
                }
                tx.execute(q).await?;
            }
        }
        Ok(())
    }
}

/// One column of a PostgreSQL bulk statement as a typed array. An
/// argument of another type is a bug of the caller, not of the data.
fn column_of<T>(args: Vec<Arg>, column: &str, ty: Ty, pick: fn(Arg) -> Result<T, Arg>) -> Vec<T> {
    args.into_iter()
        .map(|a| {
            pick(a).unwrap_or_else(|other| panic!("bulk column {column} is {ty:?}, got {other:?}"))
        })
        .collect()
}

/// The type of a column of a [`Tx::bulk`] statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Text,
    Int,
    Bool,
    Bytes,
}

impl Ty {
    fn postgres(self) -> &'static str {
        match self {
            Ty::Text => "text",
            Ty::Int => "bigint",
            Ty::Bool => "boolean",
            Ty::Bytes => "bytea",
        }
    }
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Strings matched with [`in_list`].
    List(Vec<String>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.into())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(Into::into))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::OptText(v.clone())
    }
}
impl From<Uuid> for Arg {
    fn from(v: Uuid) -> Self {
        Arg::Text(v.to_string())
    }
}
impl From<Option<Uuid>> for Arg {
    fn from(v: Option<Uuid>) -> Self {
        Arg::OptText(v.map(|id| id.to_string()))
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Arg::Bytes(v.to_vec())
    }
}
impl From<&[Uuid]> for Arg {
    fn from(v: &[Uuid]) -> Self {
        Arg::List(v.iter().map(Uuid::to_string).collect())
    }
}
impl From<&[String]> for Arg {
    fn from(v: &[String]) -> Self {
        Arg::List(v.to_vec())
    }
}

/// `column` is one of the strings of the [`Arg::List`] bound to `$n`.
/// Id lists are one parameter on both engines, but SQLite has no arrays:
/// there the list is bound as a JSON array and unpacked with `json_each`;
/// PostgreSQL takes a `text[]` and `= ANY`.
pub(crate) fn in_list(backend: Backend, column: &str, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each(${n}))"),
        Backend::Postgres => format!("{column} = ANY(${n})"),
    }
}

/// `clause` (`FOR NO KEY UPDATE …`) on PostgreSQL, nothing on SQLite.
/// PostgreSQL locks the rows a transaction is about, so coordinators
/// sharing the database do not act on the same rows at once; SQLite has
/// no row locks and needs none: a write transaction holds the one write
/// lock (`BEGIN IMMEDIATE`) and is alone.
pub(crate) fn row_lock(backend: Backend, clause: &'static str) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => clause,
    }
}

/// Where a [`Query`] runs: a pool (a statement of its own) or a transaction.
pub(crate) enum On<'c> {
    SqlitePool(&'c SqlitePool),
    PgPool(&'c PgPool),
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl<'c> From<&'c Pool> for On<'c> {
    fn from(pool: &'c Pool) -> Self {
        match pool {
            Pool::Sqlite(p) => On::SqlitePool(p),
            Pool::Postgres(p) => On::PgPool(p),
        }
    }
}

/// A PostgreSQL connection of its own (the leader's lease).
impl<'c> From<&'c mut PgConnection> for On<'c> {
    fn from(conn: &'c mut PgConnection) -> Self {
        On::Postgres(conn)
    }
}

impl<'c> From<&'c mut Tx> for On<'c> {
    fn from(tx: &'c mut Tx) -> Self {
        match tx {
            Tx::Sqlite(t) => On::Sqlite(&mut *t),
            Tx::Postgres(t) => On::Postgres(&mut *t),
        }
    }
}

/// One statement: SQL with `$N` placeholders and its args, in order.
pub(crate) struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// Binds `args`, in order, to SQLite's positional `?` placeholders.
fn bind_sqlite(
    mut q: sqlx::query::Query<'static, Sqlite, SqliteArguments>,
    args: impl IntoIterator<Item = Arg>,
) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::OptInt(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Bytes(v) => q.bind(v),
            Arg::List(v) => q.bind(serde_json::Value::from(v).to_string()),
        };
    }
    q
}

/// `sql` with every `$N` outside quotes replaced by `?`, and the arguments
/// those placeholders name, in the order they occur (moved on first use,
/// copied only where a placeholder repeats).
fn positional(sql: &str, args: Vec<Arg>) -> (String, Vec<Arg>) {
    let mut out = String::with_capacity(sql.len());
    let mut ordered: Vec<Arg> = Vec::with_capacity(args.len());
    // Each argument, until it is first used; then where it went.
    let mut args: Vec<Result<Arg, usize>> = args.into_iter().map(Ok).collect();
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let start = i + 1;
                let mut end = start;
                while let Some((j, d)) = chars.peek().copied() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + 1;
                    chars.next();
                }
                let n: usize = sql[start..end].parse().unwrap_or(0);
                let Some(slot) = n.checked_sub(1).and_then(|k| args.get_mut(k)) else {
                    panic!("placeholder ${n} has no argument in {sql:?}");
                };
                let at = ordered.len();
                let arg = match std::mem::replace(slot, Err(at)) {
                    Ok(arg) => arg,
                    Err(first) => {
                        *slot = Err(first);
                        ordered[first].clone()
                    }
                };
                ordered.push(arg);
                out.push('?');
            }
            None => out.push(c),
        }
    }
    (out, ordered)
}

pub(crate) fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl Query {
    pub fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The query for SQLite, its `$N` placeholders turned into plain `?`
    /// with the arguments in the order they appear (repeated where a `$N`
    /// is). SQLite would read `$N` as a *named* parameter, and binding
    /// named parameters looks each name up by a linear scan: a bulk
    /// statement of 6,000 parameters spent most of its time there.
    fn sqlite(self) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
        let (sql, args) = positional(&self.sql, self.args);
        bind_sqlite(sqlx::query::<Sqlite>(AssertSqlSafe(sql)), args)
    }

    fn postgres(self) -> sqlx::query::Query<'static, Postgres, PgArguments> {
        let mut q = sqlx::query::<Postgres>(AssertSqlSafe(self.sql));
        for arg in self.args {
            q = match arg {
                Arg::Text(v) => q.bind(v),
                Arg::OptText(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::List(v) => q.bind(v),
            };
        }
        q
    }

    /// Rows affected.
    pub async fn execute<'c>(self, on: impl Into<On<'c>>) -> Result<u64, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(p) => self.sqlite().execute(p).await?.rows_affected(),
            On::Sqlite(c) => self.sqlite().execute(c).await?.rows_affected(),
            On::PgPool(p) => self.postgres().execute(p).await?.rows_affected(),
            On::Postgres(c) => self.postgres().execute(c).await?.rows_affected(),
        })
    }

    pub async fn fetch_all<'c>(self, on: impl Into<On<'c>>) -> Result<Vec<Row>, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(p) => wrap(self.sqlite().fetch_all(p).await?, Row::Sqlite),
            On::Sqlite(c) => wrap(self.sqlite().fetch_all(c).await?, Row::Sqlite),
            On::PgPool(p) => wrap(self.postgres().fetch_all(p).await?, Row::Postgres),
            On::Postgres(c) => wrap(self.postgres().fetch_all(c).await?, Row::Postgres),
        })
    }

    pub async fn fetch_optional<'c>(
        self,
        on: impl Into<On<'c>>,
    ) -> Result<Option<Row>, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(p) => self.sqlite().fetch_optional(p).await?.map(Row::Sqlite),
            On::Sqlite(c) => self.sqlite().fetch_optional(c).await?.map(Row::Sqlite),
            On::PgPool(p) => self.postgres().fetch_optional(p).await?.map(Row::Postgres),
            On::Postgres(c) => self.postgres().fetch_optional(c).await?.map(Row::Postgres),
        })
    }

    pub async fn fetch_one<'c>(self, on: impl Into<On<'c>>) -> Result<Row, StoreError> {
        Ok(match on.into() {
            On::SqlitePool(p) => Row::Sqlite(self.sqlite().fetch_one(p).await?),
            On::Sqlite(c) => Row::Sqlite(self.sqlite().fetch_one(c).await?),
            On::PgPool(p) => Row::Postgres(self.postgres().fetch_one(p).await?),
            On::Postgres(c) => Row::Postgres(self.postgres().fetch_one(c).await?),
        })
    }
}

fn wrap<R>(rows: Vec<R>, f: fn(R) -> Row) -> Vec<Row> {
    rows.into_iter().map(f).collect()
}

/// A row of either backend.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

macro_rules! columns {
    ($($name:ident -> $ty:ty;)*) => {
        impl Columns for Row {
            $(fn $name(&self, column: &'static str) -> Result<$ty, StoreError> {
                match self {
                    Row::Sqlite(r) => r.$name(column),
                    Row::Postgres(r) => r.$name(column),
                }
            })*
        }
    };
}

columns! {
    text -> String;
    opt_text -> Option<String>;
    int -> i64;
    opt_int -> Option<i64>;
    flag -> bool;
    bytes -> Vec<u8>;
}

#[cfg(test)]
mod positional_tests {
    use super::{Arg, positional};

    fn text(args: &[Arg]) -> Vec<String> {
        args.iter()
            .map(|a| match a {
                Arg::Text(t) => t.clone(),
                Arg::Int(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn numbered_placeholders_become_positional_in_order_of_use() {
        let (sql, args) = positional(
            "SELECT * FROM r WHERE app = $1 AND ($2 IS NULL OR env = $2) AND note = '$3 stays' LIMIT $3",
            vec![Arg::from("shop"), Arg::from("prod"), Arg::from(20i64)],
        );
        assert_eq!(
            sql,
            "SELECT * FROM r WHERE app = ? AND (? IS NULL OR env = ?) AND note = '$3 stays' LIMIT ?"
        );
        assert_eq!(text(&args), ["shop", "prod", "prod", "20"]);
        let (sql, args) = positional("VALUES ($10, $1)", (1..=10i64).map(Arg::from).collect());
        assert_eq!(sql, "VALUES (?, ?)");
        assert_eq!(text(&args), ["10", "1"]);
    }
}
