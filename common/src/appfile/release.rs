//! A release of the app file: what every host of an environment runs for
//! one version, as the deploy job's spec.

pub use crate::rules::version as validate_version;
use std::time::Duration;

use super::healthcheck::{DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, HealthCheckKind};
use super::{AppFile, AppFileError};
use crate::job::DeploySpec;

impl AppFile {
    /// What every host of environment `env` runs for release `version`:
    /// services in file order, images resolved, the environment's
    /// variables merged. Secret values are not in it (only names).
    pub fn deploy_spec(&self, env: &str, version: &str) -> Result<DeploySpec, AppFileError> {
        use crate::job as j;
        let environment = self.environment(env)?;
        validate_version(version).map_err(AppFileError::BadVersion)?;
        let resolve = |svc: &super::Service| {
            let image = svc.image_for(&self.app, env, version);
            let health = match &svc.healthcheck {
                Some(h) => j::HealthGate {
                    check: match &h.check {
                        HealthCheckKind::Http { path } => {
                            j::HealthCheck::Http { path: path.clone() }
                        }
                        HealthCheckKind::Docker => j::HealthCheck::Docker,
                        HealthCheckKind::RunningFor(d) => j::HealthCheck::RunningFor(*d),
                    },
                    interval: h.interval,
                    timeout: h.timeout,
                    retries: h.retries,
                },
                // No gate: healthy once started.
                None => j::HealthGate {
                    check: j::HealthCheck::RunningFor(Duration::ZERO),
                    interval: DEFAULT_HEALTH_INTERVAL,
                    timeout: DEFAULT_HEALTH_TIMEOUT,
                    retries: 1,
                },
            };
            j::ServiceDeploy {
                name: svc.name.clone(),
                pull: svc.pull_policy(&image),
                image,
                registry_auth: svc.registry_auth.as_ref().map(|a| j::RegistryAuth {
                    username_secret: a.username_secret.clone(),
                    password_secret: a.password_secret.clone(),
                }),
                command: svc.command.clone().unwrap_or_default(),
                env: svc.resolved_env(environment),
                secrets: svc.secrets.clone(),
                ports: svc
                    .ports
                    .iter()
                    .map(|p| j::PortMapping {
                        container: p.container,
                        host: p.host_port,
                        host_ip: p.host_ip,
                    })
                    .collect(),
                volumes: svc
                    .volumes
                    .iter()
                    .map(|v| j::VolumeMount {
                        name: v.name.clone(),
                        target: v.path.clone(),
                        read_only: v.read_only,
                    })
                    .collect(),
                user: svc.user.clone(),
                memory_bytes: svc.memory.map(|m| m as i64),
                cpus: svc.cpus,
                restart: svc.restart,
                health,
                strategy: svc.strategy(),
                nginx_url: svc.nginx_url.clone(),
                replicas: svc.replicas,
                // Resolved when a rollout is planned (`AppFile::place`).
                hosts: Vec::new(),
            }
        };
        let services = self.services.iter().map(resolve).collect();
        let accessories = self.accessories.iter().map(resolve).collect();
        Ok(DeploySpec {
            app: self.app.clone(),
            env: env.to_string(),
            release: version.to_string(),
            services,
            accessories,
            force: false,
            keep_releases: self.keep_releases,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::appfile::testing::*;

    #[test]
    fn a_deploy_spec_resolves_images_variables_and_defaults() {
        use crate::job as j;
        let f = ok(FULL);
        let spec = f.deploy_spec("staging", "2.1.0").unwrap();
        assert_eq!(
            (spec.app.as_str(), spec.env.as_str()),
            ("tecket", "staging")
        );
        assert_eq!(spec.release, "2.1.0");
        let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "worker"]);
        let web = &spec.services[0];
        assert_eq!(web.image, "registry.example.com/tecket:2.1.0");
        assert_eq!(web.pull, j::PullPolicy::IfMissing);
        assert_eq!(web.strategy, j::Strategy::BlueGreen);
        // The environment's variables, then the service's env, which wins.
        assert_eq!(web.env["NODE_ENV"], "staging");
        assert_eq!(web.env["PORT"], "3000");
        assert_eq!(web.secrets, ["DATABASE_URL", "JWT_SECRET"]);
        assert_eq!(web.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(
            web.health.check,
            j::HealthCheck::Http {
                path: "/health".into()
            }
        );
        assert_eq!(web.health.retries, 15);
        let worker = &spec.services[1];
        // A registry image is pulled every release unless the file says otherwise.
        assert_eq!(worker.pull, j::PullPolicy::Always);
        assert_eq!(worker.strategy, j::Strategy::Recreate);
        assert_eq!(
            worker.health.check,
            j::HealthCheck::RunningFor(Duration::from_secs(10))
        );
        // The spec is what a deploy job carries: it must parse as one.
        let json = j::JobSpec::Deploy(spec.clone()).to_json();
        assert_eq!(
            j::JobSpec::parse("deploy", &json).unwrap(),
            j::JobSpec::Deploy(spec)
        );

        let err = f.deploy_spec("qa", "1").unwrap_err().to_string();
        assert!(err.contains("unknown environment \"qa\""), "{err}");
        for bad in ["", "-1", ".1", "1 2", "v1/2", &"9".repeat(129)] {
            let err = f.deploy_spec("staging", bad).unwrap_err().to_string();
            assert!(err.contains("Docker tag"), "{bad:?}: {err}");
        }
        assert!(f.deploy_spec("staging", "v1.2_rc-3").is_ok());
    }
}
