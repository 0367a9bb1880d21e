//! The web terminal: a WebSocket carrying one device session ([`super::bridge`]) for `telnet`
//! and `raw` console devices, the device's output emulated on the gateway (the player's
//! [`Terminal`]) and sent to the page as screens.
//!
//! `GET /api/v1/terminal/{device}?break_glass=<justification>` upgrades to a WebSocket (the
//! authentication middleware has checked the caller and the `Origin`). The page's first message
//! must be `{"type":"hello","csrf":"<whoami's csrf>","cols":80,"rows":24}` (within
//! [`HELLO_TIMEOUT`]), else the socket closes with 1008. Then the session opens through
//! [`super::bridge::open`] — the gateway's one session pipeline: policy, windows, grants,
//! locks, idle timeout, recording, credential injection, audit with `via = "web"` — and:
//!
//! - server → page (JSON text frames): `{"type":"opened","session_id","rule","ends_at",
//!   "end_reason_if_uncut"}`, or `{"type":"refused","status","reason"}` and the close;
//!   `{"type":"screen","t","cols","rows","lines","cursor"}` (the whole emulated screen as
//!   runs of text with classes from a fixed set: the first, after a resize, and when most rows
//!   changed) or `{"type":"rows","t","cols","rows","lines":[{"row","runs"}],"cursor"}` (only
//!   the rows that changed since the last message); sent when the screen changed, the first
//!   change after a quiet [`FRAME`] at once, a burst's at most every [`FRAME`];
//!   `{"type":"closed","reason"}` (the gateway's end reason, e.g. `locked: …`) and the close.
//! - page → server: `{"type":"input","data":"<text>"}` (keys and pastes; a line end is sent to
//!   the device as CR LF, as a telnet client sends Enter) and `{"type":"resize","cols","rows"}`
//!   (20..=300 × 5..=120).
//!
//! For a telnet device the terminal answers the device's option negotiation as a minimal
//! telnet client does ([`Negotiator`]: it accepts the device's echo and suppress-go-ahead,
//! reports the window size, refuses the rest). Closing the socket ends the session ("client
//! went away"). A browser sign-in that ended (sign-out, idle, disabled user) ends the terminal
//! at the next keystroke.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use ward_core::Protocol;

use super::auth::{Current, Lookup};
use super::bridge::{self, FromDevice};
use super::terminal::{Screen, Terminal};
use super::{ApiError, Authed, WebState};

/// How often an open terminal checks that its browser sign-in still holds.
const SIGN_IN_CHECK: Duration = Duration::from_secs(1);
/// How long the page has to send its `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Screens are coalesced to at most one per this long.
pub const FRAME: Duration = Duration::from_millis(16);
/// Largest message the page may send (a paste).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Columns the page may ask for.
pub const COLS: std::ops::RangeInclusive<u16> = 20..=300;
/// Rows the page may ask for.
pub const ROWS: std::ops::RangeInclusive<u16> = 5..=120;
/// Longest break-glass justification accepted.
const MAX_JUSTIFICATION: usize = 2000;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new().route("/api/v1/terminal/{device}", get(terminal))
}

/// `?break_glass=`.
#[derive(Debug, Deserialize)]
struct TermQuery {
    #[serde(default)]
    break_glass: Option<String>,
}

/// The page's messages.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Hello {
        csrf: String,
        #[serde(default)]
        cols: Option<u16>,
        #[serde(default)]
        rows: Option<u16>,
    },
    Input {
        data: String,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// `cols` × `rows` within the bounds the page may ask for.
pub fn bounded(cols: u16, rows: u16) -> (u16, u16) {
    (
        cols.clamp(*COLS.start(), *COLS.end()),
        rows.clamp(*ROWS.start(), *ROWS.end()),
    )
}

async fn terminal(
    State(state): State<WebState>,
    authed: Authed,
    current: Option<Extension<Current>>,
    device: Result<Path<String>, PathRejection>,
    query: Result<Query<TermQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let device = match device {
        Ok(Path(d)) => d,
        Err(e) => {
            return ApiError::bad_request(format!("bad path: {}", e.body_text())).into_response()
        }
    };
    let break_glass = match query {
        Ok(Query(q)) => q.break_glass.filter(|s| !s.trim().is_empty()),
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    if break_glass
        .as_ref()
        .is_some_and(|j| j.len() > MAX_JUSTIFICATION)
    {
        return ApiError::bad_request(format!(
            "the break-glass justification is longer than {MAX_JUSTIFICATION} bytes: shorten it"
        ))
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::bad_request(
                "this is the web terminal's WebSocket: open it from the console's page #/terminal/<device>",
            )
            .into_response()
        }
    };
    let Some(Extension(current)) = current else {
        return ApiError::unauthenticated().into_response();
    };
    let cookie = super::auth::session_cookie(&headers).map(str::to_owned);
    let term = Term {
        state,
        authed,
        csrf: current.csrf,
        cookie,
        device,
        break_glass,
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| term.run(socket))
}

/// Constant-time equality.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One terminal, before its socket is open.
struct Term {
    state: WebState,
    authed: Authed,
    csrf: String,
    cookie: Option<String>,
    device: String,
    break_glass: Option<String>,
}

/// A JSON text frame.
fn text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

/// A close frame (`reason` cut to what a close frame holds).
fn close(code: u16, reason: &str) -> Message {
    let mut cut = String::new();
    for c in reason.chars() {
        if cut.len() + c.len_utf8() > 120 {
            break;
        }
        cut.push(c);
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: cut.into(),
    }))
}

/// The screen message.
fn screen_msg(s: &Screen) -> Message {
    let mut v = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), json!("screen"));
    }
    text(v)
}

impl Term {
    async fn run(self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        // The hello, with the CSRF token: a socket some other page opened cannot type.
        let hello = tokio::time::timeout(HELLO_TIMEOUT, rx.next()).await;
        let size = match hello {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ClientMsg>(&t) {
                Ok(ClientMsg::Hello { csrf, cols, rows })
                    if same(csrf.as_bytes(), self.csrf.as_bytes()) =>
                {
                    bounded(cols.unwrap_or(80), rows.unwrap_or(24))
                }
                _ => (0, 0),
            },
            _ => (0, 0),
        };
        if size == (0, 0) {
            let why = "send {\"type\":\"hello\",\"csrf\":<whoami's csrf>,\"cols\",\"rows\"} first";
            let _ = tx.send(close(close_code::POLICY, why)).await;
            return;
        }
        let (cols, rows) = size;
        let telnet = self.is_telnet();
        if let Some(refusal) = self.not_a_terminal() {
            let _ = tx
                .send(text(json!({"type": "refused", "status": refusal.status.as_u16(), "reason": refusal.reason})))
                .await;
            let _ = tx.send(close(close_code::NORMAL, "refused")).await;
            return;
        }
        let session = match bridge::open(
            &self.state,
            &self.authed,
            &self.device,
            self.break_glass.clone(),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(text(
                        json!({"type": "refused", "status": e.status.as_u16(), "reason": e.reason}),
                    ))
                    .await;
                let _ = tx.send(close(close_code::NORMAL, "refused")).await;
                return;
            }
        };
        let bridge::DeviceSession {
            opened,
            mut reader,
            mut writer,
        } = session;
        let _ = tx
            .send(text(json!({
                "type": "opened",
                "session_id": opened.session_id,
                "device": opened.device,
                "rule": opened.rule,
                "ends_at": opened.ends_at_unix,
                "end_reason_if_uncut": opened.end_reason_if_uncut,
            })))
            .await;
        // The device's side, read by a task of its own: a frame is never cut by the select.
        let (dev_tx, mut dev_rx) = mpsc::channel::<FromDevice>(64);
        let pump = tokio::spawn(async move {
            loop {
                let m = reader.next().await;
                let last = !matches!(m, FromDevice::Data(_) | FromDevice::Eof);
                if dev_tx.send(m).await.is_err() || last {
                    return;
                }
            }
        });
        let mut screen = Terminal::new(cols, rows, telnet);
        let mut neg = Negotiator::new(telnet, cols, rows);
        let started = Instant::now();
        let mut last: Option<Screen> = None;
        let mut last_at = started - FRAME;
        let mut dirty = true;
        // A sign-out elsewhere (another tab, the idle timeout, a disabled user) ends the terminal
        // within a second, not only at its next keystroke.
        let mut sign_in_check = tokio::time::interval(SIGN_IN_CHECK);
        sign_in_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end: Option<String> = loop {
            let due = last_at + FRAME;
            tokio::select! {
                _ = sign_in_check.tick() => {
                    if let Some(why) = self.sign_in_gone() {
                        break Some(why);
                    }
                }
                m = dev_rx.recv() => match m {
                    Some(FromDevice::Data(bytes)) => {
                        let reply = neg.feed(&bytes);
                        screen.feed(&bytes);
                        // A failed write means the session is ending: its reason follows.
                        if !reply.is_empty() {
                            let _ = writer.send(&reply).await;
                        }
                        // The first change after a quiet frame goes at once (an echo); a
                        // burst's are coalesced by the timer below.
                        let now = Instant::now();
                        if !dirty && now >= last_at + FRAME {
                            last_at = now;
                            send_changed(&mut tx, &screen, &mut last, started).await;
                        } else {
                            dirty = true;
                        }
                    }
                    Some(FromDevice::Eof) => {}
                    Some(FromDevice::Closed(reason)) => break Some(reason),
                    Some(FromDevice::Gone) | None => {
                        break Some("the gateway stopped the session".to_owned());
                    }
                },
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMsg>(&t) {
                        Ok(ClientMsg::Input { data }) => {
                            if let Some(why) = self.signed_out() {
                                break Some(why);
                            }
                            let bytes = line_ends(&data);
                            let _ = writer.send(&bytes).await;
                        }
                        Ok(ClientMsg::Resize { cols, rows }) => {
                            let (cols, rows) = bounded(cols, rows);
                            screen.resize(cols, rows);
                            dirty = true;
                            let naws = neg.resize(cols, rows);
                            if !naws.is_empty() {
                                let _ = writer.send(&naws).await;
                            }
                        }
                        Ok(ClientMsg::Hello { .. }) => {}
                        Err(_) => {
                            let _ = tx.send(close(close_code::UNSUPPORTED, "send JSON messages of type input or resize")).await;
                            break None;
                        }
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let _ = tx.send(close(close_code::UNSUPPORTED, "send JSON text messages")).await;
                        break None;
                    }
                    Some(Ok(_)) => {}
                    // The page went away: the session ends as "client went away".
                    Some(Err(_)) | None => break None,
                },
                () = tokio::time::sleep_until(due), if dirty => {
                    dirty = false;
                    last_at = Instant::now();
                    send_changed(&mut tx, &screen, &mut last, started).await;
                }
            }
        };
        match end {
            Some(reason) => {
                // The last screen, then why it ended.
                send_changed(&mut tx, &screen, &mut last, started).await;
                let _ = tx
                    .send(text(json!({"type": "closed", "reason": reason})))
                    .await;
                let _ = tx.send(close(close_code::NORMAL, "closed")).await;
            }
            None => {
                let _ = tx.close().await;
            }
        }
        // Dropping the writer and the reader ends the session ("client went away") unless the
        // gateway ended it already.
        drop(writer);
        pump.abort();
    }

    /// Whether the device speaks telnet (its negotiation is answered and hidden).
    fn is_telnet(&self) -> bool {
        self.state
            .shared
            .config()
            .device(&self.device)
            .is_some_and(|d| d.protocol == Protocol::Telnet)
    }

    /// A refusal for a device the caller may see that has no line console (an HTTP console,
    /// DICOM, HL7). A device the caller may not see goes to the pipeline, whose denial says
    /// nothing about it.
    fn not_a_terminal(&self) -> Option<ApiError> {
        let config = self.state.shared.config();
        let d = config.device(&self.device)?;
        if matches!(d.protocol, Protocol::Telnet | Protocol::Raw) {
            return None;
        }
        let visible = self
            .state
            .services()
            .devices
            .list(self.authed.caller())
            .ok()?
            .iter()
            .any(|i| i.id == self.device);
        visible.then(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} is a {} device, not a terminal console: open it from My devices",
                    self.device,
                    d.protocol.as_str()
                ),
            )
        })
    }

    /// Why the browser sign-in behind this terminal ended, if it has, asked without touching it
    /// (the check itself is no activity). A certificate caller has no sign-in to end.
    fn sign_in_gone(&self) -> Option<String> {
        if self.authed.via == super::Via::Certificate {
            return None;
        }
        let now = self.state.shared.clock.now();
        if self
            .state
            .signins
            .is_signed_in(&self.authed.identity.serial, now)
        {
            return None;
        }
        // Ended: the keystroke path's lookup audits how, once.
        self.signed_out()
            .or_else(|| Some("your browser sign-in ended: sign in again".to_owned()))
    }

    /// Why the browser sign-in behind this terminal ended, if it did (a keystroke is activity:
    /// it keeps the sign-in alive).
    fn signed_out(&self) -> Option<String> {
        let token = self.cookie.as_deref()?;
        if self.authed.via == super::Via::Certificate {
            return None;
        }
        let now = self.state.shared.clock.now();
        match self.state.signins.lookup(token, now) {
            Lookup::Live(_) => None,
            Lookup::Ended(s, why) => {
                self.state
                    .services()
                    .login
                    .signed_out(&s.identity, self.authed.peer, &s.id, why);
                Some(format!("your browser sign-in ended ({why}): sign in again"))
            }
            Lookup::Unknown => Some("you signed out: sign in again".to_owned()),
        }
    }
}

/// Send what changed since `last` (the screen the page has): nothing when nothing did; the
/// whole `screen` for the first one, after a resize, or when more than half the rows changed;
/// else a `rows` message with only the changed rows (by index) and the cursor.
async fn send_changed<S>(tx: &mut S, term: &Terminal, last: &mut Option<Screen>, started: Instant)
where
    S: SinkExt<Message> + Unpin,
{
    let mut s = term.screen(started.elapsed().as_secs_f64());
    s.t = (s.t * 1000.0).round() / 1000.0;
    if let Some(msg) = change_msg(last.as_ref(), &s) {
        let _ = tx.send(msg).await;
        *last = Some(s);
    }
}

/// The message that brings a page showing `last` to `s`, or `None` when they are the same.
pub fn change_msg(last: Option<&Screen>, s: &Screen) -> Option<Message> {
    let Some(l) = last.filter(|l| l.cols == s.cols && l.rows == s.rows) else {
        return Some(screen_msg(s));
    };
    let changed: Vec<(usize, &Vec<super::terminal::Run>)> = s
        .lines
        .iter()
        .enumerate()
        .filter(|&(i, runs)| l.lines.get(i) != Some(runs))
        .collect();
    if changed.is_empty() && l.cursor == s.cursor {
        return None;
    }
    if changed.len() * 2 > s.lines.len() {
        return Some(screen_msg(s));
    }
    let lines: Vec<serde_json::Value> = changed
        .iter()
        .map(|(i, runs)| json!({"row": i, "runs": runs}))
        .collect();
    Some(text(json!({
        "type": "rows",
        "t": s.t,
        "cols": s.cols,
        "rows": s.rows,
        "lines": lines,
        "cursor": s.cursor,
    })))
}

/// The page's text as the device gets it: every line end (`\r`, `\n`, `\r\n`) as CR LF, as a
/// telnet client sends Enter.
pub fn line_ends(data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut bytes = data.bytes().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' => {
                if bytes.peek() == Some(&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\r\n");
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    out
}

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const ECHO: u8 = 1;
const SGA: u8 = 3;
const NAWS: u8 = 31;

/// The terminal's side of telnet option negotiation (RFC 854/855): pure, bytes in, replies
/// out. It agrees to the device echoing and suppressing go-ahead, reports the window size
/// (RFC 1073) when asked, and refuses every other option, answering each request once.
#[derive(Debug, Clone)]
pub struct Negotiator {
    on: bool,
    /// 0 data, 1 after IAC, 2 after a verb (`verb`), 3 in a subnegotiation, 4 IAC there.
    state: u8,
    verb: u8,
    /// The last answer given per (verb of the request, option), to answer a repeat only once.
    answered: std::collections::HashSet<(u8, u8)>,
    naws: bool,
    cols: u16,
    rows: u16,
}

impl Negotiator {
    /// A negotiator for a `cols` × `rows` window; off (answers nothing) unless `telnet`.
    pub fn new(telnet: bool, cols: u16, rows: u16) -> Self {
        Negotiator {
            on: telnet,
            state: 0,
            verb: 0,
            answered: Default::default(),
            naws: false,
            cols,
            rows,
        }
    }

    /// Device bytes in; the replies to send to the device out.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.on {
            return out;
        }
        for &b in bytes {
            self.state = match (self.state, b) {
                (0, IAC) => 1,
                (0, _) => 0,
                (1, DO | DONT | WILL | WONT) => {
                    self.verb = b;
                    2
                }
                (1, SB) => 3,
                (1, _) => 0,
                (2, opt) => {
                    self.answer(self.verb, opt, &mut out);
                    0
                }
                (3, IAC) => 4,
                (3, _) => 3,
                (4, SE) => 0,
                (4, _) => 3,
                _ => 0,
            };
        }
        out
    }

    fn answer(&mut self, verb: u8, opt: u8, out: &mut Vec<u8>) {
        let reply = match (verb, opt) {
            (WILL, ECHO | SGA) => Some(DO),
            (WILL, _) => Some(DONT),
            (DO, NAWS) => {
                let first = !self.naws;
                self.naws = true;
                if first {
                    out.extend_from_slice(&[IAC, WILL, NAWS]);
                    out.extend_from_slice(&self.naws_bytes());
                }
                None
            }
            (DO, SGA) => Some(WILL),
            (DO, _) => Some(WONT),
            (DONT, NAWS) => {
                self.naws = false;
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            if self.answered.insert((verb, opt)) {
                out.extend_from_slice(&[IAC, r, opt]);
            }
        }
    }

    /// The window size changed: the NAWS subnegotiation to send, if the device asked for it.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Vec<u8> {
        self.cols = cols;
        self.rows = rows;
        if self.on && self.naws {
            self.naws_bytes()
        } else {
            Vec::new()
        }
    }

    fn naws_bytes(&self) -> Vec<u8> {
        let mut out = vec![IAC, SB, NAWS];
        for b in self
            .cols
            .to_be_bytes()
            .into_iter()
            .chain(self.rows.to_be_bytes())
        {
            out.push(b);
            if b == IAC {
                out.push(IAC);
            }
        }
        out.extend_from_slice(&[IAC, SE]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_are_cr_lf() {
        assert_eq!(line_ends("status\r"), b"status\r\n");
        assert_eq!(line_ends("a\r\nb\nc\r"), b"a\r\nb\r\nc\r\n");
        assert_eq!(line_ends("é"), "é".as_bytes());
    }

    fn msg_json(m: Option<Message>) -> serde_json::Value {
        match m {
            Some(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("not a text message: {other:?}"),
        }
    }

    #[test]
    fn only_changed_rows_are_sent() {
        let mut term = Terminal::new(40, 10, false);
        term.feed(b"hello\r\nworld\r\n$ ");
        let first = term.screen(0.0);
        // The first message is the whole screen.
        let m = msg_json(change_msg(None, &first));
        assert_eq!(m["type"], "screen");
        assert_eq!(m["lines"].as_array().unwrap().len(), 10);
        // Nothing changed: nothing is sent.
        assert!(change_msg(Some(&first), &term.screen(0.1)).is_none());
        // One typed character: its row only, and the cursor.
        term.feed(b"x");
        let second = term.screen(0.2);
        let m = msg_json(change_msg(Some(&first), &second));
        assert_eq!(m["type"], "rows", "{m}");
        assert_eq!(m["lines"].as_array().unwrap().len(), 1, "{m}");
        assert_eq!(m["lines"][0]["row"], 2);
        assert_eq!(m["lines"][0]["runs"][0]["text"], "$ x");
        assert_eq!(m["cursor"]["col"], 3);
        // The cursor alone moved: no rows, the cursor.
        term.feed(b"\x08");
        let third = term.screen(0.3);
        let m = msg_json(change_msg(Some(&second), &third));
        assert_eq!(
            (m["type"].as_str(), m["lines"].as_array().unwrap().len()),
            (Some("rows"), 0)
        );
        assert_eq!(m["cursor"]["col"], 2);
        // Most rows changed: the whole screen again.
        for _ in 0..10 {
            term.feed(b"line\r\n");
        }
        let m = msg_json(change_msg(Some(&third), &term.screen(0.4)));
        assert_eq!(m["type"], "screen");
        // A resize: the whole screen.
        term.resize(50, 12);
        let m = msg_json(change_msg(Some(&third), &term.screen(0.5)));
        assert_eq!(
            (m["type"].as_str(), m["cols"].as_u64()),
            (Some("screen"), Some(50))
        );
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(bounded(1, 1), (20, 5));
        assert_eq!(bounded(9999, 9999), (300, 120));
        assert_eq!(bounded(80, 24), (80, 24));
    }

    #[test]
    fn negotiation_answers_once_and_whatever_the_chunking() {
        let device = [
            IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, 24, IAC, DO, NAWS, b'h', b'i', IAC, SB, 24,
            1, IAC, SE, IAC, WILL, ECHO,
        ];
        let whole = Negotiator::new(true, 80, 24).feed(&device);
        let mut n = Negotiator::new(true, 80, 24);
        let mut split = Vec::new();
        for b in device {
            split.extend(n.feed(&[b]));
        }
        assert_eq!(whole, split);
        assert_eq!(
            whole,
            vec![
                IAC, DO, ECHO, IAC, DO, SGA, IAC, WONT, 24, IAC, WILL, NAWS, IAC, SB, NAWS, 0, 80,
                0, 24, IAC, SE
            ]
        );
        // A resize is reported once NAWS is on; 255 is doubled.
        assert_eq!(
            n.resize(255, 24),
            vec![IAC, SB, NAWS, 0, 255, 255, 0, 24, IAC, SE]
        );
        // Not telnet: nothing.
        let mut raw = Negotiator::new(false, 80, 24);
        assert!(raw.feed(&device).is_empty());
        assert!(raw.resize(100, 30).is_empty());
    }
}
