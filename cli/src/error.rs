//! The one place failures become exit codes and messages: a gRPC status
//! maps to a code here ([`From<tonic::Status>`]);
//! [`crate::render::report`] prints a failed command's error.

use ferry_common::exit;
use ferry_common::tls;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: exit::FAILED,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        CliError {
            code: exit::UNAVAILABLE,
            message: message.into(),
        }
    }

    /// Whoever read standard output stopped (`ferry jobs | head`): not a
    /// failure, and nothing more to say; the command ends quietly with 0.
    pub fn stdout_closed() -> Self {
        CliError {
            code: exit::OK,
            message: String::new(),
        }
    }

    /// A failed write to standard output: a closed pipe ends quietly, any
    /// other error fails.
    pub fn from_write(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::stdout_closed()
        } else {
            CliError::failed(format!("cannot write to standard output: {e}"))
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The one place a gRPC status becomes an exit code and a message.
impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => exit::REFUSED,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            // Refused before anything ran: bad input (an unknown
            // environment), or a precondition the request cannot meet (a
            // secret the services need is missing, a host is offline).
            Code::InvalidArgument | Code::FailedPrecondition => exit::USAGE,
            _ => exit::FAILED,
        };
        let message = if status.code() == Code::Unavailable {
            format!("coordinator unavailable: {}", tls::error_chain(&status))
        } else {
            status.message().to_string()
        };
        CliError { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let code = |c| CliError::from(tonic::Status::new(c, "x")).code;
        assert_eq!(code(tonic::Code::PermissionDenied), exit::REFUSED);
        assert_eq!(code(tonic::Code::Unauthenticated), exit::REFUSED);
        assert_eq!(code(tonic::Code::Unavailable), exit::UNAVAILABLE);
        assert_eq!(code(tonic::Code::InvalidArgument), exit::USAGE);
        // A missing secret and an offline host are both refusals before
        // anything ran: the same code.
        assert_eq!(code(tonic::Code::FailedPrecondition), exit::USAGE);
        assert_eq!(code(tonic::Code::NotFound), exit::FAILED);
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_other_write_errors_fail() {
        let closed = CliError::from_write(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(closed.code, exit::OK);
        assert_eq!(
            crate::render::report(&closed, crate::render::Output::Text),
            exit::OK
        );
        let full = CliError::from_write(std::io::Error::other("disk full"));
        assert_eq!(full.code, exit::FAILED);
        assert!(full.message.contains("disk full"));
    }
}
