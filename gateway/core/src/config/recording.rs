//! `[recording]`: who recordings are encrypted to (docs/config.md, docs/recording-format.md
//! "Sealed records").
//!
//! ```toml
//! [recording]
//! recipients = ["age1…"]                  # the security team's age X25519 public keys
//! recipients_file = "recording-recipients.txt"   # one age1… per line, # comments
//! ```
//!
//! Both are optional and add up. With no recipient at all recordings are stored in plain text
//! (the gateway warns at start). Only public keys belong here: the gateway can then never read a
//! finished recording.

use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx, Location};

/// Most recipients a recording is encrypted to (each adds a stanza to every recording's meta).
pub const MAX_RECIPIENTS: usize = 32;

/// The `[recording]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordingConfig {
    /// Every recipient, from `recipients` then `recipients_file`, without duplicates. Empty:
    /// recordings are not encrypted.
    pub recipients: Vec<age::x25519::Recipient>,
    /// `recipients_file`, resolved against the config file's directory; read by
    /// [`RecordingConfig::add_recipients_file`] when the config is loaded (and reloaded).
    pub recipients_file: Option<PathBuf>,
}

impl RecordingConfig {
    /// Whether recordings are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// Add the recipients of `recipients_file`'s `text` (`file_name` for errors): one `age1…` per
    /// line; blank lines and `#` comments are skipped. Errors name the file, line and field.
    pub fn add_recipients_file(&mut self, text: &str, file_name: &str) -> Result<(), ConfigError> {
        let mut offset = 0usize;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let value = line.split('#').next().unwrap_or_default().trim();
            if value.is_empty() {
                continue;
            }
            let column = line.find(value).unwrap_or(0);
            let at = Location::of(text, start + column);
            let err = |what: String| ConfigError {
                file: file_name.to_owned(),
                location: Some(at),
                field: "recording.recipients_file".into(),
                kind: ConfigErrorKind::Limit(what),
            };
            let r = parse_recipient(value).map_err(err)?;
            self.push(r).map_err(err)?;
        }
        Ok(())
    }

    fn push(&mut self, r: age::x25519::Recipient) -> Result<(), String> {
        if self.recipients.contains(&r) {
            return Ok(());
        }
        if self.recipients.len() >= MAX_RECIPIENTS {
            return Err(format!("at most {MAX_RECIPIENTS} recipients"));
        }
        self.recipients.push(r);
        Ok(())
    }
}

/// One recipient, with an error that says what to do.
fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echo it back.
        return Err(
            "this is an age identity (a private key), not a recipient: put only the public key \
             (age1…, printed by `age-keygen -y KEYFILE`) in the gateway's config, and keep the \
             identity with the security team"
                .into(),
        );
    }
    age::x25519::Recipient::from_str(s).map_err(|e| {
        format!(
            "{s:?} is not an age X25519 recipient ({e}): expected age1… as printed by age-keygen"
        )
    })
}

/// `[recording]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecording {
    #[serde(default)]
    recipients: Vec<Spanned<String>>,
    recipients_file: Option<Spanned<PathBuf>>,
}

impl Cx<'_> {
    pub(super) fn recording(&self, raw: RawRecording) -> Result<RecordingConfig, ConfigError> {
        let mut out = RecordingConfig::default();
        for (i, r) in raw.recipients.iter().enumerate() {
            let span: Range<usize> = r.span();
            let field = format!("recording.recipients[{i}]");
            let parsed = parse_recipient(r.get_ref().trim())
                .map_err(|e| self.err(span.clone(), field.clone(), ConfigErrorKind::Limit(e)))?;
            out.push(parsed)
                .map_err(|e| self.err(span, field, ConfigErrorKind::Limit(e)))?;
        }
        if let Some(f) = raw.recipients_file {
            if f.get_ref().as_os_str().is_empty() {
                return Err(self.err(
                    f.span(),
                    "recording.recipients_file",
                    ConfigErrorKind::Empty,
                ));
            }
            out.recipients_file = Some(f.into_inner());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::Config;

    const GATEWAY: &str = r#"
[gateway]
listen = "127.0.0.1:4433"
ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"
state_dir = "state"
"#;

    fn recipient() -> String {
        // A valid recipient (the age spec's test vector's public key).
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into()
    }

    #[test]
    fn recipients_parse_dedupe_and_resolve() {
        let r = recipient();
        let text = format!(
            "{GATEWAY}[recording]\nrecipients = [\"{r}\", \" {r} \"]\nrecipients_file = \"rcpt.txt\"\n"
        );
        let mut c = Config::parse(&text, "w.toml").unwrap();
        assert_eq!(c.recording.recipients.len(), 1);
        assert!(c.recording.encrypts());
        c.resolve_paths(std::path::Path::new("/etc/ward"));
        assert_eq!(
            c.recording.recipients_file.as_deref(),
            Some(std::path::Path::new("/etc/ward/rcpt.txt"))
        );
        // Without the table: not encrypted.
        assert!(!Config::parse(GATEWAY, "w.toml")
            .unwrap()
            .recording
            .encrypts());
    }

    #[test]
    fn a_bad_recipient_names_file_line_and_field() {
        let text = format!(
            "{GATEWAY}[recording]\nrecipients = [\n  \"{}\",\n  \"age1nope\",\n]\n",
            recipient()
        );
        let e = Config::parse(&text, "w.toml").unwrap_err();
        assert_eq!(e.field, "recording.recipients[1]");
        assert_eq!(e.location.unwrap().line, 11);
        let s = e.to_string();
        assert!(s.starts_with("w.toml:11:"), "{s}");
        assert!(s.contains("not an age X25519 recipient"), "{s}");
    }

    #[test]
    fn a_private_key_is_refused_without_being_echoed() {
        let secret = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
        let text = format!("{GATEWAY}[recording]\nrecipients = [\"{secret}\"]\n");
        let e = Config::parse(&text, "w.toml").unwrap_err().to_string();
        assert!(e.contains("private key"), "{e}");
        assert!(!e.contains("GFPYYSJZ"), "{e}");
        let mut rc = RecordingConfig::default();
        let e = rc
            .add_recipients_file(&format!("# team\n{secret}\n"), "rcpt.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rcpt.txt:2:1: recording.recipients_file:"),
            "{e}"
        );
        assert!(!e.contains("GFPYYSJZ"), "{e}");
    }

    #[test]
    fn the_recipients_file_skips_comments_and_names_the_bad_line() {
        let mut rc = RecordingConfig::default();
        let text = format!("# security team\n\n{}  # alice\n   age1bad\n", recipient());
        let e = rc.add_recipients_file(&text, "rcpt.txt").unwrap_err();
        assert_eq!(e.location.unwrap().line, 4);
        assert_eq!(e.location.unwrap().column, 4);
        assert_eq!(rc.recipients.len(), 1, "the good line before it was read");
        let unknown = format!("{GATEWAY}[recording]\nrecipient = []\n");
        let e = Config::parse(&unknown, "w.toml").unwrap_err().to_string();
        assert!(e.contains("recipient"), "{e}");
    }
}
