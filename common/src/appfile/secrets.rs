//! Secret names (a service's `secrets`, its `registry_auth`): only names
//! are in the file; the coordinator's secret store holds the values. And
//! `[secrets.NAME]`: rules a value must meet before a rollout starts
//! ([`SecretRule`]), checked by the coordinator, which never prints a value.

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

/// The longest `min_length` a rule may ask for, and the longest pattern.
pub const MAX_SECRET_RULE_LENGTH: usize = 65_536;
const MAX_PATTERN_LEN: usize = 1_024;
/// What a compiled pattern may take: a rule is configuration, not a way to
/// make the coordinator build an automaton of any size.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// `[secrets.NAME]`: what a secret's value must be, checked on the
/// coordinator before a rollout touches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRule {
    /// At least this many characters (Unicode scalar values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// A regular expression the value must match (anywhere, unless
    /// anchored with `^...$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Set for the environment before a rollout, even if no service names
    /// it (secrets a service names are always required).
    pub required: bool,
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "a pattern of {} bytes; the longest is {MAX_PATTERN_LEN}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

impl SecretRule {
    /// Whether `value` meets the rule. The error names the secret and the
    /// rule it breaks, never the value (nor its length).
    pub fn check(&self, name: &str, value: &str) -> Result<(), String> {
        if let Some(min) = self.min_length
            && value.chars().count() < min
        {
            return Err(format!(
                "secret {name} is shorter than {min} characters (secrets.{name}.min_length in the app file); set a longer value with `ferry secret set`"
            ));
        }
        if let Some(pattern) = &self.pattern {
            // Checked when the file was parsed; a pattern that no longer
            // compiles is reported as the rule it is.
            let re = compile(pattern).map_err(|e| format!("secrets.{name}.pattern: {e}"))?;
            if !re.is_match(value) {
                return Err(format!(
                    "secret {name} does not match the pattern {pattern:?} (secrets.{name}.pattern in the app file); set a value that does with `ferry secret set`"
                ));
            }
        }
        Ok(())
    }
}

impl Check {
    /// `[secrets.NAME]` tables.
    pub(super) fn secret_rules(
        &mut self,
        path: &FieldPath,
        raw: BTreeMap<String, RawSecretRule>,
    ) -> BTreeMap<String, SecretRule> {
        let mut rules = BTreeMap::new();
        for (name, r) in raw {
            let p = path.key(&name);
            if self.ok(&p, secret_name(&name)).is_none() {
                continue;
            }
            let min_length = r.min_length.and_then(|n| {
                let ok = usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_SECRET_RULE_LENGTH).contains(n));
                if ok.is_none() {
                    self.err(
                        &p.key("min_length"),
                        format!("{n} is not a length; give 1 to {MAX_SECRET_RULE_LENGTH}"),
                    );
                }
                ok
            });
            let pattern = r.pattern.and_then(|pat| {
                self.ok(&p.key("pattern"), compile(&pat).map(|_| ()))
                    .map(|()| pat)
            });
            rules.insert(
                name,
                SecretRule {
                    min_length,
                    pattern,
                    required: r.required.unwrap_or(true),
                },
            );
        }
        rules
    }
}

/// `[secrets.NAME]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "SecretRule")]
pub(super) struct RawSecretRule {
    min_length: Option<i64>,
    pattern: Option<String>,
    required: Option<bool>,
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
    fn secret_rules_are_parsed_checked_and_never_echo_the_value() {
        let file = format!(
            "{}\n[secrets.JWT_SECRET]\nmin_length = 32\n[secrets.API_KEY]\npattern = \"^sk_[a-z0-9]+$\"\nrequired = false\n",
            service("secrets = [\"JWT_SECRET\"]")
        );
        let app = ok(&file);
        let jwt = &app.secrets["JWT_SECRET"];
        assert_eq!((jwt.min_length, jwt.required), (Some(32), true));
        let short = "s3cr3t-but-short";
        let err = jwt.check("JWT_SECRET", short).unwrap_err();
        assert_eq!(
            err,
            "secret JWT_SECRET is shorter than 32 characters (secrets.JWT_SECRET.min_length in the app file); set a longer value with `ferry secret set`"
        );
        assert!(!err.contains(short));
        assert_eq!(jwt.check("JWT_SECRET", &"é".repeat(32)), Ok(()));
        let key = &app.secrets["API_KEY"];
        assert!(!key.required);
        assert_eq!(key.check("API_KEY", "sk_abc123"), Ok(()));
        let err = key.check("API_KEY", "pk_live_XYZ").unwrap_err();
        assert!(
            err.contains("does not match the pattern \"^sk_[a-z0-9]+$\""),
            "{err}"
        );
        assert!(!err.contains("pk_live_XYZ"));

        for (rule, expected) in [
            (
                "min_length = 0",
                "secrets.X.min_length: 0 is not a length; give 1 to 65536",
            ),
            (
                "pattern = \"(\"",
                "secrets.X.pattern: not a valid regular expression",
            ),
            ("maximum = 3", "unknown field `maximum`"),
        ] {
            let text = format!("{}\n[secrets.X]\n{rule}\n", service(""));
            let got = problem(&text);
            assert!(got.contains(expected), "{rule}: {got}");
        }
        assert!(
            problem(&format!(
                "{}\n[secrets.bad-name]\nrequired = true\n",
                service("")
            ))
            .contains("secrets.bad-name: \"bad-name\" is not an environment variable name")
        );
    }

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
