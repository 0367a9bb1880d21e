//! Part of the web console (see [`super`]).

use axum::Router;

use super::WebState;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
}
