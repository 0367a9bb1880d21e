//! Live watch (see [`super`]): `GET /api/v1/live/{id}/watch` streams a live terminal session's
//! screen as server-sent events, by tailing its recording as the recorder writes it.
//!
//! The review service decides and audits (`session_watched`, once per watch; security and
//! admin only). Then the recording is read from where the last read stopped every
//! [`POLL`]: complete records only (a record the recorder is still writing waits for the next
//! read), device output fed to a [`Terminal`]. Events:
//! - `screen`: a [`super::terminal::Screen`], sent at once and then whenever it changed (at most
//!   once per [`POLL`]);
//! - `end`: `{"reason": …}` when the recording ends (the session's end reason), when the watch
//!   reached `[web] max_session`, or when the recording can no longer be read. The stream closes
//!   after it, and as soon as the browser goes away.
//!
//! An encrypted recording (`[recording] recipients`) is opened as it is tailed with the key its
//! recorder holds while it writes it ([`crate::unseal::live_keys`]: in memory only, gone when the
//! session ends), or the gateway's reviewer identity (`[review] identity_file`). Without either
//! the watch ends with an `end` event saying how to replay the recording with the CLI.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use tokio::time::Instant;
use ward_recording::{Direction, ReadError, Reader, Record};
use ward_store::recording_store::RecordingStore;

use super::terminal::{Screen, Terminal, DEFAULT_COLS, DEFAULT_ROWS};
use super::{ApiError, Authed, WebState};

/// How often the recording is read again (the watch's lag is at most about this).
pub const POLL: Duration = Duration::from_millis(200);
/// At most this many bytes are read per poll (a long session is caught up over a few).
pub const READ_CAP: u64 = 4 << 20;

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new().route("/api/v1/live/{id}/watch", get(watch))
}

async fn watch(
    State(state): State<WebState>,
    authed: Authed,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let store = state.review().watch(&authed.reviewer(), &id).await?;
    let limit = state.shared.config().web.max_session;
    let opener = crate::unseal::Opener::live(state.review().identity(), &id);
    let tail = Tail::new(store, id, Instant::now() + limit).opening(opener);
    let stream = futures::stream::unfold(tail, |mut tail| async move {
        let ev = tail.next_event().await?;
        Some((Ok(ev), tail))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The state of one watch: the recording, the deadline, what was sent, and the [`Feed`].
pub struct Tail {
    store: RecordingStore,
    id: String,
    deadline: Instant,
    feed: Feed,
    last_sent: Option<Screen>,
    finished: bool,
}

/// What was read of the recording and the terminal it was fed to (moved to a blocking thread
/// for each read: reading and emulating never run on an async worker).
struct Feed {
    /// Bytes of the recording consumed (whole records, and the magic).
    offset: u64,
    /// The recording's magic, once read.
    magic: Vec<u8>,
    /// Bytes read after the last whole record.
    pending: Vec<u8>,
    telnet: bool,
    sized: bool,
    terminal: Terminal,
    /// Time of the last data record, nanoseconds since the session started.
    t_ns: u64,
    /// Fed since the last screen was taken.
    dirty: bool,
    /// Why the watch ends, once known.
    end: Option<String>,
    /// Opens encrypted records.
    opener: crate::unseal::Opener,
    /// The watch ends because an encrypted record could not be opened (the session goes on).
    encrypted: bool,
}

/// What one read of the recording gave.
enum Polled {
    /// New bytes (maybe none); `more` when the read stopped at [`READ_CAP`].
    Bytes { bytes: Vec<u8>, more: bool },
    /// The recording is gone or unreadable.
    Gone(String),
}

impl Tail {
    /// Watch recording `id` of `store` until `deadline`.
    pub fn new(store: RecordingStore, id: String, deadline: Instant) -> Self {
        Tail {
            store,
            id,
            deadline,
            feed: Feed::new(),
            last_sent: None,
            finished: false,
        }
    }

    /// The same watch, opening the recording's encrypted records with `opener`.
    pub fn opening(mut self, opener: crate::unseal::Opener) -> Self {
        self.feed.opener = opener;
        self
    }

    /// The next event to send, waiting for one; `None` once `end` was sent.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if self.finished {
                return None;
            }
            let more = self.poll().await;
            if let Some(screen) = self.changed() {
                return Some(screen_event(&screen));
            }
            if let Some(reason) = self.feed.end.take() {
                self.finished = true;
                let data = match self.feed.encrypted {
                    true => serde_json::json!({ "reason": reason, "encrypted": true }),
                    false => serde_json::json!({ "reason": reason }),
                }
                .to_string();
                return Some(SseEvent::default().event("end").data(data));
            }
            if Instant::now() >= self.deadline {
                self.feed.end = Some("the watch reached [web] max_session; open it again".into());
                continue;
            }
            if !more {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// The screen, if it changed since the last one sent.
    fn changed(&mut self) -> Option<Screen> {
        if !self.feed.dirty {
            return None;
        }
        self.feed.dirty = false;
        let screen = self.feed.terminal.screen(self.feed.t_ns as f64 / 1e9);
        let same = self
            .last_sent
            .as_ref()
            .is_some_and(|s| s.lines == screen.lines && s.cursor == screen.cursor);
        if same {
            return None;
        }
        self.last_sent = Some(screen.clone());
        Some(screen)
    }

    /// Read what the recorder wrote since the last poll and feed its whole records (on a
    /// blocking thread); `true` when there is more to read at once.
    async fn poll(&mut self) -> bool {
        let (store, id) = (self.store.clone(), self.id.clone());
        let mut feed = std::mem::replace(&mut self.feed, Feed::new());
        if feed.end.is_some() {
            // Nothing more is read once the end is known (an unopenable record stays unread).
            self.feed = feed;
            return false;
        }
        let job = tokio::task::spawn_blocking(move || {
            let more = match read_from(&store, &id, feed.offset) {
                Polled::Gone(why) => {
                    feed.end.get_or_insert(why);
                    false
                }
                Polled::Bytes { bytes, more } => {
                    feed.offset += bytes.len() as u64;
                    feed.pending.extend_from_slice(&bytes);
                    feed.parse();
                    more
                }
            };
            (feed, more)
        });
        match job.await {
            Ok((feed, more)) => {
                self.feed = feed;
                more
            }
            Err(e) => {
                self.feed.end = Some(format!("reading the recording failed: {e}"));
                false
            }
        }
    }
}

impl Feed {
    fn new() -> Self {
        Feed {
            offset: 0,
            magic: Vec::new(),
            pending: Vec::new(),
            telnet: false,
            sized: false,
            terminal: Terminal::new(DEFAULT_COLS, DEFAULT_ROWS, false),
            t_ns: 0,
            dirty: true,
            end: None,
            opener: crate::unseal::Opener::new(None, ""),
            encrypted: false,
        }
    }

    /// Feed the whole records in `pending`; keep a record not yet whole.
    fn parse(&mut self) {
        if self.magic.is_empty() {
            if self.pending.len() < ward_recording::MAGIC.len() {
                return;
            }
            let rest = self.pending.split_off(ward_recording::MAGIC.len());
            self.magic = std::mem::replace(&mut self.pending, rest);
        }
        let mut buf = self.magic.clone();
        buf.extend_from_slice(&self.pending);
        let mut reader = Reader::new(&buf);
        let mut consumed = self.magic.len();
        while let Some(item) = reader.next_record() {
            match item {
                Ok(at) => {
                    consumed = usize::try_from(reader.offset()).unwrap_or(buf.len());
                    match self.opener.open(at.record) {
                        Ok(records) => records.into_iter().for_each(|r| self.record(r)),
                        Err(e) => {
                            self.encrypted = true;
                            self.end.get_or_insert(e.for_gateway());
                            break;
                        }
                    }
                }
                // The recorder is still writing it.
                Err(ReadError::Truncated { .. }) => break,
                Err(e) => {
                    self.end
                        .get_or_insert(format!("the recording cannot be read further: {e}"));
                    break;
                }
            }
        }
        self.pending = buf.get(consumed..).unwrap_or_default().to_vec();
    }

    fn record(&mut self, record: Record) {
        match record {
            Record::Meta(m) => {
                self.telnet = m.protocol == "telnet";
                self.terminal = Terminal::new(DEFAULT_COLS, DEFAULT_ROWS, self.telnet);
                self.dirty = true;
            }
            Record::Data { dir, t_ns, payload } => {
                self.t_ns = self.t_ns.max(t_ns);
                match dir {
                    Direction::Down => {
                        self.terminal.feed(&payload);
                        self.dirty = true;
                    }
                    Direction::Up if self.telnet && !self.sized => {
                        if let Some((cols, rows)) = super::terminal::telnet_naws(&payload) {
                            self.sized = true;
                            self.terminal.resize(cols, rows);
                            self.dirty = true;
                        }
                    }
                    Direction::Up => {}
                }
            }
            Record::End { info, .. } => {
                self.end.get_or_insert(info.reason);
            }
            Record::Interrupted { reason, .. } => {
                self.end.get_or_insert(format!("interrupted: {reason}"));
            }
            // Opened before it gets here (`parse`).
            Record::Checkpoint { .. } | Record::Event { .. } | Record::Sealed { .. } => {}
        }
    }
}

fn screen_event(screen: &Screen) -> SseEvent {
    let data = serde_json::to_string(screen).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event("screen").data(data)
}

/// The recording's bytes from `offset`, at most [`READ_CAP`] of them.
fn read_from(store: &RecordingStore, id: &str, offset: u64) -> Polled {
    let mut snap = match store.open(id) {
        Ok(s) => s,
        Err(e) => return Polled::Gone(format!("the recording cannot be read: {e}")),
    };
    if snap.len <= offset {
        return Polled::Bytes {
            bytes: Vec::new(),
            more: false,
        };
    }
    let want = (snap.len - offset).min(READ_CAP);
    let mut bytes = Vec::new();
    let read = snap
        .reader
        .seek(SeekFrom::Start(offset))
        .and_then(|_| (&mut snap.reader).take(want).read_to_end(&mut bytes));
    match read {
        Ok(_) => Polled::Bytes {
            more: snap.len - offset > want,
            bytes,
        },
        Err(e) => Polled::Gone(format!("the recording cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use std::sync::Arc;
    use ward_recording::{CheckpointPolicy, Encoder, EndInfo, SessionMeta, Signer};

    fn text(s: &Screen) -> String {
        s.lines
            .iter()
            .map(|l| l.iter().map(|r| r.text.as_str()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tail reads records as they are appended, one byte at a time included, and ends
    /// with the recording.
    #[tokio::test]
    async fn tails_whole_records_and_ends_with_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        let signer = Arc::new(Signer::generate().unwrap().0);
        let meta = SessionMeta {
            session_id: "00000000000000ab".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: None,
            cert_serial: "01".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump".into(),
            device_addr: "127.0.0.1:23".into(),
            protocol: "telnet".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 0,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut out = Vec::new();
        let mut enc = Encoder::start(&meta, signer, CheckpointPolicy::default(), &mut out).unwrap();
        enc.data(Direction::Down, 1, b"\xff\xfb\x01pump> ", &mut out);
        let mut w = store.create("00000000000000ab").unwrap();
        // All but the last 3 bytes: the data record is not whole yet.
        w.write_all(&out[..out.len() - 3]).unwrap();
        let mut tail = Tail::new(
            store.clone(),
            "00000000000000ab".into(),
            Instant::now() + Duration::from_secs(30),
        );
        tail.poll().await;
        let first = tail.changed().unwrap();
        assert_eq!(text(&first).trim(), "");
        w.write_all(&out[out.len() - 3..]).unwrap();
        tail.poll().await;
        let second = tail.changed().unwrap();
        assert!(text(&second).starts_with("pump>"), "{}", text(&second));
        assert!(tail.changed().is_none(), "nothing new, nothing sent");
        let mut more = Vec::new();
        enc.data(Direction::Down, 2, b"rate 5\r\n", &mut more);
        enc.finish(
            3,
            &EndInfo {
                ended_unix_ms: 5,
                reason: "client closed".into(),
                bytes_up: 0,
                bytes_down: 0,
            },
            &mut more,
        );
        w.write_all(&more).unwrap();
        let ev = tail.next_event().await.unwrap();
        assert!(format!("{ev:?}").contains("rate 5"), "{ev:?}");
        let end = tail.next_event().await.unwrap();
        assert!(format!("{end:?}").contains("client closed"), "{end:?}");
        assert!(tail.next_event().await.is_none());
    }

    /// An encrypted recording is tailed with its recorder's live key; without a key the watch
    /// ends at once saying so (never a blank screen that looks like an idle session).
    #[tokio::test]
    async fn an_encrypted_recording_is_watched_with_the_live_key_or_ends_saying_why() {
        use crate::unseal::tests::{identity, sealed_recording};
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        let (text, to) = identity();
        let identities = ward_recording::sealed::load_identities(&text).unwrap();
        // Device output, so the screen shows it ("ok").
        let id = "00000000000000ae";
        let bytes = sealed_recording(id, &to, b"x");
        store.create(id).unwrap().write_all(&bytes).unwrap();

        let mut blind = Tail::new(
            store.clone(),
            id.into(),
            Instant::now() + Duration::from_secs(30),
        )
        .opening(crate::unseal::Opener::live(None, id));
        let mut events = Vec::new();
        while let Some(ev) = blind.next_event().await {
            events.push(format!("{ev:?}"));
        }
        let end = events.last().unwrap();
        assert!(
            end.contains("encrypted at rest")
                && end.replace('\\', "").contains("\"encrypted\":true"),
            "{events:?}"
        );

        let meta = match ward_recording::Reader::new(&bytes).next() {
            Some(Ok((_, Record::Meta(m)))) => m,
            other => panic!("{other:?}"),
        };
        let unsealer = ward_recording::sealed::Unsealer::new(&meta, &identities).unwrap();
        let _live = crate::unseal::live_keys().register(id, unsealer);
        let mut seeing = Tail::new(store, id.into(), Instant::now() + Duration::from_secs(30))
            .opening(crate::unseal::Opener::live(None, id));
        let mut events = Vec::new();
        while let Some(ev) = seeing.next_event().await {
            events.push(format!("{ev:?}"));
        }
        assert!(events.iter().any(|e| e.contains("ok")), "{events:?}");
        assert!(
            events.last().unwrap().contains("client closed"),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_recording_that_is_not_one_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        let mut w = store.create("00000000000000ac").unwrap();
        w.write_all(b"WARDREC\x02\x99\x00\x00\x00\x00garbage")
            .unwrap();
        let mut tail = Tail::new(
            store,
            "00000000000000ac".into(),
            Instant::now() + Duration::from_secs(30),
        );
        let first = tail.next_event().await.unwrap();
        assert!(format!("{first:?}").contains("screen"), "{first:?}");
        let end = tail.next_event().await.unwrap();
        assert!(format!("{end:?}").contains("cannot be read"), "{end:?}");
        assert!(tail.next_event().await.is_none());
    }

    #[tokio::test]
    async fn the_watch_stops_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        let mut w = store.create("00000000000000ad").unwrap();
        w.write_all(ward_recording::MAGIC).unwrap();
        let mut tail = Tail::new(store, "00000000000000ad".into(), Instant::now());
        let _screen = tail.next_event().await.unwrap();
        let end = tail.next_event().await.unwrap();
        assert!(format!("{end:?}").contains("max_session"), "{end:?}");
        assert!(tail.next_event().await.is_none());
    }
}
