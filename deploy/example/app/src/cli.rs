//! The command line. Parsed by hand: three subcommands and one option do not
//! justify an argument-parsing dependency in a binary meant to stay small.

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve HTTP (the default when no subcommand is given, so the image's
    /// `ENTRYPOINT` alone starts the service).
    Serve,
    /// Apply the embedded migrations; the URL falls back to `DATABASE_URL`.
    Migrate {
        database_url: Option<String>,
    },
    /// GET `/health` on the local port and exit 0 when it answers 200.
    Healthcheck,
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("unknown option `{option}` for `{command}`")]
    UnknownOption {
        command: &'static str,
        option: String,
    },
    #[error("option `{0}` needs a value")]
    MissingValue(&'static str),
}

pub const USAGE: &str = "\
usage: ferry-example [serve]                      serve HTTP on 0.0.0.0:$PORT (default 8080)
       ferry-example migrate [--database-url URL]  apply the embedded migrations (default: $DATABASE_URL)
       ferry-example healthcheck                   exit 0 when 127.0.0.1:$PORT/health answers 200
       ferry-example --help | --version

environment: PORT, APP_VERSION, DATABASE_URL, FAIL_HEALTH=1 (make /health answer 503)";

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let Some(first) = args.next() else {
        return Ok(Command::Serve);
    };
    let command = match first.as_str() {
        "serve" => "serve",
        "migrate" => "migrate",
        "healthcheck" => "healthcheck",
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" => return Ok(Command::Version),
        _ => return Err(UsageError::UnknownCommand(first)),
    };
    let mut database_url = None;
    while let Some(arg) = args.next() {
        match (command, arg.as_str()) {
            ("migrate", "--database-url") => {
                database_url = Some(
                    args.next()
                        .ok_or(UsageError::MissingValue("--database-url"))?,
                );
            }
            ("migrate", a) if a.starts_with("--database-url=") => {
                database_url = Some(a["--database-url=".len()..].to_owned());
            }
            (_, "-h" | "--help") => return Ok(Command::Help),
            _ => {
                return Err(UsageError::UnknownOption {
                    command,
                    option: arg,
                });
            }
        }
    }
    Ok(match command {
        "serve" => Command::Serve,
        "migrate" => Command::Migrate { database_url },
        _ => Command::Healthcheck,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().copied())
    }

    #[test]
    fn no_arguments_serve() {
        assert_eq!(p(&[]), Ok(Command::Serve));
        assert_eq!(p(&["serve"]), Ok(Command::Serve));
    }

    #[test]
    fn migrate_takes_a_url_in_either_form() {
        assert_eq!(p(&["migrate"]), Ok(Command::Migrate { database_url: None }));
        let want = Ok(Command::Migrate {
            database_url: Some("postgres://u:p@h/db".into()),
        });
        assert_eq!(
            p(&["migrate", "--database-url", "postgres://u:p@h/db"]),
            want
        );
        assert_eq!(p(&["migrate", "--database-url=postgres://u:p@h/db"]), want);
        assert_eq!(
            p(&["migrate", "--database-url"]),
            Err(UsageError::MissingValue("--database-url"))
        );
    }

    #[test]
    fn options_belong_to_their_command() {
        assert_eq!(
            p(&["serve", "--database-url", "x"]),
            Err(UsageError::UnknownOption {
                command: "serve",
                option: "--database-url".into()
            })
        );
        assert_eq!(p(&["healthcheck"]), Ok(Command::Healthcheck));
        assert!(matches!(
            p(&["healthcheck", "now"]),
            Err(UsageError::UnknownOption { .. })
        ));
    }

    #[test]
    fn help_version_and_unknown_commands() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["migrate", "-h"]), Ok(Command::Help));
        assert_eq!(p(&["-V"]), Ok(Command::Version));
        assert_eq!(
            p(&["deploy"]),
            Err(UsageError::UnknownCommand("deploy".into()))
        );
    }
}
