//! `ferry-coordinator init`: a new data dir with the CA, the server
//! certificate, the configuration and the first admin's credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_common::credentials::Credentials;
use ferry_common::fsutil::{self, Mode};
use ferry_common::identity::{Identity, validate_name};
use ferry_common::pki::{self, CertificateAuthority};

use crate::config::{self, CoordinatorConfig};
use crate::error::CoordinatorError;
use crate::secrets_key::{self, SecretsKey};

/// What `init` needs; unset fields keep the defaults.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub trust_domain: Option<String>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub sans: Vec<String>,
    pub advertise: Option<String>,
    pub admin_name: Option<String>,
    /// Overrides of the configuration, e.g. short certificate lifetimes in tests.
    pub tweak: Option<fn(&mut CoordinatorConfig)>,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    pub config: CoordinatorConfig,
    pub credentials_path: PathBuf,
    pub ca_pin: String,
    /// The key every secret is encrypted with; coordinators sharing a
    /// PostgreSQL store need the same one.
    pub secrets_key_path: PathBuf,
}

/// Creates the data dir's contents. Refuses if the dir already holds a
/// coordinator, and writes nothing in that case.
pub fn init(opts: &InitOptions) -> Result<InitOutcome, CoordinatorError> {
    let dir = &opts.data_dir;
    for existing in [
        config::CONFIG_FILE,
        config::CA_CERT_FILE,
        config::CA_KEY_FILE,
    ] {
        let p = dir.join(existing);
        if p.exists() {
            return Err(CoordinatorError::AlreadyInitialized { path: p });
        }
    }
    let mut config = CoordinatorConfig::default();
    if let Some(td) = &opts.trust_domain {
        config.trust_domain = td.clone();
    }
    if let Some(l) = opts.listen {
        config.listen = l;
    }
    if let Some(l) = opts.admin_listen {
        config.admin_listen = l;
    }
    if !opts.sans.is_empty() {
        config.sans = opts.sans.clone();
    }
    if let Some(name) = &opts.admin_name {
        validate_name(name).map_err(|reason| CoordinatorError::InvalidArgument {
            what: "--admin-name".into(),
            reason,
        })?;
        config.admin_name = name.clone();
    }
    config.advertise = match &opts.advertise {
        Some(a) => a.clone(),
        None => default_advertise(&config),
    };
    if let Some(tweak) = opts.tweak {
        tweak(&mut config);
    }
    config.validate()?;

    let ca = CertificateAuthority::generate(&config.trust_domain)?;
    let server = ca.issue_server(&config.sans, config.server_cert_ttl)?;
    let (admin_key, admin_csr) = pki::generate_key_and_csr(&config.admin_name)?;
    let admin_uri = Identity::Operator(config.admin_name.clone()).uri(&config.trust_domain);
    let admin_cert = ca.sign_client_csr(
        &admin_csr,
        &admin_uri,
        &config.admin_name,
        config.operator_cert_ttl,
    )?;

    std::fs::create_dir_all(dir).map_err(|e| fsutil::FileError::io(dir, e))?;
    restrict_dir(dir)?;
    let write = |name: &str, body: &str, mode: Mode| {
        fsutil::write_atomic(&dir.join(name), body.as_bytes(), mode, false)
    };
    write(config::CA_KEY_FILE, &ca.key_pem(), Mode::Private)?;
    write(config::CA_CERT_FILE, ca.cert_pem(), Mode::Public)?;
    write(config::SERVER_KEY_FILE, &server.key_pem, Mode::Private)?;
    write(
        config::SERVER_CERT_FILE,
        &format!("{}{}", server.cert_pem, ca.cert_pem()),
        Mode::Public,
    )?;
    let credentials_path = dir.join(config::ADMIN_CREDENTIALS_FILE);
    Credentials {
        coordinator: config.advertise.clone(),
        name: config.admin_name.clone(),
        ca: ca.cert_pem().to_string(),
        certificate: admin_cert.cert_pem,
        key: admin_key,
    }
    .save(&credentials_path, false)?;
    // A key already there was put there on purpose (copied from a
    // coordinator whose store this one will share): keep it.
    let secrets_key_path = dir.join(secrets_key::KEY_FILE);
    if !secrets_key_path.exists() {
        SecretsKey::create_file(&secrets_key_path)?;
    }
    let text = format!(
        "# Ferry coordinator configuration, written by `ferry-coordinator init`.\n\
         # Every field is optional; FERRY_* variables and flags override it.\n{}",
        toml::to_string(&config).map_err(|e| CoordinatorError::Internal(e.to_string()))?
    );
    // The config goes last: its presence marks a complete data dir.
    write(config::CONFIG_FILE, &text, Mode::Public)?;
    Ok(InitOutcome {
        config,
        credentials_path,
        ca_pin: ca.pin(),
        secrets_key_path,
    })
}

fn default_advertise(config: &CoordinatorConfig) -> String {
    let host = if config.listen.ip().is_unspecified() {
        config
            .sans
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into())
    } else {
        config.listen.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("https://{host}:{}", config.listen.port())
}

fn restrict_dir(dir: &Path) -> Result<(), CoordinatorError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fsutil::FileError::io(dir, e).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_everything_once() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            data_dir: tmp.path().join("coord"),
            trust_domain: Some("ferry.test".into()),
            ..Default::default()
        };
        let out = init(&opts).unwrap();
        assert_eq!(out.config.advertise, "https://127.0.0.1:7443");
        let creds = Credentials::load(&out.credentials_path).unwrap();
        assert_eq!(creds.name, "admin");
        let mode = std::fs::metadata(&out.credentials_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let info = pki::cert_info_pem(&creds.certificate).unwrap();
        assert_eq!(
            info.uris,
            vec!["spiffe://ferry.test/operator/admin".to_string()]
        );
        assert_eq!(pki::pin_of_pem(&creds.ca).unwrap(), out.ca_pin);
        let loaded = CoordinatorConfig::load(&opts.data_dir).unwrap();
        assert_eq!(loaded, out.config);
        let key_mode = std::fs::metadata(&out.secrets_key_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        let key = SecretsKey::load(&out.secrets_key_path).unwrap();

        let before = std::fs::read(opts.data_dir.join(config::CA_KEY_FILE)).unwrap();
        let err = init(&opts).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(
            std::fs::read(opts.data_dir.join(config::CA_KEY_FILE)).unwrap(),
            before
        );
        assert_eq!(SecretsKey::load(&out.secrets_key_path).unwrap(), key);
    }

    #[test]
    fn a_secrets_key_put_there_beforehand_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("coord");
        let shared = SecretsKey::create_file(&dir.join(secrets_key::KEY_FILE)).unwrap();
        let out = init(&InitOptions {
            data_dir: dir,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(SecretsKey::load(&out.secrets_key_path).unwrap(), shared);
    }

    #[test]
    fn bad_san_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            data_dir: tmp.path().join("coord"),
            sans: vec!["not a name".into()],
            ..Default::default()
        };
        assert!(init(&opts).is_err());
        assert!(!opts.data_dir.exists());
    }
}
