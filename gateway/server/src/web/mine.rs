//! "My devices": what the signed-in person may open now, could request, or may open by
//! break-glass — the same decisions `ward devices` shows (the device service).

use axum::Router;

use super::WebState;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
}
