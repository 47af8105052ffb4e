//! `ferry-agent enroll`: trade a join token for a certificate. The key is
//! generated here and never leaves the host; the coordinator is trusted only
//! if its CA matches the pin the admin handed over with the token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_common::fsutil::{self, Mode};
use ferry_common::pki;
use ferry_common::tls;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;

use crate::config::{self, AgentConfig, NginxConfig};
use crate::error::AgentError;

#[derive(Debug, Clone, Default)]
pub struct EnrollOptions {
    pub coordinator: String,
    pub token: String,
    pub ca_pin: String,
    pub state_dir: PathBuf,
    pub name: Option<String>,
    pub postgres_url: Option<String>,
    /// `[nginx]` of the agent.toml written (`--nginx-upstream-dir`,
    /// `--nginx-reload`, `--nginx-test`; the defaults otherwise).
    pub nginx: NginxConfig,
}

#[derive(Debug, Clone)]
pub struct Enrolled {
    pub agent_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub not_after: String,
}

pub async fn enroll(opts: &EnrollOptions) -> Result<Enrolled, AgentError> {
    let pin = pki::normalize_pin(&opts.ca_pin).map_err(|reason| AgentError::Usage {
        what: "--ca-pin".into(),
        reason,
    })?;
    tls::parse_url(&opts.coordinator).map_err(|e| AgentError::Usage {
        what: "--coordinator".into(),
        reason: e.to_string(),
    })?;
    check_nginx(&opts.nginx)?;
    if let Ok(existing) = AgentConfig::load(&opts.state_dir) {
        return Err(AgentError::AlreadyEnrolled {
            dir: opts.state_dir.clone(),
            name: existing.name,
            id: existing.agent_id,
        });
    }
    let hostname = ferry_common::host::hostname();
    let (key_pem, csr_pem) = pki::generate_key_and_csr(opts.name.as_deref().unwrap_or(&hostname))?;
    let (tls_config, observed) = tls::pinned_client_config(&pin)?;
    let channel = match tls::channel(&opts.coordinator, tls_config).await {
        Ok(c) => c,
        Err(e) => {
            return Err(match observed.presented() {
                Some(presented) if presented != pin => AgentError::PinMismatch {
                    presented,
                    expected: pin,
                },
                _ => AgentError::Unreachable(e.to_string()),
            });
        }
    };
    let reply = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: opts.token.trim().to_string(),
            csr_pem,
            hostname,
            name: opts.name.clone().unwrap_or_default(),
            version: ferry_common::VERSION.into(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => AgentError::Unreachable(tls::error_chain(&s)),
            _ => AgentError::EnrollRefused(s.message().to_string()),
        })?
        .into_inner();
    // Belt and braces: the CA the coordinator hands back must be the pinned one.
    let returned = pki::pin_of_pem(&reply.ca_pem)?;
    if returned != pin {
        return Err(AgentError::PinMismatch {
            presented: returned,
            expected: pin,
        });
    }
    let not_after = pki::cert_info_pem(&reply.certificate_pem)?.not_after;
    write_state(&opts.state_dir, &key_pem, &reply)?;
    let labels: BTreeMap<String, String> = reply.labels.into_iter().collect();
    AgentConfig {
        agent_id: reply.agent_id.clone(),
        name: reply.name.clone(),
        trust_domain: reply.trust_domain,
        coordinators: vec![opts.coordinator.clone()],
        labels: labels.clone(),
        postgres_url: opts.postgres_url.clone(),
        docker_socket: "/var/run/docker.sock".into(),
        disk_paths: Vec::new(),
        max_concurrent_tasks: None,
        capabilities: None,
        nginx: opts.nginx.clone(),
        backup_dir: None,
        pg_bin_dir: None,
    }
    // Written last: its presence means enrollment completed.
    .save(&opts.state_dir, false)?;
    Ok(Enrolled {
        agent_id: reply.agent_id,
        name: reply.name,
        labels,
        not_after: ferry_common::time::rfc3339(not_after),
    })
}

/// The nginx settings of the enroll flags, checked before anything is
/// written: a relative directory would depend on the agent's working
/// directory, and an empty command cannot run.
fn check_nginx(nginx: &NginxConfig) -> Result<(), AgentError> {
    let usage = |what: &str, reason: String| AgentError::Usage {
        what: what.into(),
        reason,
    };
    if !nginx.upstream_dir.is_absolute() {
        return Err(usage(
            "--nginx-upstream-dir",
            format!(
                "{} is not an absolute path; give the directory the nginx site includes, e.g. /etc/nginx/ferry-upstreams",
                nginx.upstream_dir.display()
            ),
        ));
    }
    if nginx.reload_command.is_empty() {
        return Err(usage(
            "--nginx-reload",
            "is empty; give the command that reloads nginx, e.g. \"nginx -s reload\"".into(),
        ));
    }
    Ok(())
}

fn write_state(dir: &Path, key_pem: &str, reply: &pb::EnrollResponse) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| fsutil::FileError::io(dir, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fsutil::FileError::io(dir, e))?;
    }
    fsutil::write_atomic(
        &dir.join(config::KEY_FILE),
        key_pem.as_bytes(),
        Mode::Private,
        true,
    )?;
    fsutil::write_atomic(
        &dir.join(config::CERT_FILE),
        reply.certificate_pem.as_bytes(),
        Mode::Public,
        true,
    )?;
    fsutil::write_atomic(
        &dir.join(config::CA_FILE),
        reply.ca_pem.as_bytes(),
        Mode::Public,
        true,
    )?;
    Ok(())
}
