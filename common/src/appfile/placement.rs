//! Where a service runs, and how many of it: `hosts` / `labels`
//! (placement, within the environment's hosts) and `replicas` on
//! `[services.NAME]`. The coordinator resolves a placement into agent
//! names when it plans a rollout ([`AppFile::place`]); the deploy spec
//! carries them, and each host deploys only the services placed on it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::AppFile;
use super::check::Check;
use super::raw::FieldPath;
use crate::job::{DeploySpec, Selector};

pub use crate::job::MAX_REPLICAS;

/// A service's `hosts` and `labels`: the subset of the environment's hosts
/// it runs on (a host must match both); empty: every one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub hosts: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Placement {
    pub fn is_everywhere(&self) -> bool {
        self.hosts.is_empty() && self.labels.is_empty()
    }

    pub fn selector(&self) -> Selector {
        Selector {
            agents: self.hosts.clone(),
            labels: self.labels.clone(),
        }
    }
}

impl Check {
    /// `hosts` (agent names, each once) and `labels` (as an environment's).
    pub(super) fn placement(
        &mut self,
        path: &FieldPath,
        hosts: Option<Vec<String>>,
        labels: Option<BTreeMap<String, String>>,
    ) -> Placement {
        let hosts = hosts.unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, host) in hosts.iter().enumerate() {
            let p = path.key("hosts").index(i);
            self.ok(
                &p,
                crate::identity::validate_name(host).map_err(|e| format!("agent name {e}")),
            );
            if !seen.insert(host) {
                self.err(&p, format!("{host:?} is listed twice"));
            }
        }
        let labels = labels.unwrap_or_default();
        for (k, v) in &labels {
            let p = path.key("labels").key(k);
            self.ok(&p, crate::labels::validate_key(k));
            if v.contains([',', '=']) {
                self.err(&p, format!("label value {v:?} must not contain ',' or '='"));
            }
        }
        Placement { hosts, labels }
    }

    /// `replicas`: 1 to [`MAX_REPLICAS`] (default 1).
    pub(super) fn replicas(&mut self, path: &FieldPath, raw: Option<i64>) -> u32 {
        match raw {
            None => 1,
            Some(n) if (1..=i64::from(MAX_REPLICAS)).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    &path.key("replicas"),
                    format!("must be 1 to {MAX_REPLICAS} containers per host, got {n}"),
                );
                1
            }
        }
    }
}

impl AppFile {
    /// Resolves each service's placement among `hosts` (the environment's
    /// agents: name and labels) into the agent names it runs on, written
    /// into `spec` (a service placed everywhere keeps an empty list). A
    /// placement that selects none of them is an error naming the service.
    pub fn place(
        &self,
        spec: &mut DeploySpec,
        hosts: &[(String, BTreeMap<String, String>)],
    ) -> Result<(), String> {
        let (app, env) = (spec.app.clone(), spec.env.clone());
        let services = spec.services.iter_mut().map(|s| {
            let file = self.service(&s.name);
            (s, file)
        });
        let accessories = spec.accessories.iter_mut().map(|s| {
            let file = self.accessory(&s.name);
            (s, file)
        });
        for (svc, file) in services.chain(accessories) {
            let Some(placement) = file.map(|s| &s.placement).filter(|p| !p.is_everywhere()) else {
                svc.hosts.clear();
                continue;
            };
            let selector = placement.selector();
            let on: Vec<String> = hosts
                .iter()
                .filter(|(name, labels)| selector.matches(name, labels))
                .map(|(name, _)| name.clone())
                .collect();
            if on.is_empty() {
                let all: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "service {}: its placement ({}) selects none of the hosts of {app} {env} ({}); fix its hosts / labels or the environment",
                    svc.name,
                    selector.describe(),
                    all.join(", "),
                ));
            }
            svc.hosts = on;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;
    use std::collections::BTreeMap;

    fn hosts() -> Vec<(String, BTreeMap<String, String>)> {
        [("web-1", "web"), ("web-2", "web"), ("jobs-1", "jobs")]
            .iter()
            .map(|(n, role)| {
                (
                    n.to_string(),
                    BTreeMap::from([("role".to_string(), role.to_string())]),
                )
            })
            .collect()
    }

    #[test]
    fn a_placement_resolves_to_the_environments_hosts_it_selects() {
        let f = ok(&format!(
            "{}\nreplicas = 3\nlabels = {{ role = \"web\" }}\n[services.worker]\nimage = \"w:1\"\nhosts = [\"jobs-1\", \"elsewhere\"]\n[services.cron]\nimage = \"c:1\"\n",
            service("")
        ));
        let web = f.service("web").unwrap();
        assert_eq!(web.replicas, 3);
        let mut spec = f.deploy_spec("staging", "1.0.0").unwrap();
        assert_eq!(spec.services[0].replicas, 3);
        f.place(&mut spec, &hosts()).unwrap();
        let on: Vec<(&str, Vec<String>)> = spec
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.hosts.clone()))
            .collect();
        assert_eq!(
            on,
            [
                ("web", vec!["web-1".to_string(), "web-2".to_string()]),
                ("worker", vec!["jobs-1".to_string()]),
                ("cron", vec![]),
            ]
        );
        // None of the environment's hosts: refused, naming the service.
        let err = f.place(&mut spec, &hosts()[..2]).unwrap_err();
        assert!(
            err.starts_with("service worker: its placement (agents jobs-1, elsewhere) selects none of the hosts of shop staging (web-1, web-2)"),
            "{err}"
        );
    }

    #[test]
    fn replicas_and_placement_are_checked_with_their_lines() {
        assert_eq!(
            problem(&service("replicas = 0")),
            "6: services.web.replicas: must be 1 to 32 containers per host, got 0"
        );
        assert_eq!(
            problem(&service("replicas = 33")),
            "6: services.web.replicas: must be 1 to 32 containers per host, got 33"
        );
        let got = problems(&service("hosts = [\"a\", \"a\"]"));
        assert_eq!(got[0].path, "services.web.hosts[1]", "{got:?}");
        assert!(got[0].message.contains("listed twice"), "{got:?}");
        let got = problems(&service("ports = [\"8080:80\"]\nreplicas = 2"));
        assert!(
            got.iter()
                .any(|g| g.path == "services.web.replicas" && g.message.contains("host port 8080")),
            "{got:?}"
        );
    }
}
