//! A wrapper that keeps secrets out of logs.

use std::fmt;

/// A secret value (a private key, a password). `Debug` and `Display` print `[redacted]`; the
/// value is reachable only through [`Secret::expose`], which makes every use easy to find.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wrap a secret.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Don't log it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwrap the secret, taking it out of its redacting wrapper.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new(String::from("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "-----BEGIN PRIVATE KEY-----");
    }
}
