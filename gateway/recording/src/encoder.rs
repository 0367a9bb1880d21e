//! The recording writer as a pure state machine: every call appends encoded bytes to `out`; the
//! caller writes them wherever it likes (and fsyncs in batches).

use std::sync::Arc;

use aws_lc_rs::digest;

use crate::format::{
    checkpoint_message, code, encode_end, CheckpointBody, Direction, EndInfo, SessionMeta, MAGIC,
    MAX_DATA_PAYLOAD, MAX_RECORD_BODY, RECORD_HEADER_LEN,
};
use crate::signer::{sha256_parts, to32, Signer};
use crate::RecError;

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
/// #   break_glass: false, started_unix_ms: 0 };
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
}

impl Encoder {
    /// Write the magic, the meta record and an initial checkpoint.
    pub fn start(
        meta: &SessionMeta,
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
        out: &mut Vec<u8>,
    ) -> Result<Encoder, RecError> {
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
        };
        enc.checkpoint(0, out);
        Ok(enc)
    }

    /// Record `payload` (split into records of at most [`MAX_DATA_PAYLOAD`] bytes; an empty
    /// payload writes nothing). Writes a checkpoint too once `every_records` is reached.
    pub fn data(&mut self, dir: Direction, t_ns: u64, payload: &[u8], out: &mut Vec<u8>) {
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

    /// Record an event (hash-chained like the bytes): what the gateway did at this point, e.g. a
    /// credential it injected, in place of the secret's bytes. Fields must never hold a secret.
    pub fn event(
        &mut self,
        dir: Direction,
        t_ns: u64,
        kind: &str,
        fields: &[(String, String)],
        out: &mut Vec<u8>,
    ) {
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
        self.since_cp > 0
            && (self.since_cp >= self.policy.every_records.max(1)
                || t_ns.saturating_sub(self.last_cp_t) >= self.policy.every_ns)
    }

    /// Write a signed checkpoint covering every record so far (nothing if there is nothing new).
    pub fn checkpoint(&mut self, t_ns: u64, out: &mut Vec<u8>) {
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

    /// Write the end record and the final checkpoint.
    pub fn finish(mut self, t_ns: u64, end: &EndInfo, out: &mut Vec<u8>) {
        let start = encode_end(t_ns, end, out);
        let rec = out.get(start..).unwrap_or_default();
        self.chain = sha256_parts(&[&self.chain, rec]);
        self.records += 1;
        self.since_cp += 1;
        self.checkpoint(t_ns, out);
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
