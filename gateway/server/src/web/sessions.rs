//! The session search and session detail (`GET /api/v1/sessions`, `GET /api/v1/sessions/{id}`):
//! thin adapters over the review service's [`ReviewService::search`] and
//! [`ReviewService::session`] (which check the role, read the session index, and audit the
//! listing as `recording_listed`, like `ward sessions`).
//!
//! [`ReviewService::search`]: crate::services::review::ReviewService::search
//! [`ReviewService::session`]: crate::services::review::ReviewService::session

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use time::OffsetDateTime;

use ward_store::session_query::{SessionQuery, Verification};

use super::{ApiError, Authed, WebState};
use crate::services::review::SessionSearch;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/sessions", get(list))
        .route("/api/v1/sessions/{id}", get(detail))
}

/// `GET /api/v1/sessions`'s parameters (every one optional; an empty value is no filter).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    principal: Option<String>,
    device: Option<String>,
    org: Option<String>,
    since: Option<String>,
    until: Option<String>,
    end_reason: Option<String>,
    verification: Option<String>,
    grep: Option<String>,
    op: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// A query string that does not parse: 400 saying what was wrong.
pub(crate) fn bad_query(r: &QueryRejection) -> ApiError {
    ApiError::bad_request(format!(
        "{} (see /api/v1/openapi.json for the parameters)",
        r.body_text()
    ))
}

/// An optional parameter: absent or empty is `None`.
pub(crate) fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A time parameter: RFC 3339, Unix seconds, a date (`2026-11-22`) or a duration ago (`2h`).
pub(crate) fn time_param(
    name: &str,
    v: Option<String>,
    now: OffsetDateTime,
) -> Result<Option<i64>, ApiError> {
    let Some(text) = given(v) else {
        return Ok(None);
    };
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(Some(unix));
    }
    crate::review::parse_time(&text, now)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("{name}: {e:#}; or Unix seconds")))
}

/// A positive count parameter (`page`, `per_page`, `days`).
pub(crate) fn count_param(name: &str, v: Option<String>) -> Result<Option<u32>, ApiError> {
    given(v)
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a whole number, not {t:?}"))
            })
        })
        .transpose()
}

impl ListParams {
    /// The search these parameters ask for.
    pub fn search(self, now: OffsetDateTime) -> Result<SessionSearch, ApiError> {
        let verification = given(self.verification)
            .map(|v| {
                Verification::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "verification must be ok, failed, open or interrupted, not {v:?}"
                    ))
                })
            })
            .transpose()?;
        let (page, per_page) = ward_store::session_query::paging(
            count_param("page", self.page)?,
            count_param("per_page", self.per_page)?,
        );
        Ok(SessionSearch {
            query: SessionQuery {
                principal: given(self.principal),
                org: given(self.org),
                device: given(self.device),
                since: time_param("since", self.since, now)?,
                until: time_param("until", self.until, now)?,
                end_reason: given(self.end_reason),
                verification,
            },
            op: given(self.op),
            // Text is searched as given (spaces included), but an empty one searches nothing.
            grep: self.grep.filter(|g| !g.is_empty()),
            page,
            per_page,
        })
    }
}

/// `GET /api/v1/sessions`: one page of the sessions matching the filters, newest first.
async fn list(
    State(state): State<WebState>,
    authed: Authed,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ward_store::session_query::SessionPage>, ApiError> {
    let Query(params) = params.map_err(|r| bad_query(&r))?;
    let search = params.search(state.shared.clock.now())?;
    let page = state.review().search(&authed.reviewer(), search).await?;
    Ok(Json(page))
}

/// How many of a session's audit events its detail shows at most (the oldest first are dropped).
pub const MAX_DETAIL_EVENTS: usize = 1000;

/// `GET /api/v1/sessions/{id}`: the session, whether it is a terminal session (the player), and
/// the audit events that name it.
async fn detail(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authed.reviewer();
    let session = state.review().session(&who, id).await?;
    let log = super::audit::read_log(&state, &who).await?;
    let audit = super::audit::events_of_session(&log, &session.id, MAX_DETAIL_EVENTS);
    Ok(Json(serde_json::json!({
        "terminal": crate::review::is_terminal(&session.protocol),
        "audit": audit,
        "session": session,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-28 08:00 UTC)
    }

    #[test]
    fn parameters_become_a_search_and_empty_ones_no_filter() {
        let p = ListParams {
            principal: Some("acme/jdoe".into()),
            device: Some("".into()),
            since: Some("2026-11-27T00:00:00Z".into()),
            until: Some("1795824000".into()),
            verification: Some("failed".into()),
            page: Some("2".into()),
            per_page: Some("1000".into()),
            grep: Some("".into()),
            ..ListParams::default()
        };
        let s = p.search(now()).unwrap();
        assert_eq!(s.query.principal.as_deref(), Some("acme/jdoe"));
        assert_eq!(s.query.device, None);
        assert_eq!(s.query.since, Some(1_795_737_600));
        assert_eq!(s.query.until, Some(1_795_824_000));
        assert_eq!(s.query.verification, Some(Verification::Failed));
        assert_eq!((s.page, s.per_page), (2, 200));
        assert_eq!(s.grep, None);
    }

    #[test]
    fn bad_parameters_say_what_to_write() {
        let bad = |p: ListParams| p.search(now()).unwrap_err();
        let e = bad(ListParams {
            verification: Some("fine".into()),
            ..ListParams::default()
        });
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(e.reason.contains("ok, failed"), "{}", e.reason);
        let e = bad(ListParams {
            since: Some("yesterday-ish".into()),
            ..ListParams::default()
        });
        assert!(e.reason.contains("RFC 3339"), "{}", e.reason);
        let e = bad(ListParams {
            page: Some("-1".into()),
            ..ListParams::default()
        });
        assert!(e.reason.contains("whole number"), "{}", e.reason);
    }
}
