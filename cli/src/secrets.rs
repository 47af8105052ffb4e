//! Secret commands: `ferry secret set|ls|rm`.
//!
//! Values travel one way: from standard input to the coordinator. They are
//! never arguments (arguments show in `ps` and shell history) and no
//! command prints one.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use ferry_common::identity::validate_name;
use ferry_common::secret::{MAX_VALUE_BYTES, validate_secret_name, validate_secret_value};
use ferry_common::time::rfc3339_ms;
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::render::{Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage secrets of an app's environments (values are write-only).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Set a secret, reading its value from standard input (one trailing
    /// newline is dropped), e.g. `printf %s "$TOKEN" | ferry secret set --app shop --env production API_TOKEN`.
    Set(Place),
    /// List an app's secrets: names and who set them when, never values.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Delete a secret.
    #[command(alias = "delete")]
    Rm(Place),
}

/// One secret: app, environment and name.
#[derive(Debug, clap::Args)]
pub struct Place {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Environment variable name the deploy sets, e.g. DATABASE_URL.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment (default: every one).
    #[arg(long)]
    pub env: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Secret { command } = command;
    match command {
        SecretCommand::Set(place) => set(place, ctx).await.map(View::Set),
        SecretCommand::Ls(args) => list(args, ctx).await,
        SecretCommand::Rm(place) => remove(place, ctx).await,
    }
}

/// Checks what can be checked before reading a value or connecting, so a
/// typo costs nothing.
fn check_place(app: &str, env: Option<&str>, name: Option<&str>) -> Result<(), CliError> {
    validate_name(app).map_err(|r| CliError::usage(format!("--app: {r}")))?;
    if let Some(env) = env {
        validate_name(env).map_err(|r| CliError::usage(format!("--env: {r}")))?;
    }
    if let Some(name) = name {
        validate_secret_name(name).map_err(|r| CliError::usage(format!("secret name: {r}")))?;
    }
    Ok(())
}

/// The value from `input`: one line when it is a terminal, else everything
/// up to end of file; then one trailing newline (`\n` or `\r\n`) removed,
/// since `echo` and editors add one that is not part of the value.
pub fn read_value(input: impl BufRead, is_terminal: bool) -> Result<Zeroizing<String>, CliError> {
    // Enough to tell a value that is too large, without reading an
    // unbounded input into memory.
    let limit = (MAX_VALUE_BYTES + 3) as u64;
    let mut input = input.take(limit);
    let mut bytes = Zeroizing::new(Vec::new());
    let read = if is_terminal {
        input.read_until(b'\n', &mut bytes)
    } else {
        input.read_to_end(&mut bytes)
    };
    read.map_err(|e| CliError::failed(format!("cannot read the value from standard input: {e}")))?;
    if bytes.len() as u64 >= limit {
        return Err(CliError::usage(format!(
            "the value on standard input is larger than {MAX_VALUE_BYTES} bytes (64 KiB)"
        )));
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    let value = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        let mut rejected = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut rejected);
        CliError::usage("the value on standard input is not UTF-8 text")
    })?;
    let value = Zeroizing::new(value);
    if value.is_empty() {
        return Err(CliError::usage(
            "the value is empty; pipe it on standard input, e.g. \
             `printf %s \"$VALUE\" | ferry secret set --app APP --env ENV NAME`",
        ));
    }
    validate_secret_value(&value).map_err(CliError::usage)?;
    Ok(value)
}

async fn set(p: Place, ctx: &Ctx) -> Result<pb::Secret, CliError> {
    let app = ctx.app(p.app)?;
    check_place(&app, Some(&p.env), Some(&p.name))?;
    let mut s = ctx.connect().await?;
    // Before the value is typed, so a misspelt app or environment can be
    // stopped with Ctrl-C.
    if let Some(warning) = unknown_place(&mut s, &app, &p.env).await? {
        let _ = writeln!(io::stderr(), "warning: {warning}");
    }
    let is_terminal = ctx.env.stdin_is_terminal;
    // Typed on a terminal, the value is not echoed; echo goes off before
    // the prompt shows, so nothing typed after it is echoed.
    let quiet = is_terminal.then(NoEcho::stdin);
    if is_terminal {
        let _ = write!(
            io::stderr(),
            "value of {} for app {app} env {} (one line, not shown): ",
            p.name,
            p.env
        );
        let _ = io::stderr().flush();
    }
    let mut value = tokio::task::spawn_blocking(move || {
        let value = read_value(io::stdin().lock(), is_terminal);
        drop(quiet);
        if is_terminal {
            let _ = writeln!(io::stderr());
        }
        value
    })
    .await
    .map_err(|e| CliError::failed(format!("reading standard input: {e}")))??;
    let reply = s
        .client
        .set_secret(pb::SetSecretRequest {
            app,
            env: p.env,
            name: p.name,
            // Moved, not copied: the only other copy is wiped on drop.
            value: std::mem::take(&mut *value),
        })
        .await?
        .into_inner();
    Ok(reply.secret.unwrap_or_default())
}

/// Turns the terminal's echo off on standard input until dropped.
struct NoEcho {
    saved: Option<nix::sys::termios::Termios>,
}

impl NoEcho {
    fn stdin() -> NoEcho {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            // Enter still ends the line.
            quiet.local_flags.insert(LocalFlags::ECHONL);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        }
        NoEcho { saved }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Why (app, env) looks misspelt, if it does: neither ./ferry.toml nor any
/// release knows it. Names the ones that are known.
async fn unknown_place(
    s: &mut crate::context::Session,
    app: &str,
    env: &str,
) -> Result<Option<String>, CliError> {
    let file = known_in_app_file(Path::new(crate::context::APP_FILE));
    let releases = s
        .client
        .list_releases(pb::ListReleasesRequest {
            app: app.into(),
            env: String::new(),
            limit: 1000,
        })
        .await?
        .into_inner()
        .releases;
    let mut envs: BTreeSet<String> = releases.into_iter().map(|r| r.env).collect();
    let file_knows_app = file.as_ref().is_some_and(|(a, _)| a == app);
    if let Some((_, file_envs)) = file.as_ref().filter(|_| file_knows_app) {
        envs.extend(file_envs.iter().cloned());
    }
    if envs.is_empty() && !file_knows_app {
        let known = match &file {
            Some((a, _)) => format!("./ferry.toml names app {a:?}"),
            None => "there is no ./ferry.toml here".to_string(),
        };
        return Ok(Some(format!(
            "no release and no app file knows app {app:?} ({known}); the secret is stored anyway, check the name"
        )));
    }
    if !envs.contains(env) {
        return Ok(Some(format!(
            "app {app} has no environment {env:?} in its releases or ./ferry.toml (known: {}); the secret is stored anyway, check the name",
            envs.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(None)
}

/// The app and environments of the app file at `path`, if it names them.
fn known_in_app_file(path: &Path) -> Option<(String, Vec<String>)> {
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let app = table.get("app")?.as_str()?.to_string();
    let envs = table
        .get("environments")
        .and_then(|e| e.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    Some((app, envs))
}

async fn list(args: ListArgs, ctx: &Ctx) -> Result<View, CliError> {
    let app = ctx.app(args.app)?;
    check_place(&app, args.env.as_deref(), None)?;
    let mut s = ctx.connect().await?;
    let secrets = s
        .client
        .list_secrets(pb::ListSecretsRequest {
            app: app.clone(),
            env: args.env.clone().unwrap_or_default(),
        })
        .await?
        .into_inner()
        .secrets;
    Ok(View::List {
        app,
        env: args.env,
        secrets,
    })
}

async fn remove(p: Place, ctx: &Ctx) -> Result<View, CliError> {
    let app = ctx.app(p.app)?;
    check_place(&app, Some(&p.env), Some(&p.name))?;
    let mut s = ctx.connect().await?;
    s.client
        .delete_secret(pb::DeleteSecretRequest {
            app: app.clone(),
            env: p.env.clone(),
            name: p.name.clone(),
        })
        .await?;
    Ok(View::Deleted(Deleted {
        app,
        env: p.env,
        name: p.name,
    }))
}

/// A deleted secret: where it was.
#[derive(Debug)]
pub struct Deleted {
    pub app: String,
    pub env: String,
    pub name: String,
}

/// What a secret command shows; never a value.
#[derive(Debug)]
pub enum View {
    /// `set`: the secret as stored.
    Set(pb::Secret),
    /// `ls`: the app's secrets (of one environment, if given).
    List {
        app: String,
        env: Option<String>,
        secrets: Vec<pb::Secret>,
    },
    /// `rm`.
    Deleted(Deleted),
}

fn secret_json(s: &pb::Secret) -> Value {
    json!({
        "app": s.app,
        "env": s.env,
        "name": s.name,
        "created_at": opt_time(s.created_at_ms),
        "updated_at": opt_time(s.updated_at_ms),
        "updated_by": s.updated_by,
    })
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            View::Set(secret) => secret_json(secret).serialize(s),
            View::List { secrets, .. } => s.collect_seq(secrets.iter().map(secret_json)),
            View::Deleted(p) => {
                json!({ "app": p.app, "env": p.env, "name": p.name, "deleted": true }).serialize(s)
            }
        }
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Set(secret) => {
                let replaced = secret.created_at_ms != secret.updated_at_ms;
                writeln!(
                    t.out,
                    "{} secret {} for app {} env {}",
                    if replaced { "replaced" } else { "set" },
                    secret.name,
                    secret.app,
                    secret.env
                )
            }
            View::List { app, env, secrets } if secrets.is_empty() => {
                let scope = env.as_ref().map_or(String::new(), |e| format!(" env {e}"));
                writeln!(
                    t.out,
                    "no secrets for app {app}{scope}; set one with `ferry secret set --app {app} --env {} NAME`",
                    env.as_deref().unwrap_or("ENV")
                )
            }
            View::List { secrets, .. } => {
                let rows = secrets.iter().map(|s| {
                    vec![
                        s.env.clone(),
                        s.name.clone(),
                        rfc3339_ms(s.updated_at_ms),
                        short_actor(&s.updated_by).to_string(),
                    ]
                });
                t.table(&["ENV", "NAME", "UPDATED", "BY"], rows)
            }
            View::Deleted(p) => writeln!(
                t.out,
                "deleted secret {} of app {} env {}",
                p.name, p.app, p.env
            ),
        }
    }
}

/// `spiffe://domain/operator/ada` as `ada`, for tables; anything else as is.
fn short_actor(uri: &str) -> &str {
    uri.rsplit_once("/operator/").map_or(uri, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn read(input: &[u8], terminal: bool) -> Result<String, CliError> {
        read_value(Cursor::new(input.to_vec()), terminal).map(|v| v.to_string())
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(read(b"s3cret\n", false).unwrap(), "s3cret");
        assert_eq!(read(b"s3cret\r\n", false).unwrap(), "s3cret");
        assert_eq!(read(b"s3cret", false).unwrap(), "s3cret");
        assert_eq!(read(b"two\nlines\n\n", false).unwrap(), "two\nlines\n");
        assert_eq!(read(b"  spaced  \n", false).unwrap(), "  spaced  ");
    }

    #[test]
    fn a_terminal_gives_one_line() {
        assert_eq!(read(b"typed\nnot this\n", true).unwrap(), "typed");
    }

    #[test]
    fn empty_large_and_binary_values_are_refused() {
        for input in [&b""[..], b"\n", b"\r\n"] {
            let err = read(input, false).unwrap_err();
            assert_eq!(err.code, ferry_common::exit::USAGE);
            assert!(err.message.contains("empty"), "{}", err.message);
        }
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert!(read(&big, false).unwrap_err().message.contains("64 KiB"));
        let mut exact = vec![b'x'; MAX_VALUE_BYTES];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(read(&exact, false).unwrap().len(), MAX_VALUE_BYTES);
        let err = read(b"\xff\xfe secret", false).unwrap_err();
        assert!(err.message.contains("UTF-8") && !err.message.contains("secret"));
        assert!(
            read(b"nul\0inside", false)
                .unwrap_err()
                .message
                .contains("NUL")
        );
    }

    #[test]
    fn lists_never_show_values_and_keep_their_json() {
        let secret = pb::Secret {
            app: "shop".into(),
            env: "staging".into(),
            name: "DATABASE_URL".into(),
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_000,
            updated_by: "spiffe://ferry.test/operator/ada".into(),
        };
        let list = View::List {
            app: "shop".into(),
            env: None,
            secrets: vec![secret.clone()],
        };
        let text = crate::render::text_of(&list);
        assert!(text.starts_with("ENV      NAME          UPDATED"), "{text}");
        assert!(text.trim_end().ends_with("ada"), "{text}");
        let json = crate::render::json_of(&list);
        assert_eq!(json[0]["updated_by"], "spiffe://ferry.test/operator/ada");
        assert_eq!(json[0]["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(
            crate::render::text_of(&View::Set(secret)),
            "set secret DATABASE_URL for app shop env staging\n"
        );
        let deleted = View::Deleted(Deleted {
            app: "shop".into(),
            env: "staging".into(),
            name: "X".into(),
        });
        assert_eq!(
            crate::render::json_of(&deleted),
            json!({"app": "shop", "env": "staging", "name": "X", "deleted": true})
        );
    }

    #[test]
    fn actors_are_shortened_for_tables() {
        assert_eq!(short_actor("spiffe://ferry.test/operator/ada"), "ada");
        assert_eq!(short_actor("system"), "system");
    }
}
