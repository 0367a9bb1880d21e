//! The gateway's side of connection admission (security case: nobody holds the door shut
//! without a certificate): the books of [`ward_core::admission`] under a lock, a wake-up for each
//! connection so an eviction closes it at once, and the bounded helpers that tell a refused client
//! why ("gateway busy: …") instead of dropping it mid-handshake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use ward_core::admission::{Admission, AdmissionLimits, ConnId, Refusal};
use ward_core::config::Limits;
use ward_core::frame::{ErrorCode, Response};

use crate::datapath::FrameWriter;

/// Refused clients told why at once, at most (each costs one handshake); beyond, they are dropped.
const MAX_REFUSAL_REPLIES: usize = 32;
/// How long a refusal reply may take.
const REFUSAL_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

struct Books {
    admission: Admission,
    wake: HashMap<ConnId, Arc<Notify>>,
}

/// Every connection holding a slot; shared by the QUIC and TCP accept loops.
pub(crate) struct Conns {
    books: Mutex<Books>,
    replies: Arc<Semaphore>,
}

impl Conns {
    pub(crate) fn new(limits: &Limits) -> Self {
        Conns {
            books: Mutex::new(Books {
                admission: Admission::new(AdmissionLimits {
                    max_connections: limits.max_connections as usize,
                    max_anonymous: limits.max_anonymous_connections as usize,
                    max_per_source: limits.max_connections_per_source as usize,
                }),
                wake: HashMap::new(),
            }),
            replies: Arc::new(Semaphore::new(MAX_REFUSAL_REPLIES)),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // The books are consistent after every call (no call panics midway).
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections holding a slot.
    pub(crate) fn total(&self) -> usize {
        self.books().admission.total()
    }

    /// Connections admitted so far (evicted and ended ones included).
    pub(crate) fn admitted(&self) -> u64 {
        self.books().admission.admitted()
    }

    /// A slot for a new connection from `ip` (anonymous until [`ConnSlot::authenticate`]). When
    /// it evicts an anonymous connection, that one is woken to close.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let mut b = self.books();
        let admitted = b.admission.admit(ip)?;
        let evicted = admitted.evicted.and_then(|v| b.wake.remove(&v));
        if let Some(w) = &evicted {
            w.notify_one();
        }
        let wake = Arc::new(Notify::new());
        b.wake.insert(admitted.id, wake.clone());
        Ok(ConnSlot {
            conns: self.clone(),
            id: admitted.id,
            wake,
        })
    }

    /// A permit to tell one refused client why, if fewer than the bound are being told.
    pub(crate) fn reply_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.replies.clone().try_acquire_owned().ok()
    }
}

/// One connection's slot, released on drop.
pub(crate) struct ConnSlot {
    conns: Arc<Conns>,
    id: ConnId,
    wake: Arc<Notify>,
}

impl ConnSlot {
    /// The connection presented a valid certificate: it leaves the anonymous budget. False when
    /// it was evicted meanwhile (close it).
    pub(crate) fn authenticate(&self) -> bool {
        self.conns.books().admission.authenticate(self.id)
    }

    /// Resolves when the connection was evicted to make room for a newer one.
    pub(crate) async fn evicted(&self) {
        self.wake.notified().await;
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut b = self.conns.books();
        b.admission.release(self.id);
        b.wake.remove(&self.id);
    }
}

/// Tell a client refused on TCP why: finish the TLS handshake (bounded) and send the refusal as
/// an `Overloaded` error frame, which `ward` shows as it is.
pub(crate) async fn reply_tcp(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    why: Refusal,
) {
    let reply = async {
        let tls = acceptor.accept(tcp).await.ok()?;
        let mut writer = FrameWriter::new(tls);
        let frame = Response::Error {
            code: ErrorCode::Overloaded,
            message: why.to_string(),
        };
        writer.write_response(&frame).await.ok()?;
        writer.finish().await.ok()
    };
    let _ = tokio::time::timeout(REFUSAL_REPLY_TIMEOUT, reply).await;
}

/// Tell a client refused on QUIC why: finish the handshake (bounded) and close the connection with
/// the refusal's application code and text, which `ward` maps by code.
pub(crate) async fn reply_quic(incoming: quinn::Incoming, why: Refusal) {
    let Ok(connecting) = incoming.accept() else {
        return;
    };
    if let Ok(Ok(conn)) = tokio::time::timeout(REFUSAL_REPLY_TIMEOUT, connecting).await {
        conn.close(why.close_code().into(), why.to_string().as_bytes());
    }
}
