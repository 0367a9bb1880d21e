//! The console's HTTPS listener (see [`super`]): TLS 1.3 with the gateway's certificate, an
//! optional client certificate checked by the gateway's own validator (the same checks as on the
//! wire: chain, validity with skew, EKU, SPIFFE identity, lifetime caps), and HTTP/1.1 through
//! hyper to the console's axum router. Every request carries the connection's [`ConnInfo`].
//!
//! Bounded like the gateway's other listeners: at most [`MAX_CONNECTIONS`] connections at once
//! and [`MAX_PER_SOURCE`] from one address (beyond that a new one is closed at once), [`HANDSHAKE_TIMEOUT`] for the TLS handshake and
//! [`HEADER_TIMEOUT`] for each request's headers, so an idle or slow peer cannot hold a slot.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use ward_ca::{Identity, Usage};

use super::ConnInfo;
use crate::gateway::Shared;

/// Most console connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive (also closes idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most console connections open at once from one address, so one peer cannot take every slot.
pub const MAX_PER_SOURCE: usize = 64;

/// Connections open per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its source; uncounted when dropped.
struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(table: &Arc<PerSource>, ip: IpAddr) -> Option<SourceSlot> {
        let mut m = table.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.table.0.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

/// Serve `app` (the console's [`super::router`], or the device consoles'
/// [`super::consoles::router`]) on `listener` until `stop` turns true: open connections then
/// finish the request in hand and close.
pub async fn serve(
    shared: Arc<Shared>,
    app: axum::Router,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(PerSource::default());
    loop {
        let accepted = tokio::select! {
            r = stop.wait_for(|s| *s) => { drop(r); break },
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(event = "web_accept_failed", reason = %e, "web console accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(source) = PerSource::take(&per_source, peer.ip()) else {
            tracing::debug!(event = "web_connection_refused", source = %peer, "web console: too many connections from this address");
            drop(tcp);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(event = "web_connection_refused", source = %peer, "web console: too many connections");
            drop(tcp);
            continue;
        };
        tokio::spawn(connection(
            shared.clone(),
            acceptor.clone(),
            app.clone(),
            tcp,
            peer,
            (slot, source),
            stop.clone(),
        ));
    }
}

/// One connection: the handshake (bounded), the client certificate's identity, then HTTP/1.1
/// until the peer closes, a header timeout, or the gateway stops.
async fn connection(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    tcp: TcpStream,
    peer: SocketAddr,
    _slots: (OwnedSemaphorePermit, SourceSlot),
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(event = "web_handshake_refused", source = %peer, reason = %ward_core::Escaped(&e.to_string()), "web console handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(event = "web_handshake_refused", source = %peer, reason = "handshake timed out", "web console handshake failed");
            return;
        }
    };
    let certificate = match tls.get_ref().1.peer_certificates() {
        None | Some([]) => None,
        Some(certs) => match client_identity(&shared, certs) {
            Ok(id) => Some(id),
            Err(e) => {
                // The handshake's verifier passed it a moment ago; it may have expired since.
                tracing::debug!(event = "web_handshake_refused", source = %peer, reason = %ward_core::Escaped(&e.to_string()), "web console client certificate refused");
                return;
            }
        },
    };
    let info = ConnInfo { peer, certificate };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            app.clone().oneshot(req)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    // With upgrades: the web terminal is a WebSocket.
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(event = "web_connection_error", source = %peer, reason = %e, "web console connection ended");
            }
        }
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// The client certificate's identity, validated by the gateway's validator as a client
/// certificate at the gateway's `now`.
fn client_identity(
    shared: &Shared,
    certs: &[CertificateDer<'_>],
) -> Result<Identity, ward_ca::ValidationError> {
    let Some((leaf, rest)) = certs.split_first() else {
        return Err(ward_ca::ValidationError::Parse {
            reason: "no certificate".into(),
        });
    };
    let ints: Vec<&[u8]> = rest.iter().map(|c| c.as_ref()).collect();
    shared
        .validator
        .validate(leaf.as_ref(), &ints, Usage::Client, shared.clock.now())
}

/// The console's TLS: 1.3 only, the gateway's certificate chain and key, ALPN `http/1.1`, and an
/// optional client certificate: one that is presented must pass the gateway's validator (the
/// wire's own verifier, [`crate::tls::WardClientVerifier`]) or the handshake fails; without one
/// the browser signs in with password and TOTP.
pub fn tls_config(
    validator: ward_ca::Validator,
    clock: Arc<dyn ward_ca::Clock>,
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context;
    let verifier = Arc::new(crate::tls::WardClientVerifier::new(validator, clock));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the gateway's certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    Ok(config)
}
