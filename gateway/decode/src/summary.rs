//! What one session did, operation by operation, for its index row and `ward sessions --op`:
//! built from the recording's events (by the recorder as it writes them, or by a reader of a
//! finished recording), so the index and the recording cannot disagree.

use std::collections::BTreeSet;

use ward_core::operations::{OpDecision, OpList, OpProtocol};
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
    /// Some operation is not in `ops` as it was decoded (beyond [`MAX_INDEXED_OPS`], or its name
    /// cut at [`MAX_OP_NAME`]): a search that `ops` does not answer must read the recording.
    pub truncated: bool,
}

impl OpsSummary {
    /// Take one event a stage reported (the recorder, as it records it).
    pub fn note(&mut self, ev: &RecordedEvent) {
        self.note_event(&ev.kind, &ev.fields);
    }

    /// Take one event of kind `kind` with `fields`: what [`OpsSummary::note`] does, for an event
    /// read back from a recording. The one summary of a session's events, whoever reads them.
    pub fn note_event(&mut self, kind: &str, fields: &[(String, String)]) {
        let field = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        match kind {
            crate::kind::OPERATION | crate::kind::DENIED => {
                if kind == crate::kind::DENIED {
                    self.denied += 1;
                }
                let (Some(protocol), Some(op)) = (field("protocol"), field("op")) else {
                    return;
                };
                let kept = cut(op, MAX_OP_NAME);
                let name = format!("{protocol}:{kept}");
                if kept.len() < op.len() {
                    self.truncated = true;
                }
                if self.ops.len() >= MAX_INDEXED_OPS && !self.ops.contains(&name) {
                    self.truncated = true;
                    return;
                }
                self.ops.insert(name);
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

    /// Whether any of the session's operations matches `pattern`.
    pub fn matches(&self, pattern: &OpPattern) -> bool {
        pattern.matches_any(self.ops.iter().map(String::as_str))
    }
}

/// The whole `protocol:name` of an event that names an operation (kinds `operation` and
/// `operation_denied`), uncut: what an exact search of a recording matches.
pub fn op_of_event(kind: &str, fields: &[(String, String)]) -> Option<String> {
    if kind != crate::kind::OPERATION && kind != crate::kind::DENIED {
        return None;
    }
    let field = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    Some(format!("{}:{}", field("protocol")?, field("op")?))
}

/// Whether `kind` is one of the decoders' event kinds (what `ward ops` lists).
pub fn is_operation_kind(kind: &str) -> bool {
    matches!(
        kind,
        crate::kind::OPERATION
            | crate::kind::RESULT
            | crate::kind::DENIED
            | crate::kind::UNDECODABLE
    )
}

/// What a masked patient-data value shows.
pub const MASK: &str = "***";

/// `fields` as a view shows them: the values of patient-data fields (keys starting with
/// [`crate::PHI_PREFIX`]) replaced by [`MASK`] unless `show_phi` (security case 49).
pub fn mask_fields(fields: &[(String, String)], show_phi: bool) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| {
            if !show_phi && k.starts_with(crate::PHI_PREFIX) {
                (k.clone(), MASK.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// What `ward sessions --op` looks for: `protocol:glob` (`dicom:C-STORE`, `http:POST`,
/// `telnet:rate *`). A session matches if one of its operations matches the glob, or the glob
/// followed by ` *` (so `http:POST` finds `http:POST /config`, `telnet:rate` finds `rate 5`).
/// Telnet compares without regard to case and runs of blanks, as rules do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpPattern {
    protocol: OpProtocol,
    list: OpList,
}

impl OpPattern {
    /// Parse `protocol:glob`; the error says what is expected.
    pub fn parse(text: &str) -> Result<OpPattern, String> {
        let usage = "give PROTOCOL:OPERATION, e.g. dicom:C-STORE, hl7:ORM^O01, http:POST, 'telnet:rate *' (* matches anything)";
        let Some((protocol, glob)) = text.split_once(':') else {
            return Err(format!("{text:?} is not an operation pattern: {usage}"));
        };
        let Some(protocol) = OpProtocol::parse(protocol.trim()) else {
            return Err(format!(
                "{protocol:?} is not a decoded protocol (dicom, hl7, http, telnet): {usage}"
            ));
        };
        if glob.is_empty() {
            return Err(format!("{text:?} names no operation: {usage}"));
        }
        Ok(OpPattern {
            protocol,
            list: OpList {
                allow: vec![glob.to_string(), format!("{glob} *")],
                deny: Vec::new(),
            },
        })
    }

    /// Whether the indexed operation `op` (`protocol:name`) matches.
    pub fn matches(&self, op: &str) -> bool {
        let Some((protocol, name)) = op.split_once(':') else {
            return false;
        };
        protocol == self.protocol.as_str()
            && self.list.decide("", self.protocol, name) == OpDecision::Allow
    }

    /// Whether any of `ops` matches.
    pub fn matches_any<'a>(&self, mut ops: impl Iterator<Item = &'a str>) -> bool {
        ops.any(|op| self.matches(op))
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
        assert!(s.truncated);
        let mut short = OpsSummary::default();
        short.note(&ev(
            "operation",
            &[("protocol", "http"), ("op", &"x".repeat(300))],
        ));
        assert!(short.truncated, "a cut name is not the whole name");
        assert_eq!(
            op_of_event(
                "operation",
                &ev("operation", &[("protocol", "http"), ("op", "GET /")]).fields
            )
            .as_deref(),
            Some("http:GET /")
        );
        assert_eq!(op_of_event("operation_result", &[]), None);
        let long = "é".repeat(200);
        assert!(cut(&long, MAX_OP_NAME).len() <= MAX_OP_NAME);
    }

    #[test]
    fn op_patterns_match_names_and_their_first_word() {
        let p = |t: &str| OpPattern::parse(t).unwrap();
        assert!(p("dicom:C-STORE").matches("dicom:C-STORE"));
        assert!(!p("dicom:C-STORE").matches("dicom:C-STORE-X"));
        assert!(!p("dicom:C-STORE").matches("hl7:C-STORE"));
        assert!(!p("dicom:C-STORE").matches("dicom:C-ECHO"));
        assert!(p("http:POST").matches("http:POST /config"));
        assert!(!p("http:POST").matches("http:GET /POST"));
        assert!(p("http:GET /status*").matches("http:GET /status/x"));
        assert!(p("hl7:ORM^O01").matches("hl7:ORM^O01"));
        assert!(p("hl7:ORM^*").matches("hl7:ORM^O01"));
        assert!(p("telnet:rate *").matches("telnet:rate 5"));
        assert!(p("telnet:rate *").matches("telnet:RATE   5"));
        assert!(p("telnet:rate").matches("telnet:rate 5"));
        assert!(!p("telnet:rate *").matches("telnet:rates"));
        assert!(!p("telnet:rate *").matches("telnet"));
        for bad in ["C-STORE", "smtp:HELO", "dicom:", ""] {
            let e = OpPattern::parse(bad).unwrap_err();
            assert!(e.contains("dicom:C-STORE"), "{e}");
        }
        let mut s = OpsSummary::default();
        s.note(&ev(
            "operation",
            &[("protocol", "http"), ("op", "POST /config")],
        ));
        assert!(s.matches(&p("http:POST")));
        assert!(!s.matches(&p("http:GET")));
    }

    #[test]
    fn patient_data_is_masked_unless_asked() {
        let fields: Vec<(String, String)> = [
            ("protocol", "dicom"),
            ("op", "C-STORE"),
            ("phi.patient_name", "DOE^JANE"),
            ("sop_instance", "1.2.3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let masked = mask_fields(&fields, false);
        assert_eq!(
            masked[2],
            ("phi.patient_name".to_string(), MASK.to_string())
        );
        assert_eq!(masked[3].1, "1.2.3");
        assert!(!format!("{masked:?}").contains("DOE"));
        assert_eq!(mask_fields(&fields, true), fields);
        assert!(is_operation_kind("operation_result"));
        assert!(!is_operation_kind("credential_injected"));
    }
}
