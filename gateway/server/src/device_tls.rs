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

impl DeviceConn {
    /// For a TLS connection, the recording's `device_tls` event: the pin of the certificate the
    /// device presented, the TLS version and the cipher suite.
    pub(crate) fn tls_event(&self) -> Option<ward_core::stage::RecordedEvent> {
        let DeviceConn::Tls(tls) = self else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        let pin = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| CertPin::of_der(c.as_ref()).to_string())
            .unwrap_or_default();
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        Some(ward_core::stage::RecordedEvent::new(
            "device_tls",
            &[
                ("certificate", pin.as_str()),
                ("version", version),
                ("cipher_suite", suite),
            ],
        ))
    }
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ward_core::config::DeviceTls;

    /// A self-signed certificate (DER) and its key (PKCS#8 DER).
    fn cert(name: &str) -> (Vec<u8>, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.der().to_vec(), c.signing_key.serialize_der())
    }

    /// Presents a fixed certificate and signs with a fixed key, matching or not.
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A TLS server on loopback presenting `cert_der` and signing with `key_der` (TLS 1.3 or
    /// 1.2 only), echoing what it reads once; its address.
    fn acceptor(
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> tokio_rustls::TlsAcceptor {
        let provider = ward_transport::tls::provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)))
            .unwrap();
        let ck = CertifiedKey::new(vec![CertificateDer::from(cert_der)], key);
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(ck))));
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    async fn device(
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> std::net::SocketAddr {
        let acceptor = acceptor(cert_der, key_der, version);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 64];
                        if let Ok(n) = tls.read(&mut buf).await {
                            let _ = tls.write_all(buf.get(..n).unwrap_or_default()).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn dev(addr: std::net::SocketAddr) -> Device {
        Device {
            id: ward_core::DeviceId::new("pacs").unwrap(),
            address: DeviceAddress::Ip(addr),
            protocol: ward_core::Protocol::Http,
            labels: Default::default(),
            maintenance: None,
            break_glass: None,
            netns: None,
            tls: Some(DeviceTls {
                pin: None,
                server_name: None,
            }),
        }
    }

    async fn shake(
        addr: std::net::SocketAddr,
        pin: Option<CertPin>,
    ) -> Result<(TlsStream<TcpStream>, Presented), TlsRefusal> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        handshake(&dev(addr), tcp, pin, Duration::from_secs(5)).await
    }

    const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[tokio::test]
    async fn only_the_pinned_certificate_is_accepted_and_plaintext_flows() {
        for version in VERSIONS {
            let (a_der, a_key) = cert("pacs.local");
            let pin_a = CertPin::of_der(&a_der);
            let addr = device(a_der.clone(), a_key, version).await;

            match shake(addr, None).await {
                Err(TlsRefusal::Unpinned { presented }) => {
                    assert_eq!(presented.pin, pin_a);
                    assert_eq!(presented.der, a_der);
                    let why = TlsRefusal::Unpinned { presented }.reason("pacs");
                    assert!(
                        why.contains(&format!("ward devices pin pacs --confirm {pin_a}")),
                        "{why}"
                    );
                }
                other => panic!("{version:?}: {other:?}"),
            }
            let other = CertPin::of_der(b"another certificate");
            match shake(addr, Some(other)).await {
                Err(e @ TlsRefusal::Changed { .. }) => {
                    let why = e.reason("pacs");
                    assert!(
                        why.contains(&format!("presented {pin_a}, pinned is {other}")),
                        "{why}"
                    );
                }
                other => panic!("{version:?}: {other:?}"),
            }
            let (tls, presented) = shake(addr, Some(pin_a)).await.unwrap();
            assert_eq!(presented.pin, pin_a);
            let mut conn = DeviceConn::Tls(Box::new(tls));
            let ev = conn.tls_event().unwrap();
            assert_eq!(ev.kind, "device_tls");
            assert_eq!(ev.fields[0], ("certificate".into(), pin_a.to_string()));
            let want = if version == &rustls::version::TLS13 {
                "TLSv1_3"
            } else {
                "TLSv1_2"
            };
            assert_eq!(ev.fields[1], ("version".into(), want.into()));
            conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut back = Vec::new();
            conn.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"GET / HTTP/1.1\r\n\r\n");
        }
    }

    #[tokio::test]
    async fn a_device_without_the_pinned_certificates_key_is_refused() {
        // The device presents the pinned certificate but signs with another key: the handshake
        // signature is checked, so a copied certificate is not enough.
        for version in VERSIONS {
            let (a_der, _) = cert("pacs.local");
            let (_, b_key) = cert("pacs.local");
            let addr = device(a_der.clone(), b_key, version).await;
            match shake(addr, Some(CertPin::of_der(&a_der))).await {
                Err(TlsRefusal::Failed(why)) => assert!(why.contains("Signature"), "{why}"),
                other => panic!("{version:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_gateway_logs_in_to_a_console_over_tls() {
        // Credential injection works on the plaintext of a TLS device as on a plain one.
        let (der, key) = cert("console.local");
        let pin = CertPin::of_der(&der);
        let acceptor = acceptor(der, key, &rustls::version::TLS13);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let console = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = vec![0u8; 256];
            tls.write_all(b"login: ").await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n") {
                let n = tls.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"Password: ").await.unwrap();
            let mut pw = Vec::new();
            while !pw.ends_with(b"\r\n") {
                let n = tls.read(&mut buf).await.unwrap();
                pw.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"Welcome\r\n# ").await.unwrap();
            tls.flush().await.unwrap();
            (got, pw, tls)
        });
        let (tls, _) = shake(addr, Some(pin)).await.unwrap();
        let mut conn = DeviceConn::Tls(Box::new(tls));
        let clock = ward_ca::FixedClock::new(time::macros::datetime!(2026-01-01 00:00 UTC));
        let cred = ward_core::inject::Credential {
            account: "service".into(),
            username: "admin".into(),
            secret: ward_core::secret::Secret::new("Sekr1t-pw".to_string()),
        };
        let profile = ward_core::inject::LoginProfile::generic_telnet();
        let ok = crate::device_login::login(&mut conn, "console", &cred, &profile, &clock)
            .await
            .unwrap();
        assert!(ok.leftover.ends_with(b"Welcome\r\n# "), "{:?}", ok.leftover);
        let (user, pw, _tls) = console.await.unwrap();
        assert_eq!(user, b"admin\r\n");
        assert_eq!(pw, b"Sekr1t-pw\r\n");
    }

    #[tokio::test]
    async fn a_silent_device_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let r = handshake(&dev(addr), tcp, None, Duration::from_millis(200)).await;
        match r {
            Err(e @ TlsRefusal::Failed(_)) => {
                assert!(e.reason("pacs").contains("no handshake within"), "{e:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn certificates_are_described() {
        let c = rcgen::generate_simple_self_signed(vec!["pacs.local".to_owned()]).unwrap();
        let s = describe(c.cert.der());
        assert!(
            s.subject.contains("rcgen") || !s.subject.is_empty(),
            "{s:?}"
        );
        assert!(
            s.not_before.contains('T') && s.not_after.contains('T'),
            "{s:?}"
        );
        assert!(describe(b"junk").subject.contains("unreadable"));
    }
}
