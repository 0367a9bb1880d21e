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
use ward_core::Principal;

use ward_recording::trail::Finding;
use ward_recording::VerifyReport;

use crate::audit::{AuditLog, Event};
use crate::recording_store::{RecordingStore, Snapshot};
use crate::review::{Filter, IdentityKey, SessionSummary};
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
    /// Search its bytes on the reviewer's machine (`ward sessions --grep --identity-key`: an
    /// encrypted recording is searched where the identity is).
    Search,
    /// List its operations on the reviewer's machine (`ward ops --identity-key`), patient data
    /// shown if `show_phi` (audited as `phi_viewed`).
    Operations {
        /// Patient data unmasked.
        show_phi: bool,
    },
}

impl Purpose {
    /// `replay`, `export`, `search`, `operations`, `operations-phi`; anything else is a
    /// verification.
    pub fn parse(text: &str) -> Purpose {
        match text {
            "replay" => Purpose::Replay,
            "export" => Purpose::Export,
            "search" => Purpose::Search,
            "operations" => Purpose::Operations { show_phi: false },
            "operations-phi" => Purpose::Operations { show_phi: true },
            _ => Purpose::Verify,
        }
    }

    /// Its name on the wire ([`Purpose::parse`] reads it back).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Replay => "replay",
            Purpose::Export => "export",
            Purpose::Verify => "verify",
            Purpose::Search => "search",
            Purpose::Operations { show_phi: false } => "operations",
            Purpose::Operations { show_phi: true } => "operations-phi",
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
    /// One session's operations, read from its recording, patient data masked unless
    /// `show_phi` (an explicit request, audited as `phi_viewed`: security case 49).
    Operations {
        /// The session.
        session_id: String,
        /// Unmask patient data.
        show_phi: bool,
        /// Proceed although the recording fails verification: its verified records only
        /// (audited, severity high).
        force: bool,
    },
    /// Sign an evidence bundle's `SHA256SUMS` with the gateway's current key (audited as
    /// `evidence_exported`): [`ReviewService::sign_evidence_job`].
    SignEvidence {
        /// The sessions in the bundle.
        sessions: Vec<String>,
        /// The `SHA256SUMS` bytes (sent after the request as data).
        sums: Vec<u8>,
    },
}

impl From<frame::Review> for ReviewRequest {
    fn from(review: frame::Review) -> Self {
        use frame::Review;
        match review {
            Review::PublicKey => ReviewRequest::PublicKey,
            // The sums follow the request as data: the adapter reads them and fills `sums`.
            Review::SignEvidence { sessions } => ReviewRequest::SignEvidence {
                sessions,
                sums: Vec::new(),
            },
            Review::AuditLog => ReviewRequest::AuditLog,
            Review::ListSessions {
                principal,
                device,
                since_unix,
                until_unix,
                grep,
                operation,
            } => ReviewRequest::List(Filter {
                principal,
                device,
                since: since_unix,
                until: until_unix,
                grep,
                op: operation,
            }),
            Review::Operations {
                session_id,
                show_phi,
                force,
            } => ReviewRequest::Operations {
                session_id,
                show_phi,
                force,
            },
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
                Purpose::Search => "recording_searched",
                Purpose::Operations { show_phi: true } => "phi_viewed",
                Purpose::Operations { show_phi: false } => "operations_viewed",
            },
            ReviewRequest::Operations { show_phi: true, .. } => "phi_viewed",
            ReviewRequest::Operations { .. } => "operations_viewed",
            ReviewRequest::AuditLog => "audit_log_read",
            ReviewRequest::PublicKey => "public_key_read",
            ReviewRequest::SignEvidence { .. } => "evidence_exported",
        }
    }

    /// The session it names, where the audit event names it whatever the outcome.
    fn audited_session(&self) -> Option<&str> {
        match self {
            ReviewRequest::Operations { session_id, .. } => Some(session_id),
            _ => None,
        }
    }
}

/// What a reviewer gets.
#[derive(Debug)]
pub enum ReviewAnswer {
    /// The public key.
    PublicKey([u8; 32]),
    /// An evidence bundle's `SHA256SUMS` signature.
    EvidenceSignature(EvidenceSignature),
    /// The sessions, newest first.
    Sessions(Vec<SessionSummary>),
    /// The audit log as it was when opened.
    AuditLog(Snapshot),
    /// A recording as it was when opened; for [`ReviewRequest::Operations`], the session's
    /// operations as JSON lines (`review::ops_json_lines`), streamed the same way.
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
    /// Operations asked of a recording that fails verification (a live session's, or a damaged
    /// one), not forced.
    #[error("recording {id} fails verification ({what}); its operations are listed once it verifies (a live session's when it ends) — use --force to list those of its verified records (audited)")]
    OpsUnverified {
        /// The session.
        id: String,
        /// The first problem.
        what: String,
    },
    /// The store could not be read.
    #[error("{0}")]
    Unreadable(String),
    /// A listing filter that cannot be read (an operation pattern); says how to write it.
    #[error("{0}")]
    BadFilter(String),
    /// The review could not be audited, so nothing is handed out.
    #[error("{0}")]
    AuditUnavailable(String),
    /// The answer needs what an encrypted recording holds and the gateway cannot open it (it
    /// holds no reviewer identity, or not one of its recipients); says how to read it on the
    /// reviewer's machine.
    #[error("{0}")]
    Encrypted(String),
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
            | ReviewRefusal::OpsUnverified { .. }
            | ReviewRefusal::BadFilter(_)
            | ReviewRefusal::Encrypted(_)
            | ReviewRefusal::Unreadable(_) => ErrorCode::BadRequest,
        }
    }
}

/// The review service.
#[derive(Clone)]
pub struct ReviewService {
    recordings: RecordingStore,
    /// The session index's search (SQLite's read only, so listings never wait on the gateway's
    /// writes; or the store several gateways share).
    search: Arc<dyn ward_store::session_query::SessionSearch>,
    key: Arc<dyn crate::signing::VerifyKeys>,
    audit: AuditLog,
    gate: Arc<ReviewGate>,
    clock: Arc<dyn Clock>,
    signer: Option<CurrentSigner>,
    /// `[review] identity_file`: the reviewer identity the gateway opens encrypted recordings
    /// with (the web console's player, operations, text search); none by default.
    identity: Option<IdentityKey>,
}

/// The gateway's current signing key, asked at each use (the key can rotate while it runs).
pub type CurrentSigner = Arc<dyn Fn() -> Arc<ward_recording::Signer> + Send + Sync>;

/// A `SHA256SUMS` signature by the gateway ([`ReviewRequest::SignEvidence`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvidenceSignature {
    /// The signing key's id (hex).
    pub key_id: String,
    /// The signing key (hex).
    pub public: String,
    /// Raw Ed25519 signature over the `SHA256SUMS` bytes (hex).
    pub sig: String,
}

/// The reviewer identity `[review] identity_file` names, read (mode 0600 checked) — or none.
/// Holding one means this gateway can read the recordings encrypted to it: it says so in its
/// log at start.
pub fn reviewer_identity(
    config: &ward_core::config::ReviewConfig,
) -> anyhow::Result<Option<IdentityKey>> {
    let Some(path) = &config.identity_file else {
        return Ok(None);
    };
    let key =
        IdentityKey::read(path).map_err(|e| anyhow::anyhow!("[review] identity_file: {e:#}"))?;
    tracing::warn!(
        identity_file = %path.display(),
        "the gateway holds a reviewer identity ([review] identity_file): it can read the recordings encrypted to it (the web console plays them); without it, only reviewers' own keys can"
    );
    Ok(Some(key))
}

/// What a review job hands back: the answer and its success event, or a refusal.
type JobResult = Result<(ReviewAnswer, Event), ReviewRefusal>;

impl ReviewService {
    /// Reviews of `recordings` (signed with `key`; the session index in `state_dir`), audited to
    /// `audit`, run on `gate`.
    pub fn new(
        recordings: RecordingStore,
        state_dir: PathBuf,
        key: impl crate::signing::VerifyKeys + 'static,
        audit: AuditLog,
        gate: Arc<ReviewGate>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ReviewService {
            recordings,
            search: Arc::new(ward_store::session_query::SqliteSearch::new(&state_dir)),
            key: Arc::new(key),
            audit,
            gate,
            clock,
            signer: None,
            identity: None,
        }
    }

    /// Search the session index through `search` (the gateway's store) instead of `state_dir`'s
    /// `ward.db`.
    pub fn with_search(
        mut self,
        search: Arc<dyn ward_store::session_query::SessionSearch>,
    ) -> Self {
        self.search = search;
        self
    }

    /// The key that signs evidence bundles ([`ReviewRequest::SignEvidence`]); without it, such
    /// requests are refused.
    pub fn with_signer(mut self, signer: CurrentSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Sign an evidence bundle's `SHA256SUMS` (blocking part): a well-formed `SHA256SUMS`
    /// (`ward_recording::evidence::parse_sums`) whose `recordings/*.wrec` lines are exactly the
    /// sessions named, each the SHA-256 of the recording stored here now. So a signed bundle
    /// holds this gateway's recordings as they are; the rest (manifest, slice, report) is the
    /// exporter's, who is named in the audit event with the digest of what was signed.
    fn sign_evidence_job(&self, base: Event, sessions: Vec<String>, sums: Vec<u8>) -> JobResult {
        use ward_recording::evidence as ev;
        let Some(current) = &self.signer else {
            return Err(ReviewRefusal::Unreadable(
                "this gateway does not sign evidence bundles".into(),
            ));
        };
        let listed = ev::parse_sums(&sums)
            .map_err(|e| ReviewRefusal::BadFilter(format!("not an evidence SHA256SUMS: {e}")))?;
        let mut recs: Vec<(&str, &[u8; 32])> = listed
            .iter()
            .filter_map(|(p, d)| {
                p.strip_prefix("recordings/")?
                    .strip_suffix(".wrec")
                    .map(|id| (id, d))
            })
            .collect();
        recs.sort();
        let mut named: Vec<&str> = sessions.iter().map(String::as_str).collect();
        named.sort();
        named.dedup();
        if named.is_empty() || recs.iter().map(|(id, _)| *id).ne(named.iter().copied()) {
            return Err(ReviewRefusal::BadFilter(
                "the SHA256SUMS to sign must list recordings/<id>.wrec for exactly the sessions named"
                    .into(),
            ));
        }
        for (id, digest) in recs {
            if !crate::recording_store::valid_id(id) {
                return Err(ReviewRefusal::BadSessionId(id.to_owned()));
            }
            let bytes = match self.recordings.read_all(id) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ReviewRefusal::NoRecording(id.to_owned()))
                }
                Err(e) => return Err(unreadable(id, &e)),
            };
            if ev::sha256(&bytes) != *digest {
                return Err(ReviewRefusal::BadFilter(format!(
                    "recordings/{id}.wrec in the SHA256SUMS is not the recording stored here (fetch it again)"
                )));
            }
        }
        let signer = current();
        let sig =
            ev::sign_sums(&signer, &sums).map_err(|e| ReviewRefusal::BadFilter(e.to_string()))?;
        let key_id = signer.key_id();
        let ev = base
            .detail("sessions", named)
            .detail("files", listed.len())
            .detail("sha256sums", hex::encode(ev::sha256(&sums)))
            .detail("key_id", key_id.clone());
        let answer = ReviewAnswer::EvidenceSignature(EvidenceSignature {
            key_id,
            public: hex::encode(signer.public_key()),
            sig: hex::encode(sig),
        });
        Ok((answer, ev))
    }

    /// The same service opening encrypted recordings with `identity` (`[review] identity_file`).
    pub fn with_identity(mut self, identity: Option<IdentityKey>) -> Self {
        self.identity = identity;
        self
    }

    /// The reviewer identity the gateway holds, if any: what the web console opens encrypted
    /// recordings with (each fetch audited by [`ReviewService::handle`]).
    pub fn identity(&self) -> Option<&IdentityKey> {
        self.identity.as_ref()
    }

    /// Answer `who`'s `request`, or refuse it; either way audited once. Nothing is handed out
    /// before its event is in the audit log.
    pub async fn handle(
        &self,
        who: &Reviewer<'_>,
        request: ReviewRequest,
    ) -> Result<ReviewAnswer, ReviewRefusal> {
        let now = self.clock.now();
        let (name, session) = (
            request.event(),
            request.audited_session().map(str::to_owned),
        );
        let event = |outcome: &str| {
            let ev = Event::new(name, outcome, now)
                .principal(who.identity)
                .source(who.source);
            match &session {
                Some(id) => ev.session(id.clone()),
                None => ev,
            }
        };
        if matches!(request, ReviewRequest::AuditLog) && may_review(who.principal) {
            // Hand out a log whose every line is covered by a signed checkpoint.
            self.audit.flush().await;
        }
        self.audited_job(who, event, move |me, base| me.job(base, request))
            .await
    }

    /// The blocking part (on the review pool): read, verify, list.
    fn job(&self, base: Event, request: ReviewRequest) -> JobResult {
        match request {
            ReviewRequest::PublicKey => Ok((ReviewAnswer::PublicKey(self.key.current()), base)),
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
            ReviewRequest::Operations {
                session_id,
                show_phi,
                force,
            } => self.operations(base, session_id, show_phi, force),
            ReviewRequest::SignEvidence { sessions, sums } => {
                self.sign_evidence_job(base, sessions, sums)
            }
        }
    }

    /// A session's operations from its recording (verified first; forced: its verified records
    /// only), patient data masked unless `show_phi`.
    fn operations(&self, base: Event, id: String, show_phi: bool, force: bool) -> JobResult {
        if !crate::recording_store::valid_id(&id) {
            return Err(ReviewRefusal::BadSessionId(id));
        }
        // Verified, then read again for the operations, one record at a time: a recording is
        // never held whole here (the rows are).
        let Snapshot { mut reader, len } = match self.recordings.open(&id) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReviewRefusal::NoRecording(id))
            }
            Err(e) => return Err(unreadable(&id, &e)),
        };
        let report = ward_recording::verify_read(
            std::io::BufReader::new((&mut reader).take(len)),
            &self.key,
        )
        .map_err(|e| unreadable(&id, &e))?;
        if !report.ok && !force {
            let what = report
                .first_error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "not sealed".into());
            return Err(ReviewRefusal::OpsUnverified { id, what });
        }
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| unreadable(&id, &e))?;
        // Forced: the verified records only, as a forced export holds.
        let verified = if report.ok {
            len
        } else {
            report.valid_prefix_len.min(len)
        };
        let rows = crate::review::operations_read(
            std::io::BufReader::new(reader.take(verified)),
            show_phi,
            self.identity.as_ref(),
        )
        .map_err(|e| match e {
            crate::review::ReadFailure::Io(e) => unreadable(&id, &e),
            crate::review::ReadFailure::Open(e) => ReviewRefusal::Encrypted(format!(
                "{}; or list its operations on your machine: `ward ops {id} --gateway HOST:PORT --identity-key FILE`",
                e.for_gateway()
            )),
        })?;
        let phi_fields = rows
            .iter()
            .flat_map(|r| &r.fields)
            .filter(|(k, _)| k.starts_with(ward_decode::PHI_PREFIX))
            .count();
        let body = crate::review::ops_json_lines(&rows);
        let ev = base
            .detail("operations", rows.len())
            .detail("show_phi", show_phi)
            .detail("phi_fields", phi_fields)
            .detail("verified", report.ok)
            .detail("forced", force)
            .severity(match (force && !report.ok, show_phi) {
                (true, _) => "high",
                (false, true) => "warning",
                (false, false) => "info",
            });
        let len = body.len() as u64;
        let answer = ReviewAnswer::Recording {
            session_id: id,
            snapshot: Snapshot {
                reader: Box::new(std::io::Cursor::new(body)),
                len,
            },
            verified: report.ok,
        };
        Ok((answer, ev))
    }

    fn list(&self, base: Event, filter: &Filter) -> JobResult {
        filter
            .op_pattern()
            .map_err(|e| ReviewRefusal::BadFilter(format!("{e:#}")))?;
        let index = match filter.grep {
            Some(_) => Vec::new(),
            None => self.search.all().unwrap_or_else(|e| {
                tracing::debug!(error = %e, "no session index: listing reads every recording");
                Vec::new()
            }),
        };
        let list = crate::review::list_in(
            &self.recordings,
            index,
            &self.key,
            filter,
            self.identity.as_ref(),
            &mut |_, _| {},
        )
        .map_err(|e| match e.downcast_ref::<crate::review::Unsearched>() {
            Some(u) => ReviewRefusal::Encrypted(u.for_gateway()),
            None => ReviewRefusal::Unreadable(format!("{e:#}")),
        })?;
        let ev = base
            .detail("sessions", list.len())
            .detail("grep", filter.grep.is_some())
            .detail("op", filter.op.clone());
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
        let encrypted = report
            .meta
            .as_ref()
            .is_some_and(ward_recording::sealed::is_sealed);
        let ev = base
            .session(id.clone())
            .detail("encrypted", encrypted)
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

/// What `ward audit verify --all` finds: every recording verified, the audit log verified, and
/// the two cross-checked (`review::cross_check`).
#[derive(Debug)]
pub struct AuditVerification {
    /// Each recording (sorted by id): its verification, or why it could not be read.
    pub recordings: Vec<(String, Result<VerifyReport, String>)>,
    /// The audit log's verification.
    pub audit_log: VerifyReport,
    /// Where recordings and the audit log disagree.
    pub findings: Vec<Finding>,
}

impl AuditVerification {
    /// Everything verifies and nothing disagrees (warnings allowed).
    pub fn ok(&self) -> bool {
        self.audit_log.ok
            && self
                .recordings
                .iter()
                .all(|(_, r)| r.as_ref().is_ok_and(|r| r.ok))
            && self
                .findings
                .iter()
                .all(|f| f.level != ward_recording::trail::Level::Problem)
    }
}

/// Told `(done, total)` as long work goes on (a progress bar on a terminal; nothing otherwise).
pub type Progress = Box<dyn FnMut(usize, usize) + Send>;

impl ReviewService {
    /// Verify every recording and the audit log and cross-check them, telling `progress` after
    /// each recording; audited once (`audit_verified`, with what it found). On the review pool.
    pub async fn verify_all(
        &self,
        who: &Reviewer<'_>,
        mut progress: Progress,
    ) -> Result<AuditVerification, ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new("audit_verified", outcome, now)
                .principal(who.identity)
                .source(who.source)
        };
        self.require_reviewer(who, event("denied"))?;
        self.audit.flush().await;
        let me = self.clone();
        let job = move || me.verify_job(&mut *progress);
        let done = self.gate.run(job).await.unwrap_or(Err(ReviewRefusal::Busy));
        match done {
            Ok(v) => {
                let failed = v
                    .recordings
                    .iter()
                    .filter(|(_, r)| !r.as_ref().is_ok_and(|r| r.ok));
                let ev = event(if v.ok() { "success" } else { "failure" })
                    .severity(if v.ok() { "info" } else { "high" })
                    .detail("recordings", v.recordings.len())
                    .detail("recordings_failed", failed.count())
                    .detail("audit_log_ok", v.audit_log.ok)
                    .detail("findings", v.findings.len());
                self.audit.emit(ev);
                self.audit
                    .commit()
                    .await
                    .map_err(|e| ReviewRefusal::AuditUnavailable(e.to_string()))?;
                Ok(v)
            }
            Err(refusal) => {
                self.audit
                    .emit(event("failure").reason(refusal.to_string()));
                Err(refusal)
            }
        }
    }

    /// The blocking part of [`ReviewService::verify_all`]: the log is read before the recordings
    /// and again after them, so sessions opening meanwhile are not reported missing.
    fn verify_job(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<AuditVerification, ReviewRefusal> {
        let read_log = || {
            std::fs::read(self.audit.path())
                .map_err(|e| ReviewRefusal::Unreadable(format!("reading the audit log: {e}")))
        };
        let log_before = read_log()?;
        let mut ids = self.recordings.list().map_err(|e| {
            ReviewRefusal::Unreadable(format!("listing {}: {e}", self.recordings.describe()))
        })?;
        ids.sort();
        let recordings =
            crate::review::verify_recordings(&self.recordings, &self.key, &ids, progress);
        let log_after = read_log()?;
        let verified: Vec<(String, VerifyReport)> = recordings
            .iter()
            .filter_map(|(id, r)| r.as_ref().ok().map(|r| (id.clone(), r.clone())))
            .collect();
        Ok(AuditVerification {
            findings: crate::review::cross_check(&log_before, &log_after, &verified),
            audit_log: ward_recording::audit::verify_audit(&log_after, &self.key),
            recordings,
        })
    }
}

/// A search of the session index (the web console's listing): one page of the sessions matching
/// its filters, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSearch {
    /// What the index filters on (SQL).
    pub query: ward_store::session_query::SessionQuery,
    /// An operation pattern, `protocol:glob` (as `ward sessions --op`).
    pub op: Option<String>,
    /// Text inside the recording (either direction): read from the candidates, newest first,
    /// within [`ward_store::session_query::ScanLimits`].
    pub grep: Option<String>,
    /// 1-based.
    pub page: u32,
    /// Page size (at most [`ward_store::session_query::MAX_PER_PAGE`]).
    pub per_page: u32,
}

/// The largest recording a web text search reads (a larger one is skipped and logged: `ward
/// sessions --grep` on the gateway host searches it).
pub const MAX_GREP_RECORDING: u64 = 256 << 20;

impl ReviewService {
    /// One page of the session search, from the session index ([`ward_store::session_query`]):
    /// its rows `stat`ed and any recording changed since it was indexed read and verified again,
    /// so no page shows `ok` for a recording that no longer verifies. Security and admin only;
    /// audited as a listing (`recording_listed`, like `ward sessions`). On the review pool.
    pub async fn search(
        &self,
        who: &Reviewer<'_>,
        search: SessionSearch,
    ) -> Result<ward_store::session_query::SessionPage, ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new("recording_listed", outcome, now)
                .principal(who.identity)
                .source(who.source)
        };
        self.audited_job(who, event, move |me, base| me.search_job(base, &search))
            .await
    }

    /// One session's summary (fresh, as [`ReviewService::search`] shows it; a recording the index
    /// lacks is read), audited as a listing naming the session.
    pub async fn session(
        &self,
        who: &Reviewer<'_>,
        id: String,
    ) -> Result<SessionSummary, ReviewRefusal> {
        let now = self.clock.now();
        let named = id.clone();
        let event = move |outcome: &str| {
            Event::new("recording_listed", outcome, now)
                .principal(who.identity)
                .source(who.source)
                .session(named.clone())
        };
        self.audited_job(who, event, move |me, base| {
            if !crate::recording_store::valid_id(&id) {
                return Err(ReviewRefusal::BadSessionId(id));
            }
            let row = me
                .search
                .one(&id)
                .map_err(|e| ReviewRefusal::Unreadable(format!("the session index: {e}")))?;
            let summary = match row {
                Some(row) => {
                    let mut reread = |id: &str| me.reread(id);
                    ward_store::session_query::freshen(&me.recordings, vec![row], &mut reread)
                        .pop()
                        .ok_or_else(|| ReviewRefusal::NoRecording(id.clone()))?
                }
                None => match me.recordings.stamp(&id) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(ReviewRefusal::NoRecording(id))
                    }
                    _ => me.reread(&id).map_err(ReviewRefusal::Unreadable)?,
                },
            };
            Ok((summary, base.detail("sessions", 1)))
        })
        .await
    }

    /// The overview's aggregates of the sessions started in `[since, until)` (Unix seconds), from
    /// the session index. Security and admin only; audited as a listing (`recording_listed`,
    /// `view: overview`).
    pub async fn aggregates(
        &self,
        who: &Reviewer<'_>,
        since: i64,
        until: i64,
    ) -> Result<ward_store::session_query::Aggregates, ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new("recording_listed", outcome, now)
                .principal(who.identity)
                .source(who.source)
                .detail("view", "overview")
        };
        self.audited_job(who, event, move |me, base| {
            let aggregates = me
                .search
                .aggregates(since, until)
                .map_err(|e| ReviewRefusal::Unreadable(format!("the session index: {e}")))?;
            Ok((
                aggregates,
                base.detail("since", since).detail("until", until),
            ))
        })
        .await
    }

    /// The audit log as it is now, every line covered by a signed checkpoint, and its chain's
    /// verification against the gateway's key (what `ward audit verify` checks of it). Security
    /// and admin only; audited as `audit_log_read`. On the review pool.
    pub async fn audit_log_verified(
        &self,
        who: &Reviewer<'_>,
    ) -> Result<(Vec<u8>, VerifyReport), ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new("audit_log_read", outcome, now)
                .principal(who.identity)
                .source(who.source)
        };
        if may_review(who.principal) {
            self.audit.flush().await;
        }
        self.audited_job(who, event, move |me, base| {
            let bytes = std::fs::read(me.audit.path())
                .map_err(|e| ReviewRefusal::Unreadable(format!("reading the audit log: {e}")))?;
            let report = ward_recording::audit::verify_audit(&bytes, &me.key);
            let ev = base.detail("verified", report.ok);
            Ok(((bytes, report), ev))
        })
        .await
    }

    /// Refuse who may not review (audited `denied`), run `job` on the review pool, and audit its
    /// outcome: nothing is handed out before its event is committed to the log.
    async fn audited_job<T: Send + 'static>(
        &self,
        who: &Reviewer<'_>,
        event: impl Fn(&str) -> Event,
        job: impl FnOnce(ReviewService, Event) -> Result<(T, Event), ReviewRefusal> + Send + 'static,
    ) -> Result<T, ReviewRefusal> {
        self.require_reviewer(who, event("denied"))?;
        let failure = event("failure");
        let (me, base) = (self.clone(), event("success"));
        let done = self
            .gate
            .run(move || job(me, base))
            .await
            .unwrap_or(Err(ReviewRefusal::Busy));
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

    /// A recording read and verified again: what `ward sessions` shows of it.
    fn reread(&self, id: &str) -> Result<SessionSummary, String> {
        let bytes = self
            .recordings
            .read_all(id)
            .map_err(|e| format!("reading recording {id}: {e}"))?;
        crate::review::summarise(&bytes, &self.key, &Filter::default(), id)
            .ok_or_else(|| format!("recording {id} has no summary"))
    }

    /// The blocking part of [`ReviewService::search`].
    fn search_job(
        &self,
        base: Event,
        search: &SessionSearch,
    ) -> Result<(ward_store::session_query::SessionPage, Event), ReviewRefusal> {
        use ward_store::session_query as q;
        let filter = Filter {
            grep: search.grep.clone().filter(|g| !g.is_empty()),
            op: search.op.clone(),
            ..Filter::default()
        };
        let pattern = filter
            .op_pattern()
            .map_err(|e| ReviewRefusal::BadFilter(format!("{e:#}")))?;
        let keep =
            pattern.map(|p| move |ops: &[String]| p.matches_any(ops.iter().map(String::as_str)));
        let keep = keep.as_ref().map(|k| k as &dyn Fn(&[String]) -> bool);
        let paging = q::paging(Some(search.page), Some(search.per_page));
        let unreadable = |e: ward_store::store::StoreError| {
            ReviewRefusal::Unreadable(format!("the session index: {e}"))
        };
        let reader = &*self.search;
        // Encrypted recordings the search had to read and could not open: it is refused rather
        // than answered without them.
        let mut unsearched: Vec<(String, crate::review::OpenError)> = Vec::new();
        let page = match &filter.grep {
            None => {
                let mut reread = |id: &str| self.reread(id);
                q::page(
                    reader,
                    &self.recordings,
                    &search.query,
                    keep,
                    paging,
                    &mut reread,
                )
                .map_err(unreadable)?
            }
            Some(_) => {
                // Each candidate read whole and verified: the summary is as fresh as it gets.
                let mut scan = |row: &crate::session_index::IndexedSession| {
                    let id = &row.summary.id;
                    let len = self
                        .recordings
                        .stamp(id)
                        .map_err(|e| format!("recording {id}: {e}"))?
                        .len;
                    if len > MAX_GREP_RECORDING {
                        return Err(format!(
                            "recording {id} is {len} bytes, more than a web search reads: search it with ward sessions --grep on the gateway host"
                        ));
                    }
                    let bytes = self
                        .recordings
                        .read_all(id)
                        .map_err(|e| format!("reading recording {id}: {e}"))?;
                    let read = bytes.len() as u64;
                    let found = crate::review::summarise_with(
                        &bytes,
                        &*self.key,
                        &filter,
                        id,
                        self.identity.as_ref(),
                    )
                    .unwrap_or_else(|e| {
                        unsearched.push((id.clone(), e));
                        None
                    });
                    Ok((found, read))
                };
                q::grep_page(
                    reader,
                    &search.query,
                    keep,
                    paging,
                    q::ScanLimits::default(),
                    &mut scan,
                )
                .map_err(unreadable)?
            }
        };
        if let Some((_, first)) = unsearched.first() {
            let u = crate::review::Unsearched {
                ids: unsearched.iter().map(|(id, _)| id.clone()).collect(),
                first: first.clone(),
            };
            return Err(ReviewRefusal::Encrypted(u.for_gateway()));
        }
        let ev = base
            .detail("sessions", page.sessions.len())
            .detail("total", page.total)
            .detail("page", page.page)
            .detail("grep", filter.grep.is_some())
            .detail("op", filter.op.clone());
        Ok((page, ev))
    }
}

/// Security and admin identities may review (the one role definition, [`super::Role`]).
fn may_review(p: &Principal) -> bool {
    super::Role::Security.held_by(p)
}

impl ReviewService {
    /// Refuses, and audits `denied`, anyone who may not review.
    fn require_reviewer(&self, who: &Reviewer<'_>, denied: Event) -> Result<(), ReviewRefusal> {
        if may_review(who.principal) {
            return Ok(());
        }
        self.audit.emit(
            denied
                .severity("warning")
                .reason("only security and admin identities may review recordings"),
        );
        Err(ReviewRefusal::NotPermitted(who.principal.to_string()))
    }
}

impl ReviewService {
    /// Start watching live session `session_id` (the web console's live watch): refused to
    /// anyone but security and admin identities and for a session without a recording; audited
    /// `session_watched` either way, once per watch. The recordings, to tail it from.
    pub async fn watch(
        &self,
        who: &Reviewer<'_>,
        session_id: &str,
    ) -> Result<RecordingStore, ReviewRefusal> {
        let now = self.clock.now();
        let event = |outcome: &str| {
            Event::new("session_watched", outcome, now)
                .principal(who.identity)
                .source(who.source)
                .session(session_id.to_string())
        };
        self.require_reviewer(who, event("denied"))?;
        let refusal = if !crate::recording_store::valid_id(session_id) {
            Some(ReviewRefusal::BadSessionId(session_id.to_string()))
        } else {
            match self.recordings.stamp(session_id) {
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(ReviewRefusal::NoRecording(session_id.to_string()))
                }
                Err(e) => Some(unreadable(session_id, &e)),
            }
        };
        if let Some(refusal) = refusal {
            self.audit
                .emit(event("failure").reason(refusal.to_string()));
            return Err(refusal);
        }
        self.audit.emit(event("success"));
        self.audit
            .commit()
            .await
            .map_err(|e| ReviewRefusal::AuditUnavailable(e.to_string()))?;
        Ok(self.recordings.clone())
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use time::macros::datetime;
    use ward_ca::Kind;
    use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};

    const GOOD: &str = "00000000000000aa";
    const BAD: &str = "00000000000000bb";

    fn identity(kind: Kind, name: &str) -> Identity {
        let t = datetime!(2026-11-27 12:00 UTC);
        Identity {
            trust_domain: "ward.test".into(),
            kind,
            name: name.into(),
            org: None,
            roles: Vec::new(),
            serial: "01".into(),
            not_before: t,
            not_after: t + time::Duration::days(1),
            uri: format!("spiffe://ward.test/{}/{name}", kind.as_str()),
        }
    }

    /// A sealed recording of `id` holding `typed`.
    fn record(store: &RecordingStore, signer: &Arc<Signer>, id: &str, typed: &[u8]) {
        record_with(store, signer, id, typed, &[]);
    }

    /// A sealed recording of `id` holding `typed`, then `events` (client → device).
    fn record_with(
        store: &RecordingStore,
        signer: &Arc<Signer>,
        id: &str,
        typed: &[u8],
        events: &[(&str, &[(&str, &str)])],
    ) {
        let meta = SessionMeta {
            session_id: id.into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump-12".into(),
            device_addr: "127.0.0.1:2323".into(),
            protocol: "raw".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 1_000,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut out = Vec::new();
        let mut enc =
            Encoder::start(&meta, signer.clone(), CheckpointPolicy::default(), &mut out).unwrap();
        enc.data(Direction::Up, 1, typed, &mut out);
        for (kind, fields) in events {
            let fields: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            enc.event(Direction::Up, 2, kind, &fields, &mut out);
        }
        let end = EndInfo {
            ended_unix_ms: 2_000,
            reason: "client closed".into(),
            bytes_up: typed.len() as u64,
            bytes_down: 0,
        };
        enc.finish(2, &end, &mut out);
        store.create(id).unwrap().write_all(&out).unwrap();
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        service: ReviewService,
        audit: AuditLog,
        sam: Identity,
        vendor: Identity,
        store: RecordingStore,
        signer: Arc<Signer>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(Signer::generate().unwrap().0);
        let clock: Arc<dyn Clock> =
            Arc::new(ward_ca::FixedClock::new(datetime!(2026-11-27 15:32:42 UTC)));
        let (audit, _writer) = AuditLog::open(dir.path(), signer.clone(), clock.clone()).unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        record(&store, &signer, GOOD, b"show config");
        record(&store, &signer, BAD, b"reboot");
        // One byte changed in the middle of the second: it no longer verifies.
        let path = crate::review::recordings_dir(dir.path()).join(format!("{BAD}.wrec"));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let service = ReviewService::new(
            store.clone(),
            dir.path().to_path_buf(),
            signer.public_key(),
            audit.clone(),
            Arc::new(ReviewGate::default()),
            clock,
        );
        Fixture {
            _dir: dir,
            service,
            audit,
            sam: identity(Kind::Security, "sam"),
            vendor: identity(Kind::Vendor, "jdoe"),
            store,
            signer,
        }
    }

    fn principal(id: &Identity) -> Principal {
        crate::gateway::principal_of(id)
    }

    async fn ask(
        f: &Fixture,
        who: &Identity,
        req: ReviewRequest,
    ) -> Result<ReviewAnswer, ReviewRefusal> {
        let p = principal(who);
        let reviewer = Reviewer {
            identity: who,
            principal: &p,
            source: ([127, 0, 0, 1], 4000).into(),
        };
        f.service.handle(&reviewer, req).await
    }

    fn fetch(id: &str, purpose: Purpose, force: bool) -> ReviewRequest {
        ReviewRequest::Recording {
            session_id: id.into(),
            purpose,
            force,
        }
    }

    /// The audit log's lines naming `event`.
    async fn audited(f: &Fixture, event: &str) -> Vec<String> {
        f.audit.commit().await.unwrap();
        let log = std::fs::read_to_string(f.audit.path()).unwrap();
        let needle = format!("\"{event}\"");
        log.lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn answers_are_typed_and_each_review_is_audited_once() {
        let f = fixture().await;
        let Ok(ReviewAnswer::Sessions(list)) =
            ask(&f, &f.sam, ReviewRequest::List(Filter::default())).await
        else {
            panic!("a listing")
        };
        let ids: Vec<_> = list
            .iter()
            .map(|s| (s.id.as_str(), s.verification.starts_with("FAILED")))
            .collect();
        assert_eq!(ids, [(GOOD, false), (BAD, true)]);
        let listed = audited(&f, "recording_listed").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            listed[0].contains("\"success\"") && listed[0].contains("\"sessions\":2"),
            "{}",
            listed[0]
        );

        let Ok(ReviewAnswer::Recording {
            snapshot, verified, ..
        }) = ask(&f, &f.sam, fetch(GOOD, Purpose::Export, false)).await
        else {
            panic!("a recording")
        };
        assert!(verified);
        let bytes = snapshot.read_all().unwrap();
        assert!(bytes.windows(11).any(|w| w == b"show config"));
        assert_eq!(audited(&f, "recording_exported").await.len(), 1);

        let Ok(ReviewAnswer::PublicKey(key)) = ask(&f, &f.sam, ReviewRequest::PublicKey).await
        else {
            panic!("the key")
        };
        assert!(ward_recording::verify(&bytes, &key).ok);
    }

    #[tokio::test]
    async fn refusals_are_typed_say_what_to_do_and_are_audited() {
        let f = fixture().await;
        let denied = ask(&f, &f.vendor, ReviewRequest::PublicKey)
            .await
            .unwrap_err();
        assert!(matches!(denied, ReviewRefusal::NotPermitted(_)), "{denied}");
        assert_eq!(denied.code(), ErrorCode::Forbidden);
        let lines = audited(&f, "public_key_read").await;
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("\"denied\""), "{}", lines[0]);

        let bad_id = ask(&f, &f.sam, fetch("../x", Purpose::Verify, false))
            .await
            .unwrap_err();
        assert_eq!(bad_id, ReviewRefusal::BadSessionId("../x".into()));
        let missing = ask(&f, &f.sam, fetch("0123", Purpose::Verify, false))
            .await
            .unwrap_err();
        assert_eq!(missing, ReviewRefusal::NoRecording("0123".into()));
        assert!(missing.to_string().contains("ward sessions"), "{missing}");
        assert_eq!(audited(&f, "recording_verified").await.len(), 2);

        let replay = ask(&f, &f.sam, fetch(BAD, Purpose::Replay, false))
            .await
            .unwrap_err();
        assert!(
            matches!(replay, ReviewRefusal::FailsVerification { .. }),
            "{replay}"
        );
        assert!(replay.to_string().contains("--force"), "{replay}");
        // Forced: handed out, and audited with severity high.
        let Ok(ReviewAnswer::Recording { verified, .. }) =
            ask(&f, &f.sam, fetch(BAD, Purpose::Replay, true)).await
        else {
            panic!("a forced replay")
        };
        assert!(!verified);
        let replays = audited(&f, "recording_replayed").await;
        assert_eq!(replays.len(), 2, "{replays:?}");
        assert!(replays[0].contains("\"failure\""), "{}", replays[0]);
        assert!(
            replays[1].contains("\"high\"") && replays[1].contains("\"forced\":true"),
            "{}",
            replays[1]
        );
    }

    #[test]
    fn frames_map_to_requests() {
        let r: ReviewRequest = frame::Review::Recording {
            session_id: GOOD.into(),
            purpose: "replay".into(),
            force: false,
        }
        .into();
        assert_eq!(r, fetch(GOOD, Purpose::Replay, false));
        assert_eq!(r.event(), "recording_replayed");
        let other: ReviewRequest = frame::Review::Recording {
            session_id: GOOD.into(),
            purpose: "anything".into(),
            force: false,
        }
        .into();
        assert_eq!(other.event(), "recording_verified");
    }

    #[tokio::test]
    async fn verify_all_reports_progress_and_the_tampered_recording() {
        let f = fixture().await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let progress: Progress = Box::new(move |done, total| s.lock().unwrap().push((done, total)));
        let p = principal(&f.sam);
        let who = Reviewer {
            identity: &f.sam,
            principal: &p,
            source: ([127, 0, 0, 1], 4000).into(),
        };
        let v = f.service.verify_all(&who, progress).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [(0, 2), (1, 2), (2, 2)]);
        let ids: Vec<_> = v
            .recordings
            .iter()
            .map(|(id, r)| (id.as_str(), r.as_ref().unwrap().ok))
            .collect();
        assert_eq!(ids, [(GOOD, true), (BAD, false)]);
        assert!(v.audit_log.ok, "{:?}", v.audit_log.first_error);
        assert!(!v.ok());
        let lines = audited(&f, "audit_verified").await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("\"recordings_failed\":1"), "{}", lines[0]);
        // Not for everyone.
        let p = principal(&f.vendor);
        let who = Reviewer {
            identity: &f.vendor,
            principal: &p,
            source: ([127, 0, 0, 1], 4000).into(),
        };
        let denied = f
            .service
            .verify_all(&who, Box::new(|_, _| {}))
            .await
            .unwrap_err();
        assert!(matches!(denied, ReviewRefusal::NotPermitted(_)));
    }

    const OPS: &str = "00000000000000cc";

    /// Security case 57 at the service: without a key the gateway hands out an encrypted
    /// recording only as stored, and refuses (saying how to read it on the reviewer's machine)
    /// what would need its contents; given `[review] identity_file` it answers.
    #[tokio::test]
    async fn encrypted_recordings_are_refused_saying_how_to_read_them_unless_the_gateway_holds_a_key(
    ) {
        use crate::unseal::tests::{identity, sealed_recording_signed};
        let f = fixture().await;
        let (text, to) = identity();
        let id = "00000000000000e1";
        let bytes = sealed_recording_signed(id, &to, b"show secrets", &f.signer);
        f.store.create(id).unwrap().write_all(&bytes).unwrap();

        let e = operations(&f, &f.sam, ops_request(id, false, false))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ReviewRefusal::Encrypted(m) if m.contains(&format!("ward ops {id}")) && m.contains("--identity-key")),
            "{e:?}"
        );
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let grep = Filter {
            grep: Some("secrets".into()),
            ..Filter::default()
        };
        let e = ask(&f, &f.sam, ReviewRequest::List(grep.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ReviewRefusal::Encrypted(m) if m.contains(id) && m.contains("--identity-key")),
            "{e:?}"
        );
        // A listing that does not search needs no key.
        match ask(&f, &f.sam, ReviewRequest::List(Filter::default()))
            .await
            .unwrap()
        {
            ReviewAnswer::Sessions(s) => assert!(s.iter().any(|s| s.id == id)),
            other => panic!("{other:?}"),
        }
        // The recording is handed out as stored: the reviewer decrypts it.
        match ask(&f, &f.sam, fetch(id, Purpose::Replay, false))
            .await
            .unwrap()
        {
            ReviewAnswer::Recording { snapshot, .. } => {
                assert_eq!(snapshot.read_all().unwrap(), bytes)
            }
            other => panic!("{other:?}"),
        }
        let replayed = audited(&f, "recording_replayed").await;
        assert!(
            replayed.iter().any(|l| l.contains("\"encrypted\":true")),
            "{replayed:?}"
        );
        // Fetched for a search or operations on the reviewer's machine: audited as such.
        ask(&f, &f.sam, fetch(id, Purpose::parse("search"), false))
            .await
            .unwrap();
        ask(
            &f,
            &f.sam,
            fetch(id, Purpose::parse("operations-phi"), false),
        )
        .await
        .unwrap();
        assert_eq!(audited(&f, "recording_searched").await.len(), 1);
        assert!(audited(&f, "phi_viewed")
            .await
            .iter()
            .any(|l| l.contains(id)));

        // Given a reviewer identity, the gateway reads it.
        let keyed = Fixture {
            service: f.service.clone().with_identity(Some(
                IdentityKey::from_text(text, "console-key.txt").unwrap(),
            )),
            ..f
        };
        let rows = operations(&keyed, &keyed.sam, ops_request(id, false, false))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        match ask(&keyed, &keyed.sam, ReviewRequest::List(grep))
            .await
            .unwrap()
        {
            ReviewAnswer::Sessions(s) => assert_eq!(s.len(), 1, "{s:?}"),
            other => panic!("{other:?}"),
        }
    }

    fn ops_request(id: &str, show_phi: bool, force: bool) -> ReviewRequest {
        ReviewRequest::Operations {
            session_id: id.into(),
            show_phi,
            force,
        }
    }

    async fn operations(
        f: &Fixture,
        who: &Identity,
        req: ReviewRequest,
    ) -> Result<Vec<crate::review::OpRow>, ReviewRefusal> {
        match ask(f, who, req).await? {
            ReviewAnswer::Recording { snapshot, .. } => {
                Ok(crate::review::ops_of_json_lines(&snapshot.read_all().unwrap()).unwrap())
            }
            other => panic!("operations, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn operations_mask_patient_data_unless_a_reviewer_asks_and_asking_is_audited() {
        let f = fixture().await;
        record_with(
            &f.store,
            &f.signer,
            OPS,
            b"x",
            &[
                (
                    "operation",
                    &[
                        ("protocol", "dicom"),
                        ("op", "C-STORE"),
                        ("sop_instance", "1.2"),
                        ("phi.patient_name", "DOE^JANE"),
                    ],
                ),
                ("credential_injected", &[("account", "service")]),
            ],
        );
        let rows = operations(&f, &f.sam, ops_request(OPS, false, false))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "only the decoders' events: {rows:?}");
        assert_eq!(rows[0].op, "C-STORE");
        assert_eq!(
            rows[0].fields,
            [
                ("sop_instance".to_string(), "1.2".to_string()),
                ("phi.patient_name".to_string(), "***".to_string())
            ]
        );
        let viewed = audited(&f, "operations_viewed").await;
        assert_eq!(viewed.len(), 1, "{viewed:?}");
        assert!(viewed[0].contains(OPS), "{}", viewed[0]);
        assert!(audited(&f, "phi_viewed").await.is_empty());

        let rows = operations(&f, &f.sam, ops_request(OPS, true, false))
            .await
            .unwrap();
        assert_eq!(rows[0].fields[1].1, "DOE^JANE");
        let phi = audited(&f, "phi_viewed").await;
        assert_eq!(phi.len(), 1, "{phi:?}");
        assert!(
            phi[0].contains("\"success\"")
                && phi[0].contains(OPS)
                && phi[0].contains("\"sam\"")
                && phi[0].contains("\"phi_fields\":1"),
            "{}",
            phi[0]
        );

        // A vendor: refused, and the ask audited with the session it named.
        let denied = operations(&f, &f.vendor, ops_request(OPS, true, false))
            .await
            .unwrap_err();
        assert!(matches!(denied, ReviewRefusal::NotPermitted(_)), "{denied}");
        let phi = audited(&f, "phi_viewed").await;
        assert_eq!(phi.len(), 2, "{phi:?}");
        assert!(
            phi[1].contains("\"denied\"") && phi[1].contains(OPS) && phi[1].contains("jdoe"),
            "{}",
            phi[1]
        );

        // A recording that fails verification: refused unless forced.
        let refused = operations(&f, &f.sam, ops_request(BAD, false, false))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ReviewRefusal::OpsUnverified { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("--force"), "{refused}");
        assert!(operations(&f, &f.sam, ops_request(BAD, false, true))
            .await
            .unwrap()
            .is_empty());
        let bad_id = operations(&f, &f.sam, ops_request("../x", false, false))
            .await
            .unwrap_err();
        assert_eq!(bad_id, ReviewRefusal::BadSessionId("../x".into()));
    }

    #[tokio::test]
    async fn listings_find_sessions_by_operation_and_refuse_a_pattern_that_is_not_one() {
        let f = fixture().await;
        record_with(
            &f.store,
            &f.signer,
            OPS,
            b"x",
            &[("operation", &[("protocol", "http"), ("op", "POST /config")])],
        );
        let list = |op: &str| {
            ReviewRequest::List(Filter {
                op: Some(op.into()),
                ..Filter::default()
            })
        };
        let Ok(ReviewAnswer::Sessions(found)) = ask(&f, &f.sam, list("http:POST")).await else {
            panic!("a listing")
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, OPS);
        assert_eq!(found[0].ops, ["http:POST /config"]);
        let Ok(ReviewAnswer::Sessions(none)) = ask(&f, &f.sam, list("http:GET")).await else {
            panic!("a listing")
        };
        assert!(none.is_empty());
        let bad = ask(&f, &f.sam, list("POST")).await.unwrap_err();
        assert!(matches!(bad, ReviewRefusal::BadFilter(_)), "{bad}");
        assert_eq!(bad.code(), ErrorCode::BadRequest);
        assert!(bad.to_string().contains("http:POST"), "{bad}");
    }

    #[test]
    fn operations_frames_map_to_requests_and_name_their_audit_event() {
        let r: ReviewRequest = frame::Review::Operations {
            session_id: GOOD.into(),
            show_phi: true,
            force: false,
        }
        .into();
        assert_eq!(r, ops_request(GOOD, true, false));
        assert_eq!(r.event(), "phi_viewed");
        assert_eq!(ops_request(GOOD, false, false).event(), "operations_viewed");
        // A listing without an operation pattern is sent as before the field existed.
        let text = serde_json::to_string(&frame::Review::ListSessions {
            principal: None,
            device: None,
            since_unix: None,
            until_unix: None,
            grep: None,
            operation: None,
        })
        .unwrap();
        assert!(!text.contains("operation"), "{text}");
        let back: frame::Review = serde_json::from_str(
            r#"{"op":"list_sessions","principal":null,"device":null,"since_unix":null,"until_unix":null,"grep":null}"#,
        )
        .unwrap();
        assert!(matches!(
            back,
            frame::Review::ListSessions {
                operation: None,
                ..
            }
        ));
    }
}
