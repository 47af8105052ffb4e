//! Databases served from inside a container (`service =` / `container =`
//! in `[databases.NAME]`): the container found ([`locate`]), and the
//! database's own client tools run in it through the Docker engine's exec
//! API, never a shell: a command's output collected ([`run`]), a dump's
//! stdout streamed ([`start`], read by the backup's one writer path), a
//! file streamed into a client's stdin through the agent's zstd decoder
//! ([`stream_file_into`]), and a long-lived `psql` session whose
//! transaction holds the snapshot a PostgreSQL dump and its row counts
//! share ([`Psql`]). [`RowCounter`] counts the rows of a `mariadb-dump`
//! stream as it passes.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use ferry_common::job::backup::{DbEngine, DbLocation, InContainer};
use ferry_common::job::naming::{self, LABEL_APP, LABEL_ENV, LABEL_SERVICE};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::TaskContext;
use super::backup_file::{CHUNK, CheckedChunks};

/// The container a database runs in.
#[derive(Debug, Clone)]
pub struct Located {
    pub id: String,
    pub name: String,
}

/// How the client tools log in: user, password (from the task's
/// secrets), database.
#[derive(Clone)]
pub struct Login {
    pub engine: DbEngine,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl Login {
    /// The login of `c`, its password taken from the task's secrets.
    pub fn of(
        engine: DbEngine,
        c: &InContainer,
        ctx: &TaskContext,
        app: &str,
        env: &str,
    ) -> Result<Login, String> {
        let password = match &c.password_secret {
            None => None,
            Some(s) => Some(ctx.secrets.get(s).cloned().ok_or_else(|| {
                format!(
                    "the secret {s} (the password of {} on database {}) was not sent with the task; set it with `ferry secret set --app {app} --env {env} {s}`",
                    c.user, c.database
                )
            })?),
        };
        Ok(Login {
            engine,
            user: c.user.clone(),
            password,
            database: c.database.clone(),
        })
    }

    /// The environment of every exec: the password where the client
    /// tools read it, never on a command line.
    pub fn env(&self) -> Vec<String> {
        let mut env = vec!["LANG=C.UTF-8".to_string()];
        if let Some(p) = &self.password {
            env.push(match self.engine {
                DbEngine::Postgres => format!("PGPASSWORD={p}"),
                DbEngine::Mariadb => format!("MYSQL_PWD={p}"),
            });
        }
        env
    }
}

/// The running container of the database: for `service =`, the newest
/// running container this agent (`host`) deployed for that service or
/// accessory of (app, env) (found by its labels; during a switch the new
/// one); for `container =`, the container of that name. Not found or not
/// running: an error naming it.
pub async fn locate(
    docker: &Docker,
    host: &str,
    app: &str,
    env: &str,
    location: &DbLocation,
) -> Result<Located, String> {
    match location {
        DbLocation::UrlSecret(_) => Err("the database is given by URL, not in a container".into()),
        DbLocation::Service(c) => {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{LABEL_APP}={app}"),
                    format!("{LABEL_ENV}={env}"),
                    format!("{LABEL_SERVICE}={}", c.name),
                ],
            )]);
            let list = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .map_err(|e| format!("listing containers: {e}"))?
                .into_iter()
                .filter(|x| naming::is_mine(x.labels.as_ref(), host))
                .collect::<Vec<_>>();
            let name_of = |c: &bollard::models::ContainerSummary| {
                c.names
                    .iter()
                    .flatten()
                    .next()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default()
            };
            let running = list
                .iter()
                .filter(|x| x.state == Some(ContainerSummaryStateEnum::RUNNING))
                .max_by_key(|x| x.created.unwrap_or(0));
            match running {
                Some(x) => Ok(Located {
                    id: x.id.clone().unwrap_or_default(),
                    name: name_of(x),
                }),
                None => {
                    let found: Vec<String> = list
                        .iter()
                        .map(|x| {
                            format!(
                                "{} {}",
                                name_of(x),
                                x.state.map(|s| s.to_string()).unwrap_or_default()
                            )
                        })
                        .collect();
                    Err(format!(
                        "service {} of {app} {env} has no running container on this host ({}); deploy it (the database's service = \"{}\") before backing it up or restoring into it",
                        c.name,
                        if found.is_empty() {
                            "no container with its labels at all".to_string()
                        } else {
                            format!("found: {}", found.join(", "))
                        },
                        c.name
                    ))
                }
            }
        }
        DbLocation::Container(c) => {
            let inspected = docker
                .inspect_container(&c.name, None::<InspectContainerOptions>)
                .await
                .map_err(|e| match e {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    } => format!(
                        "there is no container named {} on this host (the database's container = \"{}\"); check `docker ps`",
                        c.name, c.name
                    ),
                    other => format!("inspecting container {}: {other}", c.name),
                })?;
            let state = inspected.state.unwrap_or_default();
            if state.running != Some(true) {
                return Err(format!(
                    "container {} is {}, not running; start it before backing up or restoring its database",
                    c.name,
                    state.status.map(|s| s.to_string()).unwrap_or_default()
                ));
            }
            Ok(Located {
                id: inspected.id.unwrap_or_default(),
                name: c.name.clone(),
            })
        }
    }
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// A started exec: its output (stdout and stderr frames), its stdin.
pub struct Started {
    pub id: String,
    pub output: Output,
    pub input: Input,
}

/// Starts `cmd` in container `on` with `env`.
pub async fn start(
    docker: &Docker,
    on: &Located,
    cmd: &[String],
    env: &[String],
) -> Result<Started, String> {
    let created = docker
        .create_exec(
            &on.id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                env: Some(env.to_vec()),
                cmd: Some(cmd.to_vec()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("docker exec {} in {}: {e}", cmd[0], on.name))?;
    match docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(CHUNK),
            }),
        )
        .await
        .map_err(|e| format!("docker exec {} in {}: {e}", cmd[0], on.name))?
    {
        StartExecResults::Attached { output, input } => Ok(Started {
            id: created.id,
            output,
            input,
        }),
        StartExecResults::Detached => Err("docker exec started detached".into()),
    }
}

/// The exit code of a finished exec (its output has ended; the engine
/// may take a moment to record the exit).
pub async fn exit_code(docker: &Docker, id: &str) -> Result<i64, String> {
    for _ in 0..100 {
        let inspected = docker
            .inspect_exec(id)
            .await
            .map_err(|e| format!("inspecting exec {id}: {e}"))?;
        if inspected.running != Some(true)
            && let Some(code) = inspected.exit_code
        {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("exec {id} did not report its exit"))
}

/// Stops a running exec's process (the engine has no call for it: its
/// process id on the host is signalled).
pub async fn kill(docker: &Docker, id: &str) {
    if let Ok(inspected) = docker.inspect_exec(id).await
        && inspected.running == Some(true)
        && let Some(pid) = inspected.pid.filter(|p| *p > 0)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Kills an exec's process when dropped unless disarmed: a cancelled
/// task's future is dropped where it stands, and a dump or restore in the
/// container must not run on without it.
pub struct KillOnDrop {
    docker: Docker,
    id: Option<String>,
}

impl KillOnDrop {
    pub fn new(docker: &Docker, id: &str) -> KillOnDrop {
        KillOnDrop {
            docker: docker.clone(),
            id: Some(id.to_string()),
        }
    }

    pub fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let docker = self.docker.clone();
            tokio::spawn(async move { kill(&docker, &id).await });
        }
    }
}

/// Exit codes of a command the container does not have.
pub fn not_found(code: i64) -> bool {
    code == 126 || code == 127
}

/// What a finished command printed and how it exited.
pub struct Ran {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Its output if it succeeded, else an error with its stderr.
    pub fn ok(self, what: &str) -> Result<String, String> {
        if self.code == 0 {
            Ok(self.stdout)
        } else if not_found(self.code) {
            Err(format!(
                "{what}: the program is not in the container (exit {}): {}",
                self.code,
                first_lines(&self.stderr)
            ))
        } else {
            Err(format!(
                "{what} failed (exit {}): {}",
                self.code,
                first_lines(&self.stderr)
            ))
        }
    }
}

/// A few lines of a tool's stderr, for an error message.
pub fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(8)
        .collect();
    if lines.is_empty() {
        "no message".into()
    } else {
        lines.join("; ")
    }
}

/// Runs `cmd` to its end, stdin empty, and returns what it printed.
pub async fn run(
    docker: &Docker,
    on: &Located,
    cmd: &[String],
    env: &[String],
) -> Result<Ran, String> {
    let mut s = match start(docker, on, cmd, env).await {
        Ok(s) => s,
        // Some engines refuse to start a program the container lacks
        // instead of reporting its exit: the same answer either way.
        Err(e) if e.contains("executable file not found") => {
            return Ok(Ran {
                code: 127,
                stdout: String::new(),
                stderr: e,
            });
        }
        Err(e) => return Err(e),
    };
    let _ = s.input.shutdown().await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(frame) = s.output.next().await {
        match frame.map_err(|e| format!("reading {}'s output: {e}", cmd[0]))? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.extend_from_slice(&message)
            }
            LogOutput::StdErr { message } => err.extend_from_slice(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(Ran {
        code: exit_code(docker, &s.id).await?,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// The stdout of an exec as a stream of chunks; its stderr goes to
/// `stderr` (line by line, for the caller to read at the end) and to
/// `on_line`.
pub fn stdout_stream(
    output: Output,
    stderr: Arc<Mutex<String>>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>> + Send>> {
    Box::pin(output.filter_map(move |frame| {
        let r = match frame {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                Some(Ok(message.to_vec()))
            }
            Ok(LogOutput::StdErr { message }) => {
                let text = String::from_utf8_lossy(&message);
                for line in text.lines() {
                    on_line(line);
                }
                stderr
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
                None
            }
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(format!("reading the dump through docker exec: {e}"))),
        };
        std::future::ready(r)
    }))
}

/// Why streaming stopped early: the task's cancellation.
pub const STOPPED: &str = "stopped: the task was cancelled";

/// Streams the zstd file at `path`, decompressed by the agent, into the
/// stdin of `cmd` in the container; with `sha256`, the file's checksum is
/// checked on the same read and a damaged file never reaches its end
/// ([`CheckedChunks`]). The command's failure says its stderr. Stops (and
/// kills the command) on `cancel`.
pub async fn stream_file_into(
    docker: &Docker,
    on: &Located,
    cmd: &[String],
    env: &[String],
    path: &str,
    sha256: Option<&str>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let mut chunks = CheckedChunks::open(path, sha256)?;
    let started = start(docker, on, cmd, env).await?;
    let Started {
        id,
        mut output,
        mut input,
    } = started;
    // Its output is read while its input is written, so neither blocks.
    let drain = tokio::spawn(async move {
        let mut err = Vec::new();
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdErr { message }) if err.len() < 64 * 1024 => {
                    err.extend_from_slice(&message)
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&err).into_owned()
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        loop {
            match chunks.next_chunk() {
                Ok(None) => return,
                Ok(Some(chunk)) => {
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let copied: Result<(), String> = loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => break Err(STOPPED.into()),
            c = rx.recv() => c,
        };
        match chunk {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(bytes)) => {
                if input.write_all(&bytes).await.is_err() {
                    // The command stopped reading: its exit says why.
                    break Ok(());
                }
            }
        }
    };
    drop(rx);
    if copied.is_err() {
        kill(docker, &id).await;
    }
    let _ = input.shutdown().await;
    drop(input);
    let stderr = drain.await.unwrap_or_default();
    let _ = reader.await;
    copied?;
    let code = exit_code(docker, &id).await?;
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} failed (exit {code}): {}",
            cmd[0],
            first_lines(&stderr)
        ))
    }
}

/// What `psql` prints between fields (the ASCII unit separator, which
/// no name or count holds) and for SQL NULL.
const FIELD_SEP: &str = "\u{1f}";
const NULL_MARK: &str = "\u{1e}NULL";
/// The line `psql` echoes after each query's output.
const END_MARK: &str = "__ferry_end_of_result__";

/// `psql`'s command line: unaligned, tuples only, fields split by
/// [`FIELD_SEP`], NULL as [`NULL_MARK`], stopping at the first error.
fn psql_cmd(login: &Login, database: &str) -> Vec<String> {
    [
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        FIELD_SEP,
        "-P",
        &format!("null={NULL_MARK}"),
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        &login.user,
        "-d",
        database,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn psql_row(line: &str) -> Vec<Option<String>> {
    line.split(FIELD_SEP)
        .map(|f| (f != NULL_MARK).then(|| f.to_string()))
        .collect()
}

/// Runs `sql`, text from the app file, as ONE command (`psql -c`, which
/// sends it to the server whole) and returns its rows. A psql
/// meta-command (`\! …` would run a shell in the container) is refused:
/// checks are SQL.
pub async fn psql_command(
    docker: &Docker,
    on: &Located,
    login: &Login,
    database: &str,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    if sql.trim_start().starts_with('\\') {
        return Err("a psql meta-command is not SQL; a check is one SQL query".into());
    }
    let mut cmd = psql_cmd(login, database);
    cmd.extend(["-c".to_string(), sql.to_string()]);
    let out = run(docker, on, &cmd, &login.env()).await?.ok("psql")?;
    Ok(out.lines().map(psql_row).collect())
}

/// A `psql` running in the container, fed queries on its stdin: the one
/// connection whose transaction holds a snapshot for as long as the dump
/// that uses it runs. A query that fails ends the session (`ON_ERROR_STOP`)
/// and its error is what `psql` said.
pub struct Psql {
    started: Started,
    pending: Vec<u8>,
    stderr: String,
    docker: Docker,
}

impl Psql {
    /// `psql` connected to `database` as the login's user.
    pub async fn open(
        docker: &Docker,
        on: &Located,
        login: &Login,
        database: &str,
    ) -> Result<Psql, String> {
        let cmd = psql_cmd(login, database);
        let started = start(docker, on, &cmd, &login.env()).await?;
        Ok(Psql {
            started,
            pending: Vec::new(),
            stderr: String::new(),
            docker: docker.clone(),
        })
    }

    /// Runs `sql` (one statement, no trailing `;`) and returns its rows,
    /// each a list of fields (`None`: NULL).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let script = format!("{sql};\n\\echo {END_MARK}\n");
        self.started
            .input
            .write_all(script.as_bytes())
            .await
            .map_err(|_| self.failure())?;
        self.started
            .input
            .flush()
            .await
            .map_err(|_| self.failure())?;
        let mut rows = Vec::new();
        loop {
            while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if line == END_MARK {
                    return Ok(rows);
                }
                rows.push(psql_row(&line));
            }
            match self.started.output.next().await {
                Some(Ok(LogOutput::StdOut { message }))
                | Some(Ok(LogOutput::Console { message })) => {
                    self.pending.extend_from_slice(&message)
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    self.stderr.push_str(&String::from_utf8_lossy(&message))
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Err(format!("psql: {e}")),
                None => return Err(self.failure()),
            }
        }
    }

    /// One value: the first field of the first row.
    pub async fn value(&mut self, sql: &str) -> Result<Option<String>, String> {
        Ok(self
            .query(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    fn failure(&self) -> String {
        let said = first_lines(&self.stderr);
        let said = said.strip_prefix("psql: ").unwrap_or(&said).to_string();
        format!("psql in the container: {said}")
    }

    /// Ends the session (`\q`), waiting for `psql` to exit.
    pub async fn close(mut self) {
        let _ = self.started.input.write_all(b"\\q\n").await;
        let _ = self.started.input.shutdown().await;
        while self.started.output.next().await.is_some() {}
    }

    /// Stops `psql` at once (a cancelled task).
    pub async fn kill(self) {
        kill(&self.docker, &self.started.id).await;
    }
}

/// The database `psql` connects to for creating, renaming and dropping
/// others.
pub const PG_MAINTENANCE_DB: &str = "postgres";

/// Runs one statement in a short `psql` session on `database` and
/// returns its rows.
pub async fn psql_query(
    docker: &Docker,
    on: &Located,
    login: &Login,
    database: &str,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut s = Psql::open(docker, on, login, database).await?;
    let r = s.query(sql).await;
    s.close().await;
    r
}

/// The MariaDB client programs the container has: `mariadb-dump` and
/// `mariadb`, or the older names `mysqldump` and `mysql`.
pub struct MariaTools {
    pub dump: &'static str,
    pub client: &'static str,
    /// `mariadb-dump --version`'s line.
    pub dump_version: String,
}

impl MariaTools {
    pub async fn find(docker: &Docker, on: &Located) -> Result<MariaTools, String> {
        let mut missing = Vec::new();
        for (dump, client) in [("mariadb-dump", "mariadb"), ("mysqldump", "mysql")] {
            let ran = run(docker, on, &[dump.to_string(), "--version".into()], &[]).await?;
            if ran.code == 0 {
                return Ok(MariaTools {
                    dump,
                    client,
                    dump_version: ran.stdout.trim().to_string(),
                });
            }
            missing.push(dump);
        }
        Err(format!(
            "container {} has neither {} (install the MariaDB or MySQL client in its image)",
            on.name,
            missing.join(" nor ")
        ))
    }

    /// The client's command line: `-N -B` (values only, tab-separated),
    /// UTF-8, as the login's user; `extra` after. `--binary-mode` turns
    /// off the client's own commands (`system …` would run a shell in the
    /// container) for SQL from the app file's checks and from dumps.
    pub fn client_cmd(&self, login: &Login, extra: &[&str]) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            self.client.into(),
            "--binary-mode".into(),
            "--default-character-set=utf8mb4".into(),
            "-N".into(),
            "-B".into(),
            "-u".into(),
            login.user.clone(),
        ];
        cmd.extend(extra.iter().map(|s| s.to_string()));
        cmd
    }

    /// Runs `sql` with the client (in database `database`, if given) and
    /// returns its rows (tab-separated fields; `NULL` is `None`).
    pub async fn query(
        &self,
        docker: &Docker,
        on: &Located,
        login: &Login,
        database: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut extra = vec!["-e", sql];
        if let Some(d) = database {
            extra.push(d);
        }
        let out = run(docker, on, &self.client_cmd(login, &extra), &login.env())
            .await?
            .ok(self.client)?;
        Ok(out
            .lines()
            .map(|l| {
                l.split('\t')
                    .map(|f| (f != "NULL").then(|| f.to_string()))
                    .collect()
            })
            .collect())
    }
}

/// A MariaDB identifier, quoted.
pub fn backquote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Counts the rows of each table in a `mariadb-dump` stream as it passes:
/// every table's data section (`-- Dumping data for table `t``) gets an
/// entry, and each `INSERT INTO `t` VALUES (…),(…);` in it adds its
/// tuples. Quotes (`'…'`, `"…"`) with backslash escapes and doubled quotes
/// are skipped, so parentheses and semicolons inside values do not count.
/// What is counted is exactly what the file holds.
#[derive(Debug, Default)]
pub struct RowCounter {
    counts: BTreeMap<String, u64>,
    /// The table whose data section this is.
    section: Option<String>,
    /// The current line, while it is not inside an INSERT's values (only
    /// its start is kept: enough to recognise the statements).
    line: Vec<u8>,
    values: Option<Values>,
}

#[derive(Debug)]
struct Values {
    table: String,
    depth: u32,
    quote: Option<u8>,
    escaped: bool,
}

const INSERT_PREFIX: &[u8] = b"INSERT INTO `";
const VALUES_INFIX: &[u8] = b"` VALUES";
const LINE_KEEP: usize = 4096;

impl RowCounter {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(v) = &mut self.values {
                if let Some(q) = v.quote {
                    if v.escaped {
                        v.escaped = false;
                    } else if b == b'\\' {
                        v.escaped = true;
                    } else if b == q {
                        v.quote = None;
                    }
                    continue;
                }
                match b {
                    b'\'' | b'"' => v.quote = Some(b),
                    b'(' => {
                        if v.depth == 0 {
                            *self.counts.entry(v.table.clone()).or_insert(0) += 1;
                        }
                        v.depth += 1;
                    }
                    b')' => v.depth = v.depth.saturating_sub(1),
                    b';' if v.depth == 0 => {
                        self.values = None;
                        // The rest of the line (its newline) is a line's.
                        self.line.clear();
                        self.line.push(b';');
                    }
                    _ => {}
                }
                continue;
            }
            // `INSERT INTO `t` VALUES` ends with a space (older dumps:
            // the tuples follow on the line) or a newline (newer ones: a
            // tuple per line).
            if (b == b' ' || b == b'\n') && self.start_values() {
                continue;
            }
            if b == b'\n' {
                self.end_of_line();
                continue;
            }
            if self.line.len() < LINE_KEEP {
                self.line.push(b);
            }
        }
    }

    /// Whether the line so far is `INSERT INTO `t` VALUES` of the table
    /// whose data section this is; if so, its values follow.
    fn start_values(&mut self) -> bool {
        if !(self.line.starts_with(INSERT_PREFIX) && self.line.ends_with(VALUES_INFIX)) {
            return false;
        }
        let name = &self.line[INSERT_PREFIX.len() - 1..self.line.len() - VALUES_INFIX.len() + 1];
        match unquote(name) {
            Some(table) if self.section.as_deref() == Some(table.as_str()) => {
                self.counts.entry(table.clone()).or_insert(0);
                self.values = Some(Values {
                    table,
                    depth: 0,
                    quote: None,
                    escaped: false,
                });
                true
            }
            _ => false,
        }
    }

    fn end_of_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if let Some(rest) = line.strip_prefix(b"-- Dumping data for table ") {
            if let Some(t) = unquote(rest) {
                self.counts.entry(t.clone()).or_insert(0);
                self.section = Some(t);
            }
        } else if line.starts_with(b"-- ")
            || line.starts_with(b"DELIMITER")
            || line.starts_with(b"UNLOCK TABLES")
            || line.starts_with(b"/*!50003")
        {
            // Past the data: a trigger's body is not the table's rows.
            self.section = None;
        }
    }

    /// The table whose data is passing now.
    pub fn current(&self) -> &str {
        self.section.as_deref().unwrap_or("")
    }

    /// Every table's rows; `Err` if the stream ended inside a statement.
    pub fn finish(self) -> Result<BTreeMap<String, u64>, String> {
        if let Some(v) = &self.values {
            return Err(format!("the dump ended inside an INSERT into {}", v.table));
        }
        Ok(self.counts)
    }
}

/// `` `name` `` (with `` `` `` for a backquote inside) to `name`; `None` if
/// it is not exactly one quoted name.
fn unquote(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?.trim_end();
    let inner = text.strip_prefix('`')?.strip_suffix('`')?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' && chars.next() != Some('`') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(dump: &str, chunk: usize) -> BTreeMap<String, u64> {
        let mut c = RowCounter::default();
        for part in dump.as_bytes().chunks(chunk) {
            c.feed(part);
        }
        c.finish().unwrap()
    }

    const DUMP: &str = r#"-- MariaDB dump 10.19  Distrib 10.11.18-MariaDB
/*!40101 SET NAMES utf8mb4 */;
--
-- Table structure for table `notes`
--

DROP TABLE IF EXISTS `notes`;
CREATE TABLE `notes` (
  `id` int(11) NOT NULL,
  `body` text DEFAULT '(x); INSERT INTO `notes` VALUES (9)',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

--
-- Dumping data for table `notes`
--

LOCK TABLES `notes` WRITE;
/*!40000 ALTER TABLE `notes` DISABLE KEYS */;
INSERT INTO `notes` VALUES (1,'plain'),(2,'it\'s (not) a row; really'),(3,'back\\'),(4,'dou''bled ('),(5,NULL),(6,'Grüße, 東京 ✓'),(7,"dq ) \" (");
INSERT INTO `notes` VALUES
(8,'second statement\n(line)'),
(9,'newer dumps: a tuple per line');
/*!40000 ALTER TABLE `notes` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t AFTER INSERT ON `notes` FOR EACH ROW
INSERT INTO `log` VALUES (NEW.id) */;;
DELIMITER ;

--
-- Dumping data for table `empty`
--

LOCK TABLES `empty` WRITE;
UNLOCK TABLES;

--
-- Dumping data for table `we``ird`
--

INSERT INTO `we``ird` VALUES (1),(2);
-- Dump completed on 2026-12-07  3:40:00
"#;

    #[test]
    fn rows_are_counted_in_the_dump_text() {
        let want = BTreeMap::from([
            ("notes".to_string(), 9),
            ("empty".to_string(), 0),
            ("we`ird".to_string(), 2),
        ]);
        // Whatever the chunk boundaries.
        for chunk in [1, 2, 3, 7, 64, 100_000] {
            assert_eq!(count(DUMP, chunk), want, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_dump_cut_inside_an_insert_is_refused() {
        let mut c = RowCounter::default();
        c.feed(b"-- Dumping data for table `t`\nINSERT INTO `t` VALUES (1,'a'),(2,");
        assert_eq!(c.current(), "t");
        assert_eq!(
            c.finish().unwrap_err(),
            "the dump ended inside an INSERT into t"
        );
        // An INSERT outside the table's own data section is not its rows.
        assert_eq!(count("INSERT INTO `t` VALUES (1);\n", 5), BTreeMap::new());
    }

    #[tokio::test]
    async fn a_psql_meta_command_is_never_run() {
        // Refused before any engine is asked (this "socket" is a plain
        // file that nothing listens on).
        let socket = tempfile::NamedTempFile::new().unwrap();
        let docker = Docker::connect_with_unix(
            socket.path().to_str().unwrap(),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let on = Located {
            id: "x".into(),
            name: "db".into(),
        };
        let login = Login {
            engine: DbEngine::Postgres,
            user: "app".into(),
            password: None,
            database: "app".into(),
        };
        let err = psql_command(&docker, &on, &login, "app", "  \\! touch /tmp/owned")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "a psql meta-command is not SQL; a check is one SQL query"
        );
    }

    #[test]
    fn quoted_names_are_read() {
        assert_eq!(unquote(b"`a``b`").as_deref(), Some("a`b"));
        assert_eq!(unquote(b"`a`b`"), None);
        assert_eq!(unquote(b"a"), None);
    }
}
