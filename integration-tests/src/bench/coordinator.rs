//! The coordinator under test, as a child process running the real
//! `ferry-coordinator` binary.
//!
//! Why a child and not a task in the bench: the file-descriptor hard limit
//! here is 20,000, and 10,000 agent connections need 10,000 descriptors on
//! each end. In two processes each side fits; it also makes the memory
//! figure the coordinator's own (`/proc/<pid>/status`), and lets the restart
//! phase be a real `SIGKILL`.
//!
//! The child is killed when this value is dropped (`kill_on_drop`), so a
//! failing or interrupted bench leaves no coordinator behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_common::credentials::Credentials;
use ferry_common::tls;
use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Largest reply the bench accepts: `GetJob` of a job on 10,000 agents is
/// several MiB, above tonic's 4 MiB default.
const MAX_REPLY: usize = 256 << 20;

/// Resident memory of the coordinator process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident so far, KiB.
    pub peak_kib: u64,
}

#[derive(Debug)]
pub struct ChildCoordinator {
    bin: PathBuf,
    data_dir: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    database_url: Option<String>,
    log_path: PathBuf,
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`, what agents and operators dial.
    pub url: String,
    admin: Credentials,
}

/// A port free right now on 127.0.0.1 (bind to 0, read it, release it).
fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Variables the coordinator would read and that must not leak from the
/// bench's environment into the measurement (another store, another port).
const SCRUBBED_ENV: [&str; 5] = [
    "FERRY_LISTEN",
    "FERRY_ADMIN_LISTEN",
    "FERRY_DATABASE_URL",
    "FERRY_ADVERTISE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

impl ChildCoordinator {
    /// `ferry-coordinator init` into `data_dir` on two free ports.
    pub async fn init(bin: &Path, data_dir: &Path, database_url: Option<String>) -> Result<Self> {
        let (listen, admin_listen) = (free_port()?, free_port()?);
        let log_path = data_dir.with_extension("log");
        let out = Command::new(bin)
            .arg("init")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin-listen")
            .arg(admin_listen.to_string())
            .stdin(Stdio::null())
            .stdout(log_file(&log_path)?)
            .stderr(log_file(&log_path)?)
            .status()
            .await
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !out.success() {
            bail!(
                "`{} init` failed ({out}); its output is in {}",
                bin.display(),
                log_path.display()
            );
        }
        // Every simulated agent connects from 127.0.0.1, where real ones
        // come from an address each: lift the per-address share of the
        // pool of not-yet-identified connections, or the bench would
        // measure the eviction of its own reconnecting agents.
        let config_path = data_dir.join("coordinator.toml");
        let config: String = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?
            .lines()
            .map(|line| match line.split_once(" = ") {
                Some(("max_untrusted" | "max_untrusted_per_address", _)) => {
                    format!("{} = 20000\n", line.split(' ').next().unwrap_or_default())
                }
                _ => format!("{line}\n"),
            })
            .collect();
        if !config.contains("max_untrusted_per_address = 20000") {
            bail!("{} has no [limits] to lift", config_path.display());
        }
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let admin = Credentials::load(&data_dir.join("admin.credentials"))
            .context("init wrote no admin credentials")?;
        Ok(ChildCoordinator {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            listen,
            admin_listen,
            database_url,
            log_path,
            child: None,
            url: admin.coordinator.clone(),
            admin,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `ferry-coordinator serve` on the same data dir, port and store;
    /// returns once `GetStatus` answers, with how long that took.
    pub async fn start(&mut self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        self.spawn()?;
        self.wait_ready(started, within).await?;
        Ok(started.elapsed())
    }

    /// Starts `ferry-coordinator serve` without waiting for it.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the coordinator is already running");
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--admin-listen")
            .arg(self.admin_listen.to_string());
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path)?)
            .stderr(log_file(&self.log_path)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Fails with the log's tail if the process has exited.
    fn check_alive(&mut self, doing: &str) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!(
                "the coordinator exited {doing} ({status}); last lines of {}:\n{}",
                self.log_path.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self, started: Instant, within: Duration) -> Result<()> {
        loop {
            self.check_alive("during start-up")?;
            let probe = async {
                let mut op = self.operator().await?;
                op.get_status(pb::GetStatusRequest {}).await?;
                anyhow::Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "the coordinator did not answer GetStatus within {within:?}; last lines of {}:\n{}",
                    self.log_path.display(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the gRPC port accepts TCP connections: the process is
    /// up and serving. Used where an RPC would queue behind thousands of
    /// agents' handshakes and measure them instead.
    pub async fn wait_listening(&mut self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            self.check_alive("during start-up")?;
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!(
                    "the coordinator did not listen on {} within {within:?}; last lines of {}:\n{}",
                    self.listen,
                    self.log_path.display(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// An operator connection, retried until `within`: after a restart the
    /// first attempts may queue behind the agents' reconnects.
    pub async fn operator_within(
        &self,
        within: Duration,
    ) -> Result<OperatorServiceClient<Channel>> {
        let started = Instant::now();
        loop {
            let attempt = async {
                let mut op = self.operator().await?;
                op.get_status(pb::GetStatusRequest {}).await?;
                anyhow::Ok(op)
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(op)) => return Ok(op),
                Ok(Err(e)) if started.elapsed() > within => {
                    return Err(e.context(format!("no operator connection within {within:?}")));
                }
                Err(_) if started.elapsed() > within => {
                    bail!("no operator connection within {within:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The last `n` lines of the coordinator's log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .context("the coordinator is not running")
    }

    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid()?);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// `SIGKILL`, and waits until the process is gone (its sockets closed).
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.start_kill().context("cannot kill the coordinator")?;
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("the coordinator did not exit within 10s of SIGKILL")??;
        Ok(())
    }

    /// A fresh operator connection as the admin `init` created.
    pub async fn operator(&self) -> Result<OperatorServiceClient<Channel>> {
        let creds = &self.admin;
        let config = tls::client_config(&creds.ca, Some((&creds.certificate, &creds.key)))?;
        Ok(
            OperatorServiceClient::new(tls::channel(&self.url, config).await?)
                .max_decoding_message_size(MAX_REPLY),
        )
    }
}
