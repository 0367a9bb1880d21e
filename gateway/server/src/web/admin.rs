//! Access requests, locks and devices over the JSON API (see [`super`]): thin adapters over
//! [`AccessService`](crate::services::access::AccessService),
//! [`LockService`](crate::services::locks::LockService) and
//! [`DeviceService`](crate::services::devices::DeviceService), called exactly as the frame
//! dispatcher calls them — the same refusals, the same audit events, and the same audit gate (a
//! state change is answered only once its events are durable).
//!
//! - `GET /api/v1/requests?all=` → `{requests: [RequestView], me}`
//! - `POST /api/v1/requests/{id}/approve {reason?}`, `POST /api/v1/requests/{id}/deny {reason}`
//!   → `{request: RequestView, …}`
//! - `GET /api/v1/locks`, `POST /api/v1/locks {target: {kind, value}, reason, ttl?, force?}`,
//!   `DELETE /api/v1/locks/{kind}/{value}`
//! - `GET /api/v1/devices` → every configured device and who may reach it (security staff), or
//!   for anyone else the devices they may reach (the listing `ward devices` shows).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use ward_core::access::PrincipalRef;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;

use super::{ApiError, Authed, WebState};
use crate::services::access::RequestView;
use crate::services::locks::LockRequest;
use crate::services::Role;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/requests", get(list_requests))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/locks", get(list_locks).post(lock))
        .route("/api/v1/locks/{kind}/{*value}", delete(unlock))
        .route("/api/v1/devices", get(devices))
}

/// A JSON body, or 400 naming what was expected.
pub(super) fn body<T>(body: Result<Json<T>, JsonRejection>, shape: &str) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body must be JSON {shape} with Content-Type: application/json ({})",
            e.body_text()
        ))
    })
}

/// A path's parameters, or 400.
pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// The audit gate: answer a state change only once its audit events are durable; 503 when the
/// log cannot be written (the change happened, but nobody is told so unaudited).
pub(super) async fn committed(state: &WebState) -> Result<(), ApiError> {
    state
        .shared
        .audit
        .commit()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// 403 for vendor identities: the console is for security staff and approvers; vendors use the
/// CLI (`ward request`, `ward devices`).
pub(super) fn no_vendors(authed: &Authed) -> Result<(), ApiError> {
    if authed.principal.kind == ward_core::PrincipalKind::Vendor {
        return Err(ApiError::forbidden(format!(
            "{} may not use the web console: it is for security staff and approvers; vendors use the ward CLI (ward request, ward devices)",
            authed.principal
        )));
    }
    Ok(())
}

/// RFC 3339 (UTC) of `t`.
pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `?all=` of `GET /requests`.
#[derive(Debug, Deserialize)]
struct RequestsQuery {
    #[serde(default)]
    all: Option<String>,
}

async fn list_requests(
    State(state): State<WebState>,
    authed: Authed,
    q: Result<Query<RequestsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    no_vendors(&authed)?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = match q.all.as_deref() {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => return Err(ApiError::bad_request("all must be true or false")),
    };
    let requests = state
        .services()
        .access
        .list_requests(authed.caller(), all)
        .await?;
    Ok(Json(json!({
        "requests": requests,
        "me": PrincipalRef::of(&authed.principal),
    })))
}

/// The body of approve and deny.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    reason: Option<String>,
}

/// The request `id` as the caller may now see it (after a decision).
async fn view_of(
    state: &WebState,
    authed: &Authed,
    id: &str,
    request: ward_core::access::AccessRequest,
) -> RequestView {
    let listed = state
        .services()
        .access
        .list_requests(authed.caller(), true)
        .await
        .unwrap_or_default();
    listed
        .into_iter()
        .find(|v| v.request.id == id)
        .unwrap_or_else(|| RequestView {
            state_now: request.state_at(state.shared.clock.now()),
            approvals: Vec::new(),
            request,
        })
}

async fn approve(
    State(state): State<WebState>,
    authed: Authed,
    id: Result<Path<String>, PathRejection>,
    decision: Bytes,
) -> Result<Json<Value>, ApiError> {
    no_vendors(&authed)?;
    let id = path(id)?;
    // The body is optional here: none, or `{"reason": "…"}`.
    let decision: Decision = if decision.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(&decision).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body must be empty or JSON {{\"reason\": \"…\"}} ({e})"
            ))
        })?
    };
    let out = state
        .services()
        .access
        .approve(authed.caller(), &id, decision.reason)
        .await;
    committed(&state).await?;
    let out = out?;
    let view = view_of(&state, &authed, &id, out.request).await;
    Ok(Json(json!({
        "request": view,
        "approved": {"count": out.approved.count, "required": out.approved.required},
        "grant": out.grant,
    })))
}

async fn deny(
    State(state): State<WebState>,
    authed: Authed,
    id: Result<Path<String>, PathRejection>,
    decision: Result<Json<Decision>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    no_vendors(&authed)?;
    let id = path(id)?;
    let decision = body(decision, "{\"reason\": \"…\"}")?;
    let reason = decision.reason.unwrap_or_default();
    let out = state
        .services()
        .access
        .deny(authed.caller(), &id, &reason)
        .await;
    committed(&state).await?;
    let request = out?;
    let view = view_of(&state, &authed, &id, request).await;
    Ok(Json(json!({ "request": view })))
}

/// A lock target as the API writes it: `{kind: principal|device|org, value}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetJson {
    kind: String,
    value: String,
}

/// `kind` and `value` as a lock target, or 400.
fn target_of(kind: &str, value: &str) -> Result<LockTarget, ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a lock target needs a value: a principal (org/name, name or certificate serial), a device id or an org",
        ));
    }
    let value = value.to_owned();
    match kind {
        "principal" => Ok(LockTarget::Principal(value)),
        "device" => Ok(LockTarget::Device(value)),
        "org" => Ok(LockTarget::Org(value)),
        other => Err(ApiError::bad_request(format!(
            "unknown lock target kind {:?}: use principal, device or org",
            ward_core::escape::escape_prefix(other, 32)
        ))),
    }
}

/// A lock target as JSON.
fn target_json(t: &LockTarget) -> Value {
    let (kind, value) = match t {
        LockTarget::Principal(v) => ("principal", v),
        LockTarget::Device(v) => ("device", v),
        LockTarget::Org(v) => ("org", v),
    };
    json!({ "kind": kind, "value": value })
}

/// A lock as JSON.
fn lock_json(l: &Lock) -> Value {
    json!({
        "target": target_json(&l.target),
        "reason": l.reason,
        "by": l.by,
        "until": l.until.map(rfc3339),
        "until_unix": l.until.map(OffsetDateTime::unix_timestamp),
    })
}

async fn list_locks(
    State(state): State<WebState>,
    authed: Authed,
) -> Result<Json<Value>, ApiError> {
    let now = state.shared.clock.now();
    let locks = state.services().locks.list(authed.caller())?;
    // Expired locks may linger in the snapshot; they no longer apply, so they are not listed.
    let locks: Vec<Value> = locks
        .iter()
        .filter(|l| l.until.is_none_or(|u| u > now))
        .map(lock_json)
        .collect();
    Ok(Json(json!({ "locks": locks })))
}

/// The body of `POST /locks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    target: TargetJson,
    #[serde(default)]
    reason: String,
    /// Seconds, or a duration such as `"2h"`; absent: until unlocked.
    #[serde(default)]
    ttl: Option<Value>,
    /// Lock a target that matches nothing known (the typo guard otherwise refuses it).
    #[serde(default)]
    force: bool,
}

/// `ttl` as a duration, or 400.
fn ttl_of(ttl: Option<&Value>) -> Result<Option<Duration>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "ttl must be a number of seconds or a duration such as \"30m\", \"2h\" or \"1d\"",
        )
    };
    match ttl {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if s > 0 => Ok(Some(Duration::from_secs(s))),
            _ => Err(bad()),
        },
        Some(Value::String(s)) => ward_core::duration::parse_duration(s)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// What `POST /locks` takes.
const LOCK_SHAPE: &str = "{\"target\": {\"kind\": \"principal|device|org\", \"value\": \"…\"}, \"reason\": \"…\", \"ttl\": seconds or \"2h\" (optional)}";

async fn lock(
    State(state): State<WebState>,
    authed: Authed,
    req: Result<Json<LockBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // A caller who may not lock is told so (403) before anything about the body; one whose
    // request is well formed is refused by the lock service itself, which audits it.
    let gate = |e: ApiError| authed.require(Role::Security, "lock").err().unwrap_or(e);
    let req = body(req, LOCK_SHAPE).map_err(gate)?;
    let target = target_of(&req.target.kind, &req.target.value).map_err(gate)?;
    let duration = ttl_of(req.ttl.as_ref()).map_err(gate)?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > ward_core::access::MAX_TEXT {
        return Err(gate(ApiError::bad_request(format!(
            "a reason is required (1 to {} characters): it is told to the users whose sessions end, and kept in the audit log",
            ward_core::access::MAX_TEXT
        ))));
    }
    let req = LockRequest {
        target,
        duration,
        reason: reason.to_owned(),
        force: req.force,
    };
    let out = state.services().locks.lock(authed.caller(), req).await;
    committed(&state).await?;
    let out = out?;
    Ok(Json(json!({
        "lock": lock_json(&out.lock),
        "ended_sessions": out.sessions_ended,
        "forced": out.forced,
    })))
}

async fn unlock(
    State(state): State<WebState>,
    authed: Authed,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let gate = |e: ApiError| authed.require(Role::Security, "unlock").err().unwrap_or(e);
    let (kind, value) = path(p).map_err(gate)?;
    let target = target_of(&kind, &value).map_err(gate)?;
    let out = state
        .services()
        .locks
        .unlock(authed.caller(), &target)
        .await;
    committed(&state).await?;
    out?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn devices(State(state): State<WebState>, authed: Authed) -> Result<Json<Value>, ApiError> {
    no_vendors(&authed)?;
    let services = state.services();
    if Role::Security.held_by(&authed.principal) {
        let devices = services.devices.inventory(authed.caller())?;
        return Ok(Json(json!({ "devices": devices, "inventory": true })));
    }
    let devices = services.devices.list(authed.caller())?;
    Ok(Json(json!({ "devices": devices, "inventory": false })))
}
