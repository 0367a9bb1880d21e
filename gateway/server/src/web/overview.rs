//! The overview (`GET /api/v1/overview?days=14`): what a security lead looks at first — sessions
//! per day by organisation and by device class, denials and failed logins per day, break-glass
//! uses, the busiest devices and the recordings failing verification. The session figures are
//! the session index's (SQL `GROUP BY`, through [`ReviewService::aggregates`]); denials and failed
//! logins are counted in the audit log (read through the review service).
//!
//! [`ReviewService::aggregates`]: crate::services::review::ReviewService::aggregates

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::{Date, Duration, OffsetDateTime};

use ward_core::config::Config;
use ward_store::session_query::{Aggregates, Failing};

use super::sessions::{bad_query, count_param};
use super::{ApiError, Authed, WebState};

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new().route("/api/v1/overview", get(overview))
}

/// Days shown when none are asked for.
pub const DEFAULT_DAYS: u32 = 14;
/// Days shown at most.
pub const MAX_DAYS: u32 = 90;

/// `GET /api/v1/overview`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewParams {
    days: Option<String>,
}

/// One series: a key and its count per day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Series {
    /// The organisation, kind or device class.
    pub key: String,
    /// One count per day of [`Overview::days`].
    pub counts: Vec<u64>,
}

/// A device and its sessions in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Busy {
    /// Device id.
    pub device: String,
    /// Sessions.
    pub sessions: u64,
}

/// The overview's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overview {
    /// The UTC days, oldest first (`YYYY-MM-DD`).
    pub days: Vec<String>,
    /// Sessions per day by the principal's organisation (a vendor's), else its kind.
    pub sessions_by_org: Vec<Series>,
    /// Sessions per day by device class (the device's `class` label, else its protocol).
    pub sessions_by_class: Vec<Series>,
    /// Sessions denied per day (`session_deny`).
    pub denials: Vec<u64>,
    /// Failed sign-ins per day (`login` and `web_signin` denied).
    pub failed_logins: Vec<u64>,
    /// Sessions opened by break-glass per day.
    pub break_glass: Vec<u64>,
    /// The busiest devices in the window, most sessions first.
    pub busiest_devices: Vec<Busy>,
    /// Recordings the index shows failing verification (any time), newest first.
    pub failing_verification: Vec<Failing>,
    /// The window: the first day's midnight and the end of the last day, RFC 3339 UTC (what
    /// the bars' links to `#/sessions?since=&until=` use).
    pub since: String,
    /// See `since`.
    pub until: String,
}

/// The `days` UTC days ending today, oldest first, and the window `[since, until)` in Unix
/// seconds.
pub fn window(today: Date, days: u32) -> (Vec<String>, i64, i64) {
    let first = today - Duration::days(i64::from(days.saturating_sub(1)));
    let list = (0..i64::from(days))
        .map(|i| (first + Duration::days(i)).to_string())
        .collect();
    let since = first.midnight().assume_utc().unix_timestamp();
    let until = (today + Duration::days(1))
        .midnight()
        .assume_utc()
        .unix_timestamp();
    (list, since, until)
}

/// The device class of each device the config names: its `class` label, else its protocol.
fn classes(config: &Config) -> BTreeMap<String, String> {
    config
        .devices
        .iter()
        .map(|d| {
            let class = d
                .labels
                .get("class")
                .cloned()
                .unwrap_or_else(|| d.protocol.to_string());
            (d.id.to_string(), class)
        })
        .collect()
}

/// Counts per `(day, key)` laid out as one series per key over `days`.
fn series(days: &[String], counts: impl Iterator<Item = (String, String, u64)>) -> Vec<Series> {
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (day, key, n) in counts {
        let Some(i) = days.iter().position(|d| *d == day) else {
            continue;
        };
        let row = by_key.entry(key).or_insert_with(|| vec![0; days.len()]);
        if let Some(c) = row.get_mut(i) {
            *c += n;
        }
    }
    by_key
        .into_iter()
        .map(|(key, counts)| Series { key, counts })
        .collect()
}

/// The overview of `aggregates` and the audit `log` over `days`; a device no longer in `config`
/// is classed by the protocol it was recorded with.
pub fn build(
    days: Vec<String>,
    (since, until): (i64, i64),
    aggregates: Aggregates,
    log: &[u8],
    config: &Config,
) -> Overview {
    let classes = classes(config);
    let by_org = series(&days, aggregates.by_org.into_iter());
    let by_class = series(
        &days,
        aggregates
            .by_device
            .into_iter()
            .map(|(day, device, protocol, n)| {
                let class = classes.get(&device).cloned().unwrap_or(protocol);
                (day, class, n)
            }),
    );
    let break_glass = series(
        &days,
        aggregates
            .break_glass
            .into_iter()
            .map(|(day, n)| (day, String::new(), n)),
    )
    .pop()
    .map(|s| s.counts)
    .unwrap_or_else(|| vec![0; days.len()]);
    let event_is = |o: &serde_json::Map<String, serde_json::Value>,
                    names: &[&str],
                    outcome: Option<&str>| {
        o.get("event")
            .and_then(|e| e.as_str())
            .is_some_and(|e| names.contains(&e))
            && outcome.is_none_or(|want| o.get("outcome").and_then(|v| v.as_str()) == Some(want))
    };
    let denials = super::audit::per_day(log, &days, |o| event_is(o, &["session_deny"], None));
    let failed_logins = super::audit::per_day(log, &days, |o| {
        event_is(o, &["login", "web_signin"], Some("denied"))
    });
    Overview {
        sessions_by_org: by_org,
        sessions_by_class: by_class,
        denials,
        failed_logins,
        break_glass,
        busiest_devices: aggregates
            .busiest
            .into_iter()
            .map(|(device, sessions)| Busy { device, sessions })
            .collect(),
        failing_verification: aggregates.failing,
        since: crate::review::rfc3339(since),
        until: crate::review::rfc3339(until),
        days,
    }
}

/// `GET /api/v1/overview?days=N` (1 to [`MAX_DAYS`], default [`DEFAULT_DAYS`]).
async fn overview(
    State(state): State<WebState>,
    authed: Authed,
    params: Result<Query<OverviewParams>, QueryRejection>,
) -> Result<Json<Overview>, ApiError> {
    let Query(params) = params.map_err(|r| bad_query(&r))?;
    let days = count_param("days", params.days)?.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "days must be between 1 and {MAX_DAYS}"
        )));
    }
    let now: OffsetDateTime = state.shared.clock.now();
    let (list, since, until) = window(now.date(), days);
    let who = authed.reviewer();
    let aggregates = state.review().aggregates(&who, since, until).await?;
    let log = super::audit::read_log(&state, &who).await?;
    let config = state.shared.config();
    let out =
        tokio::task::spawn_blocking(move || build(list, (since, until), aggregates, &log, &config))
            .await
            .map_err(|e| {
                ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            })?;
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use time::macros::date;

    #[test]
    fn the_window_ends_today() {
        let (days, since, until) = window(date!(2026 - 11 - 28), 3);
        assert_eq!(days, ["2026-11-26", "2026-11-27", "2026-11-28"]);
        assert_eq!(until - since, 3 * 86_400);
        assert_eq!(crate::review::rfc3339(until), "2026-11-29T00:00:00Z");
    }

    #[test]
    fn counts_land_on_their_day_and_key() {
        let days: Vec<String> = vec!["2026-11-27".into(), "2026-11-28".into()];
        let agg = Aggregates {
            by_org: vec![
                ("2026-11-27".into(), "acme".into(), 2),
                ("2026-11-28".into(), "acme".into(), 1),
                ("2026-11-28".into(), "security".into(), 4),
                ("2026-11-01".into(), "old".into(), 9),
            ],
            by_device: vec![
                ("2026-11-28".into(), "gone".into(), "dicom".into(), 3),
                ("2026-11-28".into(), "other".into(), "dicom".into(), 1),
            ],
            break_glass: vec![("2026-11-28".into(), 1)],
            busiest: vec![("gone".into(), 3)],
            failing: Vec::new(),
        };
        let log = concat!(
            r#"{"time":"2026-11-28T01:00:00.000Z","event":"web_signin","outcome":"denied","severity":"warning"}"#,
            "\n",
            r#"{"time":"2026-11-28T01:00:00.000Z","event":"login","outcome":"success","severity":"info"}"#,
            "\n",
            r#"{"time":"2026-11-27T01:00:00.000Z","event":"session_deny","outcome":"denied","severity":"warning"}"#,
            "\n"
        );
        let config = Config::parse(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nca = \".\"\ncert = \"c\"\nkey = \"k\"\nstate_dir = \"s\"\n",
            "test.toml",
        )
        .unwrap();
        let o = build(days, (0, 1), agg, log.as_bytes(), &config);
        assert_eq!(
            o.sessions_by_org,
            [
                Series {
                    key: "acme".into(),
                    counts: vec![2, 1]
                },
                Series {
                    key: "security".into(),
                    counts: vec![0, 4]
                }
            ]
        );
        // Devices no longer configured: classed by protocol.
        assert_eq!(
            o.sessions_by_class,
            [Series {
                key: "dicom".into(),
                counts: vec![0, 4]
            }]
        );
        assert_eq!(o.break_glass, [0, 1]);
        assert_eq!(o.denials, [1, 0]);
        assert_eq!(o.failed_logins, [0, 1]);
        assert_eq!(o.busiest_devices[0].device, "gone");
    }
}
