//! An app's tenant databases: listed by a query on its main database, each
//! reached on the same server with the database name replaced (or through a
//! URL template), and narrowed by the run's filters.

use sqlx::{Connection, PgConnection, Row};

use super::error::{MigrateError, describe};

/// How to find the tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSource {
    /// Run on the main database, read-only; returns one row per tenant. The
    /// database name is the first column that is not `id_column`.
    pub query: String,
    /// The column holding each tenant's id, if the query returns one.
    pub id_column: Option<String>,
    /// A connection URL with `{db}` (and `{id}`) for tenants that are not
    /// on the main database's server; `None`: same server as the main one.
    pub url_template: Option<String>,
}

/// One tenant as the query returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub database: String,
    pub id: Option<String>,
}

/// Which databases a run visits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these tenants (database names, as the query returns them).
    pub tenants: Vec<String>,
    /// Only the tenants with these ids.
    pub tenant_ids: Vec<String>,
    pub main_only: bool,
    pub skip_main: bool,
}

impl Filter {
    /// Refuses filters that contradict each other.
    pub fn check(&self) -> Result<(), MigrateError> {
        if self.main_only && self.skip_main {
            return Err(MigrateError::config(
                "--main-only and --skip-main",
                "together they leave nothing to migrate; give one",
            ));
        }
        if self.main_only && (!self.tenants.is_empty() || !self.tenant_ids.is_empty()) {
            return Err(MigrateError::config(
                "--main-only",
                "cannot be combined with --tenant / --tenant-id",
            ));
        }
        Ok(())
    }

    /// Whether the run visits tenants at all.
    pub fn wants_tenants(&self) -> bool {
        !self.main_only
    }

    /// Whether the run visits the main database (`--tenant` alone does
    /// not skip it: main first, always, unless `--skip-main`).
    pub fn wants_main(&self) -> bool {
        !self.skip_main
    }

    /// The tenants this filter keeps, in the query's order. A named tenant
    /// or id the query did not return is an error naming it.
    pub fn apply(&self, all: Vec<Tenant>) -> Result<Vec<Tenant>, MigrateError> {
        for name in &self.tenants {
            if !all.iter().any(|t| &t.database == name) {
                return Err(MigrateError::config(
                    format!("--tenant {name}"),
                    "the tenant query returned no such database",
                ));
            }
        }
        for id in &self.tenant_ids {
            if !all.iter().any(|t| t.id.as_ref() == Some(id)) {
                return Err(MigrateError::config(
                    format!("--tenant-id {id}"),
                    "the tenant query returned no tenant with this id (is id_column set?)",
                ));
            }
        }
        if self.tenants.is_empty() && self.tenant_ids.is_empty() {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .filter(|t| {
                self.tenants.contains(&t.database)
                    || t.id.as_ref().is_some_and(|id| self.tenant_ids.contains(id))
            })
            .collect())
    }
}

/// Runs the tenant query on `conn` (the main database) in a read-only
/// transaction. Every value is read as text (the simple-query protocol
/// returns text), so ids may be integers, UUIDs or strings.
pub async fn list(
    conn: &mut PgConnection,
    main: &str,
    source: &TenantSource,
) -> Result<Vec<Tenant>, MigrateError> {
    let fail = |reason: String| MigrateError::Tenants {
        database: main.to_owned(),
        reason,
    };
    let mut tx = conn.begin().await.map_err(|e| fail(describe(&e)))?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(|e| fail(describe(&e)))?;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(source.query.as_str()))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| fail(format!("query {:?}: {}", source.query, describe(&e))))?;
    let _ = tx.rollback().await;
    let mut out: Vec<Tenant> = Vec::with_capacity(rows.len());
    for (n, row) in rows.iter().enumerate() {
        let columns = row.columns();
        let id_at = match &source.id_column {
            None => None,
            Some(c) => Some(
                columns
                    .iter()
                    .position(|col| sqlx::Column::name(col) == c)
                    .ok_or_else(|| {
                        fail(format!(
                            "id_column {c:?} is not a column of the query's result ({})",
                            columns
                                .iter()
                                .map(sqlx::Column::name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?,
            ),
        };
        let Some(name_at) = (0..columns.len()).find(|&i| Some(i) != id_at) else {
            return Err(fail("the query returns no database name column".into()));
        };
        let text = |i: usize| -> Result<Option<String>, MigrateError> {
            row.try_get_unchecked::<Option<String>, _>(i)
                .map_err(|e| fail(format!("row {}: {e}", n + 1)))
        };
        let Some(database) = text(name_at)?.filter(|d| !d.is_empty()) else {
            return Err(fail(format!(
                "row {} has no database name (null or empty)",
                n + 1
            )));
        };
        let id = match id_at {
            Some(i) => text(i)?,
            None => None,
        };
        if out.iter().any(|t| t.database == database) {
            return Err(fail(format!("database {database:?} is returned twice")));
        }
        out.push(Tenant { database, id });
    }
    Ok(out)
}

/// The URL of a tenant's database: `template` with `{db}` and `{id}`
/// replaced (percent-encoded), or the main URL with its database replaced.
pub fn tenant_url(
    main_url: &str,
    tenant: &Tenant,
    template: Option<&str>,
) -> Result<String, MigrateError> {
    let db = encode(&tenant.database);
    if let Some(t) = template {
        if !t.contains("{db}") && !t.contains("{id}") {
            return Err(MigrateError::config(
                "url_template",
                "names neither {db} nor {id}, so every tenant would get the same database",
            ));
        }
        if t.contains("{id}") && tenant.id.is_none() {
            return Err(MigrateError::config(
                "url_template",
                format!(
                    "uses {{id}}, but tenant {} has no id (set id_column)",
                    tenant.database
                ),
            ));
        }
        let id = tenant.id.as_deref().map(encode).unwrap_or_default();
        return Ok(t.replace("{db}", &db).replace("{id}", &id));
    }
    let bad = || {
        MigrateError::config(
            "main database URL",
            "not a postgres://user:password@host:port/database URL",
        )
    };
    let scheme_end = main_url.find("://").ok_or_else(bad)? + 3;
    let rest = &main_url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after_authority = &rest[authority_end..];
    let tail = match after_authority.strip_prefix('/') {
        Some(path) => &path[path.find(['?', '#']).unwrap_or(path.len())..],
        None => after_authority,
    };
    Ok(format!(
        "{}{}/{db}{tail}",
        &main_url[..scheme_end],
        &rest[..authority_end]
    ))
}

/// Percent-encodes all but URL-unreserved bytes.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: &str, id: Option<&str>) -> Tenant {
        Tenant {
            database: db.into(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn tenant_urls_replace_only_the_database() {
        let main = "postgres://app:p%2Fw@db.internal:5432/erp_main?sslmode=require";
        assert_eq!(
            tenant_url(main, &t("erp_t1", None), None).unwrap(),
            "postgres://app:p%2Fw@db.internal:5432/erp_t1?sslmode=require"
        );
        assert_eq!(
            tenant_url("postgresql://h", &t("a b", None), None).unwrap(),
            "postgresql://h/a%20b"
        );
        assert_eq!(
            tenant_url(
                main,
                &t("erp_t1", Some("7")),
                Some("postgres://app@shard-{id}.internal/{db}")
            )
            .unwrap(),
            "postgres://app@shard-7.internal/erp_t1"
        );
        assert!(tenant_url(main, &t("x", None), Some("postgres://h/{id}")).is_err());
        assert!(tenant_url(main, &t("x", None), Some("postgres://h/fixed")).is_err());
        assert!(tenant_url("not a url", &t("x", None), None).is_err());
    }

    #[test]
    fn filters_keep_named_tenants_and_refuse_unknown_ones() {
        let all = vec![t("a", Some("1")), t("b", Some("2")), t("c", Some("3"))];
        let f = Filter {
            tenants: vec!["c".into()],
            tenant_ids: vec!["1".into()],
            ..Default::default()
        };
        assert_eq!(
            f.apply(all.clone()).unwrap(),
            vec![t("a", Some("1")), t("c", Some("3"))]
        );
        let f = Filter {
            tenants: vec!["zz".into()],
            ..Default::default()
        };
        assert!(
            f.apply(all.clone())
                .unwrap_err()
                .to_string()
                .contains("--tenant zz")
        );
        assert_eq!(Filter::default().apply(all.clone()).unwrap().len(), 3);
        let both = Filter {
            main_only: true,
            skip_main: true,
            ..Default::default()
        };
        assert!(both.check().is_err());
    }
}
