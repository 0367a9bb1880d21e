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
use ward_core::stage::{self, Chain, Forward, SessionContext, StageFactory, StageStop, StopKind};
use ward_recording::Direction;
use ward_transport::datapath::ChunkTap;

use crate::recorder;

/// The stages and the recorder of one session, as the pump's [`ChunkTap`].
pub struct Pipeline {
    /// `None` when the device has no stage.
    stages: Option<Mutex<Chain>>,
    /// `None` only where recording is off (the benchmark harness).
    recorder: Option<recorder::Tap>,
    clock: Arc<dyn Clock>,
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
    /// The pipeline of a session opening now: the factory's stages for it, then `recorder`.
    /// `None` when there is neither (nothing for the pump to call).
    pub fn for_session(
        factory: Option<&dyn StageFactory>,
        session: &SessionContext<'_>,
        recorder: Option<recorder::Tap>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        let chain = factory
            .map(|f| Chain::new(f.stages(session)))
            .filter(|c| !c.is_empty());
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
        })
    }

    /// Run the stages on a chunk (decode, decide). The lock is held for the stages' work only,
    /// never across an await; the two directions take turns.
    fn decide(&self, dir: Direction, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<Forward> {
        let Some(stages) = &self.stages else {
            return Ok(Forward::AsIs);
        };
        let now = self.clock.now();
        let mut chain = stages.lock().map_err(|_| poisoned(dir))?;
        chain.process(core_dir(dir), bytes, now, out).map_err(stop)
    }

    async fn record(&self, dir: Direction, forwarded: &[u8]) -> io::Result<()> {
        match &self.recorder {
            Some(rec) if !forwarded.is_empty() => rec.record(dir, forwarded).await,
            _ => Ok(()),
        }
    }
}

impl ChunkTap for Pipeline {
    async fn take(&self, dir: Direction, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<Forward> {
        let forward = self.decide(dir, bytes, out)?;
        // Recorded before it is forwarded (fail closed), and exactly what is forwarded.
        let forwarded = match forward {
            Forward::AsIs => bytes,
            Forward::Replaced => out.as_slice(),
        };
        self.record(dir, forwarded).await?;
        Ok(forward)
    }

    async fn finish(&self, dir: Direction, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        if let Some(stages) = &self.stages {
            let now = self.clock.now();
            let mut chain = stages.lock().map_err(|_| poisoned(dir))?;
            chain.finish(core_dir(dir), now, out).map_err(stop)?;
        }
        self.record(dir, out).await
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
    use ward_core::stage::{Stage, Verdict};
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
        Pipeline::for_session(factory, &ctx, None, Arc::new(Fixed(at)))
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
