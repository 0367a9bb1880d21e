//! What the audit log says about each session, and whether its recording agrees.
//!
//! A recording proves what happened inside a session; the audit log proves that the session
//! happened and how it ended. Either alone can be cut: a truncated recording looks like one a
//! crash left open, and crash recovery would sign it as "interrupted" with the gateway's key. The
//! two together cannot be made to agree without breaking a signature, so crash recovery and
//! `ward audit verify --all` read both:
//!
//! * [`session_trails`] parses an audit log (bytes, as read from the file or handed out by the
//!   gateway) into one [`SessionTrail`] per session id: opened, how, recorded, closed, why, and
//!   the byte counts the gateway logged at close. It does not verify the log (that is
//!   [`crate::audit::verify_audit`]); it skips lines it does not understand.
//! * [`may_seal`] is crash recovery's rule: only a recording the log opened and never closed may
//!   be sealed as interrupted.
//! * [`check_recording`] and [`missing_recordings`] are the cross-checks of `ward audit verify
//!   --all`.
//!
//! Pure: no files, no clock.

use std::collections::BTreeMap;

use crate::verify::{SealStatus, VerifyReport};

/// Everything the audit log says about one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTrail {
    /// A `session_open` event with outcome `success` names this session: the gateway proxied it.
    pub opened: bool,
    /// The outcome of the first `session_open` event (`success`, or `failure` when the device
    /// could not be reached after the recording was opened); `None` if the log never opened it.
    pub open_outcome: Option<String>,
    /// Line (`seq`) of the first `session_open` event.
    pub open_line: Option<u64>,
    /// The `recorded` detail of the successful `session_open` (absent in benchmark-mode logs
    /// that predate it: `None`).
    pub recorded: Option<bool>,
    /// A `session_close` event names this session.
    pub closed: bool,
    /// Line (`seq`) of the first `session_close` event.
    pub close_line: Option<u64>,
    /// Its reason.
    pub close_reason: Option<String>,
    /// Its `bytes_up` detail (client → device).
    pub bytes_up: Option<u64>,
    /// Its `bytes_down` detail (device → client).
    pub bytes_down: Option<u64>,
    /// The reason of the first `recording_failed` event for this session, if any.
    pub recording_failed: Option<String>,
}

/// Parse an audit log into one trail per session id (`session_open`, `session_close` and
/// `recording_failed` events). Tolerant: checkpoint lines, other events, events without a session
/// id, lines that are not JSON and a last line without its newline (still being written) are
/// skipped. When an event appears twice for one session, the first one counts (and a successful
/// open counts even after a failed one).
pub fn session_trails(log: &[u8]) -> BTreeMap<String, SessionTrail> {
    let mut trails: BTreeMap<String, SessionTrail> = BTreeMap::new();
    let mut lines = log.split(|b| *b == b'\n');
    // The piece after the last newline is an incomplete line (or empty): skip it.
    let _ = lines.next_back();
    for (i, line) in lines.enumerate() {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(line) else {
            continue;
        };
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str());
        let (Some(event), Some(session)) = (text("event"), text("session_id")) else {
            continue;
        };
        if !matches!(event, "session_open" | "session_close" | "recording_failed") {
            continue;
        }
        let seq = obj
            .get("seq")
            .and_then(|v| v.as_u64())
            .unwrap_or(i as u64 + 1);
        let detail = |k: &str| obj.get("detail").and_then(|d| d.get(k));
        let trail = trails.entry(session.to_owned()).or_default();
        match event {
            "session_open" => {
                let outcome = text("outcome").unwrap_or_default();
                if trail.open_outcome.is_none() {
                    trail.open_outcome = Some(outcome.to_owned());
                    trail.open_line = Some(seq);
                }
                if outcome == "success" && !trail.opened {
                    trail.opened = true;
                    trail.recorded = detail("recorded").and_then(|v| v.as_bool());
                }
            }
            "session_close" if !trail.closed => {
                trail.closed = true;
                trail.close_line = Some(seq);
                trail.close_reason = text("reason").map(str::to_owned);
                trail.bytes_up = detail("bytes_up").and_then(|v| v.as_u64());
                trail.bytes_down = detail("bytes_down").and_then(|v| v.as_u64());
            }
            "recording_failed" if trail.recording_failed.is_none() => {
                trail.recording_failed = Some(text("reason").unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    trails
}

fn at_line(line: Option<u64>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// Crash recovery's rule: may the recording in file `<file_id>.wrec`, whose verification is
/// `report`, be sealed as interrupted? Only if the audit log opened the session (`session_open`,
/// success), never closed it, and the recording's metadata names the same session. `Err` says
/// why not; such a recording is left exactly as it is and reported.
///
/// Whether its prefix verifies is for [`crate::seal_interrupted`] to say (it refuses a recording
/// whose checkpoints do not verify).
pub fn may_seal(
    file_id: &str,
    report: &VerifyReport,
    trails: &BTreeMap<String, SessionTrail>,
) -> Result<(), String> {
    if report.status != SealStatus::Unsealed {
        return Err(format!(
            "the recording is already {:?}: nothing to seal",
            report.status
        ));
    }
    if let Some(meta) = &report.meta {
        if meta.session_id != file_id {
            return Err(format!(
                "the file is named for session {file_id} but its metadata names session {}: renamed or copied",
                meta.session_id
            ));
        }
    }
    let trail = trails.get(file_id);
    match trail {
        Some(t) if t.closed && t.recording_failed.is_some() => Err(format!(
            "the audit log closed session {file_id}{} after its recording failed ({}): not a recording a crash left open",
            at_line(t.close_line),
            t.recording_failed.as_deref().unwrap_or_default()
        )),
        Some(t) if t.closed => Err(format!(
            "the audit log closed session {file_id}{} ({}), so its recording was sealed then; it is unsealed now: truncated or altered after sealing",
            at_line(t.close_line),
            t.close_reason.as_deref().unwrap_or("no reason logged")
        )),
        Some(t) if t.opened && t.recorded == Some(false) => Err(format!(
            "the audit log opened session {file_id}{} unrecorded, yet a recording exists",
            at_line(t.open_line)
        )),
        Some(t) if t.opened => Ok(()),
        Some(t) => Err(format!(
            "the audit log never opened session {file_id} (no successful session_open; {})",
            match (&t.open_outcome, &t.recording_failed) {
                (Some(o), _) => format!("session_open with outcome {o}{}", at_line(t.open_line)),
                (None, Some(why)) => format!("its recording failed: {why}"),
                (None, None) => "only other events name it".into(),
            }
        )),
        None => Err(format!(
            "the audit log never opened session {file_id} (no event names it)"
        )),
    }
}

/// How bad a cross-check finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Explainable by the gateway stopping at an unlucky moment; not a failure.
    Warning,
    /// The recording and the audit log disagree: evidence was lost or altered.
    Problem,
}

/// One disagreement between a recording and the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The session it concerns.
    pub session_id: String,
    /// Problem or warning.
    pub level: Level,
    /// What disagrees.
    pub what: String,
}

/// Cross-check one recording (`session_id` from its listing or metadata, `report` from
/// [`crate::verify()`]) against the audit log's trail for that session.
///
/// Problems: a recording the log never opened (no `session_open` at all; a failed open is fine,
/// the recording is opened before the device is dialed); a recording of a session the log opened
/// unrecorded; a recording `Interrupted` or `Unsealed` although the log has its `session_close`;
/// a sealed recording whose end record's byte counts differ from the `session_close` details.
/// Warning: a sealed recording whose `session_close` is missing (the gateway stopped between
/// sealing and logging). A session opened and never closed whose recording is `Interrupted` is the
/// crash case and is fine; an `Unsealed` recording is already a verification failure.
pub fn check_recording(
    session_id: &str,
    report: &VerifyReport,
    trail: Option<&SessionTrail>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |level: Level, what: String| {
        out.push(Finding {
            session_id: session_id.to_owned(),
            level,
            what,
        });
    };
    let Some(t) = trail.filter(|t| t.open_outcome.is_some()) else {
        let failed = trail
            .and_then(|t| t.recording_failed.as_deref())
            .map(|why| format!("; the log only says its recording failed: {why}"))
            .unwrap_or_default();
        add(
            Level::Problem,
            format!("a recording exists for a session the audit log never opened{failed}"),
        );
        return out;
    };
    if t.opened && t.recorded == Some(false) {
        add(
            Level::Problem,
            format!(
                "the audit log opened this session unrecorded{}, yet a recording exists",
                at_line(t.open_line)
            ),
        );
    }
    match (t.closed, report.status) {
        (true, SealStatus::Interrupted | SealStatus::Unsealed) => add(
            Level::Problem,
            match &t.recording_failed {
                Some(why) => format!(
                    "the recording is {:?}: the audit log closed the session{} after its recording failed ({why})",
                    report.status,
                    at_line(t.close_line),
                ),
                None => format!(
                    "the recording is {:?} although the audit log closed the session{} ({}): truncated, cut or re-signed after it was sealed",
                    report.status,
                    at_line(t.close_line),
                    t.close_reason.as_deref().unwrap_or("no reason logged")
                ),
            },
        ),
        (true, SealStatus::Sealed) => {
            if let Some(end) = &report.end {
                if t.bytes_up != Some(end.bytes_up) || t.bytes_down != Some(end.bytes_down) {
                    let logged = |v: Option<u64>| v.map_or_else(|| "none".into(), |n| n.to_string());
                    add(
                        Level::Problem,
                        format!(
                            "byte counts disagree: the recording's end record says {} up, {} down; the audit log's session_close{} says {} up, {} down",
                            end.bytes_up,
                            end.bytes_down,
                            at_line(t.close_line),
                            logged(t.bytes_up),
                            logged(t.bytes_down)
                        ),
                    );
                }
            }
        }
        (false, SealStatus::Sealed) if t.opened => add(
            Level::Warning,
            "the recording is sealed but the audit log has no session_close for it (the gateway stopped between sealing the recording and logging the close?)".into(),
        ),
        _ => {}
    }
    out
}

/// Sessions the audit log opened with a recording (`session_open`, success, detail
/// `recorded: true`) for which `has_recording` finds none: a deleted recording.
pub fn missing_recordings(
    trails: &BTreeMap<String, SessionTrail>,
    has_recording: impl Fn(&str) -> bool,
) -> Vec<Finding> {
    trails
        .iter()
        .filter(|(id, t)| t.opened && t.recorded == Some(true) && !has_recording(id))
        .map(|(id, t)| Finding {
            session_id: id.clone(),
            level: Level::Problem,
            what: format!(
                "the audit log opened this session with a recording{}{}, but there is no recording for it (deleted?)",
                at_line(t.open_line),
                if t.closed { ", and closed it" } else { "" }
            ),
        })
        .collect()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use crate::format::{EndInfo, SessionMeta};

    fn open(seq: u64, id: &str, outcome: &str, recorded: Option<bool>) -> String {
        let detail = match recorded {
            Some(r) => format!(r#","detail":{{"recorded":{r},"rule":"r"}}"#),
            None => String::new(),
        };
        format!(
            r#"{{"seq":{seq},"time":"2026-11-22T08:15:57.123Z","event":"session_open","outcome":"{outcome}","severity":"info","session_id":"{id}","reason":"permitted"{detail},"chain":"00"}}"#
        )
    }

    fn close(seq: u64, id: &str, up: u64, down: u64) -> String {
        format!(
            r#"{{"seq":{seq},"time":"2026-11-22T08:16:57.123Z","event":"session_close","outcome":"success","severity":"info","session_id":"{id}","reason":"completed","detail":{{"bytes_down":{down},"bytes_up":{up}}},"chain":"00"}}"#
        )
    }

    fn log(lines: &[String]) -> Vec<u8> {
        let mut s = lines.join("\n");
        s.push('\n');
        s.into_bytes()
    }

    fn report(id: &str, status: SealStatus, end: Option<(u64, u64)>) -> VerifyReport {
        VerifyReport {
            ok: status != SealStatus::Unsealed,
            records: 4,
            verified_records: 4,
            status,
            meta: Some(SessionMeta {
                session_id: id.into(),
                principal_kind: "vendor".into(),
                principal_name: "jdoe".into(),
                principal_org: Some("acme".into()),
                cert_serial: "01".into(),
                source: "127.0.0.1:1".into(),
                device: "pump-12".into(),
                device_addr: "127.0.0.1:2".into(),
                protocol: "raw".into(),
                rule: "r".into(),
                transport: "quic".into(),
                break_glass: false,
                started_unix_ms: 0,
                recipients: Vec::new(),
                age_header: None,
            }),
            end: end.map(|(up, down)| EndInfo {
                ended_unix_ms: 1,
                reason: "completed".into(),
                bytes_up: up,
                bytes_down: down,
            }),
            first_error: None,
            valid_prefix_len: 100,
        }
    }

    #[test]
    fn trails_collect_open_close_and_byte_counts() {
        let bytes = log(&[
            r#"{"seq":1,"time":"t","event":"gateway_start","outcome":"success","severity":"info","chain":"00"}"#.into(),
            open(2, "aa", "success", Some(true)),
            r#"{"type":"checkpoint","seq":3,"chain":"00","key_id":"00","sig":"00"}"#.into(),
            close(4, "aa", 10, 20),
            open(5, "bb", "failure", None),
            open(6, "cc", "success", Some(false)),
            r#"{"seq":7,"time":"t","event":"recording_failed","outcome":"failure","severity":"high","session_id":"dd","reason":"disk full","chain":"00"}"#.into(),
        ]);
        let t = session_trails(&bytes);
        assert_eq!(t.len(), 4, "{t:?}");
        assert_eq!(
            t["aa"],
            SessionTrail {
                opened: true,
                open_outcome: Some("success".into()),
                open_line: Some(2),
                recorded: Some(true),
                closed: true,
                close_line: Some(4),
                close_reason: Some("completed".into()),
                bytes_up: Some(10),
                bytes_down: Some(20),
                recording_failed: None,
            }
        );
        assert!(!t["bb"].opened);
        assert_eq!(t["bb"].open_outcome.as_deref(), Some("failure"));
        assert_eq!(t["cc"].recorded, Some(false));
        assert!(!t["cc"].closed);
        assert_eq!(t["dd"].recording_failed.as_deref(), Some("disk full"));
        assert_eq!(t["dd"].open_outcome, None);
    }

    #[test]
    fn trails_skip_what_they_do_not_understand() {
        let mut bytes = b"not json\n[1,2]\n{}\n{\"event\":\"session_open\"}\n\n".to_vec();
        bytes.extend(open(6, "aa", "success", Some(true)).as_bytes());
        bytes.push(b'\n');
        // A torn last line (no newline) is not read, even if it parses.
        bytes.extend(close(7, "aa", 1, 1).as_bytes());
        let t = session_trails(&bytes);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t["aa"].opened);
        assert!(!t["aa"].closed, "the torn close line was read");
        assert!(session_trails(b"").is_empty());
        assert!(session_trails(&[0xff, 0xfe, b'\n']).is_empty());
    }

    #[test]
    fn first_event_counts_and_success_counts_after_a_failure() {
        let bytes = log(&[
            open(1, "aa", "failure", None),
            open(2, "aa", "success", Some(true)),
            close(3, "aa", 1, 2),
            close(4, "aa", 9, 9),
        ]);
        let t = &session_trails(&bytes)["aa"];
        assert!(t.opened);
        assert_eq!(t.open_line, Some(1));
        assert_eq!(t.recorded, Some(true));
        assert_eq!(
            (t.bytes_up, t.bytes_down, t.close_line),
            (Some(1), Some(2), Some(3))
        );
    }

    #[test]
    fn seq_falls_back_to_the_line_number() {
        let bytes = b"{\"event\":\"session_open\",\"outcome\":\"success\",\"session_id\":\"aa\"}\n";
        assert_eq!(session_trails(bytes)["aa"].open_line, Some(1));
    }

    /// Crash recovery's rule, one row per case: (log, status, may seal?, the refusal names).
    #[test]
    fn may_seal_only_what_the_log_opened_and_never_closed() {
        let opened = log(&[open(1, "aa", "success", Some(true))]);
        let closed = log(&[open(1, "aa", "success", Some(true)), close(2, "aa", 1, 1)]);
        let failed_open = log(&[open(1, "aa", "failure", None)]);
        let unrecorded = log(&[open(1, "aa", "success", Some(false))]);
        let other = log(&[open(1, "bb", "success", Some(true))]);
        let write_failed = log(&[
            open(1, "aa", "success", Some(true)),
            r#"{"seq":2,"event":"recording_failed","outcome":"failure","session_id":"aa","reason":"No space left on device"}"#.into(),
            close(3, "aa", 1, 1),
        ]);
        let rows: &[(&[u8], SealStatus, bool, &str)] = &[
            (
                &write_failed,
                SealStatus::Unsealed,
                false,
                "closed session aa (line 3) after its recording failed (No space left",
            ),
            (&opened, SealStatus::Unsealed, true, ""),
            (
                &closed,
                SealStatus::Unsealed,
                false,
                "closed session aa (line 2)",
            ),
            (&failed_open, SealStatus::Unsealed, false, "outcome failure"),
            (&unrecorded, SealStatus::Unsealed, false, "unrecorded"),
            (
                &other,
                SealStatus::Unsealed,
                false,
                "never opened session aa (no event",
            ),
            (b"", SealStatus::Unsealed, false, "never opened"),
            (&opened, SealStatus::Sealed, false, "already Sealed"),
            (
                &opened,
                SealStatus::Interrupted,
                false,
                "already Interrupted",
            ),
        ];
        for (i, (bytes, status, ok, names)) in rows.iter().enumerate() {
            let r = may_seal("aa", &report("aa", *status, None), &session_trails(bytes));
            assert_eq!(r.is_ok(), *ok, "row {i}: {r:?}");
            if let Err(why) = r {
                assert!(why.contains(names), "row {i}: {why}");
            }
        }
    }

    #[test]
    fn may_seal_refuses_a_renamed_file() {
        let trails = session_trails(&log(&[open(1, "aa", "success", Some(true))]));
        let why = may_seal("aa", &report("bb", SealStatus::Unsealed, None), &trails).unwrap_err();
        assert!(why.contains("metadata names session bb"), "{why}");
    }

    /// The cross-check table: (log, status, end byte counts, expected findings).
    #[test]
    fn check_recording_table() {
        let none: &[(Level, &str)] = &[];
        let opened = log(&[open(1, "aa", "success", Some(true))]);
        let closed = log(&[open(1, "aa", "success", Some(true)), close(2, "aa", 10, 20)]);
        let failed_open = log(&[open(1, "aa", "failure", None)]);
        let unrecorded = log(&[
            open(1, "aa", "success", Some(false)),
            close(2, "aa", 10, 20),
        ]);
        let rec_failed = log(&[
            r#"{"seq":1,"event":"recording_failed","outcome":"failure","session_id":"aa","reason":"disk full"}"#.into(),
        ]);
        let write_failed = log(&[
            open(1, "aa", "success", Some(true)),
            r#"{"seq":2,"event":"recording_failed","outcome":"failure","session_id":"aa","reason":"No space left on device"}"#.into(),
            close(3, "aa", 1, 1),
        ]);
        type Row<'a> = (
            &'a [u8],
            SealStatus,
            Option<(u64, u64)>,
            &'a [(Level, &'a str)],
        );
        let rows: &[Row] = &[
            // Clean close.
            (&closed, SealStatus::Sealed, Some((10, 20)), none),
            // Crash: opened, never closed, sealed as interrupted at restart.
            (&opened, SealStatus::Interrupted, None, none),
            // Live or not yet recovered: verify itself reports it.
            (&opened, SealStatus::Unsealed, None, none),
            // Dial failure: the recording was opened, then closed with an End, no session_close.
            (&failed_open, SealStatus::Sealed, Some((0, 0)), none),
            // The laundering case: closed in the log, interrupted on disk.
            (&closed, SealStatus::Interrupted, None, &[(Level::Problem, "Interrupted although the audit log closed the session (line 2) (completed)")]),
            (&closed, SealStatus::Unsealed, None, &[(Level::Problem, "Unsealed although")]),
            // A write failure mid-session (disk full): still a problem, named for what it is.
            (&write_failed, SealStatus::Unsealed, None, &[(Level::Problem, "closed the session (line 3) after its recording failed (No space left on device)")]),
            (&closed, SealStatus::Sealed, Some((10, 21)), &[(Level::Problem, "says 10 up, 21 down; the audit log's session_close (line 2) says 10 up, 20 down")]),
            (&closed, SealStatus::Sealed, Some((11, 20)), &[(Level::Problem, "byte counts disagree")]),
            (&opened, SealStatus::Sealed, Some((1, 1)), &[(Level::Warning, "no session_close")]),
            (b"", SealStatus::Sealed, Some((1, 1)), &[(Level::Problem, "never opened")]),
            (&rec_failed, SealStatus::Unsealed, None, &[(Level::Problem, "never opened; the log only says its recording failed: disk full")]),
            (&unrecorded, SealStatus::Sealed, Some((10, 20)), &[(Level::Problem, "unrecorded")]),
        ];
        for (i, (bytes, status, end, want)) in rows.iter().enumerate() {
            let trails = session_trails(bytes);
            let got = check_recording("aa", &report("aa", *status, *end), trails.get("aa"));
            assert_eq!(got.len(), want.len(), "row {i}: {got:?}");
            for (g, (level, text)) in got.iter().zip(want.iter()) {
                assert_eq!(g.level, *level, "row {i}: {g:?}");
                assert!(g.what.contains(text), "row {i}: {g:?}");
                assert_eq!(g.session_id, "aa");
            }
        }
    }

    #[test]
    fn missing_recordings_are_the_recorded_opens_without_a_file() {
        let trails = session_trails(&log(&[
            open(1, "aa", "success", Some(true)),
            close(2, "aa", 1, 1),
            open(3, "bb", "success", Some(true)),
            open(4, "cc", "success", Some(false)),
            open(5, "dd", "failure", None),
            open(6, "ee", "success", None),
        ]));
        let got = missing_recordings(&trails, |id| id == "bb");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].session_id, "aa");
        assert_eq!(got[0].level, Level::Problem);
        assert!(got[0].what.contains("(line 1), and closed it"), "{got:?}");
        assert!(missing_recordings(&trails, |_| true).is_empty());
    }
}
