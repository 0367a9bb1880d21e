//! Devices that speak TLS themselves (`tls = …` on a device): the gateway is the TLS client, and
//! trusts the device's certificate by its pin alone.
//!
//! Devices mostly present self-signed certificates, often with names and dates nobody maintains,
//! so the chain, the names and the validity period are not checked: the gateway accepts exactly
//! the end-entity certificate whose SHA-256 (of its DER) is pinned, and still verifies the
//! handshake's signatures with it (the device must hold the certificate's key). The pin comes from
//! the config (`tls = { pin = "sha256:…" }`, which wins) or from the store, where a security/admin
//! identity put it with `ward devices pin DEVICE --confirm sha256:…` (audited `device_pinned`).
//! A device without a pin, or presenting another certificate, is refused with a reason that names
//! the fingerprint it presented and the command that pins it.
//!
//! After the handshake the session sees plaintext: the decoders, the operation policy, credential
//! injection and the recording work as for a plain TCP device ([`DeviceConn`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use ward_core::config::{CertPin, Device, DeviceAddress};

/// A connection to a device: plain TCP, or TLS over TCP. The plain variant adds nothing to the
/// data path (the pump splits it into owned halves as before).
pub(crate) enum DeviceConn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS to a device that speaks it, its certificate pinned.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for DeviceConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceConn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            DeviceConn::Tls(s) => match Pin::new(s.as_mut()).poll_read(cx, buf) {
                // Many devices close the TCP connection without a TLS close_notify: the end of
                // their stream, as for a plain device (the protocol's own framing, recorded,
                // shows whether a message was cut short).
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for DeviceConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DeviceConn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            DeviceConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceConn::Tcp(s) => Pin::new(s).poll_flush(cx),
            DeviceConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceConn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            DeviceConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The certificate a device presented in a handshake.
#[derive(Debug, Clone)]
pub(crate) struct Presented {
    /// Its pin.
    pub(crate) pin: CertPin,
    /// Its DER encoding (for `ward devices pin` to show subject, issuer and dates).
    pub(crate) der: Vec<u8>,
}

/// Accepts exactly the pinned end-entity certificate (`None`: none, the handshake only learns
/// what the device presents), and verifies the handshake's signatures with it. Records what the
/// device presented.
#[derive(Debug)]
struct PinVerifier {
    pinned: Option<CertPin>,
    seen: Mutex<Option<Presented>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    fn presented(&self) -> Option<Presented> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = CertPin::of_der(end_entity.as_ref());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Presented {
                pin,
                der: end_entity.as_ref().to_vec(),
            });
        }
        if self.pinned == Some(pin) {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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

/// Why a TLS handshake with a device did not give a session.
#[derive(Debug, Clone)]
pub(crate) enum TlsRefusal {
    /// The device has no pin: nothing is accepted from it yet.
    Unpinned {
        /// What it presented.
        presented: Presented,
    },
    /// The device presented another certificate than the pinned one.
    Changed {
        /// What it presented.
        presented: Presented,
        /// The pin.
        pinned: CertPin,
    },
    /// The handshake failed otherwise (no TLS on the port, no common version or cipher suite, a
    /// bad signature, a timeout).
    Failed(String),
}

impl TlsRefusal {
    /// The reason, for the client, the audit log and the recording.
    pub(crate) fn reason(&self, device: &str) -> String {
        match self {
            TlsRefusal::Unpinned { presented } => format!(
                "device {device} speaks TLS and its certificate is not pinned yet: it presented {}; \
                 a security/admin identity checks that fingerprint against the device and confirms \
                 it with `ward devices pin {device} --confirm {}`",
                presented.pin, presented.pin
            ),
            TlsRefusal::Changed { presented, pinned } => format!(
                "device {device} presented {}, pinned is {pinned}; if the device's certificate was \
                 renewed, a security/admin re-pins with `ward devices pin {device} --confirm {}` \
                 (otherwise something else answers at the device's address)",
                presented.pin, presented.pin
            ),
            TlsRefusal::Failed(why) => format!("TLS handshake with device {device} failed: {why}"),
        }
    }
}

/// The name the handshake carries: the configured `server_name`, else the address's host name,
/// else the IP address (no SNI is sent for an IP).
fn server_name(device: &Device) -> Result<ServerName<'static>, String> {
    let configured = device.tls.as_ref().and_then(|t| t.server_name.clone());
    let name = match (configured, &device.address) {
        (Some(n), _) => n,
        (None, DeviceAddress::Host { host, .. }) => host.clone(),
        (None, DeviceAddress::Ip(addr)) => return Ok(ServerName::from(addr.ip())),
    };
    ServerName::try_from(name.clone()).map_err(|e| format!("server name {name:?}: {e}"))
}

/// TLS over `tcp`, accepting only `pinned`; bounded by `timeout`. With `pinned = None` the
/// handshake always fails (after the device presented its certificate): `ward devices pin`
/// uses that to learn the fingerprint.
pub(crate) async fn handshake(
    device: &Device,
    tcp: TcpStream,
    pinned: Option<CertPin>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Presented), TlsRefusal> {
    let provider = ward_transport::tls::provider();
    let verifier = Arc::new(PinVerifier {
        pinned,
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsRefusal::Failed(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = server_name(device).map_err(TlsRefusal::Failed)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let result = tokio::time::timeout(timeout, connector.connect(name, tcp)).await;
    let presented = verifier.presented();
    match (result, presented) {
        (Ok(Ok(stream)), Some(p)) => Ok((stream, p)),
        (Ok(Ok(_)), None) => Err(TlsRefusal::Failed(
            "the device presented no certificate".into(),
        )),
        (Ok(Err(_)), Some(presented)) if pinned.is_none() => {
            Err(TlsRefusal::Unpinned { presented })
        }
        (Ok(Err(e)), Some(presented)) => match pinned {
            Some(pin) if pin != presented.pin => Err(TlsRefusal::Changed {
                presented,
                pinned: pin,
            }),
            _ => Err(TlsRefusal::Failed(e.to_string())),
        },
        (Ok(Err(e)), None) => Err(TlsRefusal::Failed(e.to_string())),
        (Err(_), _) => Err(TlsRefusal::Failed(format!(
            "no handshake within {timeout:?}"
        ))),
    }
}

/// What `ward devices pin` shows about a certificate: subject, issuer, validity (RFC 3339).
pub(crate) fn describe(der: &[u8]) -> CertSummary {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let when = |t: x509_parser::time::ASN1Time| {
                t.to_datetime()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| t.to_string())
            };
            CertSummary {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                not_before: when(cert.validity().not_before),
                not_after: when(cert.validity().not_after),
            }
        }
        Err(e) => {
            let why = format!("(unreadable certificate: {e})");
            CertSummary {
                subject: why.clone(),
                issuer: why,
                not_before: String::new(),
                not_after: String::new(),
            }
        }
    }
}

/// A certificate, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertSummary {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) not_before: String,
    pub(crate) not_after: String,
}

/// The pin a session on `device` checks against: the config's, else the stored one (`None`: the
/// device is not pinned yet). `Err`: the store failed or holds an unreadable pin.
pub(crate) async fn pin_for(
    shared: &crate::gateway::Shared,
    device: &Device,
) -> Result<Option<CertPin>, String> {
    if let Some(pin) = device.tls.as_ref().and_then(|t| t.pin) {
        return Ok(Some(pin));
    }
    stored_pin(&shared.pins, device.id.as_str()).await
}

/// The stored pin of `device`, read off the async workers.
pub(crate) async fn stored_pin(
    pins: &Arc<dyn ward_store::pins::PinStore>,
    device: &str,
) -> Result<Option<CertPin>, String> {
    let store = Arc::clone(pins);
    let id = device.to_owned();
    let row = tokio::task::spawn_blocking(move || store.device_pin(&id))
        .await
        .map_err(|e| format!("the pin store failed: {e}"))?
        .map_err(|e| format!("the pin store failed: {e}"))?;
    row.map(|r| {
        r.pin.parse::<CertPin>().map_err(|e| {
            format!("the stored pin is unreadable ({e}); a security/admin re-pins the device")
        })
    })
    .transpose()
}
