//! A session's pipeline: every chunk goes decode → decide → record → forward.
//!
//! The device's stages ([`ward_core::stage`]: protocol decoders with operation-level policy,
//! credential injectors) come first, in order, then the recorder; the pump
//! ([`ward_transport::datapath`]) forwards what comes out. The recording holds exactly what was
//! forwarded to each side: rewritten bytes as rewritten, held bytes once released, nothing of a chunk
//! a stage refused. A stage that ends the session does so with a typed [`StageStop`], which becomes
//! the client's `Closed` message, the audit event's reason and the recording's end record.
//!
//! Stages come from [`crate::gateway::Options::stages`], consulted once per session at open. A
//! device without stages costs the pump nothing beyond one branch per chunk: no lock, no clock
//! read, no copy, no allocation.

use std::io;
use std::sync::{Arc, Mutex};

use ward_ca::Clock;
use ward_core::stage::{
    self, Chain, Forward, Note, RecordedEvent, SessionContext, Stage, StageFactory, StageStop,
    StopKind,
};
use ward_recording::Direction;
use ward_transport::datapath::ChunkTap;

use crate::recorder;

/// What the session does with the events its stages report besides recording them (the gateway
/// audits a rejected credential).
pub type Observer = Box<dyn Fn(&RecordedEvent) + Send + Sync>;

/// The stages and the recorder of one session, as the pump's [`ChunkTap`].
pub struct Pipeline {
    /// `None` when the device has no stage.
    stages: Option<Mutex<Chain>>,
    /// `None` only where recording is off (the benchmark harness).
    recorder: Option<recorder::Tap>,
    clock: Arc<dyn Clock>,
    observer: Option<Observer>,
    /// What the stages answer the client (a refused operation's `403`, `AR` ACK, DIMSE failure),
    /// waiting for the device → client pump.
    replies: Replies,
}

/// Bytes for the client that no device read brought, in the order the stages gave them.
#[derive(Default)]
struct Replies {
    queue: Mutex<std::collections::VecDeque<Vec<u8>>>,
    ready: tokio::sync::Notify,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages", &self.stages)
            .field("recorded", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// The pipeline of a session opening now: the factory's stages for it, then `last` (the
    /// session's own stages: a credential injector, which no stage after it may rewrite), then
    /// `recorder`. `None` when there is neither stage nor recorder (nothing for the pump to call).
    pub fn for_session(
        factory: Option<&dyn StageFactory>,
        last: Vec<Box<dyn Stage>>,
        session: &SessionContext<'_>,
        recorder: Option<recorder::Tap>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        let mut stages = factory.map(|f| f.stages(session)).unwrap_or_default();
        stages.extend(last);
        let chain = Some(Chain::new(stages)).filter(|c| !c.is_empty());
        if let Some(c) = &chain {
            tracing::info!(stages = ?c.names(), "session stages");
        }
        if chain.is_none() && recorder.is_none() {
            return None;
        }
        Some(Self {
            stages: chain.map(Mutex::new),
            recorder,
            clock,
            observer: None,
            replies: Replies::default(),
        })
    }

    /// Call `observer` with every event a stage reports (after it is recorded).
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Run the stages on a chunk (decode, decide). The lock is held for the stages' work only,
    /// never across an await; the two directions take turns.
    fn decide(
        &self,
        dir: Direction,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<(Forward, Vec<Note>)> {
        let Some(stages) = &self.stages else {
            return Ok((Forward::AsIs, Vec::new()));
        };
        let now = self.clock.now();
        let mut chain = stages.lock().map_err(|_| poisoned(dir))?;
        let forward = chain
            .process(core_dir(dir), bytes, now, out)
            .map_err(stop)?;
        Ok((forward, chain.take_notes()))
    }

    /// Record what is forwarded: the bytes, with each secret span left out and its event
    /// recorded in its place, then the stages' other events.
    async fn record(&self, dir: Direction, forwarded: &[u8], notes: Vec<Note>) -> io::Result<()> {
        let Some(rec) = &self.recorder else {
            self.observe(&notes);
            return Ok(());
        };
        if notes.is_empty() {
            if !forwarded.is_empty() {
                rec.record(dir, forwarded).await?;
            }
            return Ok(());
        }
        let mut secrets: Vec<(&std::ops::Range<usize>, &RecordedEvent)> = notes
            .iter()
            .filter_map(|n| match n {
                Note::Secret { range, event } => Some((range, event)),
                Note::Event(_) | Note::Reply(_) => None,
            })
            .collect();
        secrets.sort_by_key(|(r, _)| r.start);
        let mut pos = 0;
        for (range, event) in secrets {
            // The chain checked every span lies within `forwarded`; overlapping spans are merged.
            let start = range.start.max(pos);
            if let Some(clear) = forwarded.get(pos..start).filter(|b| !b.is_empty()) {
                rec.record(dir, clear).await?;
            }
            rec.record_event(dir, event.clone()).await?;
            pos = pos.max(range.end);
        }
        if let Some(clear) = forwarded.get(pos..).filter(|b| !b.is_empty()) {
            rec.record(dir, clear).await?;
        }
        for n in &notes {
            if let Note::Event(ev) = n {
                rec.record_event(dir, ev.clone()).await?;
            }
        }
        self.observe(&notes);
        Ok(())
    }

    fn observe(&self, notes: &[Note]) {
        let Some(observer) = &self.observer else {
            return;
        };
        for n in notes {
            match n {
                Note::Secret { event, .. } | Note::Event(event) => observer(event),
                Note::Reply(_) => {}
            }
        }
    }
}

impl ChunkTap for Pipeline {
    async fn take(&self, dir: Direction, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<Forward> {
        let (forward, notes) = self.decide(dir, bytes, out)?;
        self.queue_replies(dir, &notes)?;
        // Recorded before it is forwarded (fail closed), and exactly what is forwarded (but for
        // the secrets a stage injected, recorded as events).
        let forwarded = match forward {
            Forward::AsIs => bytes,
            Forward::Replaced => out.as_slice(),
        };
        self.record(dir, forwarded, notes).await?;
        Ok(forward)
    }

    fn injects(&self, dir: Direction) -> bool {
        // Stages answer the client only.
        dir == Direction::Down && self.stages.is_some()
    }

    async fn injected(&self, dir: Direction) {
        if dir != Direction::Down {
            return std::future::pending().await;
        }
        loop {
            let waiting = self.replies.queue.lock().map_or(true, |q| !q.is_empty());
            if waiting {
                return;
            }
            // A reply queued between the check and here left a permit: no wake-up is lost.
            self.replies.ready.notified().await;
        }
    }

    async fn take_injected(&self, dir: Direction, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        if dir != Direction::Down {
            return Ok(false);
        }
        let next = self
            .replies
            .queue
            .lock()
            .map_err(|_| poisoned(dir))?
            .pop_front();
        let Some(bytes) = next else {
            return Ok(false);
        };
        // Recorded by the pump that sends it, in the order it is sent.
        self.record(dir, &bytes, Vec::new()).await?;
        *out = bytes;
        Ok(true)
    }

    async fn finish(&self, dir: Direction, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        if let Some(stages) = &self.stages {
            let now = self.clock.now();
            let mut chain = stages.lock().map_err(|_| poisoned(dir))?;
            chain.finish(core_dir(dir), now, out).map_err(stop)?;
        }
        self.record(dir, out, Vec::new()).await
    }
}

impl Pipeline {
    /// Queue the stages' answers to the client (from client → device chunks). A stage answering
    /// the device is a bug in the stage: the session ends rather than drop the answer.
    fn queue_replies(&self, dir: Direction, notes: &[Note]) -> io::Result<()> {
        let mut replies = notes.iter().filter_map(|n| match n {
            Note::Reply(b) => Some(b),
            _ => None,
        });
        let Some(first) = replies.next() else {
            return Ok(());
        };
        if dir != Direction::Up {
            return Err(stop(StageStop::new(
                "pipeline",
                core_dir(dir),
                StopKind::Unavailable(
                    "a stage answered the device, which the gateway does not do".into(),
                ),
            )));
        }
        let mut q = self.replies.queue.lock().map_err(|_| poisoned(dir))?;
        q.push_back(first.clone());
        q.extend(replies.cloned());
        drop(q);
        self.replies.ready.notify_one();
        Ok(())
    }
}

/// The core's name for a direction.
fn core_dir(dir: Direction) -> stage::Direction {
    match dir {
        Direction::Up => stage::Direction::Up,
        Direction::Down => stage::Direction::Down,
    }
}

fn stop(s: StageStop) -> io::Error {
    io::Error::other(s)
}

/// A stage panicked earlier in this session (the other direction): nothing more passes.
fn poisoned(dir: Direction) -> io::Error {
    stop(StageStop::new(
        "pipeline",
        core_dir(dir),
        StopKind::Unavailable("a stage failed earlier in this session".into()),
    ))
}

/// The stage's reason when `e` is a stage ending the session.
pub fn stage_stop(e: &io::Error) -> Option<&StageStop> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<StageStop>())
}

/// True when `e` is a stage ending the session (see [`stage_stop`]).
pub fn is_stage_stop(e: &io::Error) -> bool {
    stage_stop(e).is_some()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use time::OffsetDateTime;
    use ward_core::stage::Verdict;
    use ward_core::{Device, Principal, PrincipalKind};

    struct Fixed(OffsetDateTime);

    impl Clock for Fixed {
        fn now(&self) -> OffsetDateTime {
            self.0
        }
    }

    /// Doubles every byte it sees, and ends the session on `!` (noting the `now` it was given).
    struct Doubler;

    impl Stage for Doubler {
        fn name(&self) -> &str {
            "doubler"
        }
        fn process(
            &mut self,
            dir: stage::Direction,
            input: &[u8],
            now: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            if input.contains(&b'!') {
                let why = format!("bang at {}", now.unix_timestamp());
                return Verdict::End(StageStop::new("doubler", dir, StopKind::Unparseable(why)));
            }
            out.extend(input.iter().flat_map(|&b| [b, b]));
            Verdict::Replace
        }
    }

    struct OnlyFor(&'static str);

    impl StageFactory for OnlyFor {
        fn stages(&self, s: &SessionContext<'_>) -> Vec<Box<dyn Stage>> {
            if s.device.id.as_str() == self.0 {
                vec![Box::new(Doubler)]
            } else {
                Vec::new()
            }
        }
    }

    fn device(id: &str) -> Device {
        Device {
            id: id.parse().unwrap(),
            address: "127.0.0.1:9".parse().unwrap(),
            protocol: "raw".parse().unwrap(),
            labels: Default::default(),
            maintenance: None,
            break_glass: None,
            netns: None,
            tls: None,
        }
    }

    fn pipeline(factory: Option<&dyn StageFactory>, device_id: &str) -> Option<Pipeline> {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let principal = Principal {
            kind: PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: Some("acme".into()),
            roles: Vec::new(),
            serial: "01".into(),
            not_after: at,
        };
        let d = device(device_id);
        let ctx = SessionContext {
            device: &d,
            principal: &principal,
            rule: "r",
            now: at,
        };
        Pipeline::for_session(factory, Vec::new(), &ctx, None, Arc::new(Fixed(at)))
    }

    /// Puts a secret between two clear bytes: `[`, the secret, `]`, and says where it is.
    struct Injects {
        noted: Vec<Note>,
    }

    impl Stage for Injects {
        fn name(&self) -> &str {
            "injects"
        }
        fn process(
            &mut self,
            _: stage::Direction,
            input: &[u8],
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            out.extend_from_slice(input);
            out.push(b'[');
            let start = out.len();
            out.extend_from_slice(b"hunter2-secret");
            let event = RecordedEvent::new("credential_injected", &[("length", "14")]);
            self.noted.push(Note::Secret {
                range: start..out.len(),
                event,
            });
            out.push(b']');
            self.noted.push(Note::Event(RecordedEvent::new(
                "seen",
                &[("by", "injects")],
            )));
            Verdict::Replace
        }
        fn take_notes(&mut self, notes: &mut Vec<Note>) {
            notes.append(&mut self.noted);
        }
    }

    /// A stage after an injector that rewrites its output: the span would be lost.
    struct Rewrites;

    impl Stage for Rewrites {
        fn name(&self) -> &str {
            "rewrites"
        }
        fn process(
            &mut self,
            _: stage::Direction,
            input: &[u8],
            _: OffsetDateTime,
            out: &mut Vec<u8>,
        ) -> Verdict {
            out.extend_from_slice(input);
            Verdict::Replace
        }
    }

    #[tokio::test]
    async fn an_injected_secret_is_forwarded_but_recorded_as_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::recording_store::RecordingStore::local_for_writing(dir.path()).unwrap();
        let sink: Arc<dyn recorder::Sink> = Arc::new(store.clone());
        let (signer, _) = ward_recording::Signer::generate().unwrap();
        let signer = Arc::new(signer);
        let meta = ward_recording::SessionMeta {
            session_id: "0123456789abcdef".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: None,
            cert_serial: "01".into(),
            source: "127.0.0.1:1".into(),
            device: "pump-12".into(),
            device_addr: "127.0.0.1:9".into(),
            protocol: "raw".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 0,
            recipients: Vec::new(),
            age_header: None,
        };
        let rec = recorder::SessionRecorder::start(&sink, signer.clone(), &meta, &[])
            .await
            .unwrap();
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let principal = Principal {
            kind: PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: None,
            roles: Vec::new(),
            serial: "01".into(),
            not_after: at,
        };
        let d = device("pump-12");
        let ctx = SessionContext {
            device: &d,
            principal: &principal,
            rule: "r",
            now: at,
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let stages: Vec<Box<dyn Stage>> = vec![Box::new(Injects { noted: Vec::new() })];
        let p = Pipeline::for_session(None, stages, &ctx, Some(rec.tap()), Arc::new(Fixed(at)))
            .unwrap()
            .observed(Box::new(move |ev| {
                seen2.lock().unwrap().push(ev.kind.clone())
            }));
        let mut out = Vec::new();
        let f = p.take(Direction::Up, b"GET", &mut out).await.unwrap();
        assert_eq!(f, Forward::Replaced);
        assert_eq!(out, b"GET[hunter2-secret]", "the device gets the secret");
        drop(p);
        rec.finish(ward_recording::EndInfo {
            ended_unix_ms: 1,
            reason: "completed".into(),
            bytes_up: 19,
            bytes_down: 0,
        })
        .await
        .unwrap();
        let bytes = std::fs::read(
            dir.path()
                .join(crate::recording_store::RECORDINGS_DIR)
                .join("0123456789abcdef.wrec"),
        )
        .unwrap();
        assert!(ward_recording::verify(&bytes, &signer.public_key()).ok);
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "the secret is not in the recording"
        );
        let recs = ward_recording::export::read_all(&bytes).unwrap();
        let (up, _) = ward_recording::export::raw(&recs);
        assert_eq!(up, b"GET[]");
        let kinds: Vec<String> = recs
            .iter()
            .filter_map(|r| match r {
                ward_recording::Record::Event { kind, .. } => Some(kind.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["credential_injected", "seen"]);
        assert_eq!(*seen.lock().unwrap(), ["credential_injected", "seen"]);
    }

    #[tokio::test]
    async fn a_stage_rewriting_an_injected_secret_ends_the_session() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let principal = Principal {
            kind: PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: None,
            roles: Vec::new(),
            serial: "01".into(),
            not_after: at,
        };
        let d = device("pump-12");
        let ctx = SessionContext {
            device: &d,
            principal: &principal,
            rule: "r",
            now: at,
        };
        let stages: Vec<Box<dyn Stage>> =
            vec![Box::new(Injects { noted: Vec::new() }), Box::new(Rewrites)];
        let p = Pipeline::for_session(None, stages, &ctx, None, Arc::new(Fixed(at))).unwrap();
        let mut out = Vec::new();
        let e = p.take(Direction::Up, b"GET", &mut out).await.unwrap_err();
        let stop = stage_stop(&e).unwrap();
        assert_eq!(stop.stage, "rewrites");
        assert!(matches!(stop.kind, StopKind::Unavailable(_)), "{stop}");
    }

    /// Refuses every chunk: forwards nothing and answers the sender.
    struct Refuses;

    impl Stage for Refuses {
        fn name(&self) -> &str {
            "refuses"
        }
        fn process(
            &mut self,
            _: stage::Direction,
            _: &[u8],
            _: OffsetDateTime,
            _: &mut Vec<u8>,
        ) -> Verdict {
            Verdict::Replace
        }
        fn take_notes(&mut self, notes: &mut Vec<Note>) {
            notes.push(Note::Reply(b"refused\n".to_vec()));
        }
    }

    struct RefusesAll;

    impl StageFactory for RefusesAll {
        fn stages(&self, _: &SessionContext<'_>) -> Vec<Box<dyn Stage>> {
            vec![Box::new(Refuses)]
        }
    }

    #[tokio::test]
    async fn a_stages_answer_to_the_client_waits_for_the_down_pump_and_never_goes_up() {
        let p = pipeline(Some(&RefusesAll), "pump-12").unwrap();
        assert!(p.injects(Direction::Down) && !p.injects(Direction::Up));
        let mut out = Vec::new();
        assert!(!p.take_injected(Direction::Down, &mut out).await.unwrap());
        let f = p.take(Direction::Up, b"DELETE", &mut out).await.unwrap();
        assert_eq!((f, out.as_slice()), (Forward::Replaced, &b""[..]));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            p.injected(Direction::Down),
        )
        .await
        .expect("the answer is announced to the down pump");
        assert!(p.take_injected(Direction::Down, &mut out).await.unwrap());
        assert_eq!(out, b"refused\n");
        assert!(!p.take_injected(Direction::Down, &mut out).await.unwrap());
        // An answer to the device is not something the gateway sends: the session ends.
        let e = p.take(Direction::Down, b"x", &mut out).await.unwrap_err();
        assert!(matches!(
            stage_stop(&e).unwrap().kind,
            StopKind::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn a_device_without_stages_and_unrecorded_has_no_pipeline() {
        assert!(pipeline(None, "pump-12").is_none());
        assert!(pipeline(Some(&OnlyFor("pump-12")), "pump-13").is_none());
    }

    #[tokio::test]
    async fn a_stage_replaces_and_its_stop_is_typed_with_the_injected_time() {
        let p = pipeline(Some(&OnlyFor("pump-12")), "pump-12").unwrap();
        let mut out = Vec::new();
        let f = p.take(Direction::Up, b"ab", &mut out).await.unwrap();
        assert_eq!((f, out.as_slice()), (Forward::Replaced, &b"aabb"[..]));
        let e = p.take(Direction::Down, b"x!", &mut out).await.unwrap_err();
        let stop = stage_stop(&e).unwrap();
        assert_eq!(stop.direction, stage::Direction::Down);
        assert_eq!(
            stop.kind,
            StopKind::Unparseable("bang at 1700000000".into())
        );
        assert_eq!(e.to_string(), stop.to_string());
        assert!(is_stage_stop(&e));
        assert!(!is_stage_stop(&io::Error::other("device")));
    }
}
