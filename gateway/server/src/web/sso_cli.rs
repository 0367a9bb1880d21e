//! Approving a `ward login --sso` in the browser, through
//! [`SsoCliService`](crate::services::sso::SsoCliService) (docs/web.md):
//!
//! - `GET /api/v1/sso/cli/{poll}` → `{user_code, source, started, started_unix, expires_unix,
//!   provider, state, can_approve}`: what the page shows so its user can compare the code with
//!   their terminal's, and see where and when the login started;
//! - `POST /api/v1/sso/cli/{poll}/approve` (CSRF) → `{approved: true, user_code, principal,
//!   not_after_unix}`: the certificate for the CLI's key is issued with this browser session's
//!   identity, audited `login` with `detail.via = "sso"`;
//! - `POST /api/v1/sso/cli/{poll}/deny` (CSRF) → `{refused: true, user_code}`: the CLI is told
//!   the code did not match.
//!
//! Only a signed-in browser session (password + TOTP, or SSO) may use these: a client
//! certificate caller is refused (403), so a certificate can never mint its own successors past
//! its expiry, and every CLI certificate from this path traces to an MFA browser sign-in.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use super::admin::{committed, path};
use super::{ApiError, Authed, Via, WebState};
use crate::services::sso::Pending;

/// The page's route (`#/sso/cli/<poll>`): the URL `ward login --sso` prints.
pub const PAGE_ROUTE: &str = "#/sso/cli/";

/// Why a certificate caller may not approve.
const CERTIFICATE_CALLER: &str = "a client certificate cannot approve `ward login --sso`: sign \
                                  in to the console in the browser (SSO or password and TOTP) \
                                  and approve there";

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/sso/cli/{poll}", get(show))
        .route("/api/v1/sso/cli/{poll}/approve", post(approve))
        .route("/api/v1/sso/cli/{poll}/deny", post(deny))
}

/// A login as the page sees it; `can_approve`: it can still be decided.
fn pending_json(p: &Pending) -> Value {
    json!({
        "user_code": p.user_code,
        "source": p.source.ip().to_string(),
        "started": p.started.format(&Rfc3339).ok(),
        "started_unix": p.started.unix_timestamp(),
        "expires_unix": p.expires.unix_timestamp(),
        "provider": p.provider,
        "state": p.state,
        "can_approve": p.state == "pending",
    })
}

/// `Ok` for a browser session, 403 for a certificate caller.
fn browser_only(authed: &Authed) -> Result<(), ApiError> {
    match authed.via {
        Via::Certificate => Err(ApiError::forbidden(CERTIFICATE_CALLER)),
        _ => Ok(()),
    }
}

async fn show(
    State(state): State<WebState>,
    authed: Authed,
    poll: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    browser_only(&authed)?;
    let poll = path(poll)?;
    let pending = state.services().sso_cli.view(&poll)?;
    Ok(Json(pending_json(&pending)))
}

async fn approve(
    State(state): State<WebState>,
    authed: Authed,
    poll: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    browser_only(&authed)?;
    let poll = path(poll)?;
    let approved = state
        .services()
        .sso_cli
        .approve(&poll, &authed.identity, authed.peer);
    // The issuance (or its failure) is in the audit log before anyone is told.
    committed(&state).await?;
    let approved = approved?;
    Ok(Json(json!({
        "approved": true,
        "user_code": approved.login.user_code,
        "principal": authed.identity.principal(),
        "not_after_unix": approved.not_after_unix,
    })))
}

async fn deny(
    State(state): State<WebState>,
    authed: Authed,
    poll: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    browser_only(&authed)?;
    let poll = path(poll)?;
    let refused = state
        .services()
        .sso_cli
        .refuse(&poll, &authed.identity, authed.peer);
    committed(&state).await?;
    let refused = refused?;
    Ok(Json(
        json!({ "refused": true, "user_code": refused.user_code }),
    ))
}
