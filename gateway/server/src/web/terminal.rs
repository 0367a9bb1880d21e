//! Terminal emulation for the player and live watch: recorded device output in, screens out
//! (see [`super`]). Pure: bytes in, screen values out — no I/O, no clock.
//!
//! The device's bytes are fed through the `vt100` crate (a terminal emulator's parser and
//! screen, without a display); a [`Screen`] is what it shows at one moment, as plain text runs
//! with a class from a fixed set ([`Screen`]). Device output is text from a peer: what reaches the
//! page is never markup (the page sets `textContent`), never a control character, and never
//! more than `cols` × `rows` cells. Escape sequences that do not draw (titles, clipboard, queries,
//! DCS) change nothing a reviewer sees.
//!
//! A [`Player`] holds one recording's timeline: the bytes of each direction with their times,
//! the keystrokes made printable, and screen checkpoints so that the screen at any time `t` is
//! a short replay from the nearest checkpoint, never the whole session again.

use std::fmt::Write as _;

use serde::Serialize;
use ward_recording::export::TelnetFilter;
use ward_recording::{Direction, Reader, Record};

/// Columns of a terminal whose size the recording does not tell.
pub const DEFAULT_COLS: u16 = 80;
/// Rows of a terminal whose size the recording does not tell.
pub const DEFAULT_ROWS: u16 = 24;
/// A screen checkpoint at least every this many bytes of terminal output (so a seek replays at
/// most about this much).
pub const CHECKPOINT_BYTES: usize = 64 * 1024;
/// At most this many byte marks in a [`Timeline`] (thinned evenly beyond).
pub const MAX_MARKS: usize = 2000;
/// At most this many keystroke entries in a [`Timeline`].
pub const MAX_KEYS: usize = 5000;
/// 16 bytes per hex row.
pub const HEX_ROW: usize = 16;
/// At most this many bytes per hex request.
pub const MAX_HEX_LIMIT: usize = 64 * 1024;

/// What a terminal shows at one moment, as the page draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Screen {
    /// Seconds since the session started.
    pub t: f64,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// One entry per row (exactly `rows`), each runs of text of the same attributes.
    pub lines: Vec<Vec<Run>>,
    /// Where the cursor is.
    pub cursor: Cursor,
}

/// A run of cells with identical attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The characters: plain text, never a control character.
    pub text: String,
    /// Space-separated classes from the fixed set: `fg0`..`fg15`, `bg0`..`bg15`, `b`, `dim`,
    /// `it`, `u`, `inv`; empty for the default attributes.
    pub cls: String,
}

/// The cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// Row, 0-based, below `rows`.
    pub row: u16,
    /// Column, 0-based, below `cols`.
    pub col: u16,
    /// Shown (the device did not hide it).
    pub visible: bool,
}

/// The xterm palette of the 16 named colours, to map 256-colour and RGB cells to the nearest.
const PALETTE: [(u8, u8, u8); 16] = [
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
];

/// The RGB of xterm colour `i` (16..=255: the 6×6×6 cube, then 24 greys).
fn xterm_rgb(i: u8) -> (u8, u8, u8) {
    if let Some(&c) = PALETTE.get(usize::from(i)) {
        return c;
    }
    if i >= 232 {
        let v = 8 + (i - 232) * 10;
        return (v, v, v);
    }
    let n = i - 16;
    let level = |x: u8| if x == 0 { 0 } else { 55 + x * 40 };
    (level(n / 36), level((n / 6) % 6), level(n % 6))
}

/// The nearest of the 16 named colours to `rgb`.
fn nearest16(rgb: (u8, u8, u8)) -> u8 {
    let d = |a: u8, b: u8| {
        let x = i32::from(a) - i32::from(b);
        x * x
    };
    let mut best = (0u8, i32::MAX);
    for (i, c) in (0u8..).zip(PALETTE.iter()) {
        let dist = d(rgb.0, c.0) + d(rgb.1, c.1) + d(rgb.2, c.2);
        if dist < best.1 {
            best = (i, dist);
        }
    }
    best.0
}

/// The palette index (0..=15) of a cell colour; `None` for the default.
fn colour16(c: vt100::Color) -> Option<u8> {
    match c {
        vt100::Color::Default => None,
        vt100::Color::Idx(i) if i < 16 => Some(i),
        vt100::Color::Idx(i) => Some(nearest16(xterm_rgb(i))),
        vt100::Color::Rgb(r, g, b) => Some(nearest16((r, g, b))),
    }
}

/// The class string of a cell's attributes.
fn classes(cell: &vt100::Cell) -> String {
    let mut cls = String::new();
    let mut add = |c: &str| {
        if !cls.is_empty() {
            cls.push(' ');
        }
        cls.push_str(c);
    };
    if let Some(i) = colour16(cell.fgcolor()) {
        add(&format!("fg{i}"));
    }
    if let Some(i) = colour16(cell.bgcolor()) {
        add(&format!("bg{i}"));
    }
    if cell.bold() {
        add("b");
    }
    if cell.dim() {
        add("dim");
    }
    if cell.italic() {
        add("it");
    }
    if cell.underline() {
        add("u");
    }
    if cell.inverse() {
        add("inv");
    }
    cls
}

/// A character safe to show as text: control characters (C0, C1), and the bidirectional
/// controls that would reorder what is drawn around them, become U+FFFD.
pub fn safe_char(c: char) -> char {
    let bidi = matches!(
        c,
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}'
    );
    if c.is_control() || bidi {
        '\u{fffd}'
    } else {
        c
    }
}

/// The screen `screen` shows, at `t` seconds.
pub fn screen_of(screen: &vt100::Screen, t: f64) -> Screen {
    let (rows, cols) = screen.size();
    let mut lines = Vec::with_capacity(usize::from(rows));
    for row in 0..rows {
        let mut runs: Vec<Run> = Vec::new();
        for col in 0..cols {
            let Some(cell) = screen.cell(row, col) else {
                continue;
            };
            if cell.is_wide_continuation() {
                continue;
            }
            let cls = classes(cell);
            let text = cell.contents();
            let mut chunk = String::new();
            if text.is_empty() {
                chunk.push(' ');
            } else {
                chunk.extend(text.chars().map(safe_char));
            }
            match runs.last_mut() {
                Some(last) if last.cls == cls => last.text.push_str(&chunk),
                _ => runs.push(Run { text: chunk, cls }),
            }
        }
        // Trailing blanks in the default attributes draw nothing.
        if let Some(last) = runs.last_mut() {
            if last.cls.is_empty() {
                let kept = last.text.trim_end_matches(' ').len();
                last.text.truncate(kept);
            }
        }
        if runs.last().is_some_and(|r| r.text.is_empty()) {
            runs.pop();
        }
        lines.push(runs);
    }
    let (row, col) = screen.cursor_position();
    Screen {
        t,
        cols,
        rows,
        lines,
        cursor: Cursor {
            row: row.min(rows.saturating_sub(1)),
            col: col.min(cols.saturating_sub(1)),
            visible: !screen.hide_cursor(),
        },
    }
}

/// Tracks whether a byte stream is between escape sequences and UTF-8 characters, so a screen
/// checkpoint is taken only where a fresh parser may resume.
#[derive(Debug, Clone, Copy, Default)]
struct SeqState {
    /// 0 ground, 1 after ESC, 2 in a CSI, 3 in a string (OSC, DCS, APC, PM, SOS).
    state: u8,
    /// UTF-8 continuation bytes still expected.
    utf8_left: u8,
}

impl SeqState {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        // CAN and SUB abort any sequence.
        if b == 0x18 || b == 0x1a {
            *self = SeqState::default();
            return;
        }
        match self.state {
            0 => {
                if b == 0x1b {
                    self.state = 1;
                    self.utf8_left = 0;
                } else if b >= 0xc0 {
                    self.utf8_left = match b {
                        0xc0..=0xdf => 1,
                        0xe0..=0xef => 2,
                        _ => 3,
                    };
                } else if (0x80..0xc0).contains(&b) && self.utf8_left > 0 {
                    self.utf8_left -= 1;
                } else {
                    self.utf8_left = 0;
                }
            }
            1 => {
                self.state = match b {
                    b'[' => 2,
                    b']' | b'P' | b'_' | b'^' | b'X' => 3,
                    0x1b | 0x20..=0x2f => 1,
                    _ => 0,
                }
            }
            2 => {
                if b == 0x1b {
                    self.state = 1;
                } else if (0x40..=0x7e).contains(&b) {
                    self.state = 0;
                }
            }
            _ => {
                if b == 0x07 {
                    self.state = 0;
                } else if b == 0x1b {
                    self.state = 1;
                }
            }
        }
    }

    fn ground(&self) -> bool {
        self.state == 0 && self.utf8_left == 0
    }
}

/// A terminal fed with device output as it comes (live watch), telnet negotiation removed for
/// telnet sessions.
pub struct Terminal {
    parser: vt100::Parser,
    telnet: Option<TelnetFilter>,
    seq: SeqState,
}

impl Terminal {
    /// A `cols` × `rows` terminal (clamped to something drawable); `telnet` removes telnet
    /// negotiation from what is fed.
    pub fn new(cols: u16, rows: u16, telnet: bool) -> Self {
        let (cols, rows) = clamp_size(cols, rows);
        Terminal {
            parser: vt100::Parser::new(rows, cols, 0),
            telnet: telnet.then(TelnetFilter::new),
            seq: SeqState::default(),
        }
    }

    /// Feed device → client bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        match &mut self.telnet {
            Some(f) => {
                let text = f.filter(bytes);
                self.seq.push(&text);
                self.parser.process(&text);
            }
            None => {
                self.seq.push(bytes);
                self.parser.process(bytes);
            }
        }
    }

    /// Resize to `cols` × `rows` (clamped to something drawable).
    pub fn resize(&mut self, cols: u16, rows: u16) {
        let (cols, rows) = clamp_size(cols, rows);
        self.parser.screen_mut().set_size(rows, cols);
    }

    /// What it shows now, stamped `t` seconds.
    pub fn screen(&self, t: f64) -> Screen {
        screen_of(self.parser.screen(), t)
    }

    /// The emulator's screen (to compare two moments cheaply).
    pub fn raw_screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }
}

/// Sizes a page can draw: 20..=500 columns, 5..=200 rows.
fn clamp_size(cols: u16, rows: u16) -> (u16, u16) {
    (cols.clamp(20, 500), rows.clamp(5, 200))
}

/// Client → device input made printable: `\r` (with the `\n` or NUL telnet sends after it) is
/// `⏎`, tab `⇥`, DEL `⌫`, other control bytes `^C`-style, the common cursor and editing keys
/// by their names (`↑`, `↓`, `→`, `←`, `Home`, `End`, `Del`, `PgUp`, `PgDn`), any other escape
/// `^[`; invalid UTF-8 becomes U+FFFD. Nothing in the result is a control character.
pub fn printable_input(bytes: &[u8]) -> String {
    const KEYS: &[(&[u8], &str)] = &[
        (b"[A", "↑"),
        (b"[B", "↓"),
        (b"[C", "→"),
        (b"[D", "←"),
        (b"OA", "↑"),
        (b"OB", "↓"),
        (b"OC", "→"),
        (b"OD", "←"),
        (b"[H", "⟨Home⟩"),
        (b"[F", "⟨End⟩"),
        (b"OH", "⟨Home⟩"),
        (b"OF", "⟨End⟩"),
        (b"[1~", "⟨Home⟩"),
        (b"[4~", "⟨End⟩"),
        (b"[2~", "⟨Ins⟩"),
        (b"[3~", "⟨Del⟩"),
        (b"[5~", "⟨PgUp⟩"),
        (b"[6~", "⟨PgDn⟩"),
    ];
    let mut out = String::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'\r' => {
                out.push('⏎');
                if matches!(bytes.get(i), Some(b'\n' | 0)) {
                    i += 1;
                }
            }
            b'\n' => out.push('⏎'),
            b'\t' => out.push('⇥'),
            0x7f => out.push('⌫'),
            0x1b => {
                let rest = bytes.get(i..).unwrap_or_default();
                match KEYS.iter().find(|(seq, _)| rest.starts_with(seq)) {
                    Some((seq, name)) => {
                        out.push_str(name);
                        i += seq.len();
                    }
                    None => out.push_str("^["),
                }
            }
            0..=0x1f => {
                out.push('^');
                out.push(char::from(b + 0x40));
            }
            _ => {
                // The longest run of bytes that are not C0 controls, decoded.
                let start = i - 1;
                while bytes.get(i).is_some_and(|&c| c >= 0x20 && c != 0x7f) {
                    i += 1;
                }
                let run = bytes.get(start..i).unwrap_or_default();
                out.extend(String::from_utf8_lossy(run).chars().map(safe_char));
            }
        }
    }
    out
}

/// The first window size a telnet client announced (NAWS: `IAC SB 31 w w h h IAC SE`), as
/// `(cols, rows)`.
pub(crate) fn telnet_naws(up: &[u8]) -> Option<(u16, u16)> {
    let mut i = 0;
    while let Some(pos) = up
        .get(i..)
        .and_then(|s| s.windows(3).position(|w| w == [0xff, 0xfa, 0x1f]))
    {
        let start = i + pos + 3;
        // Four value bytes; a 255 among them is doubled.
        let mut vals = Vec::with_capacity(4);
        let mut j = start;
        while vals.len() < 4 {
            let &b = up.get(j)?;
            if b == 0xff {
                if up.get(j + 1) != Some(&0xff) {
                    break;
                }
                j += 1;
            }
            vals.push(b);
            j += 1;
        }
        if let [w1, w0, h1, h0] = vals[..] {
            let cols = u16::from_be_bytes([w1, w0]);
            let rows = u16::from_be_bytes([h1, h0]);
            if cols > 0 && rows > 0 {
                return Some(clamp_size(cols, rows));
            }
        }
        i = start;
    }
    None
}

/// One data record of a recording.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    t_ns: u64,
    dir: Direction,
    /// Where its bytes start in its direction's stream.
    start: usize,
    len: usize,
    /// For device output: the end of its terminal text in `Player::term`.
    term_end: usize,
}

/// A byte mark on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    /// Seconds since the session started.
    pub t: f64,
    /// `up` (client → device) or `down`.
    pub dir: &'static str,
    /// Bytes.
    pub len: usize,
}

/// A keystroke entry: one client → device record, printable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Key {
    /// Seconds since the session started.
    pub t: f64,
    /// What was typed ([`printable_input`]).
    pub text: String,
}

/// A recording's timeline, as `GET /api/v1/sessions/{id}/timeline` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    /// Seconds from the start to the last record.
    pub duration_s: f64,
    /// Terminal columns.
    pub cols: u16,
    /// Terminal rows.
    pub rows: u16,
    /// A terminal protocol (played as a screen) or not (hex view).
    pub terminal: bool,
    /// Bytes client → device.
    pub up_bytes: u64,
    /// Bytes device → client.
    pub down_bytes: u64,
    /// Byte marks (at most [`MAX_MARKS`], thinned evenly).
    pub marks: Vec<Mark>,
    /// Keystrokes (the first [`MAX_KEYS`]).
    pub keys: Vec<Key>,
    /// More keystroke records than `keys` holds.
    pub keys_truncated: bool,
    /// How the session ended, when the recording says.
    pub end_reason: Option<String>,
}

/// One row of the hex view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HexRow {
    /// Offset of its first byte in the direction's stream.
    pub offset: usize,
    /// The bytes as two hex digits each, space separated.
    pub hex: String,
    /// The bytes as ASCII, `.` for anything not printable.
    pub ascii: String,
}

/// A page of the hex view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hex {
    /// `up` or `down`.
    pub dir: &'static str,
    /// Where the page starts.
    pub offset: usize,
    /// Bytes in that direction.
    pub total: usize,
    /// 16 bytes per row.
    pub rows: Vec<HexRow>,
}

/// One recording, ready to play: its data by direction and time, and screen checkpoints.
pub struct Player {
    chunks: Vec<Chunk>,
    up: Vec<u8>,
    down: Vec<u8>,
    /// Device output with telnet negotiation removed (empty when it is `down` itself).
    term: Vec<u8>,
    telnet: bool,
    terminal: bool,
    cols: u16,
    rows: u16,
    duration_ns: u64,
    end_reason: Option<String>,
    /// `(position in the terminal text, the screen there)`, ascending; the first at 0.
    checkpoints: Vec<(usize, vt100::Screen)>,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player")
            .field("chunks", &self.chunks.len())
            .field("up", &self.up.len())
            .field("down", &self.down.len())
            .field("checkpoints", &self.checkpoints.len())
            .finish()
    }
}

fn secs(t_ns: u64) -> f64 {
    t_ns as f64 / 1e9
}

impl Player {
    /// Read a recording (its records up to the first that cannot be read: a forced replay of a
    /// damaged recording plays what is readable).
    pub fn new(recording: &[u8]) -> Self {
        Player::from_records(
            Reader::new(recording)
                .map_while(Result::ok)
                .map(|(_, record)| record),
        )
    }

    /// A recording's records, in order (an encrypted one's opened: `crate::unseal`; a sealed
    /// record left in adds nothing).
    pub fn from_records(all: impl IntoIterator<Item = Record>) -> Self {
        let mut protocol = String::from("raw");
        let (mut up, mut down) = (Vec::new(), Vec::new());
        let mut records = Vec::new();
        let mut duration_ns = 0u64;
        let mut end_reason = None;
        for record in all {
            match record {
                Record::Meta(m) => protocol = m.protocol,
                Record::Data { dir, t_ns, payload } => {
                    duration_ns = duration_ns.max(t_ns);
                    let buf = match dir {
                        Direction::Up => &mut up,
                        Direction::Down => &mut down,
                    };
                    let start = buf.len();
                    buf.extend_from_slice(&payload);
                    records.push((t_ns, dir, start, payload.len()));
                }
                Record::End { t_ns, info } => {
                    duration_ns = duration_ns.max(t_ns);
                    end_reason = Some(info.reason);
                }
                Record::Interrupted { t_ns, reason } => {
                    duration_ns = duration_ns.max(t_ns);
                    end_reason = Some(format!("interrupted: {reason}"));
                }
                Record::Checkpoint { .. } | Record::Event { .. } | Record::Sealed { .. } => {}
            }
        }
        let telnet = protocol == "telnet";
        let terminal = crate::review::is_terminal(&protocol);
        let (cols, rows) = telnet
            .then(|| telnet_naws(&up))
            .flatten()
            .unwrap_or((DEFAULT_COLS, DEFAULT_ROWS));
        let mut player = Player {
            chunks: Vec::with_capacity(records.len()),
            up,
            down,
            term: Vec::new(),
            telnet,
            terminal,
            cols,
            rows,
            duration_ns,
            end_reason,
            checkpoints: Vec::new(),
        };
        player.index(&records);
        player
    }

    /// Build the chunks, the terminal text and the checkpoints.
    fn index(&mut self, records: &[(u64, Direction, usize, usize)]) {
        let mut parser = vt100::Parser::new(self.rows, self.cols, 0);
        let mut seq = SeqState::default();
        let mut filter = TelnetFilter::new();
        let mut fed = 0usize;
        let mut since_checkpoint = 0usize;
        self.checkpoints.push((0, parser.screen().clone()));
        for &(t_ns, dir, start, len) in records {
            if dir == Direction::Down {
                let bytes = self.down.get(start..start + len).unwrap_or_default();
                let text = if self.telnet {
                    let text = filter.filter(bytes);
                    self.term.extend_from_slice(&text);
                    text
                } else {
                    bytes.to_vec()
                };
                parser.process(&text);
                seq.push(&text);
                fed += text.len();
                since_checkpoint += text.len();
                if since_checkpoint >= CHECKPOINT_BYTES && seq.ground() {
                    self.checkpoints.push((fed, parser.screen().clone()));
                    since_checkpoint = 0;
                }
            }
            self.chunks.push(Chunk {
                t_ns,
                dir,
                start,
                len,
                term_end: fed,
            });
        }
    }

    /// The device output as the terminal sees it.
    fn term(&self) -> &[u8] {
        if self.telnet {
            &self.term
        } else {
            &self.down
        }
    }

    /// Bytes held (for a cache's budget).
    pub fn weight(&self) -> usize {
        self.up.len()
            + self.down.len()
            + self.term.len()
            + self.chunks.len() * std::mem::size_of::<Chunk>()
            + self.checkpoints.len()
                * usize::from(self.cols)
                * usize::from(self.rows)
                * std::mem::size_of::<vt100::Cell>()
    }

    /// Seconds from the start to the last record.
    pub fn duration_s(&self) -> f64 {
        secs(self.duration_ns)
    }

    /// A terminal protocol (`telnet`, `raw`).
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// The timeline: duration, size, byte marks and keystrokes.
    pub fn timeline(&self) -> Timeline {
        let n = self.chunks.len();
        let marks = if n <= MAX_MARKS {
            self.chunks.iter().map(mark).collect()
        } else {
            (0..MAX_MARKS)
                .filter_map(|i| self.chunks.get(i * n / MAX_MARKS))
                .map(mark)
                .collect()
        };
        let mut filter = TelnetFilter::new();
        let mut keys = Vec::new();
        let mut up_records = 0usize;
        for c in self.chunks.iter().filter(|c| c.dir == Direction::Up) {
            up_records += 1;
            if keys.len() >= MAX_KEYS {
                continue;
            }
            let raw = self.up.get(c.start..c.start + c.len).unwrap_or_default();
            let bytes = if self.telnet {
                filter.filter(raw)
            } else {
                raw.to_vec()
            };
            let text = printable_input(&bytes);
            if !text.is_empty() {
                keys.push(Key {
                    t: secs(c.t_ns),
                    text,
                });
            }
        }
        Timeline {
            duration_s: self.duration_s(),
            cols: self.cols,
            rows: self.rows,
            terminal: self.terminal,
            up_bytes: self.up.len() as u64,
            down_bytes: self.down.len() as u64,
            marks,
            keys_truncated: up_records > MAX_KEYS,
            keys,
            end_reason: self.end_reason.clone(),
        }
    }

    /// The screen at `t` seconds: the device output recorded up to and including `t`, from the
    /// nearest checkpoint. A `t` that is not a number is the start.
    pub fn screen_at(&self, t: f64) -> Screen {
        let t = if t.is_finite() { t.max(0.0) } else { 0.0 };
        let t_ns = (t * 1e9).min(u64::MAX as f64) as u64;
        // The chunks up to t (their times only grow).
        let upto = self.chunks.partition_point(|c| c.t_ns <= t_ns);
        let target = upto
            .checked_sub(1)
            .and_then(|i| self.chunks.get(i))
            .map_or(0, |c| c.term_end);
        let cp = self
            .checkpoints
            .partition_point(|(pos, _)| *pos <= target)
            .saturating_sub(1);
        let mut parser = vt100::Parser::new(self.rows, self.cols, 0);
        let from = match self.checkpoints.get(cp) {
            Some((pos, screen)) => {
                *parser.screen_mut() = screen.clone();
                *pos
            }
            None => 0,
        };
        parser.process(self.term().get(from..target).unwrap_or_default());
        screen_of(parser.screen(), t)
    }

    /// A page of the hex view of one direction: `limit` bytes (at most [`MAX_HEX_LIMIT`]) from
    /// `offset`, 16 per row.
    pub fn hex(&self, dir: Direction, offset: usize, limit: usize) -> Hex {
        let bytes = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let limit = limit.min(MAX_HEX_LIMIT);
        let end = offset.saturating_add(limit).min(bytes.len());
        let page = bytes.get(offset.min(end)..end).unwrap_or_default();
        let rows = page
            .chunks(HEX_ROW)
            .enumerate()
            .map(|(i, row)| hex_row(offset + i * HEX_ROW, row))
            .collect();
        Hex {
            dir: dir.as_str(),
            offset,
            total: bytes.len(),
            rows,
        }
    }
}

fn mark(c: &Chunk) -> Mark {
    Mark {
        t: secs(c.t_ns),
        dir: c.dir.as_str(),
        len: c.len,
    }
}

/// One hex row: `offset`, the bytes as hex, and as ASCII.
pub fn hex_row(offset: usize, row: &[u8]) -> HexRow {
    let mut hex = String::with_capacity(row.len() * 3);
    for (i, b) in row.iter().enumerate() {
        if i > 0 {
            hex.push(' ');
        }
        let _ = write!(hex, "{b:02x}");
    }
    let ascii = row
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    HexRow { offset, hex, ascii }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn text_of(s: &Screen) -> Vec<String> {
        s.lines
            .iter()
            .map(|l| l.iter().map(|r| r.text.as_str()).collect())
            .collect()
    }

    /// The checks every screen passes, whatever was fed.
    fn sane(s: &Screen) {
        assert_eq!(s.lines.len(), usize::from(s.rows));
        assert!(
            s.cursor.row < s.rows && s.cursor.col < s.cols,
            "{:?}",
            s.cursor
        );
        let allowed = |c: &str| {
            c.is_empty()
                || c.split(' ').all(|k| {
                    ["b", "dim", "it", "u", "inv"].contains(&k)
                        || ["fg", "bg"].iter().any(|p| {
                            k.strip_prefix(p)
                                .and_then(|n| n.parse::<u8>().ok())
                                .is_some_and(|n| n < 16)
                        })
                })
        };
        for line in &s.lines {
            // The row's text fits one row of the terminal: drawn again on a fresh one, it
            // does not wrap.
            let text: String = line.iter().map(|r| r.text.as_str()).collect();
            let mut again = vt100::Parser::new(2, s.cols, 0);
            again.process(text.as_bytes());
            assert_eq!(again.screen().cursor_position().0, 0, "{line:?}");
            for r in line {
                assert!(allowed(&r.cls), "{:?}", r.cls);
                assert!(!r.text.chars().any(char::is_control), "{:?}", r.text);
                assert!(!r.text.is_empty());
            }
        }
    }

    fn feed(bytes: &[u8]) -> Screen {
        let mut t = Terminal::new(80, 24, false);
        t.feed(bytes);
        let s = t.screen(0.0);
        sane(&s);
        s
    }

    #[test]
    fn colours_and_attributes_become_classes_in_merged_runs() {
        let s = feed(b"plain \x1b[1;31mred\x1b[0m \x1b[4;44mul\x1b[7minv\x1b[m \x1b[38;5;196mx\x1b[38;2;0;0;250my\x1b[3;2mz");
        let line = &s.lines[0];
        let runs: Vec<(&str, &str)> = line
            .iter()
            .map(|r| (r.text.as_str(), r.cls.as_str()))
            .collect();
        assert_eq!(
            runs,
            [
                ("plain ", ""),
                ("red", "fg1 b"),
                (" ", ""),
                ("ul", "bg4 u"),
                ("inv", "bg4 u inv"),
                (" ", ""),
                ("x", "fg9"),
                ("y", "fg4"),
                ("z", "fg4 dim it"),
            ]
        );
        assert_eq!(
            s.cursor,
            Cursor {
                row: 0,
                col: 19,
                visible: true
            }
        );
        let hidden = feed(b"\x1b[?25l");
        assert!(!hidden.cursor.visible);
    }

    #[test]
    fn hostile_markup_and_sequences_are_only_characters() {
        let s = feed(
            b"<script>alert(1)</script>\r\n<img src=x onerror=alert(1)>\r\n\
              \x1b]0;evil title\x07\x1b]8;;javascript:alert(1)\x1b\\link\x1b]8;;\x1b\\\r\n\
              \x1b]52;c;aGVsbG8=\x07\x1bP1$qm\x1b\\\x1b[6n\x1b[>c\xff\xfe\xc3(\r\n\
              \x9b31m\xc2\x9b\xe2\x80\xae\x1b[9999;9999HZ\x1b[-5;-5H",
        );
        let text = text_of(&s);
        assert_eq!(text[0], "<script>alert(1)</script>");
        assert_eq!(text[1], "<img src=x onerror=alert(1)>");
        // The title and clipboard payloads never reach the screen; the link text does.
        assert_eq!(text[2], "link");
        let all = text.join("\n");
        assert!(!all.contains("evil") && !all.contains("aGVsbG8"), "{all}");
        assert!(!all.contains("javascript"), "{all}");
        // Invalid UTF-8 draws nothing (vt100 drops U+FFFD); queries answer nothing.
        assert!(text[3].starts_with('('), "{:?}", text[3]);
        // Drawn at the last cell, however far the cursor was sent.
        assert!(text[23].ends_with('Z'), "{all}");
        // The RTL override is not passed on as a control.
        assert!(!all.contains('\u{202e}'));
    }

    #[test]
    fn a_ten_thousand_column_line_wraps_within_the_screen() {
        let mut line = vec![b'A'; 10_000];
        line.extend_from_slice(b"\r\nafter");
        let s = feed(&line);
        for l in &s.lines[..23] {
            assert!(l.iter().all(|r| r.text.chars().count() <= 80));
        }
        assert_eq!(text_of(&s)[23], "after");
    }

    #[test]
    fn wide_characters_take_two_cells_and_count_once() {
        let s = feed("日本語 ok".as_bytes());
        assert_eq!(text_of(&s)[0], "日本語 ok");
        assert_eq!(s.cursor.col, 9);
    }

    #[test]
    fn input_is_made_printable() {
        assert_eq!(printable_input(b"status\r\n"), "status⏎");
        assert_eq!(printable_input(b"a\r\0b\x03\x7f\t"), "a⏎b^C⌫⇥");
        assert_eq!(printable_input(b"\x1b[A\x1bOB\x1b[3~\x1bx"), "↑↓⟨Del⟩^[x");
        assert_eq!(
            printable_input(b"\xff\xfe<\xc3\xa9>"),
            "\u{fffd}\u{fffd}<é>"
        );
        assert_eq!(
            printable_input("\u{85}\u{202e}".as_bytes()),
            "\u{fffd}\u{fffd}"
        );
        assert_eq!(printable_input(b""), "");
    }

    #[test]
    fn naws_sets_the_size() {
        let up = [
            0xff, 0xfb, 0x1f, 0xff, 0xfa, 0x1f, 0, 132, 0, 43, 0xff, 0xf0,
        ];
        assert_eq!(telnet_naws(&up), Some((132, 43)));
        let doubled = [0xff, 0xfa, 0x1f, 0, 0xff, 0xff, 0, 50, 0xff, 0xf0];
        assert_eq!(telnet_naws(&doubled), Some((255, 50)));
        assert_eq!(telnet_naws(&[0xff, 0xfa, 0x1f, 0]), None);
        assert_eq!(telnet_naws(b"plain"), None);
    }

    fn recording(protocol: &str, chunks: &[(u64, Direction, &[u8])]) -> Vec<u8> {
        use ward_recording::{CheckpointPolicy, Encoder, EndInfo, SessionMeta, Signer};
        let signer = std::sync::Arc::new(Signer::generate().unwrap().0);
        let meta = SessionMeta {
            session_id: "00000000000000aa".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "01".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump-1".into(),
            device_addr: "127.0.0.1:23".into(),
            protocol: protocol.into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 1_000,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut out = Vec::new();
        let mut enc = Encoder::start(&meta, signer, CheckpointPolicy::default(), &mut out).unwrap();
        let mut last = 0;
        for &(t, dir, bytes) in chunks {
            enc.data(dir, t, bytes, &mut out);
            last = t;
        }
        let end = EndInfo {
            ended_unix_ms: 9_000,
            reason: "client closed".into(),
            bytes_up: 0,
            bytes_down: 0,
        };
        enc.finish(last, &end, &mut out);
        out
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_player_seeks_through_a_telnet_session() {
        let naws: &[u8] = &[0xff, 0xfa, 0x1f, 0, 100, 0, 30, 0xff, 0xf0];
        let rec = recording(
            "telnet",
            &[
                (
                    0,
                    Direction::Down,
                    b"\xff\xfb\x01Welcome\r\n\x1b[32mpump>\x1b[0m ",
                ),
                (S / 2, Direction::Up, naws),
                (S, Direction::Up, b"status\r\n"),
                (S + 1, Direction::Down, b"status\r\nrate 5 ml/h\r\npump> "),
            ],
        );
        let p = Player::new(&rec);
        let tl = p.timeline();
        assert!(tl.terminal);
        assert_eq!((tl.cols, tl.rows), (100, 30));
        assert_eq!(tl.keys.last().unwrap().text, "status⏎");
        assert_eq!(tl.marks.len(), 4);
        assert_eq!(tl.end_reason.as_deref(), Some("client closed"));
        let start = p.screen_at(0.0);
        sane(&start);
        let text = text_of(&start);
        assert_eq!(text[0], "Welcome");
        assert_eq!(start.lines[1][0].cls, "fg2");
        assert!(!text.join("\n").contains("rate"));
        let end = p.screen_at(tl.duration_s);
        let text = text_of(&end).join("\n");
        assert!(text.contains("rate 5 ml/h"), "{text}");
        assert!(
            !text.contains('\u{fffd}'),
            "telnet negotiation is not shown: {text}"
        );
        assert_eq!(p.screen_at(f64::NAN), start);
        assert_eq!(p.screen_at(-3.0), start);
        // Hex rows are the bytes as they went, negotiation included.
        let hex = p.hex(Direction::Up, 0, 4096);
        assert_eq!(hex.total, naws.len() + 8);
        let bytes: Vec<u8> = hex
            .rows
            .iter()
            .flat_map(|r| r.hex.split(' ').map(|h| u8::from_str_radix(h, 16).unwrap()))
            .collect();
        assert_eq!(&bytes[naws.len()..], b"status\r\n");
        assert_eq!(hex.rows[0].offset, 0);
        assert!(hex.rows[0].ascii.ends_with("status."), "{hex:?}");
        assert_eq!(hex.rows[1].ascii, ".");
        assert!(p.hex(Direction::Up, 1 << 40, 10).rows.is_empty());
    }

    #[test]
    fn checkpoints_give_the_same_screen_as_a_full_replay() {
        // Enough output for many checkpoints, with colours and cursor moves.
        let mut chunks: Vec<(u64, Direction, Vec<u8>)> = Vec::new();
        for i in 0..3000u64 {
            let line = format!(
                "\x1b[3{}mline {i} \x1b[0m{}\r\n\x1b[5;10H*",
                i % 8,
                "x".repeat(40)
            );
            chunks.push((i * 1_000_000, Direction::Down, line.into_bytes()));
        }
        let refs: Vec<(u64, Direction, &[u8])> = chunks
            .iter()
            .map(|(t, d, b)| (*t, *d, b.as_slice()))
            .collect();
        let rec = recording("raw", &refs);
        let p = Player::new(&rec);
        assert!(p.checkpoints.len() > 2, "{p:?}");
        for &i in &[0u64, 1, 1499, 2000, 2999] {
            let t = (i * 1_000_000) as f64 / 1e9;
            let mut full = Terminal::new(80, 24, false);
            for (_, _, b) in chunks.iter().take(usize::try_from(i).unwrap() + 1) {
                full.feed(b);
            }
            assert_eq!(p.screen_at(t), full.screen(t), "at chunk {i}");
        }
    }

    #[test]
    fn damaged_or_foreign_bytes_play_as_nothing() {
        let p = Player::new(b"not a recording");
        let s = p.screen_at(1.0);
        sane(&s);
        assert!(s.lines.iter().all(Vec::is_empty));
        assert!(p.timeline().marks.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn any_bytes_make_a_sane_screen(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
                                        esc in proptest::collection::vec(0usize..4096, 0..64)) {
            // Random bytes with many escapes sprinkled in.
            let mut bytes = bytes;
            for i in esc {
                if let Some(b) = bytes.get_mut(i) {
                    *b = 0x1b;
                }
            }
            let s = feed(&bytes);
            sane(&s);
            proptest::prop_assert!(!printable_input(&bytes).chars().any(char::is_control));
        }
    }
}
