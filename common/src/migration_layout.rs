//! Reading a migrations folder into the ordered list of migrations its tool
//! would run, in that tool's order. It lives in ferry-common because both
//! the CLI (which reads `dir` and refuses a bad folder before submitting)
//! and the agent (which applies the files a job carried) read folders with
//! this one reader. The folder arrives either from disk
//! ([`read_dir`]) or as the files a job carried (name → bytes); both become
//! the same [`Files`] map and go through the same readers ([`load`]), so
//! the agent runs exactly what the CLI read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha2::{Digest, Sha256};

/// A migrations folder (or the files a job carried) that does not have the
/// layout's shape; `file` is the path relative to the folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct LayoutError {
    pub file: String,
    pub reason: String,
}

impl LayoutError {
    pub fn new(file: impl Into<String>, reason: impl Into<String>) -> Self {
        LayoutError {
            file: file.into(),
            reason: reason.into(),
        }
    }
}

/// The files of a migrations folder: the path relative to the folder, with
/// `/` between components, → the file's bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The most files and bytes a migrations folder may hold: far above any real
/// app's, low enough that a wrong `dir` (a home directory) is an error, not
/// an agent reading gigabytes.
pub const MAX_FILES: usize = 20_000;
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How deep [`read_dir`] looks; the deepest layout (Drizzle's `meta/`,
/// Prisma's `<name>/migration.sql`) needs two levels.
const MAX_DEPTH: usize = 3;

/// The first line that makes a file run outside a transaction (the same
/// marker sqlx uses), for statements such as `CREATE INDEX CONCURRENTLY`.
pub const NO_TRANSACTION: &str = "-- no-transaction";

/// Where Drizzle's statement breakpoints are; Drizzle splits on exactly this.
pub const DRIZZLE_BREAKPOINT: &str = "--> statement-breakpoint";

/// Which tool's folder shape and order the migrations follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `<version>_<name>.sql` or `.up.sql` (`.down.sql` never runs); the
    /// version is an integer and sorts as one.
    Sqlx,
    /// `<name>/migration.sql`, folders in name order.
    Prisma,
    /// `NNNN_<name>.sql` in the order of `meta/_journal.json`.
    Drizzle,
    /// `*.sql` in name order.
    Plain,
}

crate::string_enum!(Layout "migration layout" {
    Sqlx => "sqlx",
    Prisma => "prisma",
    Drizzle => "drizzle",
    Plain => "plain",
});

impl serde::Serialize for Layout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Layout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One fingerprint of a whole folder: SHA-256 over every file's name and
/// bytes in name order (each length-prefixed, so no two folders share one).
/// The CLI puts it in the job; the agent recomputes it before applying.
pub fn files_sha256(files: &Files) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// One migration as its tool would run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// What the ledger keys it by: sqlx's integer (`"12"`), Prisma's folder
    /// name, Drizzle's tag, a plain file's name without `.sql`.
    pub version: String,
    /// The human part of the name (`create_users`).
    pub name: String,
    /// The file, relative to the folder (`20240101_init/migration.sql`).
    pub file: String,
    pub sql: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub checksum: String,
    /// The file starts with [`NO_TRANSACTION`].
    pub no_transaction: bool,
    /// Drizzle: the file's statements are split at [`DRIZZLE_BREAKPOINT`].
    pub breakpoints: bool,
}

/// A folder read in its tool's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSet {
    pub layout: Layout,
    pub migrations: Vec<Migration>,
    /// SQL files present that never run (sqlx `.down.sql`, Drizzle files not
    /// in the journal), so a report can say so rather than stay silent.
    pub ignored: Vec<String>,
}

impl MigrationSet {
    /// The migration with this ledger version.
    pub fn get(&self, version: &str) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version == version)
    }
}

/// Reads a folder and its tool's order: [`read_dir`] then [`load`].
pub fn load_dir(layout: Layout, dir: &Path) -> Result<MigrationSet, LayoutError> {
    load(layout, &read_dir(dir)?)
}

/// Every regular file under `dir` (hidden entries skipped, at most
/// [`MAX_DEPTH`] levels), keyed by its relative path.
pub fn read_dir(dir: &Path) -> Result<Files, LayoutError> {
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        return Err(LayoutError::new(
            shown,
            "not a directory; the migrations folder is read from here",
        ));
    }
    let mut files = Files::new();
    let mut total = 0u64;
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((path, prefix, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&path)
            .map_err(|e| LayoutError::new(path.display().to_string(), e.to_string()))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| LayoutError::new(path.display().to_string(), e.to_string()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(LayoutError::new(
                    entry.path().display().to_string(),
                    "file name is not UTF-8",
                ));
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let meta = std::fs::metadata(entry.path())
                .map_err(|e| LayoutError::new(&rel, e.to_string()))?;
            if meta.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), format!("{rel}/"), depth + 1));
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            total += meta.len();
            if files.len() >= MAX_FILES || total > MAX_BYTES {
                return Err(LayoutError::new(
                    shown,
                    format!(
                        "holds more than {MAX_FILES} files or {} MiB; is this the migrations folder?",
                        MAX_BYTES / 1024 / 1024
                    ),
                ));
            }
            let bytes =
                std::fs::read(entry.path()).map_err(|e| LayoutError::new(&rel, e.to_string()))?;
            files.insert(rel, bytes);
        }
    }
    Ok(files)
}

/// The migrations `files` hold in `layout`'s order. `files` may come from a
/// job, so every name is checked to be a plain relative path first.
pub fn load(layout: Layout, files: &Files) -> Result<MigrationSet, LayoutError> {
    if files.len() > MAX_FILES {
        return Err(LayoutError::new(
            "migrations",
            format!("{} files; at most {MAX_FILES}", files.len()),
        ));
    }
    for name in files.keys() {
        check_relative(name)?;
    }
    match layout {
        Layout::Sqlx => sqlx(files),
        Layout::Prisma => prisma(files),
        Layout::Drizzle => drizzle(files),
        Layout::Plain => plain(files),
    }
}

/// A name a job may carry: relative, `/`-separated, no `.`/`..`/empty parts.
fn check_relative(name: &str) -> Result<(), LayoutError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(LayoutError::new(
            format!("{name:?}"),
            "not a relative path inside the migrations folder (parts separated by /, no . or ..)",
        ));
    }
    Ok(())
}

fn migration(
    file: &str,
    bytes: &[u8],
    version: String,
    name: String,
    breakpoints: bool,
) -> Result<Migration, LayoutError> {
    let sql = String::from_utf8(bytes.to_vec()).map_err(|e| {
        LayoutError::new(
            file,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    Ok(Migration {
        version,
        name,
        file: file.to_owned(),
        no_transaction: sql.starts_with(NO_TRANSACTION),
        checksum: sha256_hex(bytes),
        sql,
        breakpoints,
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `<version>_<name>.sql` / `.up.sql` / `.down.sql` at the top level, in
/// numeric version order, as `sqlx migrate run` does. A `.sql` file that does
/// not fit the pattern is an error rather than a file that silently never
/// runs.
fn sqlx(files: &Files) -> Result<MigrationSet, LayoutError> {
    let mut by_version: BTreeMap<i64, Migration> = BTreeMap::new();
    let mut ignored = Vec::new();
    for (file, bytes) in files {
        if file.contains('/') || !file.ends_with(".sql") {
            if file.ends_with(".sql") {
                ignored.push(file.clone());
            }
            continue;
        }
        let (stem, down) = if let Some(s) = file.strip_suffix(".down.sql") {
            (s, true)
        } else if let Some(s) = file.strip_suffix(".up.sql") {
            (s, false)
        } else {
            (file.strip_suffix(".sql").unwrap_or(file), false)
        };
        let parsed = stem.split_once('_').and_then(|(v, n)| {
            let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            let version = v.parse::<i64>().ok().filter(|_| digits)?;
            (!n.is_empty()).then_some((version, n))
        });
        let Some((version, name)) = parsed else {
            return Err(LayoutError::new(
                file,
                "not a sqlx migration name: expected <version>_<name>.sql (or .up.sql / .down.sql) with an integer version, e.g. 20240101120000_create_users.sql",
            ));
        };
        if down {
            ignored.push(file.clone());
            continue;
        }
        let m = migration(file, bytes, version.to_string(), name.to_owned(), false)?;
        if let Some(other) = by_version.get(&version) {
            return Err(LayoutError::new(
                file,
                format!(
                    "version {version} is also {}; each version once",
                    other.file
                ),
            ));
        }
        by_version.insert(version, m);
    }
    Ok(MigrationSet {
        layout: Layout::Sqlx,
        migrations: by_version.into_values().collect(),
        ignored,
    })
}

/// `<folder>/migration.sql`, folders in name order, as `prisma migrate
/// deploy` does; `migration_lock.toml` (and any other top-level file) is not
/// a migration, but a lock naming another database provider is refused.
fn prisma(files: &Files) -> Result<MigrationSet, LayoutError> {
    if let Some(bytes) = files.get("migration_lock.toml") {
        let provider = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("provider")
                    .and_then(|p| p.as_str())
                    .map(str::to_owned)
            });
        if let Some(p) = provider.filter(|p| p != "postgresql" && p != "postgres") {
            return Err(LayoutError::new(
                "migration_lock.toml",
                format!(
                    "provider is {p:?}; Ferry applies these migrations to PostgreSQL (provider = \"postgresql\")"
                ),
            ));
        }
    }
    let folders: BTreeSet<&str> = files
        .keys()
        .filter_map(|f| f.split_once('/').map(|(dir, _)| dir))
        .collect();
    let mut migrations = Vec::new();
    for folder in folders {
        let file = format!("{folder}/migration.sql");
        let Some(bytes) = files.get(&file) else {
            return Err(LayoutError::new(
                format!("{folder}/"),
                "has no migration.sql; each Prisma migration is a folder holding migration.sql",
            ));
        };
        let name = folder
            .split_once('_')
            .filter(|(ts, _)| ts.bytes().all(|b| b.is_ascii_digit()))
            .map_or(folder, |(_, n)| n);
        migrations.push(migration(
            &file,
            bytes,
            folder.to_owned(),
            name.to_owned(),
            false,
        )?);
    }
    Ok(MigrationSet {
        layout: Layout::Prisma,
        migrations,
        ignored: Vec::new(),
    })
}

/// Drizzle's journal: which migrations exist and in what order.
#[derive(serde::Deserialize)]
struct Journal {
    dialect: String,
    entries: Vec<JournalEntry>,
}

#[derive(serde::Deserialize)]
struct JournalEntry {
    tag: String,
}

const JOURNAL: &str = "meta/_journal.json";

/// The files `meta/_journal.json` lists, in its order, as drizzle-kit's
/// migrator does: a `.sql` file not in the journal never runs, and a journal
/// entry with no file is an error.
fn drizzle(files: &Files) -> Result<MigrationSet, LayoutError> {
    let Some(bytes) = files.get(JOURNAL) else {
        return Err(LayoutError::new(
            JOURNAL,
            "missing; Drizzle's journal (written by drizzle-kit generate) says which files run and in what order",
        ));
    };
    let journal: Journal = serde_json::from_slice(bytes)
        .map_err(|e| LayoutError::new(JOURNAL, format!("not a Drizzle journal: {e}")))?;
    if !matches!(journal.dialect.as_str(), "postgresql" | "pg") {
        return Err(LayoutError::new(
            JOURNAL,
            format!(
                "dialect is {:?}; Ferry applies these migrations to PostgreSQL (dialect \"postgresql\")",
                journal.dialect
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut migrations = Vec::new();
    for (i, entry) in journal.entries.iter().enumerate() {
        let tag = &entry.tag;
        if tag.is_empty() || tag.contains('/') || tag.contains("..") {
            return Err(LayoutError::new(
                JOURNAL,
                format!("entry {i} has tag {tag:?}; a tag is a file name without .sql"),
            ));
        }
        if !seen.insert(tag.clone()) {
            return Err(LayoutError::new(
                JOURNAL,
                format!("tag {tag:?} is listed twice"),
            ));
        }
        let file = format!("{tag}.sql");
        let Some(bytes) = files.get(&file) else {
            return Err(LayoutError::new(
                &file,
                format!(
                    "missing, but {JOURNAL} lists it (entry {i}); restore the file or regenerate the journal"
                ),
            ));
        };
        let name = tag.split_once('_').map_or(tag.as_str(), |(_, n)| n);
        migrations.push(migration(&file, bytes, tag.clone(), name.to_owned(), true)?);
    }
    let ignored = files
        .keys()
        .filter(|f| !f.contains('/') && f.ends_with(".sql"))
        .filter(|f| !seen.contains(f.trim_end_matches(".sql")))
        .cloned()
        .collect();
    Ok(MigrationSet {
        layout: Layout::Drizzle,
        migrations,
        ignored,
    })
}

/// Every top-level `*.sql` file, in name order.
fn plain(files: &Files) -> Result<MigrationSet, LayoutError> {
    let mut migrations = Vec::new();
    for (file, bytes) in files {
        if file.contains('/') {
            continue;
        }
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        migrations.push(migration(
            file,
            bytes,
            stem.to_owned(),
            stem.to_owned(),
            false,
        )?);
    }
    Ok(MigrationSet {
        layout: Layout::Plain,
        migrations,
        ignored: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Files {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
            .collect()
    }

    fn versions(set: &MigrationSet) -> Vec<&str> {
        set.migrations.iter().map(|m| m.version.as_str()).collect()
    }

    #[test]
    fn sqlx_sorts_versions_as_integers_and_runs_only_up() {
        let mut list = Vec::new();
        for v in 1..=12 {
            list.push((format!("{v}_step_{v}.sql"), format!("-- {v}")));
        }
        list.push(("13_rev.up.sql".into(), "up".into()));
        list.push(("13_rev.down.sql".into(), "down".into()));
        list.push(("README.md".into(), "not sql".into()));
        let f: Files = list
            .iter()
            .map(|(n, t)| (n.clone(), t.as_bytes().to_vec()))
            .collect();
        let set = load(Layout::Sqlx, &f).unwrap();
        let want: Vec<String> = (1..=13).map(|v| v.to_string()).collect();
        assert_eq!(versions(&set), want);
        assert_eq!(set.migrations[12].sql, "up");
        assert_eq!(set.migrations[12].name, "rev");
        assert_eq!(set.ignored, vec!["13_rev.down.sql".to_owned()]);
    }

    #[test]
    fn sqlx_zero_padded_versions_are_numbers() {
        let set = load(
            Layout::Sqlx,
            &files(&[("0002_b.sql", ""), ("0010_c.sql", ""), ("0001_a.sql", "")]),
        )
        .unwrap();
        assert_eq!(versions(&set), ["1", "2", "10"]);
    }

    #[test]
    fn sqlx_bad_names_and_duplicates_name_the_file() {
        let err = load(Layout::Sqlx, &files(&[("schema.sql", "")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("schema.sql: not a sqlx migration name"),
            "{err}"
        );
        let err = load(Layout::Sqlx, &files(&[("v1_init.sql", "")])).unwrap_err();
        assert!(err.to_string().contains("v1_init.sql"), "{err}");
        let err = load(Layout::Sqlx, &files(&[("1_a.sql", ""), ("01_b.sql", "")])).unwrap_err();
        assert!(err.to_string().contains("version 1 is also"), "{err}");
    }

    #[test]
    fn no_transaction_is_read_from_the_first_line() {
        let set = load(
            Layout::Sqlx,
            &files(&[
                (
                    "1_a.sql",
                    "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
                ),
                ("2_b.sql", "SELECT 1;\n-- no-transaction"),
            ]),
        )
        .unwrap();
        assert!(set.migrations[0].no_transaction);
        assert!(!set.migrations[1].no_transaction);
    }

    #[test]
    fn prisma_runs_folders_in_name_order_and_ignores_the_lock() {
        let set = load(
            Layout::Prisma,
            &files(&[
                ("migration_lock.toml", "provider = \"postgresql\"\n"),
                (
                    "20240201000000_add_posts/migration.sql",
                    "CREATE TABLE posts ();",
                ),
                (
                    "20240101000000_init/migration.sql",
                    "CREATE TABLE users ();",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            versions(&set),
            ["20240101000000_init", "20240201000000_add_posts"]
        );
        assert_eq!(set.migrations[0].name, "init");
        assert_eq!(set.migrations[0].file, "20240101000000_init/migration.sql");
    }

    #[test]
    fn prisma_folder_without_migration_sql_and_other_providers_are_errors() {
        let err = load(Layout::Prisma, &files(&[("20240101_x/notes.txt", "")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("20240101_x/: has no migration.sql"),
            "{err}"
        );
        let err = load(
            Layout::Prisma,
            &files(&[("migration_lock.toml", "provider = \"mysql\"")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
    }

    const JOURNAL_TEXT: &str = r#"{
      "version": "7",
      "dialect": "postgresql",
      "entries": [
        { "idx": 0, "version": "7", "when": 1700000000000, "tag": "0000_wise_start", "breakpoints": true },
        { "idx": 1, "version": "7", "when": 1700000100000, "tag": "0001_add_orders", "breakpoints": true }
      ]
    }"#;

    #[test]
    fn drizzle_runs_what_the_journal_lists() {
        let set = load(
            Layout::Drizzle,
            &files(&[
                ("meta/_journal.json", JOURNAL_TEXT),
                ("meta/0000_snapshot.json", "{}"),
                ("0001_add_orders.sql", "b"),
                ("0000_wise_start.sql", "a"),
                ("0002_not_journaled.sql", "c"),
            ]),
        )
        .unwrap();
        assert_eq!(versions(&set), ["0000_wise_start", "0001_add_orders"]);
        assert!(set.migrations.iter().all(|m| m.breakpoints));
        assert_eq!(set.ignored, vec!["0002_not_journaled.sql".to_owned()]);
    }

    #[test]
    fn drizzle_journal_entry_without_file_names_it() {
        let err = load(
            Layout::Drizzle,
            &files(&[
                ("meta/_journal.json", JOURNAL_TEXT),
                ("0000_wise_start.sql", "a"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("0001_add_orders.sql: missing, but meta/_journal.json lists it"),
            "{err}"
        );
        let err = load(Layout::Drizzle, &files(&[("0000_a.sql", "")])).unwrap_err();
        assert!(
            err.to_string().starts_with("meta/_journal.json: missing"),
            "{err}"
        );
        let sqlite = JOURNAL_TEXT.replace("postgresql", "sqlite");
        let err = load(Layout::Drizzle, &files(&[("meta/_journal.json", &sqlite)])).unwrap_err();
        assert!(err.to_string().contains("\"sqlite\""), "{err}");
    }

    #[test]
    fn plain_runs_sql_files_in_name_order() {
        let set = load(
            Layout::Plain,
            &files(&[
                ("b.sql", ""),
                ("a.sql", ""),
                ("notes.md", ""),
                ("sub/c.sql", ""),
            ]),
        )
        .unwrap();
        assert_eq!(versions(&set), ["a", "b"]);
    }

    #[test]
    fn sent_names_must_stay_inside_the_folder_and_text_must_be_utf8() {
        for bad in ["../x.sql", "/etc/x.sql", "a//b.sql", "./a.sql"] {
            let err = load(Layout::Plain, &files(&[(bad, "")])).unwrap_err();
            assert!(
                err.to_string().contains("not a relative path"),
                "{bad}: {err}"
            );
        }
        let mut f = Files::new();
        f.insert("a.sql".into(), vec![b'S', 0xff]);
        let err = load(Layout::Plain, &f).unwrap_err();
        assert!(err.to_string().starts_with("a.sql: not UTF-8"), "{err}");
    }

    #[test]
    fn a_directory_reads_as_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        std::fs::write(dir.path().join("meta/_journal.json"), JOURNAL_TEXT).unwrap();
        std::fs::write(dir.path().join("0000_wise_start.sql"), "a").unwrap();
        std::fs::write(dir.path().join("0001_add_orders.sql"), "b").unwrap();
        std::fs::write(dir.path().join(".gitkeep"), "").unwrap();
        let read = read_dir(dir.path()).unwrap();
        assert_eq!(
            read.keys().collect::<Vec<_>>(),
            [
                "0000_wise_start.sql",
                "0001_add_orders.sql",
                "meta/_journal.json"
            ]
        );
        let set = load_dir(Layout::Drizzle, dir.path()).unwrap();
        assert_eq!(set.migrations[1].checksum, sha256_hex(b"b"));
    }
}
