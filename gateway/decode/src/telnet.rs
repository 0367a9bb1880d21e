//! The telnet decoder stage: the command lines a user types on a device's console.
//!
//! Client → device bytes are read as telnet (RFC 854): IAC negotiation is removed (`IAC IAC` is a
//! literal 0xFF; `IAC SB … IAC SE`; `WILL`/`WONT`/`DO`/`DONT` and their option; the other two-byte
//! commands, of which `EC` erases a character, `EL` the line and `IP` interrupts), and the typed
//! line is rebuilt as the device's line editor would: printable bytes are added, backspace (0x08)
//! and DEL (0x7F) erase a character, `^W` a word, `^U` and `^C` the line; CR LF, CR NUL, a bare CR
//! and a bare LF end it. Each completed line that is not blank is an operation named by the
//! line (trimmed; at most [`MAX_LINE`] bytes). Device → client bytes pass untouched (they are only
//! watched for a password prompt: a line typed after one is reported without its text).
//!
//! Enforcement without breaking interactive echo: keystrokes are forwarded as they are typed (the
//! device echoes them), and the decision is taken when the line ends. For a refused line the
//! stage never forwards the line's terminator (nor the LF/NUL of a CR LF/CR NUL pair), so the
//! device never runs it. In its place it sends the device a line-kill: one erase key (the one the
//! user last pressed, backspace until then) per byte of the line, then `^U`. Why both: a line
//! editor (busybox, readline) or a raw-mode console handles backspace, and a tty in canonical
//! mode kills the whole line on `^U` (VKILL; a backspace it does not take as erase is then
//! killed with the rest); over-erasing an empty line is harmless. Without the kill, the refused
//! text would stay in the device's buffer and prefix the user's next line. The user is told why
//! (`\r\nward: refused …\r\n`, a [`Note::Reply`]).
//!
//! Fail closed on what the stage cannot follow. Under an operation list:
//! - a line edited with cursor, history or function keys (escape sequences), tab completion or
//!   the telnet editing commands (`IAC EC/EL/IP`) is refused whatever its text, because the
//!   device may run something other than what the stage rebuilt (`sh<TAB>` may become
//!   `shutdown`, an up-arrow recalls an unseen command);
//! - other control keys (`^A`, `^D`, `^O`, `^P`, `^R` …) are not forwarded at all: their effect
//!   is the device's own (bash runs the line on `^O`);
//! - `^U`, `^W` and `^C` are forwarded as erase keys over the text they remove (plus `^U` for
//!   `^U`, the `^C` itself for `^C`), so a console that ignores them still drops that text.
//!
//! Without a list every byte passes as it came and an edited line is reported with an `edited`
//! field.
//!
//! Limits: the stage rebuilds lines, not the device's screen, so it assumes the device ends a
//! command on CR/LF and edits with the keys above; a console that acts on single keystrokes
//! (menus, `y/n` without Enter) acts before any decision. The kill assumes the device honours
//! backspace or `^U`. The gateway's own device login (credential injection) happens before the
//! stage sees traffic.

use time::OffsetDateTime;
use ward_core::operations::{OpDecision, OpPolicy, OpProtocol};
use ward_core::stage::{Direction, Note, Stage, StageStop, StopKind, Verdict};

use crate::{denied_event, kind, undecodable_event, Operation};

/// The longest typed line the stage rebuilds.
pub const MAX_LINE: usize = 4096;

const STAGE: &str = "telnet";

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const EL: u8 = 248;
const EC: u8 = 247;
const IP: u8 = 244;
const SE: u8 = 240;

const NUL: u8 = 0x00;
const CTRL_C: u8 = 0x03;
const BS: u8 = 0x08;
const TAB: u8 = 0x09;
const LF: u8 = 0x0A;
const CR: u8 = 0x0D;
const CTRL_U: u8 = 0x15;
const CTRL_W: u8 = 0x17;
const ESC: u8 = 0x1B;
const DEL: u8 = 0x7F;

/// How much of the device's output is kept to spot a password prompt.
const TAIL: usize = 32;
/// The longest escape sequence followed; a longer one ends there.
const MAX_ESCAPE: usize = 32;
/// The name of a line typed at a password prompt (its text is not reported).
pub const HIDDEN_LINE: &str = "(typed at a password prompt)";

/// Where the client's stream is in the telnet command syntax.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    #[default]
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option byte.
    Option,
    /// Inside IAC SB … IAC SE.
    Sub,
    /// IAC inside a subnegotiation.
    SubIac,
}

/// Where the typed data is in a terminal escape sequence.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Esc,
    /// `ESC [` parameters until a final byte.
    Csi,
    /// `ESC O`: one more byte.
    Ss3,
}

/// Decodes telnet operations and enforces the session's operation list.
#[derive(Debug)]
pub struct TelnetStage {
    policy: OpPolicy,
    telnet: Telnet,
    escape: Escape,
    escape_len: usize,
    /// The line typed so far, as the device's line editor would hold it.
    line: Vec<u8>,
    /// Why the line cannot be rebuilt reliably (cursor keys, tab, control characters).
    edited: Option<String>,
    /// The last data byte was the CR that ended a line: an LF or NUL next belongs to it.
    after_cr: bool,
    /// … and that line was refused: the LF or NUL is not forwarded either.
    refused_cr: bool,
    /// The erase key the user last pressed.
    erase: u8,
    /// The end of the device's output (lower-cased), for password prompts.
    tail: Vec<u8>,
    /// Client → device bytes before the current chunk.
    offset: u64,
    /// Undecodable (no policy): client bytes pass untouched from now on.
    passthrough: bool,
    notes: Vec<Note>,
}

impl TelnetStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self {
            policy,
            telnet: Telnet::Data,
            escape: Escape::None,
            escape_len: 0,
            line: Vec::new(),
            edited: None,
            after_cr: false,
            refused_cr: false,
            erase: BS,
            tail: Vec::new(),
            offset: 0,
            passthrough: false,
            notes: Vec::new(),
        }
    }
}

impl Stage for TelnetStage {
    fn name(&self) -> &str {
        STAGE
    }

    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if dir == Direction::Down {
            self.watch_device(input);
            return Verdict::Pass;
        }
        if self.passthrough {
            return Verdict::Pass;
        }
        for (i, &b) in input.iter().enumerate() {
            if let Err(too_long) = self.byte(b, out) {
                let at = self.offset + i as u64;
                if self.policy.enforces() {
                    return Verdict::End(StageStop::new(
                        STAGE,
                        dir,
                        StopKind::TooLarge { limit: too_long },
                    ));
                }
                self.notes.push(Note::Event(undecodable_event(
                    OpProtocol::Telnet,
                    dir,
                    at,
                    &format!("a typed line longer than {MAX_LINE} bytes"),
                )));
                self.passthrough = true;
                self.line = Vec::new();
                out.extend_from_slice(input.get(i + 1..).unwrap_or_default());
                break;
            }
        }
        self.offset += input.len() as u64;
        if out.as_slice() == input {
            out.clear();
            return Verdict::Pass;
        }
        Verdict::Replace
    }

    fn take_notes(&mut self, notes: &mut Vec<Note>) {
        notes.append(&mut self.notes);
    }
}

impl TelnetStage {
    /// Keep the end of the device's output.
    fn watch_device(&mut self, input: &[u8]) {
        let keep = input
            .get(input.len().saturating_sub(TAIL)..)
            .unwrap_or(input);
        self.tail.extend(keep.iter().map(u8::to_ascii_lowercase));
        let extra = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..extra);
    }

    /// Whether the device's output ends with a password prompt.
    fn at_password_prompt(&self) -> bool {
        let t = self.tail.trim_ascii_end();
        [&b"password:"[..], b"passphrase:", b"password"]
            .iter()
            .any(|p| t.ends_with(p))
    }

    /// One client byte; what to forward goes to `out`. `Err(limit)`: the line is too long.
    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), usize> {
        match self.telnet {
            Telnet::Data => {
                if b == IAC {
                    self.telnet = Telnet::Iac;
                    out.push(b);
                    return Ok(());
                }
                return self.data(b, out);
            }
            Telnet::Iac => {
                out.push(b);
                self.telnet = Telnet::Data;
                match b {
                    IAC => {
                        // A literal 0xFF typed.
                        self.after_cr = false;
                        self.refused_cr = false;
                        return self.add(b);
                    }
                    WILL | WONT | DO | DONT => self.telnet = Telnet::Option,
                    SB => self.telnet = Telnet::Sub,
                    // What a telnetd does with these is its own: under a policy the line they
                    // edit is not read with confidence.
                    EC | EL | IP if self.policy.enforces() => {
                        self.mark_edited("telnet editing commands (IAC EC/EL/IP)");
                    }
                    EC => self.erase_char(),
                    EL | IP => self.line.clear(),
                    _ => {}
                }
            }
            Telnet::Option => {
                out.push(b);
                self.telnet = Telnet::Data;
            }
            Telnet::Sub => {
                out.push(b);
                if b == IAC {
                    self.telnet = Telnet::SubIac;
                }
            }
            Telnet::SubIac => {
                out.push(b);
                self.telnet = if b == SE { Telnet::Data } else { Telnet::Sub };
            }
        }
        Ok(())
    }

    /// One data byte typed.
    fn data(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), usize> {
        if std::mem::take(&mut self.after_cr) {
            let refused = std::mem::take(&mut self.refused_cr);
            if b == LF || b == NUL {
                if !refused {
                    out.push(b);
                }
                return Ok(());
            }
        }
        // Inside an escape sequence: line ends and control characters still count as themselves.
        if self.escape != Escape::None {
            let plain = (0x20..0x7F).contains(&b);
            self.escape_len += 1;
            let next = match (self.escape, b) {
                (_, _) if !plain => Escape::None,
                (Escape::Esc, b'[') => Escape::Csi,
                (Escape::Esc, b'O') => Escape::Ss3,
                (Escape::Csi, 0x20..=0x3F) if self.escape_len < MAX_ESCAPE => Escape::Csi,
                _ => Escape::None,
            };
            let consumed = plain;
            self.escape = next;
            if consumed {
                out.push(b);
                return Ok(());
            }
        }
        let enforces = self.policy.enforces();
        match b {
            CR | LF => {
                self.end_line(b, out);
                return Ok(());
            }
            NUL => {}
            BS | DEL => {
                self.erase = b;
                self.erase_char();
            }
            CTRL_U | CTRL_C | CTRL_W if enforces => {
                // Whatever the device makes of ^U, ^C or ^W (a raw console may ignore them),
                // it honours the erase key: the text the stage takes as gone is erased with it.
                let before = self.line.len();
                if b == CTRL_W {
                    self.erase_word();
                } else {
                    self.line.clear();
                }
                if b == CTRL_C {
                    out.push(b);
                }
                out.extend(std::iter::repeat_n(self.erase, before - self.line.len()));
                if b != CTRL_W {
                    out.push(CTRL_U);
                }
                return Ok(());
            }
            CTRL_U | CTRL_C => self.line.clear(),
            CTRL_W => self.erase_word(),
            ESC => {
                self.escape = Escape::Esc;
                self.escape_len = 0;
                self.mark_edited("cursor, history or function keys (escape sequences)");
            }
            TAB => self.mark_edited("tab completion"),
            // Under a policy, a control key whose effect on the device's line the stage cannot
            // follow (^O runs the line in bash, ^P recalls history, ^D may submit it) never
            // reaches the device.
            c if c < 0x20 && enforces => return Ok(()),
            c if c < 0x20 => {
                let key = format!("control characters (^{})", char::from(c + 0x40));
                self.mark_edited(&key);
            }
            _ => {
                out.push(b);
                return self.add(b);
            }
        }
        out.push(b);
        Ok(())
    }

    /// Erase the last word (and the blanks after it), as `^W` does.
    fn erase_word(&mut self) {
        while self.line.last() == Some(&b' ') {
            self.line.pop();
        }
        while self.line.last().is_some_and(|&c| c != b' ') {
            self.line.pop();
        }
    }

    fn mark_edited(&mut self, why: &str) {
        if self.edited.is_none() {
            self.edited = Some(why.to_string());
        }
    }

    /// Add a typed byte to the line.
    fn add(&mut self, b: u8) -> Result<(), usize> {
        if self.line.len() >= MAX_LINE {
            return Err(MAX_LINE);
        }
        self.line.push(b);
        Ok(())
    }

    /// Erase the last character (all the bytes of a UTF-8 one).
    fn erase_char(&mut self) {
        while let Some(c) = self.line.pop() {
            if c & 0xC0 != 0x80 {
                break;
            }
        }
    }

    /// The line ended with `term` (CR or LF): report it, decide it, forward `term` or the kill.
    fn end_line(&mut self, term: u8, out: &mut Vec<u8>) {
        let typed = std::mem::take(&mut self.line);
        let edited = self.edited.take();
        self.escape = Escape::None;
        self.after_cr = term == CR;
        let text = String::from_utf8_lossy(&typed).trim().to_string();
        if text.is_empty() && edited.is_none() {
            out.push(term);
            return;
        }
        let hidden = self.at_password_prompt();
        let shown = if hidden {
            HIDDEN_LINE.to_string()
        } else if text.is_empty() {
            "(an edited line)".to_string()
        } else {
            text.clone()
        };
        let mut op = Operation::new(OpProtocol::Telnet, Direction::Up, shown.clone());
        if let Some(why) = &edited {
            op = op.field("edited", why.clone());
        }
        let decision = match (&edited, self.policy.enforces()) {
            (Some(why), true) => OpDecision::Deny(format!(
                "the line was edited with {why}, so Ward cannot tell what the device would run, and rule {} restricts telnet commands (fail closed); type the command again without them",
                self.policy.rule
            )),
            _ => self.policy.decide(&text),
        };
        match decision {
            OpDecision::Allow => {
                self.notes.push(Note::Event(op.event(kind::OPERATION)));
                out.push(term);
            }
            OpDecision::Deny(reason) => {
                // The terminator never reaches the device; the typed text is erased there.
                out.extend(std::iter::repeat_n(self.erase, typed.len()));
                out.push(CTRL_U);
                self.refused_cr = term == CR;
                self.notes
                    .push(Note::Event(denied_event(&self.policy, &op, &reason)));
                let what: String = shown
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                self.notes.push(Note::Reply(
                    format!(
                        "\r\nward: refused \"{what}\": {reason}. The line was not sent to the device (its typed text was erased there).\r\n"
                    )
                    .into_bytes(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::harness::drive;
    use proptest::prelude::*;
    use ward_core::operations::OpList;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn policy() -> OpPolicy {
        OpPolicy {
            rule: "no-resets".into(),
            protocol: OpProtocol::Telnet,
            list: Some(OpList {
                allow: Vec::new(),
                deny: vec!["rm*".into(), "factory-reset*".into()],
            }),
        }
    }

    fn run(p: OpPolicy, up: &[u8], step: usize) -> crate::harness::Transcript {
        drive(
            &mut TelnetStage::new(p, "pump"),
            &[(Direction::Up, up)],
            step,
            now(),
        )
    }

    #[test]
    fn negotiation_is_removed_and_lines_rebuilt() {
        let up = b"\xff\xfd\x01\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0stat\xff\xff\x08us\r\nrate  5\r\0lsx\x7f\nlast\rcat\x08\x08\x08\x15 show  \r\n\r\n";
        let t = run(OpPolicy::observe(OpProtocol::Telnet), up, 0);
        assert_eq!(t.up, up);
        assert_eq!(
            t.ops(kind::OPERATION),
            ["status", "rate  5", "ls", "last", "show"]
        );
        assert!(t.replies.is_empty());
    }

    #[test]
    fn a_denied_line_never_gets_its_terminator_and_is_killed() {
        let t = run(policy(), b"status\r\nrm -rf /\r\nrate 5\r\n", 0);
        assert_eq!(t.stop, None);
        assert_eq!(
            t.up,
            b"status\r\nrm -rf /\x08\x08\x08\x08\x08\x08\x08\x08\x15rate 5\r\n"
        );
        assert_eq!(t.ops(kind::OPERATION), ["status", "rate 5"]);
        assert_eq!(t.ops(kind::DENIED), ["rm -rf /"]);
        assert_eq!(t.replies.len(), 1);
        let reply = String::from_utf8(t.replies[0].clone()).unwrap();
        assert!(reply.starts_with("\r\nward: refused \"rm -rf /\": rule no-resets denies telnet operations matching \"rm*\""), "{reply:?}");
        assert!(reply.ends_with("\r\n"));
        // Case and blanks do not slip past; the erase key is the user's; CR NUL and bare CR too.
        let t = run(policy(), b"FACTORY-RESET\x7f\x7fET now\r\0ok\r", 0);
        assert_eq!(t.ops(kind::DENIED), ["FACTORY-RESET now"]);
        assert_eq!(t.ops(kind::OPERATION), ["ok"]);
        let mut want = b"FACTORY-RESET\x7f\x7fET now".to_vec();
        want.extend(std::iter::repeat_n(DEL, 17));
        want.extend_from_slice(b"\x15ok\r");
        assert_eq!(t.up, want);
    }

    #[test]
    fn edited_lines_are_refused_under_a_policy_and_flagged_without() {
        for (typed, why) in [
            (&b"ls\x1b[D\x1b[Drm \r\n"[..], "escape"),
            (b"\x1b[A\r\n", "escape"),
            (b"sh\tnow\r\n", "tab"),
            (b"ls\xff\xf7rm \r\n", "IAC"),
        ] {
            let t = run(policy(), typed, 0);
            assert_eq!(t.ops(kind::DENIED).len(), 1, "{typed:?}");
            let d = t.of_kind(kind::DENIED).next().unwrap();
            let reason = &d.fields.iter().find(|(k, _)| k == "reason").unwrap().1;
            assert!(reason.contains("fail closed"), "{reason}");
            assert!(
                d.fields
                    .iter()
                    .any(|(k, v)| k == "edited" && v.contains(why)),
                "{d:?}"
            );
            assert!(!t.up.contains(&CR) && !t.up.contains(&LF), "{:?}", t.up);
            let t = run(OpPolicy::observe(OpProtocol::Telnet), typed, 0);
            assert_eq!(t.up, typed);
            assert_eq!(t.of_kind(kind::OPERATION).count(), 1);
        }
    }

    #[test]
    fn control_keys_under_a_policy_are_dropped_or_made_erase_keys() {
        // ^O (bash: run the line) and ^P (history) never reach the device; ^U, ^W, ^C become
        // erase keys over what they remove.
        let t = run(
            policy(),
            b"rm x\x0f\x10\x15ls -l\x17-a\x7f\x7fal\r\nfoo\x03bar\r",
            0,
        );
        assert_eq!(t.ops(kind::OPERATION), ["ls al", "bar"]);
        assert!(t.ops(kind::DENIED).is_empty());
        assert_eq!(
            t.up,
            b"rm x\x08\x08\x08\x08\x15ls -l\x08\x08-a\x7f\x7fal\r\nfoo\x03\x7f\x7f\x7f\x15bar\r"
        );
        let t = run(OpPolicy::observe(OpProtocol::Telnet), b"ls\x01x\r\n", 0);
        assert_eq!(t.up, b"ls\x01x\r\n");
        let op = t.of_kind(kind::OPERATION).next().unwrap();
        assert!(op
            .fields
            .iter()
            .any(|(k, v)| k == "edited" && v.contains("^A")));
    }

    #[test]
    fn a_line_typed_at_a_password_prompt_is_not_reported_in_clear() {
        let mut s = TelnetStage::new(policy(), "pump");
        let t = drive(
            &mut s,
            &[
                (Direction::Up, b"passwd\r\n"),
                (Direction::Down, b"passwd\r\nCurrent password: "),
                (Direction::Up, b"Hunter2-secret\r\n"),
                (Direction::Down, b"\r\n$ "),
                (Direction::Up, b"ls\r\n"),
            ],
            0,
            now(),
        );
        assert_eq!(t.ops(kind::OPERATION), ["passwd", HIDDEN_LINE, "ls"]);
        assert!(!format!("{:?}", t.events).contains("Hunter2"));
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'a'; MAX_LINE + 1];
        let t = run(policy(), &long, 100);
        assert_eq!(t.stop.unwrap().kind, StopKind::TooLarge { limit: MAX_LINE });
        let mut up = long.clone();
        up.extend_from_slice(b"\r\nls\r\n");
        let t = run(OpPolicy::observe(OpProtocol::Telnet), &up, 100);
        assert_eq!(t.stop, None);
        assert_eq!(t.up, up);
        assert_eq!(t.of_kind(kind::UNDECODABLE).count(), 1);
        assert!(t.ops(kind::OPERATION).is_empty());
    }

    #[test]
    fn device_output_passes_untouched() {
        let mut s = TelnetStage::new(policy(), "pump");
        let t = drive(
            &mut s,
            &[(Direction::Down, b"\xff\xfb\x01rm -rf /\r\n$ ")],
            1,
            now(),
        );
        assert_eq!(t.down, b"\xff\xfb\x01rm -rf /\r\n$ ");
        assert!(t.events.is_empty());
    }

    proptest! {
        #[test]
        fn decoding_does_not_depend_on_chunking(
            data in proptest::collection::vec(prop_oneof![
                Just(IAC), Just(CR), Just(LF), Just(NUL), Just(BS), Just(ESC), Just(b'['), Just(b'r'), Just(b'm'), Just(b' '),
                Just(SB), Just(SE), Just(WILL), Just(CTRL_U), any::<u8>()
            ], 0..400),
            step in 1usize..50,
            enforce in any::<bool>(),
        ) {
            let p = if enforce { policy() } else { OpPolicy::observe(OpProtocol::Telnet) };
            let whole = run(p.clone(), &data, 0);
            let chunked = run(p, &data, step);
            prop_assert_eq!(&whole, &chunked);
            if enforce {
                // Every line the device could run was allowed: no CR/LF reaches it after a refused line's text.
                prop_assert_eq!(whole.ops(kind::DENIED).len(), whole.replies.len());
            } else {
                prop_assert_eq!(&whole.up, &data);
            }
        }

        /// A device with a line editor (erase keys; ^U and ^C or not) never runs a refused line,
        /// nor a line with refused or erased text left in front of it: it runs exactly the
        /// lines the stage allowed.
        #[test]
        fn the_device_never_runs_a_refused_line(
            data in proptest::collection::vec(prop_oneof![
                Just(CR), Just(LF), Just(NUL), Just(BS), Just(DEL), Just(CTRL_U), Just(CTRL_W), Just(CTRL_C),
                Just(0x0f), Just(b'r'), Just(b'm'), Just(b' '), Just(b'x'),
            ], 0..300),
            step in 1usize..20,
            kill_keys_work in any::<bool>(),
        ) {
            let t = run(policy(), &data, step);
            let mut line: Vec<u8> = Vec::new();
            let mut ran = Vec::new();
            for &b in &t.up {
                match b {
                    CR | LF => {
                        let l = String::from_utf8(std::mem::take(&mut line)).unwrap();
                        if !l.trim().is_empty() {
                            ran.push(l);
                        }
                    }
                    BS | DEL => {
                        line.pop();
                    }
                    // A console that knows ^U/^C, or one that only knows the erase keys.
                    CTRL_U | CTRL_C if kill_keys_work => line.clear(),
                    CTRL_U | CTRL_C | NUL => {}
                    0x0f => prop_assert!(false, "^O reached the device"),
                    _ => line.push(b),
                }
            }
            for l in &ran {
                prop_assert!(!l.trim_start().starts_with("rm"), "the device ran {:?} ({:?})", l, t.up);
            }
            let allowed: Vec<String> = t.ops(kind::OPERATION);
            let ran: Vec<String> = ran.iter().map(|l| l.trim().to_string()).collect();
            prop_assert_eq!(ran, allowed);
        }
    }
}
