//! Stages: what a session's bytes pass through between the two sides, before they are recorded and
//! forwarded.
//!
//! Every chunk of a live session goes decode → decide → record → forward. A [`Stage`] does the
//! first two for one device: a protocol decoder with operation-level policy (DICOM, HL7, HTTP) reads
//! the operations out of the bytes and decides on each; a credential injector rewrites bytes. The
//! gateway's pipeline (`ward_server::pipeline`) runs a device's stages in order (client → device
//! bytes from the first stage to the last, device → client bytes from the last to the first, as
//! layers nearer the device see its bytes first), then records what comes out and forwards exactly
//! that: the recording holds, byte for byte, what each side was sent.
//!
//! Stages are pure, like the rest of this crate: bytes and `now` in, a [`Verdict`] out. They never
//! read a clock, a socket or a file. A stage may hold bytes back until a message is complete
//! ([`Verdict::Hold`]); held bytes are neither forwarded nor recorded until the stage releases them
//! (with a later chunk through [`Verdict::Replace`], or at the end of the direction through
//! [`Stage::finish`]). A stage bounds what it holds and ends the session when a peer sends more
//! ([`StopKind::TooLarge`]): memory stays bounded whatever the peer sends.
//!
//! Stages come from a [`StageFactory`], consulted once per session when it opens, with the device
//! and the principal: a device without stages costs the pump one branch per chunk.

use std::fmt;

use time::OffsetDateTime;

use crate::device::Device;
use crate::principal::Principal;

/// Which way a chunk travels (the recording's `up`/`down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// From the client to the device.
    Up,
    /// From the device to the client.
    Down,
}

impl Direction {
    /// The other way.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "client to device",
            Direction::Down => "device to client",
        })
    }
}

/// What a stage decided about one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the chunk as it came (the stage may have looked at it, or kept a copy).
    Pass,
    /// Forward nothing yet: the stage keeps the bytes (a message that is not complete) and
    /// releases them later through [`Verdict::Replace`] or [`Stage::finish`].
    Hold,
    /// Forward what the stage wrote to `out` instead of the chunk: rewritten bytes (an injector),
    /// or held bytes released together with this chunk. An empty `out` forwards nothing, like
    /// [`Verdict::Hold`].
    Replace,
    /// End the session: nothing of this chunk is forwarded.
    End(StageStop),
}

/// Why a stage ended a session: the client's message, the audit event's reason and the
/// recording's end record all say this.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageStop {
    /// The stage's name (`"dicom"`, `"http"`, `"inject-password"`).
    pub stage: String,
    /// Which way the bytes that ended it were travelling.
    pub direction: Direction,
    /// What happened.
    pub kind: StopKind,
}

/// What made a stage end a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopKind {
    /// Policy refused an operation the stage decoded.
    Denied {
        /// The operation, as the protocol names it (`"C-STORE"`, `"DELETE /config"`).
        operation: String,
        /// Why policy refused it.
        reason: String,
    },
    /// The stage could not read what its policy needs (fail closed).
    Unparseable(String),
    /// The peer sent a message larger than the stage holds (`limit` bytes): memory stays bounded.
    TooLarge {
        /// The most the stage holds.
        limit: usize,
    },
    /// The stage could not be set up for this session (fail closed).
    Unavailable(String),
}

impl StageStop {
    /// A stop by `stage` for bytes travelling in `direction`.
    pub fn new(stage: impl Into<String>, direction: Direction, kind: StopKind) -> Self {
        Self {
            stage: stage.into(),
            direction,
            kind,
        }
    }
}

impl fmt::Display for StageStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (stage, dir) = (&self.stage, self.direction);
        match &self.kind {
            StopKind::Denied { operation, reason } => write!(
                f,
                "stage {stage} denied operation {operation} ({dir}): {reason}"
            ),
            StopKind::Unparseable(why) => write!(
                f,
                "stage {stage} could not read the traffic ({dir}), session ended (fail closed): {why}"
            ),
            StopKind::TooLarge { limit } => write!(
                f,
                "stage {stage}: a message ({dir}) is larger than the {limit} bytes it holds, session ended"
            ),
            StopKind::Unavailable(why) => write!(
                f,
                "stage {stage} is unavailable, session ended (fail closed): {why}"
            ),
        }
    }
}

impl std::error::Error for StageStop {}

/// An event a stage asks the recording to hold (hash-chained like the bytes): an injected
/// credential, a rejected one, a decoded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// What happened (`credential_injected`, `credential_rejected`).
    pub kind: String,
    /// Its details, in order. Never a secret.
    pub fields: Vec<(String, String)>,
}

impl RecordedEvent {
    /// An event of `kind` with `fields`.
    pub fn new(kind: impl Into<String>, fields: &[(&str, &str)]) -> Self {
        Self {
            kind: kind.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }
}

/// What a stage says about the bytes it just wrote to `out`, for the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `out[range]` is a secret the stage put there (an injected credential): forwarded to the
    /// device, never recorded; the recording holds `event` in its place.
    Secret {
        /// Where the secret is in the stage's output.
        range: std::ops::Range<usize>,
        /// What the recording holds instead.
        event: RecordedEvent,
    },
    /// An event to record after the chunk.
    Event(RecordedEvent),
    /// Bytes to send back to the side this chunk came from, as if the far side had sent them: a
    /// decoder's refusal of an operation (an HTTP `403`, an HL7 `AR` ACK, a DIMSE failure status,
    /// a line of text on a console). They pass no later stage, are recorded in the direction they
    /// travel, and are sent after whatever that direction already forwarded. A stage that must
    /// order its answer after bytes still to come from the far side (an HTTP response to an
    /// earlier pipelined request) holds it and releases it in that direction itself.
    Reply(Vec<u8>),
}

/// One step of a device's pipeline: sees every chunk of the session, both ways, in order.
pub trait Stage: Send {
    /// The stage's name, for end reasons and logs.
    fn name(&self) -> &str;

    /// Take `input` travelling in `dir` at `now`. `out` is empty on entry; the stage writes to it
    /// only for [`Verdict::Replace`] (the pipeline ignores `out` otherwise).
    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict;

    /// Notes about the chunk just processed (secret spans in `out`, events to record), moved
    /// into `notes`. Called after every [`Stage::process`]; the default has none. A secret span is
    /// only honoured on [`Verdict::Replace`], and a stage after an injector may not rewrite its
    /// output (the chain ends the session if it does: the span would no longer be known).
    fn take_notes(&mut self, notes: &mut Vec<Note>) {
        let _ = notes;
    }

    /// The direction `dir` ended (the peer half-closed): append to `out` what the stage still holds
    /// and should be forwarded, or end the session (a message cut off half-way that policy must
    /// see whole). The default holds nothing.
    fn finish(
        &mut self,
        dir: Direction,
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Result<(), StageStop> {
        let _ = (dir, now, out);
        Ok(())
    }
}

/// What a factory knows about the session it builds stages for.
#[derive(Debug, Clone, Copy)]
pub struct SessionContext<'a> {
    /// The device being opened (its id, protocol and labels).
    pub device: &'a Device,
    /// Who opens it.
    pub principal: &'a Principal,
    /// The rule that permitted the session.
    pub rule: &'a str,
    /// When the session opens.
    pub now: OffsetDateTime,
}

/// Where a gateway gets each session's stages. Consulted once per session, at open.
pub trait StageFactory: Send + Sync {
    /// The stages for this session, in the order a client → device chunk passes them (device →
    /// client chunks pass them in reverse). Empty for a device without stages. A factory that cannot build a stage
    /// the device needs returns a [`Refuse`] in its place: the session then ends at its first byte
    /// (fail closed).
    fn stages(&self, session: &SessionContext<'_>) -> Vec<Box<dyn Stage>>;
}

/// A stage that ends the session at its first chunk, either way: what a factory returns for a
/// stage it could not build.
#[derive(Debug, Clone)]
pub struct Refuse {
    /// The stage that could not be built.
    pub stage: String,
    /// Why.
    pub why: String,
}

impl Stage for Refuse {
    fn name(&self) -> &str {
        &self.stage
    }

    fn process(&mut self, dir: Direction, _: &[u8], _: OffsetDateTime, _: &mut Vec<u8>) -> Verdict {
        Verdict::End(StageStop::new(
            self.stage.clone(),
            dir,
            StopKind::Unavailable(self.why.clone()),
        ))
    }
}

/// A session's stages, run in order on each chunk. The driver (the gateway's pump) owns one per
/// session and hands it every chunk; it forwards and records what [`Chain::process`] says.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    /// Scratch for the stage outputs between stages; reused from chunk to chunk.
    spare: Vec<u8>,
    /// The notes of the last [`Chain::process`] (see [`Chain::take_notes`]).
    notes: Vec<Note>,
}

/// What the chain decided about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Forward (and record) the chunk as it came.
    AsIs,
    /// Forward (and record) the bytes written to `out` instead; nothing when `out` is empty.
    Replaced,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.stages.iter().map(|s| s.name()).collect();
        f.debug_struct("Chain").field("stages", &names).finish()
    }
}

impl Chain {
    /// The stages, in order.
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Self {
            stages,
            spare: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// True when there is no stage: every chunk passes as it came.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The stages' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name().to_string()).collect()
    }

    /// Run `input` through every stage: in order for client → device bytes, in reverse for device
    /// → client bytes. On [`Forward::Replaced`], `out` holds what to forward (`out` is cleared
    /// first). A stage's [`Verdict::End`] stops the chain.
    pub fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Result<Forward, StageStop> {
        out.clear();
        self.notes.clear();
        // `replaced`: the current bytes are in `out` (not `input`).
        let mut replaced = false;
        let n = self.stages.len();
        for i in 0..n {
            let Some(stage) = self.stages.get_mut(order(dir, n, i)) else {
                break;
            };
            if replaced && out.is_empty() {
                // An earlier stage holds everything: nothing reaches the later ones yet.
                break;
            }
            self.spare.clear();
            let current: &[u8] = if replaced { out } else { input };
            let verdict = stage.process(dir, current, now, &mut self.spare);
            let secrets_before = has_secret(&self.notes);
            let first_new = self.notes.len();
            stage.take_notes(&mut self.notes);
            match verdict {
                Verdict::Pass => {}
                Verdict::Hold => {
                    out.clear();
                    replaced = true;
                }
                Verdict::Replace => {
                    if secrets_before {
                        return Err(secret_rewritten(stage.name(), dir));
                    }
                    std::mem::swap(out, &mut self.spare);
                    replaced = true;
                }
                Verdict::End(stop) => return Err(stop),
            }
            // A secret span only means something in bytes the stage wrote (Replace) and within them.
            let wrote = matches!(verdict, Verdict::Replace);
            let len = out.len();
            let bad = self.notes.iter().skip(first_new).any(|n| match n {
                Note::Secret { range, .. } => !wrote || range.start > range.end || range.end > len,
                Note::Event(_) | Note::Reply(_) => false,
            });
            if bad {
                return Err(secret_rewritten(stage.name(), dir));
            }
        }
        Ok(if replaced {
            Forward::Replaced
        } else {
            Forward::AsIs
        })
    }

    /// The notes of the last [`Chain::process`] (secret spans in its `out`, in order of position,
    /// and events), moved out.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// The direction `dir` ended: what the stages still hold, in order, goes to `out` (each
    /// stage's release passes the later stages like any chunk).
    pub fn finish(
        &mut self,
        dir: Direction,
        now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Result<(), StageStop> {
        out.clear();
        let n = self.stages.len();
        for i in 0..n {
            let Some(stage) = self.stages.get_mut(order(dir, n, i)) else {
                break;
            };
            if !out.is_empty() {
                self.spare.clear();
                match stage.process(dir, out, now, &mut self.spare) {
                    Verdict::Pass => {}
                    Verdict::Hold => out.clear(),
                    Verdict::Replace => std::mem::swap(out, &mut self.spare),
                    Verdict::End(stop) => return Err(stop),
                }
            }
            stage.finish(dir, now, out)?;
        }
        Ok(())
    }
}

/// The `i`-th stage a chunk travelling `dir` meets among `n`: client → device bytes pass the
/// stages in order, device → client bytes in reverse, so each stage sees the other side's bytes as
/// the stage next to that side left them (the injector, nearest the device, sees the device's
/// answers before a decoder adds its own refusals to them).
fn order(dir: Direction, n: usize, i: usize) -> usize {
    match dir {
        Direction::Up => i,
        Direction::Down => n.saturating_sub(1).saturating_sub(i),
    }
}

fn has_secret(notes: &[Note]) -> bool {
    notes.iter().any(|n| matches!(n, Note::Secret { .. }))
}

/// A stage rewrote bytes holding a secret another stage injected, or marked a span it did not
/// write: the recording could no longer leave the secret out, so the session ends.
fn secret_rewritten(stage: &str, dir: Direction) -> StageStop {
    StageStop::new(
        stage,
        dir,
        StopKind::Unavailable(
            "a secret span of the stage output cannot be kept out of the recording (misordered stages)"
                .to_string(),
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    /// Ends the session when client → device bytes contain `pattern` (within one chunk).
    struct DenyOn(&'static [u8]);

    impl Stage for DenyOn {
        fn name(&self) -> &str {
            "deny-on"
        }
        fn process(
            &mut self,
            dir: Direction,
            input: &[u8],
            _: OffsetDateTime,
            _: &mut Vec<u8>,
        ) -> Verdict {
            if dir == Direction::Up && input.windows(self.0.len()).any(|w| w == self.0) {
                return Verdict::End(StageStop::new(
                    "deny-on",
                    dir,
                    StopKind::Denied {
                        operation: String::from_utf8_lossy(self.0).into_owned(),
                        reason: "not on this device".into(),
                    },
                ));
            }
            Verdict::Pass
        }
    }

    /// Rewrites `from` to `to` in client → device bytes (an injector); passes what it does not touch.
    struct Rewrite(&'static [u8], &'static [u8]);

    impl Stage for Rewrite {
        fn name(&self) -> &str {
            "rewrite"
        }
        fn process(
            &mut self,
            dir: Direction,
            input: &[u8],
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            let (from, to) = (self.0, self.1);
            if dir == Direction::Down || !input.windows(from.len()).any(|w| w == from) {
                return Verdict::Pass;
            }
            let mut i = 0;
            while i < input.len() {
                if input[i..].starts_with(from) {
                    out.extend_from_slice(to);
                    i += from.len();
                } else {
                    out.push(input[i]);
                    i += 1;
                }
            }
            Verdict::Replace
        }
    }

    /// A decoder's buffering: holds client → device bytes until a line is complete, at most
    /// `limit` bytes; releases whole lines; at the end releases a partial line as it is.
    struct Lines {
        held: Vec<u8>,
        limit: usize,
    }

    impl Lines {
        fn new(limit: usize) -> Self {
            Self {
                held: Vec::new(),
                limit,
            }
        }
    }

    impl Stage for Lines {
        fn name(&self) -> &str {
            "lines"
        }
        fn process(
            &mut self,
            dir: Direction,
            input: &[u8],
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            if dir == Direction::Down {
                return Verdict::Pass;
            }
            self.held.extend_from_slice(input);
            let Some(last_nl) = self.held.iter().rposition(|&b| b == b'\n') else {
                if self.held.len() > self.limit {
                    return Verdict::End(StageStop::new(
                        "lines",
                        dir,
                        StopKind::TooLarge { limit: self.limit },
                    ));
                }
                return Verdict::Hold;
            };
            out.extend(self.held.drain(..=last_nl));
            if self.held.len() > self.limit {
                return Verdict::End(StageStop::new(
                    "lines",
                    dir,
                    StopKind::TooLarge { limit: self.limit },
                ));
            }
            Verdict::Replace
        }
        fn finish(
            &mut self,
            _: Direction,
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Result<(), StageStop> {
            out.append(&mut self.held);
            Ok(())
        }
    }

    /// Feed `chunks` up through `chain`, then end the direction; what was forwarded, chunk by chunk.
    fn run(chain: &mut Chain, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, StageStop> {
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            match chain.process(Direction::Up, c, now(), &mut out)? {
                Forward::AsIs => sent.push(c.to_vec()),
                Forward::Replaced => sent.push(out.clone()),
            }
        }
        chain.finish(Direction::Up, now(), &mut out)?;
        sent.push(out.clone());
        Ok(sent)
    }

    #[test]
    fn no_stage_forwards_every_chunk_as_it_came() {
        let mut chain = Chain::new(Vec::new());
        assert!(chain.is_empty());
        let mut out = Vec::new();
        assert_eq!(
            chain.process(Direction::Up, b"abc", now(), &mut out),
            Ok(Forward::AsIs)
        );
        assert_eq!(out.capacity(), 0, "no stage, no allocation");
        chain.finish(Direction::Up, now(), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_denied_pattern_ends_the_session_with_its_typed_reason() {
        let mut chain = Chain::new(vec![Box::new(DenyOn(b"DELETE"))]);
        let mut out = Vec::new();
        assert_eq!(
            chain.process(Direction::Up, b"GET /", now(), &mut out),
            Ok(Forward::AsIs)
        );
        assert_eq!(
            chain.process(Direction::Down, b"DELETE", now(), &mut out),
            Ok(Forward::AsIs)
        );
        let stop = chain
            .process(Direction::Up, b"x DELETE /cfg", now(), &mut out)
            .unwrap_err();
        assert_eq!(stop.stage, "deny-on");
        assert_eq!(stop.direction, Direction::Up);
        assert_eq!(
            stop.kind,
            StopKind::Denied {
                operation: "DELETE".into(),
                reason: "not on this device".into()
            }
        );
        assert_eq!(
            stop.to_string(),
            "stage deny-on denied operation DELETE (client to device): not on this device"
        );
    }

    #[test]
    fn a_rewriting_stage_forwards_its_replacement() {
        let mut chain = Chain::new(vec![Box::new(Rewrite(b"$PW", b"hunter2"))]);
        let sent = run(&mut chain, &[b"user x\n", b"pass $PW\n"]).unwrap();
        assert_eq!(
            sent,
            vec![b"user x\n".to_vec(), b"pass hunter2\n".to_vec(), Vec::new()]
        );
    }

    #[test]
    fn a_partial_message_is_held_until_complete_then_released() {
        let mut chain = Chain::new(vec![Box::new(Lines::new(64))]);
        let sent = run(&mut chain, &[b"GET /a", b"bc\nGET /d", b"ef\n", b"tail"]).unwrap();
        // Nothing of the first chunk is forwarded; each line goes whole; the tail at the end.
        assert_eq!(
            sent,
            vec![
                Vec::new(),
                b"GET /abc\n".to_vec(),
                b"GET /def\n".to_vec(),
                Vec::new(),
                b"tail".to_vec()
            ]
        );
    }

    #[test]
    fn what_a_stage_holds_is_bounded() {
        let mut chain = Chain::new(vec![Box::new(Lines::new(8))]);
        let stop = run(&mut chain, &[b"0123", b"45678"]).unwrap_err();
        assert_eq!(stop.kind, StopKind::TooLarge { limit: 8 });
    }

    #[test]
    fn stages_run_in_order_and_a_later_one_sees_only_what_the_earlier_released() {
        // Lines holds; Rewrite sees whole lines only, so a pattern split across chunks is found;
        // DenyOn sees the rewritten bytes.
        let mut chain = Chain::new(vec![
            Box::new(Lines::new(64)),
            Box::new(Rewrite(b"$PW", b"hunter2")),
            Box::new(DenyOn(b"$PW")),
        ]);
        let sent = run(&mut chain, &[b"pass $", b"PW\n", b"pass $P", b"W"]).unwrap();
        assert_eq!(
            sent,
            vec![
                Vec::new(),
                b"pass hunter2\n".to_vec(),
                Vec::new(),
                Vec::new(),
                b"pass hunter2".to_vec()
            ]
        );
        // Without the rewrite, the denial catches the line whole, released at the end.
        let mut chain = Chain::new(vec![Box::new(Lines::new(64)), Box::new(DenyOn(b"$PW"))]);
        let stop = run(&mut chain, &[b"ok\npass $P", b"W"]).unwrap_err();
        assert!(matches!(stop.kind, StopKind::Denied { .. }), "{stop}");
    }

    /// Appends its tag to every chunk, both ways.
    struct Tag(&'static [u8]);

    impl Stage for Tag {
        fn name(&self) -> &str {
            "tag"
        }
        fn process(
            &mut self,
            _: Direction,
            input: &[u8],
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            out.extend_from_slice(input);
            out.extend_from_slice(self.0);
            Verdict::Replace
        }
    }

    #[test]
    fn device_bytes_pass_the_stages_in_reverse() {
        // A decoder first, an injector last: client bytes meet the decoder first, device bytes the
        // injector first (it must see the device's answers before a decoder adds refusals).
        let mut chain = Chain::new(vec![
            Box::new(Tag(b"<decoder")),
            Box::new(Tag(b"<injector")),
        ]);
        let mut out = Vec::new();
        chain
            .process(Direction::Up, b"req", now(), &mut out)
            .unwrap();
        assert_eq!(out, b"req<decoder<injector");
        chain
            .process(Direction::Down, b"resp", now(), &mut out)
            .unwrap();
        assert_eq!(out, b"resp<injector<decoder");
        out.clear();
        chain.finish(Direction::Down, now(), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_refused_stage_ends_the_session_at_its_first_byte_either_way() {
        let refuse = || Refuse {
            stage: "dicom".into(),
            why: "no policy for this device".into(),
        };
        let mut out = Vec::new();
        for dir in [Direction::Up, Direction::Down] {
            let mut chain = Chain::new(vec![Box::new(refuse())]);
            let stop = chain.process(dir, b"x", now(), &mut out).unwrap_err();
            assert_eq!(
                stop.kind,
                StopKind::Unavailable("no policy for this device".into())
            );
            assert!(stop.to_string().contains("fail closed"), "{stop}");
        }
    }

    proptest! {
        /// Whatever the chunking, the stages forward the same bytes.
        #[test]
        fn output_does_not_depend_on_chunking(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'$'), Just(b'P'), Just(b'W'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let whole = {
                let mut chain = Chain::new(vec![Box::new(Lines::new(1024)), Box::new(Rewrite(b"$PW", b"pw!"))]);
                run(&mut chain, &[&data]).unwrap().concat()
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&data[at..c]);
                at = c;
            }
            pieces.push(&data[at..]);
            let mut chain = Chain::new(vec![Box::new(Lines::new(1024)), Box::new(Rewrite(b"$PW", b"pw!"))]);
            prop_assert_eq!(run(&mut chain, &pieces).unwrap().concat(), whole);
        }
    }
}
