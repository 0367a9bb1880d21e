//! Live sessions and the kill switch over the JSON API (see [`super`]), through
//! [`LiveService`](crate::services::live::LiveService) — security and admin only:
//!
//! - `GET /api/v1/live` → `{sessions: [{id, principal, name, kind, org, serial, device,
//!   protocol, source, since, since_unix, bytes_up, bytes_down, break_glass, rule}]}`, oldest
//!   first;
//! - `POST /api/v1/live/{id}/end {reason}` → `{ended: true, session}`: the session ends with
//!   "terminated by <who>: <reason>", which its client is told; audited `session_terminated`.
//!
//! Locking a principal, device or org (which ends their sessions and refuses new ones) is
//! `POST /api/v1/locks` ([`super::admin`]).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{body, committed, path};
use super::{ApiError, Authed, WebState};
use crate::services::live::LiveSession;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/live", get(list))
        .route("/api/v1/live/{id}/end", post(end))
}

/// A live session as the API shows it.
fn session_json(s: &LiveSession) -> Value {
    s.json()
}

async fn list(State(state): State<WebState>, authed: Authed) -> Result<Json<Value>, ApiError> {
    let sessions = state.services().live.list(authed.caller())?;
    let sessions: Vec<Value> = sessions.iter().map(session_json).collect();
    Ok(Json(json!({ "sessions": sessions })))
}

/// The body of `POST /live/{id}/end`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndBody {
    #[serde(default)]
    reason: String,
}

async fn end(
    State(state): State<WebState>,
    authed: Authed,
    id: Result<Path<String>, PathRejection>,
    req: Result<Json<EndBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // A caller who may not end sessions is told so (403) before anything about the request;
    // the live service refuses (and audits) one whose request is well formed.
    let gate = |e: ApiError| {
        authed
            .require(crate::services::Role::Security, "end a live session")
            .err()
            .unwrap_or(e)
    };
    let id = path(id).map_err(gate)?;
    let req = body(req, "{\"reason\": \"…\"}").map_err(gate)?;
    let ended = state.services().live.end(authed.caller(), &id, &req.reason);
    committed(&state).await?;
    let ended = ended?;
    Ok(Json(
        json!({ "ended": true, "session": session_json(&ended) }),
    ))
}
