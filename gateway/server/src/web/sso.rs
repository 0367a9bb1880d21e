//! Sign-in with the hospital's OpenID provider: authorization code flow with PKCE, claims mapped
//! to Ward's principal, for the browser and for `ward login --sso`.

use axum::Router;

use super::WebState;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
}
