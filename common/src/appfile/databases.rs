//! `[databases.NAME]`: the app's databases, where they are, which host
//! works on them, how they are backed up (`[databases.NAME.backup]`) and
//! what a verified backup must satisfy (`[[databases.NAME.checks]]`).
//!
//! Everything is parsed and checked here, including what only later work
//! acts on (schedules, retention), so that an app file valid today stays
//! valid. Cron expressions are read by `croner` (five fields, as crontab)
//! and must fire at least once; time zones are IANA names known to `jiff`.
//!
//! The app's schema migrations are the `migrations` and `tenants`
//! sub-tables of `[databases.NAME]`: fields of [`RawDatabase`], read and
//! checked by `migrations.rs` beside this one from [`Check::database`].

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use super::check::Check;
use super::raw::{FieldPath, Scalar};
use crate::job::Selector;
pub use crate::job::backup::{DbEngine, DbLocation, InContainer, check_table_name};
use crate::job::backup::{check_container_name, check_server_database_name, check_user_name};
pub use crate::job::verify::{CompareOp, Expect, SqlCheck};
use crate::rules::{dns_name, secret_name};

/// Which agent works on a database. One database is always worked on by
/// one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbHost {
    /// The first host of the environment (by agent name) does.
    FirstOfEnvironment,
    /// The agent with this name.
    Agent(String),
    /// The first agent (by name) carrying all these labels.
    Labels(BTreeMap<String, String>),
}

impl DbHost {
    /// The agents that may do the work (the coordinator takes the first
    /// online one by name); `env` is the environment's own selector.
    pub fn selector(&self, env: &Selector) -> Selector {
        match self {
            DbHost::FirstOfEnvironment => env.clone(),
            DbHost::Agent(name) => Selector {
                agents: vec![name.clone()],
                labels: BTreeMap::new(),
            },
            DbHost::Labels(labels) => Selector {
                agents: Vec::new(),
                labels: labels.clone(),
            },
        }
    }
}

/// A cron expression that has been checked to parse and to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule(String);

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl CronSchedule {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed expression (it parsed when this was made).
    pub fn cron(&self) -> croner::Cron {
        cron_parser()
            .parse(&self.0)
            .expect("a CronSchedule is parsed when it is made")
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

fn cron_parser() -> croner::parser::CronParser {
    // Five fields, as crontab: a sixth (seconds) or seventh (year) field
    // is far more likely a mistake than a wish.
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
}

impl FromStr for CronSchedule {
    type Err = String;

    /// Parses `text` and checks that it fires within the next eight years
    /// (`0 0 30 2 *` would never run: a schedule that silently never runs
    /// is what this refuses).
    fn from_str(text: &str) -> Result<CronSchedule, String> {
        let cron = cron_parser().parse(text).map_err(|e| {
            format!(
                "{text:?} is not a cron expression ({e}); expected five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\""
            )
        })?;
        let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
        let next = cron
            .find_next_occurrence(&now, false)
            .map_err(|_| format!("{text:?} never fires: no date matches it"))?;
        if next.year() > now.year() + 8 {
            return Err(format!("{text:?} never fires: no date matches it"));
        }
        Ok(CronSchedule(text.to_string()))
    }
}

/// An IANA time zone name known to the host's time zone database.
pub fn check_time_zone(name: &str) -> Result<(), String> {
    jiff::tz::TimeZone::get(name).map(|_| ()).map_err(|_| {
        format!(
            "{name:?} is not an IANA time zone; use a name like \"UTC\", \"Europe/Paris\" or \"America/New_York\""
        )
    })
}

/// `[databases.NAME.backup]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// When scheduled backups run (cron, in `timezone`).
    pub schedule: Option<CronSchedule>,
    /// IANA time zone of both schedules (default `UTC`).
    pub timezone: String,
    /// Backups older than this many days expire.
    pub keep_days: Option<u32>,
    /// The newest this many backups are kept whatever their age.
    pub keep_last: Option<u32>,
    /// When the newest backup is verified by a test restore (cron).
    pub verify_schedule: Option<CronSchedule>,
    /// Only these tables (`schema.table` or `table`); empty: every table.
    pub tables: Vec<String>,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy {
            schedule: None,
            timezone: "UTC".into(),
            keep_days: None,
            keep_last: None,
            verify_schedule: None,
            tables: Vec::new(),
        }
    }
}

/// `[databases.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    /// The name in the file, which is also the default database name on
    /// the server for `service`/`container` databases.
    pub name: String,
    pub engine: DbEngine,
    pub location: DbLocation,
    pub host: DbHost,
    pub backup: BackupPolicy,
    pub checks: Vec<SqlCheck>,
    /// `[databases.NAME.migrations]`.
    #[serde(default)]
    pub migrations: Option<super::migrations::Migrations>,
    /// `[databases.NAME.tenants]`.
    #[serde(default)]
    pub tenants: Option<super::migrations::Tenants>,
}

impl Database {
    /// What the coordinator keeps of this database for environment `env`:
    /// its settings and the agents that may work on it.
    pub fn target(&self, env: &super::Environment) -> DatabaseTarget {
        DatabaseTarget {
            database: self.clone(),
            selector: self.host.selector(&env.selector()),
        }
    }
}

/// A database of an (app, env) as the coordinator keeps it (from the last
/// app file it was given): the `[databases.NAME]` settings, and the agents
/// its `host` selects in that environment (the first by name does the
/// work).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseTarget {
    #[serde(flatten)]
    pub database: Database,
    pub selector: Selector,
}

impl Check {
    pub(super) fn database(
        &mut self,
        path: &FieldPath,
        name: String,
        raw: RawDatabase,
    ) -> Database {
        self.ok(
            path,
            dns_name(&name).map_err(|e| format!("database name {e}")),
        );
        let engine = raw
            .engine
            .and_then(|e| self.ok(&path.key("engine"), e.parse()))
            .unwrap_or_default();

        // The login inside a container: only for service/container.
        let in_container = |n: String| InContainer {
            name: n,
            database: raw.name.clone().unwrap_or_else(|| name.clone()),
            user: raw
                .user
                .clone()
                .unwrap_or_else(|| default_user(engine).into()),
            password_secret: raw.password_secret.clone(),
        };
        let given: Vec<(&str, DbLocation)> = [
            raw.url_secret
                .clone()
                .map(|s| ("url_secret", DbLocation::UrlSecret(s))),
            raw.service
                .clone()
                .map(|s| ("service", DbLocation::Service(in_container(s)))),
            raw.container
                .clone()
                .map(|s| ("container", DbLocation::Container(in_container(s)))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let location = match given.as_slice() {
            [] => {
                self.err(
                    path,
                    "says nowhere where the database is; give exactly one of url_secret = \"DATABASE_URL\" (a secret holding its URL), service = \"db\" (a service of this file) or container = \"NAME\" (a container on the host)",
                );
                DbLocation::UrlSecret(String::new())
            }
            [(field, location)] => {
                let p = path.key(field);
                match location {
                    DbLocation::UrlSecret(s) => {
                        self.ok(&p, secret_name(s));
                        for (f, given) in [
                            ("user", raw.user.is_some()),
                            ("password_secret", raw.password_secret.is_some()),
                            ("name", raw.name.is_some()),
                        ] {
                            if given {
                                self.err(
                                    &path.key(f),
                                    format!("is for a database in a container (service or container); with url_secret the URL in {s} says the user, password and database"),
                                );
                            }
                        }
                    }
                    DbLocation::Service(c) | DbLocation::Container(c) => {
                        if matches!(location, DbLocation::Service(_)) {
                            self.ok(
                                &p,
                                dns_name(&c.name).map_err(|e| format!("service name {e}")),
                            );
                        } else {
                            self.ok(&p, check_container_name(&c.name));
                        }
                        if raw.name.is_some() {
                            self.ok(&path.key("name"), check_server_database_name(&c.database));
                        } else {
                            self.ok(
                                path,
                                check_server_database_name(&c.database).map_err(|e| {
                                    format!("{e}; give the database's name inside the server with name = \"...\"")
                                }),
                            );
                        }
                        if raw.user.is_some() {
                            self.ok(&path.key("user"), check_user_name(&c.user));
                        }
                        if let Some(s) = &c.password_secret {
                            self.ok(&path.key("password_secret"), secret_name(s));
                        }
                    }
                }
                location.clone()
            }
            [(a, _), (b, _), ..] => {
                let fields: Vec<&str> = given.iter().map(|(f, _)| *f).collect();
                self.err(
                    &path.key(b),
                    format!(
                        "{} are all given; give exactly one of url_secret, service or container (remove all but {a})",
                        fields.join(" and ")
                    ),
                );
                given[0].1.clone()
            }
        };
        if engine == DbEngine::Mariadb && matches!(location, DbLocation::UrlSecret(_)) {
            self.err(
                &path.key("url_secret"),
                "a MariaDB database is dumped with the client tools inside its container; give service = \"db\" or container = \"NAME\" instead",
            );
        }

        let host = match raw.host {
            None => DbHost::FirstOfEnvironment,
            Some(text) => self
                .ok(&path.key("host"), parse_host(&text))
                .unwrap_or(DbHost::FirstOfEnvironment),
        };

        let backup = raw
            .backup
            .map(|b| self.backup_policy(&path.key("backup"), b))
            .unwrap_or_default();

        let checks = raw
            .checks
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| self.sql_check(&path.key("checks").index(i), c))
            .collect();

        let migrations = raw
            .migrations
            .and_then(|m| self.migrations(&path.key("migrations"), m));
        let tenants = raw
            .tenants
            .and_then(|t| self.tenants(&path.key("tenants"), t, migrations.as_ref()));

        Database {
            name,
            engine,
            location,
            host,
            backup,
            checks,
            migrations,
            tenants,
        }
    }

    /// A `service =` database names a service of this file.
    pub(super) fn database_services(
        &mut self,
        databases: &BTreeMap<String, Database>,
        services: &[super::Service],
    ) {
        for (name, db) in databases {
            if let DbLocation::Service(c) = &db.location
                && !services.iter().any(|x| x.name == c.name)
            {
                let known: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
                self.err(
                    &FieldPath::default()
                        .key("databases")
                        .key(name)
                        .key("service"),
                    format!(
                        "{:?} is not a service of this file; the services are {}",
                        c.name,
                        known.join(", ")
                    ),
                );
            }
        }
    }

    fn backup_policy(&mut self, path: &FieldPath, raw: RawBackup) -> BackupPolicy {
        let schedule = raw
            .schedule
            .and_then(|s| self.ok(&path.key("schedule"), s.parse()));
        let verify_schedule = raw
            .verify_schedule
            .and_then(|s| self.ok(&path.key("verify_schedule"), s.parse()));
        let timezone = raw.timezone.unwrap_or_else(|| "UTC".into());
        self.ok(&path.key("timezone"), check_time_zone(&timezone));
        let keep = |check: &mut Check, field: &str, n: Option<i64>| {
            n.and_then(|n| {
                check.ok(
                    &path.key(field),
                    super::check::at_least_one(n)
                        .map_err(|e| format!("{e} (leave it out to keep every backup)")),
                )
            })
        };
        let keep_days = keep(self, "keep_days", raw.keep_days);
        let keep_last = keep(self, "keep_last", raw.keep_last);
        let tables = raw.tables.unwrap_or_default();
        for (i, t) in tables.iter().enumerate() {
            self.ok(&path.key("tables").index(i), check_table_name(t));
        }
        BackupPolicy {
            schedule,
            timezone,
            keep_days,
            keep_last,
            verify_schedule,
            tables,
        }
    }

    fn sql_check(&mut self, path: &FieldPath, raw: RawCheck) -> Option<SqlCheck> {
        let sql = match raw.sql {
            Some(s) if !s.trim().is_empty() => Some(s),
            _ => {
                self.err(
                    &path.key("sql"),
                    "missing: a query returning one value, e.g. sql = \"SELECT count(*) FROM users\"",
                );
                None
            }
        };
        let expect = match raw.expect {
            Some(v) => self.ok(&path.key("expect"), Expect::parse(&v.into_text())),
            None => {
                self.err(
                    &path.key("expect"),
                    "missing: what the value must be, e.g. expect = \"> 0\" or an exact value like expect = 42",
                );
                None
            }
        };
        Some(SqlCheck {
            sql: sql?,
            expect: expect?,
        })
    }
}

/// `host`: an agent name (`"db-1"`) or a label selector (`"role=db"`,
/// `"role=db,region=eu"`).
fn parse_host(text: &str) -> Result<DbHost, String> {
    if text.contains('=') {
        let labels = crate::labels::parse_labels(text)?;
        if labels.is_empty() {
            return Err(format!("{text:?} selects no labels"));
        }
        Ok(DbHost::Labels(labels))
    } else {
        crate::identity::validate_name(text)
            .map_err(|e| format!("agent name {e}; or give a label selector like \"role=db\""))?;
        Ok(DbHost::Agent(text.to_string()))
    }
}

/// Who the client tools log in as when the file does not say.
fn default_user(engine: DbEngine) -> &'static str {
    match engine {
        DbEngine::Postgres => "postgres",
        DbEngine::Mariadb => "root",
    }
}

/// `[databases.NAME]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Database")]
pub(super) struct RawDatabase {
    engine: Option<String>,
    url_secret: Option<String>,
    service: Option<String>,
    container: Option<String>,
    /// In a container: the database's name inside the server.
    name: Option<String>,
    /// In a container: who the client tools log in as.
    user: Option<String>,
    /// In a container: the secret holding `user`'s password.
    password_secret: Option<String>,
    host: Option<String>,
    backup: Option<RawBackup>,
    #[serde(default)]
    checks: Vec<RawCheck>,
    migrations: Option<super::migrations::RawMigrations>,
    tenants: Option<super::migrations::RawTenants>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Backup")]
struct RawBackup {
    schedule: Option<String>,
    timezone: Option<String>,
    keep_days: Option<i64>,
    keep_last: Option<i64>,
    verify_schedule: Option<String>,
    tables: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Check")]
struct RawCheck {
    sql: Option<String>,
    expect: Option<Scalar>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appfile::testing::*;

    /// The test file with `body` appended (its first line is line 7).
    fn db(body: &str) -> String {
        format!("{}{body}\n", service(""))
    }

    #[test]
    fn a_full_database_parses_into_typed_values() {
        let f = ok(&db(r#"[databases.main]
url_secret = "DATABASE_URL"
host = "db-1"
[databases.main.backup]
schedule = "0 2 * * *"
timezone = "Europe/Paris"
keep_days = 30
keep_last = 7
verify_schedule = "30 3 * * 0"
tables = ["users", "billing.invoices"]
[[databases.main.checks]]
sql = 'SELECT count(*) FROM "User"'
expect = "> 0"
[[databases.main.checks]]
sql = "SELECT 42"
expect = 42
[databases.tickets]
engine = "mariadb"
service = "web"
host = "role=db,region=eu"
"#));
        let main = &f.databases["main"];
        assert_eq!(main.engine, DbEngine::Postgres);
        assert_eq!(main.location, DbLocation::UrlSecret("DATABASE_URL".into()));
        assert_eq!(main.host, DbHost::Agent("db-1".into()));
        assert_eq!(main.backup.schedule.as_ref().unwrap().as_str(), "0 2 * * *");
        assert_eq!(main.backup.timezone, "Europe/Paris");
        assert_eq!(
            (main.backup.keep_days, main.backup.keep_last),
            (Some(30), Some(7))
        );
        assert_eq!(main.backup.tables, ["users", "billing.invoices"]);
        assert_eq!(
            main.checks[0].expect,
            Expect::Compare {
                op: CompareOp::Gt,
                value: 0.0
            }
        );
        assert_eq!(main.checks[1].expect, Expect::Exact("42".into()));
        let t = &f.databases["tickets"];
        assert_eq!(t.engine, DbEngine::Mariadb);
        assert_eq!(
            t.location,
            DbLocation::Service(InContainer {
                name: "web".into(),
                database: "tickets".into(),
                user: "root".into(),
                password_secret: None,
            })
        );
        assert_eq!(
            t.host.selector(&Selector::default()).labels,
            BTreeMap::from([("region".into(), "eu".into()), ("role".into(), "db".into())])
        );
        // What the coordinator keeps reads back the same.
        let target = main.target(f.environment("staging").unwrap());
        assert_eq!(target.selector.agents, ["db-1"]);
        let text = serde_json::to_string(&target).unwrap();
        let back: DatabaseTarget = serde_json::from_str(&text).unwrap();
        assert_eq!(back, target);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["databases"]["main"]["backup"]["schedule"], "0 2 * * *");
        assert_eq!(
            json["databases"]["main"]["location"]["url_secret"],
            "DATABASE_URL"
        );
        // No backup table: defaults, the first host of the environment.
        let f = ok(&db("[databases.main]\nurl_secret = \"DATABASE_URL\""));
        let main = &f.databases["main"];
        assert_eq!(main.backup, BackupPolicy::default());
        assert_eq!(main.host, DbHost::FirstOfEnvironment);
        let env = f.environment("staging").unwrap().selector();
        assert_eq!(main.host.selector(&env), env);
    }

    #[test]
    fn where_the_database_is_must_be_said_once() {
        assert_eq!(
            problem(&db("[databases.main]\nengine = \"postgres\"")),
            "7: databases.main: says nowhere where the database is; give exactly one of url_secret = \"DATABASE_URL\" (a secret holding its URL), service = \"db\" (a service of this file) or container = \"NAME\" (a container on the host)"
        );
        assert_eq!(
            problem(&db(
                "[databases.main]\nurl_secret = \"DATABASE_URL\"\nservice = \"web\""
            )),
            "9: databases.main.service: url_secret and service are all given; give exactly one of url_secret, service or container (remove all but url_secret)"
        );
        let p = problem(&db("[databases.main]\nurl_secret = \"database-url\""));
        assert_eq!(
            p,
            format!(
                "8: databases.main.url_secret: {}",
                secret_name("database-url").unwrap_err()
            )
        );
        assert!(
            problem(&db("[databases.main]\ncontainer = \"-x\""))
                .contains("is not a container name")
        );
        assert!(
            problem(&db("[databases.main]\nengine = \"mysql\"\nservice = \"web\""))
                .starts_with("8: databases.main.engine: unknown engine \"mysql\"; expected \"postgres\" or \"mariadb\"")
        );
        assert!(
            problem(&db(
                "[databases.main]\nengine = \"mariadb\"\nurl_secret = \"URL\""
            ))
            .contains("MariaDB database is dumped with the client tools inside its container")
        );
        assert_eq!(
            problem(&db("[databases.main]\nservice = \"db\"")),
            "8: databases.main.service: \"db\" is not a service of this file; the services are web"
        );
        assert!(
            problem(&db("[databases.Main]\nservice = \"web\""))
                .starts_with("7: databases.Main: database name")
        );
        assert!(
            problem(&db("[databases.main]\nservice = \"web\"\nport = 5432"))
                .contains("unknown field `port`")
        );
    }

    #[test]
    fn a_database_in_a_container_says_how_to_log_in() {
        let f = ok(&db(r#"[databases.main]
service = "web"
name = "appdb"
user = "app"
password_secret = "DB_PASSWORD"
[databases.tickets]
engine = "mariadb"
container = "tecket-mysql"
"#));
        assert_eq!(
            f.databases["main"].location,
            DbLocation::Service(InContainer {
                name: "web".into(),
                database: "appdb".into(),
                user: "app".into(),
                password_secret: Some("DB_PASSWORD".into()),
            })
        );
        assert_eq!(f.databases["main"].location.secret_names(), ["DB_PASSWORD"]);
        let t = &f.databases["tickets"].location;
        assert_eq!(
            t.in_container()
                .map(|c| (c.name.as_str(), c.database.as_str(), c.user.as_str())),
            Some(("tecket-mysql", "tickets", "root"))
        );
        assert!(t.secret_names().is_empty());
        assert_eq!(
            problem(&db("[databases.main]\nservice = \"web\"\nuser = \"-U\"")),
            "9: databases.main.user: \"-U\" is not a user name; use letters, digits, '_', '-' and '.' (at most 63), not starting with '-'"
        );
        assert!(
            problem(&db("[databases.main]\nservice = \"web\"\nname = \"a b\""))
                .starts_with("9: databases.main.name: \"a b\" is not a database name")
        );
        assert!(
            problem(&db(
                "[databases.main]\nservice = \"web\"\npassword_secret = \"DB-PW\""
            ))
            .starts_with("9: databases.main.password_secret: ")
        );
        assert_eq!(
            problem(&db(
                "[databases.main]\nurl_secret = \"DATABASE_URL\"\nuser = \"app\""
            )),
            "9: databases.main.user: is for a database in a container (service or container); with url_secret the URL in DATABASE_URL says the user, password and database"
        );
    }

    #[test]
    fn schedules_zones_retention_and_tables_are_checked() {
        let b = |body: &str| {
            problem(&db(&format!(
                "[databases.main]\nservice = \"web\"\n[databases.main.backup]\n{body}"
            )))
        };
        let p = b("schedule = \"every night\"");
        assert!(
            p.starts_with(
                "10: databases.main.backup.schedule: \"every night\" is not a cron expression"
            ),
            "{p}"
        );
        assert!(p.contains("expected five fields"), "{p}");
        assert!(
            b("schedule = \"0 0 2 * * *\"").contains("is not a cron expression"),
            "six fields"
        );
        assert_eq!(
            b("schedule = \"0 0 30 2 *\""),
            "10: databases.main.backup.schedule: \"0 0 30 2 *\" never fires: no date matches it"
        );
        assert!(b("verify_schedule = \"61 * * * *\"").starts_with(
            "10: databases.main.backup.verify_schedule: \"61 * * * *\" is not a cron"
        ));
        assert_eq!(
            b("timezone = \"Europe/Pariss\""),
            "10: databases.main.backup.timezone: \"Europe/Pariss\" is not an IANA time zone; use a name like \"UTC\", \"Europe/Paris\" or \"America/New_York\""
        );
        assert_eq!(
            b("keep_last = 0"),
            "10: databases.main.backup.keep_last: must be at least 1, got 0 (leave it out to keep every backup)"
        );
        assert!(b("keep_days = -3").contains("must be at least 1, got -3"));
        assert!(b("tables = [\"users; DROP\"]").starts_with(
            "10: databases.main.backup.tables[0]: \"users; DROP\" is not a table name"
        ));
        assert!(b("tables = [\"a.b.c\"]").contains("is not a table name"));
    }

    #[test]
    fn checks_need_a_query_and_an_expectation() {
        let c = |body: &str| {
            problems(&db(&format!(
                "[databases.main]\nservice = \"web\"\n[[databases.main.checks]]\n{body}"
            )))
        };
        let p = c("sql = \"SELECT 1\"");
        assert_eq!(
            (p[0].line, p[0].path.as_str()),
            (9, "databases.main.checks[0].expect")
        );
        assert!(p[0].message.starts_with("missing"));
        let p = c("expect = \"> 0\"");
        assert_eq!(p[0].path, "databases.main.checks[0].sql");
        let p = c("sql = \"SELECT 1\"\nexpect = \">= many\"");
        assert_eq!(
            p[0].message,
            "\">= many\": after \">=\" comes a number, e.g. \"> 0\"; for an exact text, leave the operator out"
        );
        assert_eq!(p[0].line, 11);
    }

    #[test]
    fn expectations_compare_or_match_exactly() {
        let e = Expect::parse("> 0").unwrap();
        assert!(e.check(Some("3")).is_ok());
        assert_eq!(e.check(Some("0")).unwrap_err(), "got 0, expected > 0");
        assert_eq!(
            e.check(None).unwrap_err(),
            "got \"NULL\", not a number; expected > 0"
        );
        assert!(Expect::parse(">=10").unwrap().check(Some("10")).is_ok());
        assert!(Expect::parse("!= 0").unwrap().check(Some("0")).is_err());
        assert!(Expect::parse("<= 2.5").unwrap().check(Some("2.5")).is_ok());
        assert!(Expect::parse("= 4").unwrap().check(Some("4.0")).is_ok());
        let exact = Expect::parse("ok").unwrap();
        assert!(exact.check(Some("ok")).is_ok());
        assert_eq!(
            exact.check(Some("no")).unwrap_err(),
            "got \"no\", expected exactly \"ok\""
        );
    }
}
