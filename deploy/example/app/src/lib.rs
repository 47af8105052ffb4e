//! `ferry-example`: the small HTTP service that Ferry's examples and tests
//! deploy. It exists to give a deploy something real to check: a health
//! endpoint that can be made to fail on purpose (a bad release), a database
//! health endpoint (a release whose configuration is wrong), a version
//! endpoint (which release is live) and migrations that run in a one-off
//! container of the same image.
//!
//! Modules:
//! - [`cli`]: the command line (`serve`, `migrate`, `healthcheck`);
//! - [`config`]: the service's settings, read from an environment passed in;
//! - [`routes`]: which endpoint a request names and what it answers (pure);
//! - [`server`]: the HTTP/1.1 server, request logging, graceful shutdown;
//! - [`db`]: the database health probe and the migration runner;
//! - [`healthcheck`]: a tiny client for Docker's `HEALTHCHECK`, since a
//!   `FROM scratch` image has no curl.

pub mod cli;
pub mod config;
pub mod db;
pub mod healthcheck;
pub mod routes;
pub mod server;
