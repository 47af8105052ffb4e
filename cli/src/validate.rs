//! `ferry validate`: checks an app file locally, with no credentials and no
//! coordinator, so it can run in CI and in editors before any deploy.

use std::io;
use std::path::PathBuf;

use ferry_common::appfile::{self, AppFile, AppFileError};
use ferry_common::exit;
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::{Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check an app file (ferry.toml) without contacting the coordinator;
    /// every problem is printed with its line, exit 2 if there is any.
    Validate {
        /// The app file.
        #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
        file: PathBuf,
    },
}

pub async fn run(command: Command, _: &Ctx) -> Result<View, CliError> {
    let Command::Validate { file } = command;
    Ok(View {
        file: file.display().to_string(),
        result: appfile::load(&file),
    })
}

/// What is wrong with a file (every problem, one per line, to stderr) or a
/// one-line summary (stdout); JSON goes to stdout either way, so scripts
/// read one document. Exits 2 on any problem.
#[derive(Debug)]
pub struct View {
    pub file: String,
    pub result: Result<AppFile, AppFileError>,
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        report(&self.file, &self.result).serialize(s)
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match &self.result {
            Ok(app) => writeln!(t.out, "{}: ok ({})", self.file, summary(app)),
            Err(e) => writeln!(t.err, "{e}"),
        }
    }

    fn exit_code(&self) -> i32 {
        if self.result.is_ok() {
            exit::OK
        } else {
            exit::USAGE
        }
    }
}

/// "app tecket, 2 environments, 1 service".
fn summary(app: &AppFile) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "app {}, {}, {}",
        app.app,
        plural(app.environments.len(), "environment"),
        plural(app.services.len(), "service")
    )
}

fn report(file: &str, result: &Result<AppFile, AppFileError>) -> Value {
    match result {
        Ok(app) => json!({
            "file": file,
            "ok": true,
            "errors": [],
            "app": app.app,
            "environments": app.environments.keys().collect::<Vec<_>>(),
            "services": app.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
        }),
        Err(e) => {
            let errors: Vec<Value> = match e {
                AppFileError::Invalid { problems, .. } => problems
                    .iter()
                    .map(|p| json!({ "line": p.line, "path": p.path, "message": p.message }))
                    .collect(),
                // Nothing was read: no line to point at.
                other => vec![json!({ "line": null, "path": "", "message": other.to_string() })],
            };
            json!({
                "file": file,
                "ok": false,
                "errors": errors,
                "app": null,
                "environments": [],
                "services": [],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_shaped_for_scripts() {
        let good = appfile::parse(
            "f.toml",
            "app = \"a\"\n[environments.x]\nagents = [\"h\"]\n[environments.y]\nagents = [\"h\"]\n[services.web]\nimage = \"a\"\n",
        );
        assert_eq!(
            summary(good.as_ref().unwrap()),
            "app a, 2 environments, 1 service"
        );
        let r = report("f.toml", &good);
        assert_eq!(r["ok"], true);
        assert_eq!(r["environments"], json!(["x", "y"]));
        assert_eq!(r["services"], json!(["web"]));
        let bad = appfile::parse("f.toml", "app = \"A\"\n");
        let r = report("f.toml", &bad);
        assert_eq!(r["ok"], false);
        assert_eq!(r["errors"][0]["line"], 1);
        assert_eq!(r["errors"][0]["path"], "app");
        assert_eq!(r["errors"].as_array().map(Vec::len), Some(3));
    }
}
