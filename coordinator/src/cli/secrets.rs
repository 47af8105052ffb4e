//! Secret commands: `ferry secret set|ls|rm`.
//!
//! Values travel one way: from standard input to the coordinator. They are
//! never arguments (arguments show in `ps` and shell history) and no
//! command prints one.

use std::io::{BufRead, Read};

use ferry_common::identity::validate_name;
use ferry_common::time::rfc3339_ms;
use ferry_proto::v1 as pb;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::commands::{opt_time, print_json, print_table};
use super::{Cli, CliEnv, CliError, Output, connect};
use crate::secrets::{MAX_VALUE_BYTES, validate_secret_name, validate_secret_value};

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

/// `spiffe://domain/operator/ada` as `ada`, for tables; anything else as is.
fn short_actor(uri: &str) -> &str {
    uri.rsplit_once("/operator/").map_or(uri, |(_, name)| name)
}

pub async fn set(
    cli: &Cli,
    env: &CliEnv,
    app: &str,
    app_env: &str,
    name: &str,
) -> Result<(), CliError> {
    check_place(app, Some(app_env), Some(name))?;
    let is_terminal = env.stdin_is_terminal;
    if is_terminal {
        eprint!("value of {name} for app {app} env {app_env} (one line, shown as typed): ");
    }
    let mut value =
        tokio::task::spawn_blocking(move || read_value(std::io::stdin().lock(), is_terminal))
            .await
            .map_err(|e| CliError::failed(format!("reading standard input: {e}")))??;
    let mut s = connect(cli, env).await?;
    let reply = s
        .client
        .set_secret(pb::SetSecretRequest {
            app: app.to_string(),
            env: app_env.to_string(),
            name: name.to_string(),
            // Moved, not copied: the only other copy is wiped on drop.
            value: std::mem::take(&mut *value),
        })
        .await?
        .into_inner();
    let secret = reply.secret.unwrap_or_default();
    if cli.output == Output::Json {
        print_json(&secret_json(&secret));
    } else {
        let replaced = secret.created_at_ms != secret.updated_at_ms;
        println!(
            "{} secret {} for app {} env {}",
            if replaced { "replaced" } else { "set" },
            secret.name,
            secret.app,
            secret.env
        );
    }
    Ok(())
}

pub async fn list(
    cli: &Cli,
    env: &CliEnv,
    app: &str,
    app_env: Option<&str>,
) -> Result<(), CliError> {
    check_place(app, app_env, None)?;
    let mut s = connect(cli, env).await?;
    let list = s
        .client
        .list_secrets(pb::ListSecretsRequest {
            app: app.to_string(),
            env: app_env.unwrap_or_default().to_string(),
        })
        .await?
        .into_inner()
        .secrets;
    if cli.output == Output::Json {
        print_json(&Value::Array(list.iter().map(secret_json).collect()));
        return Ok(());
    }
    if list.is_empty() {
        let scope = app_env.map_or(String::new(), |e| format!(" env {e}"));
        println!(
            "no secrets for app {app}{scope}; set one with `ferry secret set --app {app} --env {} NAME`",
            app_env.unwrap_or("ENV")
        );
        return Ok(());
    }
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|s| {
            [
                s.env.clone(),
                s.name.clone(),
                rfc3339_ms(s.updated_at_ms),
                short_actor(&s.updated_by).to_string(),
            ]
        })
        .collect();
    print_table(&["ENV", "NAME", "UPDATED", "BY"], &rows);
    Ok(())
}

pub async fn remove(
    cli: &Cli,
    env: &CliEnv,
    app: &str,
    app_env: &str,
    name: &str,
) -> Result<(), CliError> {
    check_place(app, Some(app_env), Some(name))?;
    let mut s = connect(cli, env).await?;
    s.client
        .delete_secret(pb::DeleteSecretRequest {
            app: app.to_string(),
            env: app_env.to_string(),
            name: name.to_string(),
        })
        .await?;
    if cli.output == Output::Json {
        print_json(&json!({ "app": app, "env": app_env, "name": name, "deleted": true }));
    } else {
        println!("deleted secret {name} of app {app} env {app_env}");
    }
    Ok(())
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
    fn actors_are_shortened_for_tables() {
        assert_eq!(short_actor("spiffe://ferry.test/operator/ada"), "ada");
        assert_eq!(short_actor("system"), "system");
    }
}
