//! Certificates for the chat: a small local CA, node certificates signed by it, SHA-256
//! fingerprints, and the rustls configurations that use them.
//!
//! Clients trust one CA file for every node of a deployment, or pin one node certificate by
//! its fingerprint. Everything runs on rustls's ring provider: no other provider is compiled
//! in, so the configurations here name it explicitly.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// File names inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("could not read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("could not write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable PEM {what}: {detail}")]
    Pem { path: PathBuf, what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a SHA-256 fingerprint (64 hexadecimal digits, colons allowed)")]
    BadFingerprint(String),
}

/// The only crypto provider the chat uses, preferring TLS_AES_128_GCM_SHA256. The default
/// first choice, AES-256 with SHA-384, runs its key schedule on SHA-512, which has no
/// hardware help on common x86 CPUs (SHA-256 has): 7% of the node's CPU during a handshake
/// flood. Servers pick it whatever the client's order.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The SHA-256 fingerprint of a DER certificate, as lower-case hex with colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Parses a fingerprint as printed by [`fingerprint`], with or without colons, any case.
///
/// # Errors
/// Anything but 32 bytes of hex.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], CertError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || CertError::BadFingerprint(text.to_owned());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pair {
    /// The certificate's DER bytes.
    ///
    /// # Errors
    /// A PEM that does not hold a certificate.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CertError> {
        let mut certs = parse_certs(&self.cert_pem, Path::new("<memory>"))?;
        Ok(certs.swap_remove(0))
    }

    /// Writes `cert_pem` and `key_pem` to the two paths (the key readable by its owner only).
    ///
    /// # Errors
    /// A file that cannot be written.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), CertError> {
        write_file(cert, &self.cert_pem, false)?;
        write_file(key, &self.key_pem, true)
    }

    /// Reads a pair written by [`write`](Self::write).
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn read(cert: &Path, key: &Path) -> Result<Self, CertError> {
        Ok(Self { cert_pem: read_file(cert)?, key_pem: read_file(key)? })
    }
}

/// Creates a CA certificate valid for signing node certificates.
///
/// # Errors
/// Key generation or signing failed.
pub fn generate_ca(common_name: &str) -> Result<Pair, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a node certificate for the given DNS names and IP addresses, signed by `ca`.
///
/// # Errors
/// A CA pair that does not parse, or signing failed.
pub fn issue_node(ca: &Pair, dns_names: &[String], ips: &[IpAddr]) -> Result<Pair, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.subject_alt_names.extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, dns_names.first().map_or("chat node", String::as_str));
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// How long a certificate for browsers lives. Chromium pins a certificate by its hash
/// (WebTransport's `serverCertificateHashes`) only when it is ECDSA P-256 and valid for at
/// most 14 days; a day less leaves room for clocks that disagree.
pub const PINNED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(13 * 86_400);

/// A self-signed certificate that browsers pin by its SHA-256 hash instead of trusting a CA.
#[derive(Debug)]
pub struct PinnedCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// The SHA-256 of `cert`, as a page hands it to `new WebTransport(url, {serverCertificateHashes})`.
    pub sha256: [u8; 32],
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

/// Makes an ECDSA P-256 certificate for `names` and `ips`, valid for [`PINNED_LIFETIME`]
/// from an hour before `from` (a browser whose clock is a little behind still takes it).
///
/// # Errors
/// Key generation or signing failed.
pub fn pinned_cert(
    names: &[String],
    ips: &[IpAddr],
    from: std::time::SystemTime,
) -> Result<PinnedCert, CertError> {
    let not_before = from - std::time::Duration::from_secs(3600);
    let not_after = not_before + PINNED_LIFETIME;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.subject_alt_names.extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, "chat node (for browsers)");
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let der = cert.der().clone();
    let mut sha256 = [0; 32];
    sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    Ok(PinnedCert { cert: der, key, sha256, not_before, not_after })
}

/// What a node found or made in its certificate directory.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub ca_cert: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    /// Whether this call created the CA.
    pub created: bool,
}

/// Makes sure `dir` holds a CA and a node certificate for `localhost`, the loopback
/// addresses and `extra_names`, creating whatever is missing.
///
/// # Errors
/// A file that cannot be read, written or generated.
pub fn ensure_node_files(dir: &Path, extra_names: &[String]) -> Result<NodeFiles, CertError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| CertError::Write { path: dir.to_path_buf(), source })?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let (node_cert, node_key) = (dir.join(NODE_CERT_FILE), dir.join(NODE_KEY_FILE));
    let created = !ca_cert.exists();
    let ca = if created {
        let ca = generate_ca("chat local CA")?;
        ca.write(&ca_cert, &ca_key)?;
        ca
    } else {
        Pair::read(&ca_cert, &ca_key)?
    };
    if created || !node_cert.exists() {
        let mut names = vec!["localhost".to_owned()];
        names.extend(extra_names.iter().cloned());
        let ips = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
        issue_node(&ca, &names, &ips)?.write(&node_cert, &node_key)?;
    }
    Ok(NodeFiles { ca_cert, node_cert, node_key, created })
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// A file that cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    parse_certs(&read_file(path)?, path)
}

/// Every certificate in PEM text, at least one; `origin` names it in errors.
fn parse_certs(pem: &str, origin: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem_error =
        |detail: String| CertError::Pem { path: origin.to_path_buf(), what: "certificate", detail };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
///
/// # Errors
/// A file that cannot be read or holds no key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(read_file(path)?.as_bytes()).map_err(|e| CertError::Pem {
        path: path.to_path_buf(),
        what: "private key",
        detail: e.to_string(),
    })
}

/// The TLS configuration of a node serving `chain` with `key`, speaking `alpn`.
///
/// # Errors
/// A key that does not match the certificate or cannot be used.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// How a client decides to trust a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates signed by the CA in this PEM file.
    CaFile(PathBuf),
    /// Certificates signed by this CA (PEM text).
    CaPem(String),
    /// Exactly the certificate with this SHA-256 fingerprint.
    Fingerprint([u8; 32]),
}

/// The TLS configuration of a client that trusts as `trust` says, speaking `alpn`.
///
/// # Errors
/// A CA file that cannot be read or used.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<rustls::ClientConfig, CertError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let roots = |certs: Vec<CertificateDer<'static>>| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert)?;
        }
        Ok::<_, CertError>(roots)
    };
    let mut config = match trust {
        Trust::CaFile(path) => {
            builder.with_root_certificates(roots(load_certs(path)?)?).with_no_client_auth()
        }
        Trust::CaPem(pem) => builder
            .with_root_certificates(roots(parse_certs(pem, Path::new("<memory>"))?)?)
            .with_no_client_auth(),
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *pin,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Trusts exactly one certificate, by its SHA-256 fingerprint, whatever its names or issuer;
/// the handshake signature is still checked, so only the holder of its key passes.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if digest.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

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
}

fn read_file(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path)
        .map_err(|source| CertError::Read { path: path.to_path_buf(), source })
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let error = |source| CertError::Write { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    options.open(path).and_then(|mut f| f.write_all(contents.as_bytes())).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_with_sha_256_comes_first_and_the_server_insists_on_it() {
        let first = provider().cipher_suites.first().map(rustls::SupportedCipherSuite::suite);
        assert_eq!(first, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ensure_node_files(dir.path(), &[]).expect("node files");
        let chain = load_certs(&files.node_cert).expect("chain");
        let key = load_key(&files.node_key).expect("key");
        assert!(server_config(chain, key, b"chat").expect("config").ignore_client_order);
    }

    #[test]
    fn a_node_certificate_verifies_against_its_ca_and_its_fingerprint() {
        let ca = generate_ca("test CA").expect("CA");
        let node =
            issue_node(&ca, &["localhost".into()], &[IpAddr::from([127, 0, 0, 1])]).expect("node");
        let der = node.cert_der().expect("der");
        let printed = fingerprint(&der);
        assert_eq!(printed.len(), 64 + 31);
        assert_eq!(
            parse_fingerprint(&printed).expect("parses").to_vec(),
            ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
        );
        assert!(parse_fingerprint("abc").is_err());

        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(ca.cert_der().expect("der")).expect("root");
            Arc::new(r)
        };
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .expect("verifier");
        verifier
            .verify_server_cert(
                &der,
                &[],
                &ServerName::try_from("localhost").expect("name"),
                &[],
                UnixTime::now(),
            )
            .expect("the CA vouches for the node");
        let other = generate_ca("other CA").expect("CA");
        let stranger = issue_node(&other, &["localhost".into()], &[]).expect("node");
        assert!(
            verifier
                .verify_server_cert(
                    &stranger.cert_der().expect("der"),
                    &[],
                    &ServerName::try_from("localhost").expect("name"),
                    &[],
                    UnixTime::now()
                )
                .is_err()
        );
    }
}
