//! The web terminal: a WebSocket carrying one device session ([`super::bridge`]) for `telnet`
//! and `raw` console devices.

use axum::Router;

use super::WebState;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
}
