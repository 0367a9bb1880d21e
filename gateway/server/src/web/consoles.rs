//! Devices' own HTTP consoles in the browser: `/d/<device>/…` on the consoles' origin
//! (`[web] consoles_listen`, a port other than the console's), each device tab one session
//! through [`super::bridge`].

use axum::Router;

use super::WebState;

/// The consoles' origin's routes (nothing of the console's API is served there).
pub fn router(state: WebState) -> Router {
    Router::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::authenticate,
        ))
        .with_state(state)
}
