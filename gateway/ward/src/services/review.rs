//! The review service: what security teams ask of recordings and the audit log (list, fetch one to
//! replay, export or verify, the audit log, the public key), with typed requests in and typed
//! answers or refusals out, audited here and only here (issue 13 item 2).
//!
//! Front ends are thin adapters: the frame dispatcher (`gateway::review_request`) turns a
//! `Request::Review` into a [`ReviewRequest`] and a [`ReviewAnswer`] into frames; the web console
//! will do the same over HTTP. Reading and verifying recordings runs on the review pool
//! ([`ReviewGate`]: blocking threads, limited, refused with [`ReviewRefusal::Busy`] beyond its
//! queue), never on an async worker. Recordings are read through the [`RecordingStore`].

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ward_ca::{Clock, Identity};
use ward_core::frame::{self, ErrorCode};
use ward_core::{Principal, PrincipalKind};

use crate::audit::{AuditLog, Event};
use crate::recording_store::{RecordingStore, Snapshot};
use crate::review::{Filter, SessionSummary};
use crate::review_jobs::ReviewGate;

/// Who asks: an authenticated principal, from where.
#[derive(Debug, Clone, Copy)]
pub struct Reviewer<'a> {
    /// The identity its certificate proved.
    pub identity: &'a Identity,
    /// The principal it is.
    pub principal: &'a Principal,
    /// Its address.
    pub source: SocketAddr,
}

/// Why a recording is fetched (audited as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Replay: refused when the recording fails verification, unless forced.
    Replay,
    /// Export to another format.
    Export,
    /// Verify on the reviewer's machine.
    Verify,
}

impl Purpose {
    /// `replay`, `export`; anything else is a verification.
    pub fn parse(text: &str) -> Purpose {
        match text {
            "replay" => Purpose::Replay,
            "export" => Purpose::Export,
            _ => Purpose::Verify,
        }
    }
}

/// What a reviewer asks.
#[derive(Debug, Clone, PartialEq)]
pub enum ReviewRequest {
    /// The gateway's recording and audit public key.
    PublicKey,
    /// The audit log, every line covered by a signed checkpoint.
    AuditLog,
    /// The sessions matching a filter, newest first.
    List(Filter),
    /// One recording, whole.
    Recording {
        /// The session.
        session_id: String,
        /// Why.
        purpose: Purpose,
        /// Proceed although it fails verification (audited, severity high).
        force: bool,
    },
}

impl From<frame::Review> for ReviewRequest {
    fn from(review: frame::Review) -> Self {
        use frame::Review;
        match review {
            Review::PublicKey => ReviewRequest::PublicKey,
            Review::AuditLog => ReviewRequest::AuditLog,
            Review::ListSessions {
                principal,
                device,
                since_unix,
                until_unix,
                grep,
            } => ReviewRequest::List(Filter {
                principal,
                device,
                since: since_unix,
                until: until_unix,
                grep,
            }),
            Review::Recording {
                session_id,
                purpose,
                force,
            } => ReviewRequest::Recording {
                session_id,
                purpose: Purpose::parse(&purpose),
                force,
            },
        }
    }
}

impl ReviewRequest {
    /// The audit event it is recorded as.
    pub fn event(&self) -> &'static str {
        match self {
            ReviewRequest::List(_) => "recording_listed",
            ReviewRequest::Recording { purpose, .. } => match purpose {
                Purpose::Replay => "recording_replayed",
                Purpose::Export => "recording_exported",
                Purpose::Verify => "recording_verified",
            },
            ReviewRequest::AuditLog => "audit_log_read",
            ReviewRequest::PublicKey => "public_key_read",
        }
    }
}

/// What a reviewer gets.
#[derive(Debug)]
pub enum ReviewAnswer {
    /// The public key.
    PublicKey([u8; 32]),
    /// The sessions, newest first.
    Sessions(Vec<SessionSummary>),
    /// The audit log as it was when opened.
    AuditLog(Snapshot),
    /// A recording as it was when opened.
    Recording {
        /// The session.
        session_id: String,
        /// Its bytes.
        snapshot: Snapshot,
        /// Whether it verified (a forced fetch may not).
        verified: bool,
    },
}

/// Why a review was refused; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewRefusal {
    /// The principal is not a security or admin identity.
    #[error(
        "{0} may not review recordings or the audit log: only security and admin identities can"
    )]
    NotPermitted(String),
    /// Too many reviews in progress.
    #[error("{}", crate::review_jobs::BUSY)]
    Busy,
    /// Not a session id.
    #[error("{0:?} is not a session id (see `ward sessions`)")]
    BadSessionId(String),
    /// No recording for that session.
    #[error("no recording for session {0} (see `ward sessions`)")]
    NoRecording(String),
    /// A replay of a recording that fails verification, not forced.
    #[error("recording {id} fails verification ({what}); replay refused — use --force to replay anyway (audited)")]
    FailsVerification {
        /// The session.
        id: String,
        /// The first problem.
        what: String,
    },
    /// The store could not be read.
    #[error("{0}")]
    Unreadable(String),
    /// The review could not be audited, so nothing is handed out.
    #[error("{0}")]
    AuditUnavailable(String),
}

impl ReviewRefusal {
    /// The frame protocol's error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReviewRefusal::NotPermitted(_) => ErrorCode::Forbidden,
            ReviewRefusal::Busy => ErrorCode::Overloaded,
            ReviewRefusal::AuditUnavailable(_) => ErrorCode::RecordingUnavailable,
            ReviewRefusal::BadSessionId(_)
            | ReviewRefusal::NoRecording(_)
            | ReviewRefusal::FailsVerification { .. }
            | ReviewRefusal::Unreadable(_) => ErrorCode::BadRequest,
        }
    }
}

/// The review service.
#[derive(Clone)]
pub struct ReviewService {
    recordings: RecordingStore,
    /// Where the session index is (read only, so listings never wait on the gateway's writes).
    state_dir: PathBuf,
    key: [u8; 32],
    audit: AuditLog,
    gate: Arc<ReviewGate>,
    clock: Arc<dyn Clock>,
}

/// What a review job hands back: the answer and its success event, or a refusal.
type JobResult = Result<(ReviewAnswer, Event), ReviewRefusal>;

impl ReviewService {
    /// Reviews of `recordings` (signed with `key`; the session index in `state_dir`), audited to
    /// `audit`, run on `gate`.
    pub fn new(
        recordings: RecordingStore,
        state_dir: PathBuf,
        key: [u8; 32],
        audit: AuditLog,
        gate: Arc<ReviewGate>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ReviewService {
            recordings,
            state_dir,
            key,
            audit,
            gate,
            clock,
        }
    }

    /// Answer `who`'s `request`, or refuse it; either way audited once. Nothing is handed out
    /// before its event is in the audit log.
    pub async fn handle(
        &self,
        who: &Reviewer<'_>,
        request: ReviewRequest,
    ) -> Result<ReviewAnswer, ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new(request.event(), outcome, now)
                .principal(who.identity)
                .source(who.source)
        };
        if !may_review(who.principal) {
            self.audit.emit(
                event("denied")
                    .severity("warning")
                    .reason("only security and admin identities may review recordings"),
            );
            return Err(ReviewRefusal::NotPermitted(who.principal.to_string()));
        }
        if matches!(request, ReviewRequest::AuditLog) {
            // Hand out a log whose every line is covered by a signed checkpoint.
            self.audit.flush().await;
        }
        let failure = event("failure");
        let job = {
            let (me, base) = (self.clone(), event("success"));
            move || me.job(base, request)
        };
        let done = self.gate.run(job).await.unwrap_or(Err(ReviewRefusal::Busy));
        match done {
            Ok((answer, ev)) => {
                self.audit.emit(ev);
                self.audit
                    .commit()
                    .await
                    .map_err(|e| ReviewRefusal::AuditUnavailable(e.to_string()))?;
                Ok(answer)
            }
            Err(refusal) => {
                self.audit.emit(failure.reason(refusal.to_string()));
                Err(refusal)
            }
        }
    }

    /// The blocking part (on the review pool): read, verify, list.
    fn job(&self, base: Event, request: ReviewRequest) -> JobResult {
        match request {
            ReviewRequest::PublicKey => Ok((ReviewAnswer::PublicKey(self.key), base)),
            ReviewRequest::AuditLog => {
                let snapshot = open_file(self.audit.path()).map_err(|e| {
                    ReviewRefusal::Unreadable(format!("reading the audit log: {e}"))
                })?;
                Ok((ReviewAnswer::AuditLog(snapshot), base))
            }
            ReviewRequest::List(filter) => self.list(base, &filter),
            ReviewRequest::Recording {
                session_id,
                purpose,
                force,
            } => self.recording(base, session_id, purpose, force),
        }
    }

    fn list(&self, base: Event, filter: &Filter) -> JobResult {
        let index = match filter.grep {
            Some(_) => Vec::new(),
            None => crate::session_index::read_only(&self.state_dir).unwrap_or_default(),
        };
        let list =
            crate::review::list_in(&self.recordings, index, &self.key, filter, &mut |_, _| {})
                .map_err(|e| ReviewRefusal::Unreadable(format!("{e:#}")))?;
        let ev = base
            .detail("sessions", list.len())
            .detail("grep", filter.grep.is_some());
        Ok((ReviewAnswer::Sessions(list), ev))
    }

    fn recording(&self, base: Event, id: String, purpose: Purpose, force: bool) -> JobResult {
        if !crate::recording_store::valid_id(&id) {
            return Err(ReviewRefusal::BadSessionId(id));
        }
        let Snapshot { mut reader, len } = match self.recordings.open(&id) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReviewRefusal::NoRecording(id))
            }
            Err(e) => return Err(unreadable(&id, &e)),
        };
        let report = ward_recording::verify_read((&mut reader).take(len), &self.key)
            .map_err(|e| unreadable(&id, &e))?;
        if purpose == Purpose::Replay && !report.ok && !force {
            let what = report
                .first_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "not sealed".into());
            return Err(ReviewRefusal::FailsVerification { id, what });
        }
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| unreadable(&id, &e))?;
        let ev = base
            .session(id.clone())
            .detail("verified", report.ok)
            .detail("forced", force)
            // What a forced export holds: the records up to the last valid checkpoint.
            .detail("verified_records", report.verified_records)
            .detail("verified_bytes", report.valid_prefix_len)
            .severity(if force && !report.ok { "high" } else { "info" });
        let answer = ReviewAnswer::Recording {
            session_id: id,
            snapshot: Snapshot { reader, len },
            verified: report.ok,
        };
        Ok((answer, ev))
    }
}

/// Security and admin identities may review.
fn may_review(p: &Principal) -> bool {
    matches!(p.kind, PrincipalKind::Security | PrincipalKind::Admin)
}

fn unreadable(id: &str, e: &std::io::Error) -> ReviewRefusal {
    ReviewRefusal::Unreadable(format!("reading recording {id}: {e}"))
}

/// A file opened, and its length now (what will be sent, even if it grows meanwhile).
fn open_file(path: &std::path::Path) -> std::io::Result<Snapshot> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok(Snapshot {
        reader: Box::new(file),
        len,
    })
}

/// A listing as JSON lines, one session per line (the wire form of [`ReviewAnswer::Sessions`]).
pub fn json_lines(sessions: &[SessionSummary]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in sessions {
        // A summary is strings and numbers: serialising it cannot fail.
        if serde_json::to_writer(&mut out, s).is_ok() {
            out.push(b'\n');
        }
    }
    out
}
