//! Publishing anchors off the host (`[audit] anchors`): every audit checkpoint the writer signs
//! and every recording's final checkpoint, as one JSON line each (`ward_recording::anchor`), to an
//! append-only file, an HTTP collector, or the OTel pipeline.
//!
//! **Publishing never blocks the audit writer or a session.** Anchors go through a bounded queue
//! ([`QUEUE`]) to one task; each sink keeps what it could not deliver yet (at most [`PENDING`]
//! anchors, oldest dropped first and counted) and retries with back-off (1 s doubling to 60 s).
//! The first failure of an outage is audited once as `anchor_failed` (severity high, with the
//! sink and the error) and logged; the first success after it as `anchor_restored` (how many were
//! delayed or lost). The gateway keeps serving meanwhile: the anchors protect evidence that is
//! already signed and on disk, and refusing sessions because a collector is down would turn any
//! network fault towards the collector into a denial of care. The gap is itself audited, and the
//! next anchor that gets through pins everything before it (the chain covers every earlier line).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use ward_ca::Clock;
use ward_core::config::{AnchorSink, AuditConfig};
use ward_recording::anchor::{self, Anchor, FINAL_CHECKPOINT_LEN};
use ward_recording::audit::rfc3339_ms;

use crate::audit::{Event, WeakAuditLog};
use crate::recording_store::RecordingStore;

/// Anchors waiting for the publishing task.
pub const QUEUE: usize = 1024;
/// Anchors one sink holds while it cannot deliver them.
pub const PENDING: usize = 10_000;
/// How long one HTTP delivery may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most anchors in one HTTP request.
const HTTP_BATCH: usize = 256;
/// Largest anchor file `ward audit verify --anchors URL` reads.
pub const MAX_FETCH: usize = 256 * 1024 * 1024;
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The handle the audit writer and the sessions publish through; cheap to clone.
#[derive(Clone)]
pub struct Anchors {
    tx: mpsc::Sender<Anchor>,
    gateway: Arc<str>,
    clock: Arc<dyn Clock>,
    overflow: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

/// How far the task got, for [`Anchors::settle`].
#[derive(Default)]
struct Progress {
    queued: AtomicU64,
    taken: AtomicU64,
    backlog: AtomicU64,
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchors")
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// The publishing task; run it with [`AnchorTask::run`].
pub struct AnchorTask {
    rx: mpsc::Receiver<Anchor>,
    sinks: Vec<SinkState>,
    overflow: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
    progress: Arc<Progress>,
}

impl Anchors {
    /// A publisher for `config`'s sinks, or `None` when there are none. The `https://` client is
    /// built now (its CA file read), so a bad `anchor_ca_file` stops the start.
    pub fn new(
        config: &AuditConfig,
        gateway: &str,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Option<(Anchors, AnchorTask)>> {
        if config.anchors.is_empty() {
            return Ok(None);
        }
        let needs_tls = config
            .anchors
            .iter()
            .any(|s| matches!(s, AnchorSink::Http(u) if u.starts_with("https://")));
        let tls = if needs_tls {
            Some(client_tls(config.anchor_ca_file.as_deref())?)
        } else {
            None
        };
        let sinks = config
            .anchors
            .iter()
            .map(|s| SinkState::new(s.clone(), tls.clone()))
            .collect();
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Progress::default());
        Ok(Some((
            Anchors {
                tx,
                gateway: gateway.into(),
                clock: clock.clone(),
                overflow: overflow.clone(),
                progress: progress.clone(),
            },
            AnchorTask {
                rx,
                sinks,
                overflow,
                clock,
                progress,
            },
        )))
    }

    /// The gateway id anchors carry.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Publish without waiting; a full queue counts the anchor as dropped (reported by the task).
    pub fn publish(&self, a: Anchor) {
        match self.tx.try_send(a) {
            Ok(()) => {
                self.progress.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => {
                self.overflow.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Wait (at most `limit`) until every anchor published so far is delivered to every sink
    /// (at shutdown, after the audit log's last checkpoint).
    pub async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let p = &self.progress;
            if p.taken.load(Ordering::Acquire) >= p.queued.load(Ordering::Acquire)
                && p.backlog.load(Ordering::Acquire) == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The anchors of the checkpoint lines in `written` (bytes the audit writer is about to
    /// append); published with [`Anchors::publish_all`] once they are in the log.
    pub fn prepare_audit(&self, written: &[u8]) -> Vec<Anchor> {
        if !written
            .windows(20)
            .any(|w| w == b"{\"type\":\"checkpoint\"")
        {
            return Vec::new();
        }
        anchor::audit_anchors(written, &self.gateway, &rfc3339_ms(self.clock.now()))
    }

    /// Publish each of `anchors`.
    pub fn publish_all(&self, anchors: Vec<Anchor>) {
        for a in anchors {
            self.publish(a);
        }
    }

    /// A recording was sealed (`status`: `sealed` or `interrupted`): publish its final
    /// checkpoint, read from the end of its file off the caller's path.
    pub fn recording_sealed(&self, store: &RecordingStore, session_id: &str, status: &str) {
        let (me, store, id, status) = (
            self.clone(),
            store.clone(),
            session_id.to_owned(),
            status.to_owned(),
        );
        tokio::task::spawn_blocking(move || me.recording_sealed_now(&store, &id, &status));
    }

    /// [`Anchors::recording_sealed`], on this (blocking) thread.
    pub fn recording_sealed_now(&self, store: &RecordingStore, session_id: &str, status: &str) {
        match read_tail(store, session_id) {
            Ok(tail) => {
                let time = rfc3339_ms(self.clock.now());
                match anchor::recording_anchor(&tail, session_id, &self.gateway, status, &time) {
                    Some(a) => self.publish(a),
                    None => tracing::warn!(
                        session_id,
                        "recording does not end with a checkpoint: no anchor published"
                    ),
                }
            }
            Err(e) => {
                tracing::warn!(session_id, error = %e, "reading a sealed recording's final checkpoint for its anchor failed")
            }
        }
    }
}

/// The last bytes of a recording: enough to hold its final checkpoint record.
pub fn read_tail(store: &RecordingStore, id: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let snap = store.open(id)?;
    let n = FINAL_CHECKPOINT_LEN as u64;
    let mut reader = snap.reader;
    let start = snap.len.saturating_sub(n);
    let mut tail = Vec::with_capacity(FINAL_CHECKPOINT_LEN);
    match reader.seek(SeekFrom::Start(start)) {
        Ok(_) => {
            reader.take(n).read_to_end(&mut tail)?;
        }
        Err(_) => {
            // A backend without seeking: read through.
            let mut all = Vec::new();
            reader.take(snap.len).read_to_end(&mut all)?;
            tail = all.split_off(all.len().saturating_sub(FINAL_CHECKPOINT_LEN));
        }
    }
    Ok(tail)
}

/// One sink and what it still has to deliver.
struct SinkState {
    sink: AnchorSink,
    tls: Option<Arc<rustls::ClientConfig>>,
    pending: VecDeque<Vec<u8>>,
    file: Option<std::fs::File>,
    /// Down since (with the error), and when to try again.
    down: Option<Outage>,
}

struct Outage {
    since: time::OffsetDateTime,
    retry_at: Instant,
    backoff: Duration,
    lost: u64,
}

impl SinkState {
    fn new(sink: AnchorSink, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        SinkState {
            sink,
            tls,
            pending: VecDeque::new(),
            file: None,
            down: None,
        }
    }

    fn push(&mut self, line: &[u8]) {
        if self.pending.len() >= PENDING {
            self.pending.pop_front();
            if let Some(o) = self.down.as_mut() {
                o.lost += 1;
            }
        }
        self.pending.push_back(line.to_vec());
    }

    fn due(&self, now: Instant) -> bool {
        !self.pending.is_empty() && self.down.as_ref().is_none_or(|o| o.retry_at <= now)
    }

    /// Deliver everything pending (in order); `Err` leaves the rest pending.
    async fn deliver(&mut self) -> Result<(), String> {
        match self.sink.clone() {
            AnchorSink::Otel => {
                for line in self.pending.drain(..) {
                    trace_anchor(&line);
                }
                Ok(())
            }
            AnchorSink::File(path) => {
                let buf: Vec<u8> = self.pending.iter().flatten().copied().collect();
                let file = self.file.take();
                let (file, r) = tokio::task::spawn_blocking(move || append_file(file, &path, &buf))
                    .await
                    .map_err(|e| e.to_string())?;
                self.file = file;
                r?;
                self.pending.clear();
                Ok(())
            }
            AnchorSink::Http(url) => {
                while !self.pending.is_empty() {
                    let n = self.pending.len().min(HTTP_BATCH);
                    let body: Vec<u8> = self.pending.iter().take(n).flatten().copied().collect();
                    post(&url, self.tls.clone(), body).await?;
                    self.pending.drain(..n);
                }
                Ok(())
            }
        }
    }
}

/// Append `buf` (O_APPEND) and fsync; the file handle is kept for the next append.
fn append_file(
    file: Option<std::fs::File>,
    path: &Path,
    buf: &[u8],
) -> (Option<std::fs::File>, Result<(), String>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match file {
        Some(f) => f,
        None => match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => return (None, Err(format!("opening {}: {e}", path.display()))),
        },
    };
    match f.write_all(buf).and_then(|()| f.sync_data()) {
        Ok(()) => (Some(f), Ok(())),
        // Reopened next time (the mount may come back).
        Err(e) => (None, Err(format!("appending to {}: {e}", path.display()))),
    }
}

/// The anchor as a tracing event (target `audit_anchor`), inside a span of its own so the OTel
/// pipeline exports it.
fn trace_anchor(line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    let span = tracing::info_span!(target: "audit_anchor", "audit_anchor");
    let _entered = span.enter();
    match Anchor::parse(text.as_bytes()) {
        Ok(Anchor::Audit(a)) => tracing::info!(target: "audit_anchor", kind = "audit",
            gateway = %a.gateway, seq = a.seq, chain = %hex::encode(a.chain),
            key_id = %hex::encode(a.key_id), sig = %hex::encode(a.sig), time = %a.time, anchor = %text, "audit anchor"),
        Ok(Anchor::Recording(r)) => tracing::info!(target: "audit_anchor", kind = "recording",
            gateway = %r.gateway, session_id = %r.session_id, index = r.index, t_ns = r.t_ns,
            chain = %hex::encode(r.chain), key_id = %hex::encode(r.key_id), sig = %hex::encode(r.sig),
            status = %r.status, time = %r.time, anchor = %text, "recording anchor"),
        Err(_) => tracing::info!(target: "audit_anchor", anchor = %text, "anchor"),
    }
}

impl AnchorTask {
    /// Deliver anchors until every [`Anchors`] handle is gone (then one last attempt each). Audit
    /// events go to `audit` while it is open.
    pub async fn run(mut self, audit: WeakAuditLog) {
        let mut closed = false;
        loop {
            let now = Instant::now();
            let wake = self
                .sinks
                .iter()
                .filter(|s| !s.pending.is_empty())
                .filter_map(|s| s.down.as_ref().map(|o| o.retry_at))
                .min();
            if !closed {
                let got = match wake {
                    Some(at) if at > now => {
                        tokio::select! {
                            a = self.rx.recv() => Some(a),
                            _ = tokio::time::sleep_until(at) => None,
                        }
                    }
                    Some(_) => None,
                    None => Some(self.rx.recv().await),
                };
                match got {
                    Some(Some(a)) => self.take(&a),
                    Some(None) => closed = true,
                    None => {}
                }
                while let Ok(a) = self.rx.try_recv() {
                    self.take(&a);
                }
            }
            let dropped = self.overflow.swap(0, Ordering::AcqRel);
            if dropped > 0 {
                let why =
                    format!("{dropped} anchor(s) were not published: the anchor queue was full");
                tracing::error!(target: "audit", dropped, "anchor queue full");
                emit(
                    &audit,
                    failed_event(self.clock.now(), "queue", &why).detail("dropped", dropped),
                );
            }
            let now = Instant::now();
            for s in &mut self.sinks {
                if !(s.due(now) || (closed && !s.pending.is_empty())) {
                    continue;
                }
                let r = if closed {
                    tokio::time::timeout(HTTP_TIMEOUT, s.deliver())
                        .await
                        .unwrap_or_else(|_| Err("timed out at shutdown".into()))
                } else {
                    s.deliver().await
                };
                let wall = self.clock.now();
                match (r, s.down.take()) {
                    (Ok(()), None) => {}
                    (Ok(()), Some(o)) => {
                        tracing::warn!(target: "audit", sink = %s.sink, "anchor sink reachable again");
                        emit(
                            &audit,
                            Event::new("anchor_restored", "success", wall)
                                .severity("warning")
                                .reason(format!(
                                    "anchors reach {} again (down since {}); delayed anchors were published{}",
                                    s.sink,
                                    rfc3339_ms(o.since),
                                    if o.lost > 0 { format!(", {} oldest were dropped", o.lost) } else { String::new() }
                                ))
                                .detail("sink", s.sink.to_string())
                                .detail("since", rfc3339_ms(o.since))
                                .detail("lost", o.lost),
                        );
                    }
                    (Err(e), None) => {
                        tracing::error!(target: "audit", sink = %s.sink, error = %e, "publishing anchors failed; retrying with back-off");
                        emit(&audit, failed_event(wall, &s.sink.to_string(), &e));
                        s.down = Some(Outage {
                            since: wall,
                            retry_at: Instant::now() + Duration::from_secs(1),
                            backoff: Duration::from_secs(1),
                            lost: 0,
                        });
                    }
                    (Err(_), Some(mut o)) => {
                        o.backoff = (o.backoff * 2).min(BACKOFF_MAX);
                        o.retry_at = Instant::now() + o.backoff;
                        s.down = Some(o);
                    }
                }
            }
            let backlog: usize = self.sinks.iter().map(|s| s.pending.len()).sum();
            self.progress
                .backlog
                .store(backlog as u64, Ordering::Release);
            if closed {
                return;
            }
        }
    }

    fn take(&mut self, a: &Anchor) {
        let line = a.to_line();
        for s in &mut self.sinks {
            s.push(&line);
        }
        // Pending before it counts as taken, so `settle` waits for the delivery.
        self.progress.backlog.fetch_add(1, Ordering::AcqRel);
        self.progress.taken.fetch_add(1, Ordering::AcqRel);
    }
}

fn failed_event(now: time::OffsetDateTime, sink: &str, why: &str) -> Event {
    Event::new("anchor_failed", "failure", now)
        .severity("high")
        .reason(format!(
            "anchors could not be published to {sink} ({why}); the gateway keeps serving and retries; until they get through, a cut of the audit log after its last published anchor cannot be detected off the host"
        ))
        .detail("sink", sink.to_owned())
        .detail("error", why.to_owned())
}

fn emit(audit: &WeakAuditLog, ev: Event) {
    if let Some(log) = audit.upgrade() {
        log.emit(ev);
    }
}

/// A TLS client config with the roots of `ca_file` (PEM), or the public web roots.
pub fn client_tls(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("reading anchor_ca_file {}", path.display()))?;
            let certs = pem::parse_many(&text)
                .with_context(|| format!("anchor_ca_file {} is not PEM", path.display()))?;
            for c in certs.iter().filter(|c| c.tag() == "CERTIFICATE") {
                roots
                    .add(rustls_pki_types::CertificateDer::from(
                        c.contents().to_vec(),
                    ))
                    .with_context(|| format!("anchor_ca_file {}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("anchor_ca_file {} holds no certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// POST `body` (JSON lines) to `url`; a 2xx answer is success.
pub async fn post(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    body: Vec<u8>,
) -> Result<(), String> {
    let (status, _) = tokio::time::timeout(
        HTTP_TIMEOUT,
        exchange(http::Method::POST, url, tls, body, 64 * 1024),
    )
    .await
    .map_err(|_| format!("no answer within {HTTP_TIMEOUT:?}"))??;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

/// GET `url` (an anchor collector's listing) for `ward audit verify --anchors URL`.
pub async fn fetch(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    ward_core::config::parse_anchor_sink(url).map_err(anyhow::Error::msg)?;
    let tls = if url.starts_with("https://") {
        Some(client_tls(ca_file)?)
    } else {
        None
    };
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        exchange(http::Method::GET, url, tls, Vec::new(), MAX_FETCH),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{url} did not answer within 60 s"))?
    .map_err(anyhow::Error::msg)?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}");
    }
    Ok(body)
}

/// One HTTP/1.1 request on a connection of its own: TLS for `https`, plain only to loopback.
async fn exchange(
    method: http::Method,
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    body: Vec<u8>,
    max_body: usize,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if ward_core::config::is_loopback(&bare) => false,
        _ => return Err(format!("{url}: only https (or http to a loopback address)")),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.to_owned());
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::USER_AGENT, "ward-gateway")
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = match (https, tls) {
        (true, Some(tls)) => {
            let name = rustls_pki_types::ServerName::try_from(bare.clone())
                .map_err(|e| format!("{bare}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {authority}: {e}"))?;
            round_trip(hyper_util::rt::TokioIo::new(stream), request).await?
        }
        (true, None) => return Err(format!("{url}: no TLS client configured")),
        (false, _) => round_trip(hyper_util::rt::TokioIo::new(tcp), request).await?,
    };
    let (parts, mut incoming) = response.into_parts();
    let mut out = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max_body {
                return Err(format!("the answer is larger than {max_body} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((parts.status, out))
}

async fn round_trip<T>(
    io: T,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// Read an anchors file for `ward audit verify --anchors FILE`.
pub fn read_file(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the anchors file {}", path.display()))
}
