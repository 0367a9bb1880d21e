//! The recording writer as a pure state machine: every call appends encoded bytes to `out`; the
//! caller writes them wherever it likes (and fsyncs in batches).

use std::sync::Arc;

use aws_lc_rs::digest;

use crate::format::{
    checkpoint_message, code, encode_end, CheckpointBody, Direction, EndInfo, SessionMeta, MAGIC,
    MAX_DATA_PAYLOAD, MAX_RECORD_BODY, RECORD_HEADER_LEN,
};
use crate::sealed::{SealKey, MAX_PLAINTEXT};
use crate::signer::{sha256_parts, to32, Signer};
use crate::RecError;

/// A data record's header inside or outside a sealed record: type, length, `t_ns`.
const DATA_HEADER: usize = RECORD_HEADER_LEN + 8;

/// Sealed mode: the recording's file key and the data and event records not yet sealed.
struct Sealing {
    key: SealKey,
    /// Encoded inner records (at most [`MAX_PLAINTEXT`] bytes).
    pending: Vec<u8>,
    /// Time of the last pending record.
    pending_t: u64,
    /// Why sealing failed (fail closed: nothing is written in plain text instead).
    failed: Option<String>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("key", &"[redacted]")
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// When to write a checkpoint: after `every_records` records, or `every_ns` after the last
/// checkpoint if records were written since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Records between checkpoints (0 counts as 1).
    pub every_records: u64,
    /// Nanoseconds between checkpoints while records keep coming.
    pub every_ns: u64,
}

impl Default for CheckpointPolicy {
    /// 1024 records or one second.
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 1024,
            every_ns: 1_000_000_000,
        }
    }
}

/// Encodes one session. See the crate docs for the layout and chain definition.
///
/// ```
/// # use std::sync::Arc;
/// # use ward_recording::*;
/// # let meta = SessionMeta { session_id: "s1".into(), principal_kind: "vendor".into(),
/// #   principal_name: "acme".into(), principal_org: None, cert_serial: "01".into(),
/// #   source: "10.0.0.1:5000".into(), device: "pump".into(), device_addr: "10.1.0.1:23".into(),
/// #   protocol: "telnet".into(), rule: "r".into(), transport: "quic".into(),
/// #   break_glass: false, started_unix_ms: 0, ..Default::default() };
/// let (signer, _pkcs8) = Signer::generate()?;
/// let signer = Arc::new(signer);
/// let mut out = Vec::new();
/// let mut enc = Encoder::start(&meta, signer.clone(), CheckpointPolicy::default(), &mut out)?;
/// enc.data(Direction::Up, 1_000, b"hello", &mut out);
/// enc.finish(2_000, &EndInfo { ended_unix_ms: 2, reason: "closed".into(), bytes_up: 5, bytes_down: 0 }, &mut out);
/// assert!(verify(&out, &signer.public_key()).ok);
/// # Ok::<(), RecError>(())
/// ```
#[derive(Debug)]
pub struct Encoder {
    signer: Arc<Signer>,
    policy: CheckpointPolicy,
    session_id: String,
    chain: [u8; 32],
    /// Records written so far (all types) = ordinal of the next record.
    records: u64,
    /// Records since the last checkpoint.
    since_cp: u64,
    last_cp_t: u64,
    /// Encrypting to recipients ([`Encoder::start_sealed`]).
    sealing: Option<Sealing>,
}

impl Encoder {
    /// Write the magic, the meta record and an initial checkpoint.
    pub fn start(
        meta: &SessionMeta,
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
        out: &mut Vec<u8>,
    ) -> Result<Encoder, RecError> {
        Encoder::begin(meta, signer, policy, None, out)
    }

    /// Like [`Encoder::start`], but every data and event record is encrypted to `recipients`
    /// (format version 3): the meta record names them and carries the age header wrapping a
    /// fresh file key; records are buffered and written as sealed records by [`Encoder::flush`]
    /// (also by [`Encoder::checkpoint`], [`Encoder::finish`], and by [`Encoder::data`] and
    /// [`Encoder::event`] once about 1 MiB is pending). The meta's own `recipients` and
    /// `age_header` are replaced. An error without recipients.
    pub fn start_sealed(
        meta: &SessionMeta,
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
        recipients: &[age::x25519::Recipient],
        out: &mut Vec<u8>,
    ) -> Result<Encoder, RecError> {
        let (key, header) = SealKey::generate(recipients)?;
        let meta = SessionMeta {
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            age_header: Some(header),
            ..meta.clone()
        };
        let sealing = Sealing {
            key,
            pending: Vec::new(),
            pending_t: 0,
            failed: None,
        };
        Encoder::begin(&meta, signer, policy, Some(sealing), out)
    }

    fn begin(
        meta: &SessionMeta,
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
        sealing: Option<Sealing>,
        out: &mut Vec<u8>,
    ) -> Result<Encoder, RecError> {
        if sealing.is_none() && crate::sealed::is_sealed(meta) {
            return Err(RecError::Meta(
                "the meta names recipients: start it with Encoder::start_sealed".into(),
            ));
        }
        let json = serde_json::to_vec(meta).map_err(|e| RecError::Meta(e.to_string()))?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_BODY)
            .ok_or_else(|| RecError::Meta(format!("{} bytes of JSON is too large", json.len())))?;
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.push(code::META);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&json);
        let chain = sha256_parts(&[out.get(start..).unwrap_or_default()]);
        let mut enc = Encoder {
            signer,
            policy,
            session_id: meta.session_id.clone(),
            chain,
            records: 1,
            since_cp: 1,
            last_cp_t: 0,
            sealing,
        };
        enc.checkpoint(0, out);
        Ok(enc)
    }

    /// Whether data and events are encrypted ([`Encoder::start_sealed`]).
    pub fn is_sealed(&self) -> bool {
        self.sealing.is_some()
    }

    /// Plaintext bytes waiting to be sealed (0 when not sealed).
    pub fn pending(&self) -> usize {
        self.sealing.as_ref().map_or(0, |s| s.pending.len())
    }

    /// Why sealing failed, if it did: records since then were dropped, never written in plain
    /// text, and the caller must fail the recording.
    pub fn failure(&self) -> Option<&str> {
        self.sealing.as_ref().and_then(|s| s.failed.as_deref())
    }

    /// Seal the pending data and event records into one sealed record (time: the last pending
    /// record's) and append it, then a checkpoint if `every_records` is reached. Nothing when
    /// nothing is pending or the encoder is not sealed. An error when encryption failed (then or
    /// before): the recording must be failed.
    pub fn flush(&mut self, t_ns: u64, out: &mut Vec<u8>) -> Result<(), RecError> {
        let Some(s) = self.sealing.as_mut() else {
            return Ok(());
        };
        if let Some(f) = &s.failed {
            return Err(RecError::Unseal(f.clone()));
        }
        if s.pending.is_empty() {
            return Ok(());
        }
        let sealed = s.key.seal(s.pending_t, &s.pending, out);
        s.pending.clear();
        let start = match sealed {
            Ok(start) => start,
            Err(e) => {
                s.failed = Some(e.to_string());
                return Err(e);
            }
        };
        let rec = out.get(start..).unwrap_or_default();
        self.chain = sha256_parts(&[&self.chain, rec]);
        self.records += 1;
        self.since_cp += 1;
        if self.since_cp >= self.policy.every_records.max(1) {
            self.checkpoint_now(t_ns.max(self.last_cp_t), out);
        }
        Ok(())
    }

    /// Make room for `len` more pending bytes: seal what is pending if they would not fit.
    fn room_for(&mut self, len: usize, out: &mut Vec<u8>) {
        let full = self
            .sealing
            .as_ref()
            .is_some_and(|s| !s.pending.is_empty() && s.pending.len() + len > MAX_PLAINTEXT);
        if full {
            let t = self.sealing.as_ref().map_or(0, |s| s.pending_t);
            let _ = self.flush(t, out);
        }
    }

    /// Record `payload` (split into records of at most [`MAX_DATA_PAYLOAD`] bytes; an empty
    /// payload writes nothing). Writes a checkpoint too once `every_records` is reached.
    pub fn data(&mut self, dir: Direction, t_ns: u64, payload: &[u8], out: &mut Vec<u8>) {
        if self.sealing.is_some() {
            self.data_sealed(dir, t_ns, payload, out);
            return;
        }
        for chunk in payload.chunks(MAX_DATA_PAYLOAD) {
            let mut header = [0u8; RECORD_HEADER_LEN + 8];
            let len = (8 + chunk.len()) as u32;
            for (h, b) in header.iter_mut().zip(
                [dir.code()]
                    .into_iter()
                    .chain(len.to_le_bytes())
                    .chain(t_ns.to_le_bytes()),
            ) {
                *h = b;
            }
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(&self.chain);
            ctx.update(&header);
            ctx.update(chunk);
            self.chain = to32(ctx.finish());
            out.reserve(header.len() + chunk.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(chunk);
            self.records += 1;
            self.since_cp += 1;
            if self.since_cp >= self.policy.every_records.max(1) {
                self.checkpoint(t_ns, out);
            }
        }
    }

    /// Sealed mode: append data records to what is pending, each fitting what is left of
    /// [`MAX_PLAINTEXT`], sealing whenever it is full.
    fn data_sealed(&mut self, dir: Direction, t_ns: u64, payload: &[u8], out: &mut Vec<u8>) {
        let mut rest = payload;
        while !rest.is_empty() {
            let Some(s) = self.sealing.as_mut() else {
                return;
            };
            if s.failed.is_some() {
                return;
            }
            let room = MAX_PLAINTEXT.saturating_sub(s.pending.len() + DATA_HEADER);
            // Seal first rather than write a sliver (or nothing) into a nearly full buffer.
            if room < 4096 && !s.pending.is_empty() {
                let t = s.pending_t;
                let _ = self.flush(t, out);
                continue;
            }
            let n = rest.len().min(room).clamp(1, MAX_DATA_PAYLOAD);
            let (chunk, r) = rest.split_at(n.min(rest.len()));
            rest = r;
            s.pending.reserve(DATA_HEADER + chunk.len());
            s.pending.push(dir.code());
            s.pending
                .extend_from_slice(&((8 + chunk.len()) as u32).to_le_bytes());
            s.pending.extend_from_slice(&t_ns.to_le_bytes());
            s.pending.extend_from_slice(chunk);
            s.pending_t = s.pending_t.max(t_ns);
            if s.pending.len() >= MAX_PLAINTEXT {
                let _ = self.flush(t_ns, out);
            }
        }
    }

    /// Record an event (hash-chained like the bytes): what the gateway did at this point, e.g. a
    /// credential it injected, in place of the secret's bytes. Fields must never hold a secret.
    /// Sealed mode: encrypted with the data.
    pub fn event(
        &mut self,
        dir: Direction,
        t_ns: u64,
        kind: &str,
        fields: &[(String, String)],
        out: &mut Vec<u8>,
    ) {
        if self.sealing.is_some() {
            let mut rec = Vec::new();
            crate::format::encode_event(t_ns, dir, kind, fields, &mut rec);
            self.room_for(rec.len(), out);
            if let Some(s) = self.sealing.as_mut().filter(|s| s.failed.is_none()) {
                s.pending.extend_from_slice(&rec);
                s.pending_t = s.pending_t.max(t_ns);
            }
            return;
        }
        let start = crate::format::encode_event(t_ns, dir, kind, fields, out);
        let rec = out.get(start..).unwrap_or_default();
        self.chain = sha256_parts(&[&self.chain, rec]);
        self.records += 1;
        self.since_cp += 1;
        if self.since_cp >= self.policy.every_records.max(1) {
            self.checkpoint(t_ns, out);
        }
    }

    /// Whether a checkpoint is due at `t_ns`: records were written since the last one and either
    /// `every_records` of them or `every_ns` have passed.
    pub fn checkpoint_due(&self, t_ns: u64) -> bool {
        (self.since_cp > 0 || self.pending() > 0)
            && (self.since_cp >= self.policy.every_records.max(1)
                || t_ns.saturating_sub(self.last_cp_t) >= self.policy.every_ns)
    }

    /// Write a signed checkpoint covering every record so far (nothing if there is nothing new).
    /// Sealed mode: what is pending is sealed first.
    pub fn checkpoint(&mut self, t_ns: u64, out: &mut Vec<u8>) {
        let _ = self.flush(t_ns, out);
        self.checkpoint_now(t_ns, out);
    }

    fn checkpoint_now(&mut self, t_ns: u64, out: &mut Vec<u8>) {
        if self.since_cp == 0 {
            return;
        }
        let key_id = self.signer.key_id_raw();
        let msg = checkpoint_message(&self.session_id, self.records, t_ns, &key_id, &self.chain);
        let cp = CheckpointBody {
            index: self.records,
            t_ns,
            key_id,
            chain: self.chain,
            sig: self.signer.sign(&msg),
        };
        cp.encode(out);
        self.records += 1;
        self.since_cp = 0;
        self.last_cp_t = t_ns;
    }

    /// Write the end record and the final checkpoint (sealed mode: what is pending is sealed
    /// first; the end record stays in plain text, its byte counts are checked without a key).
    pub fn finish(mut self, t_ns: u64, end: &EndInfo, out: &mut Vec<u8>) {
        let _ = self.flush(t_ns, out);
        let start = encode_end(t_ns, end, out);
        let rec = out.get(start..).unwrap_or_default();
        self.chain = sha256_parts(&[&self.chain, rec]);
        self.records += 1;
        self.since_cp += 1;
        self.checkpoint_now(t_ns, out);
    }

    /// Records written so far, of every type (meta and checkpoints included): the ordinal the
    /// next record will get.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The current chain value (after the last non-checkpoint record).
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }
}
