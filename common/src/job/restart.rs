//! `restart`: the current containers of an app's services, restarted in
//! place on one host, each gated on its service's health check.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HealthGate, KindSpec};

/// `restart`'s spec: which containers to restart (those of `release` of
/// each service in `services`, on the host's engine) and the health gate
/// each must pass afterwards. The coordinator resolves it from the current
/// release's stored deploy spec (`ferry restart`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub app: String,
    pub env: String,
    /// The release whose containers are restarted (the current one).
    pub release: String,
    pub services: Vec<RestartService>,
}

/// One service of a [`RestartSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartService {
    pub name: String,
    pub health: HealthGate,
    /// nginx reaches the service through its upstream file (blue-green
    /// with a port): Docker publishes a restarted container on a new
    /// loopback port, so the file is pointed at it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream: bool,
    /// The agents the service runs on (its placement); empty: every host.
    /// Other hosts skip it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// An accessory (`ferry.accessory`): its running container is
    /// restarted whatever the release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accessory: bool,
}

/// What a restart may take besides its health gates: stops (each up to
/// the stop timeout), starts, an nginx reload.
pub const RESTART_TIMEOUT_BASE: Duration = Duration::from_secs(5 * 60);

impl KindSpec for RestartSpec {
    const NAME: &'static str = "restart";
    const CLI: &'static [&'static str] = &["restart"];
    const DOC: &'static str =
        "Restart an app's current containers in place on the host, each gated on its health check.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: String, r: Result<(), String>| {
            r.map_err(|e| format!("restart spec: {field}: {e}"))
        };
        at("app".into(), rules::dns_name(&self.app))?;
        at("env".into(), rules::dns_name(&self.env))?;
        at("release".into(), rules::version(&self.release))?;
        if self.services.is_empty() {
            return Err("restart spec: services: at least one service is required".into());
        }
        for (i, svc) in self.services.iter().enumerate() {
            at(format!("services[{i}].name"), rules::dns_name(&svc.name))?;
        }
        Ok(())
    }

    /// [`RESTART_TIMEOUT_BASE`] and, per service, the longest its health
    /// gate can take.
    fn timeout(&self) -> Duration {
        RESTART_TIMEOUT_BASE
            + self
                .services
                .iter()
                .map(|s| s.health.longest())
                .sum::<Duration>()
    }

    /// The deploy's lock: a restart and a deploy of one environment never
    /// touch its containers at once.
    fn host_lock(&self) -> Option<String> {
        Some(super::naming::containers_lock(&self.app, &self.env))
    }
}

impl RestartSpec {
    /// The restart of `services` (every one if empty) of a release's deploy
    /// spec; an unknown name is refused, naming the services there are.
    pub fn of_release(spec: &super::DeploySpec, services: &[String]) -> Result<Self, String> {
        let known: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        if let Some(unknown) = services.iter().find(|s| !known.contains(&s.as_str())) {
            return Err(format!(
                "{} {} release {} has no service {unknown:?}; it has {}",
                spec.app,
                spec.env,
                spec.release,
                known.join(", ")
            ));
        }
        Ok(RestartSpec {
            app: spec.app.clone(),
            env: spec.env.clone(),
            release: spec.release.clone(),
            services: spec
                .services
                .iter()
                .filter(|s| services.is_empty() || services.contains(&s.name))
                .map(|s| RestartService {
                    name: s.name.clone(),
                    health: s.health.clone(),
                    upstream: s.strategy == super::Strategy::BlueGreen && s.http_port().is_some(),
                    hosts: s.hosts.clone(),
                    accessory: false,
                })
                .collect(),
        })
    }

    /// The restart of the release's accessories named (every one if
    /// empty); an unknown name is refused, naming the accessories there are.
    pub fn of_accessories(spec: &super::DeploySpec, names: &[String]) -> Result<Self, String> {
        let known: Vec<&str> = spec.accessories.iter().map(|s| s.name.as_str()).collect();
        if known.is_empty() {
            return Err(format!(
                "{} {} release {} has no accessories",
                spec.app, spec.env, spec.release
            ));
        }
        if let Some(unknown) = names.iter().find(|s| !known.contains(&s.as_str())) {
            return Err(format!(
                "{} {} has no accessory {unknown:?}; it has {}",
                spec.app,
                spec.env,
                known.join(", ")
            ));
        }
        Ok(RestartSpec {
            app: spec.app.clone(),
            env: spec.env.clone(),
            release: spec.release.clone(),
            services: spec
                .accessories
                .iter()
                .filter(|s| names.is_empty() || names.contains(&s.name))
                .map(|s| RestartService {
                    name: s.name.clone(),
                    health: s.health.clone(),
                    upstream: false,
                    hosts: s.hosts.clone(),
                    accessory: true,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, KindSpec};

    fn example() -> crate::job::DeploySpec {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
        crate::appfile::load(&file)
            .unwrap()
            .deploy_spec("staging", "1.0.0")
            .unwrap()
    }

    #[test]
    fn a_restart_names_the_services_of_the_release_and_their_gates() {
        let spec = example();
        let all = RestartSpec::of_release(&spec, &[]).unwrap();
        assert_eq!(all.services.len(), spec.services.len());
        assert_eq!(all.release, "1.0.0");
        let first = &spec.services[0];
        let one = RestartSpec::of_release(&spec, std::slice::from_ref(&first.name)).unwrap();
        assert_eq!(one.services.len(), 1);
        assert_eq!(one.services[0].health, first.health);
        assert_eq!(
            one.services[0].upstream,
            first.strategy == crate::job::Strategy::BlueGreen && first.http_port().is_some()
        );
        let err = RestartSpec::of_release(&spec, &["nope".into()]).unwrap_err();
        assert!(err.contains("has no service \"nope\""), "{err}");
        assert!(err.contains(&first.name), "{err}");

        // Through the registry: its lock is the deploy's, its timeout covers the gates.
        let job = JobSpec::parse("restart", &serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(
            job.host_lock(),
            JobSpec::Deploy(spec.clone()).host_lock(),
            "a restart and a deploy of one environment never run at once"
        );
        assert_eq!(job.timeout(), RESTART_TIMEOUT_BASE + first.health.longest());
        let mut bad = one.clone();
        bad.services[0].name = "Web App".into();
        assert!(
            KindSpec::validate(&bad)
                .unwrap_err()
                .starts_with("restart spec: services[0].name:")
        );
        bad.services.clear();
        assert!(
            KindSpec::validate(&bad)
                .unwrap_err()
                .contains("at least one")
        );
    }
}
