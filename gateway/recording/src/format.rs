//! The binary layout of a recording (`docs/recording-format.md`): an 8-byte [`MAGIC`], then
//! records `[u8 type][u32 little-endian body length][body]`. Data records carry raw bytes (no
//! base64, no JSON); only the meta record (once per file) is JSON.
//!
//! [`Reader`] walks records over a byte slice with their ordinals and offsets and never panics:
//! any input either yields records or a typed [`ReadError`].

use serde::{Deserialize, Serialize};

use crate::signer::{KEY_ID_LEN, SIG_LEN};
use crate::ReadError;

/// File magic; the last byte is the format version (see "Versioning" in the format doc). What the
/// encoder writes: version 3, which added the sealed (encrypted) record and the meta's
/// `recipients`/`age_header`.
pub const MAGIC: &[u8; 8] = b"WARDREC\x03";
/// Version 2's magic: the event record, no sealed record; still read and verified.
pub const MAGIC_V2: &[u8; 8] = b"WARDREC\x02";
/// Version 1's magic: the same layout without the event record; still read and verified.
pub const MAGIC_V1: &[u8; 8] = b"WARDREC\x01";
/// Bytes before each record body: type (1) + body length (4, little-endian).
pub const RECORD_HEADER_LEN: usize = 5;
/// Largest data payload in one record; [`crate::Encoder::data`] splits larger payloads.
pub const MAX_DATA_PAYLOAD: usize = 1 << 20;
/// Largest record body a reader accepts (a data record's payload plus its 8-byte time, with room).
pub const MAX_RECORD_BODY: u32 = (1 << 20) + 64;

/// Record type codes.
pub(crate) mod code {
    /// Session metadata (JSON), always record 0.
    pub const META: u8 = 0x01;
    /// Client → device bytes.
    pub const DATA_UP: u8 = 0x02;
    /// Device → client bytes.
    pub const DATA_DOWN: u8 = 0x03;
    /// Orderly end of the session.
    pub const END: u8 = 0x04;
    /// Sealed after a crash.
    pub const INTERRUPTED: u8 = 0x05;
    /// Signed checkpoint.
    pub const CHECKPOINT: u8 = 0x06;
    /// Something the gateway did or saw, recorded in line (version 2): an injected credential in
    /// place of its bytes, a rejected credential, a decoded operation.
    pub const EVENT: u8 = 0x07;
    /// Records encrypted to the recording's age recipients (version 3): `t_ns` ‖ 16-byte nonce ‖
    /// age STREAM ciphertext of a run of data and event records.
    pub const SEALED: u8 = 0x08;
}

/// A sealed record's body before its ciphertext: `t_ns` (8) and the STREAM nonce (16).
pub(crate) const SEALED_FIXED: usize = 8 + 16;
/// The shortest sealed body: its fixed part and one (empty) chunk's 16-byte tag.
pub(crate) const SEALED_MIN: usize = SEALED_FIXED + 16;

/// Body of a checkpoint: index u64, t_ns u64, key id (8), chain (32), signature (64).
pub(crate) const CHECKPOINT_BODY_LEN: usize = 8 + 8 + KEY_ID_LEN + 32 + SIG_LEN;
/// Domain separation prefix of the checkpoint signature message.
pub(crate) const CHECKPOINT_DOMAIN: &[u8] = b"ward-recording-checkpoint-v1";

/// Which way bytes went.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client → device.
    Up,
    /// Device → client.
    Down,
}

impl Direction {
    pub(crate) fn code(self) -> u8 {
        match self {
            Direction::Up => code::DATA_UP,
            Direction::Down => code::DATA_DOWN,
        }
    }

    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// Who connected to what, how; the first record of every recording.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SessionMeta {
    /// Session id (also bound into every checkpoint signature).
    pub session_id: String,
    /// Principal kind (vendor, clinician, service, ...).
    pub principal_kind: String,
    /// Principal name from the client certificate.
    pub principal_name: String,
    /// Principal organisation, if any.
    pub principal_org: Option<String>,
    /// Client certificate serial (hex).
    pub cert_serial: String,
    /// Client address, `ip:port`.
    pub source: String,
    /// Device id.
    pub device: String,
    /// Device address dialed, `ip:port`.
    pub device_addr: String,
    /// `telnet` | `http` | `dicom` | `hl7` | `raw`.
    pub protocol: String,
    /// The policy rule that permitted the session.
    pub rule: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// Emergency access.
    pub break_glass: bool,
    /// Session start, Unix milliseconds.
    pub started_unix_ms: i64,
    /// The age X25519 recipients (`age1…`) the recording's data is encrypted to (version 3);
    /// empty for a recording stored in plain text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Base64 (standard, padded) of the recording's complete age v1 header (version line, one
    /// X25519 stanza per recipient, MAC line) wrapping its file key; `None` when not encrypted.
    /// `age_header ‖ body[8..]` of any sealed record is a standard age file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_header: Option<String>,
}

/// How a session ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EndInfo {
    /// End time, Unix milliseconds.
    pub ended_unix_ms: i64,
    /// Why it ended.
    pub reason: String,
    /// Bytes client → device.
    pub bytes_up: u64,
    /// Bytes device → client.
    pub bytes_down: u64,
}

/// One decoded record.
// The meta variant is large but occurs once per file; boxing it would change the public shape
// callers match on.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Session metadata (record 0).
    Meta(SessionMeta),
    /// Session bytes.
    Data {
        /// Which way.
        dir: Direction,
        /// Nanoseconds since session start (monotonic clock).
        t_ns: u64,
        /// The bytes, exactly as they went through.
        payload: Vec<u8>,
    },
    /// A signed checkpoint (the signature is checked by [`crate::verify()`], not here).
    Checkpoint {
        /// Its own ordinal in the file: the number of records before it.
        index: u64,
        /// Nanoseconds since session start.
        t_ns: u64,
        /// Hex key id of the signing key.
        key_id: String,
        /// Chain value over every non-checkpoint record before it.
        chain: [u8; 32],
    },
    /// Orderly end.
    End {
        /// Nanoseconds since session start.
        t_ns: u64,
        /// How it ended.
        info: EndInfo,
    },
    /// Something the gateway did or saw at this point of the session (version 2): e.g.
    /// `credential_injected`, recorded in place of the injected secret's bytes.
    Event {
        /// Nanoseconds since session start.
        t_ns: u64,
        /// Which way the bytes it is about travelled.
        dir: Direction,
        /// What happened.
        kind: String,
        /// Its details, in order (never a secret).
        fields: Vec<(String, String)>,
    },
    /// Data and event records encrypted to the recording's recipients (version 3): open it with
    /// [`crate::sealed::open_records`]. `verify` checks it as stored, without a key.
    Sealed {
        /// Nanoseconds since session start of the last record inside.
        t_ns: u64,
        /// The 16-byte STREAM nonce and the age STREAM ciphertext (the record body after
        /// `t_ns`): prefixed with the meta's `age_header`, a standard age file.
        body: Vec<u8>,
    },
    /// Sealed after a crash by [`crate::seal_interrupted`].
    Interrupted {
        /// Nanoseconds since session start (at least the last record's).
        t_ns: u64,
        /// Why, including what recovery kept and dropped.
        reason: String,
    },
}

/// A record with where it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordAt {
    /// Ordinal in the file (0 = meta).
    pub index: u64,
    /// Byte offset of its header.
    pub offset: u64,
    /// Encoded length, header included.
    pub len: u64,
    /// The record.
    pub record: Record,
}

/// A record as bytes, not yet decoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw<'a> {
    pub index: u64,
    pub offset: usize,
    pub code: u8,
    /// Header + body.
    pub bytes: &'a [u8],
    pub body: &'a [u8],
}

/// Check the magic; `Ok(MAGIC.len())` is where records start.
pub(crate) fn check_magic(buf: &[u8]) -> Result<usize, ReadError> {
    let Some(head) = buf.first_chunk::<8>() else {
        return if MAGIC.starts_with(buf) && !buf.is_empty() {
            Err(ReadError::Truncated {
                record: 0,
                offset: 0,
                needed: MAGIC.len() as u64,
                available: buf.len() as u64,
            })
        } else {
            Err(ReadError::BadMagic)
        };
    };
    if head == MAGIC || head == MAGIC_V2 || head == MAGIC_V1 {
        return Ok(MAGIC.len());
    }
    match (head.get(..7), head.get(7)) {
        (Some(p), Some(v)) if MAGIC.starts_with(p) => Err(ReadError::UnsupportedVersion(*v)),
        _ => Err(ReadError::BadMagic),
    }
}

/// The magic a file starts with (version 1, 2 or 3; [`check_magic`] has accepted it): the chain
/// starts from it.
pub(crate) fn magic_of(buf: &[u8]) -> &'static [u8; 8] {
    match buf.get(..8) {
        Some(m) if m == MAGIC_V1.as_slice() => MAGIC_V1,
        Some(m) if m == MAGIC_V2.as_slice() => MAGIC_V2,
        _ => MAGIC,
    }
}

/// Parse the record framing at `offset` (no body decoding beyond length checks).
pub(crate) fn parse_raw(buf: &[u8], offset: usize, index: u64) -> Result<Raw<'_>, ReadError> {
    let rest = buf.get(offset..).unwrap_or_default();
    let off = offset as u64;
    let Some((hdr, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(ReadError::Truncated {
            record: index,
            offset: off,
            needed: RECORD_HEADER_LEN as u64,
            available: rest.len() as u64,
        });
    };
    let [c, l0, l1, l2, l3] = *hdr;
    if !matches!(
        c,
        code::META
            | code::DATA_UP
            | code::DATA_DOWN
            | code::END
            | code::INTERRUPTED
            | code::CHECKPOINT
            | code::EVENT
            | code::SEALED
    ) {
        return Err(ReadError::UnknownType {
            record: index,
            offset: off,
            code: c,
        });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len > MAX_RECORD_BODY {
        return Err(ReadError::Oversized {
            record: index,
            offset: off,
            len: u64::from(len),
            max: u64::from(MAX_RECORD_BODY),
        });
    }
    let len = len as usize;
    let total = RECORD_HEADER_LEN + len;
    let (Some(body), Some(bytes)) = (after.get(..len), rest.get(..total)) else {
        return Err(ReadError::Truncated {
            record: index,
            offset: off,
            needed: total as u64,
            available: rest.len() as u64,
        });
    };
    let malformed = |what: String| ReadError::Malformed {
        record: index,
        offset: off,
        what,
    };
    match c {
        code::CHECKPOINT if len != CHECKPOINT_BODY_LEN => {
            return Err(malformed(format!(
                "checkpoint body is {len} bytes, expected {CHECKPOINT_BODY_LEN}"
            )))
        }
        code::EVENT if len < 9 => {
            return Err(malformed(format!(
                "event body of {len} bytes has no 8-byte time and direction"
            )))
        }
        code::DATA_UP | code::DATA_DOWN | code::INTERRUPTED if len < 8 => {
            return Err(malformed(format!("body of {len} bytes has no 8-byte time")))
        }
        code::SEALED if len < SEALED_MIN => {
            return Err(malformed(format!(
                "sealed body of {len} bytes is shorter than its time, nonce and one tag ({SEALED_MIN} bytes)"
            )))
        }
        code::END if len < END_FIXED => {
            return Err(malformed(format!(
                "end body is {len} bytes, needs at least {END_FIXED}"
            )))
        }
        _ => {}
    }
    Ok(Raw {
        index,
        offset,
        code: c,
        bytes,
        body,
    })
}

/// End body: t_ns u64, ended_unix_ms i64, bytes_up u64, bytes_down u64, reason (UTF-8, rest).
pub(crate) const END_FIXED: usize = 32;

pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.first_chunk::<8>())
        .map(|a| u64::from_le_bytes(*a))
        .unwrap_or(0)
}

/// A decoded checkpoint body, signature included.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckpointBody {
    pub index: u64,
    pub t_ns: u64,
    pub key_id: [u8; KEY_ID_LEN],
    pub chain: [u8; 32],
    pub sig: [u8; SIG_LEN],
}

impl CheckpointBody {
    pub(crate) fn parse(body: &[u8]) -> Option<CheckpointBody> {
        let (index, rest) = body.split_first_chunk::<8>()?;
        let (t_ns, rest) = rest.split_first_chunk::<8>()?;
        let (key_id, rest) = rest.split_first_chunk::<KEY_ID_LEN>()?;
        let (chain, rest) = rest.split_first_chunk::<32>()?;
        let (sig, rest) = rest.split_first_chunk::<SIG_LEN>()?;
        if !rest.is_empty() {
            return None;
        }
        Some(CheckpointBody {
            index: u64::from_le_bytes(*index),
            t_ns: u64::from_le_bytes(*t_ns),
            key_id: *key_id,
            chain: *chain,
            sig: *sig,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(code::CHECKPOINT);
        out.extend_from_slice(&(CHECKPOINT_BODY_LEN as u32).to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.t_ns.to_le_bytes());
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.chain);
        out.extend_from_slice(&self.sig);
    }
}

/// The message a checkpoint signs: domain ‖ u32 len(session id) ‖ session id ‖ index ‖ t_ns ‖
/// key id ‖ chain (integers little-endian).
pub(crate) fn checkpoint_message(
    session_id: &str,
    index: u64,
    t_ns: u64,
    key_id: &[u8; KEY_ID_LEN],
    chain: &[u8; 32],
) -> Vec<u8> {
    let sid = session_id.as_bytes();
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 4 + sid.len() + 16 + KEY_ID_LEN + 32);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&u32::try_from(sid.len()).unwrap_or(u32::MAX).to_le_bytes());
    m.extend_from_slice(sid);
    m.extend_from_slice(&index.to_le_bytes());
    m.extend_from_slice(&t_ns.to_le_bytes());
    m.extend_from_slice(key_id);
    m.extend_from_slice(chain);
    m
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut n = max.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.get(..n).unwrap_or_default()
}

/// Encode an end record.
pub(crate) fn encode_end(t_ns: u64, end: &EndInfo, out: &mut Vec<u8>) -> usize {
    let reason = truncate_utf8(&end.reason, MAX_DATA_PAYLOAD).as_bytes();
    let start = out.len();
    out.push(code::END);
    out.extend_from_slice(&((END_FIXED + reason.len()) as u32).to_le_bytes());
    out.extend_from_slice(&t_ns.to_le_bytes());
    out.extend_from_slice(&end.ended_unix_ms.to_le_bytes());
    out.extend_from_slice(&end.bytes_up.to_le_bytes());
    out.extend_from_slice(&end.bytes_down.to_le_bytes());
    out.extend_from_slice(reason);
    start
}

/// Encode an interrupted record.
pub(crate) fn encode_interrupted(t_ns: u64, reason: &str, out: &mut Vec<u8>) -> usize {
    let reason = truncate_utf8(reason, MAX_DATA_PAYLOAD).as_bytes();
    let start = out.len();
    out.push(code::INTERRUPTED);
    out.extend_from_slice(&((8 + reason.len()) as u32).to_le_bytes());
    out.extend_from_slice(&t_ns.to_le_bytes());
    out.extend_from_slice(reason);
    start
}

/// An event record's JSON (after its time and direction).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventBody {
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

/// Append an event record; returns where it starts in `out`.
pub(crate) fn encode_event(
    t_ns: u64,
    dir: Direction,
    kind: &str,
    fields: &[(String, String)],
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let json = serde_json::to_vec(&EventBody {
        kind: kind.to_string(),
        fields: fields.to_vec(),
    })
    .unwrap_or_else(|_| b"{\"kind\":\"unencodable\",\"fields\":[]}".to_vec());
    out.push(code::EVENT);
    out.extend_from_slice(&((9 + json.len()) as u32).to_le_bytes());
    out.extend_from_slice(&t_ns.to_le_bytes());
    out.push(match dir {
        Direction::Up => 0,
        Direction::Down => 1,
    });
    out.extend_from_slice(&json);
    start
}

/// Decode a raw record's body into a [`Record`].
pub(crate) fn decode(raw: &Raw<'_>) -> Result<Record, ReadError> {
    let malformed = |what: String| ReadError::Malformed {
        record: raw.index,
        offset: raw.offset as u64,
        what,
    };
    let tail = |n: usize| raw.body.get(n..).unwrap_or_default();
    match raw.code {
        code::META => serde_json::from_slice::<SessionMeta>(raw.body)
            .map(Record::Meta)
            .map_err(|e| malformed(format!("meta JSON: {e}"))),
        code::DATA_UP | code::DATA_DOWN => Ok(Record::Data {
            dir: if raw.code == code::DATA_UP {
                Direction::Up
            } else {
                Direction::Down
            },
            t_ns: read_u64(raw.body, 0),
            payload: tail(8).to_vec(),
        }),
        code::END => {
            let reason = std::str::from_utf8(tail(END_FIXED))
                .map_err(|_| malformed("end reason is not UTF-8".into()))?;
            Ok(Record::End {
                t_ns: read_u64(raw.body, 0),
                info: EndInfo {
                    ended_unix_ms: read_u64(raw.body, 8) as i64,
                    reason: reason.to_string(),
                    bytes_up: read_u64(raw.body, 16),
                    bytes_down: read_u64(raw.body, 24),
                },
            })
        }
        code::INTERRUPTED => {
            let reason = std::str::from_utf8(tail(8))
                .map_err(|_| malformed("interrupted reason is not UTF-8".into()))?;
            Ok(Record::Interrupted {
                t_ns: read_u64(raw.body, 0),
                reason: reason.to_string(),
            })
        }
        code::EVENT => {
            let dir = match raw.body.get(8) {
                Some(0) => Direction::Up,
                Some(1) => Direction::Down,
                d => {
                    return Err(malformed(format!(
                        "event direction {d:?} is neither 0 nor 1"
                    )))
                }
            };
            let body: EventBody = serde_json::from_slice(tail(9))
                .map_err(|e| malformed(format!("event JSON: {e}")))?;
            Ok(Record::Event {
                t_ns: read_u64(raw.body, 0),
                dir,
                kind: body.kind,
                fields: body.fields,
            })
        }
        code::SEALED => Ok(Record::Sealed {
            t_ns: read_u64(raw.body, 0),
            body: tail(8).to_vec(),
        }),
        code::CHECKPOINT => {
            let cp = CheckpointBody::parse(raw.body)
                .ok_or_else(|| malformed("checkpoint body has the wrong length".into()))?;
            Ok(Record::Checkpoint {
                index: cp.index,
                t_ns: cp.t_ns,
                key_id: hex::encode(cp.key_id),
                chain: cp.chain,
            })
        }
        c => Err(ReadError::UnknownType {
            record: raw.index,
            offset: raw.offset as u64,
            code: c,
        }),
    }
}

/// Iterates the records of a recording held in memory, as `(byte offset, record)`. A bad magic is
/// the first item's error; after any error the iterator ends. Never panics.
///
/// [`Reader::next_record`] gives the record's ordinal and encoded length too.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u64,
    done: bool,
    /// The magic's error, reported by the first call.
    magic: Option<ReadError>,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; the magic is checked by the first call to `next`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        match check_magic(buf) {
            Ok(pos) => Reader {
                buf,
                pos,
                index: 0,
                done: false,
                magic: None,
            },
            Err(e) => Reader {
                buf,
                pos: 0,
                index: 0,
                done: false,
                magic: Some(e),
            },
        }
    }

    /// Byte offset of the next record (after the last one yielded).
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Ordinal of the next record.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub(crate) fn next_raw(&mut self) -> Option<Result<Raw<'a>, ReadError>> {
        if self.done {
            return None;
        }
        if let Some(e) = self.magic.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.pos >= self.buf.len() {
            self.done = true;
            return None;
        }
        match parse_raw(self.buf, self.pos, self.index) {
            Ok(raw) => {
                self.pos += raw.bytes.len();
                self.index += 1;
                Some(Ok(raw))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// The next record with its ordinal, offset and length.
    pub fn next_record(&mut self) -> Option<Result<RecordAt, ReadError>> {
        let raw = match self.next_raw()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        match decode(&raw) {
            Ok(record) => Some(Ok(RecordAt {
                index: raw.index,
                offset: raw.offset as u64,
                len: raw.bytes.len() as u64,
                record,
            })),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for Reader<'_> {
    /// `(byte offset, record)`.
    type Item = Result<(u64, Record), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().map(|r| r.map(|r| (r.offset, r.record)))
    }
}

impl std::iter::FusedIterator for Reader<'_> {}

/// Every record of a recording, or the first read error.
pub fn read_all(bytes: &[u8]) -> Result<Vec<Record>, ReadError> {
    Reader::new(bytes).map(|r| r.map(|(_, rec)| rec)).collect()
}

/// The records up to the first read error, and that error if any (for replaying a recording that
/// was cut or is still being written).
pub fn read_prefix(bytes: &[u8]) -> (Vec<Record>, Option<ReadError>) {
    let mut out = Vec::new();
    for r in Reader::new(bytes) {
        match r {
            Ok((_, rec)) => out.push(rec),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}
