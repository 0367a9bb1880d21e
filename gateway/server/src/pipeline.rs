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
