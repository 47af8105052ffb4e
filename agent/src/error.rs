//! The agent's error type; [`AgentError::exit_code`] is the one place errors
//! become process exit codes.

use std::path::PathBuf;

use ferry_common::exit;
use ferry_common::fsutil::FileError;
use ferry_common::pki::PkiError;
use ferry_common::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Usage { what: String, reason: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "{dir} already holds an enrolled agent ({name}, {id}); use another --state-dir, or remove it to enroll again"
    )]
    AlreadyEnrolled {
        dir: PathBuf,
        name: String,
        id: String,
    },
    #[error(
        "refusing to enroll: the coordinator's CA is {presented}, but --ca-pin is {expected}; check the pin printed by `ferry token create` and that --coordinator is the right host"
    )]
    PinMismatch { presented: String, expected: String },
    #[error("the coordinator refused enrollment: {0}")]
    EnrollRefused(String),
    #[error(
        "this agent has been revoked by the coordinator ({0}); enroll the host again with a new join token"
    )]
    Revoked(String),
    #[error("the coordinator refuses this agent's credentials: {0}")]
    CredentialsRefused(String),
    #[error("cannot reach the coordinator: {0}")]
    Unreachable(String),
}

impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Usage { .. } | AgentError::Config { .. } => exit::USAGE,
            AgentError::PinMismatch { .. }
            | AgentError::EnrollRefused(_)
            | AgentError::Revoked(_)
            | AgentError::CredentialsRefused(_) => exit::REFUSED,
            AgentError::Unreachable(_) => exit::UNAVAILABLE,
            AgentError::File(_)
            | AgentError::Pki(_)
            | AgentError::Tls(_)
            | AgentError::AlreadyEnrolled { .. } => exit::FAILED,
        }
    }
}
