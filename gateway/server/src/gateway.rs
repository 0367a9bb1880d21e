//! The gateway: QUIC and TLS-over-TCP listeners, per-session authorization, the device dialer and
//! the proxy. Everything here is I/O around the pure core in `ward-core` (frames, policy) and
//! `ward-ca` (identity validation).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{field, info, info_span, warn, Instrument};
use ward_ca::{Clock, Identity, Usage, Validator};
use ward_core::admission::{Refusal, CLOSE_DEADLINE, CLOSE_EVICTED};
use ward_core::config::{Config, Device, DeviceAddress, Limits};
use ward_core::frame::{self, ErrorCode, LockTarget, Request, Response};
use ward_core::noise::{NoiseLimiter, NoiseLimits, Verdict};
use ward_core::policy::{self, Lock};
use ward_core::session::{self, Handshaken, Recheck};
use ward_core::{Escaped, Principal};

use crate::admit::{ConnSlot, Conns};
use crate::audit::{AuditLog, AuditWriter, Event};
use crate::datapath::{self, Activity, FrameReader, FrameWriter, FramedEnd, Inbound};
use crate::pipeline::Pipeline;
use crate::recorder::{self, FileSink, SessionRecorder, Sink};
use crate::recovery::recover_recordings;
use crate::store::{SqliteStore, Store};
use crate::tls;
use ward_core::stage::{SessionContext as StageContext, StageFactory};
use ward_recording::{Direction, EndInfo, SessionMeta, Signer};

/// Why the gateway cut a live session (sent to the client in a `Closed` frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut(pub String);

pub(crate) struct LiveSession {
    pub(crate) principal: Principal,
    pub(crate) device: String,
    /// The access grant the session runs on, if a grant permitted it.
    pub(crate) grant: Option<String>,
    /// A break-glass session (kept as it is across config reloads).
    break_glass: bool,
    /// The device address it is connected to.
    address: DeviceAddress,
    cut: watch::Sender<Option<Cut>>,
}

/// Live state shared by the listeners and every session.
pub struct Shared {
    /// The current config, swapped whole by a reload ([`crate::reload`]); read it through
    /// [`Shared::config`], once per decision.
    config: RwLock<Arc<Config>>,
    /// `[gateway]`'s limits: fixed for the gateway's life (a reload that changes them is refused).
    limits: Limits,
    verified: Arc<tls::VerifiedCache>,
    pub(crate) audit: AuditLog,
    signer: Arc<Signer>,
    sink: Option<Arc<dyn Sink>>,
    validator: Validator,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) jit: crate::jit::Jit,
    store: Arc<dyn Store>,
    locks: RwLock<Vec<Lock>>,
    sessions: Mutex<HashMap<u64, LiveSession>>,
    next_session: AtomicU64,
    /// Connection slots: anonymous and certificate-holder budgets, per-source caps.
    conns: Arc<Conns>,
    draining: AtomicBool,
    /// Unauthenticated events, aggregated per source (security case 31).
    noise: Mutex<NoiseLimiter>,
    /// Review jobs, off the async workers and limited.
    reviews: crate::review_jobs::ReviewGate,
    /// Where sessions get their stages ([`crate::pipeline`]); `None`: no device has any.
    stages: Option<Arc<dyn StageFactory>>,
}

impl Shared {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A snapshot of the current config. Take one per decision, so that no decision mixes the
    /// config before a reload with the one after.
    pub(crate) fn config(&self) -> Arc<Config> {
        // A poisoned lock still holds a whole config (a swap is one assignment).
        match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replace the config with `new` if `check(current)` passes; the check and the swap happen
    /// under one write lock, so concurrent reloads cannot interleave.
    pub(crate) fn swap_config<E>(
        &self,
        new: Config,
        check: impl FnOnce(&Config) -> Result<(), E>,
    ) -> Result<Arc<Config>, E> {
        let mut cur = self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        check(&cur)?;
        let new = Arc::new(new);
        *cur = Arc::clone(&new);
        Ok(new)
    }

    /// Re-check every live session against `config` (a reload): cut those it would no longer
    /// permit, keep break-glass sessions. Returns (cut, break-glass kept).
    pub(crate) fn recheck_live(&self, config: &Config, now: OffsetDateTime) -> (usize, usize) {
        let grants = self.jit.grants();
        let Ok(sessions) = self.sessions.lock() else {
            return (0, 0);
        };
        let (mut cut, mut kept) = (0, 0);
        for s in sessions.values() {
            match recheck(config, &grants, s, now) {
                Recheck::Keep => {}
                Recheck::KeepBreakGlass => kept += 1,
                Recheck::Cut(reason) => {
                    s.cut.send_replace(Some(Cut(reason)));
                    cut += 1;
                }
            }
        }
        (cut, kept)
    }

    fn live_sessions(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Audit an event from a peer that has not authenticated: written, or only counted for the
    /// interval's summary (`noise`). The text log follows the same verdict. Returns the verdict.
    pub(crate) fn audit_noise(&self, source: SocketAddr, ev: Event) -> Verdict {
        let now = self.clock.now();
        let verdict = match self.noise.lock() {
            Ok(mut n) => n.observe(source.ip(), &ev.0.event, now),
            // A poisoned lock: write, as before aggregation existed.
            Err(_) => Verdict::Write,
        };
        if verdict == Verdict::Write {
            warn!(event = %ev.0.event, source = %source, reason = ev.0.reason.as_deref(), "unauthenticated peer refused");
            self.audit.emit(ev);
        }
        verdict
    }

    /// Whether a source is dropped before any work: it sent too much unauthenticated noise.
    fn noise_dropped(&self, source: IpAddr) -> bool {
        let now = self.clock.now();
        let Ok(mut n) = self.noise.lock() else {
            return false;
        };
        if !n.is_dropped(source, now) {
            return false;
        }
        n.observe(source, "connection_dropped", now);
        true
    }

    /// Write the summaries of ended noise intervals (all of them with `force`, at shutdown).
    fn flush_noise(&self, force: bool) {
        let now = self.clock.now();
        let summaries = match self.noise.lock() {
            Ok(mut n) => n.flush(now, force),
            Err(_) => return,
        };
        for s in summaries {
            let from = match s.source {
                Some(ip) => ip.to_string(),
                None => "sources beyond the tracking bound".to_string(),
            };
            let mut reason = format!(
                "{} {} event(s) from {from} between {} and {}; {} written one by one, the rest only counted",
                s.count,
                s.kind,
                ward_recording::audit::rfc3339_ms(s.from),
                ward_recording::audit::rfc3339_ms(s.until),
                s.written
            );
            if s.dropped {
                reason.push_str("; the source was dropped early for sending too much");
            }
            self.audit.emit(
                Event::new("unauthenticated_summary", "denied", now)
                    .severity("warning")
                    .source(from)
                    .reason(reason)
                    .detail("kind", s.kind)
                    .detail("count", s.count)
                    .detail("written", s.written)
                    .detail("from", ward_recording::audit::rfc3339_ms(s.from))
                    .detail("until", ward_recording::audit::rfc3339_ms(s.until))
                    .detail("dropped", s.dropped),
            );
        }
    }

    pub(crate) fn cut_where(&self, pred: impl Fn(&LiveSession) -> bool, reason: &str) -> usize {
        let Ok(sessions) = self.sessions.lock() else {
            return 0;
        };
        let mut n = 0;
        for s in sessions.values().filter(|s| pred(s)) {
            s.cut.send_replace(Some(Cut(reason.to_string())));
            n += 1;
        }
        n
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    audit_writer: AuditWriter,
    quic_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    stop_accepting: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The state dir's lock; dropped last (field order), after the audit writer.
    _state_lock: crate::state_lock::StateLock,
}

/// Map a ward-ca identity onto the policy's view of a principal.
pub fn principal_of(id: &Identity) -> Principal {
    Principal {
        // Exhaustive: a new kind in the CA will not compile until policy knows it.
        kind: match id.kind {
            ward_ca::Kind::Vendor => ward_core::PrincipalKind::Vendor,
            ward_ca::Kind::Clinician => ward_core::PrincipalKind::Clinician,
            ward_ca::Kind::Security => ward_core::PrincipalKind::Security,
            ward_ca::Kind::Admin => ward_core::PrincipalKind::Admin,
            ward_ca::Kind::Gateway => ward_core::PrincipalKind::Gateway,
        },
        name: id.name.clone(),
        org: id.org.clone(),
        roles: id.roles.clone(),
        serial: id.serial.clone(),
        not_after: id.not_after,
    }
}

pub use ward_transport::quic::{transport_config, udp_socket};

/// Options that are not part of the config file.
#[derive(Clone, Default)]
pub struct Options {
    /// Turn session recording OFF. Never set by the `ward` binary: no session runs unrecorded.
    /// Only the benchmark harness sets it, to measure what recording costs.
    pub no_recording: bool,
    /// Where recordings go; `None` means `<state_dir>/recordings` on local disk.
    pub sink: Option<Arc<dyn Sink>>,
    /// Each session's stages (protocol decoders, credential injectors), by device: consulted once
    /// per session at open ([`crate::pipeline`]). `None`: no device has stages.
    pub stages: Option<Arc<dyn StageFactory>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("no_recording", &self.no_recording)
            .field("stages", &self.stages.is_some())
            .finish_non_exhaustive()
    }
}

/// The gateway's recording/audit signing key: `<state_dir>/audit.key` (PKCS#8, 0600), created at
/// first start; its public key is written to `audit.pub` (hex).
pub fn load_or_create_signer(state_dir: &std::path::Path) -> anyhow::Result<Arc<Signer>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key_path = state_dir.join(crate::AUDIT_KEY);
    if key_path.exists() {
        ward_ca::check_private_key(&key_path)?;
    }
    let signer = match std::fs::read(&key_path) {
        Ok(pkcs8) => Signer::from_pkcs8(&pkcs8)
            .with_context(|| format!("{} is not a Ward signing key", key_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) = Signer::generate().context("generating the audit signing key")?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .with_context(|| format!("creating {}", key_path.display()))?;
            f.write_all(&pkcs8)?;
            f.sync_all()?;
            signer
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", key_path.display())),
    };
    std::fs::write(
        state_dir.join(crate::AUDIT_PUB),
        format!("{}\n", hex::encode(signer.public_key())),
    )?;
    Ok(Arc::new(signer))
}

impl Gateway {
    /// Load the CA, certificates and store named by `config`, bind the listeners and start serving.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Gateway> {
        Self::start_with(config, clock, Options::default()).await
    }

    /// [`Gateway::start`] with [`Options`].
    pub async fn start_with(
        config: Config,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> anyhow::Result<Gateway> {
        let g = &config.gateway;
        let validator = Validator::from_dir(&g.ca).with_context(|| {
            format!(
                "loading Ward's CA from {} (create one with `ward ca init`)",
                g.ca.display()
            )
        })?;
        let chain = tls::load_certs(&g.cert)?;
        let key = tls::load_key(&g.key)?;
        // Refuse to start with a gateway certificate Ward's own CA would not accept.
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("{} holds no certificate", g.cert.display()))?;
        let ints: Vec<&[u8]> = chain.iter().skip(1).map(|c| c.as_ref()).collect();
        validator
            .validate(leaf.as_ref(), &ints, Usage::Server, clock.now())
            .with_context(|| format!("gateway certificate {} is not usable", g.cert.display()))?;
        std::fs::create_dir_all(&g.state_dir)
            .with_context(|| format!("creating state dir {}", g.state_dir.display()))?;
        // One gateway per state dir: locked before anything in it is read or written (store,
        // audit log, crash recovery), held until this gateway is dropped.
        let state_lock = crate::state_lock::StateLock::acquire(&g.state_dir)?;
        // The state dir holds recordings, the audit log, its signing key and the user store.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&g.state_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting mode 0700 on {}", g.state_dir.display()))?;
        }
        let db = Arc::new(SqliteStore::open(&g.state_dir)?);
        let store: Arc<dyn Store> = db.clone();
        // Login issues certificates, so it needs the issuing key; without it the gateway still
        // runs and login answers with a clear error.
        let ca = match ward_ca::Ca::load(&g.ca) {
            Ok(ca) => Some(ca),
            Err(e) => {
                tracing::warn!(event = "login_disabled", reason = %e, "ward login is disabled: the CA's issuing key cannot be loaded");
                None
            }
        };
        let jit = crate::jit::Jit::new(db, ca, clock.now())?;
        let signer = load_or_create_signer(&g.state_dir)?;
        let (audit, audit_writer) = AuditLog::open(&g.state_dir, signer.clone(), clock.clone())?;
        let recordings = g.state_dir.join(crate::RECORDINGS_DIR);
        let sink: Option<Arc<dyn Sink>> = if !options.no_recording {
            match options.sink.clone() {
                Some(s) => Some(s),
                None => {
                    Some(Arc::new(FileSink::new(&recordings).with_context(|| {
                        format!("creating {}", recordings.display())
                    })?))
                }
            }
        } else {
            tracing::warn!("session recording is OFF (benchmark mode)");
            None
        };
        // SR 2.9: alert before the recording disk fills, refuse new sessions once it is full.
        let disk = crate::diskwatch::DiskWatch::new(
            Box::new(crate::diskwatch::Statvfs::new(&recordings)),
            recordings.display().to_string(),
            crate::diskwatch::Thresholds::from_limits(&g.limits),
            audit.clone(),
            clock.clone(),
        );
        let sink = sink.map(|s| -> Arc<dyn Sink> {
            Arc::new(crate::diskwatch::GuardedSink::new(s, disk.clone()))
        });
        let index: &dyn crate::session_index::SessionIndex = &*jit.db;
        let sealed = recover_recordings(&recordings, &signer, &audit, clock.now(), Some(index))?;
        if sealed > 0 {
            tracing::warn!(sealed, "sealed recordings left open by a previous crash");
        }
        let locks = store.active_locks(clock.now())?;
        let verified = Arc::new(tls::VerifiedCache::default());
        let server_tls = tls::server_config(
            validator.clone(),
            clock.clone(),
            chain,
            key,
            verified.clone(),
        )?;

        let limits = g.limits;
        let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls.clone())
            .context("TLS config unusable for QUIC")?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        server_config.transport_config(Arc::new(transport_config(
            limits.max_sessions_per_connection,
            // Connection liveness: clients send keep-alives every 10 s, so a client that vanished
            // is noticed within 30 s; each session has its own idle timeout on top.
            Duration::from_secs(30),
        )?));
        server_config.migration(false);
        let socket = udp_socket(g.listen)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let quic_addr = endpoint.local_addr()?;

        let tcp = match g.listen_tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding TCP {addr}"))?,
            ),
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;

        audit.emit(
            Event::new("config_loaded", "success", clock.now())
                .detail("devices", config.devices.len())
                .detail("rules", config.rules.len()),
        );
        audit.emit(
            Event::new("gateway_start", "success", clock.now())
                .detail("quic", quic_addr.to_string())
                .detail("tcp", tcp_addr.map(|a| a.to_string()).unwrap_or_default())
                .detail("recording", !options.no_recording),
        );
        let shared = Arc::new(Shared {
            limits: config.gateway.limits,
            config: RwLock::new(Arc::new(config)),
            verified,
            audit,
            signer,
            sink,
            validator,
            clock,
            jit,
            store,
            locks: RwLock::new(locks),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(rand::random::<u32>() as u64),
            conns: Arc::new(Conns::new(&limits)),
            draining: AtomicBool::new(false),
            noise: Mutex::new(NoiseLimiter::new(NoiseLimits::default())),
            reviews: crate::review_jobs::ReviewGate::default(),
            stages: options.stages.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(disk.run());
        tasks.spawn(crate::jit::refresh_loop(shared.clone()));
        tasks.spawn(noise_loop(shared.clone()));
        tasks.spawn(quic_accept_loop(
            shared.clone(),
            endpoint.clone(),
            stop_rx.clone(),
        ));
        if let Some(listener) = tcp {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
            tasks.spawn(tcp_accept_loop(shared.clone(), listener, acceptor, stop_rx));
        }
        let config = shared.config();
        info!(event = "gateway_started", quic = %quic_addr, tcp = ?tcp_addr,
              devices = config.devices.len(), rules = config.rules.len(), "gateway listening");
        Ok(Gateway {
            shared,
            audit_writer,
            quic_addr,
            tcp_addr,
            endpoint,
            stop_accepting: stop_tx,
            tasks,
            _state_lock: state_lock,
        })
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound TLS-over-TCP address, when the fallback is enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Number of sessions currently proxying.
    pub fn live_sessions(&self) -> usize {
        self.shared.live_sessions()
    }

    /// Reload the config file at `path` (what SIGHUP does): devices, rules, approval policies,
    /// `[login]` and `timezone_offset` take effect for every new decision at once, and live
    /// sessions the new policy would refuse are cut. A config that does not parse or validate, or
    /// that changes a field only a restart can change, is refused and nothing is applied. Audited
    /// as `config_reloaded` / `config_reload_failed`.
    pub fn reload(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::reload::ReloadReport, crate::reload::ReloadError> {
        crate::reload::reload(&self.shared, path)
    }

    /// Number of open client connections (QUIC and TCP).
    pub fn connections(&self) -> usize {
        self.shared.conns.total()
    }

    /// Connections admitted since start (QUIC and TCP; evicted and ended ones included).
    pub fn connections_admitted(&self) -> u64 {
        self.shared.conns.admitted()
    }

    /// Stop accepting, let sessions drain for up to `grace`, then close the rest with a reason.
    pub async fn shutdown(mut self, grace: Duration) {
        info!(
            event = "gateway_stopping",
            live = self.shared.live_sessions(),
            "draining sessions"
        );
        self.shared.draining.store(true, Ordering::Release);
        self.stop_accepting.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.shared.live_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cut = self.shared.cut_where(|_| true, "gateway shutting down");
        if cut > 0 {
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.shared.live_sessions() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.tasks.abort_all();
        self.shared.flush_noise(true);
        self.shared
            .audit
            .emit_wait(
                Event::new("gateway_stop", "success", self.shared.clock.now())
                    .detail("sessions_cut", cut),
            )
            .await;
        self.shared.audit.flush().await;
        drop(self.audit_writer);
        info!(event = "gateway_stopped", cut, "gateway stopped");
    }
}

/// Writes the unauthenticated-noise summaries as intervals end.
async fn noise_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.flush_noise(false);
    }
}

async fn quic_accept_loop(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.changed() => return,
        };
        let ip = incoming.remote_address().ip();
        if shared.noise_dropped(ip) {
            incoming.refuse();
            continue;
        }
        let slot = match shared.conns.acquire(ip) {
            Ok(slot) => slot,
            Err(why) => {
                refused(&shared, incoming.remote_address(), why, "quic");
                match shared.conns.reply_permit() {
                    Some(permit) => {
                        tokio::spawn(async move {
                            let _permit = permit;
                            crate::admit::reply_quic(incoming, why).await;
                        });
                    }
                    None => incoming.refuse(),
                }
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            if let Err(e) = serve_quic(shared.clone(), incoming, slot).await {
                shared.audit_noise(
                    peer,
                    handshake_failed(&shared, peer, format!("{e:#}"), "quic"),
                );
            }
        });
    }
}

fn identity_from_certs(shared: &Shared, certs: &[CertificateDer<'_>]) -> anyhow::Result<Identity> {
    let (leaf, rest) = certs
        .split_first()
        .ok_or_else(|| anyhow!("client presented no certificate"))?;
    // The handshake just validated this exact chain; take its result rather than verify twice.
    if let Some(id) = shared.verified.take(leaf.as_ref()) {
        return Ok(id);
    }
    let ints: Vec<&[u8]> = rest.iter().map(|c| c.as_ref()).collect();
    Ok(shared
        .validator
        .validate(leaf.as_ref(), &ints, Usage::Client, shared.clock.now())?)
}

/// A connection refused for load: counted and audited in aggregate with the other noise from its
/// source (the text log follows the same verdict).
fn refused(shared: &Shared, peer: SocketAddr, why: Refusal, transport: &str) {
    shared.audit_noise(
        peer,
        Event::new("connection_refused", "denied", shared.clock.now())
            .severity("warning")
            .source(peer)
            .reason(why.to_string())
            .detail("transport", transport),
    );
}

/// An anonymous connection evicted to make room: expected under load and the gateway's own doing,
/// so only counted, for the interval's `unauthenticated_summary` (no line of its own in the audit
/// or text log).
fn evicted(shared: &Shared, peer: SocketAddr) {
    let now = shared.clock.now();
    if let Ok(mut n) = shared.noise.lock() {
        n.observe(peer.ip(), "connection_evicted", now);
    }
}

/// An anonymous connection closed past its deadline: audited in aggregate like the rest of the
/// unauthenticated noise.
fn anonymous_closed(shared: &Shared, peer: SocketAddr, kind: &str, why: &str, transport: &str) {
    shared.audit_noise(
        peer,
        Event::new(kind, "denied", shared.clock.now())
            .severity("warning")
            .source(peer)
            .reason(why)
            .detail("transport", transport),
    );
}

const EVICTED: &str =
    "gateway busy: this connection had no certificate yet and made room for a newer one";

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn serve_quic(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: ConnSlot,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let peer = incoming.remote_address();
    let connecting = incoming.accept()?;
    let conn = tokio::select! {
        c = tokio::time::timeout(shared.limits().handshake_timeout, connecting) => c
            .map_err(|_| anyhow!("handshake timed out"))?
            .context("handshake failed")?,
        () = slot.evicted() => {
            evicted(&shared, peer);
            return Ok(());
        }
    };
    // No certificate: an anonymous connection that can only log in (see `serve_stream`).
    let identity = match conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|certs| !certs.is_empty())
    {
        Some(certs) => Some(Arc::new(identity_from_certs(&shared, &certs)?)),
        None => None,
    };
    match &identity {
        Some(identity) => {
            if !slot.authenticate() {
                conn.close(CLOSE_EVICTED.into(), EVICTED.as_bytes());
                return Ok(());
            }
            info!(event = "connection_opened", transport = "quic", source = %peer, principal = %Escaped(&identity.principal()),
          serial = %identity.serial)
        }
        None => {
            info!(event = "connection_opened", transport = "quic", source = %peer, principal = "anonymous (login only)")
        }
    }
    // An anonymous connection lives for its one login, at most `anonymous_timeout`.
    let deadline = identity
        .is_none()
        .then(|| started + shared.limits().anonymous_timeout);
    // One login per connection without a certificate (issue 12), whatever its streams.
    let once = identity.is_none().then(crate::login_gate::OneLogin::new);
    let streams = quic_streams(&shared, &conn, identity, once, peer);
    tokio::select! {
        () = streams => {}
        () = until(deadline) => {
            let why = format!(
                "no login finished within anonymous_timeout ({}s)",
                shared.limits().anonymous_timeout.as_secs()
            );
            anonymous_closed(&shared, peer, "anonymous_deadline", &why, "quic");
            conn.close(CLOSE_DEADLINE.into(), why.as_bytes());
        }
        () = slot.evicted() => {
            evicted(&shared, peer);
            conn.close(CLOSE_EVICTED.into(), EVICTED.as_bytes());
        }
    }
    Ok(())
}

/// Accept the connection's streams, each a session of its own, until it closes. The first stream
/// must come within `first_request_timeout` of the handshake.
async fn quic_streams(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    identity: Option<Arc<Identity>>,
    once: Option<Arc<crate::login_gate::OneLogin>>,
    peer: SocketAddr,
) {
    let first_request = shared.limits().first_request_timeout;
    let mut first = true;
    loop {
        let accepted = if first {
            first = false;
            match tokio::time::timeout(first_request, conn.accept_bi()).await {
                Ok(a) => a,
                Err(_) => {
                    let why = format!(
                        "no request within first_request_timeout ({}s)",
                        first_request.as_secs()
                    );
                    info!(event = "connection_closed", source = %peer, reason = %why);
                    conn.close(CLOSE_DEADLINE.into(), why.as_bytes());
                    return;
                }
            }
        } else {
            conn.accept_bi().await
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(
                quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::LocallyClosed,
            ) => return,
            Err(e) => {
                info!(event = "connection_closed", source = %peer, reason = %Escaped(&e.to_string()));
                return;
            }
        };
        let shared = shared.clone();
        let identity = identity.clone();
        let once = once.clone();
        tokio::spawn(serve_stream(
            shared, identity, once, peer, "quic", recv, send,
        ));
    }
}

async fn tcp_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!(event = "accept_failed", reason = %e); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = stop.changed() => return,
        };
        if shared.noise_dropped(peer.ip()) {
            continue;
        }
        let slot = match shared.conns.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused(&shared, peer, why, "tcp");
                if let Some(permit) = shared.conns.reply_permit() {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        crate::admit::reply_tcp(acceptor, tcp, why).await;
                    });
                }
                continue;
            }
        };
        tokio::spawn(serve_tcp(shared.clone(), acceptor.clone(), tcp, peer, slot));
    }
}

/// One TLS-over-TCP connection: handshake (bounded; an anonymous one may be evicted meanwhile),
/// then its one request.
async fn serve_tcp(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
) {
    let started = tokio::time::Instant::now();
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(shared.limits().handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        h = handshake => match h {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                shared.audit_noise(peer, handshake_failed(&shared, peer, e.to_string(), "tcp"));
                return;
            }
            Err(_) => {
                let why = "handshake timed out".to_string();
                shared.audit_noise(peer, handshake_failed(&shared, peer, why, "tcp"));
                return;
            }
        },
        () = slot.evicted() => {
            evicted(&shared, peer);
            return;
        }
    };
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let identity = match (!certs.is_empty()).then(|| identity_from_certs(&shared, &certs)) {
        None => None,
        Some(Ok(i)) => Some(Arc::new(i)),
        Some(Err(e)) => {
            shared.audit_noise(
                peer,
                handshake_failed(&shared, peer, format!("{e:#}"), "tcp"),
            );
            return;
        }
    };
    if identity.is_some() && !slot.authenticate() {
        return;
    }
    let deadline = identity
        .is_none()
        .then(|| started + shared.limits().anonymous_timeout);
    let (r, w) = tokio::io::split(tls);
    // One request per TCP connection, so at most one login without a certificate.
    let once = identity.is_none().then(crate::login_gate::OneLogin::new);
    tokio::select! {
        () = serve_stream(shared.clone(), identity, once, peer, "tcp", r, w) => {}
        () = until(deadline) => {
            let why = format!(
                "no login finished within anonymous_timeout ({}s)",
                shared.limits().anonymous_timeout.as_secs()
            );
            anonymous_closed(&shared, peer, "anonymous_deadline", &why, "tcp");
        }
        () = slot.evicted() => {
            evicted(&shared, peer);
        }
    }
}

fn handshake_failed(shared: &Shared, peer: SocketAddr, reason: String, transport: &str) -> Event {
    Event::new("handshake_failed", "failure", shared.clock.now())
        .severity("warning")
        .source(peer)
        .reason(reason)
        .detail("transport", transport)
}

fn error_frame(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

/// One session: read the request, answer it, and for a permitted open, proxy until it ends.
async fn serve_stream<R, W>(
    shared: Arc<Shared>,
    identity: Option<Arc<Identity>>,
    once: Option<Arc<crate::login_gate::OneLogin>>,
    peer: SocketAddr,
    transport: &'static str,
    r: R,
    w: W,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let request = match tokio::time::timeout(
        shared.limits().first_request_timeout,
        read_request(&mut reader),
    )
    .await
    {
        Ok(Ok(req)) => req,
        Ok(Err(msg)) => {
            // Decode errors can quote the peer's text: escaped in the log and in the answer.
            let msg = ward_core::escape(&msg);
            warn!(event = "bad_request", source = %peer, principal = %Escaped(&identity.as_ref().map(|i| i.principal()).unwrap_or_else(|| "anonymous".into())), reason = %msg);
            let _ = writer
                .write_response(&error_frame(ErrorCode::BadRequest, msg))
                .await;
            let _ = writer.finish().await;
            return;
        }
        Err(_) => {
            let _ = writer
                .write_response(&error_frame(
                    ErrorCode::BadRequest,
                    "no request within first_request_timeout",
                ))
                .await;
            let _ = writer.finish().await;
            return;
        }
    };
    // The audit gate, first half: no audited operation starts while the audit log cannot be
    // written (sessions check the same in `open_session`).
    if audited(&request) && !shared.audit.healthy() {
        let e = crate::audit::AuditUnavailable("the last write failed".into());
        refuse(&mut writer, ErrorCode::RecordingUnavailable, e.to_string()).await;
        return;
    }
    // The unauthenticated path: a connection without a client certificate can log in and do
    // nothing else.
    let identity = match (identity, request) {
        (_, Request::Login(login)) => {
            // argon2id and signing take tens of milliseconds: off the async workers, behind the
            // login gate, one per anonymous connection.
            crate::login_gate::answer(&shared, peer, once.as_deref(), login, &mut writer).await;
            return;
        }
        (Some(identity), request) => (identity, request),
        (None, request) => {
            let what = frame::Frame::Request(request.clone()).type_byte();
            let verdict = shared.audit_noise(
                peer,
                Event::new("unauthenticated_request", "denied", shared.clock.now())
                    .severity("warning")
                    .source(peer)
                    .reason("request without a client certificate")
                    .detail("frame_type", what),
            );
            if verdict == Verdict::Drop {
                refuse(&mut writer, ErrorCode::Forbidden, "too many requests without a client certificate from your address; it is refused for a while (ward login first)".into()).await;
                return;
            }
            let _ = writer
                .write_response(&error_frame(
                    ErrorCode::Forbidden,
                    "this connection has no client certificate: the only thing it can do is log in (ward login)",
                ))
                .await;
            let _ = writer.finish().await;
            return;
        }
    };
    let (identity, request) = identity;
    let principal = principal_of(&identity);
    let response = match request {
        Request::Login(_) => return,
        Request::Open {
            device,
            break_glass,
            reason,
        } => {
            if let Err(refusal) = crate::hygiene::check_requested_device(&device) {
                shared.audit.emit(
                    Event::new("session_deny", "denied", shared.clock.now())
                        .principal(&identity)
                        .source(peer)
                        .device(ward_core::escape::escape_prefix(&device, 64))
                        .reason(refusal.clone()),
                );
                refuse(&mut writer, ErrorCode::BadRequest, refusal).await;
                return;
            }
            let break_glass = break_glass.then(|| reason.unwrap_or_default());
            open_session(
                shared,
                &identity,
                principal,
                peer,
                transport,
                &device,
                break_glass,
                reader,
                writer,
            )
            .await;
            return;
        }
        Request::Access(op) => {
            crate::jit::access_op(&shared, &identity, &principal, peer, op, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        Request::ListDevices => {
            // Exactly what opening each device would decide now (grants, approval policies,
            // maintenance windows, rules; locks ignored as before, so a lock is not a listing).
            let now = shared.clock.now();
            let grants = shared.jit.grants();
            let config = shared.config();
            let inputs = policy::AccessInputs {
                rules: &config.rules,
                locks: &[],
                approvals: &config.approvals,
                grants: &grants,
            };
            let devices = config
                .devices
                .iter()
                .filter_map(
                    |d| match policy::evaluate_access(&inputs, &principal, d, None, now) {
                        policy::Decision::Permit(p) => Some(frame::DeviceInfo {
                            id: d.id.to_string(),
                            protocol: d.protocol,
                            labels: d.labels.clone(),
                            rule: p.rule().to_owned(),
                        }),
                        policy::Decision::Deny(_) => None,
                    },
                )
                .collect();
            Response::Devices { devices }
        }
        Request::Lock {
            target,
            for_secs,
            reason,
            force,
        } => {
            let what = LockRequest {
                target,
                for_secs,
                reason,
                force,
            };
            gated(&shared, lock(&shared, &identity, &principal, what)).await
        }
        Request::Unlock { target } => {
            gated(&shared, unlock(&shared, &identity, &principal, target)).await
        }
        Request::Review(review) => {
            review_request(&shared, &identity, &principal, peer, review, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        Request::ListLocks => match require_security(&principal, "list locks") {
            Err(r) => r,
            Ok(()) => {
                let locks = shared.locks.read().map(|l| l.clone()).unwrap_or_default();
                Response::Locks {
                    locks: locks.iter().map(frame::LockInfo::from).collect(),
                }
            }
        },
    };
    let _ = writer.write_response(&response).await;
    let _ = writer.finish().await;
}

/// Whether answering `request` writes audit events (and so passes the audit gate).
fn audited(request: &Request) -> bool {
    match request {
        Request::Login(_)
        | Request::Access(_)
        | Request::Lock { .. }
        | Request::Unlock { .. }
        | Request::Review(_) => true,
        // Sessions pass the gate in `open_session`; listings write no event.
        Request::Open { .. } | Request::ListDevices | Request::ListLocks => false,
    }
}

/// The audit gate, second half: an audited operation's answer leaves the gateway only once the
/// events it emitted are durable in the audit log; otherwise the answer is a refusal.
pub(crate) async fn gated(shared: &Shared, response: Response) -> Response {
    match shared.audit.commit().await {
        Ok(()) => response,
        Err(e) => error_frame(ErrorCode::RecordingUnavailable, e.to_string()),
    }
}

async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<Request, String> {
    match reader.next().await {
        Ok(Some(Inbound::Control(bytes))) => match frame::decode_request(&bytes) {
            Ok(Some((req, _))) => Ok(req),
            Ok(None) => Err("truncated request frame".into()),
            Err(e) => Err(format!("bad request: {e}")),
        },
        Ok(Some(Inbound::Data(_) | Inbound::Eof)) => {
            Err("expected a request frame, got data".into())
        }
        Ok(None) => Err("stream closed before a request".into()),
        Err(e) => Err(format!("bad request: {e}")),
    }
}

fn require_security(p: &Principal, what: &str) -> Result<(), Response> {
    use ward_core::PrincipalKind as K;
    match p.kind {
        K::Security | K::Admin => Ok(()),
        _ => Err(Response::Error {
            code: ErrorCode::Forbidden,
            message: format!("{p} may not {what}: only security and admin identities can"),
        }),
    }
}

/// A `Request::Lock`'s fields.
struct LockRequest {
    target: LockTarget,
    for_secs: Option<u64>,
    reason: String,
    force: bool,
}

/// Everything a lock can match now: configured devices, orgs and principals named in the config,
/// users, grants and live sessions (security case: typo locks).
fn known_names(shared: &Shared) -> ward_core::suggest::KnownNames {
    use crate::users::UserStore;
    let config = shared.config();
    let mut k = ward_core::suggest::KnownNames {
        devices: config.devices.iter().map(|d| d.id.to_string()).collect(),
        ..Default::default()
    };
    fn principal(k: &mut ward_core::suggest::KnownNames, org: Option<&String>, name: &str) {
        k.principals.push(name.to_owned());
        if let Some(org) = org {
            k.principals.push(format!("{org}/{name}"));
            k.orgs.push(org.clone());
        }
    }
    for u in shared.jit.db.list_users().unwrap_or_default() {
        principal(&mut k, u.org.as_ref(), &u.name);
    }
    for g in shared.jit.grants().iter() {
        principal(&mut k, g.principal.org.as_ref(), &g.principal.name);
    }
    if let Ok(sessions) = shared.sessions.lock() {
        for s in sessions.values() {
            principal(&mut k, s.principal.org.as_ref(), &s.principal.name);
            k.principals.push(s.principal.serial.clone());
        }
    }
    let whos = config.rules.iter().map(|r| &r.who).chain(
        config
            .approvals
            .iter()
            .flat_map(|a| std::iter::once(&a.who).chain(a.approvers.iter())),
    );
    for who in whos {
        k.orgs.extend(who.org.clone());
        if let Some(name) = &who.name {
            principal(&mut k, who.org.as_ref(), name);
        }
    }
    k.orgs.sort();
    k.orgs.dedup();
    k.principals.sort();
    k.principals.dedup();
    k
}

fn lock(shared: &Shared, identity: &Identity, p: &Principal, req: LockRequest) -> Response {
    let LockRequest {
        target,
        for_secs,
        reason,
        force,
    } = req;
    if let Err(r) = require_security(p, "lock") {
        shared.audit.emit(
            Event::new("lock", "denied", shared.clock.now())
                .principal(identity)
                .reason(format!(
                    "only security and admin identities may lock; target {target}"
                )),
        );
        return r;
    }
    if let Err(e) = ward_core::suggest::check_lock_target(&target, &known_names(shared), force) {
        shared.audit.emit(
            Event::new("lock", "denied", shared.clock.now())
                .principal(identity)
                .reason(e.to_string())
                .detail("target", ward_core::escape(&target.to_string())),
        );
        return error_frame(ErrorCode::BadRequest, e.to_string());
    }
    let now = shared.clock.now();
    let until =
        for_secs.map(|s| now + time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 2)));
    let lock = Lock {
        target: target.clone(),
        until,
        reason: reason.clone(),
        by: identity.principal(),
    };
    if let Err(e) = shared.store.put_lock(&lock) {
        return Response::Error {
            code: ErrorCode::Internal,
            message: format!("lock not stored: {e}"),
        };
    }
    if let Ok(mut locks) = shared.locks.write() {
        locks.retain(|l| l.target != target);
        locks.push(lock.clone());
    }
    let cut = shared.cut_where(
        |s| policy::lock_applies(&lock, &s.principal, &s.device, now),
        &format!("locked: {reason} (by {})", lock.by),
    );
    shared.audit.emit(
        Event::new("lock", "success", now)
            .severity("warning")
            .principal(identity)
            .reason(reason.clone())
            .detail("target", target.to_string())
            .detail(
                "until",
                until
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "until unlocked".into()),
            )
            .detail("sessions_ended", cut)
            .detail("forced", force),
    );
    Response::Ok {
        message: format!(
            "locked {}{}; {cut} live session(s) ended",
            ward_core::escape(&target.to_string()),
            if force { " (forced)" } else { "" }
        ),
    }
}

fn unlock(shared: &Shared, identity: &Identity, p: &Principal, target: LockTarget) -> Response {
    if let Err(r) = require_security(p, "unlock") {
        shared.audit.emit(
            Event::new("unlock", "denied", shared.clock.now())
                .principal(identity)
                .reason(format!(
                    "only security and admin identities may unlock; target {target}"
                )),
        );
        return r;
    }
    match shared.store.remove_lock(&target) {
        Err(e) => Response::Error {
            code: ErrorCode::Internal,
            message: format!("unlock not stored: {e}"),
        },
        Ok(existed) => {
            if let Ok(mut locks) = shared.locks.write() {
                locks.retain(|l| l.target != target);
            }
            shared.audit.emit(
                Event::new(
                    "unlock",
                    if existed { "success" } else { "failure" },
                    shared.clock.now(),
                )
                .principal(identity)
                .detail("target", target.to_string()),
            );
            if existed {
                Response::Ok {
                    message: format!("unlocked {target}"),
                }
            } else {
                Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("no lock on {target}"),
                }
            }
        }
    }
}

fn to_instant(shared: &Shared, at: OffsetDateTime) -> tokio::time::Instant {
    let left = at - shared.clock.now();
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

async fn dial(device: &Device, timeout: Duration) -> Result<TcpStream, (ErrorCode, String)> {
    let addr = device.address.to_string();
    let connect = async {
        match &device.netns {
            None => TcpStream::connect(&addr).await,
            Some(ns) => {
                let to = tokio::net::lookup_host(&addr)
                    .await?
                    .next()
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
                    })?;
                crate::netns::connect_in(ns, to, timeout).await
            }
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err((
            ErrorCode::DeviceUnreachable,
            format!("device {} refused the connection; it may be off or its service stopped — ask biomedical engineering to check it", device.id),
        )),
        Ok(Err(e)) => Err((ErrorCode::DeviceUnreachable, format!("device {} is unreachable: {e}", device.id))),
        Err(_) => Err((
            ErrorCode::DeviceTimeout,
            format!("device {} did not answer within {:?}; it may be off the network", device.id, timeout),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_session<R, W>(
    shared: Arc<Shared>,
    identity: &Identity,
    principal: Principal,
    peer: SocketAddr,
    transport: &'static str,
    device_id: &str,
    break_glass: Option<String>,
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session_id = format!(
        "{:016x}",
        shared.next_session.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u64>()
    );
    let span = info_span!("session", session_id = %session_id, principal = %Escaped(&identity.principal()), serial = %identity.serial,
        source = %peer, transport, device = %device_id, decision = field::Empty, rule = field::Empty,
        bytes_up = field::Empty, bytes_down = field::Empty, end_reason = field::Empty);
    async move {
        let now = shared.clock.now();
        let audit = |event: &str, outcome: &str| {
            Event::new(event, outcome, shared.clock.now())
                .principal(identity)
                .source(peer)
                .device(device_id)
                .session(session_id.clone())
        };
        if shared.draining.load(Ordering::Acquire) {
            refuse(&mut writer, ErrorCode::ShuttingDown, "gateway is shutting down; try again shortly".into()).await;
            return;
        }
        if !shared.audit.healthy() {
            shared.audit.emit(audit("session_deny", "failure").reason("audit log unavailable"));
            let e = crate::audit::AuditUnavailable("the last write failed".into());
            refuse(&mut writer, ErrorCode::RecordingUnavailable, format!("session refused: {e}")).await;
            return;
        }
        if now > identity.not_after {
            let msg = format!("certificate expired at {}; get a new one (`ward ca issue` or `ward login`)", identity.not_after);
            tracing::Span::current().record("decision", "deny");
            shared.audit.emit(audit("session_deny", "denied").reason(msg.clone()));
            let _ = writer.write_response(&Response::Denied { reason: msg }).await;
            let _ = writer.finish().await;
            return;
        }
        let locks = shared.locks.read().map(|l| l.clone()).unwrap_or_default();
        // The session's states are types (ward_core::session): the device dialed below can only
        // come out of an `Authorized`, which only a policy permit builds.
        let config = shared.config();
        let grants = shared.jit.grants();
        let inputs = policy::AccessInputs {
            rules: &config.rules,
            locks: &locks,
            approvals: &config.approvals,
            grants: &grants,
        };
        let authorized = match Handshaken::new(principal.clone()).authorize_access(
            &inputs,
            &config.devices,
            device_id,
            break_glass.as_deref(),
            now,
        ) {
            Err(denied) => {
                let reason = denied.reason.to_string();
                tracing::Span::current().record("decision", "deny");
                let mut e = audit("session_deny", "denied").reason(reason.clone());
                if let Some(why) = &break_glass {
                    e = e.severity("high").detail("break_glass", true).detail("justification", why.clone());
                }
                shared.audit.emit(e);
                let _ = writer.write_response(&Response::Denied { reason }).await;
                let _ = writer.finish().await;
                return;
            }
            Ok(a) => a,
        };
        let (permit, device) = (authorized.permit(), authorized.device());
        tracing::Span::current().record("decision", "permit").record("rule", permit.rule());
        if shared.live_sessions() >= shared.limits().max_sessions as usize {
            shared.audit.emit(audit("session_deny", "failure").reason("session limit reached"));
            refuse(&mut writer, ErrorCode::Overloaded, "gateway is at its session limit; try again shortly".into()).await;
            return;
        }
        // Fail closed: the recording is open (header and first checkpoint on disk) before the
        // gateway even connects to the device.
        let recorder = match &shared.sink {
            None => None,
            Some(sink) => {
                let meta = SessionMeta {
                    session_id: session_id.clone(),
                    principal_kind: identity.kind.to_string(),
                    principal_name: identity.name.clone(),
                    principal_org: identity.org.clone(),
                    cert_serial: identity.serial.clone(),
                    source: peer.to_string(),
                    device: device_id.to_string(),
                    device_addr: device.address.to_string(),
                    protocol: device.protocol.to_string(),
                    rule: permit.rule().to_string(),
                    transport: transport.to_string(),
                    break_glass: permit.break_glass(),
                    started_unix_ms: unix_ms(now),
                };
                match SessionRecorder::start(sink, shared.signer.clone(), &meta).await {
                    Ok(r) => {
                        let path = crate::review::recordings_dir(&config.gateway.state_dir).join(format!("{session_id}.{}", recorder::EXT));
                        Some(r.indexed(crate::session_index::IndexHook::open(shared.jit.db.clone(), path, &meta)))
                    }
                    Err(e) => {
                        shared.audit.emit(audit("recording_failed", "failure").severity("high").reason(format!("recording could not be opened: {e}")));
                        shared.audit.emit(audit("session_deny", "failure").reason("recording unavailable"));
                        let why = if e.kind() == std::io::ErrorKind::StorageFull { "the recording disk is full" } else { "its recording could not be opened" };
                        refuse(&mut writer, ErrorCode::RecordingUnavailable, format!("session refused: {why}, and no session runs unrecorded; tell the security team")).await;
                        return;
                    }
                }
            }
        };
        let tcp = match dial(device, shared.limits().device_connect_timeout).await {
            Ok(s) => s,
            Err((code, msg)) => {
                shared.audit.emit(audit("session_open", "failure").reason(msg.clone()));
                if let Some(rec) = recorder {
                    let _ = rec.finish(EndInfo { ended_unix_ms: unix_ms(shared.clock.now()), reason: msg.clone(), bytes_up: 0, bytes_down: 0 }).await;
                }
                refuse(&mut writer, code, msg).await;
                return;
            }
        };
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let (cut_tx, mut cut_rx) = watch::channel(None);
        if let Ok(mut s) = shared.sessions.lock() {
            s.insert(id, LiveSession { principal: principal.clone(), device: device_id.to_string(), grant: permit.grant().map(str::to_owned), break_glass: permit.break_glass(), address: device.address.clone(), cut: cut_tx });
        }
        // So may a config reload (which re-checks registered sessions only).
        let config_now = shared.config();
        if !Arc::ptr_eq(&config_now, &config) {
            let grants = shared.jit.grants();
            if let Some(live) = shared.sessions.lock().ok().as_ref().and_then(|s| s.get(&id)) {
                if let Recheck::Cut(reason) = recheck(&config_now, &grants, live, shared.clock.now()) {
                    live.cut.send_replace(Some(Cut(reason)));
                }
            }
        }
        // A lock may have landed between the policy check and registration.
        let locks_now = shared.locks.read().map(|l| l.clone()).unwrap_or_default();
        if let Some(l) = locks_now.iter().find(|l| policy::lock_applies(l, &principal, device_id, now)) {
            let _ = cut_rx_send(&shared, id, format!("locked: {}", l.reason));
        }
        let opened = Response::Opened {
            session_id: session_id.clone(),
            device: device_id.to_string(),
            rule: permit.rule().to_string(),
            ends_at_unix: permit.ends_at().unix_timestamp(),
            end_reason_if_uncut: permit.end_reason().to_string(),
        };
        let mut open_event = audit("session_open", "success")
            .reason(format!("permitted by rule {}", permit.rule()))
            .detail("rule", permit.rule())
            .detail("transport", transport)
            .detail("ends_at", permit.ends_at().to_string())
            .detail("recorded", recorder.is_some());
        if let Some(g) = permit.grant() {
            open_event = open_event.detail("grant", g);
        }
        if permit.break_glass() {
            // Emergency access: loud, recorded, capped (HIPAA 164.312(a)(2)(ii)).
            open_event = open_event
                .severity("high")
                .detail("break_glass", true)
                .detail("justification", break_glass.clone().unwrap_or_default());
            warn!(event = "break_glass", principal = %Escaped(&principal.to_string()), device = %device_id, "BREAK-GLASS session opened");
        }
        shared.audit.emit(open_event);
        // The audit gate: no byte moves before the session's opening is in the audit log.
        if let Err(e) = shared.audit.written().await {
            if let Ok(mut s) = shared.sessions.lock() {
                s.remove(&id);
            }
            if let Some(rec) = recorder {
                let _ = rec.finish(EndInfo { ended_unix_ms: unix_ms(shared.clock.now()), reason: e.to_string(), bytes_up: 0, bytes_down: 0 }).await;
            }
            refuse(&mut writer, ErrorCode::RecordingUnavailable, format!("session refused: {e}")).await;
            return;
        }
        let activity = Activity::new();
        // Decode → decide → record → forward: the device's stages, then the recorder.
        let stage_ctx = StageContext { device, principal: &principal, rule: permit.rule(), now };
        let tap = Pipeline::for_session(shared.stages.as_deref(), &stage_ctx, recorder.as_ref().map(|r| r.tap()), shared.clock.clone());
        let mut rec_failed = recorder.as_ref().map(|r| r.failed());
        let end = if writer.write_response(&opened).await.is_err() {
            "client went away".to_string()
        } else {
            // Device I/O errors are tagged, so the end reason names the device or the client.
            let (dev_r, dev_w) = tcp.into_split();
            let (mut dev_r, mut dev_w) = (datapath::DeviceIo(dev_r), datapath::DeviceIo(dev_w));
            let deadline = to_instant(&shared, permit.ends_at());
            let idle = shared.limits().idle_timeout;
            let end_reason_text = permit.end_reason().to_string();
            let up_tap = tap.as_ref().map(|t| (t, Direction::Up));
            let down_tap = tap.as_ref().map(|t| (t, Direction::Down));
            let proxy = async {
                let up = datapath::framed_to_raw(&mut reader, &mut dev_w, &activity, &activity.up, up_tap);
                let down = datapath::raw_to_framed(&mut dev_r, &mut writer, &activity, &activity.down, down_tap);
                tokio::pin!(up, down);
                let (mut up_done, mut down_done) = (None, None);
                while up_done.is_none() || down_done.is_none() {
                    tokio::select! {
                        r = &mut up, if up_done.is_none() => {
                            match r {
                                Ok(FramedEnd::Eof) => up_done = Some(()),
                                Ok(FramedEnd::Abrupt) => return Ok("client went away".to_string()),
                                // Errors end the session with a Closed frame naming them (a client
                                // sending bad frames learns what was wrong).
                                Ok(FramedEnd::Control(_)) => return Err(Cut("client sent an unexpected control frame during the session".to_string())),
                                Err(e) if datapath::is_device_error(&e) => return Err(Cut(format!("device {device_id} closed or failed: {e}"))),
                                Err(e) if recorder::is_recording_failure(&e) => return Err(Cut(format!("recording failed, session ended (fail closed): {e}"))),
                                Err(e) if crate::pipeline::is_stage_stop(&e) => return Err(Cut(e.to_string())),
                                Err(e) => return Err(Cut(format!("client stream error: {e}"))),
                            }
                        }
                        r = &mut down, if down_done.is_none() => {
                            match r {
                                Ok(()) => down_done = Some(()),
                                Err(e) if datapath::is_device_error(&e) => return Err(Cut(format!("device {device_id} closed or failed: {e}"))),
                                Err(e) if recorder::is_recording_failure(&e) => return Err(Cut(format!("recording failed, session ended (fail closed): {e}"))),
                                Err(e) if crate::pipeline::is_stage_stop(&e) => return Err(Cut(e.to_string())),
                                Err(e) => return Err(Cut(format!("client stream error: {e}"))),
                            }
                        }
                    }
                }
                Ok("completed".to_string())
            };
            let idle_watch = async {
                loop {
                    let at = activity.last() + idle;
                    tokio::time::sleep_until(at).await;
                    if activity.last() + idle <= tokio::time::Instant::now() {
                        return;
                    }
                }
            };
            let recording_watch = async {
                match rec_failed.as_mut() {
                    Some(rx) => loop {
                        if let Some(e) = rx.borrow_and_update().clone() {
                            return e;
                        }
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                r = proxy => r,
                _ = tokio::time::sleep_until(deadline) => Err(Cut(format!("{end_reason_text} reached"))),
                _ = idle_watch => Err(Cut(format!("idle for {}s", idle.as_secs()))),
                c = wait_cut(&mut cut_rx) => Err(c),
                e = recording_watch => Err(Cut(format!("recording failed, session ended (fail closed): {e}"))),
            };
            match result {
                Ok(r) => r,
                Err(Cut(reason)) => {
                    if !writer.torn() {
                        let closed = Response::Closed { reason: reason.clone() };
                        let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_response(&closed)).await;
                    }
                    reason
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.finish()).await;
        if let Ok(mut s) = shared.sessions.lock() {
            s.remove(&id);
        }
        let (up, down) = (activity.up.load(Ordering::Relaxed), activity.down.load(Ordering::Relaxed));
        drop(tap);
        if let Some(rec) = recorder {
            let info = EndInfo { ended_unix_ms: unix_ms(shared.clock.now()), reason: end.clone(), bytes_up: up, bytes_down: down };
            if let Err(e) = rec.finish(info).await {
                shared.audit.emit(audit("recording_failed", "failure").severity("high").reason(e));
            }
        }
        let span = tracing::Span::current();
        span.record("bytes_up", up);
        span.record("bytes_down", down);
        span.record("end_reason", end.as_str());
        shared.audit.emit(
            audit("session_close", "success").reason(end.clone()).detail("bytes_up", up).detail("bytes_down", down),
        );
        drop(writer.get_mut().shutdown().await);
    }
    .instrument(span)
    .await;
}

/// Serve a security-team review request: listings, recordings and the audit log, each access audited.
async fn review_request<W: AsyncWrite + Unpin>(
    shared: &Shared,
    identity: &Identity,
    principal: &Principal,
    peer: SocketAddr,
    review: frame::Review,
    writer: &mut FrameWriter<W>,
) {
    use frame::Review;
    let now = shared.clock.now();
    let config = shared.config();
    let state_dir = &config.gateway.state_dir;
    let op = match &review {
        Review::ListSessions { .. } => "recording_listed",
        Review::Recording { purpose, .. } if purpose == "replay" => "recording_replayed",
        Review::Recording { purpose, .. } if purpose == "export" => "recording_exported",
        Review::Recording { .. } => "recording_verified",
        Review::AuditLog => "audit_log_read",
        Review::PublicKey => "public_key_read",
    };
    if let Err(r) = require_security(principal, "review recordings or the audit log") {
        shared.audit.emit(
            Event::new(op, "denied", now)
                .severity("warning")
                .principal(identity)
                .source(peer)
                .reason("only security and admin identities may review recordings"),
        );
        let _ = writer.write_response(&r).await;
        return;
    }
    let key = shared.signer.public_key();
    let base = Event::new(op, "success", now)
        .principal(identity)
        .source(peer);
    if matches!(review, Review::AuditLog) {
        // Hand out a log whose every line is covered by a signed checkpoint.
        shared.audit.flush().await;
    }
    // Off the async workers, behind a limit (security case TBD): see `review_jobs`.
    let dir = state_dir.clone();
    let job = move || crate::review_jobs::review_job(&dir, &key, base, review);
    let result = match shared.reviews.run(job).await {
        Ok(r) => r,
        Err(busy) => {
            shared.audit.emit(
                Event::new(op, "failure", now)
                    .principal(identity)
                    .source(peer)
                    .reason(busy.to_string()),
            );
            let _ = writer
                .write_response(&error_frame(ErrorCode::Overloaded, busy.to_string()))
                .await;
            return;
        }
    };
    match result {
        Ok((answer, ev)) => {
            use crate::review_jobs::Answer;
            shared.audit.emit(ev);
            // Nothing is handed out before the review is in the audit log.
            if let Err(e) = shared.audit.commit().await {
                let _ = writer
                    .write_response(&error_frame(ErrorCode::RecordingUnavailable, e.to_string()))
                    .await;
                return;
            }
            match answer {
                Answer::Message(message) => {
                    let _ = writer.write_response(&Response::Ok { message }).await;
                }
                Answer::Bytes(what, bytes) => {
                    let _ = writer.write_response(&Response::Stream { what }).await;
                    let _ = datapath::write_stream(writer, &bytes).await;
                }
                Answer::File(what, file, len) => {
                    let _ = writer.write_response(&Response::Stream { what }).await;
                    let _ = crate::review_jobs::send_file(writer, file, len).await;
                }
            }
        }
        Err(e) => {
            shared.audit.emit(
                Event::new(op, "failure", now)
                    .principal(identity)
                    .source(peer)
                    .reason(format!("{e:#}")),
            );
            let _ = writer
                .write_response(&error_frame(ErrorCode::BadRequest, format!("{e:#}")))
                .await;
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(writer: &mut FrameWriter<W>, code: ErrorCode, msg: String) {
    let _ = writer.write_response(&error_frame(code, msg)).await;
    let _ = writer.finish().await;
}

/// [`session::recheck`] of one live session against `config`.
fn recheck(
    config: &Config,
    grants: &[ward_core::access::Grant],
    live: &LiveSession,
    now: OffsetDateTime,
) -> Recheck {
    let inputs = policy::AccessInputs {
        rules: &config.rules,
        locks: &[],
        approvals: &config.approvals,
        grants,
    };
    session::recheck(
        &inputs,
        &config.devices,
        &live.principal,
        &live.device,
        &live.address,
        live.break_glass,
        now,
    )
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn cut_rx_send(shared: &Shared, id: u64, reason: String) -> bool {
    let Ok(s) = shared.sessions.lock() else {
        return false;
    };
    match s.get(&id) {
        Some(live) => {
            live.cut.send_replace(Some(Cut(reason)));
            true
        }
        None => false,
    }
}

async fn wait_cut(rx: &mut watch::Receiver<Option<Cut>>) -> Cut {
    loop {
        if let Some(c) = rx.borrow_and_update().clone() {
            return c;
        }
        if rx.changed().await.is_err() {
            // Sender gone: the session is being torn down elsewhere; never resolve.
            std::future::pending::<()>().await;
        }
    }
}

/// Load a config file and resolve its relative paths against the file's directory.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    parse_config(path, &text)
}

/// [`load_config`] on text already read from `path`.
pub(crate) fn parse_config(path: &std::path::Path, text: &str) -> anyhow::Result<Config> {
    let mut config = Config::parse(text, &path.display().to_string())?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    config.resolve_paths(base);
    Ok(config)
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("quic", &self.quic_addr)
            .field("tcp", &self.tcp_addr)
            .finish()
    }
}
