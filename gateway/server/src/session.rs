//! The session pipeline: one `Open` request, from admission to its end.
//!
//! [`open_session`] runs the steps in order, each its own function: admit (shutdown, the audit
//! gate, the certificate, policy, the session limit) → record (fail closed: the recording is open
//! before the device is dialled) → dial → register and announce (the audit gate again: no byte
//! moves before `session_open` is durable) → proxy ([`pump`], raced against the deadline, the
//! idle timeout, the watched policy snapshot and the recorder's health) → end. Every way a
//! session ends is one typed [`EndReason`] from core: its text is the client's `Closed` frame,
//! the recording's end record and the `session_close` audit event.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{field, info_span, warn, Instrument, Span};
use ward_ca::Identity;
use ward_core::config::Device;
use ward_core::frame::{ErrorCode, Response};
use ward_core::session::{Authorized, Closed, Handshaken};
use ward_core::stage::SessionContext as StageContext;
use ward_core::{EndReason, Escaped, Principal};
use ward_recording::{Direction, EndInfo, SessionMeta};

use crate::audit::Event;
use crate::datapath::{self, Activity, FrameReader, FrameWriter, FramedEnd};
use crate::device_tls::{DeviceConn, TlsRefusal};
use crate::gateway::{refuse, Shared};
use crate::inject::Injection;
use crate::pipeline::Pipeline;
use crate::policy_watch::{ended_by_policy, LiveGuard, LiveMeta, PolicySnapshot};
use crate::recorder::{self, SessionRecorder};

/// An `Open` request from a client with a validated certificate, as the dispatcher hands it over.
pub(crate) struct Opening {
    /// The client's validated identity.
    pub(crate) identity: Arc<Identity>,
    /// The same, as policy sees it.
    pub(crate) principal: Principal,
    /// Where the client connects from.
    pub(crate) peer: SocketAddr,
    /// `quic`, `tcp`, or `web` (a browser's session through `web::bridge`).
    pub(crate) transport: &'static str,
    /// The device id asked for, as sent (checked by `hygiene` first).
    pub(crate) device: String,
    /// `Some(justification)` for a break-glass open.
    pub(crate) break_glass: Option<String>,
}

/// One session's context: what every step reads.
struct Ctx {
    shared: Arc<Shared>,
    open: Opening,
    /// The session id (recording name, audit events, the client's `Opened`).
    id: String,
    /// When the request arrived (the decision's and the recording's start time).
    now: OffsetDateTime,
}

impl Ctx {
    /// An audit event about this session.
    fn event(&self, event: &str, outcome: &str) -> Event {
        let ev = Event::new(event, outcome, self.shared.clock.now())
            .principal(&self.open.identity)
            .source(self.open.peer)
            .device(self.open.device.as_str())
            .session(self.id.clone());
        // A browser's session (web terminal, a device's HTTP console): said on every event.
        if self.open.transport == "web" {
            ev.detail("via", "web")
        } else {
            ev
        }
    }
}

/// The client's side of a proxying session.
struct Pipe<R, W> {
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    activity: Arc<Activity>,
}

/// The session was refused (the client has been told, the refusal audited).
struct Refused;

/// Serve an `Open`: refuse a device id no device could have (`hygiene`), else run the session to
/// its end, in a span carrying its id, principal and device.
pub(crate) async fn open_session<R, W>(
    shared: Arc<Shared>,
    open: Opening,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if let Err(refusal) = crate::hygiene::check_requested_device(&open.device) {
        shared.audit.emit(
            Event::new("session_deny", "denied", shared.clock.now())
                .principal(&open.identity)
                .source(open.peer)
                .device(ward_core::escape::escape_prefix(&open.device, 64))
                .reason(refusal.clone()),
        );
        refuse(&mut writer, ErrorCode::BadRequest, refusal).await;
        return;
    }
    let n = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let id = format!("{:016x}", n ^ rand::random::<u64>());
    let span = info_span!("session", session_id = %id,
        principal = %Escaped(&open.identity.principal()), serial = %open.identity.serial,
        source = %open.peer, transport = open.transport, device = %open.device,
        decision = field::Empty, rule = field::Empty, bytes_up = field::Empty,
        bytes_down = field::Empty, end_reason = field::Empty);
    let now = shared.clock.now();
    let ctx = Ctx {
        shared,
        open,
        id,
        now,
    };
    run(&ctx, reader, writer).instrument(span).await;
}

/// The steps, in order (see the module docs).
async fn run<R, W>(ctx: &Ctx, reader: FrameReader<R>, mut writer: FrameWriter<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribed before the decision: whatever is published after it wakes the session.
    let mut policy = ctx.shared.policy.subscribe();
    let Some(session) = admit(ctx, &mut policy, &mut writer).await else {
        return;
    };
    let Ok(injection) = injection(ctx, &session, &mut writer).await else {
        return;
    };
    let Ok(recorder) = start_recording(ctx, &session, &mut writer).await else {
        return;
    };
    let timeout = ctx.shared.limits().device_connect_timeout;
    let mut conn = match dial(ctx, session.device(), timeout).await {
        Ok(conn) => conn,
        Err((code, msg)) => {
            let ev = ctx.event("session_open", "failure").reason(msg.clone());
            ctx.shared.audit.emit(ev);
            let closed = session.close(EndReason::NotStarted(msg.clone()));
            end_recording(ctx, recorder, closed.reason(), (0, 0)).await;
            refuse(&mut writer, code, msg).await;
            return;
        }
    };
    // Which certificate a TLS device presented, and the TLS parameters: first in the recording.
    if let (Some(ev), Some(rec)) = (conn.tls_event(), recorder.as_ref()) {
        if let Err(e) = rec.tap().record_event(Direction::Down, ev).await {
            let msg = format!(
                "session refused: the device's TLS link could not be recorded ({e}), and no session runs unrecorded"
            );
            ctx.shared
                .audit
                .emit(ctx.event("session_open", "failure").reason(msg.clone()));
            let closed = session.close(EndReason::NotStarted(msg.clone()));
            end_recording(ctx, recorder, closed.reason(), (0, 0)).await;
            refuse(&mut writer, ErrorCode::RecordingUnavailable, msg).await;
            return;
        }
    }
    // The gateway logs in for the user (telnet): nothing of the user's reaches the device first.
    let leftover = match &injection {
        None => Vec::new(),
        Some(inj) => {
            let tap = recorder.as_ref().map(SessionRecorder::tap);
            match inj
                .log_in(&ctx.open.device, &mut conn, tap, &*ctx.shared.clock)
                .await
            {
                Ok(leftover) => leftover,
                Err(msg) => {
                    let ev = ctx.event("device_login_failed", "failure");
                    let ev = ev.severity("high").detail("account", inj.account.as_str());
                    ctx.shared.audit.emit(ev.reason(msg.clone()));
                    let closed = session.close(EndReason::NotStarted(msg.clone()));
                    end_recording(ctx, recorder, closed.reason(), (0, 0)).await;
                    refuse(&mut writer, ErrorCode::DeviceUnreachable, msg).await;
                    return;
                }
            }
        }
    };
    let activity = Activity::new();
    let meta = LiveMeta {
        id: ctx.id.clone(),
        since: ctx.now,
        source: ctx.open.peer,
        activity: Arc::clone(&activity),
    };
    let live = ctx.shared.policy.register(session.clone(), meta);
    let injected = injection.as_ref().map(|i| i.account.as_str());
    if let Err(e) = announce(ctx, &session, recorder.is_some(), injected).await {
        drop(live);
        let closed = session.close(EndReason::NotStarted(e.to_string()));
        end_recording(ctx, recorder, closed.reason(), (0, 0)).await;
        let msg = format!("session refused: {e}");
        refuse(&mut writer, ErrorCode::RecordingUnavailable, msg).await;
        return;
    }
    let mut pipe = Pipe {
        reader,
        writer,
        activity,
    };
    let opened = opened(ctx, &session);
    let end = match pipe.writer.write_response(&opened).await {
        Err(_) => EndReason::ClientGone,
        // The device's prompt after the gateway's login (recorded with the login).
        Ok(()) if !leftover.is_empty() && pipe.writer.write_data(&leftover).await.is_err() => {
            EndReason::ClientGone
        }
        Ok(()) => {
            let n = leftover.len() as u64;
            pipe.activity.down.fetch_add(n, Ordering::Relaxed);
            let recorder = recorder.as_ref();
            let inj = injection.as_ref();
            proxy(ctx, &session, &mut policy, recorder, inj, conn, &mut pipe).await
        }
    };
    finish(ctx, session.close(end), pipe, recorder, live).await;
}

/// The vaulted credential policy gives this session (`inject` on its rule), fetched before
/// anything is recorded or dialled. A credential that cannot be given refuses the session (fail
/// closed), audited.
async fn injection<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    session: &Authorized,
    writer: &mut FrameWriter<W>,
) -> Result<Option<Injection>, Refused> {
    let config = ctx.shared.config();
    match crate::inject::for_session(&ctx.shared, &config, session).await {
        Ok(injection) => Ok(injection),
        Err(reason) => {
            let ev = ctx.event("session_deny", "failure").severity("high");
            ctx.shared.audit.emit(ev.reason(reason.clone()));
            refuse(writer, ErrorCode::Forbidden, reason).await;
            Err(Refused)
        }
    }
}

/// Everything that decides whether the session may start: not shutting down, the audit log
/// writable, the certificate current, policy (against the watched snapshot `policy` holds), and
/// the session limit. `None`: refused, the client told and the refusal audited.
async fn admit<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    policy: &mut watch::Receiver<Arc<PolicySnapshot>>,
    writer: &mut FrameWriter<W>,
) -> Option<Authorized> {
    let shared = &ctx.shared;
    if shared.draining.load(Ordering::Acquire) {
        let msg = "gateway is shutting down; try again shortly".to_string();
        refuse(writer, ErrorCode::ShuttingDown, msg).await;
        return None;
    }
    if !shared.audit.healthy() {
        let ev = ctx.event("session_deny", "failure");
        shared.audit.emit(ev.reason("audit log unavailable"));
        let e = crate::audit::AuditUnavailable("the last write failed".into());
        let msg = format!("session refused: {e}");
        refuse(writer, ErrorCode::RecordingUnavailable, msg).await;
        return None;
    }
    let not_after = ctx.open.identity.not_after;
    if ctx.now > not_after {
        let msg = format!(
            "certificate expired at {not_after}; get a new one (`ward ca issue` or `ward login`)"
        );
        deny(ctx, writer, msg, false).await;
        return None;
    }
    let snapshot = Arc::clone(&policy.borrow_and_update());
    let session = match authorize(ctx, &snapshot) {
        Ok(session) => session,
        Err(reason) => {
            deny(ctx, writer, reason, true).await;
            return None;
        }
    };
    let rule = session.permit().rule();
    Span::current()
        .record("decision", "permit")
        .record("rule", rule);
    if shared.live_sessions() >= shared.limits().max_sessions as usize {
        let ev = ctx.event("session_deny", "failure");
        shared.audit.emit(ev.reason("session limit reached"));
        let msg = "gateway is at its session limit; try again shortly".to_string();
        refuse(writer, ErrorCode::Overloaded, msg).await;
        return None;
    }
    Some(session)
}

/// Policy's decision on `snapshot`. The session's states are types (`ward_core::session`): the
/// device dialled later can only come out of an `Authorized`, which only a permit builds. A
/// permit a live session would at once be ended for (a disabled user) is refused.
fn authorize(ctx: &Ctx, snapshot: &PolicySnapshot) -> Result<Authorized, String> {
    let session = Handshaken::new(ctx.open.principal.clone())
        .authorize_access(
            &snapshot.access(),
            &snapshot.config.devices,
            &ctx.open.device,
            ctx.open.break_glass.as_deref(),
            ctx.now,
        )
        .map_err(|denied| denied.reason.to_string())?;
    match session.check(&snapshot.view(), ctx.now) {
        None => Ok(session),
        Some(end) => Err(end.to_string()),
    }
}

/// Deny with `reason` (a `Denied` answer, a `session_deny` event; a break-glass attempt is
/// flagged in it when `flag_break_glass`).
async fn deny<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    writer: &mut FrameWriter<W>,
    reason: String,
    flag_break_glass: bool,
) {
    Span::current().record("decision", "deny");
    let mut ev = ctx.event("session_deny", "denied").reason(reason.clone());
    if let Some(why) = ctx.open.break_glass.as_ref().filter(|_| flag_break_glass) {
        ev = ev
            .severity("high")
            .detail("break_glass", true)
            .detail("justification", why.clone());
    }
    ctx.shared.audit.emit(ev);
    let _ = writer.write_response(&Response::Denied { reason }).await;
    let _ = writer.finish().await;
}

/// Fail closed: open the recording (header and first checkpoint on disk) before the gateway
/// even connects to the device. `Ok(None)` when recording is off (benchmarks only).
async fn start_recording<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    session: &Authorized,
    writer: &mut FrameWriter<W>,
) -> Result<Option<SessionRecorder>, Refused> {
    let Some(sink) = &ctx.shared.sink else {
        return Ok(None);
    };
    let meta = session_meta(ctx, session);
    // `[recording] recipients` as of now: a reload gives new sessions the new recipients.
    let recipients = ctx.shared.config().recording.recipients.clone();
    match SessionRecorder::start(sink, ctx.shared.keys.signer(), &meta, &recipients).await {
        Ok(r) => Ok(Some(match ctx.shared.recordings.index_open(&meta) {
            Some(hook) => r.indexed(hook),
            None => r,
        })),
        Err(e) => {
            let audit = &ctx.shared.audit;
            let why = format!("recording could not be opened: {e}");
            audit.emit(
                ctx.event("recording_failed", "failure")
                    .severity("high")
                    .reason(why),
            );
            audit.emit(
                ctx.event("session_deny", "failure")
                    .reason("recording unavailable"),
            );
            // The client is told which limit, not the paths or the object store's error (those
            // are in the audit event above).
            let why = if crate::diskwatch::refused_by_spool(&e) {
                "the recording spool is at its limit (recordings are not reaching the object store)"
            } else if e.kind() == io::ErrorKind::StorageFull {
                "the recording disk is full"
            } else {
                "its recording could not be opened"
            };
            let msg = format!(
                "session refused: {why}, and no session runs unrecorded; tell the security team"
            );
            refuse(writer, ErrorCode::RecordingUnavailable, msg).await;
            Err(Refused)
        }
    }
}

/// The recording's header.
fn session_meta(ctx: &Ctx, session: &Authorized) -> SessionMeta {
    let (identity, device, permit) = (&ctx.open.identity, session.device(), session.permit());
    SessionMeta {
        session_id: ctx.id.clone(),
        principal_kind: identity.kind.to_string(),
        principal_name: identity.name.clone(),
        principal_org: identity.org.clone(),
        cert_serial: identity.serial.clone(),
        source: ctx.open.peer.to_string(),
        device: ctx.open.device.clone(),
        device_addr: device.address.to_string(),
        protocol: device.protocol.to_string(),
        rule: permit.rule().to_string(),
        transport: ctx.open.transport.to_string(),
        break_glass: permit.break_glass(),
        started_unix_ms: unix_ms(ctx.now),
        recipients: Vec::new(),
        age_header: None,
    }
}

/// Connect to the device (inside its network namespace, if it has one), then, for a device that
/// speaks TLS itself, the TLS handshake accepting only its pinned certificate
/// ([`crate::device_tls`]); all bounded by `timeout`. A certificate refusal is audited
/// (`device_certificate_refused`, high severity when the certificate changed).
async fn dial(
    ctx: &Ctx,
    device: &Device,
    timeout: Duration,
) -> Result<DeviceConn, (ErrorCode, String)> {
    let start = tokio::time::Instant::now();
    let tcp = connect(device, timeout).await?;
    if device.tls.is_none() {
        return Ok(DeviceConn::Tcp(tcp));
    }
    let id = device.id.as_str();
    let pinned = crate::device_tls::pin_for(&ctx.shared, device)
        .await
        .map_err(|e| (ErrorCode::Internal, format!("device {id}: {e}")))?;
    let left = timeout.saturating_sub(start.elapsed());
    match crate::device_tls::handshake(device, tcp, pinned, left).await {
        Ok((tls, _)) => Ok(DeviceConn::Tls(Box::new(tls))),
        Err(refusal) => {
            let reason = refusal.reason(id);
            let ev = |severity: &str| {
                ctx.event("device_certificate_refused", "denied")
                    .severity(severity)
            };
            match &refusal {
                TlsRefusal::Unpinned { presented } => ctx.shared.audit.emit(
                    ev("medium")
                        .detail("presented", presented.pin.to_string())
                        .reason(reason.clone()),
                ),
                TlsRefusal::Changed { presented, pinned } => ctx.shared.audit.emit(
                    ev("high")
                        .detail("presented", presented.pin.to_string())
                        .detail("pinned", pinned.to_string())
                        .reason(reason.clone()),
                ),
                TlsRefusal::Failed(_) => {
                    return Err((ErrorCode::DeviceUnreachable, reason));
                }
            }
            Err((ErrorCode::Forbidden, reason))
        }
    }
}

/// The TCP connection to the device (inside its network namespace, if it has one), bounded by
/// `timeout`.
pub(crate) async fn connect(
    device: &Device,
    timeout: Duration,
) -> Result<TcpStream, (ErrorCode, String)> {
    let addr = device.address.to_string();
    let connect = async {
        match &device.netns {
            None => TcpStream::connect(&addr).await,
            Some(ns) => {
                let to = tokio::net::lookup_host(&addr)
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found"))?;
                crate::netns::connect_in(ns, to, timeout).await
            }
        }
    };
    let id = &device.id;
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err((
            ErrorCode::DeviceUnreachable,
            format!(
                "device {id} refused the connection; it may be off or its service stopped — \
                 ask biomedical engineering to check it"
            ),
        )),
        Ok(Err(e)) => Err((
            ErrorCode::DeviceUnreachable,
            format!("device {id} is unreachable: {e}"),
        )),
        Err(_) => Err((
            ErrorCode::DeviceTimeout,
            format!("device {id} did not answer within {timeout:?}; it may be off the network"),
        )),
    }
}

/// Audit the opening and wait until it is durable: the audit gate, no byte moves before.
async fn announce(
    ctx: &Ctx,
    session: &Authorized,
    recorded: bool,
    injected: Option<&str>,
) -> Result<(), crate::audit::AuditUnavailable> {
    let permit = session.permit();
    let mut ev = ctx
        .event("session_open", "success")
        .reason(format!("permitted by rule {}", permit.rule()))
        .detail("rule", permit.rule())
        .detail("transport", ctx.open.transport)
        .detail("ends_at", permit.ends_at().to_string())
        .detail("recorded", recorded);
    if let Some(account) = injected {
        // The vaulted account the gateway logs in with (never its value).
        ev = ev.detail("injected_account", account);
    }
    if let Some(g) = permit.grant() {
        ev = ev.detail("grant", g);
    }
    if permit.break_glass() {
        // Emergency access: loud, recorded, capped (HIPAA 164.312(a)(2)(ii)).
        let why = ctx.open.break_glass.clone().unwrap_or_default();
        ev = ev
            .severity("high")
            .detail("break_glass", true)
            .detail("justification", why);
        warn!(event = "break_glass", principal = %Escaped(&ctx.open.principal.to_string()),
            device = %ctx.open.device, "BREAK-GLASS session opened");
    }
    ctx.shared.audit.emit(ev);
    ctx.shared.audit.written().await
}

/// The client's `Opened` answer.
fn opened(ctx: &Ctx, session: &Authorized) -> Response {
    let permit = session.permit();
    let ends_by = permit.end_reason();
    Response::Opened {
        session_id: ctx.id.clone(),
        device: ctx.open.device.clone(),
        rule: permit.rule().to_string(),
        ends_at_unix: permit.ends_at().unix_timestamp(),
        end_reason_if_uncut: ends_by
            .limit()
            .map_or_else(|| ends_by.to_string(), str::to_owned),
    }
}

/// Proxy until the first of: the pump ends, the permit's deadline, the idle timeout, a policy
/// change that ends the session, a recording failure. Returns why the session ended.
async fn proxy<R, W>(
    ctx: &Ctx,
    session: &Authorized,
    policy: &mut watch::Receiver<Arc<PolicySnapshot>>,
    recorder: Option<&SessionRecorder>,
    injection: Option<&Injection>,
    conn: DeviceConn,
    pipe: &mut Pipe<R, W>,
) -> EndReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Decode → decide → record → forward: the device's stages, the injector, then the recorder.
    let stage_ctx = StageContext {
        device: session.device(),
        principal: session.principal(),
        rule: session.permit().rule(),
        now: ctx.shared.clock.now(),
    };
    // The protocol decoder (operations recorded, the rule's operation list enforced), then the
    // injector: the decoder sees what the client sent, the device gets the credential.
    let mut last = crate::decode::stages(&ctx.shared.config(), session);
    if let Some(i) = injection {
        last.extend(i.stages(&ctx.open.device));
    }
    let tap = Pipeline::for_session(
        ctx.shared.stages.as_deref(),
        last,
        &stage_ctx,
        recorder.map(SessionRecorder::tap),
        ctx.shared.clock.clone(),
    )
    .map(|p| p.observed(audited_events(ctx)));
    let mut rec_failed = recorder.map(SessionRecorder::failed);
    let deadline = to_instant(ctx, session.ends_at());
    let idle = ctx.shared.limits().idle_timeout;
    let activity = Arc::clone(&pipe.activity);
    let device = ctx.open.device.as_str();
    tokio::select! {
        end = pump(device, conn, pipe, tap.as_ref()) => end,
        () = tokio::time::sleep_until(deadline) => session.permit().end_reason().clone(),
        () = idle_for(&activity, idle) => EndReason::IdleTimeout(idle.as_secs()),
        end = ended_by_policy(session, &ctx.id, policy, &*ctx.shared.clock) => end,
        e = recording_failed(rec_failed.as_mut()) => EndReason::RecordingFailed(e),
    }
}

/// Audits what the stages report that security must see as it happens: a device's refusal of an
/// injected credential (an HTTP 401 with injection on: the vaulted value is wrong or was changed
/// on the device), and an operation the rule's operation list refused.
fn audited_events(ctx: &Ctx) -> crate::pipeline::Observer {
    let shared = Arc::clone(&ctx.shared);
    let rejected = ctx.event("credential_rejected", "failure");
    let denied = ctx.event("operation_denied", "failure");
    Box::new(move |ev| {
        let (base, severity, reason) = match ev.kind.as_str() {
            "credential_rejected" => (
                &rejected,
                "high",
                "device rejected the vaulted credential; an admin checks it with `ward vault list` and sets it again".to_string(),
            ),
            ward_decode::kind::DENIED => {
                let field = |k: &str| {
                    ev.fields
                        .iter()
                        .find(|(key, _)| key == k)
                        .map_or("", |(_, v)| v.as_str())
                };
                (
                    &denied,
                    "medium",
                    format!(
                        "{} operation {} refused, not forwarded to the device: {}",
                        field("protocol"),
                        Escaped(field("op")),
                        field("reason")
                    ),
                )
            }
            _ => return,
        };
        let mut e = base.clone().severity(severity).at(shared.clock.now());
        for (k, v) in &ev.fields {
            // Patient data stays in the recording: the audit log is read more widely.
            if k.starts_with(ward_decode::PHI_PREFIX) {
                continue;
            }
            e = e.detail(k, v.as_str());
        }
        shared.audit.emit(e.reason(reason));
    })
}

/// The pump: the client's data frames to the device and the device's bytes to the client, each
/// chunk through the session's pipeline (stages, then the recorder) before it is forwarded, until both sides finished or one failed.
async fn pump<R, W>(
    device: &str,
    conn: DeviceConn,
    pipe: &mut Pipe<R, W>,
    tap: Option<&Pipeline>,
) -> EndReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match conn {
        // Plain TCP: owned halves, no lock between the directions.
        DeviceConn::Tcp(tcp) => {
            let (dev_r, dev_w) = tcp.into_split();
            pump_halves(device, dev_r, dev_w, pipe, tap).await
        }
        // TLS: one session state for both directions, shared by the split halves.
        tls @ DeviceConn::Tls(_) => {
            let (dev_r, dev_w) = tokio::io::split(tls);
            pump_halves(device, dev_r, dev_w, pipe, tap).await
        }
    }
}

/// [`pump`] over the device connection's read and write halves.
async fn pump_halves<DR, DW, R, W>(
    device: &str,
    dev_r: DR,
    dev_w: DW,
    pipe: &mut Pipe<R, W>,
    tap: Option<&Pipeline>,
) -> EndReason
where
    DR: AsyncRead + Unpin,
    DW: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Device I/O errors are tagged, so the end reason names the device or the client.
    let (mut dev_r, mut dev_w) = (datapath::DeviceIo(dev_r), datapath::DeviceIo(dev_w));
    let Pipe {
        reader,
        writer,
        activity,
    } = pipe;
    let activity: &Activity = activity;
    let (up_tap, down_tap) = (
        tap.map(|t| (t, Direction::Up)),
        tap.map(|t| (t, Direction::Down)),
    );
    let up = datapath::framed_to_raw(reader, &mut dev_w, activity, &activity.up, up_tap);
    let down = datapath::raw_to_framed(&mut dev_r, writer, activity, &activity.down, down_tap);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !up_done || !down_done {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(FramedEnd::Eof) => up_done = true,
                Ok(FramedEnd::Abrupt) => return EndReason::ClientGone,
                Ok(FramedEnd::Control(_)) => return EndReason::ClientUnexpectedControl,
                Err(e) => return io_end(device, &e),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => return io_end(device, &e),
            },
        }
    }
    EndReason::Completed
}

/// Why an I/O error ended the session: the device's side, the recording, or the client's.
fn io_end(device: &str, e: &io::Error) -> EndReason {
    if let Some(stop) = crate::pipeline::stage_stop(e) {
        EndReason::Stage(stop.clone())
    } else if datapath::is_device_error(e) {
        EndReason::DeviceFailed {
            device: device.to_owned(),
            error: e.to_string(),
        }
    } else if recorder::is_recording_failure(e) {
        EndReason::RecordingFailed(e.to_string())
    } else {
        EndReason::ClientError(e.to_string())
    }
}

/// Resolves once no byte has moved either way for `idle`.
async fn idle_for(activity: &Activity, idle: Duration) {
    loop {
        tokio::time::sleep_until(activity.last() + idle).await;
        if activity.last() + idle <= tokio::time::Instant::now() {
            return;
        }
    }
}

/// Resolves with the recorder's error once it fails; never without a recorder.
async fn recording_failed(rx: Option<&mut watch::Receiver<Option<String>>>) -> String {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if let Some(e) = rx.borrow_and_update().clone() {
            return e;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Tell the client why the gateway cut the session, seal the recording, audit the close (all
/// with the one end reason `closed` carries), then leave the registry.
async fn finish<R, W>(
    ctx: &Ctx,
    closed: Closed,
    pipe: Pipe<R, W>,
    recorder: Option<SessionRecorder>,
    live: LiveGuard<'_>,
) where
    W: AsyncWrite + Unpin,
{
    let Pipe {
        mut writer,
        activity,
        ..
    } = pipe;
    let end = closed.reason();
    let wait = Duration::from_secs(1);
    if end.is_cut() && !writer.torn() {
        let closed = Response::Closed {
            reason: end.to_string(),
        };
        let _ = tokio::time::timeout(wait, writer.write_response(&closed)).await;
    }
    let _ = tokio::time::timeout(wait, writer.finish()).await;
    let up = activity.up.load(Ordering::Relaxed);
    let down = activity.down.load(Ordering::Relaxed);
    end_recording(ctx, recorder, end, (up, down)).await;
    let span = Span::current();
    span.record("bytes_up", up);
    span.record("bytes_down", down);
    span.record("end_reason", field::display(end));
    let ev = ctx
        .event("session_close", "success")
        .reason(end.to_string())
        .detail("end", end.as_str())
        .detail("bytes_up", up)
        .detail("bytes_down", down);
    ctx.shared.audit.emit(ev);
    // Out of the registry last: a shutdown waiting for live sessions to end waits for their
    // recordings to be sealed and their closes to be audited.
    drop(live);
    drop(writer.get_mut().shutdown().await);
}

/// Seal the recording with `end` and the byte counts (up, down).
async fn end_recording(
    ctx: &Ctx,
    recorder: Option<SessionRecorder>,
    end: &EndReason,
    (bytes_up, bytes_down): (u64, u64),
) {
    let Some(rec) = recorder else {
        return;
    };
    let info = EndInfo {
        ended_unix_ms: unix_ms(ctx.shared.clock.now()),
        reason: end.to_string(),
        bytes_up,
        bytes_down,
    };
    let sealed = rec.finish(info).await;
    // Anchor the final checkpoint off the host (docs/recording-format.md, "Anchors"); a failed
    // recording is sealed too when it ran out of room, so publish whatever ends the file.
    if let Some(anchors) = &ctx.shared.anchors {
        anchors.recording_sealed(&ctx.shared.recordings, &ctx.id, "sealed");
    }
    if let Err(e) = sealed {
        let ev = ctx.event("recording_failed", "failure").severity("high");
        ctx.shared.audit.emit(ev.reason(e));
    }
}

/// The tokio instant matching `at` on the gateway's clock.
fn to_instant(ctx: &Ctx, at: OffsetDateTime) -> tokio::time::Instant {
    let left = at - ctx.shared.clock.now();
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
