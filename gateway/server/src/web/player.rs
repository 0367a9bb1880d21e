//! The session player, the hex view and export downloads (see [`super`]):
//!
//! - `GET /api/v1/sessions/{id}/timeline` — duration, terminal size, byte marks, keystrokes;
//! - `GET /api/v1/sessions/{id}/screen?t=SECONDS` — the screen at `t` ([`terminal::Screen`]);
//! - `GET /api/v1/sessions/{id}/hex?dir=up|down&offset=&limit=` — 16 bytes per row;
//! - `GET /api/v1/sessions/{id}/export?format=asciicast|pcap|raw|json` — a download.
//!
//! Every recording is fetched through the review service ([`ReviewRequest::Recording`]), which
//! refuses anyone but security and admin identities and audits each fetch: the player's as a
//! replay (refused when the recording fails verification unless `force=true`), the download as
//! an export. A player seeks often; so that a reviewer's session is one audit event per
//! recording, not one per seek, the parsed recording is kept per caller for a few minutes
//! ([`Players`]) — the caller's certificate serial, or for a password sign-in its browser
//! session, is the key.
//!
//! An encrypted recording (`[recording] recipients`) is opened with the gateway's reviewer
//! identity (`[review] identity_file`) if it holds one; otherwise every endpoint answers 409 with
//! how to replay or export it with the CLI and the reviewer's own key (docs/recording-format.md). Never
//! an empty player.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use ward_recording::Direction;

use super::terminal::{self, Player};
use super::{ApiError, Authed, WebState};
use crate::review::{ExportData, ExportFormat};
use crate::services::review::{Purpose, ReviewAnswer, ReviewRefusal, ReviewRequest};
use crate::services::Role;

/// How long a parsed recording is kept for the caller who fetched it.
pub const PLAYER_TTL: Duration = Duration::from_secs(5 * 60);
/// At most this many parsed recordings are kept.
pub const MAX_PLAYERS: usize = 16;
/// At most about this many bytes of parsed recordings are kept (the oldest go first).
pub const MAX_PLAYER_BYTES: usize = 256 << 20;
/// The largest recording the web player or a download reads (larger ones: `ward replay`,
/// `ward export`).
pub const MAX_WEB_RECORDING: u64 = 128 << 20;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/sessions/{id}/timeline", get(timeline))
        .route("/api/v1/sessions/{id}/screen", get(screen))
        .route("/api/v1/sessions/{id}/hex", get(hex))
        .route("/api/v1/sessions/{id}/export", get(export))
}

/// A parsed recording and whether it verified.
struct Entry {
    /// `(principal, certificate serial or browser session, session id)`.
    key: (String, String, String),
    player: Arc<Player>,
    verified: bool,
    weight: usize,
    at: Instant,
}

/// Recordings parsed for the player, per caller, for [`PLAYER_TTL`]; bounded by
/// [`MAX_PLAYERS`] and [`MAX_PLAYER_BYTES`].
#[derive(Default)]
pub struct Players {
    entries: Mutex<VecDeque<Entry>>,
}

impl Players {
    fn key(authed: &Authed, id: &str) -> (String, String, String) {
        (
            authed.identity.principal(),
            authed.identity.serial.clone(),
            id.to_string(),
        )
    }

    fn get(&self, key: &(String, String, String)) -> Option<(Arc<Player>, bool)> {
        let mut entries = self.entries.lock().ok()?;
        entries.retain(|e| e.at.elapsed() < PLAYER_TTL);
        entries
            .iter()
            .find(|e| &e.key == key)
            .map(|e| (e.player.clone(), e.verified))
    }

    fn put(&self, key: (String, String, String), player: Arc<Player>, verified: bool) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|e| e.key != key && e.at.elapsed() < PLAYER_TTL);
        let weight = player.weight();
        entries.push_back(Entry {
            key,
            player,
            verified,
            weight,
            at: Instant::now(),
        });
        while entries.len() > MAX_PLAYERS
            || (entries.len() > 1
                && entries.iter().map(|e| e.weight).sum::<usize>() > MAX_PLAYER_BYTES)
        {
            entries.pop_front();
        }
    }
}

/// A review refusal as the web console says it: `force=true` where the CLI says `--force`.
fn refused(r: ReviewRefusal) -> ApiError {
    match r {
        ReviewRefusal::FailsVerification { id, what } => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("recording {id} fails verification ({what}); replay refused — add force=true to replay it anyway (audited)"),
        ),
        other => ApiError::from(other),
    }
}

fn internal(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what.to_string())
}

/// 409: an encrypted recording the gateway cannot open (see the module's doc).
fn encrypted(e: &crate::unseal::OpenError) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, e.for_gateway())
}

/// `bytes` (recording `id`, as stored) with its encrypted records opened by the gateway's
/// reviewer identity: the records as far as they read.
fn opened(
    state: &WebState,
    id: &str,
    bytes: &[u8],
) -> Result<Vec<ward_recording::Record>, ApiError> {
    crate::unseal::open_prefix(bytes, state.review().identity(), id)
        .map(|(records, _)| records)
        .map_err(|e| encrypted(&e))
}

fn too_large(id: &str, len: u64, cli: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("recording {id} is {len} bytes, more than the web console reads ({MAX_WEB_RECORDING}); use `ward {cli} {id}` instead"),
    )
}

/// The recording `id` fetched for `purpose` through the review service (audited there), read
/// whole on a blocking thread.
async fn fetch(
    state: &WebState,
    authed: &Authed,
    id: &str,
    purpose: Purpose,
    force: bool,
) -> Result<(Vec<u8>, bool), ApiError> {
    let request = ReviewRequest::Recording {
        session_id: id.to_string(),
        purpose,
        force,
    };
    let answer = state
        .review()
        .handle(&authed.reviewer(), request)
        .await
        .map_err(refused)?;
    let ReviewAnswer::Recording {
        snapshot, verified, ..
    } = answer
    else {
        return Err(internal("the review service answered with something else"));
    };
    if snapshot.len > MAX_WEB_RECORDING {
        let cli = if purpose == Purpose::Export {
            "export"
        } else {
            "replay"
        };
        return Err(too_large(id, snapshot.len, cli));
    }
    let bytes = tokio::task::spawn_blocking(move || snapshot.read_all())
        .await
        .map_err(internal)?
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading recording {id}: {e}"),
            )
        })?;
    Ok((bytes, verified))
}

/// The caller's player for `id`: kept from an earlier request, or fetched as a replay.
async fn player_for(
    state: &WebState,
    authed: &Authed,
    id: &str,
    force: bool,
) -> Result<(Arc<Player>, bool), ApiError> {
    let key = Players::key(authed, id);
    // Kept only for callers the service let through; the role is checked again on every use.
    if Role::Security.held_by(&authed.principal) {
        if let Some(hit) = state.players.get(&key) {
            return Ok(hit);
        }
    }
    let (bytes, verified) = fetch(state, authed, id, Purpose::Replay, force).await?;
    let (state2, id2) = (state.clone(), id.to_string());
    let player = tokio::task::spawn_blocking(move || {
        opened(&state2, &id2, &bytes).map(Player::from_records)
    })
    .await
    .map_err(internal)??;
    let player = Arc::new(player);
    state.players.put(key, player.clone(), verified);
    Ok((player, verified))
}

/// `force=true`: replay a recording that fails verification (audited, severity high).
#[derive(Debug, Default, Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

fn query<T: Default>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// The timeline, and whether the recording verified.
#[derive(Serialize)]
struct TimelineAnswer {
    #[serde(flatten)]
    timeline: terminal::Timeline,
    verified: bool,
}

async fn timeline(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
    q: Result<Query<ForceQuery>, QueryRejection>,
) -> Result<Json<TimelineAnswer>, ApiError> {
    let q = query(q)?;
    let (player, verified) = player_for(&state, &authed, &id, q.force).await?;
    let timeline = tokio::task::spawn_blocking(move || player.timeline())
        .await
        .map_err(internal)?;
    Ok(Json(TimelineAnswer { timeline, verified }))
}

#[derive(Debug, Default, Deserialize)]
struct ScreenQuery {
    /// Seconds since the session started (default 0).
    t: Option<f64>,
    #[serde(default)]
    force: bool,
}

async fn screen(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
    q: Result<Query<ScreenQuery>, QueryRejection>,
) -> Result<Json<terminal::Screen>, ApiError> {
    let q = query(q)?;
    let t = q.t.unwrap_or(0.0);
    if !t.is_finite() || t < 0.0 {
        return Err(ApiError::bad_request(
            "t is seconds since the session started: a number, 0 or more",
        ));
    }
    let (player, _) = player_for(&state, &authed, &id, q.force).await?;
    let screen = tokio::task::spawn_blocking(move || player.screen_at(t))
        .await
        .map_err(internal)?;
    Ok(Json(screen))
}

#[derive(Debug, Default, Deserialize)]
struct HexQuery {
    /// `up` or `down` (default `down`).
    dir: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
    #[serde(default)]
    force: bool,
}

fn direction(dir: Option<&str>) -> Result<Direction, ApiError> {
    match dir {
        None | Some("down") => Ok(Direction::Down),
        Some("up") => Ok(Direction::Up),
        Some(_) => Err(ApiError::bad_request(
            "dir is up (client → device) or down (device → client)",
        )),
    }
}

async fn hex(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
    q: Result<Query<HexQuery>, QueryRejection>,
) -> Result<Json<terminal::Hex>, ApiError> {
    let q = query(q)?;
    let dir = direction(q.dir.as_deref())?;
    let (player, _) = player_for(&state, &authed, &id, q.force).await?;
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(4096);
    Ok(Json(player.hex(dir, offset, limit)))
}

#[derive(Debug, Default, Deserialize)]
struct ExportQuery {
    /// `asciicast`, `pcap`, `raw` or `json`.
    format: Option<String>,
    /// For `raw`: `up` or `down` (default `down`).
    dir: Option<String>,
    /// Export the verified records of a recording that fails verification.
    #[serde(default)]
    force: bool,
}

async fn export(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (format, ext, mime) = match q.format.as_deref() {
        Some("asciicast") => (ExportFormat::Asciicast, "cast", "application/x-asciicast"),
        Some("pcap") => (ExportFormat::Pcap, "pcap", "application/vnd.tcpdump.pcap"),
        Some("raw") => (ExportFormat::Raw, "raw", "application/octet-stream"),
        Some("json") => (ExportFormat::Json, "jsonl", "application/x-ndjson"),
        _ => {
            return Err(ApiError::bad_request(
                "format is asciicast, pcap, raw (with dir=up|down) or json",
            ))
        }
    };
    let dir = direction(q.dir.as_deref())?;
    let (bytes, verified) = fetch(&state, &authed, &id, Purpose::Export, q.force).await?;
    let force = q.force;
    let id2 = id.clone();
    let key = state.shared.keys.keyring();
    let state2 = state.clone();
    let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        // As `ward export`: the whole recording when it verifies; with force, its verified
        // records only.
        let report;
        let part = if verified {
            bytes.as_slice()
        } else {
            report = ward_recording::verify(&bytes, &key);
            if !force {
                let why = report
                    .first_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "not sealed".into());
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("recording {id2} fails verification ({why}); export refused — add force=true to export its verified records"),
                ));
            }
            crate::review::verified_prefix(&bytes, &report)
        };
        if part.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("recording {id2} has no verified records to export"),
            ));
        }
        let records = opened(&state2, &id2, part)?;
        match crate::review::export_records(&records, format, false) {
            Ok(ExportData::One(data)) => Ok(data),
            Ok(ExportData::Raw { up, down }) => Ok(match dir {
                Direction::Up => up,
                Direction::Down => down,
            }),
            Err(e) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("recording {id2} cannot be exported as {ext}: {e:#}"),
            )),
        }
    })
    .await
    .map_err(internal)??;
    // The id is hex digits (the service checked it): safe in a header and a file name.
    let name = match format {
        ExportFormat::Raw => format!("ward-{id}.{}.raw", dir.as_str()),
        _ => format!("ward-{id}.{ext}"),
    };
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|_| ApiError::bad_request("not a session id"))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn key(n: usize) -> (String, String, String) {
        ("security sam".into(), "01".into(), format!("{n:016x}"))
    }

    #[test]
    fn players_are_kept_per_caller_and_bounded() {
        let players = Players::default();
        let empty = Arc::new(Player::new(b""));
        for n in 0..MAX_PLAYERS + 3 {
            players.put(key(n), empty.clone(), true);
        }
        // The oldest went first.
        assert!(players.get(&key(0)).is_none());
        assert!(players.get(&key(2)).is_none());
        assert!(players.get(&key(3)).is_some());
        assert!(players.get(&key(MAX_PLAYERS + 2)).is_some());
        assert_eq!(players.entries.lock().unwrap().len(), MAX_PLAYERS);
        // Another caller, the same recording: not shared.
        let other = ("security kim".into(), "02".into(), key(3).2);
        assert!(players.get(&other).is_none());
        // Expired entries are dropped.
        {
            let mut entries = players.entries.lock().unwrap();
            let Some(old) = entries[0].at.checked_sub(PLAYER_TTL) else {
                return; // a clock too young to go back five minutes
            };
            entries[0].at = old;
        }
        assert!(players.get(&key(3)).is_none());
        assert_eq!(players.entries.lock().unwrap().len(), MAX_PLAYERS - 1);
    }
}
