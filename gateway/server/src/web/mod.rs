//! The web console: the gateway's second front end over the same services as the wire protocol
//! (docs/web.md). Security staff and approvers sign in with a client certificate from Ward's CA
//! or with password + TOTP, and use pages served by the gateway itself; a JSON API under
//! `/api/v1/` serves the pages and a hospital's scripts.
//!
//! Layout (one file per area; no logic is written twice — every state change goes through a
//! service in [`crate::services`], which audits it):
//! - [`server`]: the HTTPS listener (TLS 1.3, the gateway's certificate, an optional client
//!   certificate validated by the gateway's validator) and its accept loop;
//! - [`auth`]: sign-in (password + TOTP through the login service's checks), sign-out, the
//!   server-side browser sessions, the middleware that resolves every request to an [`Authed`]
//!   caller, CSRF and cross-site checks, and the security headers on every response;
//! - [`sessions`], [`audit`], [`overview`]: the session search over the index, session detail,
//!   exports, the audit log and the overview's aggregates;
//! - [`player`], [`terminal`], [`watch`]: the session player (screens emulated on the server),
//!   the hex view and live watch;
//! - [`live`], [`admin`]: live sessions and the kill switch, access requests, locks, devices;
//! - [`mine`]: "my devices" (what the caller may open now, request, or open by break-glass);
//! - [`bridge`]: a device session for the browser through the gateway's one session pipeline;
//!   [`term`]: the web terminal (a WebSocket) over it; [`consoles`]: devices' own HTTP consoles
//!   under `/d/<device>/`, served on an origin of their own (`[web] consoles_listen`);
//! - [`sso`]: sign-in with the hospital's OpenID provider (authorization code + PKCE), for the
//!   browser and for `ward login --sso`; [`sso_cli`]: approving a `ward login --sso` in a
//!   signed-in browser;
//! - [`openapi`]: the API's OpenAPI document; [`assets`]: the embedded pages.
#![allow(clippy::module_name_repetitions)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use ward_ca::Identity;
use ward_core::Principal;

use crate::gateway::Shared;
use crate::services::review::{ReviewRefusal, ReviewService, Reviewer};
use crate::services::{Caller, Refusal, Role};

pub mod admin;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod bridge;
pub mod consoles;
pub mod live;
pub mod mine;
pub mod openapi;
pub mod overview;
pub mod player;
pub mod server;
pub mod sessions;
pub mod sso;
pub mod sso_cli;
pub mod term;
pub mod terminal;
pub mod watch;

/// What every handler holds: the running gateway and the web console's own state.
#[derive(Clone)]
pub struct WebState {
    pub(crate) shared: Arc<Shared>,
    /// Signed-in browser sessions ([`auth`]).
    pub(crate) signins: Arc<auth::SignIns>,
    /// Recordings parsed for the player, per caller ([`player`]).
    pub(crate) players: Arc<player::Players>,
    /// Sign-ins through the hospital's IdP in progress, and its metadata ([`sso`]).
    pub(crate) sso: Arc<sso::Sso>,
}

impl WebState {
    /// The console's state over a running gateway.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let web = shared.config().web.clone();
        WebState {
            signins: Arc::new(auth::SignIns::new(&web)),
            players: Arc::new(player::Players::default()),
            sso: Arc::new(sso::Sso::default()),
            shared,
        }
    }

    /// The services (a few reference counts: built per request, like the frame dispatcher's).
    pub(crate) fn services(&self) -> crate::dispatch::Services {
        crate::dispatch::Services::of(&self.shared)
    }

    /// The review service (recordings, the audit log, the session listing).
    pub(crate) fn review(&self) -> &ReviewService {
        self.shared.review()
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A client certificate from Ward's CA, presented by the browser or a script.
    Certificate,
    /// Password and TOTP at `/api/v1/signin`, then the session cookie.
    Password,
    /// The hospital's OpenID provider (`/api/v1/sso/…`, [`sso`]), then the session cookie.
    Sso,
}

/// An authenticated caller: put in the request's extensions by [`auth`]'s middleware, taken by
/// handlers as an extractor. A request without one gets 401.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The identity: the certificate's, or for a password sign-in the user's (serial
    /// `web-<session>`).
    pub identity: Identity,
    /// Its policy view.
    pub principal: Principal,
    /// The browser's or script's address.
    pub peer: SocketAddr,
    /// How it signed in.
    pub via: Via,
}

impl Authed {
    /// The caller as services take it.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            identity: &self.identity,
            principal: &self.principal,
            peer: self.peer,
        }
    }

    /// The caller as the review service takes it.
    pub fn reviewer(&self) -> Reviewer<'_> {
        Reviewer {
            identity: &self.identity,
            principal: &self.principal,
            source: self.peer,
        }
    }

    /// `Ok` when the caller holds `role`, else 403 naming `what`.
    pub fn require(&self, role: Role, what: &str) -> Result<(), ApiError> {
        role.require(&self.principal, what).map_err(ApiError::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authed>()
            .cloned()
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// What the connection told about itself: put in every request's extensions by [`server`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The client certificate's identity, validated by the gateway's validator, if one was
    /// presented.
    pub certificate: Option<Identity>,
}

/// An API error: a status and a reason, answered as `{"error": reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Why, and what to do.
    pub reason: String,
}

impl ApiError {
    /// An error with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
        }
    }

    /// 401: sign in first.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "sign in first: a client certificate from Ward's CA, or password and TOTP at /api/v1/signin",
        )
    }

    /// 400 with `reason`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// 403 with `reason`.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
    }

    /// 404 with `reason`.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.reason });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match &r {
            Refusal::Denied(_) => StatusCode::FORBIDDEN,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TotpReused => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, r.to_string())
    }
}

impl From<ReviewRefusal> for ApiError {
    fn from(r: ReviewRefusal) -> Self {
        let status = match &r {
            ReviewRefusal::NotPermitted(_) => StatusCode::FORBIDDEN,
            ReviewRefusal::Busy => StatusCode::TOO_MANY_REQUESTS,
            ReviewRefusal::NoRecording(_) => StatusCode::NOT_FOUND,
            ReviewRefusal::AuditUnavailable(_) | ReviewRefusal::Unreadable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ReviewRefusal::BadSessionId(_)
            | ReviewRefusal::FailsVerification { .. }
            | ReviewRefusal::OpsUnverified { .. }
            | ReviewRefusal::BadFilter(_) => StatusCode::BAD_REQUEST,
            // The player tells this one apart: the recording is encrypted, not broken.
            ReviewRefusal::Encrypted(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, r.to_string())
    }
}

/// The console's routes over `state`: every area's, behind the authentication middleware and the
/// security headers. Handlers take [`Authed`]; only [`auth`]'s sign-in and [`assets`] are
/// reachable without it.
pub fn router(state: WebState) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(sessions::routes())
        .merge(audit::routes())
        .merge(overview::routes())
        .merge(player::routes())
        .merge(watch::routes())
        .merge(live::routes())
        .merge(admin::routes())
        .merge(mine::routes())
        .merge(term::routes())
        .merge(sso::routes())
        .merge(sso_cli::routes())
        .merge(openapi::routes())
        .merge(assets::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(auth::security_headers))
        .with_state(state)
}
