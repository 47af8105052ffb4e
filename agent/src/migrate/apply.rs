//! Applying one migration as written, together with its ledger row.
//!
//! A migration runs in its own transaction with its ledger row, so it is
//! either applied and recorded or neither. A `-- no-transaction` file runs
//! a statement at a time outside one (what `CREATE INDEX CONCURRENTLY`
//! needs), and its row is written only after its last statement succeeded.
//! SQL goes through the simple-query protocol as the file has it (see
//! [`super::script`]); Drizzle files are split only where the file says
//! (`--> statement-breakpoint`); `COPY … FROM stdin` data goes through the
//! copy protocol.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::error::describe;
use super::layout::{DRIZZLE_BREAKPOINT, Migration};
use super::ledger::{self, LedgerName};
use super::script::{self, Piece, line_of};

/// Copy data is sent in chunks of this size.
const COPY_CHUNK: usize = 64 * 1024;

/// Runs `m` on `conn` and records it in `ledger`. The error is the reason,
/// with the file's line when the server or the scanner gave a position.
pub async fn apply(
    conn: &mut PgConnection,
    ledger: &LedgerName,
    m: &Migration,
    job_id: Option<&str>,
) -> Result<Duration, String> {
    let pieces = split(m)?;
    if m.no_transaction {
        let start = Instant::now();
        for piece in &pieces {
            run(conn, m, piece, true).await.map_err(|e| {
                format!("{e} (the file runs outside a transaction: its statements before this one stay applied)")
            })?;
        }
        let took = start.elapsed();
        ledger::record(conn, ledger, m, millis(took), job_id, None)
            .await
            .map_err(|e| {
                format!(
                    "applied, but recording it in {ledger} failed: {}",
                    describe(&e)
                )
            })?;
        return Ok(took);
    }
    let mut tx = conn.begin().await.map_err(|e| describe(&e))?;
    let start = Instant::now();
    for piece in &pieces {
        if let Err(e) = run(&mut tx, m, piece, false).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    let took = start.elapsed();
    if let Err(e) = ledger::record(&mut tx, ledger, m, millis(took), job_id, None).await {
        let _ = tx.rollback().await;
        return Err(format!("recording it in {ledger}: {}", describe(&e)));
    }
    tx.commit()
        .await
        .map_err(|e| format!("commit: {}", describe(&e)))?;
    Ok(took)
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The pieces of `m` with their offsets in the whole file.
fn split(m: &Migration) -> Result<Vec<Piece<'_>>, String> {
    let mut parts = vec![(0usize, m.sql.as_str())];
    if m.breakpoints {
        parts.clear();
        let mut at = 0;
        for part in m.sql.split(DRIZZLE_BREAKPOINT) {
            parts.push((at, part));
            at += part.len() + DRIZZLE_BREAKPOINT.len();
        }
    }
    let mut out = Vec::new();
    for (base, part) in parts {
        let pieces = script::pieces(part, m.no_transaction)
            .map_err(|e| format!("line {}: {}", line_of(&m.sql, base + e.offset), e.message))?;
        out.extend(pieces.into_iter().map(|p| match p {
            Piece::Sql { text, offset } => Piece::Sql {
                text,
                offset: base + offset,
            },
            Piece::Copy {
                statement,
                offset,
                data,
            } => Piece::Copy {
                statement,
                offset: base + offset,
                data,
            },
        }));
    }
    Ok(out)
}

async fn run(
    conn: &mut PgConnection,
    m: &Migration,
    piece: &Piece<'_>,
    per_statement: bool,
) -> Result<(), String> {
    let (text, result) = match piece {
        Piece::Sql { text, .. } => (
            *text,
            sqlx::raw_sql(sqlx::AssertSqlSafe(*text))
                .execute(&mut *conn)
                .await
                .map(drop),
        ),
        Piece::Copy {
            statement, data, ..
        } => (*statement, copy(conn, statement, data).await),
    };
    result.map_err(|e| {
        let reason = describe(&e);
        let position = match &e {
            sqlx::Error::Database(db) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| match pg.position() {
                    Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
                    _ => None,
                }),
            _ => None,
        };
        match position {
            Some(chars) => {
                let byte = text
                    .char_indices()
                    .nth(chars.saturating_sub(1))
                    .map_or(text.len(), |(b, _)| b);
                format!("line {}: {reason}", line_of(&m.sql, piece.offset() + byte))
            }
            None if per_statement || matches!(piece, Piece::Copy { .. }) || piece.offset() > 0 => {
                format!(
                    "statement at line {}: {reason}",
                    line_of(&m.sql, first_token(text, piece.offset()))
                )
            }
            None => reason,
        }
    })
}

/// The offset of the first non-blank byte of `text` (which starts at `base`).
fn first_token(text: &str, base: usize) -> usize {
    base + (text.len() - text.trim_start().len())
}

async fn copy(conn: &mut PgConnection, statement: &str, data: &str) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    for chunk in data.as_bytes().chunks(COPY_CHUNK) {
        if let Err(e) = copy.send(chunk).await {
            let _ = copy.abort("sending the data failed").await;
            return Err(e);
        }
    }
    copy.finish().await.map(drop)
}
