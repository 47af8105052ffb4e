//! TLS for both ends of every Ferry connection (rustls with the ring
//! provider).
//!
//! The server *asks* for a client certificate but lets the handshake finish
//! without a valid one; the certificate is verified per RPC by
//! [`PeerVerifier`]. That is what lets `Enroll` work without a certificate,
//! and lets every refusal (foreign CA, expired, no certificate) reach the
//! client as a gRPC status with words in it instead of a bare handshake
//! alert. Possession of the key is still proven in the handshake: the
//! handshake signature is checked by the ring provider as usual.
//!
//! Clients connect through [`channel`], a tonic channel over our own rustls
//! connector, so the agent can pin the CA by fingerprint during enrollment.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::pki::{self, PkiError};

/// Installs the ring crypto provider as the process default. Every binary
/// and test calls it first; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors while building TLS configurations or connecting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the private key is not valid PEM: {0}")]
    BadKey(String),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("{url:?} is not a coordinator address; expected https://HOST:PORT")]
    BadUrl { url: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in pki::certs_from_pem(ca_pem, "the CA certificate")? {
        store.add(cert)?;
    }
    Ok(store)
}

fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey(e.to_string()))
}

/// Server side: present `chain_pem` (server certificate first, then the CA,
/// so agents can pin it), request a client certificate, defer its check.
pub fn server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pki::certs_from_pem(chain_pem, "the server certificate chain")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier {
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_single_cert(chain, private_key(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The handshake-signature half of a certificate verifier: checked with the
/// ring provider's algorithms, whatever the verifier decides about trust.
/// Both of our verifiers (client and server side) share it.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Accepts any client certificate chain at the handshake (after checking the
/// handshake signature), leaving trust decisions to [`PeerVerifier`].
#[derive(Debug)]
struct DeferredClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    handshake_signatures!();
}

/// Why a client certificate was not accepted, in words for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerCertError {
    #[error(
        "a client certificate is required; use the credentials file `ferry-coordinator init` or `ferry operator add` wrote (--credentials FILE or FERRY_CREDENTIALS)"
    )]
    Missing,
    #[error(
        "the client certificate expired at {not_after}; an agent renews its own before that, an operator needs new credentials (`ferry operator add`)"
    )]
    Expired { not_after: String },
    #[error("the client certificate is not valid before {not_before}; check this host's clock")]
    NotYetValid { not_before: String },
    #[error("the client certificate was not issued by this coordinator's CA (issuer: {issuer})")]
    UnknownIssuer { issuer: String },
    #[error("the client certificate has no spiffe:// identity")]
    NoIdentity,
    #[error("the client certificate is not acceptable: {0}")]
    Invalid(String),
}

/// Verifies client certificate chains against the coordinator's CA.
#[derive(Clone)]
pub struct PeerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerVerifier")
    }
}

impl PeerVerifier {
    pub fn new(ca_pem: &str) -> Result<Self, TlsError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        Ok(PeerVerifier { inner })
    }

    /// Checks the chain (end entity first) and returns its URI SANs.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<Vec<String>, PeerCertError> {
        let (end_entity, intermediates) = chain.split_first().ok_or(PeerCertError::Missing)?;
        let info = pki::cert_info(end_entity).map_err(|e| PeerCertError::Invalid(e.to_string()))?;
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
        {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(e)) => {
                return Err(match e {
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        PeerCertError::Expired {
                            not_after: crate::time::rfc3339(info.not_after),
                        }
                    }
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        PeerCertError::NotYetValid {
                            not_before: crate::time::rfc3339(info.not_before),
                        }
                    }
                    CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                        PeerCertError::UnknownIssuer {
                            issuer: info.issuer,
                        }
                    }
                    other => PeerCertError::Invalid(format!("{other:?}")),
                });
            }
            Err(other) => return Err(PeerCertError::Invalid(other.to_string())),
        }
        if info.uris.is_empty() {
            return Err(PeerCertError::NoIdentity);
        }
        Ok(info.uris)
    }
}

/// Client side, trusting only `ca_pem`, optionally presenting a certificate.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => builder.with_client_auth_cert(
            pki::certs_from_pem(cert_pem, "the client certificate")?,
            private_key(key_pem)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the pinned verifier saw, so enrollment can say which CA a
/// mismatching coordinator presented.
#[derive(Debug, Default, Clone)]
pub struct PinObservation(Arc<Mutex<Option<String>>>);

impl PinObservation {
    /// The pin of the CA the coordinator presented, if a handshake got that far.
    pub fn presented(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Client side for enrollment, before the host has the CA: trusts a server
/// whose chain includes a CA certificate with the expected pin and whose
/// certificate that CA signed.
pub fn pinned_client_config(pin: &str) -> Result<(Arc<ClientConfig>, PinObservation), TlsError> {
    let observed = PinObservation::default();
    let verifier = PinnedCaVerifier {
        pin: pin.to_string(),
        observed: observed.clone(),
        algorithms: provider().signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), observed))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    observed: PinObservation,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = intermediates.iter().map(|c| pki::pin_of_der(c)).collect();
        if let Ok(mut slot) = self.observed.0.lock() {
            *slot = presented.last().cloned();
        }
        let Some(ca) = intermediates
            .iter()
            .find(|c| pki::pin_of_der(c) == self.pin)
        else {
            return Err(rustls::Error::General(format!(
                "the coordinator's CA ({}) does not match the pinned CA {}",
                presented
                    .last()
                    .map(String::as_str)
                    .unwrap_or("none presented"),
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }
    handshake_signatures!();
}

/// Splits `https://host:port` into host and port.
pub fn parse_url(url: &str) -> Result<(String, u16), TlsError> {
    let bad = || TlsError::BadUrl {
        url: url.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri
        .host()
        .ok_or_else(bad)?
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(443)))
}

/// How long a client waits for TCP + TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn endpoint(url: &str) -> Result<(Endpoint, Connector), TlsError> {
    let (host, port) = parse_url(url)?;
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    // The scheme is http because TLS happens in our connector, not in tonic.
    let endpoint = Endpoint::from_shared(format!("http://{bracketed}:{port}"))
        .map_err(|_| TlsError::BadUrl {
            url: url.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let server_name = ServerName::try_from(host.clone()).map_err(|_| TlsError::BadUrl {
        url: url.to_string(),
    })?;
    Ok((
        endpoint,
        Connector {
            server_name,
            addr: format!("{bracketed}:{port}"),
        },
    ))
}

/// Connects to `url` (`https://host:port`) with `config`.
pub async fn channel(url: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let (endpoint, connector) = endpoint(url)?;
    endpoint
        .connect_with_connector(connector.with(config))
        .await
        .map_err(|e| TlsError::Connect {
            url: url.to_string(),
            reason: error_chain(&e),
        })
}

/// Like [`channel`] but connects on first use.
pub fn channel_lazy(url: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let (endpoint, connector) = endpoint(url)?;
    Ok(endpoint.connect_with_connector_lazy(connector.with(config)))
}

#[derive(Clone)]
struct Connector {
    server_name: ServerName<'static>,
    addr: String,
}

impl Connector {
    fn with(self, config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector {
            inner: tokio_rustls::TlsConnector::from(config),
            server_name: self.server_name,
            addr: self.addr,
        }
    }
}

#[derive(Clone)]
struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    addr: String,
}

type ConnectFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
            > + Send,
    >,
>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = this.inner.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Joins an error and its sources into one line, deduplicating repeats, so a
/// transport failure says what actually went wrong.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, generate_key_and_csr};

    #[test]
    fn urls_are_parsed() {
        assert_eq!(
            parse_url("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            parse_url("https://coord.example").unwrap(),
            ("coord.example".into(), 443)
        );
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("nonsense").is_err());
    }

    #[test]
    fn peer_verifier_explains_refusals() {
        install_crypto_provider();
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let other = CertificateAuthority::generate("ferry.test").unwrap();
        let verifier = PeerVerifier::new(ca.cert_pem()).unwrap();
        let (_k, csr) = generate_key_and_csr("x").unwrap();
        let uri = "spiffe://ferry.test/operator/alice";
        let der = |pem: &str| pki::certs_from_pem(pem, "test").unwrap();

        let good = ca
            .sign_client_csr(&csr, uri, "alice", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            verifier.verify(&der(&good.cert_pem)).unwrap(),
            vec![uri.to_string()]
        );

        let foreign = other
            .sign_client_csr(&csr, uri, "alice", Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            verifier.verify(&der(&foreign.cert_pem)),
            Err(PeerCertError::UnknownIssuer { .. })
        ));

        let start = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
        let expired = ca
            .sign_client_csr_at(&csr, uri, "alice", start, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            verifier.verify(&der(&expired.cert_pem)),
            Err(PeerCertError::Expired { .. })
        ));
        assert_eq!(verifier.verify(&[]), Err(PeerCertError::Missing));
    }
}
