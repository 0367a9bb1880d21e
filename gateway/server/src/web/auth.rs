//! Sign-in, sign-out, browser sessions, the authentication middleware, CSRF and the security
//! headers (see [`super`]).
//!
//! A caller is authenticated by a client certificate from Ward's CA (checked by the gateway's
//! validator during the handshake, [`super::server`]) or by the cookie of a browser session
//! started at `POST /api/v1/signin` with user name, password **and** TOTP code — the users of
//! `ward login`, the same checks, back-off and audit ([`crate::services::login::LoginService::sign_in`]),
//! but a TOTP code is always needed: no page or API call is reachable with a password alone.
//!
//! Browser sessions live only in the gateway's memory ([`SignIns`]): a random 32-byte token in
//! the cookie `ward_session` (`HttpOnly; Secure; SameSite=Strict; Path=/`), found by its SHA-256,
//! ending after `[web] idle_timeout` without a request, `[web] max_session` after sign-in, at
//! sign-out, and as soon as the user is disabled. A restart signs everybody out.
//!
//! Every state-changing request under `/api/` carries `X-Ward-CSRF` (whoami's `csrf`: per
//! browser session, or for a certificate caller an HMAC of its serial under a per-gateway key),
//! and a request a browser marks as coming from another site, or with a foreign `Origin`, is
//! refused under `/api/` whatever its method.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use hmac::Mac as _;
use sha2::Digest as _;
use time::OffsetDateTime;
use ward_ca::Identity;
use ward_core::config::WebConfig;
use ward_core::Principal;

use super::{ApiError, Authed, ConnInfo, Via, WebState};
use crate::services::login::{Credentials, SignedIn, TOTP_REUSED};
use crate::services::{principal_of, Refusal};

/// The session cookie's name.
pub const COOKIE: &str = "ward_session";
/// The header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-ward-csrf";
/// The sign-in path (the one state-changing request without a CSRF token).
pub const SIGNIN_PATH: &str = "/api/v1/signin";
/// Most browser sessions kept at once; a sign-in beyond that ends the oldest.
pub const MAX_SIGNINS: usize = 1024;
/// Largest sign-in request body.
const MAX_SIGNIN_BODY: usize = 8 * 1024;

/// The Content-Security-Policy on every response: the pages' own script and style only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                       form-action 'self'";

/// One signed-in browser session. `Debug` hides its CSRF token.
#[derive(Clone)]
pub struct SignIn {
    /// A short id naming the session in the audit log and in its identity's serial
    /// (`web-<id>`); not the token.
    pub id: String,
    /// The user name.
    pub user: String,
    /// The identity built from the user record (serial `web-<id>`).
    pub identity: Identity,
    /// Its policy view.
    pub principal: Principal,
    /// When the user signed in.
    pub created: OffsetDateTime,
    /// The last request.
    pub last_seen: OffsetDateTime,
    /// How the user signed in (password + TOTP, or the hospital's IdP).
    pub via: Via,
    /// The session's CSRF token.
    csrf: String,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("serial", &self.identity.serial)
            .field("created", &self.created)
            .field("last_seen", &self.last_seen)
            .field("via", &self.via)
            .field("csrf", &"<hidden>")
            .finish()
    }
}

/// What looking a cookie up found.
#[derive(Debug)]
pub enum Lookup {
    /// A live session (its `last_seen` just moved to now).
    Live(SignIn),
    /// A session that just ended (removed), and why.
    Ended(SignIn, &'static str),
    /// No such session.
    Unknown,
}

/// The signed-in browser sessions, in the gateway's memory.
pub struct SignIns {
    idle: time::Duration,
    max: time::Duration,
    /// By the SHA-256 of the token, so the lookup's timing says nothing about tokens.
    sessions: Mutex<HashMap<[u8; 32], SignIn>>,
    /// The key of certificate callers' CSRF tokens (random per gateway start).
    key: [u8; 32],
}

impl SignIns {
    /// No session yet, under `[web]`'s timeouts.
    pub fn new(config: &WebConfig) -> Self {
        let dur = |d: std::time::Duration| {
            time::Duration::try_from(d).unwrap_or(time::Duration::MINUTE * 15)
        };
        SignIns {
            idle: dur(config.idle_timeout),
            max: dur(config.max_session),
            sessions: Mutex::new(HashMap::new()),
            key: rand::random(),
        }
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> time::Duration {
        self.idle
    }

    /// A fresh token and session id (not stored yet).
    pub fn draw() -> (String, String) {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let id = hex::encode(rand::random::<[u8; 6]>());
        (token, id)
    }

    /// Stores a new password sign-in under `token`: `signed` at `now`, its identity in trust
    /// domain `trust_domain`. Returns it and the sessions that ended to make room or had expired.
    pub fn insert(
        &self,
        token: &str,
        id: &str,
        signed: SignedIn,
        trust_domain: &str,
        now: OffsetDateTime,
    ) -> (SignIn, Vec<(SignIn, &'static str)>) {
        self.insert_via(token, id, signed, Via::Password, trust_domain, now)
    }

    /// Stores a new session under `token` signed in `via` a password or the hospital's IdP
    /// (identity serial `web-<id>` or `sso-<id>`), as [`SignIns::insert`].
    pub fn insert_via(
        &self,
        token: &str,
        id: &str,
        signed: SignedIn,
        via: Via,
        trust_domain: &str,
        now: OffsetDateTime,
    ) -> (SignIn, Vec<(SignIn, &'static str)>) {
        let prefix = match via {
            Via::Sso => "sso",
            Via::Password | Via::Certificate => "web",
        };
        let identity = Identity {
            trust_domain: trust_domain.to_owned(),
            kind: signed.kind,
            uri: format!("spiffe://{trust_domain}/{}/{}", signed.kind, signed.name),
            name: signed.name.clone(),
            org: signed.org,
            roles: signed.roles,
            serial: format!("{prefix}-{id}"),
            not_before: now,
            not_after: now + self.max,
        };
        let signin = SignIn {
            id: id.to_owned(),
            user: signed.name,
            principal: principal_of(&identity),
            identity,
            created: now,
            last_seen: now,
            via,
            csrf: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::random::<[u8; 32]>()),
        };
        let mut ended = Vec::new();
        let Ok(mut map) = self.sessions.lock() else {
            return (signin, ended);
        };
        map.retain(|_, s| match self.expired(s, now) {
            Some(why) => {
                ended.push((s.clone(), why));
                false
            }
            None => true,
        });
        while map.len() >= MAX_SIGNINS {
            let oldest = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k);
            match oldest.and_then(|k| map.remove(&k)) {
                Some(s) => ended.push((s, "too many signed-in browser sessions: the oldest ended")),
                None => break,
            }
        }
        map.insert(digest(token), signin.clone());
        (signin, ended)
    }

    /// The session of `token` at `now`: live (touched), just ended, or unknown.
    pub fn lookup(&self, token: &str, now: OffsetDateTime) -> Lookup {
        let key = digest(token);
        let Ok(mut map) = self.sessions.lock() else {
            return Lookup::Unknown;
        };
        let Some(s) = map.get_mut(&key) else {
            return Lookup::Unknown;
        };
        if let Some(why) = self.expired(s, now) {
            return match map.remove(&key) {
                Some(s) => Lookup::Ended(s, why),
                None => Lookup::Unknown,
            };
        }
        s.last_seen = now;
        Lookup::Live(s.clone())
    }

    /// Ends the session of `token`, returning it.
    pub fn remove(&self, token: &str) -> Option<SignIn> {
        self.sessions.lock().ok()?.remove(&digest(token))
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The CSRF token of a certificate caller with certificate serial `serial`.
    pub fn certificate_csrf(&self, serial: &str) -> String {
        match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(b"ward web csrf\0");
                mac.update(serial.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            // Not reachable (HMAC takes any key length); a fresh random value matches nothing.
            Err(_) => hex::encode(rand::random::<[u8; 32]>()),
        }
    }

    fn expired(&self, s: &SignIn, now: OffsetDateTime) -> Option<&'static str> {
        if now - s.created >= self.max {
            Some("the session reached [web] max_session")
        } else if now - s.last_seen >= self.idle {
            Some("idle timeout")
        } else {
            None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the middleware knows about the request's sign-in, for `whoami` and `signout`. `Debug`
/// hides the tokens.
#[derive(Clone)]
pub struct Current {
    /// The CSRF token state-changing requests must carry.
    pub csrf: String,
    /// When access ends: the browser session's absolute end, or the certificate's `not_after`.
    pub expires_at: OffsetDateTime,
    /// The idle timeout (browser sessions only).
    pub idle_timeout_s: Option<i64>,
    /// The browser session's cookie token and id.
    session: Option<(String, String)>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("csrf", &"<hidden>")
            .field("expires_at", &self.expires_at)
            .field("idle_timeout_s", &self.idle_timeout_s)
            .field("session", &self.session.as_ref().map(|(_, id)| id))
            .finish()
    }
}

/// Sign-in, sign-out and `whoami`.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route(SIGNIN_PATH, post(signin))
        .route("/api/v1/signout", post(signout))
        .route("/api/v1/whoami", get(whoami))
}

/// `whoami`'s JSON.
fn whoami_json(authed: &Authed, current: &Current) -> serde_json::Value {
    let id = &authed.identity;
    serde_json::json!({
        "principal": id.principal(),
        "kind": id.kind.as_str(),
        "name": id.name,
        "org": id.org,
        "roles": id.roles,
        "serial": id.serial,
        "via": authed.via,
        "csrf": current.csrf,
        "expires_at": rfc3339(current.expires_at),
        "idle_timeout_s": current.idle_timeout_s,
    })
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `GET /api/v1/whoami`.
async fn whoami(authed: Authed, current: Option<Extension<Current>>) -> Response {
    match current {
        Some(Extension(c)) => Json(whoami_json(&authed, &c)).into_response(),
        None => ApiError::unauthenticated().into_response(),
    }
}

/// `POST /api/v1/signin` `{user, password, totp}` → whoami and the session cookie.
async fn signin(
    State(state): State<WebState>,
    conn: Option<Extension<ConnInfo>>,
    current: Option<Extension<Current>>,
    body: Bytes,
) -> Response {
    let Some(Extension(conn)) = conn else {
        return ApiError::unauthenticated().into_response();
    };
    if body.len() > MAX_SIGNIN_BODY {
        refused_early(&state, conn.peer, "sign-in request too large");
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "sign-in request too large")
            .into_response();
    }
    let creds: Credentials = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(_) => {
            refused_early(&state, conn.peer, "malformed sign-in request");
            return ApiError::bad_request(
                "send JSON {\"user\": ..., \"password\": ..., \"totp\": ...} (the TOTP code from your authenticator is required)",
            )
            .into_response();
        }
    };
    // A browser signing in again leaves its previous session behind: end it.
    if let Some((old, _)) = current.and_then(|Extension(c)| c.session) {
        if let Some(s) = state.signins.remove(&old) {
            audit_ended(&state, &[(s, "signed in again")], conn.peer);
        }
    }
    let (token, id) = SignIns::draw();
    let shared = state.shared.clone();
    let services = state.services();
    let runtime = tokio::runtime::Handle::current();
    let peer = conn.peer;
    let session = id.clone();
    // argon2id runs on the login gate's blocking threads, like `ward login`'s.
    let verified = shared
        .jit
        .gate
        .run(move || runtime.block_on(services.login.sign_in(peer, &creds, &session)))
        .await;
    let signed = match verified {
        Ok(Ok(s)) => s,
        Ok(Err(refusal)) => {
            // The refusal is in the audit log before it is answered.
            let _ = shared.audit.commit().await;
            return signin_refused(refusal).into_response();
        }
        Err(crate::login_gate::GateError::Busy) => {
            shared.audit_noise(
                peer,
                crate::audit::Event::new("login_busy", "denied", shared.clock.now())
                    .severity("warning")
                    .source(peer)
                    .reason("too many sign-ins in progress"),
            );
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, crate::login_gate::BUSY)
                .into_response();
        }
        Err(crate::login_gate::GateError::Failed) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sign-in failed inside the gateway",
            )
            .into_response()
        }
    };
    let now = shared.clock.now();
    let (signin, ended) =
        state
            .signins
            .insert(&token, &id, signed, shared.validator.trust_domain(), now);
    audit_ended(&state, &ended, peer);
    // The session exists only once its start is in the audit log.
    if let Err(e) = shared.audit.commit().await {
        state.signins.remove(&token);
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
    }
    let authed = Authed {
        identity: signin.identity.clone(),
        principal: signin.principal.clone(),
        peer,
        via: Via::Password,
    };
    let current = Current {
        csrf: signin.csrf.clone(),
        expires_at: signin.created + state.signins.max,
        idle_timeout_s: Some(state.signins.idle.whole_seconds()),
        session: Some((token.clone(), signin.id.clone())),
    };
    let mut response = Json(whoami_json(&authed, &current)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `whoami`'s JSON for a browser session just started (`signin` under cookie `token`).
pub(crate) fn signin_json(
    state: &WebState,
    signin: &SignIn,
    token: &str,
    peer: SocketAddr,
) -> serde_json::Value {
    let authed = Authed {
        identity: signin.identity.clone(),
        principal: signin.principal.clone(),
        peer,
        via: signin.via,
    };
    let current = Current {
        csrf: signin.csrf.clone(),
        expires_at: signin.created + state.signins.max,
        idle_timeout_s: Some(state.signins.idle.whole_seconds()),
        session: Some((token.to_owned(), signin.id.clone())),
    };
    whoami_json(&authed, &current)
}

/// How a refused sign-in is answered: 401 with the service's words (the generic login-failed
/// text for a wrong name, password or code; the back-off's wait), 503 when the store is down.
fn signin_refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Denied(why) => ApiError::new(StatusCode::UNAUTHORIZED, why),
        Refusal::TotpReused => ApiError::new(StatusCode::UNAUTHORIZED, TOTP_REUSED),
        other => ApiError::from(other),
    }
}

/// `POST /api/v1/signout` → 204 and an expired cookie.
async fn signout(
    State(state): State<WebState>,
    authed: Authed,
    current: Option<Extension<Current>>,
) -> Response {
    if let Some((token, id)) = current.and_then(|Extension(c)| c.session) {
        if state.signins.remove(&token).is_some() {
            state
                .services()
                .login
                .signed_out(&authed.identity, authed.peer, &id, "signed out");
            let _ = state.shared.audit.commit().await;
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "ward_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

/// A sign-in refused before any credential was looked at (malformed, cross-site, not JSON):
/// audited with the gateway's other unauthenticated noise, aggregated per source.
fn refused_early(state: &WebState, peer: SocketAddr, why: &str) {
    let shared = &state.shared;
    shared.audit_noise(
        peer,
        crate::audit::Event::new(
            crate::services::login::WEB_SIGNIN,
            "denied",
            shared.clock.now(),
        )
        .severity("warning")
        .source(peer)
        .reason(why.to_owned()),
    );
}

/// Audits browser sessions that ended (`ended`: each with why) as seen from `peer`.
pub(crate) fn audit_ended(state: &WebState, ended: &[(SignIn, &'static str)], peer: SocketAddr) {
    if ended.is_empty() {
        return;
    }
    let login = state.services().login;
    for (s, why) in ended {
        login.signed_out(&s.identity, peer, &s.id, why);
    }
}

/// The `ward_session` cookie's value, if the request carries exactly one, well formed. Two or
/// more are no session at all: a device's page on the consoles' origin can set cookies for this
/// host (cookies are per host, not per port) under a longer path, which the browser would send
/// first — a session of the attacker's choosing ("cookie tossing"); ambiguity signs nobody in.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim());
    let value = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(value).filter(|v| {
        v.len() == 43
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Resolves the request's caller (client certificate, or session cookie) into an [`Authed`]
/// in its extensions (replacing any already there); refuses cross-site requests under `/api/`
/// and state-changing ones without the CSRF token.
pub async fn authenticate(State(state): State<WebState>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().remove::<Authed>();
    req.extensions_mut().remove::<Current>();
    let api = req.uri().path().starts_with("/api/");
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let signing_in =
        !safe && (req.uri().path() == SIGNIN_PATH || req.uri().path() == super::sso::TOTP_PATH);
    let conn = req.extensions().get::<ConnInfo>().cloned();
    // The IdP sends the browser back to the callback: a top-level GET from the IdP's site. It
    // changes nothing unless it carries a pending sign-in's state bound to this browser
    // (web::sso), so it alone is let through from another site.
    let from_idp = safe && req.uri().path() == super::sso::CALLBACK_PATH;
    if api && !from_idp {
        if let Err(e) = same_origin(req.headers()) {
            if let (true, Some(c)) = (signing_in, &conn) {
                refused_early(&state, c.peer, "cross-site sign-in");
            }
            return e.into_response();
        }
    }
    if signing_in && !is_json(req.headers()) {
        if let Some(c) = &conn {
            refused_early(
                &state,
                c.peer,
                "sign-in without Content-Type: application/json",
            );
        }
        return ApiError::forbidden("sign in with Content-Type: application/json").into_response();
    }
    let Some(conn) = conn else {
        return next.run(req).await;
    };
    let now = state.shared.clock.now();
    let resolved = match &conn.certificate {
        Some(id) => {
            if state.shared.jit.is_disabled(&id.name) {
                if api {
                    return ApiError::forbidden(format!(
                        "{} is disabled: ask an admin",
                        id.principal()
                    ))
                    .into_response();
                }
                None
            } else {
                let authed = Authed {
                    identity: id.clone(),
                    principal: principal_of(id),
                    peer: conn.peer,
                    via: Via::Certificate,
                };
                let current = Current {
                    csrf: state.signins.certificate_csrf(&id.serial),
                    expires_at: id.not_after,
                    idle_timeout_s: None,
                    session: None,
                };
                Some((authed, current))
            }
        }
        None => match session_cookie(req.headers()) {
            None => None,
            Some(token) => browser_session(&state, token, conn.peer, now),
        },
    };
    if let Some((authed, current)) = resolved {
        if api && !safe && !signing_in {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same(sent, current.csrf.as_bytes()) {
                return ApiError::forbidden(
                    "missing or wrong X-Ward-CSRF header: send the csrf value from GET /api/v1/whoami",
                )
                .into_response();
            }
        }
        req.extensions_mut().insert(authed);
        req.extensions_mut().insert(current);
    }
    next.run(req).await
}

/// Whether the body is declared JSON (a cross-site form cannot send that without a CORS
/// preflight, which the console never grants).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The browser session of `token`: live, or ended now (audited) or unknown (none).
fn browser_session(
    state: &WebState,
    token: &str,
    peer: SocketAddr,
    now: OffsetDateTime,
) -> Option<(Authed, Current)> {
    let s = match state.signins.lookup(token, now) {
        Lookup::Live(s) => s,
        Lookup::Ended(s, why) => {
            audit_ended(state, &[(s, why)], peer);
            return None;
        }
        Lookup::Unknown => return None,
    };
    if state.shared.jit.is_disabled(&s.user) {
        if let Some(s) = state.signins.remove(token) {
            audit_ended(state, &[(s, "the user is disabled")], peer);
        }
        return None;
    }
    let authed = Authed {
        identity: s.identity.clone(),
        principal: s.principal.clone(),
        peer,
        via: s.via,
    };
    let current = Current {
        csrf: s.csrf.clone(),
        expires_at: s.created + state.signins.max,
        idle_timeout_s: Some(state.signins.idle.whole_seconds()),
        session: Some((token.to_owned(), s.id.clone())),
    };
    Some((authed, current))
}

/// Refuses what a browser says comes from another site (`Sec-Fetch-Site` other than
/// `same-origin` or `none`), and an `Origin` that is not the console's own.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        let ok = site.as_bytes().eq_ignore_ascii_case(b"same-origin")
            || site.as_bytes().eq_ignore_ascii_case(b"none");
        if !ok {
            return Err(ApiError::forbidden(
                "cross-site request refused: use the console's own pages or a script without a browser",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).map(|h| h.as_bytes());
        let ours = host.is_some_and(|h| {
            let o = origin.as_bytes();
            o.len() == h.len() + 8
                && o.starts_with(b"https://")
                && o.get(8..).is_some_and(|rest| rest.eq_ignore_ascii_case(h))
        });
        if !ours {
            return Err(ApiError::forbidden(
                "request from another origin refused: use the console's own pages",
            ));
        }
    }
    Ok(())
}

/// Security headers on every response (`Cache-Control: no-store` under `/api/`).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
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
    if api {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(name: &str) -> SignedIn {
        SignedIn {
            name: name.into(),
            kind: ward_ca::Kind::Security,
            org: None,
            roles: vec!["soc".into()],
        }
    }

    fn config(idle: u64, max: u64) -> WebConfig {
        WebConfig {
            listen: None,
            consoles_listen: None,
            idle_timeout: std::time::Duration::from_secs(idle),
            max_session: std::time::Duration::from_secs(max),
        }
    }

    #[test]
    fn sessions_end_on_idle_and_on_max() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let s = SignIns::new(&config(60, 300));
        let (token, id) = SignIns::draw();
        let (signin, ended) = s.insert(&token, &id, signed("sam"), "ward.test", t0);
        assert!(ended.is_empty());
        assert_eq!(signin.identity.serial, format!("web-{id}"));
        assert_eq!(signin.identity.uri, "spiffe://ward.test/security/sam");
        // Touched every 50 s: alive past the idle timeout's span, until max_session.
        for i in 1..6 {
            let now = t0 + time::Duration::seconds(50 * i);
            assert!(matches!(s.lookup(&token, now), Lookup::Live(_)), "{i}");
        }
        match s.lookup(&token, t0 + time::Duration::seconds(300)) {
            Lookup::Ended(_, why) => assert!(why.contains("max_session"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.lookup(&token, t0), Lookup::Unknown));
        let (token, id) = SignIns::draw();
        let _ = s.insert(&token, &id, signed("sam"), "ward.test", t0);
        match s.lookup(&token, t0 + time::Duration::seconds(61)) {
            Lookup::Ended(_, why) => assert_eq!(why, "idle timeout"),
            other => panic!("{other:?}"),
        }
        assert!(s.is_empty());
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let s = SignIns::new(&config(600, 3600));
        let (first, id) = SignIns::draw();
        let _ = s.insert(&first, &id, signed("a"), "ward.test", t0);
        for i in 1..MAX_SIGNINS {
            let (t, id) = SignIns::draw();
            let _ = s.insert(
                &t,
                &id,
                signed("a"),
                "ward.test",
                t0 + time::Duration::milliseconds(i as i64),
            );
        }
        assert_eq!(s.len(), MAX_SIGNINS);
        let (t, id) = SignIns::draw();
        let (_, ended) = s.insert(
            &t,
            &id,
            signed("b"),
            "ward.test",
            t0 + time::Duration::seconds(2),
        );
        assert_eq!(ended.len(), 1);
        assert_eq!(s.len(), MAX_SIGNINS);
        assert!(matches!(
            s.lookup(&first, t0 + time::Duration::seconds(3)),
            Lookup::Unknown
        ));
        assert!(matches!(
            s.lookup(&t, t0 + time::Duration::seconds(3)),
            Lookup::Live(_)
        ));
    }

    #[test]
    fn cookies_csrf_and_origins() {
        let (token, _) = SignIns::draw();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={token}")).unwrap(),
        );
        assert_eq!(session_cookie(&h), Some(token.as_str()));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("ward_session=short"),
        );
        assert_eq!(session_cookie(&h), None);
        // Two session cookies (one tossed by a device's page under a longer path): none.
        let mut two = HeaderMap::new();
        two.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={token}; a=b; {COOKIE}={token}")).unwrap(),
        );
        assert_eq!(session_cookie(&two), None);

        let s = SignIns::new(&WebConfig::default());
        let a = s.certificate_csrf("01ab");
        assert_eq!(a, s.certificate_csrf("01ab"));
        assert_ne!(a, s.certificate_csrf("01ac"));
        assert_ne!(
            a,
            SignIns::new(&WebConfig::default()).certificate_csrf("01ab")
        );
        assert!(same(a.as_bytes(), a.as_bytes()));
        assert!(!same(b"", b""));
        assert!(!same(a.as_bytes(), b"x"));

        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8443"));
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:8443"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
    }
}
