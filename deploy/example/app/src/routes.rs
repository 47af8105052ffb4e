//! Which endpoint a request names, and what every endpoint but the database
//! probe answers. Pure functions, so that routing is tested without sockets.

use hyper::{Method, StatusCode};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Index,
    Health,
    HealthDb,
    Version,
    NotFound,
    /// A known path with a method other than GET or HEAD.
    MethodNotAllowed,
}

/// Routes on the path alone (the query string is not part of `path`).
/// Paths match exactly: `/health/` is not `/health`, so that a health check
/// pointed at the wrong URL fails loudly instead of passing by accident.
pub fn route(method: &Method, path: &str) -> Route {
    let route = match path {
        "/" => Route::Index,
        "/health" => Route::Health,
        "/health/db" => Route::HealthDb,
        "/version" => Route::Version,
        _ => return Route::NotFound,
    };
    // HEAD is answered like GET; hyper leaves the body out.
    if method == Method::GET || method == Method::HEAD {
        route
    } else {
        Route::MethodNotAllowed
    }
}

/// A plain-text answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Reply {
    pub fn new(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
        }
    }
}

/// The answer to every route except [`Route::HealthDb`], which needs the
/// database (see `server.rs`). Bodies of machine-read endpoints (`/health`,
/// `/version`) carry no trailing newline, so checks can compare them exactly.
pub fn reply(route: Route, config: &Config) -> Reply {
    match route {
        Route::Index => Reply::new(
            StatusCode::OK,
            format!(
                "ferry-example {}: a small service for Ferry to deploy (try /health, /health/db, /version)\n",
                config.version
            ),
        ),
        Route::Health if config.fail_health => {
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, "failing on purpose")
        }
        Route::Health => Reply::new(StatusCode::OK, "ok"),
        Route::Version => Reply::new(StatusCode::OK, config.version.clone()),
        Route::HealthDb => match config.database_url {
            None => Reply::new(StatusCode::SERVICE_UNAVAILABLE, "DATABASE_URL not set"),
            // Only reached if a caller forgets to probe the database.
            Some(_) => Reply::new(StatusCode::INTERNAL_SERVER_ERROR, "database not probed"),
        },
        Route::NotFound => Reply::new(StatusCode::NOT_FOUND, "not found"),
        Route::MethodNotAllowed => Reply::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            port: 8080,
            fail_health: false,
            database_url: None,
            version: "v7".into(),
        }
    }

    #[test]
    fn paths_route_exactly() {
        let get = Method::GET;
        assert_eq!(route(&get, "/"), Route::Index);
        assert_eq!(route(&get, "/health"), Route::Health);
        assert_eq!(route(&get, "/health/db"), Route::HealthDb);
        assert_eq!(route(&get, "/version"), Route::Version);
        for p in [
            "/health/",
            "/healthz",
            "/version/x",
            "",
            "/HEALTH",
            "/health/db/",
        ] {
            assert_eq!(route(&get, p), Route::NotFound, "{p:?}");
        }
    }

    #[test]
    fn only_get_and_head() {
        assert_eq!(route(&Method::HEAD, "/health"), Route::Health);
        assert_eq!(route(&Method::POST, "/health"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/"), Route::MethodNotAllowed);
        // An unknown path is not found whatever the method.
        assert_eq!(route(&Method::POST, "/nope"), Route::NotFound);
    }

    #[test]
    fn health_can_fail_on_purpose() {
        assert_eq!(
            reply(Route::Health, &config()),
            Reply::new(StatusCode::OK, "ok")
        );
        let failing = Config {
            fail_health: true,
            ..config()
        };
        assert_eq!(
            reply(Route::Health, &failing),
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, "failing on purpose")
        );
    }

    #[test]
    fn version_and_index_name_the_version() {
        assert_eq!(
            reply(Route::Version, &config()),
            Reply::new(StatusCode::OK, "v7")
        );
        let index = reply(Route::Index, &config());
        assert_eq!(index.status, StatusCode::OK);
        assert!(
            index.body.starts_with("ferry-example v7:"),
            "{}",
            index.body
        );
        assert_eq!(index.body.lines().count(), 1);
    }

    #[test]
    fn database_health_without_a_url() {
        assert_eq!(
            reply(Route::HealthDb, &config()),
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, "DATABASE_URL not set")
        );
    }
}
