//! `deploy`: one release of an app's services on one host, and the Docker
//! names of what it creates.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// `deploy`'s spec: one release of an app's services on one host, as the
/// coordinator resolved it from the app file. Secret values are not in
/// it: they travel only in `Assign.task.secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub app: String,
    pub env: String,
    /// The release (version) being deployed, e.g. "1.4.2".
    pub release: String,
    pub services: Vec<ServiceDeploy>,
    /// `[accessories.NAME]`, started before the services: recreated only
    /// when their own settings (`ferry.hash`) changed, never for a release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accessories: Vec<ServiceDeploy>,
    /// Replace every service's container even when one of this release
    /// with the same settings already runs (`ferry redeploy`: a crashed
    /// container, an image tag pushed again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Stopped containers of earlier releases kept per service for a fast
    /// rollback (the app file's `keep_releases`); older ones are removed.
    #[serde(default = "default_keep_releases")]
    pub keep_releases: u32,
}

/// The app file's `keep_releases` when it says nothing (and a spec from
/// before the field existed).
pub const DEFAULT_KEEP_RELEASES: u32 = 3;
/// The most containers of one service a host runs.
pub const MAX_REPLICAS: u32 = 32;
/// The most stopped releases a host keeps per service.
pub const MAX_KEEP_RELEASES: u32 = 50;

fn default_keep_releases() -> u32 {
    DEFAULT_KEEP_RELEASES
}

/// One service of a [`DeploySpec`], fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDeploy {
    pub name: String,
    pub image: String,
    pub pull: PullPolicy,
    /// Names of the secrets holding registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets injected as environment variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    pub restart: RestartPolicy,
    pub health: HealthGate,
    pub strategy: Strategy,
    /// The service as nginx serves it (`http://127.0.0.1:8081`): after a
    /// blue-green switch the agent GETs the health path through it until
    /// nginx's `X-Ferry-Upstream` header names the new container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx_url: Option<String>,
    /// Containers of the service on each host it runs on (1 to 32).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replicas: u32,
    /// The agents it runs on (its placement, resolved by the coordinator);
    /// empty: every host of the job. On any other host the deploy stops
    /// its containers instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// When to pull a service's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfMissing,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username_secret: String,
    pub password_secret: String,
}

/// A container port; `host` publishes it on a fixed host port (recreate only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub container: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// The host address `host` is published on; every address if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

/// A named volume (`<app>-<env>-<name>` on the host) mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Docker's restart policy for a service's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// How a new release replaces the old one on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old container, then start the new one (what compose does):
    /// a short outage, but never two containers at once (fixed host ports,
    /// databases).
    Recreate,
    /// Start the new container beside the old one, gate on health, switch
    /// nginx to it, then stop the old one: no outage.
    BlueGreen,
}

// The app file spells these as the spec's JSON does (`if-missing`,
// `blue-green`); `FromStr` refuses anything else, naming what is accepted.
macro_rules! keyword_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+) => {
        impl $ty {
            pub const ALL: &[$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    format!("{s:?} is not {}; expected {}", $what, super::one_of(&known))
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(PullPolicy, "a pull policy",
    Always => "always", IfMissing => "if-missing", Never => "never");
keyword_enum!(RestartPolicy, "a restart policy",
    No => "no", Always => "always", UnlessStopped => "unless-stopped", OnFailure => "on-failure");
keyword_enum!(Strategy, "a strategy", Recreate => "recreate", BlueGreen => "blue-green");

/// When a new container counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGate {
    pub check: HealthCheck,
    #[serde(with = "crate::time::serde_duration")]
    pub interval: std::time::Duration,
    #[serde(with = "crate::time::serde_duration")]
    pub timeout: std::time::Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// `GET path` on the first container port answers 2xx.
    Http { path: String },
    /// The image's own Docker HEALTHCHECK reports healthy.
    Docker,
    /// Still running, without restarts, after this long (workers).
    RunningFor(#[serde(with = "crate::time::serde_duration")] std::time::Duration),
}

/// What a deploy may take besides its health gates: image pulls, container
/// starts and stops, nginx reloads and drains.
pub const DEPLOY_TIMEOUT_BASE: Duration = Duration::from_secs(30 * 60);

impl KindSpec for DeploySpec {
    const NAME: &'static str = "deploy";
    const CLI: &'static [&'static str] = &["deploy", "rollback", "redeploy"];
    const DOC: &'static str =
        "Start a release of an app's services on the host's Docker engine, gated on health.";

    /// Every name and value by the rules the app file applies
    /// ([`crate::rules`]), so a spec that did not come from an app file
    /// (a raw `SubmitJob`) cannot reach Docker with a name the app file
    /// would refuse (`../../tmp/x`, spaces, uppercase repositories).
    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: String, r: Result<(), String>| {
            r.map_err(|e| format!("deploy spec: {field}: {e}"))
        };
        at("app".into(), rules::dns_name(&self.app))?;
        at("env".into(), rules::dns_name(&self.env))?;
        at("release".into(), rules::version(&self.release))?;
        if self.services.is_empty() {
            return Err("deploy spec: services: at least one service is required".into());
        }
        if !(1..=MAX_KEEP_RELEASES).contains(&self.keep_releases) {
            return Err(format!(
                "deploy spec: keep_releases: must be 1 to {MAX_KEEP_RELEASES}, got {}",
                self.keep_releases
            ));
        }
        let services = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ("services", i, s));
        let accessories = self
            .accessories
            .iter()
            .enumerate()
            .map(|(i, s)| ("accessories", i, s));
        for (list, i, svc) in services.chain(accessories) {
            let field = |name: &str| format!("{list}[{i}].{name}");
            at(field("name"), rules::dns_name(&svc.name))?;
            at(field("image"), rules::image(&svc.image))?;
            if svc.image.contains('{') {
                return Err(format!(
                    "deploy spec: {}: {:?} still holds a placeholder; a spec names resolved images",
                    field("image"),
                    svc.image
                ));
            }
            for k in svc.env.keys() {
                at(field(&format!("env.{k}")), rules::env_var_name(k))?;
            }
            let auth = svc
                .registry_auth
                .iter()
                .flat_map(|a| [&a.username_secret, &a.password_secret]);
            for secret in svc.secrets.iter().chain(auth) {
                at(field("secrets"), rules::secret_name(secret))?;
            }
            for v in &svc.volumes {
                at(field("volumes"), rules::dns_name(&v.name))?;
                if !v.target.starts_with('/') {
                    return Err(format!(
                        "deploy spec: {}: the path in the container must be absolute, got {:?}",
                        field("volumes"),
                        v.target
                    ));
                }
            }
            if let Some(user) = &svc.user {
                at(field("user"), rules::user(user))?;
            }
            if let Some(url) = &svc.nginx_url {
                at(field("nginx_url"), rules::nginx_url(url))?;
            }
            if !(1..=MAX_REPLICAS).contains(&svc.replicas) {
                return Err(format!(
                    "deploy spec: {}: must be 1 to {MAX_REPLICAS}, got {}",
                    field("replicas"),
                    svc.replicas
                ));
            }
            for h in &svc.hosts {
                at(field("hosts"), crate::identity::validate_name(h))?;
            }
        }
        Ok(())
    }

    fn secret_names(&self) -> Vec<String> {
        DeploySpec::secret_names(self)
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    /// [`DEPLOY_TIMEOUT_BASE`] and, per service, the longest its health
    /// gate can take.
    fn timeout(&self) -> Duration {
        DEPLOY_TIMEOUT_BASE
            + self
                .services
                .iter()
                .chain(&self.accessories)
                .map(|s| s.health.longest())
                .sum::<Duration>()
    }

    /// Two deploys of one app's environment on one host would race for
    /// its containers, network and nginx upstreams.
    fn host_lock(&self) -> Option<String> {
        Some(naming::containers_lock(&self.app, &self.env))
    }
}

impl HealthGate {
    /// The longest this gate waits before it gives up.
    pub fn longest(&self) -> Duration {
        match self.check {
            HealthCheck::RunningFor(d) => d + self.interval,
            HealthCheck::Http { .. } | HealthCheck::Docker => {
                (self.interval + self.timeout) * self.retries.max(1)
            }
        }
    }
}

impl DeploySpec {
    /// Every secret the release needs (each service's, and its registry
    /// credentials), sorted, without repeats.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for svc in self.services.iter().chain(&self.accessories) {
            names.extend(svc.secrets.iter().cloned());
            if let Some(auth) = &svc.registry_auth {
                names.push(auth.username_secret.clone());
                names.push(auth.password_secret.clone());
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

impl ServiceDeploy {
    /// Whether the service runs on the agent `host` (its placement).
    pub fn runs_on(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }

    /// The port health checks and blue-green switching use.
    pub fn http_port(&self) -> Option<u16> {
        self.ports.first().map(|p| p.container)
    }
}

/// Docker names and labels of an app's objects on a host. Every name
/// carries app and env, so environments of one app share a host safely.
pub mod naming {
    pub const LABEL_APP: &str = "ferry.app";
    pub const LABEL_ENV: &str = "ferry.env";
    pub const LABEL_SERVICE: &str = "ferry.service";
    pub const LABEL_RELEASE: &str = "ferry.release";
    /// A sha256 over everything that defines the container (image ID,
    /// command, env, secret digests, ports, volumes, user, limits, restart
    /// policy, health check): the agent's `settings_hash`.
    pub const LABEL_HASH: &str = "ferry.hash";

    /// The agent (host) that started the container: two agents sharing
    /// one Docker engine (as tests do) each see only their own. A container
    /// without it was started before the label existed and belongs to
    /// whichever agent finds it ([`is_mine`]).
    pub const LABEL_HOST: &str = "ferry.host";
    /// Which of a service's `replicas` the container is (1 to N).
    pub const LABEL_REPLICA: &str = "ferry.replica";
    /// Set (to the accessory's name) on an accessory's containers.
    pub const LABEL_ACCESSORY: &str = "ferry.accessory";

    /// How long the digest a container name ends with is.
    pub const NAME_HASH_LEN: usize = 12;
    /// Docker accepts longer names, but a name is also the container's DNS
    /// name on the environment's network: one DNS label at most.
    pub const MAX_NAME_LEN: usize = 63;

    /// Whether a container with these labels belongs to the agent `host`:
    /// its `ferry.host` names it, or it has none (started before the label
    /// existed: adopted, so an upgrade orphans nothing).
    pub fn is_mine(labels: Option<&std::collections::HashMap<String, String>>, host: &str) -> bool {
        match labels.and_then(|l| l.get(LABEL_HOST)) {
            Some(h) => h == host,
            None => true,
        }
    }

    /// One container of a service, as named on a host.
    #[derive(Debug, Clone, Copy)]
    pub struct Instance<'a> {
        pub app: &'a str,
        pub env: &'a str,
        pub service: &'a str,
        /// 1 to N; shown in the name only when the service has more than
        /// one replica (`replicas > 1`).
        pub replica: u32,
        pub replicas: u32,
        pub release: &'a str,
        /// The settings hash (`ferry.hash`).
        pub hash: &'a str,
        /// The agent's name (`ferry.host`).
        pub host: &'a str,
    }

    impl Instance<'_> {
        /// `<app>-<env>-<service>[-r<replica>]-<release>-<digest12>`,
        /// the readable part cut short to keep the whole within
        /// [`MAX_NAME_LEN`]. The digest covers every part, the settings
        /// hash and the host: the same release with new settings starts
        /// beside the old container, and two agents on one engine never
        /// collide, whatever was cut.
        pub fn container_name(&self) -> String {
            let mut h = sha2::Sha256::new();
            use sha2::Digest;
            for part in [
                self.host,
                self.app,
                self.env,
                self.service,
                &self.replica.to_string(),
                self.release,
                self.hash,
            ] {
                h.update(part.as_bytes());
                h.update(b"\0");
            }
            let digest = hex::encode(h.finalize());
            let mut prefix = container_prefix(self.app, self.env, self.service, self.release);
            if self.replicas > 1 {
                let service = format!("{}-r{}", self.service, self.replica);
                prefix = container_prefix(self.app, self.env, &service, self.release);
            }
            let room = MAX_NAME_LEN - NAME_HASH_LEN - 1;
            if prefix.len() > room {
                prefix.truncate(room);
            }
            let prefix = prefix.trim_end_matches(['-', '.', '_']);
            format!("{prefix}-{}", &digest[..NAME_HASH_LEN])
        }
    }

    /// [`Instance::container_name`] without the digest suffix (and not
    /// cut short).
    pub fn container_prefix(app: &str, env: &str, service: &str, release: &str) -> String {
        // Docker names allow [a-zA-Z0-9_.-]; versions may carry '+'.
        let release: String = release
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{app}-{env}-{service}-{release}")
    }

    /// The name of an accessory's container: `<app>-<env>-<name>-<digest12>`
    /// (no release: an accessory outlives them).
    pub fn accessory_container(app: &str, env: &str, name: &str, hash: &str, host: &str) -> String {
        Instance {
            app,
            env,
            service: name,
            replica: 1,
            replicas: 1,
            release: "",
            hash,
            host,
        }
        .container_name()
    }

    /// The host lock of every task that changes an (app, env)'s containers
    /// (deploy, restart): one key, so they never run at once on a host.
    pub fn containers_lock(app: &str, env: &str) -> String {
        format!("deploy:{app}/{env}")
    }

    pub fn network(app: &str, env: &str) -> String {
        format!("{app}-{env}")
    }

    pub fn volume(app: &str, env: &str, name: &str) -> String {
        format!("{app}-{env}-{name}")
    }

    /// The registry host an image reference names, if any.
    pub use crate::rules::registry_host;

    /// The nginx upstream include file of a blue-green service.
    pub fn upstream_file(app: &str, env: &str, service: &str) -> String {
        format!("{app}-{env}-{service}.conf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec as the example app file makes it, for the validation tests.
    fn example_spec() -> DeploySpec {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
        crate::appfile::load(&file)
            .unwrap()
            .deploy_spec("staging", "1.0.0")
            .unwrap()
    }

    #[test]
    fn a_spec_is_held_to_the_app_files_rules() {
        use crate::job::KindSpec;
        let good = example_spec();
        assert_eq!(KindSpec::validate(&good), Ok(()));
        type Spoil = fn(&mut DeploySpec);
        let cases: Vec<(Spoil, &str)> = vec![
            (
                |s| s.app = "../../../../tmp/ferrypwn".into(),
                "deploy spec: app:",
            ),
            (|s| s.env = "prod env".into(), "deploy spec: env:"),
            (|s| s.release = "1.0 beta".into(), "deploy spec: release:"),
            (
                |s| s.services[0].name = "Web".into(),
                "deploy spec: services[0].name:",
            ),
            (
                |s| s.services[0].image = "Shop/Web:1".into(),
                "deploy spec: services[0].image:",
            ),
            (
                |s| s.services[0].image = "shop:{version}".into(),
                "still holds a placeholder",
            ),
            (
                |s| {
                    s.services[0].env.insert("BAD-NAME".into(), "x".into());
                },
                "deploy spec: services[0].env.BAD-NAME:",
            ),
            (
                |s| s.services[0].secrets = vec!["A B".into()],
                "deploy spec: services[0].secrets:",
            ),
            (
                |s| s.services[0].user = Some("a b c".into()),
                "deploy spec: services[0].user:",
            ),
        ];
        for (spoil, expected) in cases {
            let mut spec = good.clone();
            spoil(&mut spec);
            let err = KindSpec::validate(&spec).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn keywords_read_as_they_serialize() {
        fn check<
            T: Serialize + std::str::FromStr<Err = String> + PartialEq + std::fmt::Debug + Copy,
        >(
            all: &[T],
            as_str: fn(T) -> &'static str,
        ) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), as_str(*v));
                assert_eq!(as_str(*v).parse::<T>().unwrap(), *v);
            }
        }
        check(PullPolicy::ALL, PullPolicy::as_str);
        check(RestartPolicy::ALL, RestartPolicy::as_str);
        check(Strategy::ALL, Strategy::as_str);
        assert_eq!(
            "sometimes".parse::<PullPolicy>().unwrap_err(),
            "\"sometimes\" is not a pull policy; expected always, if-missing or never"
        );
    }

    #[test]
    fn a_container_is_its_hosts_or_from_before_the_host_label() {
        use std::collections::HashMap;
        let with = |host: &str| HashMap::from([(naming::LABEL_HOST.to_string(), host.to_string())]);
        assert!(naming::is_mine(Some(&with("web-1")), "web-1"));
        assert!(!naming::is_mine(Some(&with("web-2")), "web-1"));
        // Started by an agent before the label existed: adopted.
        let legacy = HashMap::from([(naming::LABEL_APP.to_string(), "shop".to_string())]);
        assert!(naming::is_mine(Some(&legacy), "web-1"));
        assert!(naming::is_mine(None, "web-1"));
    }

    #[test]
    fn registry_hosts() {
        use naming::registry_host;
        assert_eq!(
            registry_host("127.0.0.1:5000/app:1"),
            Some("127.0.0.1:5000".into())
        );
        assert_eq!(
            registry_host("registry.example.com/team/app:1"),
            Some("registry.example.com".into())
        );
        assert_eq!(registry_host("localhost/app"), Some("localhost".into()));
        assert_eq!(registry_host("library/nginx:1"), None);
        assert_eq!(registry_host("app:1"), None);
    }
}
