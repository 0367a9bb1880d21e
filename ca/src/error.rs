//! Errors from creating, loading and using a CA. All of them are caused by the operator (a bad
//! argument, a bad file) or by the machine (I/O); none by a remote peer, whose certificates fail
//! with [`crate::ValidationError`] instead.

use std::path::PathBuf;

use crate::kind::{CapsError, Kind};
use crate::names::NameError;
use crate::validate::ValidationError;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `init` found a CA already there.
    #[error("a CA already exists in {dir} ({file} is there); use --force to replace it")]
    AlreadyExists {
        /// The CA directory.
        dir: PathBuf,
        /// The first CA file found.
        file: &'static str,
    },
    /// A file of the CA directory is missing.
    #[error("{path} is missing; is {dir} a Ward CA directory? (create one with `ward ca init --dir {dir} --trust-domain NAME`)", path = path.display(), dir = dir.display())]
    Missing {
        /// The CA directory.
        dir: PathBuf,
        /// The missing file.
        path: PathBuf,
    },
    /// A file's content is not what it should be.
    #[error("{path}: {reason}", path = path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key file is readable by other users.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`", path = path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A name, org, role, trust domain or DNS name is not in the safe character set.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Lifetime caps that break the hard rules.
    #[error("lifetime caps: {0}")]
    Caps(#[from] CapsError),
    /// The requested lifetime is zero or negative.
    #[error("requested TTL {ttl} must be longer than zero")]
    TtlNotPositive {
        /// The requested lifetime.
        ttl: String,
    },
    /// The requested lifetime is over the cap of its kind.
    #[error("requested TTL {ttl} exceeds the {kind} cap of {cap}")]
    TtlOverCap {
        /// The requested lifetime.
        ttl: String,
        /// The kind.
        kind: Kind,
        /// The cap.
        cap: String,
    },
    /// DNS or IP SANs asked for a person's certificate.
    #[error("--dns and --ip are only for gateway certificates, not {kind}")]
    SansForPerson {
        /// The kind asked for.
        kind: Kind,
    },
    /// The CSR was refused (unparseable, bad signature, unsupported key).
    #[error("CSR refused: {0}")]
    Csr(String),
    /// The input held no `CERTIFICATE` PEM block.
    #[error("no certificate found (expected a PEM \"CERTIFICATE\" block)")]
    NoCertificate,
    /// A certificate could not be parsed.
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    /// rcgen refused to build a certificate or key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA's own certificates do not form a valid chain.
    #[error("the CA in {dir} is broken: {reason}", dir = dir.display())]
    BrokenCa {
        /// The CA directory (empty when built from memory).
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate just issued failed Ward's own validation (a bug; nothing was handed out).
    #[error("self-check of the issued certificate failed: {0}")]
    SelfCheck(ValidationError),
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CaError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
