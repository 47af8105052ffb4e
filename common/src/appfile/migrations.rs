//! `[databases.NAME.migrations]` and `[databases.NAME.tenants]`: the app's
//! schema migrations for a database, and the tenant databases that follow
//! the main one (`ferry migrate`).
//!
//! Two modes. SQL mode: `dir` (a folder beside the app file, whose files
//! the CLI reads and sends with the job) or `image_path` (a folder inside
//! the image of `service`), in a `layout` (`sqlx`, `prisma`, `drizzle`,
//! `plain`), applied by the agent itself with a ledger. Command mode:
//! `command` (the app's own tool, e.g. `["npx", "prisma", "migrate",
//! "deploy"]`) run per database in a one-off container of `service`'s image
//! with `DATABASE_URL` set; `status_command` for dry runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::Check;
use super::raw::FieldPath;
use crate::job::backup::check_table_name;
use crate::job::migrate::{DEFAULT_MIGRATE_CONCURRENCY, MAX_MIGRATE_CONCURRENCY};
use crate::migration_layout::Layout;
use crate::rules::dns_name;

/// Where a database's migrations come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationsMode {
    /// SQL files in this folder, relative to the app file's folder.
    Dir { dir: String, layout: Layout },
    /// SQL files in this folder of the image of the migrations' service.
    ImagePath { path: String, layout: Layout },
    /// The app's own tool, in a one-off container of that image.
    Command {
        command: Vec<String>,
        status_command: Option<Vec<String>>,
    },
}

/// `[databases.NAME.migrations]` (and `[databases.NAME.tenants.migrations]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrations {
    pub mode: MigrationsMode,
    /// The service whose image `image_path` and `command` use; none: the
    /// file's only service.
    pub service: Option<String>,
    /// `schema.table` of the ledger; none: `ferry.migrations`.
    pub ledger: Option<String>,
    #[serde(with = "crate::time::serde_opt_duration")]
    pub lock_timeout: Option<Duration>,
    #[serde(with = "crate::time::serde_opt_duration")]
    pub statement_timeout: Option<Duration>,
    /// Tenant databases migrated at once.
    pub concurrency: u32,
}

/// `[databases.NAME.tenants]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenants {
    /// Run on the main database; one row per tenant database.
    pub query: String,
    pub id_column: Option<String>,
    pub url_template: Option<String>,
    /// The tenants' own migrations (only where they come from); none: the
    /// main database's.
    pub migrations: Option<Migrations>,
}

impl Check {
    pub(super) fn migrations(
        &mut self,
        path: &FieldPath,
        raw: RawMigrations,
    ) -> Option<Migrations> {
        let given: Vec<&str> = [
            raw.dir.as_ref().map(|_| "dir"),
            raw.image_path.as_ref().map(|_| "image_path"),
            raw.command.as_ref().map(|_| "command"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let layout = raw
            .layout
            .as_deref()
            .and_then(|l| self.ok(&path.key("layout"), l.parse::<Layout>()));
        let mode = match given.as_slice() {
            [] => {
                self.err(
                    path,
                    "says nowhere where the migrations are; give dir = \"migrations\" (a folder beside the app file) or image_path = \"/app/migrations\" (a folder in the image), each with layout = \"sqlx\" | \"prisma\" | \"drizzle\" | \"plain\"; or command = [\"npx\", \"prisma\", \"migrate\", \"deploy\"] (the app's own tool)",
                );
                None
            }
            [one] => {
                let need_layout = |check: &mut Check| {
                    if raw.layout.is_none() {
                        check.err(
                            &path.key("layout"),
                            format!(
                                "missing: with {one}, say how the folder is laid out: layout = \"sqlx\" | \"prisma\" | \"drizzle\" | \"plain\""
                            ),
                        );
                    }
                };
                if *one != "command" && raw.status_command.is_some() {
                    self.err(
                        &path.key("status_command"),
                        format!(
                            "only with command; with {one} a dry run lists the pending files itself"
                        ),
                    );
                }
                match *one {
                    "dir" => {
                        need_layout(self);
                        let dir = raw.dir.clone().unwrap_or_default();
                        if dir.trim().is_empty() {
                            self.err(
                                &path.key("dir"),
                                "empty; give the folder, e.g. dir = \"migrations\"",
                            );
                        }
                        layout.map(|layout| MigrationsMode::Dir { dir, layout })
                    }
                    "image_path" => {
                        need_layout(self);
                        let p = raw.image_path.clone().unwrap_or_default();
                        if !p.starts_with('/') {
                            self.err(
                                &path.key("image_path"),
                                format!("{p:?} is not an absolute path inside the image, e.g. \"/app/migrations\""),
                            );
                        }
                        layout.map(|layout| MigrationsMode::ImagePath { path: p, layout })
                    }
                    _ => {
                        if raw.layout.is_some() {
                            self.err(
                                &path.key("layout"),
                                "only with dir or image_path; with command the app's own tool decides",
                            );
                        }
                        let command = raw.command.clone().unwrap_or_default();
                        if command.first().is_none_or(|c| c.trim().is_empty()) {
                            self.err(
                                &path.key("command"),
                                "empty; give the program and its arguments, e.g. [\"npx\", \"prisma\", \"migrate\", \"deploy\"]",
                            );
                        }
                        let status_command = raw.status_command.clone();
                        if status_command
                            .as_ref()
                            .is_some_and(|c| c.first().is_none_or(|c| c.trim().is_empty()))
                        {
                            self.err(&path.key("status_command"), "empty; give the program and its arguments, e.g. [\"npx\", \"prisma\", \"migrate\", \"status\"]");
                        }
                        Some(MigrationsMode::Command {
                            command,
                            status_command,
                        })
                    }
                }
            }
            [a, b, ..] => {
                self.err(
                    &path.key(b),
                    format!(
                        "{} are all given; give exactly one of dir, image_path or command (remove all but {a})",
                        given.join(" and ")
                    ),
                );
                None
            }
        };
        if let Some(s) = &raw.service {
            self.ok(
                &path.key("service"),
                dns_name(s).map_err(|e| format!("service name {e}")),
            );
            if raw.dir.is_some() {
                self.err(
                    &path.key("service"),
                    "only with image_path or command (whose image it names); dir is read beside the app file",
                );
            }
        }
        if let Some(l) = &raw.ledger {
            self.ok(
                &path.key("ledger"),
                check_table_name(l).map_err(|e| format!("{e}; e.g. ledger = \"ferry.migrations\"")),
            );
            if raw.command.is_some() {
                self.err(
                    &path.key("ledger"),
                    "only in SQL mode; with command the app's own tool keeps its ledger",
                );
            }
        }
        let lock_timeout =
            self.duration(&path.key("lock_timeout"), raw.lock_timeout.as_deref(), true);
        let statement_timeout = self.duration(
            &path.key("statement_timeout"),
            raw.statement_timeout.as_deref(),
            true,
        );
        let concurrency = match raw.concurrency {
            None => DEFAULT_MIGRATE_CONCURRENCY,
            Some(n) => match u32::try_from(n) {
                Ok(n) if (1..=MAX_MIGRATE_CONCURRENCY).contains(&n) => n,
                _ => {
                    self.err(
                        &path.key("concurrency"),
                        format!("{n} is not between 1 and {MAX_MIGRATE_CONCURRENCY}"),
                    );
                    DEFAULT_MIGRATE_CONCURRENCY
                }
            },
        };
        Some(Migrations {
            mode: mode?,
            service: raw.service,
            ledger: raw.ledger,
            lock_timeout,
            statement_timeout,
            concurrency,
        })
    }

    pub(super) fn tenants(
        &mut self,
        path: &FieldPath,
        raw: RawTenants,
        main: Option<&Migrations>,
    ) -> Option<Tenants> {
        let query = raw.query.clone().unwrap_or_default();
        if query.trim().is_empty() {
            self.err(
                &path.key("query"),
                "missing: the query on the main database that lists the tenant databases, e.g. query = \"SELECT db_name FROM tenant\"",
            );
        }
        if let Some(c) = &raw.id_column
            && c.trim().is_empty()
        {
            self.err(
                &path.key("id_column"),
                "empty; name the column holding each tenant's id",
            );
        }
        if let Some(t) = &raw.url_template {
            if !t.contains("{db}") && !t.contains("{id}") {
                self.err(
                    &path.key("url_template"),
                    "names neither {db} nor {id}, so every tenant would get the same database; e.g. \"postgres://app@tenants.internal/{db}\"",
                );
            } else if t.contains("{id}") && raw.id_column.is_none() {
                self.err(
                    &path.key("url_template"),
                    "uses {id}, but no id_column says which column holds it",
                );
            }
            if !(t.starts_with("postgres://") || t.starts_with("postgresql://")) {
                self.err(&path.key("url_template"), "not a postgres:// URL");
            }
        }
        let Some(main) = main else {
            self.err(
                path,
                "tenants follow the main database's migrations; add [databases.NAME.migrations] too",
            );
            return None;
        };
        let migrations = match raw.migrations {
            None => None,
            Some(m) => {
                let p = path.key("migrations");
                for (field, given) in [
                    ("ledger", m.ledger.is_some()),
                    ("lock_timeout", m.lock_timeout.is_some()),
                    ("statement_timeout", m.statement_timeout.is_some()),
                    ("concurrency", m.concurrency.is_some()),
                ] {
                    if given {
                        self.err(
                            &p.key(field),
                            "set it in the main database's [databases.NAME.migrations]: one run has one ledger name, one set of timeouts and one concurrency",
                        );
                    }
                }
                let t = self.migrations(&p, m)?;
                let command = |m: &Migrations| matches!(m.mode, MigrationsMode::Command { .. });
                if command(&t) != command(main) {
                    self.err(
                        &p,
                        "the main database's and the tenants' migrations must both be SQL files or both be a command",
                    );
                }
                Some(t)
            }
        };
        Some(Tenants {
            query,
            id_column: raw.id_column,
            url_template: raw.url_template,
            migrations,
        })
    }

    /// `service` of migrations that run an image names a service of the
    /// file, or is left out when the file has exactly one.
    pub(super) fn migration_services(
        &mut self,
        databases: &std::collections::BTreeMap<String, super::Database>,
        services: &[super::Service],
    ) {
        for (name, db) in databases {
            let base = FieldPath::default().key("databases").key(name);
            let sets = [
                (base.key("migrations"), db.migrations.as_ref()),
                (
                    base.key("tenants").key("migrations"),
                    db.tenants.as_ref().and_then(|t| t.migrations.as_ref()),
                ),
            ];
            for (path, m) in sets {
                let Some(m) = m else { continue };
                if matches!(m.mode, MigrationsMode::Dir { .. }) {
                    continue;
                }
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                match &m.service {
                    Some(s) if !known.contains(&s.as_str()) => self.err(
                        &path.key("service"),
                        format!(
                            "{s:?} is not a service of this file; the services are {}",
                            known.join(", ")
                        ),
                    ),
                    None if known.len() != 1 => self.err(
                        &path,
                        format!(
                            "say whose image runs the migrations: service = one of {}",
                            known.join(", ")
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }
}

/// `[databases.NAME.migrations]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Migrations")]
pub(super) struct RawMigrations {
    dir: Option<String>,
    image_path: Option<String>,
    layout: Option<String>,
    command: Option<Vec<String>>,
    status_command: Option<Vec<String>>,
    service: Option<String>,
    ledger: Option<String>,
    lock_timeout: Option<String>,
    statement_timeout: Option<String>,
    concurrency: Option<i64>,
}

/// `[databases.NAME.tenants]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Tenants")]
pub(super) struct RawTenants {
    query: Option<String>,
    id_column: Option<String>,
    url_template: Option<String>,
    migrations: Option<RawMigrations>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appfile::testing::*;

    fn db(body: &str) -> String {
        format!(
            "{}[databases.main]\nurl_secret = \"DATABASE_URL\"\n{body}\n",
            service("")
        )
    }

    #[test]
    fn sql_and_command_modes_parse() {
        let f = ok(&db(r#"[databases.main.migrations]
dir = "migrations/main"
layout = "sqlx"
lock_timeout = "5s"
statement_timeout = "10m"
concurrency = 8
ledger = "ops.schema_log"
[databases.main.tenants]
query = "SELECT db_name, id FROM tenant"
id_column = "id"
[databases.main.tenants.migrations]
dir = "migrations/tenant"
layout = "prisma""#));
        let m = f.databases["main"].migrations.as_ref().unwrap();
        assert_eq!(
            m.mode,
            MigrationsMode::Dir {
                dir: "migrations/main".into(),
                layout: Layout::Sqlx
            }
        );
        assert_eq!(m.lock_timeout, Some(Duration::from_secs(5)));
        assert_eq!(m.statement_timeout, Some(Duration::from_secs(600)));
        assert_eq!(m.concurrency, 8);
        assert_eq!(m.ledger.as_deref(), Some("ops.schema_log"));
        let t = f.databases["main"].tenants.as_ref().unwrap();
        assert_eq!(t.id_column.as_deref(), Some("id"));
        assert!(matches!(
            t.migrations.as_ref().unwrap().mode,
            MigrationsMode::Dir {
                layout: Layout::Prisma,
                ..
            }
        ));
        // Kept by the coordinator as JSON, read back the same.
        let json = serde_json::to_string(&f.databases["main"]).unwrap();
        let back: crate::appfile::Database = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, &f.databases["main"]);

        let f = ok(&db(r#"[databases.main.migrations]
command = ["npx", "prisma", "migrate", "deploy"]
status_command = ["npx", "prisma", "migrate", "status"]"#));
        let m = f.databases["main"].migrations.as_ref().unwrap();
        assert_eq!(m.concurrency, DEFAULT_MIGRATE_CONCURRENCY);
        assert!(matches!(&m.mode, MigrationsMode::Command { command, .. } if command[0] == "npx"));
    }

    #[test]
    fn broken_migrations_name_the_line_and_field() {
        let p = |body: &str| problem(&db(body));
        assert!(
            p("[databases.main.migrations]\nlayout = \"sqlx\"")
                .starts_with("9: databases.main.migrations: says nowhere where the migrations are")
        );
        assert_eq!(
            p("[databases.main.migrations]\ndir = \"m\""),
            "9: databases.main.migrations.layout: missing: with dir, say how the folder is laid out: layout = \"sqlx\" | \"prisma\" | \"drizzle\" | \"plain\""
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"flyway\"")
                .starts_with("11: databases.main.migrations.layout: unknown migration layout \"flyway\"; expected one of sqlx, prisma, drizzle, plain")
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\ncommand = [\"x\"]\nlayout = \"sqlx\"")
                .contains("dir and command are all given")
        );
        assert_eq!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"sqlx\"\nconcurrency = 0"),
            "12: databases.main.migrations.concurrency: 0 is not between 1 and 64"
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"sqlx\"\nlock_timeout = \"soon\"")
                .starts_with("12: databases.main.migrations.lock_timeout:")
        );
        assert!(
            p("[databases.main.migrations]\nimage_path = \"app/m\"\nlayout = \"sqlx\"")
                .contains("is not an absolute path inside the image")
        );
        assert!(
            p("[databases.main.migrations]\ncommand = [\"x\"]\nservice = \"api\"")
                .contains("\"api\" is not a service of this file; the services are web")
        );
        assert!(
            p("[databases.main.tenants]\nquery = \"SELECT 1\"").starts_with(
                "9: databases.main.tenants: tenants follow the main database's migrations"
            )
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"sqlx\"\n[databases.main.tenants]\nquery = \"SELECT d FROM t\"\nurl_template = \"postgres://h/x\"")
                .contains("databases.main.tenants.url_template: names neither {db} nor {id}")
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"sqlx\"\n[databases.main.tenants]\nquery = \"SELECT d FROM t\"\n[databases.main.tenants.migrations]\ndir = \"t\"\nlayout = \"sqlx\"\nconcurrency = 2")
                .contains("databases.main.tenants.migrations.concurrency: set it in the main database's")
        );
        assert!(
            p("[databases.main.migrations]\ndir = \"m\"\nlayout = \"sqlx\"\nport = 1")
                .contains("unknown field `port`")
        );
    }
}
