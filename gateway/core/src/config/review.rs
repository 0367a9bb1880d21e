//! `[review]`: what the gateway itself may do with recordings for reviewers (docs/recording-format.md,
//! "Reviewing encrypted recordings").
//!
//! Recordings encrypted to `[recording] recipients` are opened with a reviewer's age identity.
//! By default the gateway holds none: it stores and serves the encrypted bytes, and reviewers
//! decrypt on their own machines (`ward replay --identity-key FILE`). `identity_file` gives the
//! gateway one, so the web console can play, export and search encrypted recordings — at the cost
//! that the gateway host can then read every recording encrypted to that identity (security case
//! 57 holds only without it).

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx};

/// The `[review]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewConfig {
    /// An age identity file (`AGE-SECRET-KEY-1…`, as `age-keygen` writes it; mode 0600, owned by
    /// the gateway's user) the gateway opens encrypted recordings with for the web console and
    /// for `Review` requests that read recordings on the gateway (operations, text search).
    /// `None` (the default): the gateway cannot read an encrypted recording.
    pub identity_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReview {
    identity_file: Option<Spanned<PathBuf>>,
}

impl Cx<'_> {
    pub(super) fn review(&self, raw: RawReview) -> Result<ReviewConfig, ConfigError> {
        let identity_file = match raw.identity_file {
            None => None,
            Some(p) if p.get_ref().as_os_str().is_empty() => {
                return Err(self.err(
                    p.span(),
                    "review.identity_file",
                    ConfigErrorKind::Syntax(
                        "an empty path: name the reviewer's age identity file, or leave identity_file out (the gateway then cannot read encrypted recordings)"
                            .into(),
                    ),
                ))
            }
            Some(p) => Some(p.into_inner()),
        };
        Ok(ReviewConfig { identity_file })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::{Config, SAMPLE_CONFIG};

    #[test]
    fn identity_file_is_optional_and_named_in_errors() {
        let none = Config::parse(SAMPLE_CONFIG, "ward.toml").unwrap();
        assert_eq!(none.review.identity_file, None);
        let with = format!("{SAMPLE_CONFIG}\n[review]\nidentity_file = \"keys/reviewer.txt\"\n");
        let c = Config::parse(&with, "ward.toml").unwrap();
        assert_eq!(
            c.review.identity_file.as_deref(),
            Some(std::path::Path::new("keys/reviewer.txt"))
        );
        let empty = format!("{SAMPLE_CONFIG}\n[review]\nidentity_file = \"\"\n");
        let e = Config::parse(&empty, "ward.toml").unwrap_err().to_string();
        assert!(
            e.contains("review.identity_file") && e.contains("empty"),
            "{e}"
        );
        let unknown = format!("{SAMPLE_CONFIG}\n[review]\nidentity = \"k\"\n");
        let e = Config::parse(&unknown, "ward.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity"), "{e}");
    }
}
