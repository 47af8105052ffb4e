//! The rules for names and values that end up in Docker and on hosts
//! (app, environment and service names, images, users, environment
//! variables, secret names, versions), written once: the app file checks
//! each field with them (with its line), and a deploy job's spec is checked
//! with the same functions when it arrives, however it was made.

/// What an image reference in the app file may hold, filled in per release.
pub const PLACEHOLDERS: [&str; 3] = ["{version}", "{app}", "{env}"];

/// App, environment and service names end up joined by `-` in Docker
/// names: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit.
pub fn dns_name(name: &str) -> Result<(), String> {
    crate::identity::validate_name(name)?;
    if let Some(bad) = name.chars().find(|c| matches!(c, '_' | '.')) {
        return Err(format!(
            "{name:?} contains {bad:?}; use lowercase letters, digits and '-' (it becomes part of container, network and volume names)"
        ));
    }
    if name.ends_with('-') {
        return Err(format!("{name:?} must not end with '-'"));
    }
    Ok(())
}

/// Environment variable names as shells accept them.
pub fn env_var_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name; use letters, digits and '_', not starting with a digit"
        ))
    }
}

/// `name`, `uid`, `name:group` or `uid:gid`.
pub fn user(user: &str) -> Result<(), String> {
    let parts: Vec<&str> = user.split(':').collect();
    let part_ok = |p: &&str| !p.is_empty() && !p.chars().any(char::is_whitespace);
    if parts.len() <= 2 && parts.iter().all(part_ok) {
        Ok(())
    } else {
        Err(format!(
            "{user:?} is not a user; expected \"name\", \"uid\", \"name:group\" or \"uid:gid\""
        ))
    }
}

/// A blue-green service's `nginx_url`: `http://HOST[:PORT][/PREFIX]`, the
/// service as nginx serves it; the agent appends the health check's path.
pub fn nginx_url(url: &str) -> Result<(), String> {
    let example = "use the service's address on this host's nginx, like http://127.0.0.1:8081";
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); {example}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} must be an http:// URL; {example}"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!(
            "{url:?} must not carry a query or fragment: the health check's path is appended; {example}"
        ));
    }
    Ok(())
}

/// Non-empty, no whitespace, braces only around [`PLACEHOLDERS`], and a
/// lowercase repository as Docker requires.
pub fn image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if image.chars().any(char::is_whitespace) {
        return Err(format!("{image:?} must not contain whitespace"));
    }
    let mut rest = image;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("{image:?} has a '}}' without its '{{'"));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{image:?} has a '{{' without its '}}'"));
        };
        let placeholder = &rest[open..open + close + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "unknown placeholder {placeholder:?} in {image:?}; use {}",
                one_of(&PLACEHOLDERS)
            ));
        }
        rest = &rest[open + close + 1..];
    }
    // The repository is what precedes the tag or digest; a registry host
    // (first component) may have a port, and {app}/{env} are lowercase.
    let name = image.split('@').next().unwrap_or(image);
    let (host, path) = match name.split_once('/') {
        Some((first, rest)) if registry_host(name).is_some() => (Some(first), rest),
        _ => (None, name),
    };
    let repository = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => &path[..i],
        _ => path,
    };
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "repository {repository:?} must be lowercase (Docker refuses uppercase image names)"
        ));
    }
    if repository.is_empty() || host.is_some_and(str::is_empty) {
        return Err(format!("{image:?} names no repository"));
    }
    Ok(())
}

/// The longest secret name the coordinator's secret store accepts; a
/// longer one here could never be set.
pub const MAX_SECRET_NAME_LEN: usize = crate::secret::MAX_NAME_LEN;

/// Secret names are environment variable names (they are injected as
/// one), within the secret store's length limit.
pub fn secret_name(name: &str) -> Result<(), String> {
    env_var_name(name)?;
    if name.len() > MAX_SECRET_NAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_SECRET_NAME_LEN} characters, the longest secret name"
        ));
    }
    Ok(())
}

/// Checks a release version: it names containers and usually an image tag,
/// so it follows Docker's tag rule (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn version(version: &str) -> Result<(), String> {
    let mut chars = version.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || version.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "version {version:?}: expected 1 to 128 letters, digits, '_', '.' or '-', \
             not starting with '.' or '-' (it becomes a Docker tag and container name), e.g. \"1.4.2\""
        ));
    }
    Ok(())
}
/// The registry host an image reference names, if any
/// (`127.0.0.1:5000/app:1`, `registry.example.com/team/app`).
pub fn registry_host(image: &str) -> Option<String> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then(|| first.to_string())
}

/// "a, b or c".
pub fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
