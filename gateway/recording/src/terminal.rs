//! A guard between recorded device output and the reviewer's terminal.
//!
//! `ward replay` writes what a device sent to the security reviewer's terminal. A compromised
//! device can put escape sequences in its output that do more than draw: set the window title,
//! write the clipboard (OSC 52), make the terminal answer a query (the answer arrives as *input*
//! to whatever reads the terminal next, e.g. the reviewer's shell), switch on mouse reporting or
//! load fonts and macros (DCS). [`TerminalGuard`] passes text and the drawing subset of the
//! escape language (colours, cursor movement, erasing, scroll regions) and drops everything else,
//! statefully across chunk boundaries. It never panics and never buffers more than one escape
//! sequence's parameters.

/// CSI final bytes that only draw: SGR, cursor movement and position, erase, insert/delete,
/// scroll region, save/restore cursor.
const CSI_ALLOWED_FINALS: &[u8] = b"mABCDEFGHJKLMPSTXZ@`adefrsu";

/// Longest CSI parameter/intermediate run kept; longer sequences are dropped.
const CSI_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Plain text.
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and an intermediate byte (`ESC ( 0`, `ESC # 8`): dropped up to its final byte.
    EscIntermediate,
    /// Inside `ESC [` (or 8-bit CSI), collecting parameters.
    Csi,
    /// Inside a string sequence (OSC, DCS, SOS, PM, APC) being dropped; `esc` = saw ESC (maybe ST).
    Str { esc: bool },
    /// Inside a UTF-8 sequence: bytes still expected, and whether it began with 0xC2 (possible C1).
    Utf8 { left: u8, c2: bool },
}

/// Streaming filter; see the module docs.
#[derive(Debug, Clone)]
pub struct TerminalGuard {
    state: State,
    csi: Vec<u8>,
    pending_utf8: Vec<u8>,
    dropped: u64,
}

impl Default for TerminalGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalGuard {
    /// A guard in the ground state.
    pub fn new() -> Self {
        TerminalGuard {
            state: State::Ground,
            csi: Vec::new(),
            pending_utf8: Vec::new(),
            dropped: 0,
        }
    }

    /// How many escape sequences or control characters were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Filters one chunk of device output.
    pub fn filter(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            self.byte(b, &mut out);
        }
        out
    }

    fn drop_one(&mut self) {
        self.dropped = self.dropped.saturating_add(1);
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => self.ground(b, out),
            State::Escape => match b {
                b'[' => {
                    self.csi.clear();
                    self.state = State::Csi;
                }
                b']' | b'P' | b'X' | b'^' | b'_' => {
                    self.drop_one();
                    self.state = State::Str { esc: false };
                }
                // Save/restore cursor, index, next line, reverse index: drawing only.
                b'7' | b'8' | b'D' | b'E' | b'M' => {
                    out.extend_from_slice(&[0x1b, b]);
                    self.state = State::Ground;
                }
                0x1b => self.drop_one(),
                0x20..=0x2f => {
                    self.drop_one();
                    self.state = State::EscIntermediate;
                }
                _ => {
                    // Anything else (reset, keypad modes, ...) is dropped.
                    self.drop_one();
                    self.state = State::Ground;
                }
            },
            State::EscIntermediate => match b {
                0x20..=0x2f => {}
                0x1b => self.state = State::Escape,
                _ => self.state = State::Ground,
            },
            State::Csi => match b {
                0x20..=0x3f => {
                    if self.csi.len() >= CSI_MAX {
                        self.drop_one();
                        self.csi.clear();
                        self.state = State::Ground;
                    } else {
                        self.csi.push(b);
                    }
                }
                0x40..=0x7e => {
                    // Private-mode parameters (`?`, `>`, `=`, `<`) only come with mode and query
                    // sequences; drawing never needs them.
                    let private = self
                        .csi
                        .first()
                        .is_some_and(|p| matches!(p, b'?' | b'>' | b'=' | b'<'));
                    if CSI_ALLOWED_FINALS.contains(&b) && !private {
                        out.extend_from_slice(b"\x1b[");
                        out.extend_from_slice(&self.csi);
                        out.push(b);
                    } else {
                        self.drop_one();
                    }
                    self.csi.clear();
                    self.state = State::Ground;
                }
                0x1b => {
                    self.drop_one();
                    self.csi.clear();
                    self.state = State::Escape;
                }
                _ => {
                    // A control or stray byte aborts the sequence, as terminals do.
                    self.drop_one();
                    self.csi.clear();
                    self.state = State::Ground;
                }
            },
            State::Str { esc } => match b {
                0x07 => self.state = State::Ground,
                b'\\' if esc => self.state = State::Ground,
                0x1b => self.state = State::Str { esc: true },
                _ => self.state = State::Str { esc: false },
            },
            State::Utf8 { left, c2 } => {
                if !(0x80..=0xbf).contains(&b) {
                    // Broken sequence: drop what we held and read this byte afresh.
                    self.pending_utf8.clear();
                    self.drop_one();
                    self.state = State::Ground;
                    self.ground(b, out);
                    return;
                }
                if c2 && b <= 0x9f {
                    // U+0080..U+009F: C1 controls (U+009B is CSI on some terminals).
                    self.pending_utf8.clear();
                    self.drop_one();
                    self.state = State::Ground;
                    return;
                }
                self.pending_utf8.push(b);
                if left <= 1 {
                    out.append(&mut self.pending_utf8);
                    self.state = State::Ground;
                } else {
                    self.state = State::Utf8 {
                        left: left - 1,
                        c2: false,
                    };
                }
            }
        }
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\n' | b'\r' | b'\t' | 0x08 | 0x07 => out.push(b),
            0x1b => self.state = State::Escape,
            0x20..=0x7e => out.push(b),
            0xc2..=0xdf => self.utf8_start(b, 1),
            0xe0..=0xef => self.utf8_start(b, 2),
            0xf0..=0xf4 => self.utf8_start(b, 3),
            // Other C0 controls, DEL, 8-bit C1 controls (0x9b is CSI, 0x9d OSC ...) and bytes
            // that cannot start UTF-8.
            _ => self.drop_one(),
        }
    }

    fn utf8_start(&mut self, b: u8, left: u8) {
        self.pending_utf8.clear();
        self.pending_utf8.push(b);
        self.state = State::Utf8 {
            left,
            c2: b == 0xc2,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guard(input: &[u8]) -> Vec<u8> {
        TerminalGuard::new().filter(input)
    }

    #[test]
    fn text_colours_and_cursor_movement_pass() {
        let ok: &[&[u8]] = &[
            b"login: admin\r\n",
            b"\x1b[1;31mALARM\x1b[0m",
            b"\x1b[2J\x1b[H\x1b[10;20H\x1b[K",
            b"tab\there\x08\x07",
            "pompe à perfusion ✓ 🩺".as_bytes(),
            b"\x1b7saved\x1b8",
        ];
        for s in ok {
            assert_eq!(guard(s), s.to_vec(), "{:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn dangerous_sequences_are_dropped() {
        let cases: &[(&[u8], &[u8])] = &[
            // OSC 52: write the reviewer's clipboard.
            (b"a\x1b]52;c;cm0gLXJmIH4=\x07b", b"ab"),
            // Window title, with ST terminator.
            (b"a\x1b]0;pwned\x1b\\b", b"ab"),
            // Device status report / device attributes: the terminal would answer into stdin.
            (b"a\x1b[6nb\x1b[cc\x1b[>0cd", b"abcd"),
            // Window ops (report title), mouse reporting, bracketed paste off.
            (b"a\x1b[21tb\x1b[?1000hc\x1b[?2004ld", b"abcd"),
            // DCS (e.g. DECUDK, user-defined keys), APC, PM, SOS.
            (
                b"a\x1bP0|17/72756D0A\x1b\\b\x1b_x\x1b\\c\x1b^y\x1b\\d\x1bXz\x1b\\e",
                b"abcde",
            ),
            // Full reset, charset switch.
            (b"a\x1bcb\x1b(0c", b"abc"),
            // 8-bit CSI and OSC, and their UTF-8 encodings U+009B / U+009D.
            (b"a\x9b6nb\x9d0;t\x07c", b"a6nb0;t\x07c"),
            ("a\u{9b}6nb".as_bytes(), b"a6nb"),
            // Other C0 controls and DEL.
            (b"a\x00\x01\x0e\x0f\x7fb", b"ab"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&guard(input)),
                String::from_utf8_lossy(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn sequences_split_across_chunks_are_still_caught() {
        let mut g = TerminalGuard::new();
        let mut out = Vec::new();
        for chunk in [
            &b"x\x1b"[..],
            b"]52;c;",
            b"Zm9v\x1b",
            b"\\y\x1b[",
            b"31",
            b"mz\x1b[6",
            b"n!",
        ] {
            out.extend(g.filter(chunk));
        }
        assert_eq!(out, b"xy\x1b[31mz!".to_vec());
        assert!(g.dropped() >= 2);
        // A UTF-8 character split across chunks survives.
        let mut g = TerminalGuard::new();
        let s = "é✓".as_bytes();
        let mut out = g.filter(&s[..1]);
        out.extend(g.filter(&s[1..3]));
        out.extend(g.filter(&s[3..]));
        assert_eq!(out, s.to_vec());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the device sends, the output holds no ESC that does not start an allowed
        /// CSI (or 7/8/D/E/M), no 8-bit C1 control, and no C0 control outside the allowed ones;
        /// and filtering in arbitrary chunks gives the same bytes as filtering at once.
        #[test]
        fn output_is_always_safe_and_chunking_does_not_matter(
            input in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 0usize..512,
        ) {
            let whole = guard(&input);
            let cut = cut.min(input.len());
            let mut g = TerminalGuard::new();
            let mut parts = g.filter(&input[..cut]);
            parts.extend(g.filter(&input[cut..]));
            prop_assert_eq!(&whole, &parts);
            let mut i = 0;
            while i < whole.len() {
                let b = whole[i];
                prop_assert!(b >= 0x20 || matches!(b, b'\n' | b'\r' | b'\t' | 0x08 | 0x07 | 0x1b), "control {b:#x}");
                prop_assert!(b != 0x7f);
                if b == 0x1b {
                    let next = whole.get(i + 1).copied();
                    prop_assert!(matches!(next, Some(b'[' | b'7' | b'8' | b'D' | b'E' | b'M')), "ESC {next:?}");
                    if next == Some(b'[') {
                        let mut j = i + 2;
                        while j < whole.len() && (0x20..=0x3f).contains(&whole[j]) { j += 1; }
                        let fin = whole.get(j).copied();
                        prop_assert!(fin.is_some_and(|f| CSI_ALLOWED_FINALS.contains(&f)), "CSI final {fin:?}");
                        prop_assert!(!matches!(whole.get(i + 2), Some(b'?' | b'>' | b'=' | b'<')));
                        i = j;
                    }
                }
                i += 1;
            }
            // No C1 controls, raw or UTF-8 encoded.
            let text = String::from_utf8_lossy(&whole);
            let c1 = text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c));
            prop_assert!(!c1, "C1 control in the output");
        }
    }
}
