//! The HTTP/1.1 decoder stage: every request is an operation (`GET /status`), every response its
//! result, and an operation list decides request by request (security case 48).
//!
//! # What it reads
//!
//! Client → device, the request stream, with the framing of [`ward_core::http1`] (the same the
//! credential injector uses): each request head is held until complete (at most
//! [`MAX_HEAD`] bytes), then decided, then forwarded whole or not at all; its body is never held —
//! it passes as it streams (a fixed `Content-Length`, or `Transfer-Encoding: chunked` with its
//! chunk-size lines and trailers followed to the byte). Keep-alive and pipelined requests (several
//! in one chunk, one over many chunks) are followed exactly.
//!
//! Device → client, the responses: status line and headers, then the body by `Content-Length`,
//! chunks, or until the device closes; none for `1xx`, `204`, `304` and the answer to `HEAD`.
//! Responses are paired with requests first in, first out. Response bytes are never held.
//!
//! # Operations and events
//!
//! A request is named `METHOD path`, where the path is the request target's path **without its
//! query**, in canonical form: percent-escapes decoded, `.` and `..` segments resolved (also
//! `..;x`, as Tomcat reads it), runs of `/` merged. So `GET /status/../config?x=1` is the
//! operation `GET /config`: a pattern like `GET /status*` cannot be slipped past by spelling the
//! path differently from how the device resolves it. The event (`operation`) carries `method`,
//! `path` (canonical), `target` (the request target exactly as sent, query included), `host` and
//! `content_length` (`chunked` for a chunked body, `0` without a body). Each final response is an
//! `operation_result` event named after the request it answers, with `status` (and
//! `content_length` when the response says it).
//!
//! # Enforcement (with an operation list)
//!
//! A request the list refuses never reaches the device: neither its head nor its body (the body
//! is dropped as it streams). The client gets `HTTP/1.1 403 Forbidden` with a short `text/plain`
//! body giving the reason, `Content-Length`, and `Connection: keep-alive` when the request allowed
//! keep-alive (`close` otherwise): the connection stays usable for the next request. The answer
//! keeps HTTP's order: when responses to earlier pipelined requests are still due from the device,
//! the `403` is held and sent right after the last of them completes; otherwise at once. A refused
//! `Expect: 100-continue` request gets the `403` instead of a `100`. An `operation_denied` event
//! says which rule refused what.
//!
//! Refused as well (a `403`, the request is not forwarded), because a device could read them
//! differently from their name: a path with a backslash, a control character, an invalid or
//! double percent-encoding (`%252e`); a protocol switch (`Upgrade`, `CONNECT`): what follows would
//! not be HTTP requests the list could decide.
//!
//! What cannot be framed safely ends the session under a list (fail closed, the reason says why):
//! a head with a bare CR or LF, a folded line, an empty line before the request line, both
//! `Content-Length` and `Transfer-Encoding` or any other framing ambiguity, a malformed chunked
//! body, an HTTP/2 preface, bytes that are not HTTP; a head larger than [`MAX_HEAD`]
//! ([`StopKind::TooLarge`]); a response the stage cannot follow (without it, pairing and the order
//! of the `403`s would be lost). Without a list the stage reports one `undecodable` event with the
//! offset and passes the rest of the session through untouched.
//!
//! # Limits
//!
//! A refused request's body is read (and dropped) as its head declares it: a client refused before
//! it sent the body of an `Expect: 100-continue` request sends it anyway or closes the connection
//! (RFC 9110 §10.1.1; the `403` says `keep-alive`: Ward keeps reading). Paths match
//! case-sensitively (a device that serves `/CONFIG` as `/config` needs an allow list,
//! not a deny list). A response delimited by the device closing the connection ends the pairing
//! there: `403`s still due after it are not sent (the connection is closing). Requests sent ahead
//! of their responses are bounded ([`MAX_PIPELINED`]).

use std::collections::VecDeque;

use time::OffsetDateTime;
use ward_core::http1::{
    bad, chunk_size_byte, response_framing, split, Chunk, Framing, SizeStep, MAX_HEAD, MAX_HEADERS,
};
use ward_core::operations::{OpDecision, OpPolicy, OpProtocol};
use ward_core::stage::{Direction, Note, Stage, StageStop, StopKind, Verdict};

use crate::{denied_event, kind, undecodable_event, Operation};

/// The stage's name.
pub const STAGE: &str = "http";

/// The most requests (forwarded or refused) awaiting their answer.
pub const MAX_PIPELINED: usize = 4096;

/// Decodes HTTP/1.1 operations and enforces the session's operation list (see the module docs).
#[derive(Debug)]
pub struct HttpStage {
    policy: OpPolicy,
    up: Up,
    down: Down,
    /// Requests forwarded whose response has not started, and refusals waiting for their turn,
    /// in the order the client sent them. Its front is never a refusal while no response is
    /// being read.
    queue: VecDeque<Pending>,
    /// The request whose response's body is being read.
    current: Option<Req>,
    notes: Vec<Note>,
    stopped: Option<StageStop>,
    /// Decoding gave up (no list): everything passes untouched.
    passthrough: bool,
}

#[derive(Debug)]
enum Pending {
    Request(Req),
    /// A `403` to send once the responses before it are complete.
    Refusal(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Req {
    name: String,
    head: bool,
    connect: bool,
}

impl HttpStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self {
            policy,
            up: Up::default(),
            down: Down::default(),
            queue: VecDeque::new(),
            current: None,
            notes: Vec::new(),
            stopped: None,
            passthrough: false,
        }
    }

    fn fail(&mut self, dir: Direction, kind: StopKind, out: &mut Vec<u8>) -> Verdict {
        if self.policy.enforces() {
            let stop = StageStop::new(STAGE, dir, kind);
            self.stopped = Some(stop.clone());
            // What was decided before the fault stays reported; nothing is answered.
            self.notes.retain(|n| matches!(n, Note::Event(_)));
            return Verdict::End(stop);
        }
        let why = match &kind {
            StopKind::Unparseable(why) | StopKind::Unavailable(why) => why.clone(),
            StopKind::TooLarge { limit } => format!("a head larger than {limit} bytes"),
            StopKind::Denied { reason, .. } => reason.clone(),
        };
        let offset = match dir {
            Direction::Up => self.up.start,
            Direction::Down => self.down.start,
        };
        self.notes.push(Note::Event(undecodable_event(
            OpProtocol::Http,
            dir,
            offset,
            &why,
        )));
        self.passthrough = true;
        let _ = out;
        Verdict::Replace
    }

    // --------------------------------------------------------------------------------------------
    // Client → device.

    /// Read `*rest`, forwarding to `out`. On an error, `self.up.held` followed by `*rest` are the
    /// bytes not forwarded.
    fn up(&mut self, rest: &mut &[u8], out: &mut Vec<u8>) -> Result<(), StopKind> {
        while !rest.is_empty() {
            match self.up.body {
                Body::Head => self.up_head(rest, out)?,
                Body::Fixed(left) => {
                    let (now, later) = split(rest, left);
                    if !self.up.drop {
                        out.extend_from_slice(now);
                    }
                    self.up.advance(now.len());
                    *rest = later;
                    let left = left - now.len() as u64;
                    if left == 0 {
                        self.up.end_message();
                    } else {
                        self.up.body = Body::Fixed(left);
                    }
                }
                Body::Chunked(chunk) => self.up_chunked(chunk, rest, out)?,
                Body::UntilClose | Body::Tunnel => {
                    // Never set client → device.
                    out.extend_from_slice(rest);
                    *rest = &[];
                }
            }
        }
        Ok(())
    }

    fn up_head(&mut self, rest: &mut &[u8], out: &mut Vec<u8>) -> Result<(), StopKind> {
        let input = *rest;
        if self.up.held.is_empty() && self.up.line == Line::Start {
            self.up.start = self.up.offset;
        }
        let Some(end) = self.up.scan(input)? else {
            self.up.held.extend_from_slice(input);
            self.up.advance(input.len());
            *rest = &[];
            return Ok(());
        };
        let (head_end, later) = input.split_at(end);
        self.up.held.extend_from_slice(head_end);
        self.up.advance(end);
        *rest = later;
        let head = std::mem::take(&mut self.up.held);
        match self.request(&head, out) {
            Ok(()) => {
                self.up.held = head;
                self.up.held.clear();
                self.up.line = Line::Start;
                Ok(())
            }
            Err(e) => {
                self.up.held = head;
                Err(e)
            }
        }
    }

    /// A whole request head: decide, forward or refuse, and set up its body.
    fn request(&mut self, head: &[u8], out: &mut Vec<u8>) -> Result<(), StopKind> {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return Err(bad(
                "an HTTP/2 connection preface (Ward decodes HTTP/1.1; the client must not use \
                 HTTP/2 with prior knowledge)",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(bad("a request head httparse does not read as whole")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(bad(&format!(
                    "a request head with more than {MAX_HEADERS} header fields"
                )))
            }
            Err(e) => return Err(bad(&format!("invalid request head ({e})"))),
        }
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("");
        let http10 = req.version == Some(0);
        let framing = Framing::of_request(req.headers, http10)?;
        let mut host = None;
        let mut keep_alive = !http10;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return Err(bad("several Host headers"));
                }
                host = Some(String::from_utf8_lossy(h.value).trim().to_string());
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = ward_core::http1::trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if self.queue.len() >= MAX_PIPELINED {
            return Err(StopKind::Unparseable(format!(
                "more than {MAX_PIPELINED} HTTP requests sent ahead of the device's responses"
            )));
        }
        let connect = method == "CONNECT";
        let target_parts = Target::of(target, connect);
        let path = target_parts.path.clone();
        let name = format!(
            "{method} {}",
            path.as_deref().unwrap_or(target_parts.raw_path)
        );
        let host = host
            .or_else(|| target_parts.authority.map(str::to_string))
            .unwrap_or_default();
        let length = match framing {
            Framing::None => "0".to_string(),
            Framing::Length(n) => n.to_string(),
            Framing::Chunked => "chunked".to_string(),
        };
        let op = Operation::new(OpProtocol::Http, Direction::Up, name.clone())
            .field("method", method)
            .field(
                "path",
                path.clone()
                    .unwrap_or_else(|_| target_parts.raw_path.to_string()),
            )
            .field("target", target)
            .field("host", host)
            .field("content_length", length);
        let decision = if !self.policy.enforces() {
            OpDecision::Allow
        } else if let Err(why) = &path {
            OpDecision::Deny(format!(
                "its path is ambiguous ({why}): a device could resolve it to another resource \
                 than the rule sees, so it is not forwarded under rule {}",
                self.policy.rule
            ))
        } else if connect || upgrade {
            OpDecision::Deny(format!(
                "it asks to switch protocols ({}): what would follow is not HTTP requests rule {} \
                 could decide",
                if connect { "CONNECT" } else { "Upgrade" },
                self.policy.rule
            ))
        } else {
            self.policy.decide(&name)
        };
        match decision {
            OpDecision::Allow => {
                out.extend_from_slice(head);
                self.notes.push(Note::Event(op.event(kind::OPERATION)));
                self.queue.push_back(Pending::Request(Req {
                    name,
                    head: method == "HEAD",
                    connect,
                }));
                self.up.drop = false;
            }
            OpDecision::Deny(reason) => {
                self.notes
                    .push(Note::Event(denied_event(&self.policy, &op, &reason)));
                let reply = refusal(&name, &reason, keep_alive, method == "HEAD");
                if self.queue.is_empty() && self.current.is_none() {
                    self.notes.push(Note::Reply(reply));
                } else {
                    self.queue.push_back(Pending::Refusal(reply));
                }
                self.up.drop = true;
            }
        }
        self.up.body = match framing {
            Framing::None | Framing::Length(0) => {
                self.up.end_message();
                Body::Head
            }
            Framing::Length(n) => Body::Fixed(n),
            Framing::Chunked => Body::Chunked(Chunk::START),
        };
        Ok(())
    }

    fn up_chunked(
        &mut self,
        chunk: Chunk,
        rest: &mut &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StopKind> {
        let mut chunk = chunk;
        while let Some((&b, after)) = rest.split_first() {
            chunk = match chunk {
                Chunk::Size { len, value, digits } => {
                    // The size line is held until its CRLF: only a checked line is forwarded.
                    let next = chunk_size_byte(len, value, digits, b)?;
                    self.up.held.push(b);
                    self.up.advance(1);
                    *rest = after;
                    match next {
                        SizeStep::More(c) => c,
                        SizeStep::Done(size) => {
                            if !self.up.drop {
                                out.extend_from_slice(&self.up.held);
                            }
                            self.up.held.clear();
                            if size == 0 {
                                self.up.line = Line::Fresh;
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            }
                        }
                    }
                }
                Chunk::Data(left) => {
                    let (now, later) = split(rest, left);
                    if !self.up.drop {
                        out.extend_from_slice(now);
                    }
                    self.up.advance(now.len());
                    *rest = later;
                    match left - now.len() as u64 {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    }
                }
                Chunk::DataCr | Chunk::DataLf => {
                    let want = if chunk == Chunk::DataCr { b'\r' } else { b'\n' };
                    if b != want {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    if !self.up.drop {
                        out.push(b);
                    }
                    self.up.advance(1);
                    *rest = after;
                    if chunk == Chunk::DataCr {
                        Chunk::DataLf
                    } else {
                        Chunk::START
                    }
                }
                Chunk::Trailers => {
                    let input = *rest;
                    let Some(end) = self.up.scan(input)? else {
                        self.up.held.extend_from_slice(input);
                        self.up.advance(input.len());
                        *rest = &[];
                        self.up.body = Body::Chunked(Chunk::Trailers);
                        return Ok(());
                    };
                    let (section, later) = input.split_at(end);
                    self.up.held.extend_from_slice(section);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&self.up.held, &mut headers) {
                        Ok(httparse::Status::Complete((n, _))) if n == self.up.held.len() => {}
                        Ok(_) => {
                            self.up.held.truncate(self.up.held.len() - section.len());
                            return Err(bad("a trailer section httparse does not read as whole"));
                        }
                        Err(e) => {
                            self.up.held.truncate(self.up.held.len() - section.len());
                            return Err(bad(&format!("invalid trailer section ({e})")));
                        }
                    }
                    if !self.up.drop {
                        out.extend_from_slice(&self.up.held);
                    }
                    self.up.held.clear();
                    self.up.advance(end);
                    *rest = later;
                    self.up.line = Line::Start;
                    self.up.end_message();
                    return Ok(());
                }
            };
        }
        self.up.body = Body::Chunked(chunk);
        Ok(())
    }

    // --------------------------------------------------------------------------------------------
    // Device → client: forwarded as it comes, with the held `403`s put in their place.

    /// Read `input`; `inserted` collects (position in `input`, refusal) to put in the stream.
    fn down(&mut self, input: &[u8], inserted: &mut Vec<(usize, Vec<u8>)>) -> Result<(), StopKind> {
        let mut rest = input;
        while !rest.is_empty() {
            let at = input.len() - rest.len();
            match self.down.body {
                Body::Head => rest = self.down_head(rest, input.len(), inserted)?,
                Body::Fixed(left) => {
                    let (now, later) = split(rest, left);
                    self.down.advance(now.len());
                    rest = later;
                    let left = left - now.len() as u64;
                    if left == 0 {
                        self.complete(at + now.len(), inserted);
                    } else {
                        self.down.body = Body::Fixed(left);
                    }
                }
                Body::Chunked(chunk) => {
                    rest = self.down_chunked(chunk, rest, input.len(), inserted)?;
                }
                Body::UntilClose | Body::Tunnel => {
                    self.down.advance(rest.len());
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn down_head<'a>(
        &mut self,
        input: &'a [u8],
        total: usize,
        inserted: &mut Vec<(usize, Vec<u8>)>,
    ) -> Result<&'a [u8], StopKind> {
        let d = &mut self.down;
        let mut end = None;
        // Stray line breaks between responses are passed on, never held.
        let mut stray = 0;
        for (i, &b) in input.iter().enumerate() {
            if d.held.is_empty() && d.line == Line::Start && (b == b'\r' || b == b'\n') {
                stray = i + 1;
                continue;
            }
            if d.held.is_empty() && d.line == Line::Start {
                d.start = d.offset + i as u64;
            }
            if d.held.len() + (i - stray) >= MAX_HEAD {
                return Err(StopKind::TooLarge { limit: MAX_HEAD });
            }
            d.line = match (d.line, b) {
                (Line::Fresh, b'\n') => {
                    end = Some(i + 1);
                    break;
                }
                (Line::Fresh | Line::Start, b'\r') => d.line,
                (_, b'\n') => Line::Fresh,
                _ => Line::Text,
            };
        }
        let Some(end) = end else {
            d.held
                .extend_from_slice(input.get(stray..).unwrap_or_default());
            d.advance(input.len());
            return Ok(&[]);
        };
        let (head_end, later) = input.split_at(end);
        d.held
            .extend_from_slice(head_end.get(stray..).unwrap_or_default());
        d.advance(end);
        d.line = Line::Start;
        let head = std::mem::take(&mut d.held);
        let result = self.response(&head, total - later.len(), inserted);
        self.down.held = head;
        self.down.held.clear();
        result?;
        Ok(later)
    }

    /// A whole response head, ending at `at` in the chunk.
    fn response(
        &mut self,
        head: &[u8],
        at: usize,
        inserted: &mut Vec<(usize, Vec<u8>)>,
    ) -> Result<(), StopKind> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        // Devices' heads are read leniently (old embedded servers); their framing is not.
        let status = match httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .parse_response(&mut resp, head)
        {
            Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
            Ok(httparse::Status::Partial) => {
                return Err(unreadable(
                    "a response head httparse does not read as whole",
                ))
            }
            Err(e) => return Err(unreadable(&format!("invalid response head ({e})"))),
        };
        if (100..200).contains(&status) && status != 101 {
            return Ok(()); // interim: the final response follows
        }
        let req = match self.queue.pop_front() {
            Some(Pending::Request(req)) => req,
            Some(Pending::Refusal(r)) => {
                // Cannot happen (refusals at the front are sent when a response completes);
                // keep the order anyway.
                self.queue.push_front(Pending::Refusal(r));
                return Err(unreadable("a response while a refusal was due"));
            }
            None => return Err(unreadable("a response to no request")),
        };
        let framing = response_framing(resp.headers);
        let mut result = Operation::new(OpProtocol::Http, Direction::Down, req.name.clone())
            .field("status", status.to_string());
        if let Some(Framing::Length(n)) = framing {
            result = result.field("content_length", n.to_string());
        }
        self.notes.push(Note::Event(result.event(kind::RESULT)));
        let tunnel = status == 101 || (req.connect && (200..300).contains(&status));
        self.current = Some(req.clone());
        if tunnel {
            self.down.body = Body::Tunnel;
            return Err(StopKind::Unparseable(format!(
                "the device switched the connection to another protocol (status {status} to {})",
                req.name
            )));
        }
        if req.head || status == 204 || status == 304 {
            self.complete(at, inserted);
            return Ok(());
        }
        match framing {
            Some(Framing::Chunked) => self.down.body = Body::Chunked(Chunk::START),
            Some(Framing::Length(0) | Framing::None) => self.complete(at, inserted),
            Some(Framing::Length(n)) => self.down.body = Body::Fixed(n),
            None => self.down.body = Body::UntilClose,
        }
        Ok(())
    }

    /// The response being read ended at `at` in the chunk: the refusals due after it follow.
    fn complete(&mut self, at: usize, inserted: &mut Vec<(usize, Vec<u8>)>) {
        self.current = None;
        self.down.body = Body::Head;
        while let Some(Pending::Refusal(_)) = self.queue.front() {
            if let Some(Pending::Refusal(r)) = self.queue.pop_front() {
                inserted.push((at, r));
            }
        }
    }

    fn down_chunked<'a>(
        &mut self,
        chunk: Chunk,
        input: &'a [u8],
        total: usize,
        inserted: &mut Vec<(usize, Vec<u8>)>,
    ) -> Result<&'a [u8], StopKind> {
        let mut rest = input;
        let mut chunk = chunk;
        while let Some((&b, after)) = rest.split_first() {
            chunk = match chunk {
                Chunk::Size { len, value, digits } => {
                    rest = after;
                    self.down.advance(1);
                    // Devices' chunk-size lines are read leniently (a bare LF ends one).
                    let step = if b == b'\n' && digits > 0 {
                        Ok(SizeStep::Done(value))
                    } else {
                        chunk_size_byte(len, value, digits, b)
                    };
                    match step {
                        Ok(SizeStep::More(c)) => c,
                        Ok(SizeStep::Done(0)) => {
                            self.down.line = Line::Fresh;
                            Chunk::Trailers
                        }
                        Ok(SizeStep::Done(size)) => Chunk::Data(size),
                        Err(_) => return Err(unreadable("an invalid chunk-size line")),
                    }
                }
                Chunk::Data(left) => {
                    let (now, later) = split(rest, left);
                    rest = later;
                    self.down.advance(now.len());
                    match left - now.len() as u64 {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    }
                }
                Chunk::DataCr if b == b'\r' => {
                    rest = after;
                    self.down.advance(1);
                    Chunk::DataLf
                }
                Chunk::DataCr | Chunk::DataLf if b == b'\n' => {
                    rest = after;
                    self.down.advance(1);
                    Chunk::START
                }
                Chunk::DataCr | Chunk::DataLf => {
                    return Err(unreadable("chunk data not followed by CRLF"))
                }
                Chunk::Trailers => {
                    rest = after;
                    self.down.advance(1);
                    self.down.line = match (self.down.line, b) {
                        (Line::Fresh, b'\n') => {
                            self.down.line = Line::Start;
                            self.complete(total - rest.len(), inserted);
                            return Ok(rest);
                        }
                        (Line::Fresh, b'\r') => Line::Fresh,
                        (_, b'\n') => Line::Fresh,
                        _ => Line::Text,
                    };
                    Chunk::Trailers
                }
            };
        }
        self.down.body = Body::Chunked(chunk);
        Ok(rest)
    }
}

/// The `403` for a refused request `name`.
fn refusal(name: &str, reason: &str, keep_alive: bool, head: bool) -> Vec<u8> {
    let text: String = format!(
        "Ward refused {name}: {reason}. The request did not reach the device; ask a Ward \
         administrator for a rule that allows it.\n"
    )
    .chars()
    .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
    .collect();
    let mut r = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n\r\n",
        text.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if !head {
        r.extend_from_slice(text.as_bytes());
    }
    r
}

fn unreadable(why: &str) -> StopKind {
    StopKind::Unparseable(format!("HTTP response unreadable: {why}"))
}

impl Stage for HttpStage {
    fn name(&self) -> &str {
        STAGE
    }

    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _now: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if let Some(stop) = &self.stopped {
            return Verdict::End(stop.clone());
        }
        if self.passthrough {
            return Verdict::Pass;
        }
        match dir {
            Direction::Up => {
                // Bulk fast path: the whole chunk is body, forwarded or dropped as it is.
                if self.up.held.is_empty() {
                    let all = |left: u64| left > input.len() as u64;
                    let fast = match self.up.body {
                        Body::Fixed(left) if all(left) => {
                            self.up.body = Body::Fixed(left - input.len() as u64);
                            true
                        }
                        Body::Chunked(Chunk::Data(left)) if all(left) => {
                            self.up.body = Body::Chunked(Chunk::Data(left - input.len() as u64));
                            true
                        }
                        _ => false,
                    };
                    if fast {
                        self.up.advance(input.len());
                        return if self.up.drop {
                            Verdict::Replace
                        } else {
                            Verdict::Pass
                        };
                    }
                }
                let mut rest = input;
                match self.up(&mut rest, out) {
                    Ok(()) if out.as_slice() == input => {
                        out.clear();
                        Verdict::Pass
                    }
                    Ok(()) => Verdict::Replace,
                    Err(kind) => {
                        let verdict = self.fail(dir, kind, out);
                        if verdict == Verdict::Replace {
                            // Everything not forwarded yet goes through as it came.
                            out.append(&mut self.up.held);
                            out.extend_from_slice(rest);
                        }
                        verdict
                    }
                }
            }
            Direction::Down => {
                let mut inserted = Vec::new();
                let result = self.down(input, &mut inserted);
                if let Err(kind) = result {
                    if self.policy.enforces() {
                        return self.fail(dir, kind, out);
                    }
                    let _ = self.fail(dir, kind, out);
                }
                if inserted.is_empty() {
                    return Verdict::Pass;
                }
                let mut last = 0;
                for (at, reply) in inserted {
                    out.extend_from_slice(input.get(last..at).unwrap_or_default());
                    out.extend_from_slice(&reply);
                    last = at;
                }
                out.extend_from_slice(input.get(last..).unwrap_or_default());
                Verdict::Replace
            }
        }
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
        if let Some(stop) = &self.stopped {
            return Err(stop.clone());
        }
        if dir == Direction::Up && !self.up.held.is_empty() {
            if self.passthrough || !self.policy.enforces() {
                if !self.up.drop {
                    out.append(&mut self.up.held);
                }
                self.up.held.clear();
                return Ok(());
            }
            self.up.held.clear();
            let what = match self.up.body {
                Body::Chunked(Chunk::Trailers) => "a trailer section",
                Body::Chunked(_) => "a chunk-size line",
                _ => "a request head",
            };
            let stop = StageStop::new(
                STAGE,
                dir,
                StopKind::Unparseable(format!(
                    "the client ended its stream in the middle of {what} (not forwarded)"
                )),
            );
            self.stopped = Some(stop.clone());
            return Err(stop);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// The reading state.

/// Where a direction is in its stream of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Body {
    /// Reading a head.
    #[default]
    Head,
    /// In a fixed-length body: this many bytes left.
    Fixed(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// A response body that ends when the device closes.
    UntilClose,
    /// The connection switched protocols.
    Tunnel,
}

/// Where the line scanner is in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// Nothing of the head read yet.
    #[default]
    Start,
    /// Inside a line.
    Text,
    /// After a line's CR.
    Cr,
    /// At the start of a line after the first.
    Fresh,
    /// At the start of a line, after its CR (the head's end is the LF that follows).
    EndCr,
}

#[derive(Debug, Default)]
struct Up {
    body: Body,
    line: Line,
    /// A head or trailer section not yet complete, or a chunk-size line.
    held: Vec<u8>,
    /// Bytes read this way so far.
    offset: u64,
    /// Where the message being read started.
    start: u64,
    /// The message being read was refused: its body is dropped.
    drop: bool,
}

impl Up {
    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }

    fn end_message(&mut self) {
        self.body = Body::Head;
        self.drop = false;
    }

    /// Scan `input` for the end of the head (or trailer section) being read, strictly: every line
    /// ends with CRLF, no empty line before the first, no folded line. `Some(n)`: the head ends
    /// after `input[..n]`. `None`: all of `input` is head (the caller holds it).
    fn scan(&mut self, input: &[u8]) -> Result<Option<usize>, StopKind> {
        for (i, &b) in input.iter().enumerate() {
            if self.held.len() + i >= MAX_HEAD {
                return Err(StopKind::TooLarge { limit: MAX_HEAD });
            }
            self.line = match (self.line, b) {
                (Line::Start, b'\r' | b'\n') => {
                    return Err(bad("an empty line before the request line"))
                }
                (Line::Text, b'\r') => Line::Cr,
                (Line::Cr, b'\n') => Line::Fresh,
                (Line::Fresh, b'\r') => Line::EndCr,
                (Line::EndCr, b'\n') => return Ok(Some(i + 1)),
                (Line::Fresh, b' ' | b'\t') => {
                    return Err(bad(
                        "an obsolete folded header line (starts with a space or tab)",
                    ))
                }
                (Line::Cr | Line::EndCr, _) => return Err(bad("a bare CR in a request head")),
                (_, b'\n') => return Err(bad("a bare LF in a request head (lines end with CRLF)")),
                (Line::Start, _) if b < 0x20 || b == 0x7f => {
                    return Err(bad(
                        "a control byte where a request line starts (not HTTP?)",
                    ))
                }
                _ => Line::Text,
            };
        }
        Ok(None)
    }
}

#[derive(Debug, Default)]
struct Down {
    body: Body,
    line: Line,
    held: Vec<u8>,
    offset: u64,
    start: u64,
}

impl Down {
    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }
}

// ------------------------------------------------------------------------------------------------
// Request targets.

/// A request target, split.
struct Target<'a> {
    /// The path as sent (without the query).
    raw_path: &'a str,
    /// Its canonical form, or why it has none.
    path: Result<String, String>,
    /// The authority of an absolute-form (or CONNECT's authority-form) target.
    authority: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn of(target: &'a str, connect: bool) -> Self {
        if connect {
            return Self {
                raw_path: target,
                path: Ok(target.to_string()),
                authority: Some(target),
            };
        }
        if target == "*" {
            return Self {
                raw_path: target,
                path: Ok("*".into()),
                authority: None,
            };
        }
        let (authority, rest) = match target.find("://") {
            Some(i) if !target.starts_with('/') => {
                let after = target.get(i + 3..).unwrap_or_default();
                let end = after.find(['/', '?', '#']).unwrap_or(after.len());
                let (auth, rest) = after.split_at(end);
                (Some(auth), rest)
            }
            _ => (None, target),
        };
        // Only `?` ends the path: a `#` is never sent (a device may read it as part of the
        // path), so it stays in and makes the path ambiguous.
        let end = rest.find('?').unwrap_or(rest.len());
        let raw_path = rest.get(..end).unwrap_or_default();
        let path = if authority.is_none() && !raw_path.starts_with('/') {
            Err("a request target that is not a path".to_string())
        } else {
            canonical(if raw_path.is_empty() { "/" } else { raw_path })
        };
        Self {
            raw_path,
            path,
            authority,
        }
    }
}

/// `path` decoded and resolved (see the module docs), or why it is ambiguous.
fn canonical(path: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(path.len());
    let mut it = path.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = it.next().and_then(|h| (h as char).to_digit(16));
            let lo = it.next().and_then(|l| (l as char).to_digit(16));
            match (hi, lo) {
                (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                _ => return Err("an invalid percent-encoding".into()),
            }
        } else {
            bytes.push(b);
        }
    }
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("a control character".into());
    }
    if bytes.contains(&b'\\') {
        return Err("a backslash".into());
    }
    if bytes.contains(&b'#') {
        return Err("a '#' (a fragment is never sent to a server)".into());
    }
    if bytes
        .windows(3)
        .any(|w| matches!(w, [b'%', h, l] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()))
    {
        return Err("a double percent-encoding".into());
    }
    // Not UTF-8 once decoded (an overlong `%c0%ae` for `.`): a device may still read it.
    let decoded =
        std::str::from_utf8(&bytes).map_err(|_| "bytes that are not UTF-8".to_string())?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/') {
        let base = seg.split(';').next().unwrap_or_default();
        trailing = false;
        match base {
            "" if seg.is_empty() => trailing = true,
            "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::harness::{drive, Transcript};
    use proptest::prelude::*;
    use ward_core::operations::OpList;

    const UP: Direction = Direction::Up;
    const DOWN: Direction = Direction::Down;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn policy() -> OpPolicy {
        OpPolicy {
            rule: "monitor-status".into(),
            protocol: OpProtocol::Http,
            list: Some(OpList {
                allow: vec!["GET /status*".into(), "HEAD /status*".into()],
                deny: vec![],
            }),
        }
    }

    fn observe() -> OpPolicy {
        OpPolicy::observe(OpProtocol::Http)
    }

    fn run(policy: OpPolicy, script: &[(Direction, &[u8])], step: usize) -> Transcript {
        drive(
            &mut HttpStage::new(policy, "monitor-3"),
            script,
            step,
            now(),
        )
    }

    fn field<'a>(t: &'a Transcript, kind: &'a str, i: usize, key: &str) -> &'a str {
        let e = t.of_kind(kind).nth(i).unwrap();
        e.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    const GET: &[u8] = b"GET /status?verbose=1 HTTP/1.1\r\nHost: monitor\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const POST: &[u8] =
        b"POST /config HTTP/1.1\r\nHost: monitor\r\nContent-Length: 11\r\n\r\nrate=999999";

    #[test]
    fn paths_are_canonical() {
        for (raw, want) in [
            ("/", "/"),
            ("/status", "/status"),
            ("/status/", "/status/"),
            ("/status/../config", "/config"),
            ("/status/..;x/config", "/config"),
            ("/status%2F..%2Fconfig", "/config"),
            ("//config", "/config"),
            ("/a/./b/.", "/a/b/"),
            ("/..", "/"),
            ("/%41bc", "/Abc"),
        ] {
            assert_eq!(canonical(raw).unwrap(), want, "{raw}");
        }
        for raw in [
            "/a%2",
            "/a%zz",
            "/a\\..\\b",
            "/a%5c",
            "/%252e%252e/x",
            "/a%00",
            "/status#/../admin",
            "/status/%c0%ae%c0%ae/admin",
        ] {
            assert!(canonical(raw).is_err(), "{raw}");
        }
        assert!(Target::of("/status#/../admin", false).path.is_err());
        let t = Target::of("http://monitor:8080/status?x", false);
        assert_eq!(t.authority, Some("monitor:8080"));
        assert_eq!(t.path.unwrap(), "/status");
        assert_eq!(Target::of("*", false).path.unwrap(), "*");
    }

    #[test]
    fn requests_and_responses_are_operations_paired_in_order() {
        let t = run(observe(), &[(UP, GET), (DOWN, RESP)], 0);
        assert_eq!(t.up, GET);
        assert_eq!(t.down, RESP);
        assert_eq!(t.ops(kind::OPERATION), ["GET /status"]);
        assert_eq!(field(&t, kind::OPERATION, 0, "target"), "/status?verbose=1");
        assert_eq!(field(&t, kind::OPERATION, 0, "path"), "/status");
        assert_eq!(field(&t, kind::OPERATION, 0, "host"), "monitor");
        assert_eq!(field(&t, kind::OPERATION, 0, "content_length"), "0");
        assert_eq!(t.ops(kind::RESULT), ["GET /status"]);
        assert_eq!(field(&t, kind::RESULT, 0, "status"), "200");
        assert!(t.stop.is_none());
    }

    #[test]
    fn an_allowed_request_passes_unchanged_without_a_copy() {
        let mut s = HttpStage::new(policy(), "m");
        let mut out = Vec::new();
        assert_eq!(s.process(UP, GET, now(), &mut out), Verdict::Pass);
        let big = b"POST /status/upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        let mut s = HttpStage::new(observe(), "m");
        assert_eq!(s.process(UP, big, now(), &mut out), Verdict::Pass);
        assert_eq!(s.process(UP, &[b'x'; 4096], now(), &mut out), Verdict::Pass);
        assert!(out.is_empty());
    }

    #[test]
    fn a_denied_request_gets_a_403_and_nothing_of_it_reaches_the_device() {
        let script: &[(Direction, &[u8])] = &[(UP, POST), (UP, GET), (DOWN, RESP)];
        let t = run(policy(), script, 0);
        assert!(t.stop.is_none());
        assert_eq!(t.up, GET, "only the allowed request reached the device");
        assert_eq!(t.replies.len(), 1);
        let reply = String::from_utf8(t.replies[0].clone()).unwrap();
        assert!(reply.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{reply}");
        assert!(reply.contains("Connection: keep-alive\r\n"));
        assert!(reply.contains("Ward refused POST /config: rule monitor-status allows only"));
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        let mut down = t.replies[0].clone();
        down.extend_from_slice(RESP);
        assert_eq!(t.down, down);
        assert_eq!(t.ops(kind::DENIED), ["POST /config"]);
        assert_eq!(field(&t, kind::DENIED, 0, "rule"), "monitor-status");
        assert_eq!(t.ops(kind::OPERATION), ["GET /status"]);
        assert_eq!(t.ops(kind::RESULT), ["GET /status"]);
    }

    #[test]
    fn a_403_waits_for_the_responses_before_it() {
        // GET allowed, POST denied, GET allowed, pipelined in one write.
        let mut up = GET.to_vec();
        up.extend_from_slice(POST);
        up.extend_from_slice(GET);
        let chunked_resp: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut downs = chunked_resp.to_vec();
        downs.extend_from_slice(RESP);
        for step in [0, 1, 2, 7, 50] {
            let t = run(policy(), &[(UP, &up), (DOWN, &downs)], step);
            assert!(t.stop.is_none());
            let mut want_up = GET.to_vec();
            want_up.extend_from_slice(GET);
            assert_eq!(t.up, want_up);
            assert!(
                t.replies.is_empty(),
                "not a Note::Reply: a response was due"
            );
            let text = String::from_utf8_lossy(&t.down).into_owned();
            let first = text.find("abc\r\n0\r\n\r\n").unwrap();
            let refusal = text.find("HTTP/1.1 403").unwrap();
            let last = text.find("hello").unwrap();
            assert!(first < refusal && refusal < last, "{text}");
            assert_eq!(t.ops(kind::RESULT), ["GET /status", "GET /status"]);
        }
    }

    #[test]
    fn a_denied_body_is_dropped_as_it_streams() {
        let chunked: &[u8] = b"PUT /config HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        let mut up = chunked.to_vec();
        up.extend_from_slice(GET);
        for step in [0, 1, 3] {
            let t = run(policy(), &[(UP, &up), (DOWN, RESP)], step);
            assert_eq!(t.up, GET);
            assert_eq!(t.ops(kind::DENIED), ["PUT /config"]);
            assert_eq!(field(&t, kind::DENIED, 0, "content_length"), "chunked");
        }
        // A big body in chunks of its own: nothing forwarded, no copy held.
        let mut s = HttpStage::new(policy(), "m");
        let mut out = Vec::new();
        let head = b"POST /config HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
        assert_eq!(s.process(UP, head, now(), &mut out), Verdict::Replace);
        assert!(out.is_empty());
        for _ in 0..10 {
            assert_eq!(
                s.process(UP, &[b'x'; 1000], now(), &mut out),
                Verdict::Replace
            );
            assert!(out.is_empty());
        }
        assert!(s.up.held.is_empty());
    }

    #[test]
    fn ambiguous_paths_and_protocol_switches_are_refused_under_a_list() {
        for req in [
            &b"GET /status/../config HTTP/1.1\r\nHost: m\r\n\r\n"[..],
            b"GET /status%2f..%2fconfig HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET /status\\..\\config HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET /status/x%252e HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET /status HTTP/1.1\r\nHost: m\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"CONNECT status:443 HTTP/1.1\r\nHost: status:443\r\n\r\n",
        ] {
            let t = run(policy(), &[(UP, req)], 0);
            assert!(t.stop.is_none(), "{:?}", String::from_utf8_lossy(req));
            assert!(t.up.is_empty(), "{:?}", String::from_utf8_lossy(req));
            assert_eq!(t.replies.len(), 1);
        }
    }

    #[test]
    fn a_refused_head_request_gets_no_body_and_a_closing_one_says_close() {
        let t = run(
            policy(),
            &[(UP, b"HEAD /config HTTP/1.1\r\nHost: m\r\n\r\n")],
            0,
        );
        assert!(t.replies[0].ends_with(b"\r\n\r\n"));
        let t = run(policy(), &[(UP, b"GET /config HTTP/1.0\r\n\r\n")], 0);
        assert!(String::from_utf8_lossy(&t.replies[0]).contains("Connection: close\r\n"));
        // Expect: 100-continue: the 403, never a 100 (the device never sees it).
        let t = run(
            policy(),
            &[(UP, b"POST /config HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), (UP, b"abc")],
            0,
        );
        assert!(t.up.is_empty());
        assert!(t.replies[0].starts_with(b"HTTP/1.1 403"));
    }

    #[test]
    fn responses_without_bodies_and_interim_ones_keep_the_pairing() {
        let up: &[u8] = b"HEAD /status HTTP/1.1\r\n\r\nPOST /status/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nokGET /status/a HTTP/1.1\r\n\r\nGET /status/b HTTP/1.1\r\n\r\n";
        let down: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end";
        let p = OpPolicy {
            list: Some(OpList {
                allow: vec!["* /status*".into()],
                deny: vec![],
            }),
            ..policy()
        };
        for step in [0, 1, 5] {
            let t = run(p.clone(), &[(UP, up), (DOWN, down)], step);
            assert!(t.stop.is_none(), "{:?}", t.stop);
            assert_eq!(t.up, up);
            assert_eq!(t.down, down);
            assert_eq!(
                t.ops(kind::RESULT),
                [
                    "HEAD /status",
                    "POST /status/x",
                    "GET /status/a",
                    "GET /status/b"
                ]
            );
            let statuses: Vec<_> = (0..4)
                .map(|i| field(&t, kind::RESULT, i, "status"))
                .collect();
            assert_eq!(statuses, ["200", "204", "304", "200"]);
        }
    }

    #[test]
    fn what_cannot_be_framed_ends_the_session_under_a_list_and_passes_without() {
        let cases: &[&[u8]] = &[
            b"POST /status HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /status HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"GET /status HTTP/1.1\nHost: a\n\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"POST /status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ];
        for &c in cases {
            let t = run(policy(), &[(UP, c)], 0);
            let stop = t
                .stop
                .unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(c)));
            assert!(matches!(stop.kind, StopKind::Unparseable(_)), "{stop}");
            assert!(t.up.is_empty());
            let t = run(observe(), &[(UP, c), (DOWN, b"whatever")], 0);
            assert!(t.stop.is_none());
            assert_eq!(t.up, c, "passed untouched without a list");
            assert_eq!(t.down, b"whatever");
            assert_eq!(t.of_kind(kind::UNDECODABLE).count(), 1);
        }
        let mut big = b"GET /status HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        let t = run(policy(), &[(UP, &big)], 1000);
        assert_eq!(t.stop.unwrap().kind, StopKind::TooLarge { limit: MAX_HEAD });
        // A response that cannot be followed ends it too under a list.
        let t = run(policy(), &[(UP, GET), (DOWN, b"garbage\r\n\r\n")], 0);
        assert!(t.stop.is_some());
        // The client ending mid-head.
        let t = run(policy(), &[(UP, b"GET /status HTTP/1.1\r\nHo")], 0);
        assert!(t.stop.is_some());
        assert!(t.up.is_empty());
    }

    #[test]
    fn a_switch_of_protocols_passes_undecoded_without_a_list() {
        let up: &[u8] =
            b"GET /ws HTTP/1.1\r\nHost: m\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let down: &[u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let t = run(
            observe(),
            &[(UP, up), (DOWN, down), (UP, b"\x81\x85anything")],
            0,
        );
        assert!(t.stop.is_none());
        assert_eq!(t.down, down);
        assert!(t.up.ends_with(b"\x81\x85anything"));
        assert_eq!(t.ops(kind::RESULT), ["GET /ws"]);
        assert_eq!(t.of_kind(kind::UNDECODABLE).count(), 1);
        // Under a list the upgrade never reaches the device, and a device switching anyway ends it.
        let t = run(policy(), &[(UP, GET), (DOWN, down)], 0);
        assert!(matches!(t.stop.unwrap().kind, StopKind::Unparseable(_)));
    }

    #[test]
    fn refusals_due_after_a_response_ended_by_the_close_are_not_sent() {
        let mut up = GET.to_vec();
        up.extend_from_slice(POST);
        let down: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nbody until the device closes";
        let t = run(policy(), &[(UP, &up), (DOWN, down)], 0);
        assert!(t.stop.is_none());
        assert_eq!(t.up, GET);
        assert_eq!(t.down, down, "no 403 inside a body delimited by the close");
        assert_eq!(t.ops(kind::DENIED), ["POST /config"]);
    }

    #[test]
    fn what_the_stage_holds_is_bounded() {
        let mut s = HttpStage::new(observe(), "m");
        let mut out = Vec::new();
        // A response head that never ends: undecodable, then passed through, nothing held.
        s.process(UP, GET, now(), &mut out);
        for _ in 0..100 {
            out.clear();
            s.process(DOWN, &[b'a'; 1024], now(), &mut out);
        }
        assert!(s.down.held.capacity() <= 2 * MAX_HEAD);
        assert!(s.passthrough);
        // Requests sent ahead of their responses are bounded.
        let mut s = HttpStage::new(policy(), "m");
        let mut verdict = Verdict::Pass;
        for _ in 0..=MAX_PIPELINED {
            out.clear();
            verdict = s.process(UP, GET, now(), &mut out);
        }
        assert!(matches!(verdict, Verdict::End(_)), "{verdict:?}");
    }

    fn arb_exchange() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let req = prop_oneof![
            Just(GET.to_vec()),
            Just(POST.to_vec()),
            Just(b"HEAD /status HTTP/1.1\r\n\r\n".to_vec()),
            Just(b"PUT /status/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()),
            Just(b"DELETE /config/../status HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ];
        let resp = prop_oneof![
            Just(RESP.to_vec()),
            Just(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            Just(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec()
            ),
        ];
        (
            proptest::collection::vec(req, 1..6),
            proptest::collection::vec(resp, 0..6),
        )
            .prop_map(|(reqs, resps)| (reqs.concat(), resps.concat()))
    }

    /// One pipelined request: (allowed?, its bytes, the device's response if allowed).
    fn arb_request() -> impl Strategy<Value = (bool, Vec<u8>, Vec<u8>)> {
        let allowed = prop_oneof![
            Just(GET.to_vec()),
            Just(b"HEAD /status/x HTTP/1.1\r\nHost: m\r\n\r\n".to_vec()),
            Just(b"GET /status/y HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ];
        let denied = prop_oneof![
            Just(POST.to_vec()),
            Just(b"HEAD /admin HTTP/1.1\r\n\r\n".to_vec()),
            Just(
                b"PUT /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n"
                    .to_vec()
            ),
            Just(b"GET /status/../admin HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ];
        let response = prop_oneof![
            Just(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody".to_vec()),
            Just(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n0\r\n\r\n".to_vec()),
            Just(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        ];
        prop_oneof![
            (allowed, response).prop_map(|(r, mut resp)| {
                if r.starts_with(b"HEAD") {
                    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
                }
                (true, r, resp)
            }),
            denied.prop_map(|r| (false, r, Vec::new())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decoding_is_independent_of_chunking((up, down) in arb_exchange(), step in 1usize..40, enforce in any::<bool>()) {
            let p = if enforce { policy() } else { observe() };
            let script: &[(Direction, &[u8])] = &[(UP, &up), (DOWN, &down)];
            let whole = run(p.clone(), script, 0);
            let chunked = run(p, script, step);
            if whole.stop.is_some() {
                // More responses than requests forwarded: forwarded bytes before the end may
                // differ by the chunk; what was decided and why it ended may not.
                prop_assert_eq!(&whole.stop, &chunked.stop);
                prop_assert_eq!(&whole.events, &chunked.events);
                prop_assert_eq!(&whole.replies, &chunked.replies);
            } else {
                prop_assert_eq!(whole, chunked);
            }
        }

        #[test]
        fn answers_come_back_in_request_order_however_chunked(reqs in proptest::collection::vec(arb_request(), 1..8), step in 1usize..64) {
            let up: Vec<u8> = reqs.iter().flat_map(|(_, r, _)| r.clone()).collect();
            let down: Vec<u8> = reqs.iter().flat_map(|(_, _, resp)| resp.clone()).collect();
            let allowed_up: Vec<u8> = reqs.iter().filter(|(a, _, _)| *a).flat_map(|(_, r, _)| r.clone()).collect();
            let t = run(policy(), &[(UP, &up), (DOWN, &down)], step);
            prop_assert!(t.stop.is_none(), "{:?}", t.stop);
            prop_assert_eq!(&t.up, &allowed_up);
            // The client reads, in request order: each allowed request's response, each refused
            // one's 403.
            let mut refusals = t.of_kind(kind::DENIED).map(|e| {
                let f = |k: &str| e.fields.iter().find(|(key, _)| key == k).unwrap().1.clone();
                let op = f("op");
                refusal(&op, &f("reason"), true, op.starts_with("HEAD "))
            });
            let mut want = Vec::new();
            for (allowed, _, resp) in &reqs {
                if *allowed {
                    want.extend_from_slice(resp);
                } else {
                    want.extend(refusals.next().unwrap());
                }
            }
            prop_assert_eq!(String::from_utf8_lossy(&t.down), String::from_utf8_lossy(&want));
        }

        #[test]
        fn any_bytes_give_the_same_outcome_however_chunked(up in proptest::collection::vec(any::<u8>(), 0..300), down in proptest::collection::vec(any::<u8>(), 0..300), step in 1usize..20, enforce in any::<bool>()) {
            let p = if enforce { policy() } else { observe() };
            let script: &[(Direction, &[u8])] = &[(UP, &up), (DOWN, &down)];
            let whole = run(p.clone(), script, 0);
            let chunked = run(p, script, step);
            match (&whole.stop, &chunked.stop) {
                (None, None) => prop_assert_eq!(whole, chunked),
                (Some(a), Some(b)) => prop_assert_eq!(std::mem::discriminant(&a.kind), std::mem::discriminant(&b.kind)),
                (a, b) => prop_assert!(false, "{:?} / {:?}", a, b),
            }
        }

        #[test]
        fn a_denied_request_never_reaches_the_device_however_split(step in 1usize..60, prefix in 0usize..4) {
            let mut up = Vec::new();
            for _ in 0..prefix { up.extend_from_slice(GET); }
            up.extend_from_slice(POST);
            up.extend_from_slice(GET);
            let t = run(policy(), &[(UP, &up)], step);
            prop_assert!(!t.up.windows(5).any(|w| w == b"POST " || w == b"rate="));
            prop_assert_eq!(t.ops(kind::OPERATION).len(), prefix + 1);
        }
    }
}
