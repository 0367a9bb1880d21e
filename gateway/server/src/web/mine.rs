//! "My devices": what the signed-in person may open now, could request, or may open by
//! break-glass — the same decisions `ward devices` shows (the device service,
//! [`crate::services::devices::DeviceService::mine`]), and the request form's `POST` (the access
//! service's `request`, the same checks as `ward request`). Any signed-in kind may use these:
//! vendors, clinicians and staff alike.
//!
//! - `GET /api/v1/my/devices` → `{"devices": [{id, protocol, labels, access, why, rule, until,
//!   break_glass_requires, console, request_id}], "consoles_origin"}`; `access` is `open`,
//!   `request`, `break_glass`, `pending` (a request of the caller's waits for approval:
//!   `request_id`) or `none` (a rule names the caller, but not now: `why` says when).
//! - `POST /api/v1/my/requests` `{"device", "reason", "start": unix|null, "duration": "2h"}` →
//!   201 `{"request": {...}}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use ward_core::access::RequestState;
use ward_core::Protocol;

use super::admin::{body, committed};
use super::{ApiError, Authed, WebState};
use crate::services::access::NewRequest;
use crate::services::devices::{Access, MyDevice};

/// Longest reason accepted from the form (the access service stores it as given).
const MAX_REASON: usize = 2000;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/my/devices", get(devices))
        .route("/api/v1/my/requests", post(request))
}

/// How the page opens a device of `protocol`: `terminal` for line consoles, `http` for HTTP
/// consoles when the consoles origin is on, else nothing.
pub fn console_of(protocol: Protocol, consoles: bool) -> Option<&'static str> {
    match protocol {
        Protocol::Telnet | Protocol::Raw => Some("terminal"),
        Protocol::Http if consoles => Some("http"),
        _ => None,
    }
}

/// One row of the answer.
fn row(d: &MyDevice, consoles: bool, pending: Option<&str>) -> Value {
    let access = match (d.access, pending) {
        (Access::Request, Some(_)) => "pending",
        (Access::Open, _) => "open",
        (Access::Request, None) => "request",
        (Access::BreakGlass, _) => "break_glass",
        (Access::None, _) => "none",
    };
    let why = match (d.access, pending) {
        (Access::Request, Some(id)) => format!("your request {id} waits for approval; {}", d.why),
        _ => d.why.clone(),
    };
    json!({
        "id": d.info.id,
        "protocol": d.info.protocol,
        "labels": d.info.labels,
        "access": access,
        "why": why,
        "rule": d.rule,
        "until": d.until,
        "break_glass_requires": d.break_glass_requires,
        "console": console_of(d.info.protocol, consoles),
        "request_id": pending,
        "operations": d.info.operations,
        "tls": d.info.tls,
    })
}

/// The consoles origin the page links `/d/<device>/` on, when `[web] consoles_listen` is set:
/// the host the browser used for the console, on the consoles port.
fn consoles_origin(state: &WebState, host: Option<&str>) -> Option<String> {
    let addr = state.shared.config().web.consoles_listen?;
    let host = host.unwrap_or("127.0.0.1");
    // Strip the console's port (an IPv6 literal keeps its brackets).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => name,
        _ => host,
    };
    let clean = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    clean.then(|| format!("https://{name}:{}", addr.port()))
}

/// `GET /api/v1/my/devices`.
async fn devices(
    State(state): State<WebState>,
    authed: Authed,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services();
    let mine = services.devices.mine(authed.caller())?;
    // The caller's own pending requests (the access service's listing: what `ward requests`
    // shows them).
    let requests = services
        .access
        .list_requests(authed.caller(), false)
        .await
        .unwrap_or_default();
    let pending = |device: &str| {
        requests
            .iter()
            .filter(|r| r.state_now == RequestState::Pending)
            .filter(|r| r.request.device == device)
            .find(|r| r.request.requester.is(&authed.principal))
            .map(|r| r.request.id.clone())
    };
    let consoles = state.shared.config().web.consoles_listen.is_some();
    let rows: Vec<Value> = mine
        .iter()
        .map(|d| {
            let p = pending(&d.info.id);
            row(d, consoles, p.as_deref())
        })
        .collect();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    Ok(Json(json!({
        "devices": rows,
        "consoles_origin": consoles_origin(&state, host),
    })))
}

/// The request form's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    device: String,
    reason: String,
    #[serde(default)]
    start: Option<i64>,
    duration: String,
}

/// `POST /api/v1/my/requests`.
async fn request(
    State(state): State<WebState>,
    authed: Authed,
    b: Result<Json<RequestBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(
        b,
        "{\"device\": \"…\", \"reason\": \"…\", \"start\": unix seconds or null, \"duration\": \"2h\"}",
    )?;
    let reason = b.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "give a reason: the approvers read it (e.g. \"firmware update 2.1\")",
        ));
    }
    if reason.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "the reason is longer than {MAX_REASON} bytes: shorten it"
        )));
    }
    let duration = ward_core::parse_duration(b.duration.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "duration {:?}: {e}; write it like 30m, 2h or 1d",
            b.duration
        ))
    })?;
    let new = NewRequest {
        device: b.device,
        reason: reason.to_owned(),
        duration,
        start_unix: b.start,
    };
    let made = state.services().access.request(authed.caller(), new).await;
    committed(&state).await?;
    let r = made?;
    Ok((StatusCode::CREATED, Json(json!({ "request": r }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_of_each_protocol() {
        assert_eq!(console_of(Protocol::Telnet, false), Some("terminal"));
        assert_eq!(console_of(Protocol::Raw, true), Some("terminal"));
        assert_eq!(console_of(Protocol::Http, true), Some("http"));
        assert_eq!(console_of(Protocol::Http, false), None);
        assert_eq!(console_of(Protocol::Dicom, true), None);
    }
}
