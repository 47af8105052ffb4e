//! The app file, `ferry.toml`: what an app is made of (services, in Docker
//! Compose's vocabulary), where it runs (environments select hosts) and how
//! a rollout proceeds. The coordinator turns it into per-host deploy tasks;
//! `ferry validate` checks it before anything runs. `docs/ferry-toml.md`
//! documents every field.
//!
//! Parsing has two layers so that one run reports every problem in the file,
//! each with its line and field path, instead of stopping at the first:
//!
//! 1. a lenient serde layer (the private `raw` module, `deny_unknown_fields`)
//!    that only catches TOML syntax, unknown fields and wrong TOML types;
//! 2. a checking pass (the private `Check`) that turns raw values into the
//!    typed model, recording every rule broken on the way.
//!
//! What comes out, [`AppFile`], is typed and already valid (ports, volumes,
//! sizes, durations and policies are parsed), so code that uses it never
//! validates again. Lines come from the spans of the parsed TOML document,
//! looked up by field path.
//!
//! One private module per section, each owning its typed values, their
//! checks, their defaults and their tests; everything public is re-exported
//! here:
//!
//! - `environment`: `[environments.NAME]` ([`Environment`], [`ALWAYS_PROTECTED`]).
//! - `service`: `[services.NAME]` ([`Service`]: image, command, env, user,
//!   memory, cpus, restart, strategy), with `ports` ([`PortSpec`]) and
//!   `volumes` ([`VolumeMount`]).
//! - `healthcheck`: `[services.NAME.healthcheck]` ([`Healthcheck`]).
//! - `secrets`: secret names, `registry_auth` ([`RegistryAuth`]), and
//!   `[secrets.NAME]` rules for their values ([`SecretRule`]).
//! - `smoke`: `[[smoke]]` checks (the smoke job's [`HttpCheck`]).
//! - `databases`: `[databases.NAME]` ([`Database`]: engine, where it is,
//!   which host works on it, its backup policy and verification checks).
//! - `migrations`: `[databases.NAME.migrations]` and `.tenants`
//!   ([`Migrations`], [`Tenants`]: where the migrations are, SQL or command
//!   mode, timeouts, concurrency; the tenant query).
//! - `release`: a release of the file as a deploy job's spec
//!   ([`AppFile::deploy_spec`], [`validate_version`]).
//! - `errors`: [`Problem`], [`AppFileError`], their formatting, "did you mean".
//! - `raw`: the top of the serde layer, field paths, and the index of lines.
//! - `check`: the checking pass and the field rules sections share.
//!
//! A new section (say `accessories`) is a new module with its typed value, its
//! raw serde table, its `Check` method, its defaults and its tests; then one
//! field in [`AppFile`] and one in `RawAppFile`, and one line in
//! `Check::app_file` that calls the section's method.
//! Pull and restart policies and strategies are the deploy spec's own
//! types ([`crate::job`]), so the file and the job cannot disagree on them.

mod accessories;
mod check;
mod databases;
mod environment;
mod errors;
#[cfg(test)]
mod fuzz;
mod healthcheck;
mod migrations;
mod placement;
mod ports;
mod raw;
mod release;
mod secrets;
mod service;
mod smoke;
mod volumes;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use toml::de::DeTable;

pub use crate::job::{HttpCheck, PullPolicy, RestartPolicy, Strategy};
pub use databases::{
    BackupPolicy, CompareOp, CronSchedule, Database, DatabaseTarget, DbEngine, DbHost, DbLocation,
    Expect, SqlCheck, check_table_name, check_time_zone,
};
pub use environment::{ALWAYS_PROTECTED, Environment};
pub use errors::{AppFileError, Problem, format_problem};
pub use healthcheck::{
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT, HealthCheckKind,
    Healthcheck,
};
pub use migrations::{Migrations, MigrationsMode, Tenants};
pub use ports::PortSpec;
pub use release::validate_version;
pub use secrets::{MAX_SECRET_NAME_LEN, MAX_SECRET_RULE_LENGTH, RegistryAuth, SecretRule};
pub use service::{MIN_MEMORY_BYTES, PLACEHOLDERS, Service, parse_memory};
pub use volumes::VolumeMount;

use crate::rules::dns_name;
use check::{Check, at_least_one};
use databases::RawDatabase;
use environment::RawEnvironment;
use raw::{FieldPath, Index};
use serde::Deserialize;
use service::RawService;
use smoke::RawSmoke;

// Docker names and labels are `crate::job::naming`'s: the deploy executor
// and this file must agree on them.

/// A valid app file. Build it with [`parse`] or [`load`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppFile {
    /// The app's name: lowercase letters, digits and `-`.
    pub app: String,
    pub rollout: Rollout,
    /// By name.
    pub environments: BTreeMap<String, Environment>,
    /// In the order of the file, which is the order they are deployed in.
    pub services: Vec<Service>,
    /// `[accessories.NAME]`, in the order of the file; deployed before the
    /// services.
    pub accessories: Vec<Service>,
    /// HTTP checks run from every host after its deploy.
    pub smoke: Vec<HttpCheck>,
    /// `[secrets.NAME]`: rules for secret values, by secret name.
    pub secrets: BTreeMap<String, SecretRule>,
    /// Stopped releases each host keeps per service for a fast rollback.
    pub keep_releases: u32,
    /// By name.
    pub databases: BTreeMap<String, Database>,
}

/// `[rollout]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// How many hosts are deployed at once (default 1).
    pub max_parallel: u32,
}

impl AppFile {
    /// The environment called `name`, or an error that lists the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, AppFileError> {
        self.environments
            .get(name)
            .ok_or_else(|| AppFileError::UnknownEnvironment {
                name: name.to_string(),
                known: self.environments.keys().cloned().collect(),
            })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The accessory called `name`.
    pub fn accessory(&self, name: &str) -> Option<&Service> {
        self.accessories.iter().find(|s| s.name == name)
    }
}

/// Reads and parses the app file at `path`.
pub fn load(path: &Path) -> Result<AppFile, AppFileError> {
    let text = read(path)?;
    parse(&path.display().to_string(), &text)
}

/// The text of the app file at `path`, refused before it is read whole if
/// it is larger than [`crate::limits::MAX_APP_FILE_BYTES`].
pub fn read(path: &Path) -> Result<String, AppFileError> {
    let file = path.display().to_string();
    let io = |source| AppFileError::Read {
        file: file.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    let limit = crate::limits::MAX_APP_FILE_BYTES;
    if size > limit {
        return Err(AppFileError::TooLarge {
            file: file.clone(),
            size,
            limit,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// The top-level table as serde reads it (each section's own in its module).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppFile {
    app: Option<String>,
    rollout: Option<RawRollout>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    accessories: BTreeMap<String, RawService>,
    #[serde(default)]
    smoke: Vec<RawSmoke>,
    #[serde(default)]
    secrets: BTreeMap<String, secrets::RawSecretRule>,
    keep_releases: Option<i64>,
    #[serde(default)]
    databases: BTreeMap<String, RawDatabase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    max_parallel: Option<i64>,
}

/// `keep_releases`: 1 to [`crate::job::MAX_KEEP_RELEASES`].
fn keep_releases(n: i64) -> Result<u32, String> {
    let max = crate::job::MAX_KEEP_RELEASES;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            format!(
                "must be 1 to {max} (stopped releases kept per service for a rollback), got {n}"
            )
        })
}

/// Parses and validates an app file. `path_for_messages` names the file in
/// errors. Reports every problem found, not just the first.
pub fn parse(path_for_messages: &str, text: &str) -> Result<AppFile, AppFileError> {
    let invalid = |problems: Vec<Problem>| AppFileError::Invalid {
        file: path_for_messages.to_string(),
        problems,
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let index = Index::build(text, &doc);
    if !syntax.is_empty() {
        return Err(invalid(
            syntax.iter().map(|e| index.serde_problem(e)).collect(),
        ));
    }
    let raw: RawAppFile = serde::Deserialize::deserialize(toml::de::Deserializer::from(doc))
        .map_err(|e| invalid(vec![index.serde_problem(&e)]))?;
    let mut check = Check::default();
    let app = check.app_file(raw, &index);
    if check.problems.is_empty() {
        Ok(app)
    } else {
        let mut problems: Vec<Problem> = check
            .problems
            .into_iter()
            .map(|(path, message)| Problem {
                line: index.line_of(&path),
                path: path.to_string(),
                message,
            })
            .collect();
        problems.sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
        problems.dedup();
        Err(invalid(problems))
    }
}

impl Check {
    fn app_file(&mut self, raw: RawAppFile, index: &Index) -> AppFile {
        let root = FieldPath::default();
        let app_path = root.key("app");
        let app = match raw.app {
            Some(app) => {
                self.ok(&app_path, dns_name(&app));
                app
            }
            None => {
                self.err(&app_path, "missing: the app's name, e.g. app = \"shop\"");
                String::new()
            }
        };
        let rollout = Rollout {
            max_parallel: raw
                .rollout
                .and_then(|r| r.max_parallel)
                .and_then(|n| self.ok(&root.key("rollout").key("max_parallel"), at_least_one(n)))
                .unwrap_or(1),
        };

        let envs_path = root.key("environments");
        if raw.environments.is_empty() {
            self.err(
                &envs_path,
                "at least one environment is required, e.g. [environments.production] with labels = { env = \"production\" }",
            );
        }
        let environments: BTreeMap<String, Environment> = raw
            .environments
            .into_iter()
            .map(|(name, env)| {
                let e = self.environment(&envs_path.key(&name), &name, env);
                (name, e)
            })
            .collect();

        let services_path = root.key("services");
        if raw.services.is_empty() {
            self.err(
                &services_path,
                "at least one service is required, e.g. [services.web] with image = \"registry.example.com/shop:{version}\"",
            );
        }
        // The file's order is the deploy order; serde hands the table over
        // sorted, the spans remember.
        let mut raw_services: Vec<(String, service::RawService)> =
            raw.services.into_iter().collect();
        raw_services.sort_by_key(|(name, _)| index.offset_of(&services_path.key(name)));
        let services: Vec<Service> = raw_services
            .into_iter()
            .map(|(name, s)| self.service(&services_path.key(&name), name, s))
            .collect();
        let accessories_path = root.key("accessories");
        let mut raw_accessories: Vec<(String, service::RawService)> =
            raw.accessories.into_iter().collect();
        raw_accessories.sort_by_key(|(name, _)| index.offset_of(&accessories_path.key(name)));
        let accessories: Vec<Service> = raw_accessories
            .into_iter()
            .map(|(name, s)| self.accessory(&accessories_path.key(&name), name, s, &services))
            .collect();

        let smoke = raw
            .smoke
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.smoke(&root.key("smoke").index(i), s))
            .collect();

        let secrets = self.secret_rules(&root.key("secrets"), raw.secrets);
        let keep_releases = raw
            .keep_releases
            .and_then(|n| self.ok(&root.key("keep_releases"), keep_releases(n)))
            .unwrap_or(crate::job::DEFAULT_KEEP_RELEASES);
        let databases_path = root.key("databases");
        let databases: BTreeMap<String, Database> = raw
            .databases
            .into_iter()
            .map(|(name, d)| {
                let db = self.database(&databases_path.key(&name), name.clone(), d);
                (name, db)
            })
            .collect();

        // Accessories are containers of the environment like services: one
        // set of Docker names, volumes and secrets, and a database's
        // `service` may name one.
        let all: Vec<Service> = services.iter().chain(&accessories).cloned().collect();
        self.across(&environments, &all);
        self.database_services(&databases, &all);
        self.migration_services(&databases, &services);
        AppFile {
            app,
            rollout,
            environments,
            services,
            accessories,
            smoke,
            secrets,
            keep_releases,
            databases,
        }
    }

    /// Rules that span sections: each section's own, then Docker names.
    fn across(&mut self, environments: &BTreeMap<String, Environment>, services: &[Service]) {
        self.host_ports_across(services);
        self.docker_names_across(environments, services);
        self.secrets_across(environments, services);
    }

    /// Names join with '-', so ("a-b", "c") and ("a", "b-c") would give
    /// two services, or two environments' volumes, one Docker name.
    fn docker_names_across(
        &mut self,
        environments: &BTreeMap<String, Environment>,
        services: &[Service],
    ) {
        let envs_path = FieldPath::default().key("environments");
        let mut containers: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        let mut volumes: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        for env in environments.keys() {
            for s in services {
                let joined = format!("{env}-{}", s.name);
                match containers.get(&joined) {
                    Some((e2, s2)) if (*e2, *s2) != (env.as_str(), s.name.as_str()) => self.err(
                        &envs_path.key(env),
                        format!(
                            "environment {env:?} with service {:?} and environment {e2:?} with service {s2:?} would both name containers \"<app>-{joined}-<release>\"; rename one",
                            s.name
                        ),
                    ),
                    _ => {
                        containers.insert(joined, (env, &s.name));
                    }
                }
                for v in &s.volumes {
                    let joined = format!("{env}-{}", v.name);
                    match volumes.get(&joined) {
                        Some((e2, v2)) if *e2 != env.as_str() => self.err(
                            &envs_path.key(env),
                            format!(
                                "volume {:?} of environment {env:?} and volume {v2:?} of environment {e2:?} would both be the Docker volume \"<app>-{joined}\"; rename one",
                                v.name
                            ),
                        ),
                        _ => {
                            volumes.insert(joined, (env, &v.name));
                        }
                    }
                }
            }
        }
    }
}

/// Helpers for the tests of every section.
#[cfg(test)]
pub(crate) mod testing {
    use super::{AppFile, Problem, parse};

    /// A valid file whose `[services.web]` table ends with `extra`; lines:
    /// 1 app, 2-3 the environment, 4 the service header, 5 image, 6+ extra.
    pub(crate) fn service(extra: &str) -> String {
        format!(
            "app = \"shop\"\n[environments.staging]\nlabels = {{ env = \"staging\" }}\n[services.web]\nimage = \"shop:{{version}}\"\n{extra}\n"
        )
    }

    pub(crate) fn problems(text: &str) -> Vec<Problem> {
        match parse("ferry.toml", text) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// The one problem in `text`, as `line: path: message`.
    pub(crate) fn problem(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        format!("{}: {}: {}", p[0].line, p[0].path, p[0].message)
    }

    pub(crate) fn ok(text: &str) -> AppFile {
        parse("ferry.toml", text).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
    }

    pub(crate) const FULL: &str = r#"app = "tecket"

[rollout]
max_parallel = 1

[environments.staging]
agents = ["web-1"]
labels = { env = "staging" }
protected = false
max_parallel = 2
[environments.staging.variables]
NODE_ENV = "staging"
PORT = 1

[environments.production]
labels = { env = "production" }

[services.web]
image = "registry.example.com/tecket:{version}"
pull = "if-missing"
registry_auth = { username_secret = "REGISTRY_USER", password_secret = "REGISTRY_PASSWORD" }
command = ["node", "dist/server.js"]
env = { PORT = "3000", DEBUG = false }
secrets = ["DATABASE_URL", "JWT_SECRET"]
ports = [3000]
volumes = ["uploads:/app/uploads", "uploads2:/x:ro"]
user = "1000:1000"
memory = "512m"
cpus = 1.5
restart = "unless-stopped"
strategy = "blue-green"
[services.web.healthcheck]
http = "/health"
interval = "2s"
timeout = "2s"
retries = 15

[services.worker]
image = "registry.example.com/tecket:{version}"
command = ["node", "dist/worker.js"]
healthcheck = { running_for = "10s" }

[[smoke]]
url = "http://127.0.0.1/health"
expect_status = 200
body_contains = "ok"
timeout = "5s"
"#;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use crate::appfile::testing::*;
    use crate::appfile::*;
    use crate::job::Selector;

    #[test]
    fn the_full_example_parses_into_typed_values() {
        let f = ok(FULL);
        assert_eq!(f.app, "tecket");
        assert_eq!(f.rollout.max_parallel, 1);
        let staging = f.environment("staging").unwrap();
        assert_eq!(staging.max_parallel(&f), 2);
        assert_eq!(f.environment("production").unwrap().max_parallel(&f), 1);
        assert_eq!(
            staging.selector(),
            Selector {
                agents: vec!["web-1".into()],
                labels: BTreeMap::from([("env".into(), "staging".into())]),
            }
        );
        let web = f.service("web").unwrap();
        assert_eq!(web.pull, Some(PullPolicy::IfMissing));
        assert_eq!(
            web.registry_auth,
            Some(RegistryAuth {
                username_secret: "REGISTRY_USER".into(),
                password_secret: "REGISTRY_PASSWORD".into(),
            })
        );
        assert_eq!(
            web.command.as_deref(),
            Some(&["node".to_string(), "dist/server.js".to_string()][..])
        );
        assert_eq!(web.secrets, ["DATABASE_URL", "JWT_SECRET"]);
        assert_eq!(web.http_port(), Some(3000));
        assert_eq!(
            web.volumes[1],
            VolumeMount {
                name: "uploads2".into(),
                path: "/x".into(),
                read_only: true,
            }
        );
        assert_eq!(web.user.as_deref(), Some("1000:1000"));
        assert_eq!(web.memory, Some(512 * 1024 * 1024));
        assert_eq!(web.cpus, Some(1.5));
        assert_eq!(web.restart, RestartPolicy::UnlessStopped);
        assert_eq!(web.strategy(), Strategy::BlueGreen);
        assert_eq!(
            web.healthcheck,
            Some(Healthcheck {
                check: HealthCheckKind::Http {
                    path: "/health".into()
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(2),
                retries: 15,
            })
        );
        let worker = f.service("worker").unwrap();
        assert_eq!(worker.strategy(), Strategy::Recreate);
        assert_eq!(worker.http_port(), None);
        assert_eq!(
            worker.healthcheck.as_ref().map(|h| &h.check),
            Some(&HealthCheckKind::RunningFor(Duration::from_secs(10)))
        );
        assert_eq!(
            f.smoke,
            vec![HttpCheck {
                name: None,
                url: "http://127.0.0.1/health".into(),
                expect_status: 200,
                body_contains: Some("ok".into()),
                timeout: Duration::from_secs(5),
                retry_for: Duration::ZERO,
                interval: Duration::from_secs(1),
                max_latency: None,
            }]
        );
        // The typed model serializes in the file's own vocabulary.
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["services"][0]["volumes"][1], "uploads2:/x:ro");
        assert_eq!(json["services"][0]["strategy"], "blue-green");
        assert_eq!(
            json["services"][1]["healthcheck"]["check"]["running_for"],
            "10s"
        );
    }

    #[test]
    fn the_repository_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
        let f = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.app, "ferry-example");
        assert_eq!(
            f.environments.keys().collect::<Vec<_>>(),
            ["production", "staging"]
        );
        for env in ["staging", "production"] {
            assert_eq!(
                f.environment(env).unwrap().selector(),
                Selector {
                    agents: vec![],
                    labels: BTreeMap::from([("env".into(), env.into())]),
                }
            );
        }
        assert!(
            f.environment("production")
                .unwrap()
                .is_protected("production")
        );
        assert!(!f.environment("staging").unwrap().is_protected("staging"));
        let web = f.service("web").unwrap();
        assert_eq!(f.services.len(), 1);
        assert_eq!(
            web.image_for(&f.app, "staging", "1.2.3"),
            "ferry-example:1.2.3"
        );
        assert_eq!(web.http_port(), Some(8080));
        assert_eq!(web.strategy(), Strategy::BlueGreen);
        assert_eq!(
            web.pull_policy(&web.image_for(&f.app, "staging", "1")),
            PullPolicy::IfMissing
        );
        assert_eq!(
            web.healthcheck.as_ref().map(|h| &h.check),
            Some(&HealthCheckKind::Http {
                path: "/health".into()
            })
        );
        assert!(f.smoke.iter().any(|c| c.url.ends_with("/health")));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../../docs/ferry-toml.md");
        let example = doc
            .split("## A complete example")
            .nth(1)
            .and_then(|rest| rest.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("docs/ferry-toml.md has a complete example");
        let f = ok(example);
        assert_eq!(f.app, "tecket");
        assert_eq!(f.services.len(), 2);
    }

    #[test]
    fn keep_releases_defaults_to_three_and_is_bounded() {
        assert_eq!(ok(&service("")).keep_releases, 3);
        let f = ok(&format!("keep_releases = 2\n{}", service("")));
        assert_eq!(f.keep_releases, 2);
        assert_eq!(f.deploy_spec("staging", "1").unwrap().keep_releases, 2);
        for bad in ["0", "51", "-1"] {
            assert_eq!(
                problem(&format!("keep_releases = {bad}\n{}", service(""))),
                format!(
                    "1: keep_releases: must be 1 to 50 (stopped releases kept per service for a rollback), got {bad}"
                )
            );
        }
    }

    #[test]
    fn nginx_url_is_an_http_url_of_a_blue_green_service() {
        let f = ok(&service(
            "ports = [8080]\nnginx_url = \"http://127.0.0.1:8081\"",
        ));
        let spec = f.deploy_spec("staging", "1").unwrap();
        assert_eq!(
            spec.services[0].nginx_url.as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert!(
            problem(&service(
                "ports = [8080]\nnginx_url = \"https://shop.example.com\""
            ))
            .starts_with(
                "7: services.web.nginx_url: \"https://shop.example.com\" must be an http:// URL"
            )
        );
        assert_eq!(
            problem(&service("nginx_url = \"http://127.0.0.1:8081\"")),
            "6: services.web.nginx_url: only a blue-green service is switched through nginx; remove nginx_url or use strategy = \"blue-green\""
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = r#"app = "Shop"
[environments.staging]
max_parallel = 0
[services.web]
image = "shop:{tag}"
pull = "sometimes"
restart = "sometimes"
strategy = "sideways"
memory = "-1"
cpus = 0
ports = ["http"]
volumes = ["./data:/data"]
secrets = ["bad-name"]
[services.web.healthcheck]
retries = 0
[[smoke]]
url = "/health"
"#;
        let got: Vec<(usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.line, p.path))
            .collect();
        let want: Vec<(usize, String)> = [
            (1, "app"),
            (2, "environments.staging"),
            (3, "environments.staging.max_parallel"),
            (5, "services.web.image"),
            (6, "services.web.pull"),
            (7, "services.web.restart"),
            (8, "services.web.strategy"),
            (9, "services.web.memory"),
            (10, "services.web.cpus"),
            (11, "services.web.ports[0]"),
            (12, "services.web.volumes[0]"),
            (13, "services.web.secrets[0]"),
            (14, "services.web.healthcheck"),
            (15, "services.web.healthcheck.retries"),
            (17, "smoke[0].url"),
        ]
        .into_iter()
        .map(|(l, p)| (l, p.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_file_needs_an_app_an_environment_and_a_service() {
        let p = problems("");
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.line, p.path))
            .collect();
        assert_eq!(got, ["1: app", "1: environments", "1: services"]);
        assert!(p[0].message.starts_with("missing"), "{p:#?}");
        assert!(p[1].message.contains("at least one environment"));
        assert!(p[2].message.contains("at least one service"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            problem(&service("").replace("app = \"shop\"", "app = \"my_shop\"")),
            "1: app: \"my_shop\" contains '_'; use lowercase letters, digits and '-' (it becomes part of container, network and volume names)"
        );
        assert!(
            problem(&service("").replace("app = \"shop\"", "app = \"shop-\""))
                .contains("must not end with '-'")
        );
        let p = problem(&service("[services.Web]\nimage = \"x\""));
        assert!(p.starts_with("6: services.Web: service name"), "{p}");
        assert!(
            problem(&service("").replace("[environments.staging]", "[environments.\"a.b\"]"))
                .starts_with("2: environments.\"a.b\": environment name")
        );
    }

    #[test]
    fn services_and_environments_do_not_clash() {
        let text = service(
            "ports = [\"80:3000\"]\nstrategy = \"recreate\"\n[services.api]\nimage = \"x\"\nports = [\"80:4000\"]",
        );
        assert_eq!(
            problem(&text),
            "10: services.api.ports[0]: host port 80 is already published by services.web.ports[0]; services of an environment run on the same hosts"
        );
        let text = "app = \"x\"\n[environments.a]\nagents = [\"h\"]\n[environments.a-b]\nagents = [\"h\"]\n[services.b-c]\nimage = \"x\"\n[services.c]\nimage = \"x\"\n";
        assert!(problem(text).contains("would both name containers \"<app>-a-b-c-<release>\""));
        let text = "app = \"x\"\n[environments.a]\nagents = [\"h\"]\n[environments.a-b]\nagents = [\"h\"]\n[services.web]\nimage = \"x\"\nvolumes = [\"b-c:/x\", \"c:/y\"]\n";
        assert!(problem(text).contains("would both be the Docker volume \"<app>-a-b-c\""));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, AppFileError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", path.display()))
        );
        std::fs::write(&path, "app = 1\n").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:1: app: invalid type", path.display())),
            "{err}"
        );
        // A 60 MB "app file" is refused by its size, before it is read.
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(60 << 20).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, AppFileError::TooLarge { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("62914560 bytes; an app file may be at most 1048576 bytes"),
            "{err}"
        );
    }
}
