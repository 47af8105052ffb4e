//! Ids as operators type them: a whole id, or at least
//! [`MIN_ID_CHARS`] characters of one. Ids are time-ordered UUIDs (v7):
//! their first characters are the time they were made and repeat between
//! ids made within the same minute, so a short form is matched at either
//! end; the CLI's lists show the last 8 characters, which are random.

use uuid::Uuid;

use super::db::query;
use super::rows::Columns;
use super::{Store, StoreError};

/// The fewest characters of an id accepted in place of the whole id.
pub const MIN_ID_CHARS: usize = 8;

/// What an id names; each is a table with a text `id` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOf {
    Job,
    Rollout,
    Schedule,
}

impl IdOf {
    pub fn noun(self) -> &'static str {
        match self {
            IdOf::Job => "job",
            IdOf::Rollout => "rollout",
            IdOf::Schedule => "schedule",
        }
    }

    /// Where an operator finds ids of this kind.
    pub fn listed_by(self) -> &'static str {
        match self {
            IdOf::Job => "ferry jobs",
            IdOf::Rollout => "ferry releases",
            IdOf::Schedule => "ferry schedule ls",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            IdOf::Job => "SELECT id FROM jobs WHERE id LIKE $1 OR id LIKE $2 ORDER BY id LIMIT 6",
            IdOf::Rollout => {
                "SELECT id FROM rollouts WHERE id LIKE $1 OR id LIKE $2 ORDER BY id LIMIT 6"
            }
            IdOf::Schedule => {
                "SELECT id FROM schedules WHERE id LIKE $1 OR id LIKE $2 ORDER BY id LIMIT 6"
            }
        }
    }
}

/// Checks an id as typed: a whole UUID, or [`MIN_ID_CHARS`] or more of its
/// hex digits and dashes. Returns the whole id, or the lowercased part.
pub fn parse_id(of: IdOf, text: &str) -> Result<Result<Uuid, String>, StoreError> {
    let text = text.trim();
    if let Ok(id) = Uuid::parse_str(text) {
        return Ok(Ok(id));
    }
    let bad = || StoreError::BadId {
        what: of.noun(),
        text: text.chars().take(40).collect(),
        listed_by: of.listed_by(),
    };
    if text.len() < MIN_ID_CHARS
        || text.len() > 36
        || !text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(bad());
    }
    Ok(Err(text.to_ascii_lowercase()))
}

impl Store {
    /// The one id `text` names: a whole id as is (whether or not it
    /// exists), or the one stored id that starts or ends with `text`.
    /// `BadId` for anything else than hex digits and dashes, or fewer than
    /// [`MIN_ID_CHARS`]; `IdNotFound` when no id matches; `IdAmbiguous`
    /// (naming the matches) when several do.
    pub async fn resolve_id(&self, of: IdOf, text: &str) -> Result<Uuid, StoreError> {
        let part = match parse_id(of, text)? {
            Ok(id) => return Ok(id),
            Err(part) => part,
        };
        // `part` holds only hex digits and dashes: no LIKE wildcard.
        let rows = query(of.sql())
            .bind(format!("{part}%"))
            .bind(format!("%{part}"))
            .fetch_all(&self.pool)
            .await?;
        let ids = rows
            .iter()
            .map(|r| r.text("id"))
            .collect::<Result<Vec<_>, _>>()?;
        match ids.as_slice() {
            [one] => Uuid::parse_str(one).map_err(|e| StoreError::Corrupt {
                table: "ids",
                reason: e.to_string(),
            }),
            [] => Err(StoreError::IdNotFound {
                what: of.noun(),
                text: part,
                listed_by: of.listed_by(),
            }),
            many => Err(StoreError::IdAmbiguous {
                what: of.noun(),
                text: part,
                matches: many.to_vec(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_whole_or_long_enough_hex() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_id(IdOf::Job, &format!(" {id} ")).unwrap(),
            Ok(id),
            "a whole id needs no lookup"
        );
        assert_eq!(
            parse_id(IdOf::Job, "ABCDEF12").unwrap(),
            Err("abcdef12".to_string())
        );
        assert_eq!(
            parse_id(IdOf::Rollout, "0190-abc-12").unwrap(),
            Err("0190-abc-12".to_string())
        );
        for bad in ["abc1234", "abcdefg1", "abc%1234", "abcd_1234", ""] {
            let err = parse_id(IdOf::Job, bad).unwrap_err().to_string();
            assert!(err.contains("at least 8"), "{bad}: {err}");
            assert!(err.contains("ferry jobs"), "{bad}: {err}");
        }
    }
}
