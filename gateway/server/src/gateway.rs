//! The gateway: QUIC and TLS-over-TCP listeners, per-session authorization, the device dialer and
//! the proxy. Everything here is I/O around the pure core in `ward-core` (frames, policy) and
//! `ward-ca` (identity validation).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use ward_ca::{Clock, Identity, Usage, Validator};
use ward_core::admission::{Refusal, CLOSE_DEADLINE, CLOSE_EVICTED};
use ward_core::config::{Config, Limits};
use ward_core::frame::{self, ErrorCode, LockTarget, Request, Response};
use ward_core::noise::{NoiseLimiter, NoiseLimits, Verdict};
use ward_core::policy::Lock;
use ward_core::{EndReason, Escaped, Principal};

use crate::admit::{ConnSlot, Conns};
use crate::audit::{AuditLog, AuditWriter, Event};
use crate::datapath::{self, FrameReader, FrameWriter, Inbound};
use crate::dispatch::{self as dispatch, error_frame};
use crate::policy_watch::{PolicySnapshot, PolicyWatch, Published};
use crate::recorder::Sink;
use crate::recording_store::RecordingStore;
use crate::recovery::recover_recordings;
use crate::services::Caller;
use crate::tls;
use ward_core::stage::StageFactory;
use ward_recording::Signer;
use ward_store::backend::Backend;

/// Live state shared by the listeners and every session.
pub struct Shared {
    /// The one watched policy snapshot (config, locks, grants, disabled users, shutdown) and the
    /// live sessions re-checking themselves against it ([`crate::policy_watch`]). Read the config
    /// through [`Shared::config`], once per decision.
    pub(crate) policy: PolicyWatch,
    /// `[gateway]`'s limits: fixed for the gateway's life (a reload that changes them is refused).
    limits: Limits,
    verified: Arc<tls::VerifiedCache>,
    pub(crate) audit: AuditLog,
    /// The signing keys: new sessions take the current signer when they start (rotation swaps
    /// it), verification uses the keyring ([`crate::signing`]).
    pub(crate) keys: crate::signing::SigningKeys,
    /// Where checkpoints are anchored off the host (`[audit] anchors`), if anywhere.
    pub(crate) anchors: Option<crate::anchors::Anchors>,
    pub(crate) sink: Option<Arc<dyn Sink>>,
    pub(crate) validator: Validator,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) jit: crate::jit::Jit,
    pub(crate) next_session: AtomicU64,
    /// Connection slots: anonymous and certificate-holder budgets, per-source caps.
    conns: Arc<Conns>,
    pub(crate) draining: AtomicBool,
    /// Unauthenticated events, aggregated per source (security case 31).
    noise: Mutex<NoiseLimiter>,
    /// The recordings (the recorder writes through `sink`, which wraps them unless injected).
    pub(crate) recordings: RecordingStore,
    /// Reviews of recordings and the audit log.
    review: crate::services::review::ReviewService,
    /// Where sessions get their stages ([`crate::pipeline`]); `None`: no device has any.
    pub(crate) stages: Option<Arc<dyn StageFactory>>,
    /// The credential vault: its key, its table, the rotation driver ([`crate::services::vault`]).
    pub(crate) vault: Arc<crate::services::vault::Vault>,
    /// Certificate pins of devices that speak TLS themselves (`ward devices pin`).
    pub(crate) pins: Arc<dyn ward_store::pins::PinStore>,
    /// `ward login --sso` logins waiting for a browser to approve them.
    pub(crate) sso_cli: Arc<crate::services::sso::CliLogins>,
    /// The console's bound address (`[web] listen`, restart-only), for the URL `ward login
    /// --sso` prints.
    pub(crate) web_addr: Option<SocketAddr>,
}

impl Shared {
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The review service (recordings, the audit log, the session listing).
    pub(crate) fn review(&self) -> &crate::services::review::ReviewService {
        &self.review
    }

    /// A snapshot of the current config. Take one per decision, so that no decision mixes the
    /// config before a reload with the one after.
    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.policy.current().config)
    }

    /// Replace the config with `new` if `check(current)` passes, and publish it: live sessions
    /// re-check themselves against it. The check and the swap happen under the watch's one
    /// lock, so concurrent reloads cannot interleave.
    pub(crate) fn swap_config<E>(
        &self,
        new: Config,
        check: impl FnOnce(&Config) -> Result<(), E>,
    ) -> Result<Published, E> {
        self.policy.publish(self.clock.now(), |cur| {
            check(&cur.config)?;
            Ok(Some(PolicySnapshot {
                config: Arc::new(new),
                ..cur.clone()
            }))
        })
    }

    /// Publish the current locks plus `lock` (replacing one on the same target); returns how
    /// many live sessions it ends.
    pub(crate) fn publish_lock(&self, lock: Lock) -> usize {
        self.jit.lock_writes.fetch_add(1, Ordering::AcqRel);
        let published = self.policy.update(self.clock.now(), |cur| {
            let mut locks: Vec<Lock> = cur
                .locks
                .iter()
                .filter(|l| l.target != lock.target)
                .cloned()
                .collect();
            locks.push(lock);
            Some(PolicySnapshot {
                locks: locks.into(),
                ..cur.clone()
            })
        });
        published.ending(|e| matches!(e, EndReason::Locked { .. }))
    }

    /// Publish the current locks without the one on `target`.
    pub(crate) fn publish_unlock(&self, target: &LockTarget) {
        self.jit.lock_writes.fetch_add(1, Ordering::AcqRel);
        self.policy.update(self.clock.now(), |cur| {
            let locks: Vec<Lock> = cur
                .locks
                .iter()
                .filter(|l| l.target != *target)
                .cloned()
                .collect();
            Some(PolicySnapshot {
                locks: locks.into(),
                ..cur.clone()
            })
        });
    }

    /// Publish the JIT state's current grants and disabled users, and the locks read from the
    /// store, if they changed (the store refresh, [`crate::jit::refresh`]); sessions under a new
    /// lock, on a revoked or ended grant and sessions of disabled users then end. Read under the
    /// watch's lock, so concurrent refreshes publish in the order they read. `locks` carries the
    /// lock-write count read before the store was: when this gateway published a lock or unlock
    /// since, the read set may be older than the published one and is not used.
    pub(crate) fn publish_jit(&self, locks: Option<(Vec<Lock>, u64)>) {
        self.policy.update(self.clock.now(), |cur| {
            let locks = locks
                .filter(|(_, before)| self.jit.lock_writes.load(Ordering::Acquire) == *before)
                .map(|(l, _)| l)
                .filter(|l| !crate::jit::same_locks(l, &cur.locks));
            let grants = self.jit.grants();
            let disabled: BTreeSet<String> = {
                let d = self
                    .jit
                    .disabled
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                d.iter().cloned().collect()
            };
            if *cur.grants == *grants && *cur.disabled == disabled && locks.is_none() {
                return None;
            }
            Some(PolicySnapshot {
                grants,
                disabled: Arc::new(disabled),
                locks: match locks {
                    Some(l) => l.into(),
                    None => cur.locks.clone(),
                },
                ..cur.clone()
            })
        });
    }

    pub(crate) fn live_sessions(&self) -> usize {
        self.policy.live_count()
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
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    audit_writer: AuditWriter,
    quic_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    web_addr: Option<SocketAddr>,
    consoles_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    stop_accepting: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The state dir's lock; dropped last (field order), after the audit writer.
    _state_lock: crate::state_lock::StateLock,
}

pub use crate::services::principal_of;

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
    /// The device driver that rotates vaulted passwords (`ward vault rotate`); `None`: the
    /// telnet driver ([`crate::services::vault::TelnetRotator`]).
    pub rotator: Option<Arc<dyn crate::services::vault::DeviceRotator>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("no_recording", &self.no_recording)
            .field("stages", &self.stages.is_some())
            .field("rotator", &self.rotator.is_some())
            .finish_non_exhaustive()
    }
}

/// The gateway's recording/audit signing key: `<state_dir>/audit.key` (PKCS#8, 0600), created at
/// first start with its keyring and gateway id ([`crate::signing::SigningKeys`]); its public key
/// is written to `audit.pub` (hex).
pub fn load_or_create_signer(state_dir: &std::path::Path) -> anyhow::Result<Arc<Signer>> {
    let now = ward_ca::SystemClock.now();
    Ok(crate::signing::SigningKeys::load_or_create(state_dir, now)?.signer())
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
        let (validator, chain, key) = load_identity(g, clock.as_ref())?;
        // One gateway per state dir: locked before anything in it is read or written (store,
        // audit log, crash recovery), held until this gateway is dropped.
        let state_lock = open_state_dir(&g.state_dir)?;
        let keys = crate::signing::SigningKeys::load_or_create(&g.state_dir, clock.now())?;
        let backend = open_backend(&config, keys.gateway_id()).await?;
        let session_index: Arc<dyn crate::session_index::SessionIndex> = backend.index.clone();
        let jit =
            crate::jit::Jit::new(crate::jit::Stores::of(&backend), issuing_ca(g), clock.now())?;
        let vault = crate::services::vault::open_vault(
            &config.inject.vault,
            &g.state_dir,
            &backend.shared_vault(),
            options.rotator.clone().unwrap_or_else(|| {
                Arc::new(crate::services::vault::TelnetRotator::new(clock.clone()))
            }),
        )?;
        let (anchors, anchor_task) =
            match crate::anchors::Anchors::new(&config.audit, keys.gateway_id(), clock.clone())? {
                Some((a, t)) => (Some(a), Some(t)),
                None => (None, None),
            };
        let (audit, audit_writer) = AuditLog::open_with(
            &g.state_dir,
            &*keys.keyring(),
            keys.signer(),
            clock.clone(),
            anchors.clone(),
        )?;
        if let Some(task) = anchor_task {
            tokio::spawn(task.run(audit.downgrade()));
        }
        let recordings = open_recordings(&config)?.with_index(session_index);
        let (sink, disk, spool) = recording_sink(g, &options, &recordings, &audit, &clock);
        let sealed = recover_recordings(&recordings, &keys, &audit, anchors.as_ref(), clock.now())?;
        if sealed > 0 {
            tracing::warn!(sealed, "sealed recordings left open by a previous crash");
        }
        // Uploads from the spool start once recovery has sealed what a crash left open.
        recordings.start_background();
        let object_store_watch = recordings
            .spool()
            .map(|info| crate::diskwatch::watch_object_store(info, audit.clone(), clock.clone()));
        let locks = backend.locks.active_locks(clock.now())?;
        let disabled = jit
            .disabled
            .read()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        let verified = Arc::new(tls::VerifiedCache::default());
        let server_tls = tls::server_config(
            validator.clone(),
            clock.clone(),
            chain.clone(),
            key.clone_key(),
            verified.clone(),
        )?;

        // The web console (docs/web.md): bound before anything is served, so a taken port
        // stops the start with a reason.
        let web = match config.web.listen {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("binding the web console's listener {addr} ([web] listen)")
                })?;
                let tls = crate::web::server::tls_config(
                    validator.clone(),
                    clock.clone(),
                    chain.clone(),
                    key.clone_key(),
                )?;
                Some((listener, Arc::new(tls)))
            }
        };
        let web_addr = web.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        // Devices' own HTTP consoles, on an origin of their own (docs/web.md).
        let consoles = match (config.web.consoles_listen, &web) {
            (Some(addr), Some((_, tls))) => {
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("binding the device consoles' listener {addr} ([web] consoles_listen)")
                })?;
                Some((listener, tls.clone()))
            }
            _ => None,
        };
        let consoles_addr = consoles.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let limits = g.limits;
        let (endpoint, tcp) = bind_listeners(g, &server_tls).await?;
        let quic_addr = endpoint.local_addr()?;
        let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;

        audit.emit(
            Event::new("config_loaded", "success", clock.now())
                .detail("devices", config.devices.len())
                .detail("rules", config.rules.len()),
        );
        for ev in vault.start_events(clock.now()) {
            audit.emit(ev);
        }
        audit.emit(started_event(
            clock.now(),
            quic_addr,
            tcp_addr,
            !options.no_recording,
        ));
        // Reviews verify every gateway's recordings: this one's keys, then the keys the other
        // gateways sharing the store registered.
        let fleet_keys = {
            let (keys, registry) = (keys.clone(), backend.gateways.clone());
            tokio::task::spawn_blocking(move || crate::fleet::FleetKeys::new(keys, registry))
                .await
                .context("reading the gateway registry")?
        };
        let review = crate::services::review::ReviewService::new(
            recordings.clone(),
            g.state_dir.clone(),
            fleet_keys.clone(),
            audit.clone(),
            Arc::new(crate::review_jobs::ReviewGate::default()),
            clock.clone(),
        )
        .with_signer({
            let keys = keys.clone();
            Arc::new(move || keys.signer())
        })
        .with_identity(crate::services::review::reviewer_identity(&config.review)?)
        .with_search(backend.search.clone());
        let shared = Arc::new(Shared {
            limits: config.gateway.limits,
            policy: PolicyWatch::new(PolicySnapshot::new(
                Arc::new(config),
                locks,
                jit.grants(),
                disabled,
            )),
            verified,
            audit,
            keys,
            anchors,
            sink,
            validator,
            clock,
            jit,
            next_session: AtomicU64::new(rand::random::<u32>() as u64),
            conns: Arc::new(Conns::new(&limits)),
            draining: AtomicBool::new(false),
            noise: Mutex::new(NoiseLimiter::new(NoiseLimits::default())),
            review,
            recordings,
            stages: options.stages.clone(),
            vault,
            pins: backend.pins.clone(),
            sso_cli: Arc::new(crate::services::sso::CliLogins::new()),
            web_addr,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(disk.run());
        if let Some(spool) = spool {
            tasks.spawn(spool.run());
        }
        if let Some(w) = object_store_watch {
            tasks.spawn(w);
        }
        tasks.spawn(crate::jit::refresh_loop(
            shared.clone(),
            backend.changes.clone(),
        ));
        tasks.spawn(crate::fleet::heartbeat_loop(
            backend.gateways.clone(),
            crate::fleet::Registration {
                id: shared.keys.gateway_id().to_string(),
                quic: quic_addr,
                tcp: tcp_addr,
                web: web_addr,
                started: shared.clock.now(),
            },
            shared.keys.clone(),
            fleet_keys,
            shared.clock.clone(),
        ));
        tasks.spawn(noise_loop(shared.clone()));
        tasks.spawn(rotation_loop(shared.clone()));
        tasks.spawn(quic_accept_loop(
            shared.clone(),
            endpoint.clone(),
            stop_rx.clone(),
        ));
        if let Some((listener, tls)) = web {
            // One state (sign-ins) for both origins: a browser signed in to the console opens a
            // device's console with the same session.
            let state = crate::web::WebState::new(shared.clone());
            tasks.spawn(crate::web::server::serve(
                shared.clone(),
                crate::web::router(state.clone()),
                listener,
                tls,
                stop_rx.clone(),
            ));
            if let Some((listener, tls)) = consoles {
                tasks.spawn(crate::web::server::serve(
                    shared.clone(),
                    crate::web::consoles::router(state),
                    listener,
                    tls,
                    stop_rx.clone(),
                ));
            }
        }
        if let Some(listener) = tcp {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
            tasks.spawn(tcp_accept_loop(shared.clone(), listener, acceptor, stop_rx));
        }
        let config = shared.config();
        info!(event = "gateway_started", quic = %quic_addr, tcp = ?tcp_addr,
              devices = config.devices.len(), rules = config.rules.len(), "gateway listening");
        crate::recorder::warn_if_plain(&config.recording, shared.sink.is_some());
        Ok(Gateway {
            shared,
            audit_writer,
            quic_addr,
            tcp_addr,
            web_addr,
            consoles_addr,
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

    /// The bound web console address, when `[web] listen` is set.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The bound address of devices' HTTP consoles, when `[web] consoles_listen` is set.
    pub fn consoles_addr(&self) -> Option<SocketAddr> {
        self.consoles_addr
    }

    /// The web console's routes over this gateway, for in-process tests: requests need a
    /// [`crate::web::ConnInfo`] or an [`crate::web::Authed`] in their extensions.
    pub fn web_router(&self) -> axum::Router {
        crate::web::router(crate::web::WebState::new(self.shared.clone()))
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
        let cut = self
            .shared
            .policy
            .update(self.shared.clock.now(), |cur| {
                Some(PolicySnapshot {
                    shutting_down: true,
                    ..cur.clone()
                })
            })
            .ends
            .len();
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
        if let Some(anchors) = &self.shared.anchors {
            // The last checkpoint's anchor, off the host before the process ends (bounded).
            anchors.settle(Duration::from_secs(2)).await;
        }
        drop(self.audit_writer);
        info!(event = "gateway_stopped", cut, "gateway stopped");
    }
}

/// The store `[store]` names (connecting to a PostgreSQL and migrating it may take a while: off
/// the async workers).
async fn open_backend(config: &Config, gateway_id: &str) -> anyhow::Result<Backend> {
    let config = config.clone();
    let id = gateway_id.to_owned();
    let backend = tokio::task::spawn_blocking(move || Backend::open(&config, Some(&id)))
        .await
        .context("opening the store")?
        .context("opening the store ([store] in the config)")?;
    info!(event = "store_opened", store = %backend.describe, shared = backend.shared, "store opened");
    Ok(backend)
}

/// The issuing CA: login issues certificates, so it needs the issuing key; without it the gateway
/// still runs and login answers with a clear error.
fn issuing_ca(g: &ward_core::config::GatewayConfig) -> Option<ward_ca::Ca> {
    match ward_ca::Ca::load(&g.ca) {
        Ok(ca) => Some(ca),
        Err(e) => {
            tracing::warn!(event = "login_disabled", reason = %e, "ward login is disabled: the CA's issuing key cannot be loaded");
            None
        }
    }
}

fn started_event(
    now: time::OffsetDateTime,
    quic: SocketAddr,
    tcp: Option<SocketAddr>,
    recording: bool,
) -> Event {
    Event::new("gateway_start", "success", now)
        .detail("quic", quic.to_string())
        .detail("tcp", tcp.map(|a| a.to_string()).unwrap_or_default())
        .detail("recording", recording)
}

/// The gateway's validator and its own certificate chain and key, refusing a gateway certificate
/// Ward's own CA would not accept.
fn load_identity(
    g: &ward_core::config::GatewayConfig,
    clock: &dyn Clock,
) -> anyhow::Result<(
    Validator,
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let validator = Validator::from_dir(&g.ca).with_context(|| {
        format!(
            "loading Ward's CA from {} (create one with `ward ca init`)",
            g.ca.display()
        )
    })?;
    let chain = tls::load_certs(&g.cert)?;
    let key = tls::load_key(&g.key)?;
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("{} holds no certificate", g.cert.display()))?;
    let ints: Vec<&[u8]> = chain.iter().skip(1).map(|c| c.as_ref()).collect();
    validator
        .validate(leaf.as_ref(), &ints, Usage::Server, clock.now())
        .with_context(|| format!("gateway certificate {} is not usable", g.cert.display()))?;
    Ok((validator, chain, key))
}

/// Creates the state dir (0700: it holds recordings, the audit log, its signing key and the user
/// store) and takes its lock.
fn open_state_dir(dir: &std::path::Path) -> anyhow::Result<crate::state_lock::StateLock> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    let lock = crate::state_lock::StateLock::acquire(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    Ok(lock)
}

/// The recording store `[recording]` names: local files in `<state_dir>/recordings`, or an
/// S3-compatible bucket through a spool (`store = "s3://…"`, credentials from `credentials_file`
/// or the environment).
fn open_recordings(config: &Config) -> anyhow::Result<RecordingStore> {
    let g = &config.gateway;
    let Some(s3) = &config.recording.store else {
        return RecordingStore::local_for_writing(&g.state_dir)
            .with_context(|| format!("creating the recordings dir in {}", g.state_dir.display()));
    };
    let credentials = match &s3.credentials_file {
        Some(path) => read_s3_credentials(path)?,
        None => ward_store::s3::Credentials::from_env().ok_or_else(|| {
            anyhow!(
                "[recording] store = {:?} needs credentials: set credentials_file (AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines, mode 0600) or those environment variables",
                s3.url()
            )
        })?,
    };
    let bucket = ward_store::s3::BucketSettings {
        bucket: s3.bucket.clone(),
        prefix: s3.prefix.clone(),
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        credentials,
        allow_http: s3.allow_http,
        retention: s3.retention.map(|r| (r.mode.as_s3().to_owned(), r.days)),
        request_timeout: std::time::Duration::from_secs(30),
    };
    let spool_dir = s3.spool_dir(&g.state_dir);
    RecordingStore::spooled(bucket, &spool_dir, s3.spool_limit).with_context(|| {
        format!(
            "opening the recording store {} (spool {})",
            s3.url(),
            spool_dir.display()
        )
    })
}

/// `[recording] credentials_file`: refused unless only its owner can read it; errors never show
/// a value from it.
fn read_s3_credentials(path: &std::path::Path) -> anyhow::Result<ward_store::s3::Credentials> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading [recording] credentials_file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "[recording] credentials_file {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading [recording] credentials_file {}", path.display()))?;
    let text = ward_core::secret::Secret::new(text);
    ward_store::s3::Credentials::parse(text.expose(), &path.display().to_string())
        .map_err(|e| anyhow!("[recording] credentials_file: {e}"))
}

/// Where sessions record (`None`: recording off, benchmarks only), behind the recording-disk
/// watch (SR 2.9: alert before the disk fills, refuse new sessions once it is full) and, for a
/// spool in front of object storage, the spool's watch (refuse new sessions at `spool_limit`).
#[allow(clippy::type_complexity)]
fn recording_sink(
    g: &ward_core::config::GatewayConfig,
    options: &Options,
    recordings: &RecordingStore,
    audit: &AuditLog,
    clock: &Arc<dyn Clock>,
) -> (
    Option<Arc<dyn Sink>>,
    Arc<crate::diskwatch::DiskWatch>,
    Option<Arc<crate::diskwatch::DiskWatch>>,
) {
    let sink: Option<Arc<dyn Sink>> = if !options.no_recording {
        match options.sink.clone() {
            Some(s) => Some(s),
            None => Some(Arc::new(recordings.clone())),
        }
    } else {
        tracing::warn!("session recording is OFF (benchmark mode)");
        None
    };
    let recordings_dir = recordings.local_dir().unwrap_or(&g.state_dir);
    let disk = crate::diskwatch::DiskWatch::new(
        Box::new(crate::diskwatch::Statvfs::new(recordings_dir)),
        recordings.describe(),
        crate::diskwatch::Thresholds::from_limits(&g.limits),
        audit.clone(),
        clock.clone(),
    );
    let spool = recordings
        .spool()
        .map(|info| crate::diskwatch::DiskWatch::spool(&info, audit.clone(), clock.clone()));
    let sink = sink.map(|s| -> Arc<dyn Sink> {
        let guarded = crate::diskwatch::GuardedSink::new(s, disk.clone());
        match &spool {
            Some(spool) => Arc::new(guarded.also(spool.clone())),
            None => Arc::new(guarded),
        }
    });
    (sink, disk, spool)
}

/// The QUIC endpoint and, when configured, the TLS-over-TCP listener.
async fn bind_listeners(
    g: &ward_core::config::GatewayConfig,
    server_tls: &rustls::ServerConfig,
) -> anyhow::Result<(quinn::Endpoint, Option<TcpListener>)> {
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls.clone())
        .context("TLS config unusable for QUIC")?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    server_config.transport_config(Arc::new(transport_config(
        g.limits.max_sessions_per_connection,
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
    let tcp = match g.listen_tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding TCP {addr}"))?,
        ),
        None => None,
    };
    Ok((endpoint, tcp))
}

/// How often the gateway looks for vaulted passwords `[vault] rotate_every` says are due.
pub const ROTATION_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Scheduled rotation (`[vault] rotate_every`, re-read from the live config at each check): the
/// vault service rotates what is due, audited; a failure is tried again at the next check.
async fn rotation_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(ROTATION_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(every) = shared.config().inject.vault.rotate_every else {
            continue;
        };
        let services = crate::dispatch::Services::of(&shared);
        for (device, account, result) in services.vault.rotate_due(every).await {
            match result {
                Ok(_) => tracing::info!(event = "vault_rotated", device = %Escaped(&device),
                    account = %Escaped(&account), "scheduled rotation done"),
                Err(e) => tracing::warn!(event = "vault_rotate_failed", device = %Escaped(&device),
                    account = %Escaped(&account), reason = %e,
                    "scheduled rotation failed; tried again at the next check"),
            }
        }
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
    let Some(request) =
        first_request(&shared, identity.as_deref(), peer, &mut reader, &mut writer).await
    else {
        return;
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
        // `ward login --sso`: like `Login`, one request per connection without a certificate.
        (_, request @ (Request::SsoStart(_) | Request::SsoPoll { .. })) => {
            dispatch::sso_cli(&shared, peer, once.as_deref(), request, &mut writer).await;
            return;
        }
        (Some(identity), request) => (identity, request),
        (None, request) => {
            refuse_anonymous(&shared, peer, &request, &mut writer).await;
            return;
        }
    };
    let (identity, request) = identity;
    let principal = principal_of(&identity);
    let caller = Caller {
        identity: &identity,
        principal: &principal,
        peer,
    };
    let response = match request {
        Request::Login(_) | Request::SsoStart(_) | Request::SsoPoll { .. } => return,
        Request::Open {
            device,
            break_glass,
            reason,
        } => {
            let break_glass = break_glass.then(|| reason.unwrap_or_default());
            let open = crate::session::Opening {
                identity,
                principal,
                peer,
                transport,
                device,
                break_glass,
            };
            crate::session::open_session(shared, open, reader, writer).await;
            return;
        }
        Request::Access(op) => {
            dispatch::access_op(&shared, caller, op, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        Request::Vault(op) => {
            dispatch::vault_op(&shared, caller, op, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        Request::Live(op) => {
            dispatch::live_op(&shared, caller, op, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        Request::Keys(op) => {
            dispatch::keys_op(&shared, caller, op, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
        request @ (Request::ListDevices
        | Request::PinDevice(_)
        | Request::Lock { .. }
        | Request::Unlock { .. }
        | Request::ListLocks
        | Request::SigningKeys(_)) => dispatch::request(&shared, caller, request).await,
        Request::Review(frame::Review::SignEvidence { sessions }) => {
            // The SHA256SUMS to sign follows as data (it can exceed a control frame).
            let sums =
                datapath::read_stream_with(&mut reader, frame::MAX_EVIDENCE_SUMS, &|_| ()).await;
            match sums {
                Ok(sums) => {
                    let req =
                        crate::services::review::ReviewRequest::SignEvidence { sessions, sums };
                    review_answer(&shared, &identity, &principal, peer, req, &mut writer).await;
                }
                Err(e) => {
                    let msg = format!("reading the SHA256SUMS to sign: {e}");
                    refuse(&mut writer, ErrorCode::BadRequest, msg).await;
                    return;
                }
            }
            let _ = writer.finish().await;
            return;
        }
        Request::Review(review) => {
            review_request(&shared, &identity, &principal, peer, review, &mut writer).await;
            let _ = writer.finish().await;
            return;
        }
    };
    let _ = writer.write_response(&response).await;
    let _ = writer.finish().await;
}

/// The stream's request, read within `first_request_timeout`; `None` once a malformed or missing
/// request was answered.
async fn first_request<R, W>(
    shared: &Shared,
    identity: Option<&Identity>,
    peer: SocketAddr,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Option<Request>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let message = match tokio::time::timeout(
        shared.limits().first_request_timeout,
        read_request(reader),
    )
    .await
    {
        Ok(Ok(req)) => return Some(req),
        Ok(Err(msg)) => {
            // Decode errors can quote the peer's text: escaped in the log and in the answer.
            let msg = ward_core::escape(&msg);
            warn!(event = "bad_request", source = %peer, principal = %Escaped(&identity.map(|i| i.principal()).unwrap_or_else(|| "anonymous".into())), reason = %msg);
            msg
        }
        Err(_) => "no request within first_request_timeout".to_string(),
    };
    let _ = writer
        .write_response(&error_frame(ErrorCode::BadRequest, message))
        .await;
    let _ = writer.finish().await;
    None
}

/// A request other than a login on a connection without a client certificate.
async fn refuse_anonymous<W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: SocketAddr,
    request: &Request,
    writer: &mut FrameWriter<W>,
) {
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
        refuse(writer, ErrorCode::Forbidden, "too many requests without a client certificate from your address; it is refused for a while (ward login first)".into()).await;
        return;
    }
    let _ = writer
        .write_response(&error_frame(
            ErrorCode::Forbidden,
            "this connection has no client certificate: the only thing it can do is log in (ward login)",
        ))
        .await;
    let _ = writer.finish().await;
}

/// Whether answering `request` writes audit events (and so passes the audit gate).
fn audited(request: &Request) -> bool {
    match request {
        Request::Login(_)
        | Request::SsoStart(_)
        | Request::Access(_)
        | Request::Vault(_)
        | Request::PinDevice(_)
        | Request::Lock { .. }
        | Request::Unlock { .. }
        | Request::Live(ward_core::frame::LiveOp::End { .. })
        | Request::Keys(ward_core::frame::KeysOp::RotateKek)
        | Request::SigningKeys(_)
        | Request::Review(_) => true,
        // Sessions pass the gate in `open_session`; listings write no event; an SSO poll hands
        // out what its approval already audited.
        Request::Open { .. }
        | Request::SsoPoll { .. }
        | Request::ListDevices
        | Request::ListLocks
        | Request::Live(ward_core::frame::LiveOp::List)
        | Request::Keys(ward_core::frame::KeysOp::Status) => false,
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

/// Serve a security-team review request: listings, recordings and the audit log, each access audited.
async fn review_request<W: AsyncWrite + Unpin>(
    shared: &Shared,
    identity: &Identity,
    principal: &Principal,
    peer: SocketAddr,
    review: frame::Review,
    writer: &mut FrameWriter<W>,
) {
    review_answer(shared, identity, principal, peer, review.into(), writer).await;
}

/// [`review_request`] for a request already read whole (`SignEvidence` reads its data first).
async fn review_answer<W: AsyncWrite + Unpin>(
    shared: &Shared,
    identity: &Identity,
    principal: &Principal,
    peer: SocketAddr,
    request: crate::services::review::ReviewRequest,
    writer: &mut FrameWriter<W>,
) {
    // Frame -> service -> frame: the review service checks, audits and reads.
    use crate::services::review::{ReviewAnswer, Reviewer};
    let who = Reviewer {
        identity,
        principal,
        source: peer,
    };
    let answer = match shared.review.handle(&who, request).await {
        Ok(answer) => answer,
        Err(refusal) => {
            let _ = writer
                .write_response(&error_frame(refusal.code(), refusal.to_string()))
                .await;
            return;
        }
    };
    let stream = |what: String| Response::Stream { what };
    match answer {
        ReviewAnswer::PublicKey(key) => {
            let message = hex::encode(key);
            let _ = writer.write_response(&Response::Ok { message }).await;
        }
        ReviewAnswer::EvidenceSignature(sig) => {
            let message = serde_json::to_string(&sig).unwrap_or_default();
            let _ = writer.write_response(&Response::Ok { message }).await;
        }
        ReviewAnswer::Sessions(list) => {
            let _ = writer.write_response(&stream("sessions".into())).await;
            let bytes = crate::services::review::json_lines(&list);
            let _ = datapath::write_stream(writer, &bytes).await;
        }
        ReviewAnswer::AuditLog(snapshot) => {
            let _ = writer.write_response(&stream("audit log".into())).await;
            let _ = crate::review_jobs::send_snapshot(writer, snapshot).await;
        }
        ReviewAnswer::Recording {
            session_id,
            snapshot,
            ..
        } => {
            let _ = writer
                .write_response(&stream(format!("recording {session_id}")))
                .await;
            let _ = crate::review_jobs::send_snapshot(writer, snapshot).await;
        }
    }
}

pub(crate) async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    code: ErrorCode,
    msg: String,
) {
    let _ = writer.write_response(&error_frame(code, msg)).await;
    let _ = writer.finish().await;
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
    crate::recorder::read_recipients_file(&mut config.recording)?;
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
