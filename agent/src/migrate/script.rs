//! Reading a migration file the way psql does, but only as far as Ferry
//! needs to: where its statements end (quotes, dollar quotes, comments,
//! `BEGIN ATOMIC … END` bodies understood; never a naive split on `;`),
//! and where a `COPY … FROM stdin` statement's data lines are, since those
//! go through the copy protocol rather than as SQL. The SQL itself is sent
//! as written: a transactional file goes as one simple query (or one per
//! `COPY` block); only a `-- no-transaction` file is sent a statement at a
//! time, because the server runs a multi-statement query string as one
//! implicit transaction, where `CREATE INDEX CONCURRENTLY` is refused.

/// A part of a file to send to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// SQL sent as one simple query, exactly as written.
    Sql { text: &'a str, offset: usize },
    /// A `COPY … FROM stdin` statement and its data (the lines after it up
    /// to the `\.` line, which is not part of the data).
    Copy {
        statement: &'a str,
        offset: usize,
        data: &'a str,
    },
}

impl Piece<'_> {
    /// Where the piece starts in the file, in bytes.
    pub fn offset(&self) -> usize {
        match self {
            Piece::Sql { offset, .. } | Piece::Copy { offset, .. } => *offset,
        }
    }
}

/// Something in a file Ferry cannot send: `offset` is where, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub offset: usize,
    pub message: String,
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The pieces of `sql`: with `one_per_statement`, each statement alone;
/// otherwise as few as the `COPY` blocks allow (the whole file, usually).
pub fn pieces(sql: &str, one_per_statement: bool) -> Result<Vec<Piece<'_>>, ScriptError> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut chunk_start = 0;
    let mut chunk_has_content = false;
    let mut st = Statement::new(0);
    let mut i = 0;
    while i < n {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr(b, b'\n', i).unwrap_or(n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < n {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                st.content(i);
                i = skip_quoted(b, i, b'\'', false);
            }
            b'"' => {
                st.content(i);
                i = skip_quoted(b, i, b'"', false);
            }
            b'$' => {
                st.content(i);
                match dollar_tag(b, i) {
                    Some(tag_end) => {
                        let tag = &sql[i..tag_end];
                        i = sql[tag_end..]
                            .find(tag)
                            .map_or(n, |at| tag_end + at + tag.len());
                    }
                    None => i += 1,
                }
            }
            b'\\' => {
                let end = memchr(b, b'\n', i).unwrap_or(n);
                return Err(ScriptError {
                    offset: i,
                    message: format!(
                        "{:?} is a psql meta-command, not SQL; Ferry sends the file to the server as written, so remove it",
                        sql[i..end].trim_end()
                    ),
                });
            }
            b'(' => {
                st.content(i);
                st.paren += 1;
                i += 1;
            }
            b')' => {
                st.content(i);
                st.paren = st.paren.saturating_sub(1);
                i += 1;
            }
            b';' if st.paren == 0 && st.begin_depth == 0 => {
                let end = i + 1;
                i = end;
                let Some(content) = st.content_start else {
                    st = Statement::new(end);
                    continue;
                };
                if st.copy && st.to_stdout {
                    return Err(ScriptError {
                        offset: content,
                        message: "COPY … TO STDOUT has no place in a migration (nothing reads its output)".into(),
                    });
                }
                if st.copy && st.from_stdin {
                    if !one_per_statement && chunk_has_content {
                        out.push(Piece::Sql {
                            text: &sql[chunk_start..st.start],
                            offset: chunk_start,
                        });
                    }
                    // The data starts on the line after the statement, and
                    // ends at a line holding only `\.` (or the file's end).
                    let data_start = memchr(b, b'\n', end).map_or(n, |nl| nl + 1);
                    let mut line = data_start;
                    let (data_end, after) = loop {
                        if line >= n {
                            break (n, n);
                        }
                        let nl = memchr(b, b'\n', line);
                        let text = &sql[line..nl.unwrap_or(n)];
                        if text.trim_end_matches('\r') == "\\." {
                            break (line, nl.map_or(n, |x| x + 1));
                        }
                        line = nl.map_or(n, |x| x + 1);
                    };
                    out.push(Piece::Copy {
                        statement: &sql[content..end],
                        offset: content,
                        data: &sql[data_start..data_end],
                    });
                    i = after;
                    chunk_start = after;
                    chunk_has_content = false;
                } else if one_per_statement {
                    out.push(Piece::Sql {
                        text: &sql[content..end],
                        offset: content,
                    });
                } else {
                    chunk_has_content = true;
                }
                st = Statement::new(i);
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                st.content(i);
                let start = i;
                while i < n
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                if word.eq_ignore_ascii_case("e") && b.get(i) == Some(&b'\'') {
                    i = skip_quoted(b, i, b'\'', true);
                } else {
                    st.word(word);
                }
            }
            c if c.is_ascii_digit() => {
                st.content(i);
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
            }
            _ => {
                st.content(i);
                i += 1;
            }
        }
    }
    if let Some(content) = st.content_start {
        if one_per_statement {
            out.push(Piece::Sql {
                text: &sql[content..],
                offset: content,
            });
        } else {
            chunk_has_content = true;
        }
    }
    if !one_per_statement && chunk_has_content {
        out.push(Piece::Sql {
            text: &sql[chunk_start..],
            offset: chunk_start,
        });
    }
    Ok(out)
}

fn memchr(b: &[u8], needle: u8, from: usize) -> Option<usize> {
    b.get(from..)?
        .iter()
        .position(|&x| x == needle)
        .map(|p| from + p)
}

/// The index after the quoted text opening at `i` (`''` / `""` doubled
/// inside; with `backslash`, an E'' string's `\x` escapes too).
fn skip_quoted(b: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The end of a dollar-quote opening tag (`$$`, `$body$`) starting at `i`,
/// or `None` for a parameter (`$1`) or a lone `$`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let first = *b.get(j)?;
    if first == b'$' {
        return Some(j + 1);
    }
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// What the scanner knows of the statement it is in.
struct Statement {
    start: usize,
    content_start: Option<usize>,
    paren: usize,
    words: usize,
    /// psql's heuristic for `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN
    /// ATOMIC … END`: the first letters of the leading keywords.
    heads: [u8; 4],
    begin_depth: usize,
    copy: bool,
    prev_from: bool,
    prev_to: bool,
    from_stdin: bool,
    to_stdout: bool,
}

impl Statement {
    fn new(start: usize) -> Self {
        Statement {
            start,
            content_start: None,
            paren: 0,
            words: 0,
            heads: [0; 4],
            begin_depth: 0,
            copy: false,
            prev_from: false,
            prev_to: false,
            from_stdin: false,
            to_stdout: false,
        }
    }

    fn content(&mut self, at: usize) {
        self.content_start.get_or_insert(at);
    }

    fn word(&mut self, w: &str) {
        let is = |k: &str| w.eq_ignore_ascii_case(k);
        if self.words == 0 {
            self.copy = is("copy");
        }
        if self.words < 4
            && ["create", "function", "procedure", "or", "replace"]
                .iter()
                .any(|k| is(k))
        {
            self.heads[self.words] = w.as_bytes()[0].to_ascii_lowercase();
        }
        self.words += 1;
        let h = self.heads;
        let creates_routine = h[0] == b'c'
            && (h[1] == b'f'
                || h[1] == b'p'
                || (h[1] == b'o' && h[2] == b'r' && (h[3] == b'f' || h[3] == b'p')));
        if creates_routine && self.paren == 0 {
            if is("begin") {
                self.begin_depth += 1;
            } else if is("case") {
                if self.begin_depth >= 1 {
                    self.begin_depth += 1;
                }
            } else if is("end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
        if self.copy {
            self.from_stdin |= self.prev_from && is("stdin");
            self.to_stdout |= self.prev_to && is("stdout");
            self.prev_from = is("from");
            self.prev_to = is("to");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(p: &[Piece<'a>]) -> Vec<&'a str> {
        p.iter()
            .map(|p| match p {
                Piece::Sql { text, .. } => *text,
                Piece::Copy { statement, .. } => *statement,
            })
            .collect()
    }

    #[test]
    fn a_file_without_copy_is_one_piece_as_written() {
        let sql = "-- head\nCREATE TABLE a (x int);\nINSERT INTO a VALUES (1);\n-- tail\n";
        assert_eq!(
            pieces(sql, false).unwrap(),
            vec![Piece::Sql {
                text: sql,
                offset: 0
            }]
        );
    }

    #[test]
    fn statements_split_outside_quotes_comments_and_bodies() {
        let sql = r#"
CREATE FUNCTION f() RETURNS text AS $body$ BEGIN RETURN 'a;b'; END $body$ LANGUAGE plpgsql;
DO $$ BEGIN PERFORM 1; END $$;
SELECT 'it''s; here', "we;ird", E'back\'slash;', $1x; /* a; /* nested; */ */
-- a comment; with a semicolon
CREATE PROCEDURE p() LANGUAGE SQL BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END;
SELECT 2"#;
        let got = texts(&pieces(sql, true).unwrap());
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(got[0].ends_with("LANGUAGE plpgsql;"));
        assert_eq!(got[1], "DO $$ BEGIN PERFORM 1; END $$;");
        assert!(got[2].starts_with("SELECT 'it''s; here'") && got[2].ends_with("$1x;"));
        assert!(got[3].starts_with("CREATE PROCEDURE") && got[3].ends_with("END; END;"));
        assert_eq!(got[4], "SELECT 2");
    }

    #[test]
    fn copy_from_stdin_takes_its_data_lines() {
        let sql = "CREATE TABLE t (a int, b text);\nCOPY t (a, b) FROM stdin;\n1\tone; two\n2\t\\N\n\\.\nUPDATE t SET a = a + 1;\n";
        let p = pieces(sql, false).unwrap();
        assert_eq!(p.len(), 3, "{p:#?}");
        assert_eq!(
            p[0],
            Piece::Sql {
                text: "CREATE TABLE t (a int, b text);",
                offset: 0
            }
        );
        assert_eq!(
            p[1],
            Piece::Copy {
                statement: "COPY t (a, b) FROM stdin;",
                offset: 32,
                data: "1\tone; two\n2\t\\N\n"
            }
        );
        assert_eq!(
            p[2],
            Piece::Sql {
                text: "UPDATE t SET a = a + 1;\n",
                offset: sql.find("UPDATE").unwrap()
            }
        );
    }

    #[test]
    fn meta_commands_and_copy_to_stdout_are_refused_with_where() {
        let sql = "SELECT 1;\n\\connect other\nSELECT 2;";
        let err = pieces(sql, false).unwrap_err();
        assert_eq!(line_of(sql, err.offset), 2);
        assert!(
            err.message.contains("\"\\\\connect other\""),
            "{}",
            err.message
        );
        let err = pieces("COPY t TO STDOUT;", false).unwrap_err();
        assert!(err.message.contains("TO STDOUT"));
    }

    #[test]
    fn empty_statements_and_comment_only_files_send_nothing() {
        assert!(pieces("-- nothing\n;;\n/* */", true).unwrap().is_empty());
        assert!(pieces("-- nothing\n", false).unwrap().is_empty());
    }
}
