//! TLS configuration for both ends of a Ward connection.
//!
//! The gateway accepts only TLS 1.3 with ALPN `ward/1`, and asks the CA's validation API
//! ([`ward_ca::Validator`]) about every client certificate: rustls' own chain building is not used,
//! so the same checks (chain, skew-bounded validity, EKU, not a CA, SPIFFE identity, lifetime cap)
//! apply on QUIC and on the TLS-over-TCP fallback. The client verifies the gateway against Ward's root
//! with webpki, never with verification switched off.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use ward_ca::{Clock, Usage, ValidationError, Validator};

/// ALPN protocol id for Ward's session protocol.
pub const ALPN: &[u8] = ward_core::frame::ALPN;

/// The crypto provider Ward uses everywhere (aws-lc-rs: markedly faster AES-GCM than ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text =
        std::fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    let certs = pem::parse_many(&text)
        .with_context(|| format!("{} is not PEM", path.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect::<Vec<_>>();
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Read a PKCS#8 / SEC1 private key from a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    // A key others can read is refused, with the `chmod 600` that fixes it.
    if path.exists() {
        ward_ca::check_private_key(path)?;
    }
    let text = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    let blocks =
        pem::parse_many(&text).with_context(|| format!("{} is not PEM", path.display()))?;
    for block in blocks {
        let der = block.contents().to_vec();
        match block.tag() {
            "PRIVATE KEY" => return Ok(PrivateKeyDer::Pkcs8(der.into())),
            "EC PRIVATE KEY" => return Ok(PrivateKeyDer::Sec1(der.into())),
            _ => {}
        }
    }
    Err(anyhow!("{} holds no private key", path.display()))
}

/// Identities the handshake verifier just validated, keyed by the exact leaf DER, so the gateway
/// does not verify the same chain twice per connection (a measurable share of handshake CPU).
/// One-shot: an entry is removed when the connection picks it up. Bounded.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    map: std::sync::Mutex<std::collections::HashMap<Vec<u8>, ward_ca::Identity>>,
}

/// Most entries kept (handshakes in flight at once).
const VERIFIED_CACHE_MAX: usize = 4096;

impl VerifiedCache {
    fn put(&self, leaf: &[u8], id: ward_ca::Identity) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= VERIFIED_CACHE_MAX {
                m.clear();
            }
            m.insert(leaf.to_vec(), id);
        }
    }

    /// The identity validated for exactly this leaf during the handshake, if any.
    pub fn take(&self, leaf: &[u8]) -> Option<ward_ca::Identity> {
        self.map.lock().ok()?.remove(leaf)
    }
}

/// Client-certificate verifier that delegates every decision to Ward's CA validation API.
pub struct WardClientVerifier {
    validator: Validator,
    cache: Option<Arc<VerifiedCache>>,
    clock: Arc<dyn Clock>,
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl std::fmt::Debug for WardClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WardClientVerifier").finish_non_exhaustive()
    }
}

impl WardClientVerifier {
    /// A verifier over `validator`, asking `clock` for `now`.
    pub fn new(validator: Validator, clock: Arc<dyn Clock>) -> Self {
        Self {
            validator,
            clock,
            provider: provider(),
            hints: Vec::new(),
            cache: None,
        }
    }

    /// Also leave each validated identity in `cache` for the connection to pick up.
    pub fn with_cache(mut self, cache: Arc<VerifiedCache>) -> Self {
        self.cache = Some(cache);
        self
    }
}

/// Map a CA validation failure to the closest TLS alert, from its type. The peer learns only the
/// alert (and, on QUIC, the alert's name): never the trust domain, caps or internal types, which
/// stay in the gateway's log and audit trail.
fn to_rustls(e: ValidationError) -> rustls::Error {
    use ValidationError as V;
    let ce = match e {
        V::Expired { .. } => CertificateError::Expired,
        V::NotYetValid { .. } => CertificateError::NotValidYet,
        V::ChainTooLong { .. }
        | V::UnknownIntermediate
        | V::WrongIssuer { .. }
        | V::BadSignature
        | V::WrongTrustDomain { .. } => CertificateError::UnknownIssuer,
        V::IsCa | V::MissingEku { .. } => CertificateError::InvalidPurpose,
        V::Parse { .. } => CertificateError::BadEncoding,
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for WardClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    /// A client without a certificate completes the handshake but can only log in (`ward
    /// login`); the gateway refuses every other request on such a connection. A certificate that
    /// is presented must validate, or the handshake fails.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ints: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        match self
            .validator
            .validate(end_entity.as_ref(), &ints, Usage::Client, self.clock.now())
        {
            Ok(id) => {
                if let Some(cache) = &self.cache {
                    cache.put(end_entity.as_ref(), id);
                }
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => {
                tracing::warn!(event = "handshake_refused", reason = %ward_core::Escaped(&e.to_string()), "client certificate refused");
                Err(to_rustls(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The server config only enables TLS 1.3; reaching this would be a rustls bug.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The gateway's TLS server configuration: TLS 1.3 only, ALPN `ward/1`, client certificates required
/// and validated by Ward's CA, no 0-RTT.
pub fn server_config(
    validator: Validator,
    clock: Arc<dyn Clock>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cache: Arc<VerifiedCache>,
) -> anyhow::Result<rustls::ServerConfig> {
    let verifier = Arc::new(WardClientVerifier::new(validator, clock).with_cache(cache));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("gateway certificate and key do not match")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    cfg.send_half_rtt_data = false;
    Ok(cfg)
}

/// TLS 1.3 only, trusting only Ward's root; the caller chooses the client authentication.
fn client_builder(
    root: CertificateDer<'static>,
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(root)
        .context("Ward root certificate is not usable as a trust anchor")?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_root_certificates(roots))
}

/// ALPN `ward/1`, and no 0-RTT: early data could be replayed.
fn finish_client(mut cfg: rustls::ClientConfig) -> rustls::ClientConfig {
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    cfg
}

/// A client config without a client certificate: for `ward login` only (the gateway refuses
/// every other request on such a connection).
pub fn anonymous_client_config(
    root: CertificateDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    Ok(finish_client(client_builder(root)?.with_no_client_auth()))
}

/// The client's TLS configuration: trusts only Ward's root, presents the user's identity.
pub fn client_config(
    root: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    Ok(finish_client(
        client_builder(root)?
            .with_client_auth_cert(chain, key)
            .context("identity certificate and key do not match")?,
    ))
}
