//! `[environments.NAME]`: which hosts an environment runs on, its
//! protection, its parallelism, its variables and its own smoke checks.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::AppFile;
use super::check::{Check, at_least_one};
use super::raw::{self, FieldPath};
use super::smoke::RawSmoke;
use crate::job::{HttpCheck, Selector};
use crate::rules::dns_name;

/// An environment with this name always asks for confirmation before a
/// deploy, whatever its `protected` says: the one mistake worth a prompt.
pub const ALWAYS_PROTECTED: &str = "production";

/// `[environments.NAME]`: the hosts an environment runs on and what differs
/// between environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// Agent names; with `labels`, a host must match both.
    pub agents: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Ask for confirmation before deploying (see [`Environment::is_protected`]).
    pub protected: bool,
    /// Overrides `rollout.max_parallel`.
    pub max_parallel: Option<u32>,
    /// Environment variables added to every service.
    pub variables: BTreeMap<String, String>,
    /// `[[environments.NAME.smoke]]`: run after the top-level `[[smoke]]`
    /// checks, in this environment only.
    pub smoke: Vec<HttpCheck>,
}

impl Environment {
    /// The hosts this environment runs on, as a job selector. Never empty:
    /// validation refuses an environment that would select every agent.
    pub fn selector(&self) -> Selector {
        Selector {
            agents: self.agents.clone(),
            labels: self.labels.clone(),
        }
    }

    /// Whether deploying to the environment called `name` needs confirmation.
    pub fn is_protected(&self, name: &str) -> bool {
        self.protected || name == ALWAYS_PROTECTED
    }

    /// How many hosts of this environment are deployed at once.
    pub fn max_parallel(&self, app: &AppFile) -> u32 {
        self.max_parallel.unwrap_or(app.rollout.max_parallel)
    }
}

impl Check {
    pub(super) fn environment(
        &mut self,
        path: &FieldPath,
        name: &str,
        raw: RawEnvironment,
    ) -> Environment {
        self.ok(
            path,
            dns_name(name).map_err(|e| format!("environment name {e}")),
        );
        let agents = raw.agents.unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, agent) in agents.iter().enumerate() {
            let p = path.key("agents").index(i);
            self.ok(
                &p,
                crate::identity::validate_name(agent).map_err(|e| format!("agent name {e}")),
            );
            if !seen.insert(agent) {
                self.err(&p, format!("{agent:?} is listed twice"));
            }
        }
        let labels = raw.labels.unwrap_or_default();
        for (k, v) in &labels {
            let p = path.key("labels").key(k);
            self.ok(&p, crate::labels::validate_key(k));
            if v.contains([',', '=']) {
                self.err(&p, format!("label value {v:?} must not contain ',' or '='"));
            }
        }
        if agents.is_empty() && labels.is_empty() {
            self.err(
                path,
                format!(
                    "selects no hosts; give agents = [\"web-1\"] and/or labels = {{ env = \"{name}\" }}"
                ),
            );
        }
        if name == ALWAYS_PROTECTED && raw.protected == Some(false) {
            self.err(
                &path.key("protected"),
                format!(
                    "an environment named {ALWAYS_PROTECTED:?} is always protected; remove protected = false"
                ),
            );
        }
        let max_parallel = raw
            .max_parallel
            .and_then(|n| self.ok(&path.key("max_parallel"), at_least_one(n)));
        let variables = self.env_map(&path.key("variables"), raw.variables.unwrap_or_default());
        let smoke = raw
            .smoke
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.smoke(&path.key("smoke").index(i), s))
            .collect();
        Environment {
            agents,
            labels,
            protected: raw.protected.unwrap_or(false),
            max_parallel,
            variables,
            smoke,
        }
    }
}

/// `[environments.NAME]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Environment")]
pub(super) struct RawEnvironment {
    pub(super) agents: Option<Vec<String>>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) protected: Option<bool>,
    pub(super) max_parallel: Option<i64>,
    pub(super) variables: Option<BTreeMap<String, raw::Scalar>>,
    pub(super) smoke: Option<Vec<RawSmoke>>,
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;

    #[test]
    fn environments_must_select_hosts_sensibly() {
        let text = "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.staging]\nprotected = true\n";
        assert_eq!(
            problem(text),
            "4: environments.staging: selects no hosts; give agents = [\"web-1\"] and/or labels = { env = \"staging\" }"
        );
        let text = "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.staging]\nagents = [\"web-1\", \"Web 2\", \"web-1\"]\nlabels = { \"Env\" = \"a\", tier = \"a,b\" }\n";
        let paths: Vec<String> = problems(text).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "environments.staging.agents[1]",
                "environments.staging.agents[2]",
                "environments.staging.labels.Env",
                "environments.staging.labels.tier",
            ]
        );
        assert_eq!(
            problem(
                "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.production]\nlabels = { env = \"p\" }\nprotected = false\n"
            ),
            "6: environments.production.protected: an environment named \"production\" is always protected; remove protected = false"
        );
        assert!(
            problem(&service("").replace("labels = {", "max_parallel = -2\nlabels = {"))
                .starts_with("3: environments.staging.max_parallel: must be at least 1, got -2")
        );
        assert!(
            problem(&service("[rollout]\nmax_parallel = 0"))
                .starts_with("7: rollout.max_parallel: must be at least 1")
        );
    }
}
