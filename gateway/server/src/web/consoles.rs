//! Devices' own HTTP consoles in the browser: `/d/<device>/…` on the consoles' origin
//! (`[web] consoles_listen`, a port other than the console's), each device tab one session
//! through [`super::bridge`].
//!
//! A device's pages are untrusted HTML and script, so they are never served on the console's
//! origin (where they could call the console's API with the user's session); the consoles'
//! origin serves nothing but `/d/<device>/…` and Ward's own small refusal pages.
//!
//! **One session per device tab.** The first request of a signed-in browser (or client
//! certificate) for a device opens a session through the gateway's one pipeline
//! ([`super::bridge::open`]: policy, maintenance windows, grants, locks, recording, the vault's
//! credential injection, the HTTP operation rules, audit with `via = "web"`), and an HTTP/1.1
//! client ([`hyper::client::conn::http1`]) speaks over it; later requests of the same caller for
//! the same device reuse it, one at a time (a connection is held until its answer's body has
//! gone to the browser). Only while one answer holds it for longer than [`OVERFLOW_AFTER`] (a long
//! poll, a stream of readings) does a request take an overflow connection, a session of its own
//! (at most [`CONNECTIONS_PER_TAB`] in all). When the session ends (the device closed its
//! connection, the gateway's idle timeout, a lock, a revoked grant, the end of a window), the
//! next request opens a new one, which the policy decides afresh: a locked user gets the refusal
//! page with the lock's reason. A tab unused for `[web] idle_timeout`, or past its identity's
//! end, is closed (the session ends as "client gone").
//!
//! **Rewriting** is pure and lives in [`rewrite`]: the path prefix, `Host`, cookies, `Location`,
//! `Set-Cookie`, links in HTML and CSS (bodies up to [`MAX_REWRITE_BODY`]; larger ones and other
//! types stream through untouched), and `WWW-Authenticate` removed: the vault injects the
//! device's credential, the user is never asked for it.
//!
//! **Checks on the consoles' origin**: a `GET`/`HEAD` a browser marks as cross-site is refused,
//! a same-site one only as a top-level navigation (the console's link to a device); anything
//! else (a `POST` of a device's form) only from the same origin (`Sec-Fetch-Site: same-origin`,
//! and a matching `Origin` when sent). A device's page may not install a service worker (it would
//! outlive the session and see the next user's requests). Every answer carries `Cache-Control: no-store` (patient
//! data must not stay in a shared workstation's cache), `Referrer-Policy: same-origin`,
//! `X-Content-Type-Options: nosniff`, `Cross-Origin-Opener-Policy` and
//! `Cross-Origin-Resource-Policy: same-origin`, and a `frame-ancestors 'self'` policy.

pub mod rewrite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use self::rewrite::{escape_html, route, BodyKind, Rewriter, Route};
use super::bridge::{self, FromDevice};
use super::{ApiError, Authed, WebState};

/// Largest HTML or CSS body rewritten; a larger one streams through as the device sent it.
pub const MAX_REWRITE_BODY: usize = 8 * 1024 * 1024;
/// Most device tabs open at once (all callers); a new one beyond that closes the least
/// recently used.
pub const MAX_TABS: usize = 1024;
/// Most connections (sessions) of one tab: the tab's own, and overflow ones while it is held by a
/// long answer.
pub const CONNECTIONS_PER_TAB: usize = 4;
/// How long a request waits for its tab's own connection before taking an overflow one.
pub const OVERFLOW_AFTER: Duration = Duration::from_secs(2);
/// Most device tabs one caller (one sign-in, or one certificate) holds at once.
pub const MAX_TABS_PER_CALLER: usize = 16;
/// How long a request waits for its tab while another request of the same tab is answered.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the device may take to start its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often closed and idle tabs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The in-memory pipe between the HTTP client and the session, each way.
const PIPE_BUFFER: usize = 256 * 1024;

/// The consoles' origin's routes (nothing of the console's API is served there).
pub fn router(state: WebState) -> Router {
    let idle = state.signins.idle_timeout();
    let idle = Duration::from_secs(u64::try_from(idle.whole_seconds()).unwrap_or(900).max(1));
    let tabs = Arc::new(Tabs {
        slots: Mutex::new(HashMap::new()),
        idle,
    });
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sweep_loop(
            Arc::downgrade(&tabs),
            state.shared.clock.clone(),
        ));
    }
    let consoles = Consoles {
        web: state.clone(),
        tabs,
    };
    Router::new()
        .fallback(handle)
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::authenticate,
        ))
        .with_state(consoles)
}

/// The consoles' state: the web console's (sign-ins, the gateway) and the open device tabs.
#[derive(Clone)]
struct Consoles {
    web: WebState,
    tabs: Arc<Tabs>,
}

/// Every request on the consoles' origin.
async fn handle(State(c): State<Consoles>, req: Request) -> Response {
    let mut response = serve(&c, req).await;
    device_page_headers(response.headers_mut());
    response
}

async fn serve(c: &Consoles, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some(host) = host_of(req.headers()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the request names no valid Host",
            None,
        );
    };
    let console = console_url(&c.web, &host);
    if let Err(why) = check_fetch(req.method(), req.headers(), &host) {
        return page(StatusCode::FORBIDDEN, "Refused", why, Some(&console));
    }
    let (device, device_path) = match route(&path) {
        Route::Elsewhere => {
            return page(
                StatusCode::NOT_FOUND,
                "Not found",
                "nothing here: devices' consoles are under /d/<device>/ (open one from the console's \"My devices\")",
                Some(&console),
            )
        }
        Route::Bare(device) => {
            let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            return redirect(&format!("/d/{device}/{query}"));
        }
        Route::Device { device, path } => (device.to_owned(), path.to_owned()),
    };
    if ward_cookies(req.headers()) > 1 {
        let mut r = page(
            StatusCode::BAD_REQUEST,
            "Two Ward sessions",
            "this request carries more than one Ward session cookie (a device's page may have set one): Ward removed the extra ones it could; reload the page, and if this stays, sign out of Ward's console and clear this site's cookies",
            Some(&console),
        );
        expire_tossed_cookies(r.headers_mut(), &path);
        return r;
    }
    let Some(authed) = req.extensions().get::<Authed>().cloned() else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "sign in to Ward's console (password and TOTP, your hospital's sign-in, or a client certificate), then open the device again",
            Some(&console),
        );
    };
    let config = c.web.shared.config();
    let Some(dev) = config.device(&device) else {
        return page(
            StatusCode::NOT_FOUND,
            "No such device",
            &format!("the gateway has no device named {device:?}"),
            Some(&console),
        );
    };
    if dev.protocol != ward_core::device::Protocol::Http {
        return page(
            StatusCode::NOT_FOUND,
            "Not an HTTP console",
            &format!("{device} has no HTTP console: open it from the console's \"My devices\""),
            Some(&console),
        );
    }
    let rw = rewriter_for(dev);
    drop(config);
    let target = match req.uri().query() {
        Some(q) => format!("{device_path}?{q}"),
        None => device_path,
    };
    let Ok(target) = target.parse::<Uri>() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the path is not a valid request target",
            Some(&console),
        );
    };
    let consoles_origin = format!("https://{host}");
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let headers = rw.request_headers(&parts.headers, &consoles_origin);
    let answer = c
        .tabs
        .send(&c.web, &authed, &device, &method, &target, &headers, body)
        .await;
    let (status, reason, previous) = match answer {
        Ok((response, _lease)) if asks_for_password(&response) => {
            return page(
                StatusCode::UNAUTHORIZED,
                &format!("{device} asks for a password"),
                &format!(
                    "{device} refused the request for want of a password: the rule that let you in injects none from Ward's vault, or the vaulted one is no longer right (the audit log says credential_rejected). You are never asked for a device's password here: ask a Ward administrator."
                ),
                Some(&console),
            )
        }
        Ok((response, lease)) => return respond(&rw, &method, response, lease).await,
        Err(Failure {
            status,
            reason,
            previous,
        }) => (status, reason, previous),
    };
    let title = match status {
        StatusCode::FORBIDDEN => format!("Ward refused access to {device}"),
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
            format!("{device} did not answer")
        }
        _ => format!("{device} is not available"),
    };
    let reason = match previous {
        Some(p) if !reason.contains(&p) => {
            format!("{reason} (your previous session on {device} ended: {p})")
        }
        _ => reason,
    };
    page(status, &title, &reason, Some(&console))
}

/// Whether the device's answer is a `401` that would make the browser ask for the device's
/// password (a `Basic` or `Digest` challenge).
fn asks_for_password(response: &hyper::Response<Incoming>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        && response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .any(|v| {
                let v = v.as_bytes().trim_ascii_start();
                let scheme = v
                    .split(|b| b.is_ascii_whitespace())
                    .next()
                    .unwrap_or_default();
                scheme.eq_ignore_ascii_case(b"basic") || scheme.eq_ignore_ascii_case(b"digest")
            })
}

/// The device's answer, rewritten for the browser.
async fn respond(
    rw: &Rewriter,
    method: &Method,
    response: hyper::Response<Incoming>,
    lease: Lease,
) -> Response {
    let (mut parts, incoming) = response.into_parts();
    rw.response_headers(&mut parts.headers);
    let bodiless = *method == Method::HEAD
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let kind = rewrite::body_kind(&parts.headers);
    let body = match kind {
        _ if bodiless => {
            if kind.is_some() {
                // The rewritten length is not known without the body.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            Body::empty()
        }
        None => leased(Body::new(incoming), lease),
        Some(kind) => match rewritten_body(rw, kind, &mut parts.headers, incoming).await {
            Rewritten::Whole(body) => body,
            Rewritten::Streaming(body) => leased(body, lease),
        },
    };
    Response::from_parts(parts, body)
}

/// `body`, holding its tab's connection until it has all gone to the browser (or the browser
/// left): the next request of the tab waits for it, or takes an overflow connection.
fn leased(body: Body, lease: Lease) -> Body {
    let stream = body.into_data_stream();
    Body::from_stream(futures::stream::unfold(
        (stream, lease),
        |(mut stream, lease)| async move {
            let item = stream.next().await?;
            Some((item, (stream, lease)))
        },
    ))
}

/// A body rewritten whole, or streaming as the device sends it.
enum Rewritten {
    Whole(Body),
    Streaming(Body),
}

/// An HTML or CSS body: rewritten when it fits [`MAX_REWRITE_BODY`], else streamed as it comes.
async fn rewritten_body(
    rw: &Rewriter,
    kind: BodyKind,
    headers: &mut HeaderMap,
    mut incoming: Incoming,
) -> Rewritten {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REWRITE_BODY as u64) {
        return Rewritten::Streaming(Body::new(incoming));
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| {
            hyper::body::Body::poll_frame(std::pin::Pin::new(&mut incoming), cx)
        })
        .await;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > MAX_REWRITE_BODY {
                    // Too large to hold: what came so far, then the rest, both as sent.
                    let head = futures::stream::iter([Ok::<Bytes, axum::Error>(Bytes::from(buf))]);
                    return Rewritten::Streaming(Body::from_stream(
                        head.chain(Body::new(incoming).into_data_stream()),
                    ));
                }
            }
            Some(Err(e)) => {
                // The answer broke off: pass on what came, and the error ends the response.
                tracing::debug!(event = "web_console_body_failed", reason = %e, "device console body ended early");
                let head = futures::stream::iter([
                    Ok::<Bytes, axum::Error>(Bytes::from(buf)),
                    Err(axum::Error::new(e)),
                ]);
                headers.remove(header::CONTENT_LENGTH);
                return Rewritten::Whole(Body::from_stream(head));
            }
        }
    }
    headers.remove(header::CONTENT_LENGTH);
    Rewritten::Whole(Body::from(rw.body(kind, &buf)))
}

/// The rewriter of `dev`'s pages.
fn rewriter_for(dev: &ward_core::device::Device) -> Rewriter {
    use ward_core::device::DeviceAddress;
    let (host, port) = match &dev.address {
        DeviceAddress::Ip(a) if a.is_ipv6() => (format!("[{}]", a.ip()), a.port()),
        DeviceAddress::Ip(a) => (a.ip().to_string(), a.port()),
        DeviceAddress::Host { host, port } => (host.clone(), *port),
    };
    let host = dev
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or(host);
    Rewriter::new(dev.id.as_str(), &host, port, dev.tls.is_some())
}

/// Why a request got no answer from the device.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    /// The gateway's sentence (a policy denial, an unreachable device, …).
    reason: String,
    /// How the caller's previous session on the device ended, when that is why a new one was
    /// needed.
    previous: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Failure {
            status,
            reason: reason.into(),
            previous: None,
        }
    }
}

/// The open device tabs, by caller and device.
struct Tabs {
    slots: Mutex<HashMap<TabKey, Arc<Slot>>>,
    /// A tab unused this long is closed (`[web] idle_timeout`).
    idle: Duration,
}

/// One caller's (certificate serial, or `web-<sign-in>`) tab on one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TabKey {
    serial: String,
    device: String,
}

/// A device tab: at most one live session, used by one request at a time.
struct Slot {
    /// The tab's connections: the first is its session; the others are opened only while it is
    /// held for longer than [`OVERFLOW_AFTER`] by one answer (a long poll, a stream of readings).
    conns: Vec<Arc<tokio::sync::Mutex<Option<Live>>>>,
    last_used: Mutex<Instant>,
    /// The caller's identity ends then (a sign-in's `max_session`, a certificate's expiry).
    not_after: time::OffsetDateTime,
}

/// One connection of a tab, held from a request until its answer's body has gone to the browser.
type Lease = tokio::sync::OwnedMutexGuard<Option<Live>>;

impl Slot {
    /// A connection of this tab for one request: the tab's own once it is free (within
    /// [`OVERFLOW_AFTER`]), else a free overflow one (one with a live session first), else the
    /// tab's own again within [`BUSY_TIMEOUT`].
    async fn lease(&self) -> Option<Lease> {
        let primary = self.conns.first()?.clone();
        if let Ok(g) = tokio::time::timeout(OVERFLOW_AFTER, primary.clone().lock_owned()).await {
            return Some(g);
        }
        let mut free = None;
        for c in self.conns.iter().skip(1) {
            if let Ok(g) = c.clone().try_lock_owned() {
                if g.as_ref().is_some_and(|l| !l.sender.is_closed()) {
                    return Some(g);
                }
                free.get_or_insert(g);
            }
        }
        if free.is_some() {
            return free;
        }
        tokio::time::timeout(BUSY_TIMEOUT, primary.lock_owned())
            .await
            .ok()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn last_used(&self) -> Instant {
        self.last_used
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now())
    }
}

/// A live session and the HTTP client speaking over it.
struct Live {
    sender: http1::SendRequest<Body>,
    /// Why the gateway ended the session, once it has.
    ended: Arc<Mutex<Option<String>>>,
    /// The pumps between the client and the session and the client's connection task: aborted
    /// when the tab goes, which ends the session ("client gone").
    _tasks: AbortOnDrop,
}

impl Live {
    fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Tabs {
    /// The tab of `key`, made (within the bounds) if there is none.
    fn slot(&self, key: &TabKey, not_after: time::OffsetDateTime) -> Option<Arc<Slot>> {
        let mut map = self.slots.lock().ok()?;
        if let Some(s) = map.get(key) {
            return Some(s.clone());
        }
        let lru = |map: &HashMap<TabKey, Arc<Slot>>, mine: bool| {
            map.iter()
                .filter(|(k, _)| !mine || k.serial == key.serial)
                .min_by_key(|(_, s)| s.last_used())
                .map(|(k, _)| k.clone())
        };
        if map.keys().filter(|k| k.serial == key.serial).count() >= MAX_TABS_PER_CALLER {
            if let Some(k) = lru(&map, true) {
                map.remove(&k);
            }
        }
        if map.len() >= MAX_TABS {
            if let Some(k) = lru(&map, false) {
                map.remove(&k);
            }
        }
        let slot = Arc::new(Slot {
            conns: (0..CONNECTIONS_PER_TAB)
                .map(|_| Arc::new(tokio::sync::Mutex::new(None)))
                .collect(),
            last_used: Mutex::new(Instant::now()),
            not_after,
        });
        map.insert(key.clone(), slot.clone());
        Some(slot)
    }

    /// Closes tabs unused for the idle timeout or past their identity's end.
    fn sweep(&self, now: time::OffsetDateTime) {
        let Ok(mut map) = self.slots.lock() else {
            return;
        };
        map.retain(|_, s| s.last_used().elapsed() < self.idle && now < s.not_after);
    }

    /// Sends one request of `authed` to `device` over its tab (opening a session when the tab
    /// has none, or its session ended); the device's answer, or why there is none.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        web: &WebState,
        authed: &Authed,
        device: &str,
        method: &Method,
        target: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(hyper::Response<Incoming>, Lease), Failure> {
        let now = web.shared.clock.now();
        self.sweep(now);
        let key = TabKey {
            serial: authed.identity.serial.clone(),
            device: device.to_owned(),
        };
        let Some(slot) = self.slot(&key, authed.identity.not_after) else {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway's device tabs are unavailable; try again",
            ));
        };
        slot.touch();
        let Some(mut live) = slot.lease().await else {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{device} is still answering another request of this tab; try again"),
            ));
        };
        // A request without a body can be sent again on a new session if the old one closed
        // under it; one with a body cannot (the body is gone).
        let bodiless = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            && !headers.contains_key(header::TRANSFER_ENCODING)
            && headers
                .get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        let mut body = if bodiless { None } else { Some(body) };
        let mut previous = None;
        for attempt in 0..2 {
            let usable = match live.as_mut() {
                Some(l) => matches!(
                    tokio::time::timeout(BUSY_TIMEOUT, l.sender.ready()).await,
                    Ok(Ok(()))
                ),
                None => false,
            };
            if !usable {
                if let Some(old) = live.take() {
                    previous = old.ended().or(previous);
                }
                match open(web, authed, device).await {
                    Ok(l) => *live = Some(l),
                    Err(e) => {
                        drop(live);
                        self.remove(&key, &slot);
                        return Err(Failure {
                            status: e.status,
                            reason: e.reason,
                            previous,
                        });
                    }
                }
            }
            let Some(l) = live.as_mut() else {
                break;
            };
            let mut request = hyper::Request::new(body.take().unwrap_or_default());
            *request.method_mut() = method.clone();
            *request.uri_mut() = target.clone();
            *request.headers_mut() = headers.clone();
            match tokio::time::timeout(RESPONSE_TIMEOUT, l.sender.send_request(request)).await {
                Ok(Ok(response)) => return Ok((response, live)),
                Ok(Err(e)) => {
                    let ended = l.ended();
                    tracing::debug!(event = "web_console_request_failed", device, reason = %e, "device console request failed");
                    if bodiless && attempt == 0 {
                        previous = ended.or(previous);
                        live.take();
                        continue;
                    }
                    live.take();
                    return Err(Failure {
                        status: StatusCode::BAD_GATEWAY,
                        reason: match ended {
                            Some(why) => format!("the session ended: {why}"),
                            None => format!(
                                "{device} closed the connection before answering; try again"
                            ),
                        },
                        previous,
                    });
                }
                Err(_) => {
                    live.take();
                    return Err(Failure::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "{device} did not answer within {} s",
                            RESPONSE_TIMEOUT.as_secs()
                        ),
                    ));
                }
            }
        }
        Err(Failure {
            status: StatusCode::BAD_GATEWAY,
            reason: format!("{device} closed the connection before answering; try again"),
            previous,
        })
    }

    /// Forgets `key`'s tab if it is still `slot`.
    fn remove(&self, key: &TabKey, slot: &Arc<Slot>) {
        if let Ok(mut map) = self.slots.lock() {
            if map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                map.remove(key);
            }
        }
    }
}

/// Closes idle tabs every [`SWEEP_EVERY`] while the consoles' router lives.
async fn sweep_loop(tabs: Weak<Tabs>, clock: Arc<dyn ward_ca::Clock>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(tabs) = tabs.upgrade() else {
            return;
        };
        tabs.sweep(clock.now());
    }
}

/// Opens a session to `device` for `authed` and an HTTP/1.1 client over it.
async fn open(web: &WebState, authed: &Authed, device: &str) -> Result<Live, ApiError> {
    let bridge::DeviceSession {
        opened,
        mut reader,
        mut writer,
    } = bridge::open(web, authed, device, None).await?;
    tracing::debug!(event = "web_console_opened", device, session_id = %opened.session_id, "device console tab opened");
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let (mut their_read, mut their_write) = tokio::io::split(theirs);
    let ended = Arc::new(Mutex::new(None));
    let set_ended = ended.clone();
    let down = tokio::spawn(async move {
        let why = loop {
            match reader.next().await {
                FromDevice::Data(bytes) => {
                    if their_write.write_all(&bytes).await.is_err() {
                        break None;
                    }
                }
                FromDevice::Eof => {
                    let _ = their_write.shutdown().await;
                }
                FromDevice::Closed(reason) => break Some(reason),
                FromDevice::Gone => break Some("the gateway ended the session".to_owned()),
            }
        };
        if let (Some(why), Ok(mut slot)) = (why, set_ended.lock()) {
            *slot = Some(why);
        }
        let _ = their_write.shutdown().await;
    });
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match their_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = writer.eof().await;
                    break;
                }
                Ok(n) => {
                    let Some(chunk) = buf.get(..n) else { break };
                    if writer.send(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Held until the tab goes: dropping it now would end the session before the device's
        // last answer is read.
        std::future::pending::<()>().await;
        drop(writer);
    });
    let tasks = AbortOnDrop(vec![down.abort_handle(), up.abort_handle()]);
    let (sender, conn) = http1::Builder::new()
        .title_case_headers(true)
        .handshake::<_, Body>(TokioIo::new(ours))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the HTTP client for {device} could not start: {e}"),
            )
        })?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut tasks = tasks;
    tasks.0.push(driver.abort_handle());
    Ok(Live {
        sender,
        ended,
        _tasks: tasks,
    })
}

/// Refuses what a browser says comes from elsewhere (see the module docs).
fn check_fetch(method: &Method, headers: &HeaderMap, host: &str) -> Result<(), &'static str> {
    const SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    const MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
    const SERVICE_WORKER: HeaderName = HeaderName::from_static("service-worker");
    if headers.contains_key(SERVICE_WORKER) {
        // A device's service worker would outlive the session and see every later request to
        // the device's pages in this browser, whoever signs in next.
        return Err("a device's page may not install a service worker through Ward");
    }
    let site = headers.get(SITE).map(|v| v.as_bytes().to_ascii_lowercase());
    let mode = headers.get(MODE).map(|v| v.as_bytes().to_ascii_lowercase());
    if matches!(*method, Method::GET | Method::HEAD) {
        return match site.as_deref() {
            None | Some(b"none") | Some(b"same-origin") => Ok(()),
            Some(b"same-site") if mode.as_deref() == Some(b"navigate") => Ok(()),
            Some(b"same-site") => Err("a device's console opens as a page of its own (from the console's link), not inside another site's page"),
            _ => Err("a request from another site is refused: open the device from Ward's console"),
        };
    }
    if site.as_deref() != Some(b"same-origin") {
        return Err("only the device's own pages may send this request (a browser's Sec-Fetch-Site: same-origin is required)");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = format!("https://{host}");
        if !origin.as_bytes().eq_ignore_ascii_case(ours.as_bytes()) {
            return Err("a request from another origin is refused");
        }
    }
    Ok(())
}

/// How many `ward_session` cookies the request carries.
fn ward_cookies(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter(|kv| {
            let name = kv.split(|&b| b == b'=').next().unwrap_or_default();
            name.trim_ascii() == rewrite::WARD_COOKIE.as_bytes()
        })
        .count()
}

/// Expires a `ward_session` cookie a page may have set under `path`'s directories (never the
/// console's own, whose path is `/`).
fn expire_tossed_cookies(headers: &mut HeaderMap, path: &str) {
    let mut prefixes: Vec<&str> = Vec::new();
    for (i, _) in path.match_indices('/').skip(1).take(16) {
        if let Some(p) = path.get(..i) {
            prefixes.push(p);
        }
        if let Some(p) = path.get(..=i) {
            prefixes.push(p);
        }
    }
    for p in prefixes {
        let v = format!("{}=; Path={p}; Max-Age=0; Secure", rewrite::WARD_COOKIE);
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

/// The request's `Host`, when it is a plain host name or address with an optional port.
fn host_of(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !h.is_empty()
        && h.len() <= 262
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then(|| h.to_owned())
}

/// The console's address as the browser reaches this host: `https://<host>:<[web] listen's port>/`.
fn console_url(web: &WebState, host: &str) -> String {
    let name = match host.rfind(']') {
        Some(end) => host.get(..=end).unwrap_or(host),
        None => host.split(':').next().unwrap_or(host),
    };
    match web.shared.config().web.listen {
        Some(l) => format!("https://{name}:{}/", l.port()),
        None => format!("https://{name}/"),
    }
}

/// `308` to `location` (the device's root with its slash).
fn redirect(location: &str) -> Response {
    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The Content-Security-Policy of Ward's own pages on the consoles' origin: no script at all.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                        form-action 'none'; frame-ancestors 'none'";

/// Ward's own small page: `title`, `reason` (escaped) and a link back to the console.
fn page(status: StatusCode, title: &str, reason: &str, console: Option<&str>) -> Response {
    let back = console
        .map(|c| {
            format!(
                "<p><a id=\"ward-console\" href=\"{}\">Back to Ward's console</a></p>",
                escape_html(c)
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Ward: {title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#1b1f24}}\
         h1{{font-size:1.4em}}#ward-reason{{padding:.8em 1em;border-left:4px solid #b42318;background:#fef3f2;white-space:pre-wrap}}\
         small{{color:#57606a}}</style></head>\
         <body><main><h1 id=\"ward-title\">{title}</h1><p id=\"ward-reason\">{reason}</p>{back}\
         <p><small>Ward (HTTP {code})</small></p></main></body></html>\n",
        title = escape_html(title),
        reason = escape_html(reason),
        code = status.as_u16(),
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The headers on every answer of the consoles' origin, the device's included.
fn device_page_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    // An extra policy (all policies apply): a device's page may be framed by its own origin's
    // pages only, never by another site's.
    h.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'self'"),
    );
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    /// (method, headers, allowed?) for the consoles' origin's fetch checks.
    #[test]
    #[allow(clippy::type_complexity)]
    fn fetch_checks() {
        let host = "127.0.0.1:8444";
        let cases: &[(Method, &[(&str, &str)], bool)] = &[
            (Method::GET, &[], true),
            (Method::GET, &[("sec-fetch-site", "none")], true),
            (Method::GET, &[("sec-fetch-site", "same-origin")], true),
            (
                Method::GET,
                &[
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "navigate"),
                ],
                true,
            ),
            (
                Method::GET,
                &[
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "no-cors"),
                ],
                false,
            ),
            (Method::GET, &[("sec-fetch-site", "same-site")], false),
            (
                Method::GET,
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate"),
                ],
                false,
            ),
            (Method::HEAD, &[("sec-fetch-site", "cross-site")], false),
            (Method::POST, &[], false),
            (Method::POST, &[("sec-fetch-site", "same-site")], false),
            (Method::POST, &[("sec-fetch-site", "none")], false),
            (Method::POST, &[("sec-fetch-site", "same-origin")], true),
            (
                Method::POST,
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://127.0.0.1:8444"),
                ],
                true,
            ),
            (
                Method::POST,
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://127.0.0.1:8443"),
                ],
                false,
            ),
            (Method::DELETE, &[("sec-fetch-site", "cross-site")], false),
            (Method::OPTIONS, &[("sec-fetch-site", "cross-site")], false),
            (
                Method::GET,
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("service-worker", "script"),
                ],
                false,
            ),
        ];
        for (method, h, allowed) in cases {
            let got = check_fetch(method, &headers(h), host);
            assert_eq!(got.is_ok(), *allowed, "{method} {h:?}: {got:?}");
        }
    }

    #[test]
    fn tossed_ward_cookies_are_counted_and_expired_below_the_root_only() {
        let h = headers(&[("cookie", "ward_session=a; x=1; ward_session=b")]);
        assert_eq!(ward_cookies(&h), 2);
        assert_eq!(ward_cookies(&headers(&[("cookie", "ward_session=a")])), 1);
        assert_eq!(
            ward_cookies(&headers(&[("cookie", "my_ward_session=a")])),
            0
        );
        let mut out = HeaderMap::new();
        expire_tossed_cookies(&mut out, "/d/m/x/y.html");
        let set: Vec<_> = out
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            set,
            [
                "ward_session=; Path=/d; Max-Age=0; Secure",
                "ward_session=; Path=/d/; Max-Age=0; Secure",
                "ward_session=; Path=/d/m; Max-Age=0; Secure",
                "ward_session=; Path=/d/m/; Max-Age=0; Secure",
                "ward_session=; Path=/d/m/x; Max-Age=0; Secure",
                "ward_session=; Path=/d/m/x/; Max-Age=0; Secure",
            ]
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_of(&headers(&[("host", "127.0.0.1:8444")])).as_deref(),
            Some("127.0.0.1:8444")
        );
        assert_eq!(
            host_of(&headers(&[("host", "[::1]:8444")])).as_deref(),
            Some("[::1]:8444")
        );
        assert!(host_of(&headers(&[("host", "a\"b")])).is_none());
        assert!(host_of(&headers(&[("host", "a/b")])).is_none());
        assert!(host_of(&HeaderMap::new()).is_none());
    }

    #[tokio::test]
    async fn pages_escape_the_reason() {
        let r = page(
            StatusCode::FORBIDDEN,
            "Ward refused access to m",
            "locked: <script>alert(1)</script> & more",
            Some("https://h:1/\"><script>"),
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("locked: &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"),
            "{body}"
        );
        assert!(
            body.contains("href=\"https://h:1/&quot;&gt;&lt;script&gt;\""),
            "{body}"
        );
        assert!(!body.contains("<script>"), "{body}");
    }
}
