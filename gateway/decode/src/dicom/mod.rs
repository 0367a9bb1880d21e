//! The DICOM decoder stage: the upper layer (PS3.8) and DIMSE command sets (PS3.7), streaming.
//!
//! What it reads, both ways:
//! - PDUs (type, reserved, 4-byte big-endian length). A-ASSOCIATE-RQ/AC/RJ, A-RELEASE and
//!   A-ABORT are small (at most [`SMALL_PDU_CAP`] bytes) and read whole: the AE titles and the
//!   presentation contexts (id, abstract syntax = SOP class, transfer syntaxes) become an
//!   `A-ASSOCIATE` operation (RQ) or result (AC/RJ) event; an A-ABORT a result event.
//! - P-DATA-TF PDUs, PDV by PDV (4-byte length, presentation context id, message control header:
//!   bit 0 command/data, bit 1 last fragment). Command fragments are reassembled (at most
//!   [`COMMAND_CAP`] bytes) and read as an implicit VR little endian group-0000 data set:
//!   CommandField, Affected/Requested SOP Class and Instance UIDs, MessageID(BeingRespondedTo),
//!   Status, CommandDataSetType, MoveDestination. Each element at most once, in ascending order,
//!   and CommandGroupLength exact, or the set is not read (a peer must not show Ward one command
//!   and the device another). A request becomes an `operation` event named after its command
//!   (`C-STORE`, `C-FIND`, `N-ACTION`, …; an unknown CommandField `DIMSE-0xNNNN`), a response an
//!   `operation_result` event with its status (`0x0000`) under the request's name.
//! - Data fragments (the data sets: images, identifiers) are never held: they pass as they stream;
//!   only PDU and PDV headers are parsed, with a carry of at most 6 bytes. A C-STORE request is
//!   reported once the first fragment of its data set has passed: PatientName and PatientID are
//!   read from its first [`PHI_SCAN`] bytes (in the transfer syntax the A-ASSOCIATE-AC accepted;
//!   implicit or explicit VR little endian) and recorded as `phi.patient_name`/`phi.patient_id`.
//!
//! What it enforces, with an operation list ([`OpPolicy::enforces`]), on what the client sends:
//! - presentation contexts whose SOP class only serves denied operations ([`ops_for_sop_class`])
//!   are removed from the A-ASSOCIATE-RQ before it reaches the device (the PDU is rewritten, its
//!   lengths fixed), and the device's A-ASSOCIATE-AC is given back a result (user-rejection) for
//!   each, so the client hears of every context it proposed; if none remains the gateway answers
//!   the client with an A-ASSOCIATE-RJ (rejected-permanent, service-user, no reason given) and
//!   forwards nothing, then or after. One `operation_denied` event per refused operation lists
//!   its contexts and SOP classes.
//! - a DIMSE request for a denied operation that still arrives is not forwarded: its command
//!   fragments and all its data fragments are dropped (streaming, until the next command), the
//!   P-DATA-TF PDUs that carried them are rewritten without them (what is let through of such a
//!   PDU goes in P-DATA-TF PDUs of its own), and the gateway answers with the matching response
//!   carrying status [`REFUSED_NOT_AUTHORIZED`] (0x0124, "Refused: Not authorized"), the reason
//!   in ErrorComment (0000,0902), no data set. A P-DATA-TF PDU is held only until it is known
//!   whether it needs a rewrite (a command's decision needs its whole command set; a PDU whose
//!   first PDV is data that is let through goes out as it streams). A denied command in a PDU
//!   that already went out (it began with data let through) ends the session: it can no longer
//!   be cut out.
//! - C-CANCEL is never refused (it only stops an operation already let through); responses and
//!   the device's own requests (C-STORE sub-operations of a C-GET, N-EVENT-REPORT) are decoded,
//!   not governed.
//! - Answers to the client go out at a PDU boundary of the device's stream (held until the
//!   device finishes the PDU it is sending).
//!
//! Bytes that are not DICOM: with an operation list the session ends (fail closed; too large a
//! PDU or command set: `TooLarge`); without, one `undecodable` event and everything after passes
//! untouched.

use std::fmt::Write as _;

use time::OffsetDateTime;
use ward_core::operations::{OpDecision, OpPolicy, OpProtocol};
use ward_core::stage::{Direction, Note, Stage, StageStop, StopKind, Verdict};

use crate::{denied_event, kind, undecodable_event, Operation};

/// The largest association PDU (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT) read whole.
pub const SMALL_PDU_CAP: usize = 64 * 1024;
/// The largest command set reassembled.
pub const COMMAND_CAP: usize = 64 * 1024;
/// The most bytes of command fragments (with their PDV headers) held while a command set is
/// incomplete (tiny fragments cost 6 header bytes each).
const HELD_COMMAND_CAP: usize = 4 * COMMAND_CAP;
/// The most bytes of whole, let-through PDVs held in a P-DATA-TF PDU that may still need a
/// rewrite; beyond, they are forwarded in a P-DATA-TF PDU of their own.
const HELD_PDU_CAP: usize = 256 * 1024;
/// How much of a C-STORE data set's first fragment is read for the patient's name and id.
pub const PHI_SCAN: usize = 8 * 1024;
/// The status of the gateway's refusal of a denied DIMSE request: "Refused: Not authorized"
/// (PS3.7 C.5.x; general status 0x0124).
pub const REFUSED_NOT_AUTHORIZED: u16 = 0x0124;

const VERIFICATION: &str = "1.2.840.10008.1.1";
const STORAGE_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.";
const QR_PREFIX: &str = "1.2.840.10008.5.1.4.1.2.";
const MODALITY_WORKLIST: &str = "1.2.840.10008.5.1.4.31";
const MPPS: &str = "1.2.840.10008.3.1.2.3.3";
const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";

/// Every DIMSE operation a context of an unknown SOP class might carry (C-CANCEL aside).
const ANY_DIMSE: [&str; 11] = [
    "C-ECHO",
    "C-STORE",
    "C-FIND",
    "C-MOVE",
    "C-GET",
    "N-EVENT-REPORT",
    "N-GET",
    "N-SET",
    "N-ACTION",
    "N-CREATE",
    "N-DELETE",
];

/// The DIMSE operations a presentation context of abstract syntax `sop_class` serves; the first
/// is the one its refusal is named after. A context is kept when policy allows any of them.
///
/// - Verification → C-ECHO;
/// - storage SOP classes (`1.2.840.10008.5.1.4.1.1.*`) → C-STORE, and C-GET (a C-GET's
///   sub-operations store the retrieved instances back on storage contexts);
/// - Query/Retrieve information models (`1.2.840.10008.5.1.4.1.2.<model>.<n>`): n = 1 → C-FIND,
///   2 → C-MOVE, 3 → C-GET; Modality Worklist → C-FIND;
/// - Modality Performed Procedure Step → N-CREATE, N-SET; Storage Commitment Push → N-ACTION,
///   N-EVENT-REPORT;
/// - anything else → every DIMSE operation (kept unless policy denies them all).
pub fn ops_for_sop_class(sop_class: &str) -> &'static [&'static str] {
    if sop_class == VERIFICATION {
        return &["C-ECHO"];
    }
    if sop_class.starts_with(STORAGE_PREFIX) {
        return &["C-STORE", "C-GET"];
    }
    if let Some(rest) = sop_class.strip_prefix(QR_PREFIX) {
        match rest.rsplit('.').next() {
            Some("1") => return &["C-FIND"],
            Some("2") => return &["C-MOVE"],
            Some("3") => return &["C-GET"],
            _ => {}
        }
    }
    match sop_class {
        MODALITY_WORKLIST => &["C-FIND"],
        MPPS => &["N-CREATE", "N-SET"],
        STORAGE_COMMITMENT => &["N-ACTION", "N-EVENT-REPORT"],
        _ => &ANY_DIMSE,
    }
}

/// The name of DIMSE command `field` (the response bit ignored), if it is one.
pub fn command_name(field: u16) -> Option<&'static str> {
    Some(match field & 0x7FFF {
        0x0001 => "C-STORE",
        0x0010 => "C-GET",
        0x0020 => "C-FIND",
        0x0021 => "C-MOVE",
        0x0030 => "C-ECHO",
        0x0100 => "N-EVENT-REPORT",
        0x0110 => "N-GET",
        0x0120 => "N-SET",
        0x0130 => "N-ACTION",
        0x0140 => "N-CREATE",
        0x0150 => "N-DELETE",
        0x0FFF => "C-CANCEL",
        _ => return None,
    })
}

/// Why a side stopped decoding.
#[derive(Debug)]
enum Fail {
    Unparseable(String),
    TooLarge(usize),
    Denied { operation: String, reason: String },
}

/// Decodes DICOM operations and enforces the session's operation list.
#[derive(Debug)]
pub struct DicomStage {
    policy: OpPolicy,
    up: Side,
    down: Side,
    notes: Vec<Note>,
    /// Undecodable without a policy: everything passes from now on.
    broken: bool,
    /// The gateway rejected the association: nothing more of the client's reaches the device.
    rejected: bool,
    /// Answers to the client waiting for the device's stream to reach a PDU boundary.
    pending_reply: Vec<u8>,
    /// The transfer syntax accepted for each presentation context.
    syntaxes: std::collections::BTreeMap<u8, String>,
    /// The presentation contexts the gateway removed from the A-ASSOCIATE-RQ.
    removed: Vec<u8>,
}

impl DicomStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        let enforce = policy.enforces();
        Self {
            policy,
            up: Side::new(Direction::Up, enforce),
            down: Side::new(Direction::Down, false),
            notes: Vec::new(),
            broken: false,
            rejected: false,
            pending_reply: Vec::new(),
            syntaxes: std::collections::BTreeMap::new(),
            removed: Vec::new(),
        }
    }

    fn fail(&mut self, dir: Direction, offset: u64, f: Fail) -> Verdict {
        if self.policy.enforces() {
            let kind = match f {
                Fail::Unparseable(why) => StopKind::Unparseable(why),
                Fail::TooLarge(limit) => StopKind::TooLarge { limit },
                Fail::Denied { operation, reason } => StopKind::Denied { operation, reason },
            };
            return Verdict::End(StageStop::new("dicom", dir, kind));
        }
        let why = match f {
            Fail::Unparseable(why) => why,
            Fail::TooLarge(limit) => format!("a PDU or command set larger than {limit} bytes"),
            Fail::Denied { operation, .. } => format!("{operation} could not be refused"),
        };
        self.notes.push(Note::Event(undecodable_event(
            OpProtocol::Dicom,
            dir,
            offset,
            &why,
        )));
        self.broken = true;
        // Without a policy nothing is ever held or rewritten: the chunk passes as it came.
        Verdict::Pass
    }
}

impl Stage for DicomStage {
    fn name(&self) -> &str {
        "dicom"
    }

    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if self.broken {
            return Verdict::Pass;
        }
        if dir == Direction::Up && self.rejected {
            // Replace with nothing: the association was rejected by the gateway.
            return Verdict::Replace;
        }
        let down_at_boundary = self.down.at_boundary();
        if dir == Direction::Down && self.down.at_boundary() {
            self.down.hold_ac = !self.removed.is_empty();
        }
        let mut o = Out::new(input, out);
        let mut replies = Vec::new();
        let side = match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        };
        let mut ctx = Ctx {
            policy: &self.policy,
            notes: &mut self.notes,
            replies: &mut replies,
            pending: &mut self.pending_reply,
            rejected: &mut self.rejected,
            syntaxes: &mut self.syntaxes,
            removed: &mut self.removed,
        };
        let res = side.run(&mut ctx, input, &mut o);
        let offset = side.offset;
        side.offset = side.offset.saturating_add(input.len() as u64);
        for r in replies {
            if down_at_boundary {
                self.notes.push(Note::Reply(r));
            } else {
                self.pending_reply.extend_from_slice(&r);
            }
        }
        if self.pending_reply.len() > HELD_PDU_CAP {
            // Refusals pile up while the device never finishes a PDU: memory stays bounded.
            return Verdict::End(StageStop::new(
                "dicom",
                dir,
                StopKind::TooLarge {
                    limit: HELD_PDU_CAP,
                },
            ));
        }
        if let Err((at, f)) = res {
            return self.fail(dir, offset.saturating_add(at as u64), f);
        }
        o.verdict()
    }

    fn take_notes(&mut self, notes: &mut Vec<Note>) {
        notes.append(&mut self.notes);
    }

    fn finish(
        &mut self,
        dir: Direction,
        _now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Result<(), StageStop> {
        // What the client's side still holds is an unfinished PDU that was never decided: it is
        // dropped. Answers still waiting for the device's stream go out now.
        if dir == Direction::Down {
            out.append(&mut self.pending_reply);
        }
        Ok(())
    }
}

/// Where a chunk's forwarded bytes go: the chunk itself while nothing differs (Pass), else `buf`.
struct Out<'a> {
    input: &'a [u8],
    buf: &'a mut Vec<u8>,
    passed: usize,
    diverged: bool,
}

impl<'a> Out<'a> {
    fn new(input: &'a [u8], buf: &'a mut Vec<u8>) -> Self {
        Self {
            input,
            buf,
            passed: 0,
            diverged: false,
        }
    }

    /// Forward `input[start..end]`.
    fn keep(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        if !self.diverged && start == self.passed {
            self.passed = end;
            return;
        }
        self.diverge();
        if let Some(s) = self.input.get(start..end) {
            self.buf.extend_from_slice(s);
        }
    }

    /// Forward `bytes` (held from earlier, or written by the stage).
    fn insert(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.diverge();
        self.buf.extend_from_slice(bytes);
    }

    /// Forward bytes held in `held`: from the chunk (at `start`) if they all came in it.
    fn held(&mut self, held: &[u8], start: Option<usize>) {
        match start {
            Some(s) if self.input.get(s..s + held.len()) == Some(held) => {
                self.keep(s, s + held.len())
            }
            _ => self.insert(held),
        }
    }

    fn diverge(&mut self) {
        if !self.diverged {
            self.diverged = true;
            if let Some(s) = self.input.get(..self.passed) {
                self.buf.extend_from_slice(s);
            }
        }
    }

    fn verdict(mut self) -> Verdict {
        if !self.diverged && self.passed == self.input.len() {
            Verdict::Pass
        } else {
            self.diverge();
            Verdict::Replace
        }
    }
}

struct Ctx<'a> {
    policy: &'a OpPolicy,
    notes: &'a mut Vec<Note>,
    replies: &'a mut Vec<Vec<u8>>,
    pending: &'a mut Vec<u8>,
    rejected: &'a mut bool,
    /// The transfer syntax accepted for each presentation context (from the A-ASSOCIATE-AC).
    syntaxes: &'a mut std::collections::BTreeMap<u8, String>,
    /// The presentation contexts the gateway removed from the A-ASSOCIATE-RQ.
    removed: &'a mut Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Reading a PDU header (`hdr_n` of 6 bytes so far).
    PduHeader,
    /// Reading a small PDU's body into `small`.
    Small,
    /// Reading a PDV header in a P-DATA-TF PDU.
    PdvHeader,
    /// Reading a PDV's fragment.
    PdvBody,
}

/// How the current P-DATA-TF PDU goes out (with a policy, client → device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Its header is held with `cur` (its let-through whole PDVs) until it is known whether it
    /// needs a rewrite.
    Held,
    /// Its header went out as it came: the rest goes as it comes (a denied command in it ends
    /// the session).
    Committed,
    /// Rewritten: each PDV let through goes out in a P-DATA-TF PDU of its own.
    Reframed,
}

/// A command set being reassembled.
#[derive(Debug)]
struct Cmd {
    pc: u8,
    set: Vec<u8>,
    /// Its fragments as PDVs (header included), held until the command is decided.
    pdvs: Vec<Vec<u8>>,
    held: usize,
    /// Fragments came in an earlier PDU.
    spans: bool,
    /// How many of `pdvs` (the first ones) came in a PDU whose header was already forwarded.
    committed: usize,
}

/// One direction's decoder.
#[derive(Debug)]
struct Side {
    dir: Direction,
    /// Decide and rewrite (client → device under an operation list), or only read.
    enforce: bool,
    offset: u64,
    st: St,
    hdr: [u8; 6],
    hdr_n: usize,
    /// Where the current PDU's header began in the current chunk.
    pdu_start: Option<usize>,
    pdu_type: u8,
    pdu_left: u64,
    small: Vec<u8>,
    frame: Frame,
    cur: Vec<u8>,
    intact: bool,
    pdv_hdr: [u8; 6],
    pdv_n: usize,
    pdv_start: Option<usize>,
    pdv_left: u64,
    pdv_command: bool,
    pdv_last: bool,
    pdv_keep: bool,
    cmd: Option<Cmd>,
    /// The data fragments that follow belong to a refused message: dropped.
    dropping: bool,
    /// Bytes the current step consumed (an error's offset is after them).
    step_n: usize,
    /// A C-STORE request let through, reported once its data set's first fragment is read.
    store: Option<(Operation, u8)>,
    /// The start of that fragment (at most [`PHI_SCAN`] bytes).
    phi: Vec<u8>,
    /// Device → client: the gateway removed presentation contexts from the request, so the
    /// A-ASSOCIATE-AC is held and given back a (rejected) result for each.
    hold_ac: bool,
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_be_bytes(a)
}

fn pdata_header(len: usize) -> [u8; 6] {
    let l = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [0x04, 0x00, l[0], l[1], l[2], l[3]]
}

impl Side {
    fn new(dir: Direction, enforce: bool) -> Self {
        Self {
            dir,
            enforce,
            offset: 0,
            st: St::PduHeader,
            hdr: [0; 6],
            hdr_n: 0,
            pdu_start: None,
            pdu_type: 0,
            pdu_left: 0,
            small: Vec::new(),
            frame: Frame::Committed,
            cur: Vec::new(),
            intact: true,
            pdv_hdr: [0; 6],
            pdv_n: 0,
            pdv_start: None,
            pdv_left: 0,
            pdv_command: false,
            pdv_last: false,
            pdv_keep: true,
            cmd: None,
            dropping: false,
            step_n: 0,
            store: None,
            phi: Vec::new(),
            hold_ac: false,
        }
    }

    fn at_boundary(&self) -> bool {
        self.st == St::PduHeader && self.hdr_n == 0
    }

    /// Whether this PDU type's bytes are held (client → device under a policy).
    fn holds(&self, ty: u8) -> bool {
        (self.enforce && (ty == 0x01 || ty == 0x04)) || (self.hold_ac && ty == 0x02)
    }

    fn run(
        &mut self,
        ctx: &mut Ctx<'_>,
        input: &[u8],
        o: &mut Out<'_>,
    ) -> Result<(), (usize, Fail)> {
        self.pdu_start = None;
        self.pdv_start = None;
        if self.dir == Direction::Down && self.at_boundary() && !ctx.pending.is_empty() {
            o.insert(&std::mem::take(ctx.pending));
        }
        let mut i = 0;
        while i < input.len() && !*ctx.rejected {
            let rest = input.get(i..).unwrap_or_default();
            self.step_n = 0;
            let used = self
                .step(ctx, input, i, rest, o)
                .map_err(|f| (i + self.step_n, f))?;
            i += used.max(1);
        }
        Ok(())
    }

    /// Consume some of `rest` (which starts at `at` in `input`); how many bytes.
    fn step(
        &mut self,
        ctx: &mut Ctx<'_>,
        _input: &[u8],
        at: usize,
        rest: &[u8],
        o: &mut Out<'_>,
    ) -> Result<usize, Fail> {
        match self.st {
            St::PduHeader => {
                let Some(&b) = rest.first() else {
                    return Ok(0);
                };
                if self.hdr_n == 0 {
                    if !(0x01..=0x07).contains(&b) {
                        return Err(Fail::Unparseable(format!(
                            "not a DICOM upper layer PDU (type 0x{b:02x})"
                        )));
                    }
                    if self.cmd.is_some() && b != 0x04 {
                        return Err(Fail::Unparseable(
                            "a PDU other than P-DATA-TF inside an unfinished command set".into(),
                        ));
                    }
                    self.pdu_type = b;
                    self.pdu_start = Some(at);
                }
                let n = (6 - self.hdr_n).min(rest.len());
                self.step_n = n;
                for (k, &byte) in rest.iter().take(n).enumerate() {
                    if let Some(h) = self.hdr.get_mut(self.hdr_n + k) {
                        *h = byte;
                    }
                }
                if !self.holds(self.pdu_type) {
                    o.keep(at, at + n);
                }
                self.hdr_n += n;
                if self.hdr_n == 6 {
                    self.hdr_n = 0;
                    self.pdu_left = u64::from(be32(self.hdr.get(2..6).unwrap_or_default()));
                    if self.pdu_type == 0x04 {
                        self.frame = if self.enforce {
                            Frame::Held
                        } else {
                            Frame::Committed
                        };
                        self.cur.clear();
                        self.intact = true;
                        self.st = St::PdvHeader;
                        if self.pdu_left == 0 {
                            self.pdu_end(ctx, o)?;
                        }
                    } else {
                        if self.pdu_left > SMALL_PDU_CAP as u64 {
                            return Err(Fail::TooLarge(SMALL_PDU_CAP));
                        }
                        self.small.clear();
                        self.st = St::Small;
                        if self.pdu_left == 0 {
                            self.small_end(ctx, o)?;
                        }
                    }
                }
                Ok(n)
            }
            St::Small => {
                let n = usize::try_from(self.pdu_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.step_n = n;
                self.small
                    .extend_from_slice(rest.get(..n).unwrap_or_default());
                if !self.holds(self.pdu_type) {
                    o.keep(at, at + n);
                }
                self.pdu_left -= n as u64;
                if self.pdu_left == 0 {
                    self.small_end(ctx, o)?;
                }
                Ok(n)
            }
            St::PdvHeader => {
                if self.pdv_n == 0 {
                    if self.pdu_left < 6 {
                        return Err(Fail::Unparseable(
                            "a P-DATA-TF PDU ends inside a PDV header".into(),
                        ));
                    }
                    self.pdv_start = Some(at);
                }
                let n = (6 - self.pdv_n).min(rest.len());
                self.step_n = n;
                for (k, &byte) in rest.iter().take(n).enumerate() {
                    if let Some(h) = self.pdv_hdr.get_mut(self.pdv_n + k) {
                        *h = byte;
                    }
                }
                if !self.enforce {
                    o.keep(at, at + n);
                }
                self.pdv_n += n;
                self.pdu_left -= n as u64;
                if self.pdv_n == 6 {
                    self.pdv_n = 0;
                    self.pdv_begin(ctx, o)?;
                }
                Ok(n)
            }
            St::PdvBody => {
                let n = usize::try_from(self.pdv_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.step_n = n;
                let bytes = rest.get(..n).unwrap_or_default();
                if self.pdv_command {
                    if let Some(cmd) = self.cmd.as_mut() {
                        cmd.set.extend_from_slice(bytes);
                        if cmd.set.len() > COMMAND_CAP {
                            return Err(Fail::TooLarge(COMMAND_CAP));
                        }
                        if self.enforce {
                            if let Some(p) = cmd.pdvs.last_mut() {
                                p.extend_from_slice(bytes);
                            }
                            cmd.held += n;
                            if cmd.held > HELD_COMMAND_CAP {
                                return Err(Fail::TooLarge(HELD_COMMAND_CAP));
                            }
                        }
                    }
                    if !self.enforce {
                        o.keep(at, at + n);
                    }
                } else if self.pdv_keep {
                    o.keep(at, at + n);
                    if self.store.is_some() {
                        let room = PHI_SCAN.saturating_sub(self.phi.len()).min(n);
                        self.phi
                            .extend_from_slice(bytes.get(..room).unwrap_or_default());
                        if self.phi.len() >= PHI_SCAN {
                            self.report_store(ctx);
                        }
                    }
                }
                self.pdv_left -= n as u64;
                self.pdu_left -= n as u64;
                if self.pdv_left == 0 {
                    self.pdv_end(ctx, o)?;
                }
                Ok(n)
            }
        }
    }

    /// Report the C-STORE waiting for its data set, with the patient it names (if the first
    /// fragment has it).
    fn report_store(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((mut op, pc)) = self.store.take() {
            for (k, v) in patient(ctx.syntaxes.get(&pc).map(String::as_str), &self.phi) {
                op = op.phi(k, v);
            }
            ctx.notes.push(Note::Event(op.event(kind::OPERATION)));
        }
        self.phi.clear();
    }

    /// A PDV header is complete.
    fn pdv_begin(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>) -> Result<(), Fail> {
        let item_len = u64::from(be32(self.pdv_hdr.get(..4).unwrap_or_default()));
        if item_len < 2 || item_len - 2 > self.pdu_left {
            return Err(Fail::Unparseable(format!(
                "a PDV of length {item_len} does not fit its P-DATA-TF PDU"
            )));
        }
        let [_, _, _, _, pc, mch] = self.pdv_hdr;
        self.pdv_left = item_len - 2;
        self.pdv_command = mch & 0x01 != 0;
        self.pdv_last = mch & 0x02 != 0;
        if self.pdv_command {
            if self.store.is_some() {
                // A C-STORE without its data set: reported as it is.
                self.report_store(ctx);
            }
            match &self.cmd {
                None => {
                    // A new message: what follows is decided with its command.
                    self.dropping = false;
                    self.cmd = Some(Cmd {
                        pc,
                        set: Vec::new(),
                        pdvs: Vec::new(),
                        held: 0,
                        spans: false,
                        committed: 0,
                    });
                }
                Some(c) if c.pc != pc => {
                    return Err(Fail::Unparseable(format!(
                        "command fragments on presentation contexts {} and {pc}",
                        c.pc
                    )));
                }
                Some(_) => {}
            }
            if self.enforce {
                if let Some(cmd) = self.cmd.as_mut() {
                    cmd.pdvs.push(self.pdv_hdr.to_vec());
                    cmd.held += 6;
                    if cmd.held > HELD_COMMAND_CAP {
                        return Err(Fail::TooLarge(HELD_COMMAND_CAP));
                    }
                }
            }
        } else {
            if self.cmd.is_some() {
                return Err(Fail::Unparseable(
                    "a data fragment inside an unfinished command set".into(),
                ));
            }
            self.pdv_keep = !(self.enforce && self.dropping);
            if self.enforce {
                if self.pdv_keep {
                    match self.frame {
                        Frame::Held if self.intact => {
                            o.held(&self.hdr, self.pdu_start);
                            o.insert(&self.cur);
                            self.cur.clear();
                            self.frame = Frame::Committed;
                            o.held(&self.pdv_hdr, self.pdv_start);
                        }
                        Frame::Held => {
                            self.flush_cur(o);
                            self.frame = Frame::Reframed;
                            o.insert(&pdata_header(item_len as usize + 4));
                            o.held(&self.pdv_hdr, self.pdv_start);
                        }
                        Frame::Committed => o.held(&self.pdv_hdr, self.pdv_start),
                        Frame::Reframed => {
                            o.insert(&pdata_header(item_len as usize + 4));
                            o.held(&self.pdv_hdr, self.pdv_start);
                        }
                    }
                } else {
                    match self.frame {
                        Frame::Held => self.intact = false,
                        Frame::Reframed => {}
                        Frame::Committed => {
                            return Err(Fail::Denied {
                                operation: "data of a refused message".into(),
                                reason: "it shares a P-DATA-TF PDU already forwarded".into(),
                            });
                        }
                    }
                }
            }
        }
        self.st = St::PdvBody;
        if self.pdv_left == 0 {
            self.pdv_end(ctx, o)?;
        }
        Ok(())
    }

    /// Forward `cur` (whole PDVs let through) in a P-DATA-TF PDU of its own.
    fn flush_cur(&mut self, o: &mut Out<'_>) {
        if !self.cur.is_empty() {
            o.insert(&pdata_header(self.cur.len()));
            o.insert(&self.cur);
            self.cur.clear();
        }
    }

    fn pdv_end(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>) -> Result<(), Fail> {
        if !self.pdv_command && self.store.is_some() {
            self.report_store(ctx);
        }
        if self.pdv_command && self.pdv_last {
            if let Some(cmd) = self.cmd.take() {
                self.command(ctx, o, cmd)?;
            }
        }
        self.pdv_start = None;
        if self.pdu_left == 0 {
            self.pdu_end(ctx, o)?;
        } else {
            self.st = St::PdvHeader;
        }
        Ok(())
    }

    fn pdu_end(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>) -> Result<(), Fail> {
        self.st = St::PduHeader;
        if self.enforce {
            let pending = self.cmd.is_some();
            match self.frame {
                Frame::Held => {
                    if self.intact && !pending {
                        let whole = self.cur.len() + 6;
                        match self.pdu_start {
                            Some(s)
                                if o.input.get(s + 6..s + whole) == Some(self.cur.as_slice()) =>
                            {
                                o.keep(s, s + whole)
                            }
                            _ => {
                                o.insert(&self.hdr);
                                o.insert(&self.cur);
                            }
                        }
                        self.cur.clear();
                    } else {
                        self.flush_cur(o);
                    }
                }
                Frame::Committed => {
                    // The fragments so far were counted in the header already forwarded.
                    if let Some(c) = self.cmd.as_mut() {
                        c.committed = c.pdvs.len();
                    }
                }
                Frame::Reframed => {}
            }
            if let Some(c) = self.cmd.as_mut() {
                c.spans = true;
            }
        }
        let _ = ctx;
        self.pdu_start = None;
        Ok(())
    }

    /// A command set is complete: report it, decide it, forward or refuse it.
    fn command(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>, cmd: Cmd) -> Result<(), Fail> {
        let set = parse_command(&cmd.set).map_err(Fail::Unparseable)?;
        let response = set.field & 0x8000 != 0 && set.field != 0x0FFF;
        let name = command_name(set.field)
            .map(str::to_string)
            .unwrap_or_else(|| format!("DIMSE-0x{:04X}", set.field & 0x7FFF));
        let mut op = Operation::new(OpProtocol::Dicom, self.dir, name.clone());
        if let Some(c) = set.sop_class() {
            op = op.field("sop_class", c);
        }
        if let Some(c) = set.sop_instance() {
            op = op.field("sop_instance", c);
        }
        if response {
            if let Some(id) = set.responding_to {
                op = op.field("message_id", id.to_string());
            }
            if let Some(s) = set.status {
                op = op.field("status", format!("0x{s:04X}"));
            }
        } else {
            if let Some(id) = set.message_id {
                op = op.field("message_id", id.to_string());
            }
            if let Some(d) = &set.move_destination {
                op = op.field("move_destination", d.clone());
            }
        }
        op = op.field("presentation_context", cmd.pc.to_string());
        let decision = if self.enforce && !response && name != "C-CANCEL" {
            ctx.policy.decide(&name)
        } else {
            OpDecision::Allow
        };
        match decision {
            OpDecision::Allow => {
                let k = if response {
                    kind::RESULT
                } else {
                    kind::OPERATION
                };
                if name == "C-STORE" && !response && set.data_set_type != Some(0x0101) {
                    // Reported with its data set's first fragment (patient name and id).
                    self.store = Some((op, cmd.pc));
                    self.phi.clear();
                } else {
                    ctx.notes.push(Note::Event(op.event(k)));
                }
                if self.enforce {
                    self.release(o, cmd);
                }
            }
            OpDecision::Deny(reason) => {
                ctx.notes
                    .push(Note::Event(denied_event(ctx.policy, &op, &reason)));
                self.dropping = true;
                match self.frame {
                    _ if cmd.committed > 0 => {
                        return Err(Fail::Denied {
                            operation: name,
                            reason: format!(
                                "{reason}; it came in a P-DATA-TF PDU already partly forwarded"
                            ),
                        });
                    }
                    Frame::Committed => {
                        return Err(Fail::Denied {
                            operation: name,
                            reason: format!(
                                "{reason}; it came in a P-DATA-TF PDU already partly forwarded"
                            ),
                        });
                    }
                    Frame::Held => self.intact = false,
                    Frame::Reframed => {}
                }
                ctx.replies.push(refusal(&set, cmd.pc, &reason));
            }
        }
        Ok(())
    }

    /// Forward a let-through command's held fragments.
    fn release(&mut self, o: &mut Out<'_>, mut cmd: Cmd) {
        let (before, rest) = cmd.pdvs.split_at(cmd.committed.min(cmd.pdvs.len()));
        for p in before {
            o.insert(p);
        }
        cmd.pdvs = rest.to_vec();
        match self.frame {
            Frame::Held if !cmd.spans => {
                for p in &cmd.pdvs {
                    self.cur.extend_from_slice(p);
                }
                if self.cur.len() > HELD_PDU_CAP {
                    self.flush_cur(o);
                    self.frame = Frame::Reframed;
                }
            }
            Frame::Committed => {
                for p in &cmd.pdvs {
                    o.insert(p);
                }
            }
            Frame::Held | Frame::Reframed => {
                self.flush_cur(o);
                self.frame = Frame::Reframed;
                for p in &cmd.pdvs {
                    o.insert(&pdata_header(p.len()));
                    o.insert(p);
                }
            }
        }
    }

    /// A small PDU is complete.
    fn small_end(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>) -> Result<(), Fail> {
        self.st = St::PduHeader;
        match self.pdu_type {
            0x01 => self.associate_rq(ctx, o)?,
            0x02 => {
                let ac = parse_associate(&self.small, 0x21)?;
                let mut op = Operation::new(OpProtocol::Dicom, self.dir, "A-ASSOCIATE")
                    .field("result", "accepted")
                    .field("calling_ae", ac.calling.clone())
                    .field("called_ae", ac.called.clone());
                let contexts: Vec<String> = ac
                    .contexts
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{}{}",
                            c.id,
                            context_result(c.result),
                            c.transfer_syntaxes
                                .first()
                                .map(|t| format!("/{t}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                op = op.field("contexts", contexts.join(", "));
                for c in &ac.contexts {
                    if let Some(t) = c.transfer_syntaxes.first() {
                        ctx.syntaxes.insert(c.id, t.clone());
                    }
                }
                ctx.notes.push(Note::Event(op.event(kind::RESULT)));
                if self.hold_ac {
                    self.answer_removed(ctx, o, &ac);
                }
            }
            0x03 => {
                let b = |k: usize| self.small.get(k).copied().unwrap_or(0);
                let op = Operation::new(OpProtocol::Dicom, self.dir, "A-ASSOCIATE")
                    .field("result", "rejected")
                    .field(
                        "reject",
                        format!("result {} source {} reason {}", b(1), b(2), b(3)),
                    );
                ctx.notes.push(Note::Event(op.event(kind::RESULT)));
            }
            0x07 => {
                let b = |k: usize| self.small.get(k).copied().unwrap_or(0);
                let op = Operation::new(OpProtocol::Dicom, self.dir, "A-ABORT")
                    .field("source", b(2).to_string())
                    .field("reason", b(3).to_string());
                ctx.notes.push(Note::Event(op.event(kind::RESULT)));
            }
            _ => {}
        }
        self.pdu_start = None;
        Ok(())
    }

    /// Forward the device's A-ASSOCIATE-AC with a result for each context the gateway removed
    /// from the request (1, user-rejection), before the user information item: the client is told
    /// about every context it proposed, as PS3.8 requires.
    fn answer_removed(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>, ac: &Assoc) {
        let mut extra = Vec::new();
        for id in ctx.removed.iter() {
            if ac.contexts.iter().any(|c| c.id == *id) {
                continue;
            }
            let mut d = vec![*id, 0, 1, 0, 0x40, 0];
            d.extend_from_slice(&17u16.to_be_bytes());
            d.extend_from_slice(b"1.2.840.10008.1.2");
            extra.push(0x21);
            extra.push(0);
            extra.extend_from_slice(&u16::try_from(d.len()).unwrap_or(0).to_be_bytes());
            extra.extend_from_slice(&d);
        }
        let mut body = self.small.get(..68).unwrap_or_default().to_vec();
        let mut placed = false;
        for item in &ac.items {
            if !placed && self.small.get(item.start) == Some(&0x50) {
                body.extend_from_slice(&extra);
                placed = true;
            }
            body.extend_from_slice(self.small.get(item.clone()).unwrap_or_default());
        }
        if !placed {
            body.extend_from_slice(&extra);
        }
        let l = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
        o.insert(&[0x02, self.hdr[1], l[0], l[1], l[2], l[3]]);
        o.insert(&body);
    }

    fn associate_rq(&mut self, ctx: &mut Ctx<'_>, o: &mut Out<'_>) -> Result<(), Fail> {
        let rq = parse_associate(&self.small, 0x20)?;
        let mut removed: Vec<(&'static str, String, &AssocContext)> = Vec::new();
        if self.enforce {
            for c in &rq.contexts {
                let ops = ops_for_sop_class(&c.abstract_syntax);
                let allowed = ops
                    .iter()
                    .any(|op| matches!(ctx.policy.decide(op), OpDecision::Allow));
                if !allowed {
                    let primary = if ops.len() > 2 {
                        "A-ASSOCIATE"
                    } else {
                        ops.first().copied().unwrap_or("A-ASSOCIATE")
                    };
                    let reason = match ctx.policy.decide(primary) {
                        OpDecision::Deny(r) if ops.len() <= 2 => r,
                        _ => format!("rule {} allows no DIMSE operation", ctx.policy.rule),
                    };
                    removed.push((primary, reason, c));
                }
            }
        }
        let describe = |c: &AssocContext| {
            format!(
                "{}:{}/{}",
                c.id,
                c.abstract_syntax,
                c.transfer_syntaxes.join("|")
            )
        };
        let kept: Vec<String> = rq
            .contexts
            .iter()
            .filter(|c| !removed.iter().any(|(_, _, r)| r.id == c.id))
            .map(describe)
            .collect();
        let mut op = Operation::new(OpProtocol::Dicom, self.dir, "A-ASSOCIATE")
            .field("calling_ae", rq.calling.clone())
            .field("called_ae", rq.called.clone())
            .field("contexts", kept.join(", "));
        if !removed.is_empty() {
            let ids: Vec<String> = removed.iter().map(|(_, _, c)| c.id.to_string()).collect();
            op = op.field("removed_contexts", ids.join(","));
        }
        ctx.notes.push(Note::Event(op.event(kind::OPERATION)));
        // One refusal per operation, listing its contexts (storescu proposes a hundred).
        let mut names: Vec<&'static str> = removed.iter().map(|(n, _, _)| *n).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let of: Vec<&(&'static str, String, &AssocContext)> =
                removed.iter().filter(|(n, _, _)| *n == name).collect();
            let reason = of.first().map(|(_, r, _)| r.clone()).unwrap_or_default();
            let ids: Vec<String> = of.iter().map(|(_, _, c)| c.id.to_string()).collect();
            let mut classes = String::new();
            for (k, (_, _, c)) in of.iter().enumerate() {
                if k == 16 {
                    let _ = write!(classes, ", … ({} more)", of.len() - 16);
                    break;
                }
                if k > 0 {
                    classes.push_str(", ");
                }
                classes.push_str(&c.abstract_syntax);
            }
            let denied = Operation::new(OpProtocol::Dicom, self.dir, name)
                .field("calling_ae", rq.calling.clone())
                .field("called_ae", rq.called.clone())
                .field("presentation_contexts", ids.join(","))
                .field("sop_classes", classes);
            ctx.notes.push(Note::Event(denied_event(
                ctx.policy,
                &denied,
                &format!("{reason}: presentation context removed from the association request"),
            )));
        }
        if !self.enforce {
            return Ok(());
        }
        if removed.is_empty() {
            let whole = self.small.len() + 6;
            match self.pdu_start {
                Some(s) if o.input.get(s + 6..s + whole) == Some(self.small.as_slice()) => {
                    o.keep(s, s + whole)
                }
                _ => {
                    o.insert(&self.hdr);
                    o.insert(&self.small);
                }
            }
            return Ok(());
        }
        ctx.removed.extend(removed.iter().map(|(_, _, c)| c.id));
        if removed.len() == rq.contexts.len() {
            // A-ASSOCIATE-RJ: rejected-permanent, service-user, no reason given.
            ctx.replies
                .push(vec![0x03, 0x00, 0, 0, 0, 4, 0x00, 0x01, 0x01, 0x01]);
            *ctx.rejected = true;
            return Ok(());
        }
        let mut body = self.small.get(..68).unwrap_or_default().to_vec();
        for item in &rq.items {
            let drop = removed
                .iter()
                .any(|(_, _, c)| c.item.start == item.start && c.item.end == item.end);
            if !drop {
                body.extend_from_slice(self.small.get(item.clone()).unwrap_or_default());
            }
        }
        let l = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
        o.insert(&[0x01, self.hdr[1], l[0], l[1], l[2], l[3]]);
        o.insert(&body);
        Ok(())
    }
}

fn context_result(r: u8) -> &'static str {
    match r {
        0 => "accepted",
        1 => "user-rejection",
        2 => "no-reason",
        3 => "abstract-syntax-not-supported",
        4 => "transfer-syntaxes-not-supported",
        _ => "unknown",
    }
}

/// A presentation context of an A-ASSOCIATE-RQ (or AC).
#[derive(Debug, Clone)]
struct AssocContext {
    id: u8,
    result: u8,
    abstract_syntax: String,
    transfer_syntaxes: Vec<String>,
    /// Where its item is in the PDU body.
    item: std::ops::Range<usize>,
}

#[derive(Debug)]
struct Assoc {
    called: String,
    calling: String,
    contexts: Vec<AssocContext>,
    /// Every variable item's place in the body, in order.
    items: Vec<std::ops::Range<usize>>,
}

fn uid(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .trim_start_matches(' ')
        .to_string()
}

/// Read an A-ASSOCIATE-RQ/AC body; `pc_type`: 0x20 (RQ) or 0x21 (AC).
fn parse_associate(body: &[u8], pc_type: u8) -> Result<Assoc, Fail> {
    let bad = |why: &str| Fail::Unparseable(format!("A-ASSOCIATE: {why}"));
    if body.len() < 68 {
        return Err(bad("shorter than its fixed fields"));
    }
    let called = uid(body.get(4..20).unwrap_or_default());
    let calling = uid(body.get(20..36).unwrap_or_default());
    let mut contexts = Vec::new();
    let mut items = Vec::new();
    let mut i = 68;
    while i < body.len() {
        let h = body
            .get(i..i + 4)
            .ok_or_else(|| bad("an item header is cut"))?;
        let ty = h.first().copied().unwrap_or(0);
        let len = usize::from(u16::from_be_bytes([
            h.get(2).copied().unwrap_or(0),
            h.get(3).copied().unwrap_or(0),
        ]));
        let end = i + 4 + len;
        let data = body
            .get(i + 4..end)
            .ok_or_else(|| bad("an item is longer than the PDU"))?;
        if ty == pc_type {
            if data.len() < 4 {
                return Err(bad("a presentation context item is too short"));
            }
            let mut c = AssocContext {
                id: data.first().copied().unwrap_or(0),
                result: data.get(2).copied().unwrap_or(0),
                abstract_syntax: String::new(),
                transfer_syntaxes: Vec::new(),
                item: i..end,
            };
            let mut j = 4;
            while j < data.len() {
                let sh = data.get(j..j + 4).ok_or_else(|| bad("a sub-item is cut"))?;
                let sty = sh.first().copied().unwrap_or(0);
                let slen = usize::from(u16::from_be_bytes([
                    sh.get(2).copied().unwrap_or(0),
                    sh.get(3).copied().unwrap_or(0),
                ]));
                let sv = data
                    .get(j + 4..j + 4 + slen)
                    .ok_or_else(|| bad("a sub-item is longer than its item"))?;
                match sty {
                    0x30 if !c.abstract_syntax.is_empty() => {
                        return Err(bad("a presentation context with two abstract syntaxes"));
                    }
                    0x30 => c.abstract_syntax = uid(sv),
                    0x40 => c.transfer_syntaxes.push(uid(sv)),
                    _ => {}
                }
                j += 4 + slen;
            }
            contexts.push(c);
        }
        items.push(i..end);
        i = end;
    }
    Ok(Assoc {
        called,
        calling,
        contexts,
        items,
    })
}

/// The group-0000 elements of a command set Ward reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CommandSet {
    field: u16,
    affected_class: Option<String>,
    requested_class: Option<String>,
    message_id: Option<u16>,
    responding_to: Option<u16>,
    affected_instance: Option<String>,
    requested_instance: Option<String>,
    status: Option<u16>,
    data_set_type: Option<u16>,
    move_destination: Option<String>,
}

impl CommandSet {
    fn sop_class(&self) -> Option<&str> {
        self.affected_class
            .as_deref()
            .or(self.requested_class.as_deref())
    }
    fn sop_instance(&self) -> Option<&str> {
        self.affected_instance
            .as_deref()
            .or(self.requested_instance.as_deref())
    }
}

/// Read a command set (implicit VR little endian, group 0000 only).
fn parse_command(b: &[u8]) -> Result<CommandSet, String> {
    let mut set = CommandSet::default();
    let mut field = None;
    let mut i = 0;
    // Elements must come once each, in ascending order: a peer must not be able to show Ward one
    // CommandField and the device another.
    let mut last: Option<u16> = None;
    while i < b.len() {
        let h = b
            .get(i..i + 8)
            .ok_or_else(|| "a command set element header is cut".to_string())?;
        let le16 = |k: usize| {
            u16::from_le_bytes([
                h.get(k).copied().unwrap_or(0),
                h.get(k + 1).copied().unwrap_or(0),
            ])
        };
        let (group, elem) = (le16(0), le16(2));
        let len = u32::from_le_bytes([
            h.get(4).copied().unwrap_or(0),
            h.get(5).copied().unwrap_or(0),
            h.get(6).copied().unwrap_or(0),
            h.get(7).copied().unwrap_or(0),
        ]) as usize;
        if group != 0 {
            return Err(format!(
                "element ({group:04X},{elem:04X}) outside group 0000 in a command set"
            ));
        }
        if last.is_some_and(|l| elem <= l) {
            return Err(format!(
                "command element (0000,{elem:04X}) repeated or out of order"
            ));
        }
        last = Some(elem);
        let v = b
            .get(i + 8..(i + 8).saturating_add(len))
            .ok_or_else(|| format!("command element (0000,{elem:04X}) is longer than the set"))?;
        if elem == 0x0000 {
            let group_len = match v {
                [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
                _ => return Err("CommandGroupLength (0000,0000) is not a UL".into()),
            };
            if group_len != b.len() - (i + 8 + len) {
                return Err(format!(
                    "CommandGroupLength (0000,0000) says {group_len} bytes, the set has {}",
                    b.len() - (i + 8 + len)
                ));
            }
        }
        let us = || -> Result<u16, String> {
            match v {
                [a, b] => Ok(u16::from_le_bytes([*a, *b])),
                _ => Err(format!("command element (0000,{elem:04X}) is not a US")),
            }
        };
        match elem {
            0x0002 => set.affected_class = Some(uid(v)),
            0x0003 => set.requested_class = Some(uid(v)),
            0x0100 => field = Some(us()?),
            0x0110 => set.message_id = Some(us()?),
            0x0120 => set.responding_to = Some(us()?),
            0x0600 => set.move_destination = Some(uid(v)),
            0x0800 => set.data_set_type = Some(us()?),
            0x0900 => set.status = Some(us()?),
            0x1000 => set.affected_instance = Some(uid(v)),
            0x1001 => set.requested_instance = Some(uid(v)),
            _ => {}
        }
        i += 8 + len;
    }
    set.field =
        field.ok_or_else(|| "a command set without CommandField (0000,0100)".to_string())?;
    Ok(set)
}

/// One implicit VR little endian element.
fn element(out: &mut Vec<u8>, elem: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
}

fn padded(s: &str, pad: u8) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

/// The command set of the response to `rq` with `status` and `comment` (ErrorComment, ≤ 64 chars).
fn response_command(rq: &CommandSet, status: u16, comment: &str) -> Vec<u8> {
    let mut els = Vec::new();
    if let Some(c) = rq.sop_class() {
        element(&mut els, 0x0002, &padded(c, 0));
    }
    element(&mut els, 0x0100, &(rq.field | 0x8000).to_le_bytes());
    element(&mut els, 0x0120, &rq.message_id.unwrap_or(0).to_le_bytes());
    element(&mut els, 0x0800, &0x0101u16.to_le_bytes());
    element(&mut els, 0x0900, &status.to_le_bytes());
    let comment: String = comment.chars().filter(char::is_ascii).take(64).collect();
    element(&mut els, 0x0902, &padded(&comment, b' '));
    if let Some(c) = rq.sop_instance() {
        element(&mut els, 0x1000, &padded(c, 0));
    }
    let mut set = Vec::with_capacity(els.len() + 12);
    element(
        &mut set,
        0x0000,
        &u32::try_from(els.len()).unwrap_or(0).to_le_bytes(),
    );
    set.extend_from_slice(&els);
    set
}

/// A P-DATA-TF PDU carrying `set` as one last command fragment on context `pc`.
fn command_pdu(pc: u8, set: &[u8]) -> Vec<u8> {
    let mut pdu = pdata_header(set.len() + 6).to_vec();
    pdu.extend_from_slice(&u32::try_from(set.len() + 2).unwrap_or(0).to_be_bytes());
    pdu.push(pc);
    pdu.push(0x03);
    pdu.extend_from_slice(set);
    pdu
}

/// The gateway's answer to a refused request: its response with status 0x0124.
fn refusal(rq: &CommandSet, pc: u8, reason: &str) -> Vec<u8> {
    let comment = format!("Ward: {reason}");
    command_pdu(pc, &response_command(rq, REFUSED_NOT_AUTHORIZED, &comment))
}

#[cfg(test)]
mod tests;

/// PatientName (0010,0010) and PatientID (0010,0020) from the start of a data set in transfer
/// syntax `ts` (implicit or explicit VR little endian; none from deflated or big endian ones), as
/// far as `b` goes.
fn patient(ts: Option<&str>, b: &[u8]) -> Vec<(&'static str, String)> {
    let implicit = match ts {
        Some("1.2.840.10008.1.2") => true,
        Some("1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.2") => return Vec::new(),
        Some(_) => false,
        // Unknown: explicit when the first element's VR looks like one.
        None => !b
            .get(4..6)
            .is_some_and(|vr| vr.iter().all(u8::is_ascii_uppercase)),
    };
    let mut found = Vec::new();
    let mut i = 0usize;
    let le16 = |k: usize| {
        u16::from_le_bytes([
            b.get(k).copied().unwrap_or(0),
            b.get(k + 1).copied().unwrap_or(0),
        ])
    };
    let le32 =
        |k: usize| u32::from_le_bytes([0, 1, 2, 3].map(|d| b.get(k + d).copied().unwrap_or(0)));
    while i + 8 <= b.len() {
        let (group, elem) = (le16(i), le16(i + 2));
        if group > 0x0010 {
            break;
        }
        let (hdr, len) = if implicit {
            (8, le32(i + 4))
        } else {
            match b.get(i + 4..i + 6) {
                Some(
                    b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN"
                    | b"UR" | b"UT" | b"UV",
                ) => (12, le32(i + 8)),
                _ => (8, u32::from(le16(i + 6))),
            }
        };
        if len == u32::MAX {
            break;
        }
        let start = i + hdr;
        let Some(v) = b.get(start..start.saturating_add(len as usize)) else {
            break;
        };
        let value = || uid(v);
        match (group, elem) {
            (0x0010, 0x0010) => found.push(("patient_name", value())),
            (0x0010, 0x0020) => found.push(("patient_id", value())),
            _ => {}
        }
        i = start + len as usize;
    }
    found
}
