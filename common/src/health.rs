//! Host health as the coordinator stores and shows it: a serde mirror of
//! `ferry.v1.HostHealth`, with conversions both ways.

use serde::{Deserialize, Serialize};

use ferry_proto::v1 as pb;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    pub docker_reachable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_error: String,
    pub postgres_configured: bool,
    pub postgres_reachable: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postgres_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postgres_error: String,
    #[serde(default)]
    pub disks: Vec<DiskUsage>,
    pub observed_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub mount: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl From<pb::HostHealth> for HostHealth {
    fn from(h: pb::HostHealth) -> Self {
        HostHealth {
            docker_reachable: h.docker_reachable,
            docker_version: h.docker_version,
            docker_error: h.docker_error,
            postgres_configured: h.postgres_configured,
            postgres_reachable: h.postgres_reachable,
            postgres_version: h.postgres_version,
            postgres_error: h.postgres_error,
            disks: h
                .disks
                .into_iter()
                .map(|d| DiskUsage {
                    mount: d.mount,
                    free_bytes: d.free_bytes,
                    total_bytes: d.total_bytes,
                })
                .collect(),
            observed_at_ms: h.observed_at_ms,
        }
    }
}

impl From<HostHealth> for pb::HostHealth {
    fn from(h: HostHealth) -> Self {
        pb::HostHealth {
            docker_reachable: h.docker_reachable,
            docker_version: h.docker_version,
            docker_error: h.docker_error,
            postgres_configured: h.postgres_configured,
            postgres_reachable: h.postgres_reachable,
            postgres_version: h.postgres_version,
            postgres_error: h.postgres_error,
            disks: h
                .disks
                .into_iter()
                .map(|d| pb::DiskUsage {
                    mount: d.mount,
                    free_bytes: d.free_bytes,
                    total_bytes: d.total_bytes,
                })
                .collect(),
            observed_at_ms: h.observed_at_ms,
        }
    }
}

/// "12.3 GiB" style sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire_type() {
        let h = HostHealth {
            docker_reachable: true,
            docker_version: "28.2".into(),
            disks: vec![DiskUsage {
                mount: "/".into(),
                free_bytes: 5,
                total_bytes: 10,
            }],
            observed_at_ms: 42,
            ..Default::default()
        };
        let wire: pb::HostHealth = h.clone().into();
        assert_eq!(HostHealth::from(wire), h);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HostHealth>(&json).unwrap(), h);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
