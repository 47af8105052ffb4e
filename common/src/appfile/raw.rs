//! The serde layer: every table with `deny_unknown_fields`, every value as
//! loose as TOML allows, so that the checking pass sees (and reports) as
//! much as possible. The values several sections use ([`Scalar`]) are
//! here; each section's own table is in its module (`RawService` in
//! `service`, ...) and the top-level table in the parent, so this module
//! depends on no section. And where everything is: field paths and the
//! index of lines they are found at.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::errors::Problem;

/// A string, an integer or a boolean: environment values (`PORT = 3000`
/// is as natural in TOML as `PORT = "3000"`), ports, sizes.
#[derive(Debug)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    pub fn into_text(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field path: `services.web.ports[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn parent(&self) -> Option<FieldPath> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }
}

impl fmt::Display for FieldPath {
    /// Dotted TOML keys, quoted when they are not bare keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where every key and array element of the document is: lines for
/// problems found after deserializing, field paths for serde's errors
/// (which only carry a byte span).
pub struct Index {
    /// Byte offset of each line start.
    line_starts: Vec<usize>,
    nodes: Vec<Node>,
    lines: BTreeMap<String, usize>,
}

struct Node {
    path: FieldPath,
    key: Range<usize>,
    value: Range<usize>,
}

impl Index {
    pub fn build(text: &str, doc: &Spanned<DeTable<'_>>) -> Index {
        let mut index = Index {
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            nodes: Vec::new(),
            lines: BTreeMap::new(),
        };
        index.table(doc.get_ref(), &FieldPath::default());
        index.lines = index
            .nodes
            .iter()
            .map(|n| (n.path.to_string(), index.line_at(n.key.start)))
            .collect();
        index
    }

    pub fn table(&mut self, table: &DeTable<'_>, path: &FieldPath) {
        for (k, v) in table.iter() {
            let p = path.key(k.get_ref());
            self.nodes.push(Node {
                path: p.clone(),
                key: k.span(),
                value: v.span(),
            });
            self.value(v, &p);
        }
    }

    pub fn value(&mut self, v: &Spanned<DeValue<'_>>, path: &FieldPath) {
        match v.get_ref() {
            DeValue::Table(t) => self.table(t, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = path.index(i);
                    self.nodes.push(Node {
                        path: p.clone(),
                        key: item.span(),
                        value: item.span(),
                    });
                    self.value(item, &p);
                }
            }
            _ => {}
        }
    }

    pub fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The line of `path`'s key, or of its nearest ancestor in the file.
    pub fn line_of(&self, path: &FieldPath) -> usize {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(line) = self.lines.get(&cur.to_string()) {
                return *line;
            }
            p = cur.parent();
        }
        1
    }

    /// Where `path`'s key starts in the text, if it is there.
    pub fn offset_of(&self, path: &FieldPath) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| &n.path == path)
            .map(|n| n.key.start)
    }

    /// The innermost key or value whose span holds `offset`.
    pub fn path_at(&self, offset: usize) -> Option<&FieldPath> {
        self.nodes
            .iter()
            .flat_map(|n| [(&n.key, &n.path), (&n.value, &n.path)])
            .filter(|(span, _)| span.contains(&offset))
            .min_by_key(|(span, _)| span.len())
            .map(|(_, path)| path)
    }

    pub fn serde_problem(&self, e: &toml::de::Error) -> Problem {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let mut path = self.path_at(offset).cloned().unwrap_or_default();
        // serde points an unknown field at the key itself; the problem is
        // in the table that holds it.
        if let Some(Seg::Key(last)) = path.0.last()
            && message.starts_with(&format!("unknown field `{last}`"))
        {
            path.0.pop();
        }
        Problem {
            line: if e.span().is_some() {
                self.line_at(offset)
            } else {
                1
            },
            path: path.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;
    use crate::appfile::*;

    #[test]
    fn serde_errors_carry_line_and_path() {
        assert_eq!(
            problem("app = \"x\"\n[environments.prod]\nlables = { env = \"p\" }\n"),
            "3: environments.prod: unknown field `lables`, expected one of `agents`, `labels`, `protected`, `max_parallel`, `variables`, `smoke`"
        );
        assert_eq!(
            problem(&service("ports = 3000")),
            "6: services.web.ports: invalid type: integer `3000`, expected a sequence"
        );
        assert_eq!(
            problem(&service("env = { A = [1] }")),
            "6: services.web.env.A: invalid type: sequence, expected a string, an integer or a boolean"
        );
        assert_eq!(
            problem(&service("command = [\"a\", 1]")),
            "6: services.web.command[1]: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            problem("app = \"x\"\n\n[[smoke]]\nurl = 3\n"),
            "4: smoke[0].url: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            problem(&service(
                "[services.web.healthcheck]\nhttp = \"/\"\nevery = \"2s\""
            )),
            "8: services.web.healthcheck: unknown field `every`, expected one of `http`, `docker`, `running_for`, `interval`, `timeout`, `retries`"
        );
    }

    #[test]
    fn syntax_errors_are_all_reported_with_lines() {
        let p = problems("app = \"x\"\n[environments.prod\nlabels = 1\nport = = 3\n");
        assert!(p.len() >= 2, "{p:#?}");
        assert_eq!(p[0].line, 2);
        assert!(p[0].message.contains("unclosed table"), "{p:#?}");
        assert!(p.iter().any(|p| p.line == 4), "{p:#?}");
        let text = AppFileError::Invalid {
            file: "ferry.toml".into(),
            problems: p,
        }
        .to_string();
        assert!(text.starts_with("ferry.toml:2: "), "{text}");
    }
}
