//! A driver for decoder stages outside the gateway: the proptests, the fuzz targets and the
//! benchmarks feed a scripted exchange through a stage in chunks of any size and compare what
//! came out. Pure, like the stages.

use time::OffsetDateTime;
use ward_core::stage::{Direction, Note, RecordedEvent, Stage, StageStop, Verdict};

/// What a stage made of a scripted exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transcript {
    /// What was forwarded client → device.
    pub up: Vec<u8>,
    /// What was forwarded device → client (the stage's answers to the client included, where
    /// the gateway would send them: after the chunk that caused them).
    pub down: Vec<u8>,
    /// Every event reported, in order.
    pub events: Vec<RecordedEvent>,
    /// Every answer to the client ([`Note::Reply`]), in order (also in `down`).
    pub replies: Vec<Vec<u8>>,
    /// How the stage ended the session, if it did (nothing is fed after).
    pub stop: Option<StageStop>,
}

impl Transcript {
    /// The events of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a RecordedEvent> + 'a {
        self.events.iter().filter(move |e| e.kind == kind)
    }

    /// The `op` field of every event of `kind`, in order.
    pub fn ops(&self, kind: &str) -> Vec<String> {
        self.of_kind(kind)
            .filter_map(|e| {
                e.fields
                    .iter()
                    .find(|(k, _)| k == "op")
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }
}

/// Feed `script` (each part: a direction and its bytes, in order) through `stage` in chunks of at
/// most `step` bytes (0: each part whole), then end both directions. `now` for every call.
pub fn drive(
    stage: &mut dyn Stage,
    script: &[(Direction, &[u8])],
    step: usize,
    now: OffsetDateTime,
) -> Transcript {
    let mut t = Transcript::default();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (dir, bytes) in script {
        let size = if step == 0 { bytes.len().max(1) } else { step };
        for chunk in bytes.chunks(size) {
            out.clear();
            let verdict = stage.process(*dir, chunk, now, &mut out);
            stage.take_notes(&mut notes);
            let forwarded: &[u8] = match &verdict {
                Verdict::Pass => chunk,
                Verdict::Hold => &[],
                Verdict::Replace => &out,
                Verdict::End(stop) => {
                    take(&mut t, &mut notes);
                    t.stop = Some(stop.clone());
                    return t;
                }
            };
            match dir {
                Direction::Up => t.up.extend_from_slice(forwarded),
                Direction::Down => t.down.extend_from_slice(forwarded),
            }
            take(&mut t, &mut notes);
        }
    }
    for dir in [Direction::Up, Direction::Down] {
        out.clear();
        match stage.finish(dir, now, &mut out) {
            Ok(()) => match dir {
                Direction::Up => t.up.extend_from_slice(&out),
                Direction::Down => t.down.extend_from_slice(&out),
            },
            Err(stop) => {
                t.stop = Some(stop);
                return t;
            }
        }
    }
    t
}

fn take(t: &mut Transcript, notes: &mut Vec<Note>) {
    for n in notes.drain(..) {
        match n {
            Note::Event(e) | Note::Secret { event: e, .. } => t.events.push(e),
            Note::Reply(r) => {
                t.down.extend_from_slice(&r);
                t.replies.push(r);
            }
        }
    }
}
