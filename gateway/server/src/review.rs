//! What security teams do with recordings and the audit log: list and search sessions, verify,
//! replay, export. The same code serves `ward sessions|replay|export|audit` on the gateway host
//! (reading the state dir) and the gateway's `Review` requests (streamed to a remote reviewer).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use time::OffsetDateTime;
pub use ward_decode::summary::OpPattern;
use ward_decode::summary::OpsSummary;
use ward_recording::trail::Finding;
use ward_recording::{Direction, PublicKeys, Record, SealStatus, VerifyReport};

pub use ward_store::session_index::{rfc3339, SessionSummary};

use ward_store::recording_store::RecordingStore;

use crate::unseal::Opener;
pub use crate::unseal::{IdentityKey, OpenError};

/// Which sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Matches the principal's name, `org/name`, or the whole `kind org/name`.
    pub principal: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Started at or after (Unix seconds).
    pub since: Option<i64>,
    /// Started before (Unix seconds).
    pub until: Option<i64>,
    /// Text to find in the recorded bytes (either direction).
    pub grep: Option<String>,
    /// An operation pattern, `protocol:glob` (`dicom:C-STORE`, `http:POST`, `telnet:rate *`):
    /// sessions that did a matching operation ([`OpPattern`]).
    pub op: Option<String>,
}

impl Filter {
    /// The operation pattern, parsed; the error says how to write one.
    pub fn op_pattern(&self) -> anyhow::Result<Option<OpPattern>> {
        self.op
            .as_deref()
            .map(OpPattern::parse)
            .transpose()
            .map_err(anyhow::Error::msg)
    }
}

/// The recordings directory inside a state dir, where [`RecordingStore::local`] keeps them (for
/// tests and tools that look at the files; the gateway's code goes through the store).
pub fn recordings_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::recording_store::RECORDINGS_DIR)
}

/// Every public key of a state dir (`audit.keys`; `audit.pub` for one from before rotation).
pub use crate::signing::keyring;

/// The public key of a state dir's signing key.
pub fn public_key(state_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = state_dir.join(crate::AUDIT_PUB);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (has the gateway run with this state dir?)",
            path.display()
        )
    })?;
    parse_public_key(text.trim())
}

/// Parse a hex public key.
pub fn parse_public_key(hex_text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_text.trim()).context("public key is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("public key must be 32 bytes (64 hex digits)"))
}

/// Session ids are 16 lowercase hex digits; anything else is refused before touching the disk.
pub fn check_session_id(id: &str) -> anyhow::Result<()> {
    if !crate::recording_store::valid_id(id) {
        bail!("{id:?} is not a session id (see `ward sessions`)");
    }
    Ok(())
}

/// Read one recording of a state dir, whole.
pub fn read_recording(state_dir: &Path, id: &str) -> anyhow::Result<Vec<u8>> {
    check_session_id(id)?;
    let store = RecordingStore::local(state_dir);
    store
        .read_all(id)
        .with_context(|| format!("no recording for session {id} (in {})", store.describe()))
}

fn verification(report: &VerifyReport) -> String {
    match (&report.first_error, report.status) {
        // Intact so far but no end record: a live session, or one cut short (a crash the gateway
        // has not recovered yet, or a truncated file). `ward audit verify` treats it as a failure.
        (Some(e), SealStatus::Unsealed) if e.what.contains("without an end record") => {
            "open (no end record yet: live, or cut short)".into()
        }
        (Some(e), _) => format!("FAILED: {e}"),
        (None, SealStatus::Sealed) => "ok".into(),
        (None, SealStatus::Interrupted) => "interrupted".into(),
        (None, SealStatus::Unsealed) => "open".into(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Summarise one recording (verifying it), or `None` if it does not match `filter`. An encrypted
/// recording is read without its contents (a filter on them does not match it): see
/// [`summarise_with`].
pub fn summarise(
    bytes: &[u8],
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
    fallback_id: &str,
) -> Option<SessionSummary> {
    summarise_with(bytes, key, filter, fallback_id, None)
        .ok()
        .flatten()
}

/// Whether `filter` asks about what was recorded (text, operations), which an encrypted
/// recording answers only to an identity.
fn reads_contents(filter: &Filter) -> bool {
    filter.grep.is_some() || filter.op.is_some()
}

/// [`summarise`], opening an encrypted recording with `identity`. Without one (or with one that
/// does not open it) an encrypted recording is summarised from what is stored in plaintext (its
/// metadata, end record and verification; its operations unknown), and a filter on its contents
/// (`grep`, `op`) is an error: it cannot be answered, and the recording is not silently dropped.
pub fn summarise_with(
    bytes: &[u8],
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
    fallback_id: &str,
    identity: Option<&IdentityKey>,
) -> Result<Option<SessionSummary>, OpenError> {
    let report = ward_recording::verify(bytes, key);
    let meta = report.meta.clone();
    // An operation pattern is matched against every operation, whole (the summary keeps a
    // bounded set of names, cut): what a listing from the index falls back to.
    let pattern = filter.op_pattern().ok().flatten();
    let mut seen = Contents {
        grep: filter.grep.is_some(),
        ..Contents::default()
    };
    let mut opener = Opener::new(identity, fallback_id);
    for item in ward_recording::Reader::new(bytes) {
        let Ok((_, record)) = item else { break };
        if let Record::Sealed { t_ns, .. } = &record {
            seen.last_ns = seen.last_ns.max(*t_ns);
        }
        match opener.open(record) {
            Ok(records) => {
                for record in records {
                    seen.note(record, pattern.as_ref());
                }
            }
            Err(e) if reads_contents(filter) => return Err(e),
            Err(_) => seen.unopened = true,
        }
    }
    Ok(summary_of(&report, meta, filter, fallback_id, seen))
}

/// What [`summarise_with`] read of a recording's records.
#[derive(Default)]
struct Contents {
    up: u64,
    down: u64,
    last_ns: u64,
    /// Keep the bytes (`hay_*`) to search them.
    grep: bool,
    hay_up: Vec<u8>,
    hay_down: Vec<u8>,
    op_hit: bool,
    ops: OpsSummary,
    /// An encrypted part was not opened: the operations are unknown.
    unopened: bool,
}

impl Contents {
    fn note(&mut self, record: Record, pattern: Option<&OpPattern>) {
        if let Record::Event { kind, fields, .. } = &record {
            self.ops.note_event(kind, fields);
            if let (Some(p), false) = (pattern, self.op_hit) {
                self.op_hit =
                    ward_decode::summary::op_of_event(kind, fields).is_some_and(|o| p.matches(&o));
            }
        }
        if let Record::Data { dir, t_ns, payload } = record {
            self.last_ns = self.last_ns.max(t_ns);
            let (count, hay) = match dir {
                Direction::Up => (&mut self.up, &mut self.hay_up),
                Direction::Down => (&mut self.down, &mut self.hay_down),
            };
            *count += payload.len() as u64;
            if self.grep {
                hay.extend_from_slice(&payload);
            }
        }
    }
}

fn summary_of(
    report: &VerifyReport,
    meta: Option<ward_recording::SessionMeta>,
    filter: &Filter,
    fallback_id: &str,
    seen: Contents,
) -> Option<SessionSummary> {
    let Contents {
        up,
        down,
        last_ns,
        hay_up,
        hay_down,
        op_hit,
        ops,
        unopened,
        ..
    } = seen;
    let want_grep = filter.grep.as_ref().map(|g| g.as_bytes().to_vec());
    let (id, principal, serial, device, protocol, source, rule, start_ms, break_glass) = match &meta
    {
        Some(m) => {
            let who = crate::session_index::who(m);
            (
                m.session_id.clone(),
                who,
                m.cert_serial.clone(),
                m.device.clone(),
                m.protocol.clone(),
                m.source.clone(),
                m.rule.clone(),
                m.started_unix_ms,
                m.break_glass,
            )
        }
        None => (
            fallback_id.to_string(),
            "?".into(),
            "?".into(),
            "?".into(),
            "?".into(),
            "?".into(),
            "?".into(),
            0,
            false,
        ),
    };
    let start_unix = start_ms.div_euclid(1000);
    if let Some(p) = &filter.principal {
        let m = meta.as_ref();
        let name_ok = m.is_some_and(|m| {
            &m.principal_name == p
                || m.principal_org
                    .as_ref()
                    .is_some_and(|o| format!("{o}/{}", m.principal_name) == *p)
                || principal == *p
        });
        if !name_ok {
            return None;
        }
    }
    if filter.device.as_ref().is_some_and(|d| *d != device) {
        return None;
    }
    if filter.since.is_some_and(|s| start_unix < s) || filter.until.is_some_and(|u| start_unix >= u)
    {
        return None;
    }
    if let Some(g) = &want_grep {
        if !contains(&hay_up, g) && !contains(&hay_down, g) {
            return None;
        }
    }
    // An unparseable pattern matches nothing (`list_in` refuses it before reading anything).
    if filter.op.is_some() && !op_hit {
        return None;
    }
    let (end_reason, duration_s, bytes_up, bytes_down) = match &report.end {
        Some(end) => (
            end.reason.clone(),
            (end.ended_unix_ms - start_ms) as f64 / 1000.0,
            end.bytes_up,
            end.bytes_down,
        ),
        None => (
            if report.status == SealStatus::Interrupted {
                "interrupted".into()
            } else {
                "open".into()
            },
            last_ns as f64 / 1e9,
            up,
            down,
        ),
    };
    let start = rfc3339(start_unix);
    Some(SessionSummary {
        id,
        principal,
        serial,
        device,
        protocol,
        source,
        rule,
        start,
        start_unix,
        duration_s,
        bytes_up,
        bytes_down,
        end_reason,
        verification: verification(report),
        break_glass,
        ops: ops.ops.into_iter().collect(),
        undecodable: ops.undecodable,
        denied_ops: ops.denied,
        ops_truncated: ops.truncated,
        ops_unknown: unopened,
    })
}

/// The summary of a recording whose verification read its metadata and end record (what crash
/// recovery's scan indexes without holding the file): `None` without both. Its operations are
/// not known (the events were not read): listings read such a recording ([`list_in`]).
pub fn summary_of_ended(report: &VerifyReport) -> Option<SessionSummary> {
    let (m, end) = (report.meta.as_ref()?, report.end.as_ref()?);
    let start_unix = m.started_unix_ms.div_euclid(1000);
    Some(SessionSummary {
        id: m.session_id.clone(),
        principal: crate::session_index::who(m),
        serial: m.cert_serial.clone(),
        device: m.device.clone(),
        protocol: m.protocol.clone(),
        source: m.source.clone(),
        rule: m.rule.clone(),
        start: rfc3339(start_unix),
        start_unix,
        duration_s: (end.ended_unix_ms - m.started_unix_ms) as f64 / 1000.0,
        bytes_up: end.bytes_up,
        bytes_down: end.bytes_down,
        end_reason: end.reason.clone(),
        verification: verification(report),
        break_glass: m.break_glass,
        ops: Vec::new(),
        undecodable: None,
        denied_ops: 0,
        ops_truncated: false,
        ops_unknown: true,
    })
}

/// [`summary_of_ended`] with the recording's operations, read from `store` through a bounded
/// window (one record at a time: what crash recovery's scan indexes without holding the file).
/// If the events cannot be read, the summary says its operations are unknown and listings read
/// the recording.
pub fn summary_of_stored(
    store: &RecordingStore,
    id: &str,
    report: &VerifyReport,
) -> Option<SessionSummary> {
    let mut summary = summary_of_ended(report)?;
    let ops = store.open(id).map_err(ReadFailure::from).and_then(|snap| {
        ops_of_read(std::io::BufReader::new(std::io::Read::take(
            snap.reader,
            snap.len,
        )))
    });
    match ops {
        Ok(ops) => {
            summary.ops = ops.ops.into_iter().collect();
            summary.undecodable = ops.undecodable;
            summary.denied_ops = ops.denied;
            summary.ops_truncated = ops.truncated;
            summary.ops_unknown = false;
        }
        Err(e) => {
            tracing::debug!(session_id = %id, error = %e, "operations not indexed: listings read this recording");
        }
    }
    Some(summary)
}

/// Type codes of the records [`scan_records`] decodes (docs/recording-format.md; checked by a
/// test against the encoder): the metadata, events, and sealed records (which hold events).
const META_RECORD: u8 = 0x01;
const EVENT_RECORD: u8 = 0x07;
const SEALED_RECORD: u8 = 0x08;

/// Why a recording read one record at a time gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    /// Reading failed, or the bytes are not a recording.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An encrypted part could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Read a recording from `input` one record at a time, calling `f` with its metadata and each
/// event (those inside sealed records too, opened by `opener`); data records are skipped, never
/// held. Stops at a clean or torn end; an error for a recording that is not one, or for a sealed
/// record `opener` cannot open.
fn scan_records<R: std::io::Read>(
    mut input: R,
    opener: &mut Opener,
    mut f: impl FnMut(Record),
) -> Result<(), ReadFailure> {
    use std::io::{Error, ErrorKind, Read};
    let mut magic = [0u8; 8];
    match input.read_exact(&mut magic) {
        Ok(()) => {}
        // Nothing verified (a forced read), or not even a header: no records.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let mut record = Vec::new();
    loop {
        let mut header = [0u8; ward_recording::RECORD_HEADER_LEN];
        // A clean end between records is the end; a torn header too (the rest is not verified).
        let mut got = 0;
        while got < header.len() {
            match input
                .read(header.get_mut(got..).unwrap_or_default())
                .map_err(ReadFailure::Io)?
            {
                0 => return Ok(()),
                n => got += n,
            }
        }
        let [code, l0, l1, l2, l3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > ward_recording::MAX_RECORD_BODY {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("record body of {len} bytes"),
            )
            .into());
        }
        if code != EVENT_RECORD && code != META_RECORD && code != SEALED_RECORD {
            std::io::copy(&mut (&mut input).take(u64::from(len)), &mut std::io::sink())
                .map_err(ReadFailure::Io)?;
            continue;
        }
        // The record alone, behind the magic, read by the recording's own reader.
        record.clear();
        record.extend_from_slice(&magic);
        record.extend_from_slice(&header);
        let body_at = record.len();
        record.resize(body_at + len as usize, 0);
        match input.read_exact(record.get_mut(body_at..).unwrap_or_default()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if let Some(Ok((_, rec))) = ward_recording::Reader::new(&record).next() {
            for rec in opener.open(rec)? {
                if matches!(rec, Record::Meta(_) | Record::Event { .. }) {
                    f(rec);
                }
            }
        }
    }
}

/// The operations of a recording read from `input` one record at a time (data records are
/// skipped, never held): the same summary [`summarise`] makes of one in memory. An encrypted
/// recording's are not known here (an error).
pub fn ops_of_read<R: std::io::Read>(input: R) -> Result<OpsSummary, ReadFailure> {
    let mut ops = OpsSummary::default();
    scan_records(input, &mut Opener::new(None, ""), |rec| {
        if let Record::Event { kind, fields, .. } = rec {
            ops.note_event(&kind, &fields);
        }
    })?;
    Ok(ops)
}

/// Whether an indexed summary passes `filter` (all but `grep`, which needs the recorded bytes;
/// `op` already parsed).
fn matches(filter: &Filter, op: Option<&OpPattern>, s: &SessionSummary) -> bool {
    if let Some(p) = op {
        if !p.matches_any(s.ops.iter().map(String::as_str)) {
            return false;
        }
    }
    if let Some(p) = &filter.principal {
        // `kind org/name` or `kind name`: match the name, `org/name` or the whole.
        let rest = s.principal.split_once(' ').map_or("", |(_, r)| r);
        let name = rest.rsplit_once('/').map_or(rest, |(_, n)| n);
        if s.principal == "?" || (name != p && rest != p && s.principal != *p) {
            return false;
        }
    }
    !(filter.device.as_ref().is_some_and(|d| *d != s.device)
        || filter.since.is_some_and(|t| s.start_unix < t)
        || filter.until.is_some_and(|t| s.start_unix >= t))
}

/// List the sessions in a state dir, newest first: [`list_in`] over the state dir's recordings
/// and its session index (none with `grep`, which searches the recorded bytes). Encrypted
/// recordings are not opened ([`list_with`] opens them).
pub fn list(
    state_dir: &Path,
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
) -> anyhow::Result<Vec<SessionSummary>> {
    list_with(state_dir, key, filter, None, &mut |_, _| {})
}

/// [`list`], telling `progress(done, total)` how far it got (recordings looked at, of all).
pub fn list_with_progress(
    state_dir: &Path,
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<SessionSummary>> {
    list_with(state_dir, key, filter, None, progress)
}

/// [`list_with_progress`], opening encrypted recordings with `identity` where the filter reads
/// what they hold (`grep`, an `op` the index does not answer).
pub fn list_with(
    state_dir: &Path,
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
    identity: Option<&IdentityKey>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<SessionSummary>> {
    let index = match filter.grep {
        Some(_) => Vec::new(),
        None => {
            use ward_store::session_query::SessionSearch as _;
            ward_store::session_query::SqliteSearch::new(state_dir)
                .all()
                .unwrap_or_default()
        }
    };
    let store = RecordingStore::local(state_dir);
    list_in(&store, index, key, filter, identity, progress)
}

/// Encrypted recordings a search (`grep`, `op`) had to read and could not open: the search is
/// refused rather than answered without them ([`list_in`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} recording(s) could not be searched ({}): {first}", ids.len(), shown_ids(ids))]
pub struct Unsearched {
    /// The sessions whose recordings were not searched.
    pub ids: Vec<String>,
    /// Why the first was not (the others are alike).
    pub first: OpenError,
}

fn shown_ids(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

impl Unsearched {
    /// The message at the command line: search again with an identity.
    pub fn for_cli(&self) -> String {
        format!(
            "{} recording(s) could not be searched ({}): {}",
            self.ids.len(),
            shown_ids(&self.ids),
            self.first.for_cli()
        )
    }

    /// The message from the gateway: search on the reviewer's machine, with their identity.
    pub fn for_gateway(&self) -> String {
        format!(
            "{} recording(s) could not be searched ({}): they are encrypted at rest and this gateway holds no key to read them (by design: see docs/recording-format.md, section “Reviewing encrypted recordings”) — search on your machine with `ward sessions --grep TEXT --gateway HOST:PORT --identity-key FILE` (narrow it with --since, --device, --principal), or give the gateway a reviewer identity ([review] identity_file)",
            self.ids.len(),
            shown_ids(&self.ids),
        )
    }
}

/// List the sessions of `store`, newest first.
///
/// Sessions come from `index` (the session index's rows) where it has a row for the recording
/// whose blob is unchanged since it was sealed (its length and mtime, a `stat`; the blob is not
/// read) or that is still open; any other recording — not indexed, or changed since — is read and
/// verified. Only recordings present in the store are listed. `progress(done, total)` is told
/// after each recording. An encrypted recording a filter must read is opened with `identity`;
/// without one that opens it the listing fails with [`Unsearched`], naming them all.
pub fn list_in(
    store: &RecordingStore,
    index: Vec<crate::session_index::IndexedSession>,
    key: &(dyn PublicKeys + Sync),
    filter: &Filter,
    identity: Option<&IdentityKey>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<SessionSummary>> {
    let op = filter.op_pattern()?;
    let mut unsearched: Vec<(String, OpenError)> = Vec::new();
    let ids = store
        .list()
        .with_context(|| format!("listing {}", store.describe()))?;
    let total = ids.len();
    let mut index: std::collections::HashMap<String, crate::session_index::IndexedSession> = index
        .into_iter()
        .map(|row| (row.summary.id.clone(), row))
        .collect();
    let mut out = Vec::new();
    for (done, id) in ids.into_iter().enumerate() {
        progress(done, total);
        if let Some(row) = index.remove(&id) {
            // Only a sealed row vouches for its recording. A row still open (a live session, one
            // cut by a crash, or one whose close is being indexed right now) says nothing of
            // the bytes since: the recording is read, as it was before the index existed.
            // A row whose operations were not read from the recording (recovery indexed it from
            // its verification alone) does not vouch for them either.
            let current = match row.stamp {
                None => false,
                Some(_) if row.summary.ops_unknown => false,
                Some(stamp) => store.stamp(&id).ok() == Some(stamp),
            };
            // A search the row's bounded operations do not answer, when the session did more
            // than they hold: the recording answers it.
            let unanswered = op.is_some()
                && row.summary.ops_truncated
                && !matches(filter, op.as_ref(), &row.summary);
            if current && !unanswered {
                if matches(filter, op.as_ref(), &row.summary) {
                    out.push(row.summary);
                }
                continue;
            }
        }
        let bytes = store
            .read_all(&id)
            .with_context(|| format!("reading recording {id} in {}", store.describe()))?;
        match summarise_with(&bytes, key, filter, &id, identity) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(e) => unsearched.push((id, e)),
        }
    }
    progress(total, total);
    if let Some((_, first)) = unsearched.first() {
        return Err(anyhow::Error::new(Unsearched {
            ids: unsearched.iter().map(|(id, _)| id.clone()).collect(),
            first: first.clone(),
        }));
    }
    out.sort_by(|a, b| b.start_unix.cmp(&a.start_unix).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Verify each recording of `ids` in `store`, reading through a bounded window (a recording is
/// never held whole), telling `progress(done, total)` after each: what `ward audit verify --all`
/// does on the gateway host. A recording that cannot be read is reported as failed, not skipped.
pub fn verify_recordings(
    store: &RecordingStore,
    key: &(dyn PublicKeys + Sync),
    ids: &[String],
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<(String, Result<VerifyReport, String>)> {
    let total = ids.len();
    let mut out = Vec::with_capacity(total);
    for (done, id) in ids.iter().enumerate() {
        progress(done, total);
        let report = store
            .open(id)
            .and_then(|snap| {
                let reader = std::io::BufReader::new(std::io::Read::take(snap.reader, snap.len));
                ward_recording::verify_read(reader, key)
            })
            .map_err(|e| format!("recording {id} unreadable in {}: {e}", store.describe()));
        out.push((id.clone(), report));
    }
    progress(total, total);
    out
}

/// The cross-checks of `ward audit verify --all`: each recording (its listed id and its
/// verification) against the audit log's trail for its session, and the sessions the log opened
/// with a recording against the recordings listed (`ward_recording::trail`).
///
/// `log_before` is the audit log as read before the listing, `log_after` as read after the
/// recordings: a session opening in between then has its recording listed but its open not in
/// `log_before` (not reported missing), and every recording listed was opened before `log_after`
/// was read (a recording `log_after` does not open was never opened).
pub fn cross_check(
    log_before: &[u8],
    log_after: &[u8],
    recordings: &[(String, VerifyReport)],
) -> Vec<Finding> {
    let after = ward_recording::audit::session_trails(log_after);
    let mut out: Vec<Finding> = recordings
        .iter()
        .flat_map(|(id, report)| ward_recording::trail::check_recording(id, report, after.get(id)))
        .collect();
    let before = ward_recording::audit::session_trails(log_before);
    out.extend(ward_recording::trail::missing_recordings(&before, |id| {
        recordings.iter().any(|(r, _)| r == id)
    }));
    out
}

/// Print a listing as a table.
pub fn print_table(sessions: &[SessionSummary], out: &mut dyn Write) -> std::io::Result<()> {
    if sessions.is_empty() {
        return writeln!(out, "no recorded sessions match");
    }
    writeln!(
        out,
        "{:<16}  {:<24}  {:<12}  {:<20}  {:>8}  {:>10}  {:>10}  {:<24}  {:<32}  VERIFY",
        "SESSION", "WHO", "DEVICE", "START", "SECONDS", "UP", "DOWN", "END", "OPS"
    )?;
    for s in sessions {
        let flag = flags(s);
        writeln!(
            out,
            "{:<16}  {:<24}  {:<12}  {:<20}  {:>8.1}  {:>10}  {:>10}  {:<24}  {:<32}  {}{flag}",
            s.id,
            printable(&s.principal),
            printable(&s.device),
            s.start,
            s.duration_s,
            s.bytes_up,
            s.bytes_down,
            printable(&s.end_reason),
            ops_cell(s),
            s.verification
        )?;
    }
    Ok(())
}

/// The listing's OPS cell: the first operations and how many more (`--json` has them all).
pub fn ops_cell(s: &SessionSummary) -> String {
    const WIDTH: usize = 32;
    let mut cell = String::new();
    for (i, op) in s.ops.iter().enumerate() {
        let op = printable(op);
        let more = s.ops.len() - i - 1;
        let sep = if cell.is_empty() { "" } else { "," };
        let tail = if more > 0 {
            format!(" +{more}")
        } else {
            String::new()
        };
        if !cell.is_empty() && cell.len() + sep.len() + op.len() + tail.len() > WIDTH {
            cell.push_str(&format!(" +{}", s.ops.len() - i));
            return cell;
        }
        cell.push_str(sep);
        cell.push_str(&op);
    }
    if cell.is_empty() {
        cell.push('-');
    }
    cell
}

/// The listing's markers after the verification: emergency access, operations refused, a
/// stream that could not be decoded.
pub fn flags(s: &SessionSummary) -> String {
    let mut f = String::new();
    if s.break_glass {
        f.push_str(" [BREAK-GLASS]");
    }
    if s.denied_ops > 0 {
        f.push_str(&format!(" [{} DENIED]", s.denied_ops));
    }
    if let Some(u) = &s.undecodable {
        f.push_str(&format!(" [UNDECODABLE: {}]", printable(u)));
    }
    f
}

/// One row of `ward ops`: an operation, an answer, a refusal or where decoding gave up, as the
/// session's recording holds it (its event), patient data masked unless asked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpRow {
    /// Seconds into the session.
    pub t_s: f64,
    /// When, RFC 3339 UTC with milliseconds (empty without the recording's metadata).
    pub time: String,
    /// `up` (client → device: requests) or `down` (device → client: answers).
    pub dir: String,
    /// `operation`, `operation_result`, `operation_denied` or `undecodable`.
    pub kind: String,
    /// `dicom`, `hl7`, `http`, `telnet`.
    pub protocol: String,
    /// The operation (`C-STORE`, `ORM^O01`, `POST /config`, `rate 5`); empty for `undecodable`.
    pub op: String,
    /// The other fields, in the order recorded (`status`, `sop_instance`, `phi.patient_name`
    /// masked as `***`, `reason`, …).
    #[serde(with = "pairs_as_map")]
    pub fields: Vec<(String, String)>,
}

/// The operations of a recording (`bytes`, read as far as it reads), in order: every event of
/// the decoders' kinds, patient data masked unless `show_phi`; an encrypted recording's opened
/// with `identity` (without one that opens it, an error: never an empty list).
pub fn operations(
    bytes: &[u8],
    show_phi: bool,
    identity: Option<&IdentityKey>,
) -> Result<Vec<OpRow>, OpenError> {
    let mut out = Vec::new();
    // What reads before a problem is listed (a forced read of a damaged recording).
    match operations_into(bytes, show_phi, &mut Opener::new(identity, ""), &mut out) {
        Err(ReadFailure::Open(e)) => Err(e),
        Ok(()) | Err(ReadFailure::Io(_)) => Ok(out),
    }
}

/// [`operations`] of a recording read from `input` one record at a time (a stored recording is
/// never held whole: the rows are).
pub fn operations_read<R: std::io::Read>(
    input: R,
    show_phi: bool,
    identity: Option<&IdentityKey>,
) -> Result<Vec<OpRow>, ReadFailure> {
    let mut out = Vec::new();
    operations_into(input, show_phi, &mut Opener::new(identity, ""), &mut out)?;
    Ok(out)
}

fn operations_into<R: std::io::Read>(
    input: R,
    show_phi: bool,
    opener: &mut Opener,
    out: &mut Vec<OpRow>,
) -> Result<(), ReadFailure> {
    let mut start_ms = None;
    scan_records(input, opener, |record| {
        note_operation(record, show_phi, &mut start_ms, out)
    })
}

/// The operations of a recording's records (opened), as [`operations`] lists them.
pub fn operations_of(records: &[Record], show_phi: bool) -> Vec<OpRow> {
    let (mut start_ms, mut out) = (None, Vec::new());
    for record in records {
        if matches!(record, Record::Meta(_) | Record::Event { .. }) {
            note_operation(record.clone(), show_phi, &mut start_ms, &mut out);
        }
    }
    out
}

/// One record of a recording, read in order, into `out` if it is an operation (the metadata
/// gives the times).
fn note_operation(
    record: Record,
    show_phi: bool,
    start_ms: &mut Option<i64>,
    out: &mut Vec<OpRow>,
) {
    match record {
        Record::Meta(m) => *start_ms = Some(m.started_unix_ms),
        Record::Event {
            t_ns,
            dir,
            kind,
            fields,
        } if ward_decode::summary::is_operation_kind(&kind) => {
            let field = |k: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let (protocol, op) = (field("protocol"), field("op"));
            let rest: Vec<(String, String)> = fields
                .iter()
                .filter(|(k, _)| k != "protocol" && k != "op")
                .cloned()
                .collect();
            out.push(OpRow {
                t_s: t_ns as f64 / 1e9,
                time: start_ms.map_or_else(String::new, |s| {
                    rfc3339_ms(s.saturating_add(i64::try_from(t_ns / 1_000_000).unwrap_or(0)))
                }),
                dir: dir.as_str().to_string(),
                kind,
                protocol,
                op,
                fields: ward_decode::summary::mask_fields(&rest, show_phi),
            });
        }
        _ => {}
    }
}

/// RFC 3339 UTC with milliseconds of Unix milliseconds (empty if out of range).
fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Operations as JSON lines, one per line (`ward ops --json`, `ward export --format ops`, and
/// the wire form of a `Review::Operations` answer).
pub fn ops_json_lines(rows: &[OpRow]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        // Strings and a number: serialising cannot fail.
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// Operations from their JSON lines (a gateway's answer).
pub fn ops_of_json_lines(body: &[u8]) -> anyhow::Result<Vec<OpRow>> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).context("gateway sent a malformed operation line"))
        .collect()
}

/// Print operations as a table (peer text escaped).
pub fn print_ops(rows: &[OpRow], out: &mut dyn Write) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no operations recorded (the session's protocol is not decoded, or nothing was decoded)");
    }
    writeln!(
        out,
        "{:>9}  {:<4}  {:<9}  {:<7}  {:<28}  FIELDS",
        "T+SECONDS", "DIR", "KIND", "PROTO", "OPERATION"
    )?;
    for r in rows {
        let kind = match r.kind.as_str() {
            "operation" => "request",
            "operation_result" => "result",
            "operation_denied" => "DENIED",
            "undecodable" => "UNDECODED",
            other => other,
        };
        let fields = r
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={}", printable(v)))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            out,
            "{:>9.3}  {:<4}  {:<9}  {:<7}  {:<28}  {}",
            r.t_s,
            r.dir,
            kind,
            printable(&r.protocol),
            printable(&r.op),
            printable(&fields)
        )?;
    }
    Ok(())
}

/// `fields` as a JSON object whose keys keep their recorded order.
mod pairs_as_map {
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    out.push(pair);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs)
    }
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Playback speed multiplier (2.0 = twice as fast).
    pub speed: f64,
    /// Cap on any pause, in seconds.
    pub skip_idle: Option<f64>,
    /// Start this many seconds into the session.
    pub from: f64,
    /// Show the client's input too.
    pub input: bool,
    /// Do not sleep at all (for tests and piping).
    pub no_timing: bool,
    /// Pass the device's terminal output unfiltered (escape sequences that query or reconfigure
    /// the reviewer's terminal included). Off by default: see `ward_recording::terminal`.
    pub raw: bool,
}

/// Is this protocol a terminal (played as text) or not (hex dump)?
pub fn is_terminal(protocol: &str) -> bool {
    matches!(protocol, "telnet" | "raw")
}

/// Play a recording to `out`: terminal protocols as text with their timing (telnet negotiation
/// removed, and, unless `opts.raw`, escape sequences other than drawing ones dropped by
/// `TerminalGuard`), others as a timestamped hex/ASCII dump per direction. Returns how many
/// sequences or control characters the guard dropped.
pub async fn replay(
    bytes: &[u8],
    opts: &ReplayOptions,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    replay_with(bytes, opts, None, out).await
}

/// [`replay`], an encrypted recording opened with `identity` (without one: an error naming
/// `--identity-key`, before anything is played).
pub async fn replay_with(
    bytes: &[u8],
    opts: &ReplayOptions,
    identity: Option<&IdentityKey>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    let records = records_of(bytes, identity)?;
    replay_records(&records, opts, out).await
}

/// A recording's records, every encrypted one opened with `identity`; an error (for the command
/// line: it names `--identity-key`) if one cannot be, or if the recording does not read to its
/// end.
pub fn records_of(bytes: &[u8], identity: Option<&IdentityKey>) -> anyhow::Result<Vec<Record>> {
    match crate::unseal::open_prefix(bytes, identity, "") {
        Ok((records, None)) => Ok(records),
        Ok((_, Some(e))) => bail!("recording unreadable: {e}"),
        Err(e) => bail!("{}", e.for_cli()),
    }
}

/// [`records_of`] for a forced read (`--force`) of a recording that fails verification: its
/// records up to the first that cannot be read or the first encrypted record that does not
/// decrypt (altered: its authentication fails), with a warning saying where it stopped. A missing
/// or wrong key is still an error.
pub fn records_of_forced(
    bytes: &[u8],
    identity: Option<&IdentityKey>,
) -> anyhow::Result<(Vec<Record>, Option<String>)> {
    let mut opener = Opener::new(identity, "");
    let mut out = Vec::new();
    for item in ward_recording::Reader::new(bytes) {
        let record = match item {
            Ok((_, record)) => record,
            Err(e) => {
                let note = format!("ward: WARNING: recording unreadable from there on ({e}); what precedes it is shown");
                return Ok((out, Some(note)));
            }
        };
        match opener.open(record) {
            Ok(records) => out.extend(records),
            Err(e @ OpenError::Damaged { .. }) => {
                let note = format!("ward: WARNING: {e}; what precedes it is shown, nothing after");
                return Ok((out, Some(note)));
            }
            Err(e) => bail!("{}", e.for_cli()),
        }
    }
    Ok((out, None))
}

/// Play `records` (a recording's, opened) as [`replay`] does.
pub async fn replay_records(
    records: &[Record],
    opts: &ReplayOptions,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    let mut guard = ward_recording::terminal::TerminalGuard::new();
    let protocol = records
        .iter()
        .find_map(|r| match r {
            Record::Meta(m) => Some(m.protocol.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "raw".into());
    let terminal = is_terminal(&protocol);
    let mut filter_down = ward_recording::export::TelnetFilter::new();
    let mut filter_up = ward_recording::export::TelnetFilter::new();
    let from_ns = (opts.from.max(0.0) * 1e9) as u64;
    let mut clock_ns = from_ns;
    for record in records {
        let Record::Data { dir, t_ns, payload } = record else {
            continue;
        };
        let (dir, t_ns) = (*dir, *t_ns);
        if t_ns < from_ns {
            continue;
        }
        if !opts.no_timing && t_ns > clock_ns {
            let mut wait = (t_ns - clock_ns) as f64 / 1e9 / opts.speed.max(0.001);
            if let Some(cap) = opts.skip_idle {
                wait = wait.min(cap);
            }
            out.flush()?;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        clock_ns = clock_ns.max(t_ns);
        if terminal {
            match dir {
                Direction::Down => {
                    let text = filter_down.filter(payload);
                    if opts.raw {
                        out.write_all(&text)?;
                    } else {
                        out.write_all(&guard.filter(&text))?;
                    }
                }
                Direction::Up if opts.input => {
                    let text = filter_up.filter(payload);
                    // Input is shown in reverse video so it cannot be mistaken for device output.
                    out.write_all(b"\x1b[7m")?;
                    out.write_all(printable(&String::from_utf8_lossy(&text)).as_bytes())?;
                    out.write_all(b"\x1b[27m")?;
                }
                Direction::Up => {}
            }
        } else if dir == Direction::Down || opts.input {
            out.write_all(ward_recording::export::hexdump(t_ns, dir, payload).as_bytes())?;
        }
    }
    out.flush()?;
    Ok(guard.dropped())
}

/// The part of `bytes` that verifies: up to and including the last valid checkpoint before the
/// first problem (`report` is `bytes`' own verification). What a forced export holds.
pub fn verified_prefix<'a>(bytes: &'a [u8], report: &VerifyReport) -> &'a [u8] {
    let len = usize::try_from(report.valid_prefix_len).unwrap_or(usize::MAX);
    bytes.get(..len.min(bytes.len())).unwrap_or_default()
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// asciicast v2 (asciinema).
    Asciicast,
    /// pcap with synthesized TCP/IP headers (Wireshark, tshark).
    Pcap,
    /// Raw bytes, one file per direction (PATH.up, PATH.down).
    Raw,
    /// JSON lines, one record per line.
    Json,
    /// The session's operations as JSON lines (as `ward ops --json`), patient data masked
    /// unless --show-phi.
    Ops,
}

/// Export a recording to `out`.
pub fn export(bytes: &[u8], format: ExportFormat, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    export_opts(bytes, format, out, false)
}

/// [`export`]; with `raw`, an asciicast keeps every escape sequence the device sent.
pub fn export_opts(
    bytes: &[u8],
    format: ExportFormat,
    out: &Path,
    raw: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    export_opts_with(bytes, format, out, raw, None)
}

/// [`export_opts`], an encrypted recording opened with `identity` (without one: an error naming
/// `--identity-key`, before anything is written).
pub fn export_opts_with(
    bytes: &[u8],
    format: ExportFormat,
    out: &Path,
    raw: bool,
    identity: Option<&IdentityKey>,
) -> anyhow::Result<Vec<PathBuf>> {
    if format == ExportFormat::Raw && out == Path::new("-") {
        bail!("--format raw writes two files (PATH.up and PATH.down): give --out PATH, or use --format json or pcap for standard output")
    }
    match export_records(&records_of(bytes, identity)?, format, raw)? {
        ExportData::One(data) => {
            write_export(out, &data)?;
            Ok(vec![out.to_path_buf()])
        }
        ExportData::Raw { up, down } => {
            let (pu, pd) = (with_suffix(out, "up"), with_suffix(out, "down"));
            write_export(&pu, &up)?;
            write_export(&pd, &down)?;
            Ok(vec![pu, pd])
        }
    }
}

/// An export's bytes ([`export_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportData {
    /// One file.
    One(Vec<u8>),
    /// `--format raw`: the bytes of each direction.
    Raw {
        /// Client → device.
        up: Vec<u8>,
        /// Device → client.
        down: Vec<u8>,
    },
}

/// A recording exported to `format`, in memory (what [`export_opts`] writes; the web console's
/// downloads); with `raw`, an asciicast keeps every escape sequence the device sent.
pub fn export_data(bytes: &[u8], format: ExportFormat, raw: bool) -> anyhow::Result<ExportData> {
    export_records(&records_of(bytes, None)?, format, raw)
}

/// [`export_data`] of a recording's records (opened: `crate::unseal`).
pub fn export_records(
    records: &[Record],
    format: ExportFormat,
    raw: bool,
) -> anyhow::Result<ExportData> {
    let meta = records.iter().find_map(|r| match r {
        Record::Meta(m) => Some(m.clone()),
        _ => None,
    });
    match format {
        ExportFormat::Asciicast => Ok(ExportData::One(ward_recording::export::asciicast(
            records,
            &ward_recording::export::AsciicastOpts {
                raw,
                ..Default::default()
            },
        )?)),
        ExportFormat::Pcap => {
            let m = meta.context("recording has no metadata")?;
            let client: std::net::SocketAddr = m.source.parse().unwrap_or_else(|_| {
                tracing::warn!(source = %m.source, "client address unparseable; pcap uses 127.0.0.1:40000");
                ([127, 0, 0, 1], 40000).into()
            });
            // A device configured by host name has no address to put in an IP header.
            let device: std::net::SocketAddr = m.device_addr.parse().unwrap_or_else(|_| {
                tracing::warn!(device = %m.device_addr, "device address is not ip:port; pcap uses 127.0.0.2 with the same port");
                let port = m.device_addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
                ([127, 0, 0, 2], port).into()
            });
            Ok(ExportData::One(ward_recording::export::pcap(
                records, client, device,
            )?))
        }
        ExportFormat::Raw => {
            let (up, down) = ward_recording::export::raw(records);
            Ok(ExportData::Raw { up, down })
        }
        ExportFormat::Json => Ok(ExportData::One(ward_recording::export::json_lines(records))),
        // Patient data masked: unmasked operations come only from a gateway, audited.
        ExportFormat::Ops => Ok(ExportData::One(ops_json_lines(&operations_of(
            records, false,
        )))),
    }
}

/// Write an export to `path`. Exports hold everything typed (device passwords included): 0600,
/// and never over an existing file. `-` is standard output (`ward export … --out - | tshark -r -`).
pub fn write_export(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(data)
            .and_then(|()| stdout.flush())
            .context("writing the export to standard output");
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (remove it or choose another --out)",
                path.display()
            )
        })?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

/// Escape control characters (newlines, ANSI escapes) in text that came from peers, so a listing
/// or a replayed input line cannot drive the reviewer's terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_os_string();
    o.push(".");
    o.push(s);
    PathBuf::from(o)
}

/// Parse `--since`/`--until`: RFC 3339, `YYYY-MM-DD`, or a duration ago (`2h`, `7d`).
pub fn parse_time(text: &str, now: OffsetDateTime) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    if let Ok(d) = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    ) {
        return Ok(d.midnight().assume_utc().unix_timestamp());
    }
    if let Ok(ago) = ward_core::parse_duration(text) {
        return Ok((now - ago).unix_timestamp());
    }
    bail!("{text:?} is not a time: use RFC 3339 (2026-11-22T08:00:00Z), a date (2026-11-22) or a duration ago (2h, 7d)")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn summary(ops: &[&str]) -> SessionSummary {
        SessionSummary {
            id: "00000000000000aa".into(),
            principal: "vendor acme/jdoe".into(),
            serial: "02".into(),
            device: "pacs".into(),
            protocol: "dicom".into(),
            source: "127.0.0.1:1".into(),
            rule: "r".into(),
            start: rfc3339(0),
            start_unix: 0,
            duration_s: 1.0,
            bytes_up: 1,
            bytes_down: 1,
            end_reason: "completed".into(),
            verification: "ok".into(),
            break_glass: false,
            ops: ops.iter().map(|s| s.to_string()).collect(),
            undecodable: None,
            denied_ops: 0,
            ops_truncated: false,
            ops_unknown: false,
        }
    }

    #[test]
    fn the_ops_cell_stays_narrow_and_inert() {
        assert_eq!(ops_cell(&summary(&[])), "-");
        assert_eq!(
            ops_cell(&summary(&["dicom:C-ECHO", "dicom:C-STORE"])),
            "dicom:C-ECHO,dicom:C-STORE"
        );
        let many: Vec<String> = (0..20).map(|i| format!("telnet:cmd {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let cell = ops_cell(&summary(&refs));
        assert!(cell.len() <= 40, "{cell}");
        assert!(
            cell.starts_with("telnet:cmd 0,telnet:cmd 1") && cell.ends_with(" +18"),
            "{cell}"
        );
        // A device's bytes never drive the reviewer's terminal.
        let hostile = ops_cell(&summary(&["telnet:\u{1b}]0;owned\u{7}"]));
        assert!(!hostile.contains('\u{1b}'), "{hostile}");
        let mut s = summary(&[]);
        s.denied_ops = 2;
        s.undecodable = Some("http up at byte 0: \u{1b}[2J".into());
        let f = flags(&s);
        assert!(
            f.contains("[2 DENIED]") && f.contains("[UNDECODABLE: http up at byte 0"),
            "{f}"
        );
        assert!(!f.contains('\u{1b}'), "{f}");
    }

    #[test]
    fn an_op_filter_matches_indexed_rows_like_recordings() {
        let filter = Filter {
            op: Some("dicom:C-STORE".into()),
            ..Filter::default()
        };
        let p = filter.op_pattern().unwrap();
        assert!(matches(&filter, p.as_ref(), &summary(&["dicom:C-STORE"])));
        assert!(!matches(&filter, p.as_ref(), &summary(&["dicom:C-ECHO"])));
        let bad = Filter {
            op: Some("nope".into()),
            ..Filter::default()
        };
        assert!(bad.op_pattern().is_err());
    }

    #[test]
    fn reading_a_stored_recording_one_record_at_a_time_summarises_it_as_in_memory() {
        use ward_recording::{CheckpointPolicy, Encoder, EndInfo, SessionMeta, Signer};
        let signer = std::sync::Arc::new(Signer::generate().unwrap().0);
        let meta = SessionMeta {
            session_id: "00000000000000ab".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: "pacs".into(),
            device_addr: "127.0.0.1:104".into(),
            protocol: "dicom".into(),
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
        let pairs = |f: &[(&str, &str)]| -> Vec<(String, String)> {
            f.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        enc.data(Direction::Up, 1, &vec![7u8; 3 << 20], &mut out);
        enc.event(
            Direction::Up,
            2,
            "operation",
            &pairs(&[("protocol", "dicom"), ("op", "C-STORE")]),
            &mut out,
        );
        enc.data(Direction::Down, 3, b"ok", &mut out);
        enc.event(
            Direction::Up,
            4,
            "operation_denied",
            &pairs(&[("protocol", "dicom"), ("op", "C-MOVE"), ("reason", "no")]),
            &mut out,
        );
        enc.event(
            Direction::Up,
            5,
            "undecodable",
            &pairs(&[
                ("protocol", "dicom"),
                ("direction", "up"),
                ("offset", "9"),
                ("why", "bad PDU"),
            ]),
            &mut out,
        );
        let end = EndInfo {
            ended_unix_ms: 2_000,
            reason: "completed".into(),
            bytes_up: 3 << 20,
            bytes_down: 2,
        };
        enc.finish(6, &end, &mut out);
        let key = signer.public_key();
        let whole = summarise(&out, &key, &Filter::default(), "x").unwrap();
        let read = ops_of_read(out.as_slice()).unwrap();
        assert_eq!(whole.ops, ["dicom:C-MOVE", "dicom:C-STORE"]);
        assert_eq!(read.ops.iter().cloned().collect::<Vec<_>>(), whole.ops);
        assert_eq!(read.undecodable, whole.undecodable);
        assert_eq!(
            read.undecodable.as_deref(),
            Some("dicom up at byte 9: bad PDU")
        );
        assert_eq!((read.denied, whole.denied_ops), (1, 1));
        // And in the verification-only summary plus the scan (recovery's), the same row.
        let report = ward_recording::verify(&out, &key);
        let mut ended = summary_of_ended(&report).unwrap();
        assert!(ended.ops_unknown);
        ended.ops = read.ops.into_iter().collect();
        ended.undecodable = read.undecodable;
        ended.denied_ops = read.denied;
        ended.ops_truncated = read.truncated;
        ended.ops_unknown = false;
        assert_eq!(ended, whole);
        // The ops view, streamed or in memory: the decoders' events only, in order, with times.
        let rows = operations_read(out.as_slice(), false, None).unwrap();
        assert_eq!(rows, operations(&out, false, None).unwrap());
        let kinds: Vec<_> = rows.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["operation", "operation_denied", "undecodable"]);
        assert_eq!(rows[0].time, "1970-01-01T00:00:01.000Z");
        assert_eq!(
            (rows[0].dir.as_str(), rows[0].op.as_str()),
            ("up", "C-STORE")
        );
        assert_eq!(rows[1].fields, [("reason".to_string(), "no".to_string())]);
        // A torn tail ends the scan; garbage is an error, not a panic.
        assert!(ops_of_read(out.get(..out.len() - 3).unwrap()).is_ok());
        assert!(ops_of_read(&b"WARDREC\x02\x07\xff\xff\xff\xff"[..]).is_err());
    }

    #[tokio::test]
    async fn encrypted_recordings_list_without_a_key_and_open_only_with_one() {
        use crate::unseal::tests::{identity, sealed_recording};
        let (text, to) = identity();
        let key = IdentityKey::from_text(text, "reviewer.txt").unwrap();
        let id = "00000000000000ad";
        let bytes = sealed_recording(id, &to, b"show config\r\n");
        // Not the signer's key (the summaries say FAILED): what can be read does not depend on it.
        let pubkey = [0u8; 32];
        // Listed without a key: from what is stored in plaintext, operations unknown.
        let plain = summarise_with(&bytes, &pubkey, &Filter::default(), id, None)
            .unwrap()
            .unwrap();
        assert!(plain.ops_unknown && plain.ops.is_empty());
        assert_eq!((plain.bytes_up, plain.bytes_down), (13, 4));
        assert_eq!(plain.end_reason, "client closed");
        // With it, the operations are read.
        let opened = summarise_with(&bytes, &pubkey, &Filter::default(), id, Some(&key))
            .unwrap()
            .unwrap();
        assert!(!opened.ops_unknown);
        assert_eq!(opened.ops, ["telnet:rate 5"]);
        // A search without it is an error, never "no match"; with it, an answer.
        let grep = |text: &str| Filter {
            grep: Some(text.into()),
            ..Filter::default()
        };
        assert_eq!(
            summarise_with(&bytes, &pubkey, &grep("show"), id, None).unwrap_err(),
            OpenError::Encrypted { id: id.into() }
        );
        assert!(
            summarise_with(&bytes, &pubkey, &grep("show"), id, Some(&key))
                .unwrap()
                .is_some()
        );
        assert!(
            summarise_with(&bytes, &pubkey, &grep("reboot"), id, Some(&key))
                .unwrap()
                .is_none()
        );
        let op = Filter {
            op: Some("telnet:rate *".into()),
            ..Filter::default()
        };
        assert!(summarise_with(&bytes, &pubkey, &op, id, None).is_err());
        assert!(summarise_with(&bytes, &pubkey, &op, id, Some(&key))
            .unwrap()
            .is_some());
        // A listing that must search it: refused naming the session, or answered with the key.
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        store.create(id).unwrap().write_all(&bytes).unwrap();
        let e = list_in(
            &store,
            Vec::new(),
            &pubkey,
            &grep("show"),
            None,
            &mut |_, _| {},
        )
        .unwrap_err();
        let u = e.downcast_ref::<Unsearched>().unwrap();
        assert_eq!(u.ids, [id]);
        assert!(u.for_cli().contains("--identity-key"), "{}", u.for_cli());
        assert!(
            u.for_gateway()
                .contains("ward sessions --grep TEXT --gateway HOST:PORT --identity-key FILE"),
            "{}",
            u.for_gateway()
        );
        let found = list_in(
            &store,
            Vec::new(),
            &pubkey,
            &grep("show"),
            Some(&key),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(found.len(), 1);
        // Listing without a search needs no key.
        assert_eq!(
            list_in(
                &store,
                Vec::new(),
                &pubkey,
                &Filter::default(),
                None,
                &mut |_, _| {}
            )
            .unwrap()
            .len(),
            1
        );
        // Replay, exports and operations: the key opens them; without it an error naming it.
        let opts = ReplayOptions {
            speed: 1.0,
            skip_idle: None,
            from: 0.0,
            input: true,
            no_timing: true,
            raw: true,
        };
        let mut shown = Vec::new();
        let e = replay_with(&bytes, &opts, None, &mut shown)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--identity-key"), "{e}");
        assert!(shown.is_empty(), "nothing played without the key");
        replay_with(&bytes, &opts, Some(&key), &mut shown)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&shown).contains("show config"));
        assert!(export_data(&bytes, ExportFormat::Json, false).is_err());
        let records = records_of(&bytes, Some(&key)).unwrap();
        match export_records(&records, ExportFormat::Raw, false).unwrap() {
            ExportData::Raw { up, down } => {
                assert_eq!(
                    (up.as_slice(), down.as_slice()),
                    (&b"show config\r\n"[..], &b"ok\r\n"[..])
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(operations(&bytes, false, None).is_err());
        assert_eq!(operations(&bytes, false, Some(&key)).unwrap().len(), 1);
        // A ciphertext byte altered: opening fails naming it; a forced read stops there, saying
        // so; without a key even a forced read is refused.
        let mut altered = bytes.clone();
        let last_sealed = ward_recording::Reader::new(&bytes)
            .filter_map(|r| match r {
                Ok((at, Record::Sealed { .. })) => Some(at as usize),
                _ => None,
            })
            .last()
            .unwrap();
        altered[last_sealed + 5 + 8 + 16 + 2] ^= 1;
        let e = records_of(&altered, Some(&key)).unwrap_err();
        assert!(e.to_string().contains("cannot be opened"), "{e}");
        let (shown, note) = records_of_forced(&altered, Some(&key)).unwrap();
        assert_eq!(ward_recording::export::raw(&shown).0, b"show config\r\n");
        assert!(note.unwrap().contains("nothing after"));
        assert!(records_of_forced(&altered, None).is_err());
        assert!(matches!(
            operations_read(bytes.as_slice(), false, None),
            Err(ReadFailure::Open(OpenError::Encrypted { .. }))
        ));
        assert_eq!(
            operations_read(bytes.as_slice(), false, Some(&key))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_search_the_bounded_index_cannot_answer_reads_the_recording() {
        use ward_recording::{CheckpointPolicy, Encoder, EndInfo, SessionMeta, Signer};
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        let signer = std::sync::Arc::new(Signer::generate().unwrap().0);
        let id = "00000000000000ac";
        let meta = SessionMeta {
            session_id: id.into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump".into(),
            device_addr: "127.0.0.1:23".into(),
            protocol: "telnet".into(),
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
        // More distinct commands than the index keeps; the last one is the one searched for.
        for i in 0..300 {
            let fields = vec![
                ("protocol".to_string(), "telnet".to_string()),
                ("op".to_string(), format!("cmd {i:03}")),
            ];
            enc.event(Direction::Up, i, "operation", &fields, &mut out);
        }
        let end = EndInfo {
            ended_unix_ms: 2_000,
            reason: "completed".into(),
            bytes_up: 0,
            bytes_down: 0,
        };
        enc.finish(400, &end, &mut out);
        store.create(id).unwrap().write_all(&out).unwrap();
        let key = signer.public_key();
        let summary = summarise(&out, &key, &Filter::default(), id).unwrap();
        assert_eq!(summary.ops.len(), ward_decode::summary::MAX_INDEXED_OPS);
        assert!(summary.ops_truncated);
        let row = crate::session_index::IndexedSession {
            start_ms: 1_000,
            stamp: Some(store.stamp(id).unwrap()),
            summary,
        };
        let search = |pattern: &str, row: &crate::session_index::IndexedSession| {
            let filter = Filter {
                op: Some(pattern.into()),
                ..Filter::default()
            };
            list_in(
                &store,
                vec![row.clone()],
                &key,
                &filter,
                None,
                &mut |_, _| {},
            )
            .unwrap()
            .len()
        };
        assert_eq!(search("telnet:cmd 299", &row), 1, "found in the recording");
        assert_eq!(search("telnet:cmd 000", &row), 1, "found in the index");
        assert_eq!(search("telnet:reboot", &row), 0);
        // The row is what a listing otherwise trusts: without the mark it answers alone.
        let mut trusted = row.clone();
        trusted.summary.ops_truncated = false;
        assert_eq!(search("telnet:cmd 299", &trusted), 0);
    }
}
