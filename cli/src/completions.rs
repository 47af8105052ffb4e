//! `ferry completions bash|zsh|fish`: the shell completion script, on
//! stdout, e.g. `ferry completions bash > /etc/bash_completion.d/ferry`.

use std::io;

use clap::CommandFactory;
use clap_complete::Shell;
use serde::Serialize;

use crate::render::{Render, Text};
use crate::{Cli, CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a shell completion script, e.g. `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions {
        /// The shell whose completion script to print.
        #[arg(value_enum)]
        shell: Shell,
    },
}

pub async fn run(command: Command, _: &Ctx) -> Result<View, CliError> {
    let Command::Completions { shell } = command;
    Ok(script(shell))
}

/// The script for `shell`, completing every command and flag of `ferry`.
pub fn script(shell: Shell) -> View {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut buf);
    View {
        shell: shell.to_string(),
        script: String::from_utf8_lossy(&buf).into_owned(),
    }
}

/// A completion script (JSON: `{"shell", "script"}`).
#[derive(Debug, Serialize)]
pub struct View {
    pub shell: String,
    pub script: String,
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        t.out.write_all(self.script.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let view = script(shell);
            assert!(!view.script.is_empty(), "{shell}");
            for word in ["deploy", "secret", "completions", "rollback", "output"] {
                assert!(view.script.contains(word), "{shell} lacks {word}");
            }
            assert_eq!(crate::render::text_of(&view), view.script);
        }
    }
}
