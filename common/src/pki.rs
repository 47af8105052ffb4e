//! The coordinator's certificate authority and everything that touches
//! certificates: creating the CA, issuing the server certificate, signing
//! CSRs for agents and operators, generating keys and CSRs on the host that
//! will keep the key, CA pins, and reading what a certificate says.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Backdating of `not_before`, so a host whose clock runs a little behind
/// the coordinator's still accepts a fresh certificate. Capped at a tenth of
/// the lifetime, so "renew at two thirds of the validity" stays meaningful
/// for short-lived certificates.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Errors of the PKI boundary.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a key pair: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("could not build the certificate: {0}")]
    Build(rcgen::Error),
    #[error("{what} is not valid PEM: {reason}")]
    BadPem { what: &'static str, reason: String },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("{name:?} is not a valid subject alternative name: {reason}")]
    BadSan { name: String, reason: String },
}

/// A certificate authority held in memory (certificate and signing key).
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("pin", &pin_of_der(&self.cert_der))
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub not_after: OffsetDateTime,
    pub serial_hex: String,
}

/// A key pair and certificate generated together (server certificates).
#[derive(Debug, Clone)]
pub struct KeyAndCert {
    pub key_pem: String,
    pub cert_pem: String,
}

impl CertificateAuthority {
    /// Creates a new CA for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Ferry CA ({trust_domain})"));
        dn.push(DnType::OrganizationName, "Ferry");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(PkiError::Build)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem {
            what: "the CA key",
            reason: e.to_string(),
        })?;
        let cert_der = first_cert_der(cert_pem, "the CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| PkiError::BadPem {
            what: "the CA certificate",
            reason: e.to_string(),
        })?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// `sha256:<hex>` of the CA certificate's DER, what agents pin.
    pub fn pin(&self) -> String {
        pin_of_der(&self.cert_der)
    }

    /// A server certificate (and its key) for the coordinator, valid for
    /// `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<KeyAndCert, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "ferry".into()),
        );
        params.distinguished_name = dn;
        for name in names {
            params.subject_alt_names.push(san_for(name)?);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, OffsetDateTime::now_utc(), ttl);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Build)?;
        Ok(KeyAndCert {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        })
    }

    /// Signs a CSR for the client identity `uri`. Only the CSR's public key
    /// is used: subject, SANs and usages come from the coordinator, never
    /// from the requester.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        uri: &str,
        common_name: &str,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        self.sign_client_csr_at(csr_pem, uri, common_name, OffsetDateTime::now_utc(), ttl)
    }

    /// Like [`Self::sign_client_csr`] with an explicit start time. Tests use
    /// it to make certificates that have already expired.
    pub fn sign_client_csr_at(
        &self,
        csr_pem: &str,
        uri: &str,
        common_name: &str,
        start: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(
            |e: rcgen::Error| PkiError::BadSan {
                name: uri.into(),
                reason: e.to_string(),
            },
        )?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = set_validity(&mut params, start, ttl);
        let not_after = params.not_after;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Build)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            not_after,
            serial_hex: hex::encode(serial.to_bytes()),
        })
    }
}

fn set_validity(
    params: &mut CertificateParams,
    start: OffsetDateTime,
    ttl: Duration,
) -> SerialNumber {
    params.not_before = start - CLOCK_SKEW.min(ttl / 10);
    params.not_after = start + ttl;
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    serial
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and non-zero-led, as RFC 5280 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(PkiError::BadSan {
            name: name.into(),
            reason: "expected a DNS name (letters, digits, '-' and '.') or an IP address".into(),
        });
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|e: rcgen::Error| PkiError::BadSan {
            name: name.into(),
            reason: e.to_string(),
        })
}

/// A new key and a CSR for it. The key is generated here and stays with the
/// caller; only the CSR goes over the wire.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(PkiError::Build)?;
    let csr_pem = csr.pem().map_err(PkiError::Build)?;
    Ok((key.serialize_pem(), csr_pem))
}

/// `sha256:<hex>` of a certificate's DER encoding.
pub fn pin_of_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The pin of the first certificate in `pem`.
pub fn pin_of_pem(pem: &str) -> Result<String, PkiError> {
    Ok(pin_of_der(&first_cert_der(pem, "the certificate")?))
}

/// Normalises a user-supplied pin: accepts `sha256:<hex>` or bare hex, any
/// case, with or without `:` between bytes.
pub fn normalize_pin(pin: &str) -> Result<String, String> {
    let hex_part = pin.trim().strip_prefix("sha256:").unwrap_or(pin.trim());
    let cleaned: String = hex_part
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_lowercase();
    if cleaned.len() != 64 || !cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{pin:?} is not a CA pin; expected \"sha256:\" followed by 64 hex digits (as printed by `ferry token create`)"
        ));
    }
    Ok(format!("sha256:{cleaned}"))
}

/// All certificates in a PEM string, in order.
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::BadPem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn first_cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    Ok(certs_from_pem(pem, what)?.remove(0))
}

/// What Ferry reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub uris: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial_hex: String,
}

/// Reads subject, issuer, URI SANs and validity from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push((*u).to_string());
            }
        }
    }
    let ts = |t: x509_parser::time::ASN1Time| t.to_datetime();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        uris,
        not_before: ts(cert.validity().not_before),
        not_after: ts(cert.validity().not_after),
        serial_hex: hex::encode(cert.raw_serial()),
    })
}

/// [`cert_info`] of the first certificate in a PEM string.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    cert_info(&first_cert_der(pem, "the certificate")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_a_csr_with_the_identity_it_chooses() {
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let (_key, csr) = generate_key_and_csr("whatever-the-host-says").unwrap();
        let issued = ca
            .sign_client_csr(
                &csr,
                "spiffe://ferry.test/operator/alice",
                "alice",
                Duration::from_secs(3600),
            )
            .unwrap();
        let info = cert_info_pem(&issued.cert_pem).unwrap();
        assert_eq!(
            info.uris,
            vec!["spiffe://ferry.test/operator/alice".to_string()]
        );
        assert!(info.subject.contains("alice"));
        assert!(info.issuer.contains("Ferry CA"));
        assert_eq!(info.serial_hex, issued.serial_hex);
        let life = info.not_after - OffsetDateTime::now_utc();
        assert!(life.whole_seconds() > 3500 && life.whole_seconds() <= 3600);
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca.pin(), again.pin());
        let (_k, csr) = generate_key_and_csr("x").unwrap();
        let issued = again
            .sign_client_csr(
                &csr,
                "spiffe://ferry.test/operator/bob",
                "bob",
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            cert_info_pem(&issued.cert_pem)
                .unwrap()
                .issuer
                .contains("Ferry CA")
        );
    }

    #[test]
    fn server_cert_carries_dns_and_ip_names() {
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let kc = ca
            .issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(kc.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(
            ca.issue_server(&["bad name!".into()], Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn pins_are_normalised_and_checked() {
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let pin = ca.pin();
        assert_eq!(pin_of_pem(ca.cert_pem()).unwrap(), pin);
        let bare = pin.trim_start_matches("sha256:").to_uppercase();
        assert_eq!(normalize_pin(&bare).unwrap(), pin);
        assert!(
            normalize_pin("sha256:abc")
                .unwrap_err()
                .contains("64 hex digits")
        );
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = CertificateAuthority::generate("ferry.test").unwrap();
        let err = ca
            .sign_client_csr(
                "not a csr",
                "spiffe://ferry.test/operator/a",
                "a",
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)));
    }
}
