//! Secret names (a service's `secrets`, its `registry_auth`): only names
//! are in the file; the coordinator's secret store holds the values.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::check::Check;
use super::raw::FieldPath;
pub use crate::rules::MAX_SECRET_NAME_LEN;
use crate::rules::secret_name;

/// Where registry credentials come from: the names of two secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryAuth {
    pub username_secret: String,
    pub password_secret: String,
}

impl Check {
    /// A secret is injected under its own name: an environment's variable
    /// of the same name could not also be.
    pub(super) fn secrets_across(
        &mut self,
        environments: &BTreeMap<String, super::Environment>,
        services: &[super::Service],
    ) {
        let envs_path = FieldPath::default().key("environments");
        for (env_name, env) in environments {
            for s in services {
                for secret in s.secrets.iter().filter(|n| env.variables.contains_key(*n)) {
                    self.err(
                        &envs_path.key(env_name).key("variables").key(secret),
                        format!(
                            "{secret:?} is also a secret of services.{}; a secret is injected as the environment variable of the same name, so it cannot also be a variable",
                            s.name
                        ),
                    );
                }
            }
        }
    }

    /// A service's `secrets`: well-formed, listed once, and not also in its
    /// `env` (a secret is injected as the variable of its own name).
    pub(super) fn service_secrets(
        &mut self,
        path: &FieldPath,
        secrets: &[String],
        env: &BTreeMap<String, String>,
    ) {
        let secrets_path = path.key("secrets");
        let mut seen = BTreeSet::new();
        for (i, secret) in secrets.iter().enumerate() {
            let p = secrets_path.index(i);
            self.ok(&p, secret_name(secret));
            if !seen.insert(secret) {
                self.err(&p, format!("{secret:?} is listed twice"));
            }
            if env.contains_key(secret) {
                self.err(
                    &path.key("env").key(secret),
                    format!(
                        "{secret:?} is also in secrets; a secret is injected as the environment variable of the same name, so remove it from env"
                    ),
                );
            }
        }
    }

    pub(super) fn registry_auth(
        &mut self,
        path: &FieldPath,
        raw: RawRegistryAuth,
    ) -> Option<RegistryAuth> {
        let mut name = |field: &str, value: Option<String>| match value {
            Some(v) => self.ok(&path.key(field), secret_name(&v)).map(|()| v),
            None => {
                self.err(
                    &path.key(field),
                    format!(
                        "missing: the name of the secret holding the registry {}",
                        field.trim_end_matches("_secret")
                    ),
                );
                None
            }
        };
        let username_secret = name("username_secret", raw.username_secret);
        let password_secret = name("password_secret", raw.password_secret);
        Some(RegistryAuth {
            username_secret: username_secret?,
            password_secret: password_secret?,
        })
    }
}

/// `registry_auth` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "RegistryAuth")]
pub(super) struct RawRegistryAuth {
    pub(super) username_secret: Option<String>,
    pub(super) password_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;
    use crate::appfile::*;

    #[test]
    fn env_secrets_and_variables_do_not_overlap() {
        assert_eq!(
            problem(&service(
                "env = { JWT_SECRET = \"x\" }\nsecrets = [\"JWT_SECRET\"]"
            )),
            "6: services.web.env.JWT_SECRET: \"JWT_SECRET\" is also in secrets; a secret is injected as the environment variable of the same name, so remove it from env"
        );
        assert!(
            problem(&service("secrets = [\"A\", \"A\"]"))
                .starts_with("6: services.web.secrets[1]: \"A\" is listed twice")
        );
        assert!(
            problem(&service("env = { \"1X\" = \"a\" }"))
                .contains("is not an environment variable name")
        );
        assert!(
            problem(&service("secrets = [\"db-url\"]"))
                .contains("is not an environment variable name")
        );
        let long = "S".repeat(MAX_SECRET_NAME_LEN + 1);
        assert!(
            problem(&service(&format!("secrets = [{long:?}]"))).contains("the longest secret name")
        );
        assert!(
            ok(&service("secrets = [\"lower_case_ok\", \"_X1\"]")).services[0]
                .secrets
                .len()
                == 2
        );
        let text = service("secrets = [\"DB\"]").replace(
            "labels = { env = \"staging\" }",
            "labels = { env = \"staging\" }\nvariables = { DB = \"x\" }",
        );
        assert_eq!(
            problem(&text),
            "4: environments.staging.variables.DB: \"DB\" is also a secret of services.web; a secret is injected as the environment variable of the same name, so it cannot also be a variable"
        );
        assert_eq!(
            problem(&service("registry_auth = { username_secret = \"U\" }")),
            "6: services.web.registry_auth.password_secret: missing: the name of the secret holding the registry password"
        );
    }
}
