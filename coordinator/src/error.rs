//! The coordinator's error type and the one place it becomes a
//! `tonic::Status`. Messages are written for the operator reading them.

use std::path::PathBuf;

use ferry_common::credentials::CredentialsError;
use ferry_common::fsutil::FileError;
use ferry_common::pki::PkiError;
use ferry_common::tls::TlsError;
use tonic::Status;

use crate::config::ConfigError;
use crate::secrets_key::SecretsError;
use crate::store::StoreError;

/// Metadata key telling clients why a request was refused, for machines
/// (agents exit with a distinct code when they read `revoked`).
pub const REFUSAL_KEY: &str = "x-ferry-refusal";

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(
        "{path}: already exists; refusing to overwrite an initialised coordinator (choose another --data-dir)"
    )]
    AlreadyInitialized { path: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    InvalidArgument { what: String, reason: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {reason}")]
    PermissionDenied {
        reason: String,
        /// Machine-readable cause, sent as [`REFUSAL_KEY`].
        refusal: &'static str,
    },
    #[error("too many {what} from {addr}; try again in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        what: &'static str,
        addr: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    pub fn denied(reason: impl Into<String>) -> Self {
        CoordinatorError::PermissionDenied {
            reason: reason.into(),
            refusal: "denied",
        }
    }

    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        CoordinatorError::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(err: CoordinatorError) -> Status {
        let message = err.to_string();
        match err {
            CoordinatorError::PermissionDenied { refusal, .. } => {
                with_refusal(Status::permission_denied(message), refusal)
            }
            CoordinatorError::Unauthenticated(_) => {
                with_refusal(Status::unauthenticated(message), "unauthenticated")
            }
            CoordinatorError::InvalidArgument { .. }
            | CoordinatorError::Pki(PkiError::BadCsr(_)) => Status::invalid_argument(message),
            CoordinatorError::RateLimited { .. } => {
                with_refusal(Status::resource_exhausted(message), "rate_limited")
            }
            CoordinatorError::Store(e) => store_status(e, message),
            CoordinatorError::Secrets(e) => secrets_status(e, message),
            CoordinatorError::AlreadyInitialized { .. }
            | CoordinatorError::Config(_)
            | CoordinatorError::Pki(_)
            | CoordinatorError::Tls(_)
            | CoordinatorError::File(_)
            | CoordinatorError::Credentials(_)
            | CoordinatorError::Listen { .. }
            | CoordinatorError::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal(message)
            }
        }
    }
}

fn store_status(err: StoreError, message: String) -> Status {
    match err {
        StoreError::TokenUnknown => with_refusal(Status::unauthenticated(message), "token"),
        StoreError::TokenUsed { .. } | StoreError::TokenExpired { .. } => {
            with_refusal(Status::permission_denied(message), "token")
        }
        StoreError::AgentNameTaken { .. }
        | StoreError::OperatorExists { .. }
        | StoreError::OperatorRevoked { .. } => Status::already_exists(message),
        StoreError::AgentNotFound(_)
        | StoreError::OperatorNotFound(_)
        | StoreError::JobNotFound(_)
        | StoreError::BackupNotFound(_)
        | StoreError::ScheduleNotFound(_) => Status::not_found(message),
        StoreError::AgentAlreadyRevoked { .. } => Status::failed_precondition(message),
        // A busy lock: clients may wait and try again.
        StoreError::RolloutInProgress { .. } | StoreError::MigrationRunning { .. } => {
            Status::aborted(message)
        }
        StoreError::RolloutNotFound(_) | StoreError::IdNotFound { .. } => {
            Status::not_found(message)
        }
        StoreError::BadId { .. } | StoreError::IdAmbiguous { .. } => {
            Status::invalid_argument(message)
        }
        StoreError::Database(_) | StoreError::Migrate(_) | StoreError::BadUrl { .. } => {
            tracing::error!(error = %message, "store failure");
            Status::unavailable(message)
        }
        StoreError::Corrupt { .. } => {
            tracing::error!(error = %message, "corrupt store row");
            Status::internal(message)
        }
    }
}

fn secrets_status(err: SecretsError, message: String) -> Status {
    match err {
        SecretsError::NotFound { .. } => Status::not_found(message),
        SecretsError::Missing { .. } => Status::failed_precondition(message),
        // A configuration problem of this coordinator, not of the request.
        SecretsError::WrongKey { .. } | SecretsError::KeyMismatch { .. } => {
            tracing::error!(error = %message, "secrets key mismatch");
            Status::failed_precondition(message)
        }
        SecretsError::BadKey { .. }
        | SecretsError::KeyFile(_)
        | SecretsError::Entropy(_)
        | SecretsError::Corrupt { .. } => {
            tracing::error!(error = %message, "secrets failure");
            Status::internal(message)
        }
    }
}

fn with_refusal(mut status: Status, refusal: &'static str) -> Status {
    status.metadata_mut().insert(
        REFUSAL_KEY,
        tonic::metadata::MetadataValue::from_static(refusal),
    );
    status
}
