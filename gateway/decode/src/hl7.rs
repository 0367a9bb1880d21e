//! The HL7 v2 decoder stage: messages in MLLP frames (`0x0B` message `0x1C 0x0D`), each held
//! whole (at most [`MAX_MESSAGE`] bytes) until its end block, then read and decided.
//!
//! What it reads (hand-written: the header fields it needs are simple to split, and no crate is
//! worth a dependency for them):
//! - `MSH`, with the message's own field separator (MSH-1) and encoding characters (MSH-2):
//!   message type MSH-9 (code and trigger event, `ADT^A01`; the message structure, a third
//!   component, is not part of the name; upper-cased, so a deny list is not bypassed by case),
//!   sending application and facility MSH-3/4, receiving MSH-5/6, control id MSH-10, processing
//!   id MSH-11, version MSH-12;
//! - `MSA` in answers: acknowledgment code MSA-1, the acknowledged control id MSA-2;
//! - `PID` (patient id PID-3 and name PID-5): reported as patient data only.
//!
//! Segments end in CR (LF and CRLF are accepted too). Client → device messages are requests
//! (`operation` events, decided by the policy); device → client messages are answers
//! (`operation_result`, named by their own message type, `ACK`).
//!
//! Enforcement: a refused message is never forwarded; the gateway answers it itself with an
//! application-reject ACK (`MSA|AR`, the reason in MSA-3 and in an `ERR` segment, MLLP-framed,
//! sending and receiving application swapped, the time of `now` in MSH-7), because a sender whose
//! message goes unanswered resends it forever.
//!
//! Fail closed under a policy: bytes outside MLLP framing (line breaks between frames are
//! tolerated and passed on), a frame that is not one HL7 message
//! (no `MSH` first, a batch, a second `MSH`, no message type), or a message over [`MAX_MESSAGE`]
//! end the session. Without a policy the stage reports one `undecodable` event and passes the
//! rest of the session through untouched.
//!
//! Limits: escape sequences (`\F\` …) inside fields are reported as they are; HL7 batches
//! (`FHS`/`BHS`) and several messages in one frame are not decoded; the character set (MSH-18)
//! is not consulted: fields are read as UTF-8, invalid bytes replaced in the events.

use time::{OffsetDateTime, UtcOffset};
use ward_core::operations::{OpDecision, OpPolicy, OpProtocol};
use ward_core::stage::{Direction, Note, Stage, StageStop, StopKind, Verdict};

use crate::{denied_event, kind, undecodable_event, Operation};

/// MLLP start block.
pub const START_BLOCK: u8 = 0x0B;
/// MLLP end block (followed by [`CR`]).
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return: ends an MLLP frame after [`END_BLOCK`], and every segment.
pub const CR: u8 = 0x0D;
/// The largest message (the bytes between the start and end blocks) the stage holds.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Field values in events are cut to this many characters.
const MAX_FIELD: usize = 200;

const STAGE: &str = "hl7";

/// Where a direction's byte stream is in the MLLP framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Between frames: the next byte must be a start block.
    #[default]
    Between,
    /// Inside a frame's message.
    InFrame,
    /// After the end block: the next byte must be CR.
    AfterEnd,
}

/// One direction's decoding state.
#[derive(Debug, Default)]
struct Side {
    framing: Framing,
    /// The current frame so far (start block, message, end block): never more than
    /// [`MAX_MESSAGE`] + 3 bytes.
    held: Vec<u8>,
    /// Bytes of this direction before the current chunk.
    offset: u64,
    /// Where the current frame started.
    frame_at: u64,
}

/// Decodes HL7 v2 messages in MLLP frames and enforces the session's operation list.
#[derive(Debug)]
pub struct Hl7Stage {
    policy: OpPolicy,
    up: Side,
    down: Side,
    /// Undecodable (no policy): everything passes untouched from now on.
    passthrough: bool,
    notes: Vec<Note>,
}

impl Hl7Stage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self {
            policy,
            up: Side::default(),
            down: Side::default(),
            passthrough: false,
            notes: Vec::new(),
        }
    }

    fn side(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

/// Why a direction's bytes are not HL7 over MLLP, and from which byte (of that direction).
struct Broken {
    offset: u64,
    why: String,
    too_large: bool,
}

impl Stage for Hl7Stage {
    fn name(&self) -> &str {
        STAGE
    }

    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if self.passthrough {
            // What this side held when the other side turned out undecodable goes first.
            let side = self.side(dir);
            if side.held.is_empty() {
                return Verdict::Pass;
            }
            out.append(&mut side.held);
            out.extend_from_slice(input);
            return Verdict::Replace;
        }
        let mut at = 0usize;
        let result = self.decode(dir, input, now, out, &mut at);
        let side = self.side(dir);
        side.offset += input.len() as u64;
        if let Err(broken) = result {
            if self.policy.enforces() {
                let kind = if broken.too_large {
                    StopKind::TooLarge { limit: MAX_MESSAGE }
                } else {
                    StopKind::Unparseable(format!(
                        "not HL7 v2 over MLLP at byte {} ({dir}): {}",
                        broken.offset, broken.why
                    ))
                };
                return Verdict::End(StageStop::new(STAGE, dir, kind));
            }
            self.notes.push(Note::Event(undecodable_event(
                OpProtocol::Hl7,
                dir,
                broken.offset,
                &broken.why,
            )));
            self.passthrough = true;
            let side = self.side(dir);
            out.append(&mut side.held);
            out.extend_from_slice(input.get(at..).unwrap_or_default());
        }
        if out.as_slice() == input {
            out.clear();
            return Verdict::Pass;
        }
        Verdict::Replace
    }

    fn take_notes(&mut self, notes: &mut Vec<Note>) {
        notes.append(&mut self.notes);
    }

    fn finish(
        &mut self,
        dir: Direction,
        _: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Result<(), StageStop> {
        // A message cut off by the end of the stream was never complete, so never decided: under
        // a policy it is not forwarded; without one the bytes go on as they came.
        let enforces = self.policy.enforces();
        let side = self.side(dir);
        if enforces {
            side.held.clear();
        } else {
            out.append(&mut side.held);
        }
        Ok(())
    }
}

impl Hl7Stage {
    /// Decode `input`, writing what to forward to `out`; `at` is how far it got.
    fn decode(
        &mut self,
        dir: Direction,
        input: &[u8],
        now: OffsetDateTime,
        out: &mut Vec<u8>,
        at: &mut usize,
    ) -> Result<(), Broken> {
        while let Some(rest) = input.get(*at..).filter(|r| !r.is_empty()) {
            let side = self.side(dir);
            let here = side.offset + *at as u64;
            match side.framing {
                Framing::Between => {
                    // Line breaks between frames (some peers end a frame with CR LF) are harmless.
                    let breaks = rest.iter().take_while(|&&b| b == CR || b == b'\n').count();
                    if breaks > 0 {
                        out.extend_from_slice(rest.get(..breaks).unwrap_or_default());
                        *at += breaks;
                        continue;
                    }
                    if rest.first() != Some(&START_BLOCK) {
                        return Err(Broken {
                            offset: here,
                            why: "a byte outside MLLP framing (a message must start with 0x0B)"
                                .into(),
                            too_large: false,
                        });
                    }
                    side.held.clear();
                    side.held.push(START_BLOCK);
                    side.frame_at = here;
                    side.framing = Framing::InFrame;
                    *at += 1;
                }
                Framing::InFrame => {
                    let stop = rest
                        .iter()
                        .position(|&b| b == END_BLOCK || b == START_BLOCK);
                    let piece = stop.map_or(rest, |p| rest.get(..p).unwrap_or_default());
                    if side.held.len() - 1 + piece.len() > MAX_MESSAGE {
                        return Err(Broken {
                            offset: side.frame_at,
                            why: format!("a message larger than {MAX_MESSAGE} bytes"),
                            too_large: true,
                        });
                    }
                    side.held.extend_from_slice(piece);
                    *at += piece.len();
                    match stop.and_then(|p| rest.get(p)) {
                        None => {}
                        Some(&END_BLOCK) => {
                            side.held.push(END_BLOCK);
                            side.framing = Framing::AfterEnd;
                            *at += 1;
                        }
                        Some(_) => {
                            return Err(Broken {
                                offset: here + piece.len() as u64,
                                why: "a start block (0x0B) inside a message".into(),
                                too_large: false,
                            })
                        }
                    }
                }
                Framing::AfterEnd => {
                    if rest.first() != Some(&CR) {
                        return Err(Broken {
                            offset: here,
                            why: "the end block (0x1C) is not followed by CR (0x0D)".into(),
                            too_large: false,
                        });
                    }
                    side.held.push(CR);
                    side.framing = Framing::Between;
                    *at += 1;
                    let frame_at = side.frame_at;
                    let frame = std::mem::take(&mut side.held);
                    let message = frame
                        .get(1..frame.len().saturating_sub(2))
                        .unwrap_or_default();
                    let parsed = parse(message).map_err(|why| Broken {
                        offset: frame_at,
                        why,
                        too_large: false,
                    });
                    let parsed = match parsed {
                        Ok(p) => p,
                        Err(e) => {
                            // The frame goes on with the rest, as it came.
                            self.side(dir).held = frame;
                            return Err(e);
                        }
                    };
                    self.message(dir, &parsed, &frame, now, out);
                    // Keep the allocation for the next frame.
                    let side = self.side(dir);
                    side.held = frame;
                    side.held.clear();
                }
            }
        }
        Ok(())
    }

    /// A complete message `frame` (`parsed`) sent `dir`: report it, decide it, forward it or answer it.
    fn message(
        &mut self,
        dir: Direction,
        parsed: &Parsed,
        frame: &[u8],
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) {
        if dir == Direction::Down {
            let mut op = Operation::new(OpProtocol::Hl7, dir, parsed.name.clone());
            if let Some(msa) = &parsed.msa {
                op = op
                    .field("ack", cut(&msa.code))
                    .field("control_id", cut(&msa.control_id));
                if !msa.text.is_empty() {
                    op = op.field("text", cut(&msa.text));
                }
            }
            op = parsed.header_fields(op);
            self.notes.push(Note::Event(op.event(kind::RESULT)));
            out.extend_from_slice(frame);
            return;
        }
        let mut op = Operation::new(OpProtocol::Hl7, dir, parsed.name.clone())
            .field("control_id", cut(&parsed.control_id));
        op = parsed.header_fields(op);
        if let Some(pid) = &parsed.patient_id {
            op = op.phi("patient_id", cut(pid));
        }
        if let Some(name) = &parsed.patient_name {
            op = op.phi("patient_name", cut(name));
        }
        match self.policy.decide(&parsed.name) {
            OpDecision::Allow => {
                self.notes.push(Note::Event(op.event(kind::OPERATION)));
                out.extend_from_slice(frame);
            }
            OpDecision::Deny(reason) => {
                let text = format!(
                    "Ward refused {}: {reason}; the message was not delivered to the device (ask an administrator to change the rule's operations.hl7 if it must pass)",
                    parsed.name
                );
                self.notes
                    .push(Note::Event(denied_event(&self.policy, &op, &reason)));
                self.notes.push(Note::Reply(reject_ack(parsed, &text, now)));
            }
        }
    }
}

/// `s` cut to [`MAX_FIELD`] characters.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD) {
        Some((i, _)) => s.get(..i).unwrap_or_default().to_string(),
        None => s.to_string(),
    }
}

/// An MSA segment's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msa {
    code: String,
    control_id: String,
    text: String,
}

/// What the stage reads of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    /// The field separator (MSH-1).
    fs: u8,
    /// The encoding characters (MSH-2), as sent.
    encoding: Vec<u8>,
    /// The operation name: MSH-9 code and trigger, upper-cased (`ADT^A01`, `ACK`).
    name: String,
    /// The trigger event (MSH-9.2), as sent.
    trigger: String,
    /// MSH-3, MSH-4, MSH-5, MSH-6 as sent (for the answer).
    raw_apps: [Vec<u8>; 4],
    control_id: String,
    raw_control_id: Vec<u8>,
    raw_processing_id: Vec<u8>,
    raw_version: Vec<u8>,
    msa: Option<Msa>,
    patient_id: Option<String>,
    patient_name: Option<String>,
}

impl Parsed {
    fn header_fields(&self, mut op: Operation) -> Operation {
        let names = [
            "sending_app",
            "sending_facility",
            "receiving_app",
            "receiving_facility",
        ];
        for (name, raw) in names.iter().zip(&self.raw_apps) {
            if !raw.is_empty() {
                op = op.field(name, cut(&text(raw)));
            }
        }
        if !self.raw_version.is_empty() {
            op = op.field("version", cut(&text(&self.raw_version)));
        }
        op
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Field `n` of a segment split at its separators (`fields[0]` is the segment id).
fn field<'a>(fields: &[&'a [u8]], n: usize) -> &'a [u8] {
    fields.get(n).copied().unwrap_or_default()
}

/// Whether `s` is an HL7 code (message type, trigger event): letters, digits, `_`.
fn is_code(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// Read one message (the bytes between the MLLP blocks).
fn parse(message: &[u8]) -> Result<Parsed, String> {
    let mut segments = message
        .split(|&b| b == CR || b == b'\n')
        .filter(|s| !s.is_empty());
    let msh = segments.next().unwrap_or_default();
    match msh.get(..3) {
        Some(b"MSH") => {}
        Some(b"FHS") | Some(b"BHS") => {
            return Err("an HL7 batch (FHS/BHS): batches are not decoded".into())
        }
        _ => return Err("the message does not start with an MSH segment".into()),
    }
    let fs = *msh
        .get(3)
        .ok_or("the MSH segment has no field separator (MSH-1)")?;
    if fs.is_ascii_alphanumeric() || fs.is_ascii_whitespace() || fs.is_ascii_control() {
        return Err(format!("MSH-1 field separator {fs:#04x} is not usable"));
    }
    // fields[i] is MSH-(i+1) for i ≥ 1: MSH-1 is the separator itself.
    let fields: Vec<&[u8]> = msh.split(|&b| b == fs).collect();
    let encoding = field(&fields, 1);
    let comp = *encoding
        .first()
        .ok_or("MSH-2 encoding characters are missing")?;
    if encoding.len() > 5 || encoding.contains(&fs) || comp.is_ascii_alphanumeric() {
        return Err("MSH-2 encoding characters are not usable".into());
    }
    let msh_n = |n: usize| field(&fields, n - 1);
    let mut kind = msh_n(9).split(|&b| b == comp);
    let code = kind.next().unwrap_or_default();
    let trigger = kind.next().unwrap_or_default();
    if !is_code(code) || !(trigger.is_empty() || is_code(trigger)) {
        return Err(format!(
            "MSH-9 message type {:?} is not an HL7 message type",
            cut(&text(msh_n(9)))
        ));
    }
    let mut name = text(code).to_ascii_uppercase();
    if !trigger.is_empty() {
        name.push('^');
        name.push_str(&text(trigger).to_ascii_uppercase());
    }
    let mut parsed = Parsed {
        fs,
        encoding: encoding.to_vec(),
        name,
        trigger: text(trigger),
        raw_apps: [
            msh_n(3).to_vec(),
            msh_n(4).to_vec(),
            msh_n(5).to_vec(),
            msh_n(6).to_vec(),
        ],
        control_id: text(msh_n(10)),
        raw_control_id: msh_n(10).to_vec(),
        raw_processing_id: msh_n(11).to_vec(),
        raw_version: msh_n(12).to_vec(),
        msa: None,
        patient_id: None,
        patient_name: None,
    };
    for seg in segments {
        let fields: Vec<&[u8]> = seg.split(|&b| b == fs).collect();
        match field(&fields, 0) {
            b"MSH" => return Err("more than one message in one MLLP frame".into()),
            b"MSA" if parsed.msa.is_none() => {
                parsed.msa = Some(Msa {
                    code: text(field(&fields, 1)),
                    control_id: text(field(&fields, 2)),
                    text: text(field(&fields, 3)),
                });
            }
            b"PID" if parsed.patient_id.is_none() && parsed.patient_name.is_none() => {
                let (id, name) = (field(&fields, 3), field(&fields, 5));
                parsed.patient_id = (!id.is_empty()).then(|| text(id));
                parsed.patient_name = (!name.is_empty()).then(|| text(name));
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// `s` with the message's delimiters escaped (HL7 escape sequences), line breaks as blanks.
fn escape(s: &str, fs: u8, encoding: &[u8]) -> Vec<u8> {
    let esc = encoding.get(2).copied();
    let mut out = Vec::with_capacity(s.len());
    for &b in s.as_bytes() {
        let seq = if b == fs {
            Some(b'F')
        } else if Some(b) == encoding.first().copied() {
            Some(b'S')
        } else if Some(b) == encoding.get(1).copied() {
            Some(b'R')
        } else if Some(b) == esc {
            Some(b'E')
        } else if Some(b) == encoding.get(3).copied() {
            Some(b'T')
        } else {
            None
        };
        match (seq, esc) {
            (Some(c), Some(e)) => out.extend_from_slice(&[e, c, e]),
            (Some(_), None) => out.push(b' '),
            (None, _) if b == CR || b == b'\n' => out.push(b' '),
            (None, _) => out.push(b),
        }
    }
    out
}

/// The application-reject ACK for `msg`, explaining `why`, at `now`, MLLP-framed.
fn reject_ack(msg: &Parsed, why: &str, now: OffsetDateTime) -> Vec<u8> {
    let fs = msg.fs;
    let comp = msg.encoding.first().copied().unwrap_or(b'^');
    let now = now.to_offset(UtcOffset::UTC);
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let [send_app, send_fac, recv_app, recv_fac] = &msg.raw_apps;
    let mut m = vec![START_BLOCK];
    m.extend_from_slice(b"MSH");
    m.push(fs);
    m.extend_from_slice(&msg.encoding);
    // The answer goes from the receiver the message was meant for back to its sender.
    for f in [recv_app, recv_fac, send_app, send_fac] {
        m.push(fs);
        m.extend_from_slice(f);
    }
    m.push(fs);
    m.extend_from_slice(stamp.as_bytes());
    m.push(fs); // MSH-8 security
    m.push(fs);
    m.extend_from_slice(b"ACK");
    if !msg.trigger.is_empty() {
        m.push(comp);
        m.extend_from_slice(msg.trigger.as_bytes());
        m.push(comp);
        m.extend_from_slice(b"ACK");
    }
    m.push(fs);
    m.extend_from_slice(b"WARD");
    m.extend_from_slice(&msg.raw_control_id);
    m.push(fs);
    if msg.raw_processing_id.is_empty() {
        m.push(b'P');
    } else {
        m.extend_from_slice(&msg.raw_processing_id);
    }
    m.push(fs);
    m.extend_from_slice(&msg.raw_version);
    m.push(CR);
    m.extend_from_slice(b"MSA");
    m.push(fs);
    m.extend_from_slice(b"AR");
    m.push(fs);
    m.extend_from_slice(&msg.raw_control_id);
    m.push(fs);
    let text = escape(why, fs, &msg.encoding);
    m.extend_from_slice(&text);
    m.push(CR);
    // ERR (v2.5 layout): ERR-3 error code (HL7 table 0357: 200 unsupported message type),
    // ERR-4 severity E, ERR-8 the user message.
    m.extend_from_slice(b"ERR");
    m.extend_from_slice(&[fs, fs, fs]);
    for (i, part) in [&b"200"[..], b"Unsupported message type", b"HL70357"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            m.push(comp);
        }
        m.extend_from_slice(part);
    }
    m.push(fs);
    m.push(b'E');
    m.extend_from_slice(&[fs, fs, fs, fs]);
    m.extend_from_slice(&text);
    m.push(CR);
    m.push(END_BLOCK);
    m.push(CR);
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::harness::drive;
    use proptest::prelude::*;
    use ward_core::operations::OpList;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-28 05:06:07 UTC)
    }

    fn frame(msg: &str) -> Vec<u8> {
        let mut f = vec![START_BLOCK];
        f.extend_from_slice(msg.as_bytes());
        f.extend_from_slice(&[END_BLOCK, CR]);
        f
    }

    const ADT: &str = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050000||ADT^A01^ADT_A01|MSG00001|P|2.5\rEVN|A01|20261128050000\rPID|1||PAT-4711^^^NORTH^MR||DOE^JANE||19700101|F\rPV1|1|I|ICU^12^1\r";
    const ORM: &str = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050100||ORM^O01|MSG00002|P|2.5\rPID|1||PAT-4711||DOE^JANE\rORC|NW|1\r";
    const ACK_AA: &str = "MSH|^~\\&|PUMPGW|ICU|HIS|NORTH|20261128050001||ACK^A01^ACK|ACK00001|P|2.5\rMSA|AA|MSG00001\r";

    fn policy() -> OpPolicy {
        OpPolicy {
            rule: "his-feeds-pumps".into(),
            protocol: OpProtocol::Hl7,
            list: Some(OpList {
                allow: vec!["ADT^A*".into()],
                deny: vec!["ORM^*".into()],
            }),
        }
    }

    fn field_of(ev: &ward_core::stage::RecordedEvent, k: &str) -> Option<String> {
        ev.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn an_allowed_message_and_its_ack_are_forwarded_and_reported() {
        let (adt, ack) = (frame(ADT), frame(ACK_AA));
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(
            &mut s,
            &[(Direction::Up, &adt), (Direction::Down, &ack)],
            0,
            now(),
        );
        assert_eq!(t.stop, None);
        assert_eq!(t.up, adt);
        assert_eq!(t.down, ack);
        assert_eq!(t.ops(kind::OPERATION), ["ADT^A01"]);
        assert_eq!(t.ops(kind::RESULT), ["ACK^A01"]);
        let op = t.of_kind(kind::OPERATION).next().unwrap();
        assert_eq!(field_of(op, "control_id").unwrap(), "MSG00001");
        assert_eq!(field_of(op, "sending_app").unwrap(), "HIS");
        assert_eq!(field_of(op, "sending_facility").unwrap(), "NORTH");
        assert_eq!(field_of(op, "receiving_app").unwrap(), "PUMPGW");
        assert_eq!(field_of(op, "receiving_facility").unwrap(), "ICU");
        assert_eq!(field_of(op, "version").unwrap(), "2.5");
        assert_eq!(
            field_of(op, "phi.patient_id").unwrap(),
            "PAT-4711^^^NORTH^MR"
        );
        assert_eq!(field_of(op, "phi.patient_name").unwrap(), "DOE^JANE");
        // No patient data outside the phi. fields.
        for (k, v) in &op.fields {
            if !k.starts_with(crate::PHI_PREFIX) {
                assert!(!v.contains("DOE") && !v.contains("4711"), "{k}={v}");
            }
        }
        let res = t.of_kind(kind::RESULT).next().unwrap();
        assert_eq!(field_of(res, "ack").unwrap(), "AA");
        assert_eq!(field_of(res, "control_id").unwrap(), "MSG00001");
    }

    #[test]
    fn a_denied_message_is_answered_ar_and_never_forwarded() {
        let (adt, orm) = (frame(ADT), frame(ORM));
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(
            &mut s,
            &[(Direction::Up, &orm), (Direction::Up, &adt)],
            0,
            now(),
        );
        assert_eq!(t.stop, None);
        assert_eq!(t.up, adt, "only the allowed message reaches the device");
        assert_eq!(t.replies.len(), 1);
        let reply = &t.replies[0];
        assert_eq!(reply.first(), Some(&START_BLOCK));
        assert!(reply.ends_with(&[END_BLOCK, CR]));
        let body = String::from_utf8(reply[1..reply.len() - 2].to_vec()).unwrap();
        let segs: Vec<&str> = body.split('\r').filter(|s| !s.is_empty()).collect();
        assert_eq!(
            segs[0],
            "MSH|^~\\&|PUMPGW|ICU|HIS|NORTH|20261128050607+0000||ACK^O01^ACK|WARDMSG00002|P|2.5"
        );
        assert!(segs[1].starts_with("MSA|AR|MSG00002|Ward refused ORM\\S\\O01: rule his-feeds-pumps denies hl7 operations matching \"ORM\\S\\*\""), "{}", segs[1]);
        assert!(
            segs[2].starts_with("ERR|||200^Unsupported message type^HL70357|E||||Ward refused"),
            "{}",
            segs[2]
        );
        // The answer parses as an HL7 ACK itself.
        let p = parse(&reply[1..reply.len() - 2]).unwrap();
        assert_eq!(p.name, "ACK^O01");
        assert_eq!(p.msa.unwrap().code, "AR");
        assert_eq!(t.ops(kind::DENIED), ["ORM^O01"]);
        let d = t.of_kind(kind::DENIED).next().unwrap();
        assert_eq!(field_of(d, "rule").unwrap(), "his-feeds-pumps");
        assert!(field_of(d, "reason").unwrap().contains("ORM^*"));
        assert_eq!(t.ops(kind::OPERATION), ["ADT^A01"]);
    }

    #[test]
    fn own_delimiters_lf_segments_and_case_are_read() {
        let msg = "MSH#$~\\&#HIS#N#DEV#F#2026##orm$o01$X#C7#T#2.3\nPID#1##ID9##ROE$R\n";
        let mut s = Hl7Stage::new(policy(), "pump");
        let f = frame(msg);
        let t = drive(&mut s, &[(Direction::Up, &f)], 0, now());
        assert_eq!(t.ops(kind::DENIED), ["ORM^O01"]);
        assert!(t.up.is_empty());
        let reply = String::from_utf8(t.replies[0].clone()).unwrap();
        assert!(
            reply.contains("MSH#$~\\&#DEV#F#HIS#N#20261128050607+0000##ACK$o01$ACK#WARDC7#T#2.3\r"),
            "{reply:?}"
        );
        assert!(reply.contains("\rMSA#AR#C7#"), "{reply:?}");
    }

    #[test]
    fn bytes_outside_framing_end_the_session_under_a_policy() {
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(&mut s, &[(Direction::Up, b"MSH|^~\\&|x\r")], 0, now());
        let stop = t.stop.unwrap();
        assert!(
            matches!(&stop.kind, StopKind::Unparseable(w) if w.contains("outside MLLP framing")),
            "{stop}"
        );
        assert!(t.up.is_empty());
        // A frame whose message is not HL7.
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(
            &mut s,
            &[(Direction::Up, &frame("GET / HTTP/1.1\r\n"))],
            0,
            now(),
        );
        assert!(matches!(t.stop.unwrap().kind, StopKind::Unparseable(_)));
        // Two messages in one frame: one could hide behind the other.
        let two = format!("{ADT}{ORM}");
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(&mut s, &[(Direction::Up, &frame(&two))], 0, now());
        assert!(
            matches!(&t.stop.as_ref().unwrap().kind, StopKind::Unparseable(w) if w.contains("more than one")),
            "{:?}",
            t.stop
        );
        assert!(t.up.is_empty());
    }

    #[test]
    fn without_a_policy_garbage_is_reported_once_and_passed() {
        let adt = frame(ADT);
        let mut junk = adt.clone();
        junk.extend_from_slice(b"\r\n");
        junk.extend_from_slice(&adt);
        let first_junk = junk.len();
        junk.extend_from_slice(b"hello");
        junk.extend_from_slice(&adt);
        let ack = frame(ACK_AA);
        let mut s = Hl7Stage::new(OpPolicy::observe(OpProtocol::Hl7), "pump");
        let t = drive(
            &mut s,
            &[(Direction::Up, &junk), (Direction::Down, &ack)],
            0,
            now(),
        );
        assert_eq!(t.stop, None);
        assert_eq!(t.up, junk);
        assert_eq!(t.down, ack);
        assert_eq!(t.ops(kind::OPERATION), ["ADT^A01", "ADT^A01"]);
        let u: Vec<_> = t.of_kind(kind::UNDECODABLE).collect();
        assert_eq!(u.len(), 1);
        assert_eq!(field_of(u[0], "offset").unwrap(), first_junk.to_string());
        assert!(t.ops(kind::RESULT).is_empty(), "nothing decoded after");
    }

    #[test]
    fn a_held_partial_message_is_released_when_the_other_side_turns_undecodable() {
        let adt = frame(ADT);
        let mut s = Hl7Stage::new(OpPolicy::observe(OpProtocol::Hl7), "pump");
        let t = drive(
            &mut s,
            &[
                (Direction::Up, &adt[..10]),
                (Direction::Down, b"junk"),
                (Direction::Up, &adt[10..]),
            ],
            0,
            now(),
        );
        assert_eq!(t.up, adt);
        assert_eq!(t.down, b"junk");
    }

    #[test]
    fn messages_are_bounded() {
        let mut big = vec![START_BLOCK];
        big.extend_from_slice(b"MSH|^~\\&|");
        big.resize(MAX_MESSAGE + 2, b'x');
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(&mut s, &[(Direction::Up, &big)], 4096, now());
        assert_eq!(
            t.stop.unwrap().kind,
            StopKind::TooLarge { limit: MAX_MESSAGE }
        );
        let mut s = Hl7Stage::new(OpPolicy::observe(OpProtocol::Hl7), "pump");
        let t = drive(&mut s, &[(Direction::Up, &big)], 4096, now());
        assert_eq!(t.stop, None);
        assert_eq!(t.up, big);
        assert_eq!(t.ops(kind::UNDECODABLE).len(), 0);
        assert_eq!(t.of_kind(kind::UNDECODABLE).count(), 1);
        assert!(s.up.held.capacity() <= MAX_MESSAGE + 8192);
    }

    #[test]
    fn a_partial_message_at_the_end_is_not_forwarded_under_a_policy() {
        let adt = frame(ADT);
        let part = &adt[..adt.len() - 1];
        let mut s = Hl7Stage::new(policy(), "pump");
        let t = drive(&mut s, &[(Direction::Up, part)], 0, now());
        assert!(t.up.is_empty());
        let mut s = Hl7Stage::new(OpPolicy::observe(OpProtocol::Hl7), "pump");
        let t = drive(&mut s, &[(Direction::Up, part)], 0, now());
        assert_eq!(t.up, part);
    }

    fn script_bytes() -> Vec<(Direction, Vec<u8>)> {
        vec![
            (Direction::Up, [frame(ADT), frame(ORM), frame(ADT)].concat()),
            (Direction::Down, [frame(ACK_AA), frame(ACK_AA)].concat()),
        ]
    }

    proptest! {
        #[test]
        fn decoding_does_not_depend_on_chunking(step in 1usize..400, enforce in any::<bool>()) {
            let p = if enforce { policy() } else { OpPolicy::observe(OpProtocol::Hl7) };
            let parts = script_bytes();
            let script: Vec<(Direction, &[u8])> = parts.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let whole = drive(&mut Hl7Stage::new(p.clone(), "d"), &script, 0, now());
            let chunked = drive(&mut Hl7Stage::new(p, "d"), &script, step, now());
            prop_assert_eq!(&whole, &chunked);
            prop_assert_eq!(whole.ops(kind::OPERATION).len(), if enforce { 2 } else { 3 });
        }

        #[test]
        fn any_bytes_any_chunking_same_outcome(
            data in proptest::collection::vec(prop_oneof![Just(START_BLOCK), Just(END_BLOCK), Just(CR), Just(b'|'), any::<u8>()], 0..300),
            step in 1usize..64,
            enforce in any::<bool>(),
        ) {
            let mut bytes = frame(ADT);
            bytes.extend_from_slice(&data);
            let p = if enforce { policy() } else { OpPolicy::observe(OpProtocol::Hl7) };
            let script = [(Direction::Up, bytes.as_slice()), (Direction::Down, data.as_slice())];
            let whole = drive(&mut Hl7Stage::new(p.clone(), "d"), &script, 0, now());
            let chunked = drive(&mut Hl7Stage::new(p, "d"), &script, step, now());
            if whole.stop.is_none() {
                prop_assert_eq!(&whole, &chunked);
            } else {
                prop_assert_eq!(whole.stop.map(|s| s.kind), chunked.stop.map(|s| s.kind));
            }
        }
    }
}
