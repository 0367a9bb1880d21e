//! The audit log (`GET /api/v1/audit`): its events filtered and paginated, newest first, with the
//! chain's verification status. The log is read and verified by the review service
//! ([`ReviewService::audit_log_verified`], audited `audit_log_read`, security and admin only);
//! the filtering here is pure ([`AuditFilter`]).
//!
//! [`ReviewService::audit_log_verified`]: crate::services::review::ReviewService::audit_log_verified

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::sessions::{bad_query, count_param, given, time_param};
use super::{ApiError, Authed, WebState};
use crate::services::review::{ReviewAnswer, ReviewRequest, Reviewer};

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new().route("/api/v1/audit", get(list))
}

/// `GET /api/v1/audit`'s parameters (every one optional; an empty value is no filter).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    event: Option<String>,
    principal: Option<String>,
    device: Option<String>,
    session: Option<String>,
    since: Option<String>,
    until: Option<String>,
    severity: Option<String>,
    outcome: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// Which audit events to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Event types (any of them; `login,web_signin`).
    pub events: Vec<String>,
    /// The principal's name, `org/name`, `kind org/name`, or the user a login named.
    pub principal: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// At or after (Unix seconds).
    pub since: Option<i64>,
    /// Before (Unix seconds).
    pub until: Option<i64>,
    /// `info`, `warning` or `high`.
    pub severity: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: Option<String>,
}

impl AuditParams {
    /// The filter and the paging these parameters ask for.
    fn filter(self, now: OffsetDateTime) -> Result<(AuditFilter, (u32, u32)), ApiError> {
        let paging = ward_store::session_query::paging(
            count_param("page", self.page)?,
            count_param("per_page", self.per_page)?,
        );
        let filter = AuditFilter {
            events: given(self.event)
                .map(|e| {
                    e.split(',')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            principal: given(self.principal),
            device: given(self.device),
            session: given(self.session),
            since: time_param("since", self.since, now)?,
            until: time_param("until", self.until, now)?,
            severity: given(self.severity),
            outcome: given(self.outcome),
        };
        Ok((filter, paging))
    }
}

fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// An event line's time, Unix seconds.
fn unix_of(obj: &Map<String, Value>) -> Option<i64> {
    let t = text(obj, "time")?;
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

impl AuditFilter {
    /// Whether the event `obj` (a log line's object) passes.
    pub fn matches(&self, obj: &Map<String, Value>) -> bool {
        let is = |key: &str, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| text(obj, key) == Some(w.as_str()))
        };
        if !self.events.is_empty()
            && !text(obj, "event").is_some_and(|e| self.events.iter().any(|w| w == e))
        {
            return false;
        }
        if !(is("device", &self.device)
            && is("session_id", &self.session)
            && is("severity", &self.severity)
            && is("outcome", &self.outcome))
        {
            return false;
        }
        if let Some(p) = &self.principal {
            let who = obj.get("principal").and_then(Value::as_object);
            let field = |k: &str| who.and_then(|w| text(w, k));
            let (kind, name, org) = (field("kind"), field("name"), field("org"));
            let org_name = org.zip(name).map(|(o, n)| format!("{o}/{n}"));
            let whole = kind.zip(org_name.clone().or(name.map(str::to_owned)));
            let user = obj
                .get("detail")
                .and_then(Value::as_object)
                .and_then(|d| text(d, "user"));
            let hit = name == Some(p.as_str())
                || org_name.as_deref() == Some(p.as_str())
                || whole.is_some_and(|(k, rest)| format!("{k} {rest}") == *p)
                || user == Some(p.as_str());
            if !hit {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = unix_of(obj) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

/// The events of an audit log (its lines' objects; checkpoint lines and anything that is not an
/// object skipped), newest first.
pub fn events(log: &[u8]) -> impl Iterator<Item = Map<String, Value>> + '_ {
    log.split(|b| *b == b'\n')
        .rev()
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_slice::<Value>(l) {
            Ok(Value::Object(obj)) => Some(obj),
            _ => None,
        })
        .filter(|obj| text(obj, "type") != Some("checkpoint"))
}

/// The events naming session `id`, oldest first, the newest `max` of them.
pub fn events_of_session(log: &[u8], id: &str, max: usize) -> Vec<Map<String, Value>> {
    let mut out: Vec<_> = events(log)
        .filter(|obj| text(obj, "session_id") == Some(id))
        .take(max)
        .collect();
    out.reverse();
    out
}

/// One page of the events `filter` passes, newest first, and how many pass in all.
pub fn page(
    log: &[u8],
    filter: &AuditFilter,
    (page, per_page): (u32, u32),
) -> (Vec<Map<String, Value>>, u64) {
    let skip = u64::from(page.saturating_sub(1)) * u64::from(per_page);
    let (mut out, mut total) = (Vec::new(), 0u64);
    for obj in events(log).filter(|o| filter.matches(o)) {
        if total >= skip && out.len() < per_page as usize {
            out.push(obj);
        }
        total += 1;
    }
    (out, total)
}

/// How many events `pred` passes per UTC day of `days` (`YYYY-MM-DD`, the event time's prefix).
pub fn per_day(
    log: &[u8],
    days: &[String],
    pred: impl Fn(&Map<String, Value>) -> bool,
) -> Vec<u64> {
    let mut counts = vec![0u64; days.len()];
    for obj in events(log).filter(|o| pred(o)) {
        let Some(day) = text(&obj, "time").and_then(|t| t.get(..10)) else {
            continue;
        };
        if let Some(i) = days.iter().position(|d| d == day) {
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
    }
    counts
}

/// The audit log as it is now (every line covered by a signed checkpoint), through the review
/// service (`audit_log_read`), without verifying it.
pub(crate) async fn read_log(state: &WebState, who: &Reviewer<'_>) -> Result<Vec<u8>, ApiError> {
    let answer = state.review().handle(who, ReviewRequest::AuditLog).await?;
    let ReviewAnswer::AuditLog(snapshot) = answer else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the review service answered something other than the audit log: try again",
        ));
    };
    tokio::task::spawn_blocking(move || snapshot.read_all())
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the audit log: {e}"),
            )
        })
}

/// `GET /api/v1/audit`: one page of the events, newest first, and the chain's status.
async fn list(
    State(state): State<WebState>,
    authed: Authed,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|r| bad_query(&r))?;
    let (filter, paging) = params.filter(state.shared.clock.now())?;
    let (log, report) = state
        .review()
        .audit_log_verified(&authed.reviewer())
        .await?;
    let (events, total) = page(&log, &filter, paging);
    let checkpoints = log
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"{\"type\":\"checkpoint\""))
        .count();
    let detail = match &report.first_error {
        None => "every line verifies and is covered by a signed checkpoint".to_string(),
        Some(e) => format!("{e} (run ward audit verify on the gateway host)"),
    };
    let skip = u64::from(paging.0.saturating_sub(1)) * u64::from(paging.1);
    Ok(Json(serde_json::json!({
        "events": events,
        "page": paging.0,
        "per_page": paging.1,
        "total": total,
        "has_more": skip.saturating_add(u64::from(paging.1)) < total,
        "chain": {
            "ok": report.ok,
            "lines": report.records,
            "checkpoints": checkpoints,
            "detail": detail,
        },
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const LOG: &str = concat!(
        r#"{"seq":1,"time":"2026-11-27T08:00:00.000Z","event":"login","outcome":"denied","severity":"warning","source":"127.0.0.1:1","detail":{"user":"sam"},"chain":"00"}"#,
        "\n",
        r#"{"seq":2,"time":"2026-11-27T09:00:00.000Z","event":"session_open","outcome":"success","severity":"info","principal":{"name":"jdoe","kind":"vendor","org":"acme","serial":"02"},"device":"pump","session_id":"00000000000000aa","chain":"00"}"#,
        "\n",
        r#"{"type":"checkpoint","seq":3,"chain":"00","key_id":"00","sig":"00"}"#,
        "\n",
        r#"{"seq":4,"time":"2026-11-28T09:00:00.000Z","event":"session_deny","outcome":"denied","severity":"warning","principal":{"name":"jdoe","kind":"vendor","org":"acme","serial":"02"},"device":"pacs","reason":"<script>","chain":"00"}"#,
        "\n",
        r#"{"seq":5,"time":"2026-11-28T10:00:00.000Z","event":"session_close","outcome":"success","severity":"info","principal":{"name":"jdoe","kind":"vendor","org":"acme","serial":"02"},"device":"pump","session_id":"00000000000000aa","chain":"00"}"#,
        "\n",
        "not json\n",
    );

    fn f() -> AuditFilter {
        AuditFilter::default()
    }

    fn events_of(filter: &AuditFilter) -> Vec<String> {
        page(LOG.as_bytes(), filter, (1, 50))
            .0
            .iter()
            .map(|o| o["event"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn events_are_newest_first_without_checkpoints() {
        assert_eq!(
            events_of(&f()),
            ["session_close", "session_deny", "session_open", "login"]
        );
        let (p2, total) = page(LOG.as_bytes(), &f(), (2, 3));
        assert_eq!(total, 4);
        assert_eq!(p2.len(), 1);
        assert_eq!(p2[0]["event"], "login");
    }

    #[test]
    fn filters_pick_events() {
        let with = |g: fn(&mut AuditFilter)| {
            let mut x = f();
            g(&mut x);
            events_of(&x)
        };
        assert_eq!(
            with(|x| x.events = vec!["login".into(), "session_deny".into()]),
            ["session_deny", "login"]
        );
        assert_eq!(with(|x| x.principal = Some("sam".into())), ["login"]);
        assert_eq!(with(|x| x.principal = Some("acme/jdoe".into())).len(), 3);
        assert_eq!(
            with(|x| x.principal = Some("vendor acme/jdoe".into())).len(),
            3
        );
        assert!(with(|x| x.principal = Some("acme".into())).is_empty());
        assert_eq!(with(|x| x.device = Some("pacs".into())), ["session_deny"]);
        assert_eq!(
            with(|x| x.session = Some("00000000000000aa".into())),
            ["session_close", "session_open"]
        );
        assert_eq!(
            with(|x| x.severity = Some("warning".into())),
            ["session_deny", "login"]
        );
        assert_eq!(
            with(|x| x.outcome = Some("denied".into())),
            ["session_deny", "login"]
        );
        // 2026-11-28T00:00:00Z = 1795824000.
        assert_eq!(
            with(|x| x.since = Some(1_795_824_000)),
            ["session_close", "session_deny"]
        );
        assert_eq!(
            with(|x| x.until = Some(1_795_824_000)),
            ["session_open", "login"]
        );
    }

    #[test]
    fn a_sessions_events_oldest_first_and_per_day_counts() {
        let ev = events_of_session(LOG.as_bytes(), "00000000000000aa", 10);
        let names: Vec<_> = ev.iter().map(|o| o["event"].as_str().unwrap()).collect();
        assert_eq!(names, ["session_open", "session_close"]);
        assert_eq!(
            events_of_session(LOG.as_bytes(), "00000000000000aa", 1).len(),
            1
        );
        let days = vec!["2026-11-27".to_string(), "2026-11-28".to_string()];
        let denials = per_day(LOG.as_bytes(), &days, |o| {
            text(o, "event") == Some("session_deny")
        });
        assert_eq!(denials, [0, 1]);
        let all = per_day(LOG.as_bytes(), &days, |_| true);
        assert_eq!(all, [2, 2]);
    }
}
