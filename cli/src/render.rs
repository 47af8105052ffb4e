//! Rendering apart from work. A command's `run` returns a view; a view is
//! text for people ([`Render::text`]) and JSON for scripts (its
//! [`serde::Serialize`]), and [`Printer::print`] is the one function that
//! writes either to stdout. Streaming commands (`watch`, `deploy`) print
//! each event as a view of its own through the same printer, then return a
//! final view.
//!
//! Writes go through `writeln!`, never `println!`: when whoever reads
//! stdout goes away (`ferry jobs | head`), the command ends quietly with
//! exit 0 ([`CliError::stdout_closed`]) instead of panicking.

use std::io::{self, Write};

use clap::ValueEnum;
use comfy_table::{ColumnConstraint, ContentArrangement, Row, Table, Width, presets};
use ferry_common::exit;
use ferry_common::time::rfc3339_ms;
use serde::Serialize;

use crate::error::CliError;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How a view appears with `--output json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    /// An indented document (a command's result).
    Pretty,
    /// One compact object on one line (an event of a stream; `probe --detach`).
    Line,
    /// Nothing: text for people only (a plan shown before a deploy runs, a
    /// stream's closing line; scripts get the result or the events instead).
    None,
}

/// Something a command shows.
pub trait Render: Serialize {
    /// Text for people.
    fn text(&self, t: &mut Text<'_>) -> io::Result<()>;

    /// How it appears in JSON; by default an indented document.
    fn json_style(&self) -> Json {
        Json::Pretty
    }

    /// The exit code once it is shown.
    fn exit_code(&self) -> i32 {
        exit::OK
    }
}

impl<T: Render + ?Sized> Render for &T {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        (**self).text(t)
    }
    fn json_style(&self) -> Json {
        (**self).json_style()
    }
    fn exit_code(&self) -> i32 {
        (**self).exit_code()
    }
}

/// Where text goes: stdout, stderr (for diagnostics such as `validate`'s
/// problems), and whether stdout is a terminal (tables fit its width).
pub struct Text<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub terminal: bool,
}

impl Text<'_> {
    /// A table with a header; see [`table`].
    pub fn table<R>(&mut self, header: &[&str], rows: R) -> io::Result<()>
    where
        R: IntoIterator<Item = Vec<String>>,
    {
        for line in table(header, rows, self.terminal) {
            writeln!(self.out, "{line}")?;
        }
        Ok(())
    }
}

/// The one printer: a view in the chosen format, on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    output: Output,
    terminal: bool,
}

impl Printer {
    pub fn new(output: Output, stdout_is_terminal: bool) -> Self {
        Printer {
            output,
            terminal: stdout_is_terminal,
        }
    }

    /// Prints `view`: its text, or its JSON in its [`Json`] style. A closed
    /// stdout is [`CliError::stdout_closed`].
    pub fn print<V: Render + ?Sized>(&self, view: &V) -> Result<(), CliError> {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        let mut err = io::stderr();
        self.write(view, &mut out, &mut err)
            .and_then(|()| out.flush())
            .map_err(CliError::from_write)
    }

    /// [`Printer::print`] to any writers (tests).
    pub fn write<V: Render + ?Sized>(
        &self,
        view: &V,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<()> {
        match self.output {
            Output::Text => view.text(&mut Text {
                out: &mut Printable(out),
                err: &mut Printable(err),
                terminal: self.terminal,
            }),
            Output::Json => {
                let text = match view.json_style() {
                    Json::None => return Ok(()),
                    Json::Line => serde_json::to_string(view),
                    Json::Pretty => serde_json::to_string_pretty(view),
                };
                writeln!(out, "{}", text.map_err(io::Error::other)?)
            }
        }
    }
}

/// Text for people, with every control character but newline and tab
/// shown as `?`: names, messages and log lines come from agents and
/// containers, and an escape sequence among them must not reach (and
/// rewrite) the operator's terminal. Scripts read `--output json`, where
/// serde escapes them.
struct Printable<'a>(&'a mut dyn Write);

impl Write for Printable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut clean = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            // C1 controls (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8.
            if b == 0xC2 && buf.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n)) {
                clean.push(b'?');
                i += 2;
                continue;
            }
            let control = (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7F;
            clean.push(if control { b'?' } else { b });
            i += 1;
        }
        self.0.write_all(&clean)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A view's text, as people would see it off a terminal (tests).
pub fn text_of<V: Render + ?Sized>(view: &V) -> String {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    Printer::new(Output::Text, false)
        .write(view, &mut out, &mut err)
        .expect("writing to memory");
    out.extend(err);
    String::from_utf8_lossy(&out).into_owned()
}

/// A view's JSON as scripts read it (tests).
pub fn json_of<V: Render + ?Sized>(view: &V) -> serde_json::Value {
    serde_json::to_value(view).expect("a view serializes")
}

/// The lines of a table: a header and rows, columns two spaces apart, no
/// borders and no styling (so no escape codes, whatever stdout is). On a
/// terminal the table fits its width, truncating cells (`...`) that do not;
/// elsewhere every cell is shown in full.
pub fn table<R>(header: &[&str], rows: R, terminal: bool) -> Vec<String>
where
    R: IntoIterator<Item = Vec<String>>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    if terminal {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    } else {
        t.force_no_tty()
            .set_content_arrangement(ContentArrangement::Disabled);
    }
    t.set_header(header.iter().copied());
    for cells in rows {
        let mut row = Row::from(cells);
        row.max_height(1);
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        let gap = if i == last { 0 } else { 2 };
        column.set_padding((0, gap));
        // Headers stay whole (the width counts the padding); cells give way.
        let width = header.get(i).map_or(0, |h| h.chars().count()) as u16 + gap;
        column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width)));
    }
    t.lines().map(|l| l.trim_end().to_string()).collect()
}

/// A line for people only (`rollout … started`, `==> step`); scripts get
/// the result instead.
#[derive(Debug, Serialize)]
pub struct Note(pub String);

impl Render for Note {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(t.out, "{}", self.0)
    }
    fn json_style(&self) -> Json {
        Json::None
    }
}

/// A view shown to people only, e.g. a plan before the deploy it plans.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct TextOnly<V>(pub V);

impl<V: Render> Render for TextOnly<V> {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        self.0.text(t)
    }
    fn json_style(&self) -> Json {
        Json::None
    }
}

/// How lists show a job or rollout id to people: its last 8 characters.
/// Ids are time-ordered, so their first characters repeat between ids
/// made within a minute; the last ones are random. Any 8 or more
/// characters from either end are accepted back (JSON has whole ids).
pub fn short_id(id: &str) -> String {
    let start = id.len().saturating_sub(8);
    id.get(start..).unwrap_or(id).to_string()
}

/// A time in milliseconds as RFC 3339, or `null` for 0 (never).
pub fn opt_time(ms: i64) -> Option<String> {
    (ms != 0).then(|| rfc3339_ms(ms))
}

/// Prints a failed command's error on stderr (`error: …`, or
/// `{"error", "exit_code"}` with `--output json`) and returns its exit code.
pub fn report(e: &CliError, output: Output) -> i32 {
    if e.code == exit::OK {
        // Standard output was closed: nothing to report.
        return exit::OK;
    }
    let mut stderr = std::io::stderr().lock();
    // Nowhere left to complain to if stderr is closed too.
    let _ = if output == Output::Json {
        let body = serde_json::json!({ "error": e.message, "exit_code": e.code });
        writeln!(stderr, "{body}")
    } else {
        writeln!(stderr, "error: {}", e.message)
    };
    e.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let hostile = Note("web-1\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\r\tok\nnext".into());
        let text = text_of(&hostile);
        assert_eq!(text, "web-1?[2J?]0;owned??31m?\tok\nnext\n");
        let json = serde_json::to_string(&hostile).unwrap();
        assert!(json.contains("\\u001b"), "JSON escapes them: {json}");
    }

    #[test]
    fn tables_line_up_without_borders_or_escapes() {
        let lines = table(
            &["NAME", "STATE"],
            vec![
                vec!["web-1".into(), "online".into()],
                vec!["database-primary".into(), "offline".into()],
            ],
            false,
        );
        assert_eq!(
            lines,
            [
                "NAME              STATE",
                "web-1             online",
                "database-primary  offline",
            ]
        );
        assert!(!lines.concat().contains('\x1b'));
    }

    #[test]
    fn off_a_terminal_no_cell_is_cut() {
        let long = "x".repeat(500);
        let lines = table(&["A", "B"], vec![vec![long.clone(), "b".into()]], false);
        assert!(lines[1].starts_with(&long), "{lines:?}");
    }

    #[test]
    fn short_ids_are_the_random_end() {
        assert_eq!(short_id("019af3c2-7d1e-7b4a-9c3e-5f1d2a3b4c5d"), "2a3b4c5d");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn json_styles() {
        let note = Note("hello".into());
        let p = Printer::new(Output::Json, false);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        p.write(&note, &mut out, &mut err).unwrap();
        assert!(out.is_empty());
        assert_eq!(text_of(&note), "hello\n");
    }
}
