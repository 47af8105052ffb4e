//! What the agent reports about its host in every heartbeat: Docker engine
//! reachable (and its version), PostgreSQL reachable if one is configured,
//! free disk on the watched mounts. Each probe has a short timeout so a hung
//! engine or database delays a heartbeat by seconds at most.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use ferry_common::health::{DiskUsage, HostHealth};
use sqlx::Connection;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A Docker client on the engine's unix socket (connecting is lazy: this
/// fails only for a malformed path).
pub fn connect_docker(socket: &str) -> Result<Docker, String> {
    // Pulls and health gates can be slow; per-call timeouts are applied by
    // the callers that need them.
    Docker::connect_with_unix(socket, 600, bollard::API_DEFAULT_VERSION)
        .map_err(|e| format!("{socket}: {e}"))
}

pub struct HealthProbe {
    docker: Result<Docker, String>,
    postgres_url: Option<String>,
    disk_paths: Vec<PathBuf>,
}

impl HealthProbe {
    pub fn new(
        docker_socket: &str,
        postgres_url: Option<String>,
        disk_paths: Vec<PathBuf>,
    ) -> Self {
        let docker = connect_docker(docker_socket);
        HealthProbe {
            docker,
            postgres_url,
            disk_paths,
        }
    }

    pub async fn collect(&self) -> HostHealth {
        let (docker, postgres) = tokio::join!(self.docker(), self.postgres());
        let mut h = HostHealth {
            observed_at_ms: ferry_common::time::now_ms(),
            postgres_configured: self.postgres_url.is_some(),
            disks: self.disks(),
            ..Default::default()
        };
        match docker {
            Ok(v) => {
                h.docker_reachable = true;
                h.docker_version = v;
            }
            Err(e) => h.docker_error = e,
        }
        match postgres {
            Some(Ok(v)) => {
                h.postgres_reachable = true;
                h.postgres_version = v;
            }
            Some(Err(e)) => h.postgres_error = e,
            None => {}
        }
        h
    }

    async fn docker(&self) -> Result<String, String> {
        let docker = self.docker.as_ref().map_err(Clone::clone)?;
        match tokio::time::timeout(PROBE_TIMEOUT, docker.version()).await {
            Ok(Ok(v)) => Ok(v.version.unwrap_or_else(|| "unknown".into())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        }
    }

    async fn postgres(&self) -> Option<Result<String, String>> {
        let url = self.postgres_url.as_ref()?;
        let probe = async {
            let mut conn = sqlx::postgres::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(version)
        };
        Some(match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        })
    }

    fn disks(&self) -> Vec<DiskUsage> {
        disk_usage(self.disk_paths.iter().cloned())
    }
}

/// Free space of every mounted disk filesystem (not proc, sysfs, tmpfs and
/// the like), one entry per filesystem.
pub fn mounted_disks() -> Vec<DiskUsage> {
    const DISK_FS: [&str; 8] = [
        "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "vfat", "overlay",
    ];
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let paths = mounts.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, mount, fstype) = (f.next()?, f.next()?, f.next()?);
        DISK_FS.contains(&fstype).then(|| PathBuf::from(mount))
    });
    disk_usage(paths)
}

fn disk_usage(paths: impl IntoIterator<Item = PathBuf>) -> Vec<DiskUsage> {
    let mut out: Vec<DiskUsage> = Vec::new();
    for path in paths {
        let Ok(st) = nix::sys::statvfs::statvfs(&path) else {
            continue;
        };
        let frsize = st.fragment_size();
        let usage = DiskUsage {
            mount: path.display().to_string(),
            free_bytes: st.blocks_available().saturating_mul(frsize),
            total_bytes: st.blocks().saturating_mul(frsize),
        };
        // Two paths on one filesystem would repeat the same numbers.
        if !out
            .iter()
            .any(|d| d.total_bytes == usage.total_bytes && d.free_bytes == usage.free_bytes)
        {
            out.push(usage);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_parts_are_reported_with_reasons() {
        let probe = HealthProbe::new(
            "/nonexistent/docker.sock",
            Some("postgres://nobody:x@127.0.0.1:1/none".into()),
            vec![PathBuf::from("/")],
        );
        let h = probe.collect().await;
        assert!(!h.docker_reachable);
        assert!(!h.docker_error.is_empty());
        assert!(h.postgres_configured && !h.postgres_reachable);
        assert!(!h.postgres_error.is_empty());
        assert_eq!(h.disks.len(), 1);
        assert!(h.disks[0].total_bytes > 0);
    }
}
