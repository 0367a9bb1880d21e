//! What one session did, operation by operation, for its index row and `ward sessions --op`:
//! built from the recording's events (by the recorder as it writes them, or by a reader of a
//! finished recording), so the index and the recording cannot disagree.

use std::collections::BTreeSet;

use ward_core::stage::RecordedEvent;

/// Most distinct operation names one session keeps for the index (a console session can type
/// any number of distinct lines; the recording keeps them all).
pub const MAX_INDEXED_OPS: usize = 256;

/// Longest operation name the index keeps (longer ones are cut, on a character boundary).
pub const MAX_OP_NAME: usize = 128;

/// What one session did, operation by operation, for its index row: the distinct operations
/// (`dicom:C-STORE`), and where decoding gave up, if it did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpsSummary {
    /// `protocol:name`, each once, at most [`MAX_INDEXED_OPS`].
    pub ops: BTreeSet<String>,
    /// The first `undecodable` event's description.
    pub undecodable: Option<String>,
    /// How many operations the policy refused.
    pub denied: u64,
}

impl OpsSummary {
    /// Take one event a stage reported.
    pub fn note(&mut self, ev: &RecordedEvent) {
        let field = |k: &str| {
            ev.fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        match ev.kind.as_str() {
            crate::kind::OPERATION | crate::kind::DENIED => {
                if ev.kind == crate::kind::DENIED {
                    self.denied += 1;
                }
                let (Some(protocol), Some(op)) = (field("protocol"), field("op")) else {
                    return;
                };
                if self.ops.len() >= MAX_INDEXED_OPS {
                    return;
                }
                self.ops
                    .insert(format!("{protocol}:{}", cut(op, MAX_OP_NAME)));
            }
            crate::kind::UNDECODABLE if self.undecodable.is_none() => {
                self.undecodable = Some(format!(
                    "{} {} at byte {}: {}",
                    field("protocol").unwrap_or("?"),
                    field("direction").unwrap_or("?"),
                    field("offset").unwrap_or("?"),
                    field("why").unwrap_or("?"),
                ));
            }
            _ => {}
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(kind: &str, fields: &[(&str, &str)]) -> RecordedEvent {
        RecordedEvent::new(kind, fields)
    }

    #[test]
    fn summary_keeps_distinct_ops_bounded_and_the_first_undecodable() {
        let mut s = OpsSummary::default();
        s.note(&ev("operation", &[("protocol", "dicom"), ("op", "C-ECHO")]));
        s.note(&ev("operation", &[("protocol", "dicom"), ("op", "C-ECHO")]));
        s.note(&ev(
            "operation_denied",
            &[("protocol", "dicom"), ("op", "C-STORE"), ("reason", "x")],
        ));
        s.note(&ev(
            "operation_result",
            &[("protocol", "dicom"), ("op", "C-MOVE")],
        ));
        s.note(&ev(
            "undecodable",
            &[
                ("protocol", "dicom"),
                ("direction", "up"),
                ("offset", "7"),
                ("why", "bad PDU"),
            ],
        ));
        s.note(&ev(
            "undecodable",
            &[
                ("protocol", "dicom"),
                ("direction", "down"),
                ("offset", "9"),
                ("why", "later"),
            ],
        ));
        assert_eq!(
            s.ops.iter().map(String::as_str).collect::<Vec<_>>(),
            ["dicom:C-ECHO", "dicom:C-STORE"]
        );
        assert_eq!(s.denied, 1);
        assert_eq!(
            s.undecodable.as_deref(),
            Some("dicom up at byte 7: bad PDU")
        );
        for i in 0..1000 {
            s.note(&ev(
                "operation",
                &[("protocol", "telnet"), ("op", &format!("cmd {i}"))],
            ));
        }
        assert_eq!(s.ops.len(), MAX_INDEXED_OPS);
        let long = "é".repeat(200);
        assert!(cut(&long, MAX_OP_NAME).len() <= MAX_OP_NAME);
    }
}
