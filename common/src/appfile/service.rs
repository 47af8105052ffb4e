//! `[services.NAME]`: one container per host, its image and how it runs.
//! Ports and volumes have their own modules.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::collections::BTreeMap;

use serde::Serialize;

use super::check::Check;
use super::environment::Environment;
use super::healthcheck::{Healthcheck, RawHealthcheck};
use super::placement::Placement;
use super::ports::PortSpec;
use super::raw::{self, FieldPath};
use super::secrets::{RawRegistryAuth, RegistryAuth};
use super::volumes::VolumeMount;
use crate::job::{PullPolicy, RestartPolicy, Strategy};
use crate::rules::{self, dns_name};

pub use crate::rules::PLACEHOLDERS;

/// Docker refuses memory limits below 6 MiB; saying so here beats a failed
/// container start on every host.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// `[services.NAME]`: one container per host, replaced on every release.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    /// May hold the [`PLACEHOLDERS`]; see [`Service::image_for`].
    pub image: String,
    /// As written; see [`Service::pull_policy`] for the default.
    pub pull: Option<PullPolicy>,
    pub registry_auth: Option<RegistryAuth>,
    /// Replaces the image's command.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Names of secrets, injected as environment variables of the same name.
    pub secrets: Vec<String>,
    /// The first one is the HTTP port (health checks, blue-green).
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeMount>,
    pub user: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub restart: RestartPolicy,
    /// As written; see [`Service::strategy`] for the default.
    pub strategy: Option<Strategy>,
    pub healthcheck: Option<Healthcheck>,
    /// Blue-green: the service as this host's nginx serves it, used to
    /// confirm that a switch reached the new container.
    pub nginx_url: Option<String>,
    /// `hosts` / `labels`: which of the environment's hosts it runs on.
    pub placement: Placement,
    /// Containers per host (1 to [`crate::job::MAX_REPLICAS`]).
    pub replicas: u32,
}

impl Service {
    /// The image to run for release `version` of `app` in `env`.
    pub fn image_for(&self, app: &str, env: &str, version: &str) -> String {
        self.image
            .replace("{version}", version)
            .replace("{app}", app)
            .replace("{env}", env)
    }

    /// The container port health checks and blue-green traffic use.
    pub fn http_port(&self) -> Option<u16> {
        self.ports.first().map(|p| p.container)
    }

    /// The strategy as written, or the default: blue-green for a service
    /// with a port that publishes no fixed host port and mounts no volume,
    /// recreate otherwise. Two containers cannot publish the same host port,
    /// and two containers writing one volume at once (a database) may
    /// corrupt it, so those only get blue-green when the file asks for it
    /// (and, for host ports, never).
    pub fn strategy(&self) -> Strategy {
        self.strategy.unwrap_or(
            if !self.ports.is_empty()
                && self.ports.iter().all(|p| p.host_port.is_none())
                && self.volumes.is_empty()
            {
                Strategy::BlueGreen
            } else {
                Strategy::Recreate
            },
        )
    }

    /// The pull policy for `image` (resolved by [`Service::image_for`]): as
    /// written, else `always` when the image names a registry host (a
    /// pushed tag may move) and `if-missing` otherwise (a local build, or a
    /// Docker Hub image that Ferry should not re-download every release).
    pub fn pull_policy(&self, image: &str) -> PullPolicy {
        self.pull
            .unwrap_or(if rules::registry_host(image).is_some() {
                PullPolicy::Always
            } else {
                PullPolicy::IfMissing
            })
    }

    /// The environment variables of this service in `environment`: the
    /// environment's `variables`, then the service's `env`, which wins.
    /// Secrets are not included: only their names are known here.
    pub fn resolved_env(&self, environment: &Environment) -> BTreeMap<String, String> {
        let mut out = environment.variables.clone();
        out.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// Parses a memory size: bytes, or a number with a `k`, `m` or `g` suffix
/// (binary units, any case, an optional trailing `b`), like Docker.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a size; expected bytes or something like \"512m\" or \"2g\"");
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

impl Check {
    pub(super) fn service(&mut self, path: &FieldPath, name: String, raw: RawService) -> Service {
        self.ok(
            path,
            dns_name(&name).map_err(|e| format!("service name {e}")),
        );
        let image = match raw.image {
            Some(image) => {
                self.ok(&path.key("image"), rules::image(&image));
                image
            }
            None => {
                self.err(
                    &path.key("image"),
                    "missing: the image to run, e.g. image = \"registry.example.com/shop:{version}\"",
                );
                String::new()
            }
        };
        let pull = raw.pull.and_then(|p| self.ok(&path.key("pull"), p.parse()));
        let registry_auth = raw
            .registry_auth
            .and_then(|a| self.registry_auth(&path.key("registry_auth"), a));
        let command = raw
            .command
            .and_then(|c| self.command(&path.key("command"), c));
        let env = self.env_map(&path.key("env"), raw.env);

        self.service_secrets(path, &raw.secrets, &env);

        let ports = self.ports(&path.key("ports"), raw.ports);
        let volumes = self.volumes(&path.key("volumes"), raw.volumes);
        let user = raw.user.inspect(|u| {
            self.ok(&path.key("user"), rules::user(u));
        });
        let memory = raw
            .memory
            .and_then(|m| self.ok(&path.key("memory"), memory_value(m)));
        if let Some(cpus) = raw.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            self.err(&path.key("cpus"), format!("must be above 0, got {cpus}"));
        }
        let restart = raw
            .restart
            .and_then(|r| self.ok(&path.key("restart"), r.parse()))
            .unwrap_or(RestartPolicy::UnlessStopped);
        let strategy = raw
            .strategy
            .and_then(|s| self.ok(&path.key("strategy"), s.parse()));
        let healthcheck = raw
            .healthcheck
            .and_then(|h| self.healthcheck(&path.key("healthcheck"), h, &ports));

        let service = Service {
            name,
            image,
            pull,
            registry_auth,
            command,
            env,
            secrets: raw.secrets,
            ports,
            volumes,
            user,
            memory,
            cpus: raw.cpus,
            restart,
            strategy,
            healthcheck,
            nginx_url: raw.nginx_url,
            placement: self.placement(path, raw.hosts, raw.labels),
            replicas: self.replicas(path, raw.replicas),
        };
        if service.replicas > 1
            && let Some(host) = service.ports.iter().find_map(|p| p.host_port)
        {
            self.err(
                &path.key("replicas"),
                format!(
                    "{} replicas on one host cannot all publish host port {host}; publish no host port (nginx reaches each replica on its own loopback port) or use replicas = 1",
                    service.replicas
                ),
            );
        }
        if let Some(url) = &service.nginx_url {
            let p = path.key("nginx_url");
            if self.ok(&p, rules::nginx_url(url)).is_some()
                && service.strategy() != Strategy::BlueGreen
            {
                self.err(
                    &p,
                    "only a blue-green service is switched through nginx; remove nginx_url or use strategy = \"blue-green\"",
                );
            }
        }
        if service.strategy == Some(Strategy::BlueGreen) {
            let p = path.key("strategy");
            if service.ports.is_empty() {
                self.err(
                    &p,
                    "blue-green needs a port to send traffic to; add ports = [3000] or use strategy = \"recreate\"",
                );
            }
            for (i, port) in service.ports.iter().enumerate() {
                if let Some(host) = port.host_port {
                    self.err(
                        &p,
                        format!(
                            "blue-green runs the new container beside the old one, and both cannot publish host port {host} (ports[{i}] = {:?}); use strategy = \"recreate\" or publish no host port",
                            port.to_string()
                        ),
                    );
                }
            }
        }
        service
    }

    pub(super) fn command(&mut self, path: &FieldPath, raw: RawCommand) -> Option<Vec<String>> {
        match raw {
            RawCommand::Line(line) => {
                self.err(
                    path,
                    format!(
                        "must be an array of arguments, e.g. [\"node\", \"dist/server.js\"]; to run a command line through a shell write [\"sh\", \"-c\", {line:?}]"
                    ),
                );
                None
            }
            RawCommand::Args(args) if args.first().is_none_or(|a| a.is_empty()) => {
                self.err(path, "must name a program: the first argument is empty");
                None
            }
            RawCommand::Args(args) => Some(args),
        }
    }
}

fn memory_value(raw: raw::Scalar) -> Result<u64, String> {
    let bytes = match raw {
        raw::Scalar::Str(s) => parse_memory(&s)?,
        raw::Scalar::Int(n) => u64::try_from(n).map_err(|_| format!("must be above 0, got {n}"))?,
        raw::Scalar::Bool(b) => {
            return Err(format!(
                "{b} is not a size; expected bytes or something like \"512m\""
            ));
        }
    };
    if bytes == 0 {
        return Err("must be above 0".into());
    }
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "{bytes} bytes is below Docker's minimum memory limit of 6m"
        ));
    }
    Ok(bytes)
}

/// `[services.NAME]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Service")]
pub(super) struct RawService {
    pub(super) image: Option<String>,
    pub(super) pull: Option<String>,
    pub(super) registry_auth: Option<RawRegistryAuth>,
    pub(super) command: Option<RawCommand>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, raw::Scalar>,
    #[serde(default)]
    pub(super) secrets: Vec<String>,
    #[serde(default)]
    pub(super) ports: Vec<raw::Scalar>,
    #[serde(default)]
    pub(super) volumes: Vec<String>,
    pub(super) user: Option<String>,
    pub(super) memory: Option<raw::Scalar>,
    pub(super) cpus: Option<f64>,
    pub(super) restart: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) healthcheck: Option<RawHealthcheck>,
    pub(super) nginx_url: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) replicas: Option<i64>,
}

/// `command`: an array of arguments, or a command line (refused by the
/// checking pass with the array to write instead).
#[derive(Debug)]
pub(super) enum RawCommand {
    Line(String),
    Args(Vec<String>),
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
                Ok(RawCommand::Line(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut args = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    args.push(a);
                }
                Ok(RawCommand::Args(args))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use crate::job::naming;

    use crate::appfile::testing::*;
    use crate::appfile::*;

    #[test]
    fn strategies_fit_the_ports() {
        assert_eq!(
            problem(&service(
                "ports = [\"8080:3000\"]\nstrategy = \"blue-green\""
            )),
            "7: services.web.strategy: blue-green runs the new container beside the old one, and both cannot publish host port 8080 (ports[0] = \"8080:3000\"); use strategy = \"recreate\" or publish no host port"
        );
        assert_eq!(
            problem(&service("strategy = \"blue-green\"")),
            "6: services.web.strategy: blue-green needs a port to send traffic to; add ports = [3000] or use strategy = \"recreate\""
        );
        assert_eq!(
            problem(&service("strategy = \"sideways\"")),
            "6: services.web.strategy: \"sideways\" is not a strategy; expected recreate or blue-green"
        );
        // Defaults: blue-green only for a port with no host port and no volume.
        let strategy = |extra: &str| ok(&service(extra)).services[0].strategy();
        assert_eq!(strategy("ports = [3000]"), Strategy::BlueGreen);
        assert_eq!(strategy(""), Strategy::Recreate);
        assert_eq!(strategy("ports = [\"5432:5432\"]"), Strategy::Recreate);
        assert_eq!(
            strategy("ports = [5432]\nvolumes = [\"pg:/var/lib/postgresql/data\"]"),
            Strategy::Recreate
        );
        assert_eq!(
            strategy("ports = [3000]\nvolumes = [\"up:/up\"]\nstrategy = \"blue-green\""),
            Strategy::BlueGreen
        );
    }

    #[test]
    fn policies_sizes_and_limits_are_checked() {
        assert_eq!(
            problem(&service("pull = \"sometimes\"")),
            "6: services.web.pull: \"sometimes\" is not a pull policy; expected always, if-missing or never"
        );
        assert_eq!(
            problem(&service("restart = \"on-failure:3\"")),
            "6: services.web.restart: \"on-failure:3\" is not a restart policy; expected no, always, unless-stopped or on-failure"
        );
        assert_eq!(
            ok(&service("")).services[0].restart,
            RestartPolicy::UnlessStopped
        );
        assert_eq!(
            problem(&service("cpus = -0.5")),
            "6: services.web.cpus: must be above 0, got -0.5"
        );
        assert_eq!(
            problem(&service("memory = 0")),
            "6: services.web.memory: must be above 0"
        );
        assert!(problem(&service("memory = \"lots\"")).contains("is not a size"));
        assert!(problem(&service("memory = \"1k\"")).contains("minimum memory limit of 6m"));
        assert_eq!(
            ok(&service("memory = \"4G\"")).services[0].memory,
            Some(4 << 30)
        );
        assert_eq!(
            ok(&service("memory = 8388608")).services[0].memory,
            Some(8 << 20)
        );
        assert_eq!(
            problem(&service("user = \"a:b:c\"")),
            "6: services.web.user: \"a:b:c\" is not a user; expected \"name\", \"uid\", \"name:group\" or \"uid:gid\""
        );
    }

    #[test]
    fn parse_memory_units() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("512MB"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("2048"), Ok(2048));
        assert_eq!(parse_memory("64k"), Ok(64 << 10));
        for bad in ["", "m", "1t", "-1m", "1.2.3m", "1 0m"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_allow_only_known_placeholders() {
        let p = |image: &str| problem(&service("").replace("shop:{version}", image));
        assert_eq!(p(""), "5: services.web.image: must not be empty");
        assert_eq!(
            p("shop:{tag}"),
            "5: services.web.image: unknown placeholder \"{tag}\" in \"shop:{tag}\"; use {version}, {app} or {env}"
        );
        assert!(p("shop:{version").contains("'{' without its '}'"));
        assert!(p("shop:version}").contains("'}' without its '{'"));
        assert!(p("shop: 1").contains("whitespace"));
        assert!(p("ghcr.io/Acme/shop:1").contains("must be lowercase"));
        assert!(
            problem("app = \"x\"\n[environments.a]\nagents = [\"a\"]\n[services.web]\n")
                .starts_with("4: services.web.image: missing")
        );
        let f = ok(&service("").replace("shop:{version}", "localhost:5000/{app}-{env}:{version}"));
        assert_eq!(
            f.services[0].image_for("shop", "staging", "v2"),
            "localhost:5000/shop-staging:v2"
        );
    }

    #[test]
    fn commands_are_arrays() {
        assert_eq!(
            problem(&service(
                "command = \"npx prisma migrate deploy && npm start\""
            )),
            "6: services.web.command: must be an array of arguments, e.g. [\"node\", \"dist/server.js\"]; to run a command line through a shell write [\"sh\", \"-c\", \"npx prisma migrate deploy && npm start\"]"
        );
        assert!(problem(&service("command = []")).contains("must name a program"));
    }

    #[test]
    fn helpers_resolve_defaults() {
        let f = ok(FULL);
        let web = f.service("web").unwrap();
        let staging = f.environment("staging").unwrap();
        let env = web.resolved_env(staging);
        // The service's env wins over the environment's variables.
        assert_eq!(env.get("PORT").map(String::as_str), Some("3000"));
        assert_eq!(env.get("NODE_ENV").map(String::as_str), Some("staging"));
        assert_eq!(env.get("DEBUG").map(String::as_str), Some("false"));
        assert!(!env.contains_key("DATABASE_URL"));
        assert!(!staging.is_protected("staging"));
        assert!(
            f.environment("production")
                .unwrap()
                .is_protected("production")
        );
        let worker = f.service("worker").unwrap();
        assert_eq!(
            worker.pull_policy("registry.example.com/tecket:1"),
            PullPolicy::Always
        );
        assert_eq!(worker.pull_policy("tecket:1"), PullPolicy::IfMissing);
        assert_eq!(
            web.pull_policy("registry.example.com/tecket:1"),
            PullPolicy::IfMissing
        );
        assert!(naming::registry_host("localhost/x").is_some());
        assert!(naming::registry_host("host:5000/x").is_some());
        assert!(naming::registry_host("minio/minio:latest").is_none());
        assert!(naming::registry_host("postgres:16").is_none());
        assert_eq!(
            web.image_for("tecket", "staging", "1.4.0"),
            "registry.example.com/tecket:1.4.0"
        );
        // Services keep the file's order, not sorted: it is the deploy order.
        let f = ok(&service(
            "[services.api]\nimage = \"x\"\n[services.aaa]\nimage = \"y\"",
        ));
        let names: Vec<&str> = f.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api", "aaa"]);
        let f = ok(
            "app = \"x\"\nservices = { zz = { image = \"a\" }, aa = { image = \"b\" } }\n[environments.a]\nagents = [\"h\"]\n",
        );
        let names: Vec<&str> = f.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zz", "aa"]);
        let one = naming::Instance {
            app: "shop",
            env: "prod",
            service: "web",
            replica: 1,
            replicas: 1,
            release: "7+b",
            hash: "0123456789abcdef",
            host: "web-1",
        };
        let name = one.container_name();
        assert!(name.starts_with("shop-prod-web-7-b-"), "{name}");
        assert_eq!(
            name.len(),
            "shop-prod-web-7-b-".len() + naming::NAME_HASH_LEN
        );
        // Another host on the same engine, another replica, other
        // settings: another name.
        let other_host = naming::Instance {
            host: "web-2",
            ..one
        }
        .container_name();
        assert_ne!(other_host, name);
        let third = naming::Instance {
            replica: 3,
            replicas: 4,
            ..one
        }
        .container_name();
        assert!(third.starts_with("shop-prod-web-r3-7-b-"), "{third}");
        assert_ne!(
            naming::Instance { hash: "ff", ..one }.container_name(),
            name
        );
        // Long names are cut to one DNS label, and stay distinct.
        let long = "a".repeat(40);
        let a = naming::Instance {
            app: &long,
            service: &long,
            ..one
        }
        .container_name();
        let b = naming::Instance {
            app: &long,
            service: &long,
            replica: 2,
            replicas: 2,
            ..one
        }
        .container_name();
        assert!(
            a.len() <= naming::MAX_NAME_LEN && b.len() <= naming::MAX_NAME_LEN,
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert!(!a.contains("--"), "{a}");
        assert_eq!(
            naming::accessory_container("shop", "prod", "db", "abc", "web-1").len(),
            "shop-prod-db-".len() + naming::NAME_HASH_LEN
        );
        assert_eq!(naming::network("shop", "prod"), "shop-prod");
        assert_eq!(
            naming::volume("shop", "prod", "uploads"),
            "shop-prod-uploads"
        );
    }
}
