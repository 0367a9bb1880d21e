//! Verification of recordings, and sealing of recordings left open by a crash.
//!
//! [`verify()`] walks the records once, recomputing the hash chain, and checks every checkpoint's
//! signature (with the gateway key given), chain value and position. It stops checking at the
//! first problem and names it: the record ordinal, its byte offset and what is wrong.

use crate::format::{
    checkpoint_message, code, decode, encode_interrupted, read_u64, CheckpointBody, Direction,
    EndInfo, Raw, Record, SessionMeta,
};
use crate::keyring::PublicKeys;
use crate::signer::{sha256_parts, verify_sig, Signer};
use crate::stream::{Source, Window};
use crate::{ReadError, RecError};

/// Whether a recording was closed and signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealStatus {
    /// Ends with an end record covered by a valid final checkpoint.
    Sealed,
    /// Ends with an interrupted record (crash recovery) covered by a valid final checkpoint.
    Interrupted,
    /// No signed end: still being written, cut, or crashed and not yet recovered.
    Unsealed,
}

impl std::fmt::Display for SealStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealStatus::Sealed => "sealed",
            SealStatus::Interrupted => "interrupted",
            SealStatus::Unsealed => "unsealed",
        })
    }
}

/// What a [`VerifyError`] counts: records of a recording, or lines of an audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorUnit {
    /// `record` is a record ordinal (0 = the meta record).
    Record,
    /// `record` is a 1-based line number.
    Line,
}

/// The first problem verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Record ordinal (recordings, 0-based) or line number (audit logs, 1-based).
    pub record: u64,
    /// Byte offset of that record or line.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// Whether `record` counts records or lines.
    pub unit: ErrorUnit,
}

impl VerifyError {
    pub(crate) fn record(record: u64, offset: u64, what: impl Into<String>) -> Self {
        VerifyError {
            record,
            offset,
            what: what.into(),
            unit: ErrorUnit::Record,
        }
    }
    pub(crate) fn line(line: u64, offset: u64, what: impl Into<String>) -> Self {
        VerifyError {
            record: line,
            offset,
            what: what.into(),
            unit: ErrorUnit::Line,
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            ErrorUnit::Record => {
                write!(
                    f,
                    "record {} at byte {}: {}",
                    self.record, self.offset, self.what
                )
            }
            ErrorUnit::Line => write!(
                f,
                "line {} at byte {}: {}",
                self.record, self.offset, self.what
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The outcome of [`verify`] (and of [`crate::audit::verify_audit`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// No problem found, and the recording is sealed (end or interrupted) under a valid final
    /// checkpoint.
    pub ok: bool,
    /// Records (lines) read, of every type, up to the first unreadable one.
    pub records: u64,
    /// Records (lines) up to and including the last valid checkpoint before any problem.
    pub verified_records: u64,
    /// Whether it was closed and signed.
    pub status: SealStatus,
    /// The session metadata (recordings).
    pub meta: Option<SessionMeta>,
    /// How the session ended, if an end record was read (recordings).
    pub end: Option<EndInfo>,
    /// The first problem, if any.
    pub first_error: Option<VerifyError>,
    /// Bytes up to and including the last valid checkpoint before any problem.
    pub valid_prefix_len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Terminal {
    End,
    Interrupted,
}

impl Terminal {
    fn name(self) -> &'static str {
        match self {
            Terminal::End => "end",
            Terminal::Interrupted => "interrupted",
        }
    }
}

/// Chain state after some prefix of the records.
#[derive(Clone, Debug, Default)]
struct State {
    chain: [u8; 32],
    /// Ordinal of the next record.
    next_index: u64,
    /// End of the prefix.
    offset: usize,
    /// The end/interrupted record seen, with its ordinal.
    terminal: Option<(Terminal, u64)>,
    /// Largest time seen.
    last_t: u64,
    /// Ordinal of the last valid checkpoint.
    last_cp: Option<u64>,
    /// Non-checkpoint records since it.
    since_cp: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// Magic or meta record unusable.
    Header,
    /// A record could not be read (torn tail, garbage).
    Parse,
    /// A record was read but does not verify.
    Integrity,
    /// Input ends without a final checkpoint.
    Tail,
}

#[derive(Debug, Default)]
struct Walk {
    meta: Option<SessionMeta>,
    end: Option<EndInfo>,
    records: u64,
    error: Option<(VerifyError, Fail)>,
    /// State after the last record accepted (before the first problem).
    cur: State,
    /// State at the last valid checkpoint.
    cp: Option<State>,
    /// The last valid checkpoint covers an end/interrupted record.
    final_ok: bool,
}

/// Like [`decode`], without copying data payloads (the walk hashes the raw bytes instead).
fn decode_light(raw: &Raw<'_>) -> Result<Record, ReadError> {
    let dir = match raw.code {
        code::DATA_UP => Direction::Up,
        code::DATA_DOWN => Direction::Down,
        code::SEALED => {
            return Ok(Record::Sealed {
                t_ns: read_u64(raw.body, 0),
                body: Vec::new(),
            })
        }
        _ => return decode(raw),
    };
    Ok(Record::Data {
        dir,
        t_ns: read_u64(raw.body, 0),
        payload: Vec::new(),
    })
}

fn walk<S: Source, K: PublicKeys + ?Sized>(src: &mut S, keys: &K) -> Walk {
    let mut w = Walk::default();
    let header_fail = |w: &mut Walk, record: u64, offset: u64, what: String| {
        w.error = Some((VerifyError::record(record, offset, what), Fail::Header));
    };
    let (start, magic) = match src.magic() {
        Ok(p) => p,
        Err(e) => {
            header_fail(&mut w, 0, 0, e.what());
            return w;
        }
    };
    let raw = match src.raw(start, 0) {
        Ok(r) => r,
        Err(e) => {
            header_fail(&mut w, e.record(), e.offset(), e.what());
            return w;
        }
    };
    let meta = match decode(&raw) {
        Ok(Record::Meta(m)) => m,
        Ok(_) => {
            let what = format!(
                "record 0 must be the meta record, found type 0x{:02x}",
                raw.code
            );
            header_fail(&mut w, 0, start as u64, what);
            return w;
        }
        Err(e) => {
            header_fail(&mut w, e.record(), e.offset(), e.what());
            return w;
        }
    };
    w.records = 1;
    w.cur = State {
        chain: sha256_parts(&[magic, raw.bytes]),
        next_index: 1,
        offset: start + raw.bytes.len(),
        since_cp: 1,
        ..State::default()
    };
    // An encrypted recording holds its data and events only in sealed records; a plain one none.
    let sealed = crate::sealed::is_sealed(&meta);
    if let Err(what) = crate::sealed::check_meta(&meta) {
        w.error = Some((VerifyError::record(0, start as u64, what), Fail::Integrity));
    }
    let mut pos = w.cur.offset;
    let mut index = 1u64;
    while src.more(pos) {
        let decoded = src
            .raw(pos, index)
            .and_then(|raw| decode_light(&raw).map(|r| (raw, r)));
        let (raw, rec) = match decoded {
            Ok(x) => x,
            Err(e) => {
                if w.error.is_none() {
                    w.error = Some((
                        VerifyError::record(e.record(), e.offset(), e.what()),
                        Fail::Parse,
                    ));
                }
                break;
            }
        };
        w.records += 1;
        pos += raw.bytes.len();
        index += 1;
        if let (Record::End { info, .. }, None) = (&rec, &w.end) {
            w.end = Some(info.clone());
        }
        if w.error.is_some() {
            continue; // keep counting records, stop checking
        }
        let fail = |what: String| {
            Some((
                VerifyError::record(raw.index, raw.offset as u64, what),
                Fail::Integrity,
            ))
        };
        if w.final_ok {
            w.error = fail("record after the final checkpoint (appended)".into());
            continue;
        }
        let cur = &mut w.cur;
        match rec {
            Record::Meta(_) => w.error = fail("a second meta record".into()),
            Record::Data { .. } | Record::Event { .. } if sealed => {
                w.error = fail("plaintext data record in an encrypted recording".into());
            }
            Record::Sealed { .. } if !sealed => {
                w.error = fail("sealed record in a recording without recipients".into());
            }
            Record::Data { .. }
            | Record::Event { .. }
            | Record::Sealed { .. }
            | Record::End { .. }
            | Record::Interrupted { .. } => {
                if let Some((t, at)) = cur.terminal {
                    w.error = fail(format!(
                        "record after the {} record {at} (appended)",
                        t.name()
                    ));
                    continue;
                }
                let t = match &rec {
                    Record::Data { t_ns, .. }
                    | Record::Event { t_ns, .. }
                    | Record::Sealed { t_ns, .. } => *t_ns,
                    Record::End { t_ns, .. } => {
                        cur.terminal = Some((Terminal::End, raw.index));
                        *t_ns
                    }
                    Record::Interrupted { t_ns, .. } => {
                        cur.terminal = Some((Terminal::Interrupted, raw.index));
                        *t_ns
                    }
                    _ => 0,
                };
                cur.chain = sha256_parts(&[&cur.chain, raw.bytes]);
                cur.next_index = index;
                cur.offset = pos;
                cur.last_t = cur.last_t.max(t);
                cur.since_cp += 1;
            }
            Record::Checkpoint { .. } => {
                let Some(cp) = CheckpointBody::parse(raw.body) else {
                    w.error = fail("checkpoint body has the wrong length".into());
                    continue;
                };
                let msg =
                    checkpoint_message(&meta.session_id, cp.index, cp.t_ns, &cp.key_id, &cp.chain);
                let first = cur.last_cp.map_or(1, |i| i + 1);
                let last = raw.index.saturating_sub(1);
                let public = keys.public_for(&cp.key_id);
                if !public.is_some_and(|pk| verify_sig(&pk, &msg, &cp.sig)) {
                    w.error = fail(match public {
                        None => keys.unknown_key(&cp.key_id),
                        Some(_) => format!(
                            "signature does not verify with the gateway key {} (checkpoint altered, or copied from another recording)",
                            hex::encode(cp.key_id)
                        ),
                    });
                } else if cp.chain != cur.chain {
                    w.error = fail(format!(
                        "chain mismatch at checkpoint (record deleted, reordered or altered among records {first}..{last})"
                    ));
                } else if cp.index != raw.index {
                    w.error = fail(format!(
                        "checkpoint index {} does not match its position {} (record deleted or inserted)",
                        cp.index, raw.index
                    ));
                } else {
                    cur.next_index = index;
                    cur.offset = pos;
                    cur.last_t = cur.last_t.max(cp.t_ns);
                    cur.last_cp = Some(raw.index);
                    cur.since_cp = 0;
                    w.final_ok = cur.terminal.is_some();
                    w.cp = Some(cur.clone());
                }
            }
        }
    }
    if w.error.is_none() && !w.final_ok {
        let what = match w.cur.terminal {
            None => format!(
                "recording ends after record {} without an end record (truncated or interrupted)",
                index.saturating_sub(1)
            ),
            Some((t, at)) => {
                format!(
                    "the {} record {at} is not covered by a final checkpoint (truncated)",
                    t.name()
                )
            }
        };
        w.error = Some((
            VerifyError::record(index, src.len() as u64, what),
            Fail::Tail,
        ));
    }
    w.meta = Some(meta);
    w
}

/// Verify a recording against the gateway's public key, or its keyring (any [`PublicKeys`]).
///
/// `ok` is true only if every record reads, every checkpoint verifies (signature under the key its
/// key id names, which must be one of `keys`, bound to this session id; chain value; position),
/// and the recording is sealed: it ends with an end or interrupted record covered by a final
/// checkpoint and nothing after it.
pub fn verify<K: PublicKeys + ?Sized>(bytes: &[u8], keys: &K) -> VerifyReport {
    report(walk(&mut { bytes }, keys))
}

/// [`verify()`] of a recording read from `input` (a file), holding at most one record and a read
/// chunk in memory whatever the recording's size. An error if reading fails.
pub fn verify_read<R: std::io::Read, K: PublicKeys + ?Sized>(
    input: R,
    keys: &K,
) -> std::io::Result<VerifyReport> {
    let mut window = Window::new(input);
    let w = walk(&mut window, keys);
    match window.error.take() {
        Some(e) => Err(e),
        None => Ok(report(w)),
    }
}

fn report(w: Walk) -> VerifyReport {
    let status = match (&w.cp, w.final_ok) {
        (Some(cp), true) => match cp.terminal {
            Some((Terminal::End, _)) => SealStatus::Sealed,
            Some((Terminal::Interrupted, _)) => SealStatus::Interrupted,
            None => SealStatus::Unsealed,
        },
        _ => SealStatus::Unsealed,
    };
    let first_error = w.error.map(|(e, _)| e);
    VerifyReport {
        ok: first_error.is_none() && status != SealStatus::Unsealed,
        records: w.records,
        verified_records: w.cp.as_ref().map_or(0, |s| s.next_index),
        status,
        meta: w.meta,
        end: w.end,
        first_error,
        valid_prefix_len: w.cp.as_ref().map_or(0, |s| s.offset as u64),
    }
}

/// Seal a recording left open by a crash (`kill -9`, power loss).
///
/// Keeps every record that reads and chains (records after the last checkpoint included: their
/// chain is recomputed and the new checkpoint signs them), drops a torn or unreadable tail, and
/// appends to `out` an interrupted record (whose reason is `reason` plus what recovery kept and
/// dropped) and a signed checkpoint. Returns the length to truncate the file to before appending
/// `out`. [`verify`] of the result is `ok` with status [`SealStatus::Interrupted`].
///
/// If the crash came after the end record but before the final checkpoint, only the checkpoint is
/// appended and the result is [`SealStatus::Sealed`]. `t_ns` is the interrupted record's time; it
/// is raised to the last time in the file if smaller (pass 0 if unknown).
///
/// Errors: [`RecError::AlreadySealed`] if there is nothing to recover, [`RecError::Unrecoverable`]
/// without a readable magic and meta record, and [`RecError::Tampered`] if a readable record fails
/// verification (a checkpoint that does not verify, a record after the end): that is not what a
/// crash leaves behind, and the file is left alone as evidence.
pub fn seal_interrupted(
    bytes: &[u8],
    signer: &Signer,
    reason: &str,
    t_ns: u64,
    out: &mut Vec<u8>,
) -> Result<u64, RecError> {
    seal_interrupted_keys(bytes, &signer.public_key(), signer, reason, t_ns, out)
}

/// [`seal_interrupted`] of a recording whose checkpoints may be signed by any of `keys` (the
/// gateway's keyring: a recording started before a key rotation), sealed with `signer`.
pub fn seal_interrupted_keys<K: PublicKeys + ?Sized>(
    bytes: &[u8],
    keys: &K,
    signer: &Signer,
    reason: &str,
    t_ns: u64,
    out: &mut Vec<u8>,
) -> Result<u64, RecError> {
    let w = walk(&mut { bytes }, keys);
    let Some((err, fail)) = w.error else {
        return Err(RecError::AlreadySealed(format!(
            "the recording is sealed ({} records verified)",
            w.records
        )));
    };
    if w.final_ok {
        // Sealed, then something after the final checkpoint: not a crash artifact of this
        // writer (it writes nothing after the final checkpoint). Leave it alone as evidence.
        return Err(RecError::AlreadySealed(format!(
            "the recording is sealed, but {err}"
        )));
    }
    let note = match fail {
        Fail::Header => return Err(RecError::Unrecoverable(err.to_string())),
        Fail::Integrity => return Err(RecError::Tampered(err)),
        Fail::Parse => format!(
            "; dropped {} bytes from byte {} ({})",
            bytes.len().saturating_sub(w.cur.offset),
            w.cur.offset,
            err.what
        ),
        Fail::Tail => String::new(),
    };
    let Some(meta) = w.meta else {
        return Err(RecError::Unrecoverable("no meta record".into()));
    };
    let mut st = w.cur;
    let keep = st.offset as u64;
    let t = t_ns.max(st.last_t);
    if st.terminal.is_none() {
        let mut why = reason.to_string();
        if st.since_cp > 0 {
            let first = st.last_cp.map_or(1, |i| i + 1);
            why.push_str(&format!(
                "; records {first}..{} recovered without a checkpoint (signed at recovery)",
                st.next_index.saturating_sub(1)
            ));
        }
        why.push_str(&note);
        let start = encode_interrupted(t, &why, out);
        st.chain = sha256_parts(&[&st.chain, out.get(start..).unwrap_or_default()]);
        st.next_index += 1;
    }
    let key_id = signer.key_id_raw();
    let msg = checkpoint_message(&meta.session_id, st.next_index, t, &key_id, &st.chain);
    CheckpointBody {
        index: st.next_index,
        t_ns: t,
        key_id,
        chain: st.chain,
        sig: signer.sign(&msg),
    }
    .encode(out);
    Ok(keep)
}
