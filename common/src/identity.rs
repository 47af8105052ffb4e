//! Who is on the other end of a connection: SPIFFE-style URI SANs
//! (`spiffe://<trust-domain>/agent/<uuid>`, `spiffe://<trust-domain>/operator/<name>`)
//! and operator roles. Roles live in the store, never in certificates, so an
//! admin can change them without reissuing anything.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The authenticated identity carried in a certificate's URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Agent(Uuid),
    Operator(String),
}

/// A URI SAN that is not a Ferry identity of this trust domain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {uri:?} is not a spiffe:// URI")]
    NotSpiffe { uri: String },
    #[error(
        "identity {uri:?} belongs to trust domain {found:?}, this coordinator serves {expected:?}"
    )]
    ForeignTrustDomain {
        uri: String,
        found: String,
        expected: String,
    },
    #[error("identity {uri:?} is neither /agent/<uuid> nor /operator/<name>")]
    UnknownKind { uri: String },
    #[error("identity {uri:?} has an invalid agent id: {reason}")]
    BadAgentId { uri: String, reason: String },
    #[error("identity {uri:?} has an invalid operator name: {reason}")]
    BadOperatorName { uri: String, reason: String },
}

impl Identity {
    /// The URI SAN for this identity in `trust_domain`.
    pub fn uri(&self, trust_domain: &str) -> String {
        match self {
            Identity::Agent(id) => format!("spiffe://{trust_domain}/agent/{id}"),
            Identity::Operator(name) => format!("spiffe://{trust_domain}/operator/{name}"),
        }
    }

    /// Parses a URI SAN, requiring it to belong to `trust_domain`.
    pub fn parse(uri: &str, trust_domain: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe { uri: uri.into() })?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain != trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                uri: uri.into(),
                found: domain.into(),
                expected: trust_domain.into(),
            });
        }
        match path.split_once('/') {
            Some(("agent", id)) => {
                Uuid::parse_str(id)
                    .map(Identity::Agent)
                    .map_err(|e| IdentityError::BadAgentId {
                        uri: uri.into(),
                        reason: e.to_string(),
                    })
            }
            Some(("operator", name)) => validate_name(name)
                .map(|()| Identity::Operator(name.to_string()))
                .map_err(|reason| IdentityError::BadOperatorName {
                    uri: uri.into(),
                    reason,
                }),
            _ => Err(IdentityError::UnknownKind { uri: uri.into() }),
        }
    }

    /// Short human form: `agent <uuid>` or `operator <name>`.
    pub fn describe(&self) -> String {
        match self {
            Identity::Agent(id) => format!("agent {id}"),
            Identity::Operator(name) => format!("operator {name}"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Checks an agent or operator name: 1 to 63 characters of lowercase ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit. Names
/// appear in URIs, file names and container labels, so they stay plain.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters long"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "{name:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; use lowercase letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// What an operator may do. Ordered: each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads state: status, agents, jobs, releases.
    Viewer,
    /// Viewer, plus runs jobs and rollouts.
    Deployer,
    /// Deployer, plus manages agents, tokens, operators and secrets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may do.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected one of viewer, deployer, admin"
            )),
        }
    }
}

impl From<Role> for ferry_proto::v1::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => ferry_proto::v1::Role::Viewer,
            Role::Deployer => ferry_proto::v1::Role::Deployer,
            Role::Admin => ferry_proto::v1::Role::Admin,
        }
    }
}

impl TryFrom<ferry_proto::v1::Role> for Role {
    type Error = String;
    fn try_from(r: ferry_proto::v1::Role) -> Result<Role, String> {
        match r {
            ferry_proto::v1::Role::Viewer => Ok(Role::Viewer),
            ferry_proto::v1::Role::Deployer => Ok(Role::Deployer),
            ferry_proto::v1::Role::Admin => Ok(Role::Admin),
            ferry_proto::v1::Role::Unspecified => {
                Err("role is required: one of viewer, deployer, admin".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        let id = Identity::Agent(Uuid::now_v7());
        assert_eq!(Identity::parse(&id.uri("ferry.test"), "ferry.test"), Ok(id));
        let op = Identity::Operator("alice".into());
        assert_eq!(Identity::parse(&op.uri("ferry.test"), "ferry.test"), Ok(op));
    }

    #[test]
    fn foreign_domain_and_garbage_are_refused() {
        let op = Identity::Operator("alice".into()).uri("other.test");
        assert!(matches!(
            Identity::parse(&op, "ferry.test"),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            Identity::parse("https://x/agent/1", "ferry.test"),
            Err(IdentityError::NotSpiffe { .. })
        ));
        assert!(matches!(
            Identity::parse("spiffe://ferry.test/agent/not-a-uuid", "ferry.test"),
            Err(IdentityError::BadAgentId { .. })
        ));
        assert!(matches!(
            Identity::parse("spiffe://ferry.test/robot/x", "ferry.test"),
            Err(IdentityError::UnknownKind { .. })
        ));
        assert!(matches!(
            Identity::parse("spiffe://ferry.test/operator/Bad Name", "ferry.test"),
            Err(IdentityError::BadOperatorName { .. })
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("web-1.eu_a").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("Web").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Deployer));
        assert!(Role::Deployer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Deployer));
        assert_eq!("deployer".parse::<Role>(), Ok(Role::Deployer));
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("viewer, deployer, admin")
        );
    }
}
