//! `[audit]`: where the audit log's signed checkpoints (and every recording's final checkpoint)
//! are published off the host (docs/recording-format.md, "Anchors"):
//!
//! ```toml
//! [audit]
//! anchors = ["file:/mnt/ward-anchors/anchors.jsonl", "https://collector.example/ward", "otel"]
//! anchor_ca_file = "/etc/ward/collector-ca.pem"   # optional: the collector's CA (PEM)
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ConfigError;
use super::{ConfigErrorKind, Cx};

/// Most anchor sinks.
pub const MAX_ANCHORS: usize = 8;

/// One place anchors are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorSink {
    /// `file:/absolute/path`: appended to (O_APPEND) and fsynced, one JSON line per anchor.
    File(PathBuf),
    /// `https://…` (or `http://` to a loopback address): each batch of anchors POSTed as JSON
    /// lines.
    Http(String),
    /// `otel`: a tracing event (target `audit_anchor`) the OpenTelemetry pipeline exports.
    Otel,
}

impl std::fmt::Display for AnchorSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnchorSink::File(p) => write!(f, "file:{}", p.display()),
            AnchorSink::Http(u) => f.write_str(u),
            AnchorSink::Otel => f.write_str("otel"),
        }
    }
}

/// The `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditConfig {
    /// Where anchors go (none: not published).
    pub anchors: Vec<AnchorSink>,
    /// A PEM file of the CAs an `https://` anchor collector's certificate chains to (default: the
    /// public web roots).
    pub anchor_ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default)]
    anchors: Vec<Spanned<String>>,
    anchor_ca_file: Option<Spanned<PathBuf>>,
}

/// Parse one `anchors` entry.
pub fn parse_anchor_sink(text: &str) -> Result<AnchorSink, String> {
    if text == "otel" {
        return Ok(AnchorSink::Otel);
    }
    if let Some(path) = text.strip_prefix("file:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "{text:?}: a file anchor needs an absolute path (file:/mnt/anchors/ward.jsonl)"
            ));
        }
        return Ok(AnchorSink::File(path));
    }
    if text.starts_with("https://") || text.starts_with("http://") {
        super::oidc::url_ok(text)?;
        return Ok(AnchorSink::Http(text.to_owned()));
    }
    Err(format!(
        "{text:?} is not an anchor sink: use \"file:/absolute/path\", \"https://host/path\" or \"otel\""
    ))
}

impl Cx<'_> {
    pub(super) fn audit(&self, raw: RawAudit) -> Result<AuditConfig, ConfigError> {
        if let Some(extra) = raw.anchors.get(MAX_ANCHORS) {
            return Err(self.err(
                extra.span(),
                format!("audit.anchors[{MAX_ANCHORS}]"),
                ConfigErrorKind::Limit(format!("at most {MAX_ANCHORS} anchor sinks")),
            ));
        }
        let mut anchors = Vec::new();
        for (i, a) in raw.anchors.into_iter().enumerate() {
            let sink = parse_anchor_sink(a.get_ref()).map_err(|why| {
                self.err(
                    a.span(),
                    format!("audit.anchors[{i}]"),
                    ConfigErrorKind::Limit(why),
                )
            })?;
            if anchors.contains(&sink) {
                return Err(self.err(
                    a.span(),
                    format!("audit.anchors[{i}]"),
                    ConfigErrorKind::Limit(format!("{sink} is listed twice")),
                ));
            }
            anchors.push(sink);
        }
        Ok(AuditConfig {
            anchors,
            anchor_ca_file: raw.anchor_ca_file.map(Spanned::into_inner),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_configs_commented_audit_table_parses() {
        let sample = crate::config::SAMPLE_CONFIG;
        let at = sample.find("# [audit]").unwrap();
        let table: String = sample[at..]
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = crate::config::Config::parse(&format!("{sample}\n{table}\n"), "s.toml").unwrap();
        assert_eq!(c.audit.anchors.len(), 3);
        assert_eq!(c.audit.anchors[2], AnchorSink::Otel);
        assert!(crate::config::Config::parse(sample, "s.toml")
            .unwrap()
            .audit
            .anchors
            .is_empty());
        let e = crate::config::Config::parse(
            &format!("{sample}\n[audit]\nanchors = [\"otel\", \"file:x\"]\n"),
            "s.toml",
        )
        .unwrap_err();
        assert_eq!(e.field, "audit.anchors[1]", "{e}");
        assert!(e.to_string().contains("absolute path"), "{e}");
    }

    #[test]
    fn sinks_parse_and_bad_ones_say_how() {
        assert_eq!(parse_anchor_sink("otel").unwrap(), AnchorSink::Otel);
        assert_eq!(
            parse_anchor_sink("file:/a/b.jsonl").unwrap(),
            AnchorSink::File("/a/b.jsonl".into())
        );
        assert!(parse_anchor_sink("https://c.example/x").is_ok());
        assert!(parse_anchor_sink("http://127.0.0.1:9/x").is_ok());
        let rows = [
            ("file:rel.jsonl", "absolute path"),
            ("http://c.example/x", "plain http"),
            ("syslog", "not an anchor sink"),
            ("", "not an anchor sink"),
        ];
        for (text, want) in rows {
            let e = parse_anchor_sink(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
