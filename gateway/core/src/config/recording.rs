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
//!
//! Where recordings go (issue 19): local files in `<state_dir>/recordings` by default, or an
//! S3-compatible bucket through a local spool ([`ObjectStoreConfig`]):
//!
//! ```toml
//! [recording]
//! store = "s3://ward-recordings/site-a"    # bucket, then an optional key prefix
//! endpoint = "https://s3.example.org"      # absent: AWS's endpoint for `region`
//! region = "eu-central-1"                  # default us-east-1
//! credentials_file = "/etc/ward/s3.env"    # AWS_ACCESS_KEY_ID=… / AWS_SECRET_ACCESS_KEY=…, 0600
//! spool_dir = "/var/lib/ward/spool"        # default <state_dir>/spool
//! spool_limit = "20 GiB"                   # new sessions refused at this much spooled
//! allow_http = false                       # true only for a plain-HTTP endpoint (loopback tests)
//! retention_mode = "compliance"            # object lock on every upload: compliance | governance
//! retention_days = 365                     # …for this many days (both or neither)
//! ```

use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx, Location};

/// Most recipients a recording is encrypted to (each adds a stanza to every recording's meta).
pub const MAX_RECIPIENTS: usize = 32;

/// Default `spool_limit`: 10 GiB.
pub const DEFAULT_SPOOL_LIMIT: u64 = 10 << 30;
/// Smallest `spool_limit` accepted (1 MiB): below it every session would be refused.
pub const MIN_SPOOL_LIMIT: u64 = 1 << 20;
/// The spool's directory inside the state dir when `spool_dir` is not set.
pub const DEFAULT_SPOOL_DIR: &str = "spool";
/// Longest object-lock retention accepted (100 years: beyond it, a typo).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// Object lock applied to every uploaded recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Nobody, not even the bucket's root account, can delete or shorten it.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl RetentionMode {
    /// The S3 header value.
    pub fn as_s3(&self) -> &'static str {
        match self {
            RetentionMode::Compliance => "COMPLIANCE",
            RetentionMode::Governance => "GOVERNANCE",
        }
    }
}

/// `retention_mode` + `retention_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The lock mode.
    pub mode: RetentionMode,
    /// Days from the upload.
    pub days: u32,
}

/// `[recording] store = "s3://…"` and its settings: recordings are written and fsynced to a local
/// spool, then uploaded once sealed, verified, and only then deleted from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside it (no leading or trailing `/`; empty: the bucket's root).
    pub prefix: String,
    /// The endpoint URL (`https://…`, or `http://…` with `allow_http`); `None`: AWS.
    pub endpoint: Option<String>,
    /// The region (signatures need one even off AWS).
    pub region: String,
    /// A file with `AWS_ACCESS_KEY_ID=` and `AWS_SECRET_ACCESS_KEY=` lines (and optionally
    /// `AWS_SESSION_TOKEN=`); `None`: those environment variables.
    pub credentials_file: Option<PathBuf>,
    /// The spool; `None`: `<state_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool may hold before new sessions are refused.
    pub spool_limit: u64,
    /// Whether a plain-HTTP endpoint is accepted.
    pub allow_http: bool,
    /// Object lock on uploads, if any.
    pub retention: Option<Retention>,
}

impl ObjectStoreConfig {
    /// `s3://bucket/prefix`, for people.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The spool directory for a gateway whose state dir is `state_dir`.
    pub fn spool_dir(&self, state_dir: &std::path::Path) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| state_dir.join(DEFAULT_SPOOL_DIR))
    }
}

/// The `[recording]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordingConfig {
    /// Every recipient, from `recipients` then `recipients_file`, without duplicates. Empty:
    /// recordings are not encrypted.
    pub recipients: Vec<age::x25519::Recipient>,
    /// `recipients_file`, resolved against the config file's directory; read by
    /// [`RecordingConfig::add_recipients_file`] when the config is loaded (and reloaded).
    pub recipients_file: Option<PathBuf>,
    /// `store = "s3://…"`: recordings go to object storage through a spool. `None`: local files.
    pub store: Option<ObjectStoreConfig>,
}

impl RecordingConfig {
    /// Join the relative paths (`recipients_file`, `credentials_file`, `spool_dir`) onto `base`.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let store = self.store.as_mut();
        let (creds, spool) = match store {
            Some(s) => (s.credentials_file.as_mut(), s.spool_dir.as_mut()),
            None => (None, None),
        };
        for path in [self.recipients_file.as_mut(), creds, spool]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

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
    store: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    credentials_file: Option<Spanned<PathBuf>>,
    spool_dir: Option<Spanned<PathBuf>>,
    spool_limit: Option<Spanned<SizeValue>>,
    allow_http: Option<Spanned<bool>>,
    retention_mode: Option<Spanned<String>>,
    retention_days: Option<Spanned<i64>>,
}

/// A size: bytes as an integer, or a string with a unit ("20 GiB", "500 MB").
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

/// Parse a size: an integer number of bytes, optionally followed by a unit (B, KB, MB, GB, TB
/// powers of 1000; KiB, MiB, GiB, TiB powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: expected e.g. \"20 GiB\" or a number of bytes")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A bucket name as S3 accepts it: 3–63 of `a-z 0-9 . -`, starting and ending alphanumeric.
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `s3://bucket[/prefix]` into (bucket, prefix); the prefix's segments are plain names.
fn parse_store_url(s: &str) -> Result<(String, String), String> {
    let Some(rest) = s.strip_prefix("s3://") else {
        return Err(format!(
            "{s:?} is not a recording store: expected \"s3://bucket/prefix\" (leave `store` out for local files)"
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_bucket(bucket) {
        return Err(format!(
            "{bucket:?} is not a bucket name (3-63 characters of a-z, 0-9, '.', '-')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    for seg in prefix.split('/').filter(|_| !prefix.is_empty()) {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(format!(
                "{prefix:?} is not a key prefix: segments of A-Z, a-z, 0-9, '-', '_', '.' separated by '/'"
            ));
        }
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

impl Cx<'_> {
    pub(super) fn recording(&self, raw: RawRecording) -> Result<RecordingConfig, ConfigError> {
        let mut out = RecordingConfig {
            store: self.object_store(&raw)?,
            ..RecordingConfig::default()
        };
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

    fn object_store(&self, raw: &RawRecording) -> Result<Option<ObjectStoreConfig>, ConfigError> {
        let limit = |span: Range<usize>, field: &str, what: String| {
            self.err(
                span,
                format!("recording.{field}"),
                ConfigErrorKind::Limit(what),
            )
        };
        let Some(store) = &raw.store else {
            // Every other key configures the object store: alone, it is a mistake.
            let stray: [(Option<Range<usize>>, &str); 8] = [
                (raw.endpoint.as_ref().map(|v| v.span()), "endpoint"),
                (raw.region.as_ref().map(|v| v.span()), "region"),
                (
                    raw.credentials_file.as_ref().map(|v| v.span()),
                    "credentials_file",
                ),
                (raw.spool_dir.as_ref().map(|v| v.span()), "spool_dir"),
                (raw.spool_limit.as_ref().map(|v| v.span()), "spool_limit"),
                (raw.allow_http.as_ref().map(|v| v.span()), "allow_http"),
                (
                    raw.retention_mode.as_ref().map(|v| v.span()),
                    "retention_mode",
                ),
                (
                    raw.retention_days.as_ref().map(|v| v.span()),
                    "retention_days",
                ),
            ];
            if let Some((Some(span), field)) = stray.into_iter().find(|(s, _)| s.is_some()) {
                return Err(limit(
                    span,
                    field,
                    "only used with store = \"s3://bucket/prefix\" (recordings are local files without it)".into(),
                ));
            }
            return Ok(None);
        };
        let (bucket, prefix) =
            parse_store_url(store.get_ref().trim()).map_err(|e| limit(store.span(), "store", e))?;
        let allow_http = raw.allow_http.as_ref().is_some_and(|v| *v.get_ref());
        let endpoint = match &raw.endpoint {
            None => None,
            Some(e) => {
                let v = e.get_ref().trim().trim_end_matches('/');
                let lower = v.to_ascii_lowercase();
                if lower.starts_with("http://") {
                    if !allow_http {
                        return Err(limit(
                            e.span(),
                            "endpoint",
                            format!("{v:?} is plain HTTP: recordings and credentials would cross the network unencrypted; use https://, or set allow_http = true for a loopback endpoint"),
                        ));
                    }
                } else if !lower.starts_with("https://") {
                    return Err(limit(
                        e.span(),
                        "endpoint",
                        format!("{v:?} is not an endpoint URL: expected https://host[:port]"),
                    ));
                }
                if v.len() <= "https://".len() {
                    return Err(self.err(e.span(), "recording.endpoint", ConfigErrorKind::Empty));
                }
                Some(v.to_owned())
            }
        };
        let region = match &raw.region {
            None => "us-east-1".to_owned(),
            Some(r) => {
                let v = r.get_ref().trim();
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(limit(
                        r.span(),
                        "region",
                        format!("{v:?} is not a region name"),
                    ));
                }
                v.to_owned()
            }
        };
        let path = |p: &Option<Spanned<PathBuf>>, field: &str| match p {
            Some(p) if p.get_ref().as_os_str().is_empty() => Err(self.err(
                p.span(),
                format!("recording.{field}"),
                ConfigErrorKind::Empty,
            )),
            Some(p) => Ok(Some(p.get_ref().clone())),
            None => Ok(None),
        };
        let credentials_file = path(&raw.credentials_file, "credentials_file")?;
        let spool_dir = path(&raw.spool_dir, "spool_dir")?;
        let spool_limit = match &raw.spool_limit {
            None => DEFAULT_SPOOL_LIMIT,
            Some(v) => {
                let n = match v.get_ref() {
                    SizeValue::Bytes(n) => {
                        u64::try_from(*n).map_err(|_| "a negative size".to_owned())
                    }
                    SizeValue::Text(t) => parse_size(t),
                }
                .map_err(|e| limit(v.span(), "spool_limit", e))?;
                if n < MIN_SPOOL_LIMIT {
                    return Err(limit(
                        v.span(),
                        "spool_limit",
                        format!("{n} bytes is below the 1 MiB minimum"),
                    ));
                }
                n
            }
        };
        let retention = match (&raw.retention_mode, &raw.retention_days) {
            (None, None) => None,
            (Some(m), None) => {
                return Err(limit(
                    m.span(),
                    "retention_mode",
                    "needs retention_days too".into(),
                ))
            }
            (None, Some(d)) => {
                return Err(limit(
                    d.span(),
                    "retention_days",
                    "needs retention_mode too".into(),
                ))
            }
            (Some(m), Some(d)) => {
                let mode = match m.get_ref().trim().to_ascii_lowercase().as_str() {
                    "compliance" => RetentionMode::Compliance,
                    "governance" => RetentionMode::Governance,
                    other => {
                        return Err(limit(
                            m.span(),
                            "retention_mode",
                            format!("{other:?}: expected \"compliance\" or \"governance\""),
                        ))
                    }
                };
                let days = u32::try_from(*d.get_ref())
                    .ok()
                    .filter(|n| (1..=MAX_RETENTION_DAYS).contains(n))
                    .ok_or_else(|| {
                        limit(
                            d.span(),
                            "retention_days",
                            format!("between 1 and {MAX_RETENTION_DAYS}"),
                        )
                    })?;
                Some(Retention { mode, days })
            }
        };
        Ok(Some(ObjectStoreConfig {
            bucket,
            prefix,
            endpoint,
            region,
            credentials_file,
            spool_dir,
            spool_limit,
            allow_http,
            retention,
        }))
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
    #[test]
    fn an_s3_store_parses_with_defaults_and_resolves_paths() {
        let text = format!(
            "{GATEWAY}[recording]\nstore = \"s3://ward-rec/site-a/gw1/\"\nendpoint = \"http://127.0.0.1:9000/\"\nallow_http = true\ncredentials_file = \"s3.env\"\nspool_limit = \"2 GiB\"\nretention_mode = \"Compliance\"\nretention_days = 30\n"
        );
        let mut c = Config::parse(&text, "w.toml").unwrap();
        c.resolve_paths(std::path::Path::new("/etc/ward"));
        let s = c.recording.store.clone().unwrap();
        assert_eq!(s.bucket, "ward-rec");
        assert_eq!(s.prefix, "site-a/gw1");
        assert_eq!(s.url(), "s3://ward-rec/site-a/gw1");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.spool_limit, 2 << 30);
        assert!(s.allow_http);
        assert_eq!(
            s.credentials_file.as_deref(),
            Some(std::path::Path::new("/etc/ward/s3.env"))
        );
        assert_eq!(
            s.spool_dir(std::path::Path::new("/var/lib/ward")),
            std::path::Path::new("/var/lib/ward/spool")
        );
        assert_eq!(
            s.retention,
            Some(Retention {
                mode: RetentionMode::Compliance,
                days: 30
            })
        );
        // Without `store`: local files, defaults everywhere.
        let c = Config::parse(GATEWAY, "w.toml").unwrap();
        assert!(c.recording.store.is_none());
        let minimal = format!("{GATEWAY}[recording]\nstore = \"s3://bucket\"\n");
        let s = Config::parse(&minimal, "w.toml")
            .unwrap()
            .recording
            .store
            .unwrap();
        assert_eq!(
            (s.prefix.as_str(), s.spool_limit),
            ("", DEFAULT_SPOOL_LIMIT)
        );
        assert_eq!(s.endpoint, None);
    }

    /// Table: a bad `[recording]` object-store setting names its field and says why.
    #[test]
    fn bad_object_store_settings_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "store = \"/var/rec\"",
                "recording.store",
                "s3://bucket/prefix",
            ),
            (
                "store = \"s3://UPPER\"",
                "recording.store",
                "not a bucket name",
            ),
            (
                "store = \"s3://ok-bucket/../etc\"",
                "recording.store",
                "not a key prefix",
            ),
            ("store = \"s3://b\"", "recording.store", "not a bucket name"),
            (
                "store = \"s3://bkt\"\nendpoint = \"http://10.0.0.1:9000\"",
                "recording.endpoint",
                "allow_http",
            ),
            (
                "store = \"s3://bkt\"\nendpoint = \"ftp://x\"",
                "recording.endpoint",
                "https://",
            ),
            (
                "store = \"s3://bkt\"\nspool_limit = \"12 parsecs\"",
                "recording.spool_limit",
                "unknown unit",
            ),
            (
                "store = \"s3://bkt\"\nspool_limit = 1000",
                "recording.spool_limit",
                "1 MiB minimum",
            ),
            (
                "store = \"s3://bkt\"\nspool_limit = -5",
                "recording.spool_limit",
                "negative",
            ),
            (
                "store = \"s3://bkt\"\nretention_days = 3",
                "recording.retention_days",
                "retention_mode",
            ),
            (
                "store = \"s3://bkt\"\nretention_mode = \"forever\"\nretention_days = 3",
                "recording.retention_mode",
                "compliance",
            ),
            (
                "store = \"s3://bkt\"\nretention_mode = \"governance\"\nretention_days = 0",
                "recording.retention_days",
                "between 1",
            ),
            (
                "store = \"s3://bkt\"\nregion = \"eu west\"",
                "recording.region",
                "region",
            ),
            (
                "spool_limit = \"1 GiB\"",
                "recording.spool_limit",
                "only used with store",
            ),
            (
                "endpoint = \"https://s3\"",
                "recording.endpoint",
                "only used with store",
            ),
            (
                "store = \"s3://bkt\"\ncredentials_file = \"\"",
                "recording.credentials_file",
                "",
            ),
        ];
        for (body, field, says) in cases {
            let text = format!("{GATEWAY}[recording]\n{body}\n");
            let e = Config::parse(&text, "w.toml").unwrap_err();
            assert_eq!(&e.field, field, "{body}: {e}");
            let s = e.to_string();
            assert!(s.contains(says), "{body}: {s}");
            assert!(s.starts_with("w.toml:"), "{body}: {s}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        for (s, n) in [
            ("0", 0u64),
            ("20 GiB", 20 << 30),
            ("500MB", 500_000_000),
            ("3 kib", 3 << 10),
            ("7 B", 7),
            ("1TB", 1_000_000_000_000),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for bad in [
            "",
            "GiB",
            "1.5 GiB",
            "-1",
            "99999999999999999999",
            "16777216 TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
