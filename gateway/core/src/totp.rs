//! Time-based one-time passwords (RFC 6238): HMAC-SHA1, 6 digits, 30-second steps.
//!
//! Pure: the caller passes `now` as Unix seconds and keeps the last step a user consumed (the
//! store's `record_totp_step` makes that update atomic). [`verify`] accepts the previous, current
//! and next step (±30 s of clock skew) and refuses any code whose step is not newer than the last
//! one used, so a code works once and an older code never works after a newer one.

use std::fmt;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of a code.
pub const DIGITS: u32 = 6;
/// Length of a time step in seconds.
pub const PERIOD: i64 = 30;
/// Steps accepted on either side of the current one.
pub const SKEW_STEPS: i64 = 1;
/// Length of a secret made by [`TotpSecret::generate`] (160 bits, RFC 4226's recommendation).
pub const SECRET_LEN: usize = 20;
/// Shortest secret [`TotpSecret::from_base32`] accepts (128 bits, RFC 4226 R6).
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret [`TotpSecret::from_base32`] accepts.
pub const MAX_SECRET_LEN: usize = 64;

/// The RFC 4648 base32 alphabet.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why a secret or a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// The code is not exactly six ASCII digits.
    #[error("a TOTP code is six digits")]
    Malformed,
    /// The code matches none of the accepted steps.
    #[error("wrong TOTP code")]
    Wrong,
    /// The code matches a step at or before one already used.
    #[error("TOTP code already used")]
    Reused,
    /// The base32 text is not valid RFC 4648 base32.
    #[error("TOTP secret is not valid base32")]
    BadBase32,
    /// The decoded secret is shorter than 128 bits or longer than 512.
    #[error("TOTP secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes")]
    BadSecretLength,
}

/// A TOTP shared secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// A new secret from 20 random bytes (the caller draws them from a CSPRNG).
    pub fn generate(rng_bytes: [u8; SECRET_LEN]) -> Self {
        Self(rng_bytes.to_vec())
    }

    /// Parse base32 as stored or typed: case-insensitive, spaces and `=` padding ignored.
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let mut out = Vec::with_capacity(text.len() * 5 / 8);
        let mut acc: u32 = 0;
        let mut bits: u32 = 0;
        let mut chars = 0usize;
        let trimmed = text.trim_end_matches(|c: char| c == '=' || c.is_ascii_whitespace());
        for c in trimmed.chars() {
            if c == ' ' {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            let value = match upper {
                'A'..='Z' => u32::from(upper) - u32::from('A'),
                '2'..='7' => u32::from(upper) - u32::from('2') + 26,
                _ => return Err(TotpError::BadBase32),
            };
            chars += 1;
            acc = (acc << 5) | value;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push(((acc >> bits) & 0xff) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        // RFC 4648 §6: a final quantum has 2, 4, 5 or 7 characters; 1, 3 or 6 cannot occur.
        if matches!(chars % 8, 1 | 3 | 6) {
            return Err(TotpError::BadBase32);
        }
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&out.len()) {
            return Err(TotpError::BadSecretLength);
        }
        Ok(Self(out))
    }

    /// RFC 4648 base32, uppercase, without padding (what authenticator apps expect).
    pub fn to_base32(&self) -> String {
        let mut out = String::with_capacity(self.0.len().div_ceil(5) * 8);
        let mut acc: u32 = 0;
        let mut bits: u32 = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                push_base32(&mut out, (acc >> bits) & 31);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            push_base32(&mut out, (acc << (5 - bits)) & 31);
        }
        out
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn push_base32(out: &mut String, v: u32) {
    if let Some(&c) = BASE32.get(v as usize) {
        out.push(char::from(c));
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// The time step containing `unix_secs`.
pub fn step_at(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(PERIOD)
}

/// RFC 4226 HOTP value for `counter`, truncated to `digits` decimal digits.
///
/// `None` only if HMAC refused the key, which HMAC never does (any key length is valid).
fn hotp(key: &[u8], counter: u64, digits: u32) -> Option<u32> {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash.last()? & 0x0f);
    let word: [u8; 4] = hash.get(offset..offset + 4)?.try_into().ok()?;
    let binary = u32::from_be_bytes(word) & 0x7fff_ffff;
    Some(binary % 10u32.checked_pow(digits)?)
}

fn code_for_step(secret: &TotpSecret, step: i64) -> Option<[u8; DIGITS as usize]> {
    // Steps before 1970 do not occur; count them as step 0 rather than wrapping.
    let counter = u64::try_from(step).unwrap_or(0);
    let value = hotp(secret.as_bytes(), counter, DIGITS)?;
    let text = format!("{value:06}");
    text.as_bytes().try_into().ok()
}

/// The code an authenticator shows at `unix_secs`: six digits, zero padded.
pub fn code_at(secret: &TotpSecret, unix_secs: i64) -> String {
    code_for_step(secret, step_at(unix_secs))
        .map(|c| c.iter().map(|&b| char::from(b)).collect())
        // Unreachable (see `hotp`); an empty string matches no code.
        .unwrap_or_default()
}

/// Compare without an early exit, so timing does not say how many leading digits were right.
fn ct_eq(a: &[u8; DIGITS as usize], b: &[u8; DIGITS as usize]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Check `code` at `now_unix` against the steps now−1, now and now+1.
///
/// Returns the step matched; the caller must record it (atomically, only if newer than the one
/// stored) before accepting the login. A code whose step is at or before `last_used_step` is
/// [`TotpError::Reused`], so a code works once and an older code never works after a newer one.
/// Spaces inside the code (`"123 456"`) are allowed; anything else but six digits is
/// [`TotpError::Malformed`].
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now_unix: i64,
    last_used_step: Option<i64>,
) -> Result<i64, TotpError> {
    let given = parse_code(code)?;
    let now_step = step_at(now_unix);
    // Check every candidate step (no early exit); keep the newest that matches.
    let mut matched: Option<i64> = None;
    for step in (now_step - SKEW_STEPS)..=(now_step + SKEW_STEPS) {
        let ok = code_for_step(secret, step).is_some_and(|expected| ct_eq(&expected, &given));
        if ok {
            matched = Some(step);
        }
    }
    match (matched, last_used_step) {
        (None, _) => Err(TotpError::Wrong),
        (Some(step), Some(last)) if step <= last => Err(TotpError::Reused),
        (Some(step), _) => Ok(step),
    }
}

fn parse_code(code: &str) -> Result<[u8; DIGITS as usize], TotpError> {
    let mut out = [0u8; DIGITS as usize];
    let mut n = 0usize;
    for b in code.trim().bytes() {
        if b == b' ' {
            continue;
        }
        if !b.is_ascii_digit() {
            return Err(TotpError::Malformed);
        }
        let slot = out.get_mut(n).ok_or(TotpError::Malformed)?;
        *slot = b;
        n += 1;
    }
    if n != DIGITS as usize {
        return Err(TotpError::Malformed);
    }
    Ok(out)
}

/// The `otpauth://` URI authenticator apps scan (Key Uri Format), issuer and account
/// percent-encoded.
pub fn provisioning_uri(issuer: &str, account: &str, secret: &TotpSecret) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        account = percent_encode(account),
        secret = secret.to_base32(),
    )
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6238 appendix B SHA1 seed: ASCII "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret(b"12345678901234567890".to_vec())
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        // RFC 4226 appendix D, counters 0..9.
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in expected.into_iter().enumerate() {
            assert_eq!(
                hotp(b"12345678901234567890", counter as u64, 6),
                Some(want),
                "counter {counter}"
            );
        }
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA1 rows): time, 8-digit TOTP.
        let vectors: [(i64, u32); 6] = [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ];
        let secret = rfc_secret();
        for (t, want8) in vectors {
            let counter = u64::try_from(step_at(t)).unwrap();
            assert_eq!(hotp(secret.as_bytes(), counter, 8), Some(want8), "t={t}");
            // Six digits are the same binary value mod 10^6.
            let want6 = format!("{:06}", want8 % 1_000_000);
            assert_eq!(code_at(&secret, t), want6, "t={t}");
            assert_eq!(verify(&secret, &want6, t, None), Ok(step_at(t)), "t={t}");
        }
        // Leading zeros are kept: 07081804 → "081804".
        assert_eq!(code_at(&secret, 1111111109), "081804");
    }

    #[test]
    fn skew_of_one_step_either_side() {
        let secret = rfc_secret();
        let now = 1_700_000_015; // mid-step
        let step = step_at(now);
        let prev = code_at(&secret, now - PERIOD);
        let next = code_at(&secret, now + PERIOD);
        let cur = code_at(&secret, now);
        assert_eq!(verify(&secret, &prev, now, None), Ok(step - 1));
        assert_eq!(verify(&secret, &cur, now, None), Ok(step));
        assert_eq!(verify(&secret, &next, now, None), Ok(step + 1));
        let too_old = code_at(&secret, now - 2 * PERIOD);
        let too_new = code_at(&secret, now + 2 * PERIOD);
        // (Guard against a chance collision with an accepted step making the test meaningless.)
        assert!(![&prev, &cur, &next].contains(&&too_old));
        assert!(![&prev, &cur, &next].contains(&&too_new));
        assert_eq!(verify(&secret, &too_old, now, None), Err(TotpError::Wrong));
        assert_eq!(verify(&secret, &too_new, now, None), Err(TotpError::Wrong));
    }

    #[test]
    fn a_code_works_once_and_never_after_a_newer_one() {
        let secret = rfc_secret();
        let now = 1_700_000_000;
        let cur = code_at(&secret, now);
        let step = verify(&secret, &cur, now, None).unwrap();
        // Same code again, same moment or 20 s later (still inside the window): refused.
        assert_eq!(
            verify(&secret, &cur, now, Some(step)),
            Err(TotpError::Reused)
        );
        assert_eq!(
            verify(&secret, &cur, now + 20, Some(step)),
            Err(TotpError::Reused)
        );
        // The previous step's code is still inside the skew window, but older than the used one.
        let prev = code_at(&secret, now - PERIOD);
        assert_eq!(
            verify(&secret, &prev, now, Some(step)),
            Err(TotpError::Reused)
        );
        // The next step's code is newer: accepted.
        let next = code_at(&secret, now + PERIOD);
        assert_eq!(verify(&secret, &next, now, Some(step)), Ok(step + 1));
        // A wrong code is Wrong, not Reused, whatever was used before.
        let wrong = if cur == "000000" { "111111" } else { "000000" };
        if ![&prev, &cur, &next].contains(&&wrong.to_string()) {
            assert_eq!(
                verify(&secret, wrong, now, Some(step)),
                Err(TotpError::Wrong)
            );
        }
    }

    #[test]
    fn malformed_codes() {
        let secret = rfc_secret();
        for bad in [
            "",
            "12345",
            "1234567",
            "12345a",
            "１２３４５６",
            "12-456",
            "+12345",
            "-12345",
            "abcdef",
        ] {
            assert_eq!(
                verify(&secret, bad, 59, None),
                Err(TotpError::Malformed),
                "{bad:?}"
            );
        }
        // Spaces and surrounding whitespace, as people type them, are fine.
        assert_eq!(verify(&secret, "287 082", 59, None), Ok(1));
        assert_eq!(verify(&secret, " 287082\n", 59, None), Ok(1));
    }

    #[test]
    fn base32_round_trip_and_rfc4648_vectors() {
        // RFC 4648 §10 vectors (padding dropped).
        let vectors: [(&[u8], &str); 6] = [
            (b"f", "MY"),
            (b"fo", "MZXQ"),
            (b"foo", "MZXW6"),
            (b"foob", "MZXW6YQ"),
            (b"fooba", "MZXW6YTB"),
            (b"foobar", "MZXW6YTBOI"),
        ];
        for (raw, enc) in vectors {
            assert_eq!(TotpSecret(raw.to_vec()).to_base32(), enc);
        }
        let s = rfc_secret();
        assert_eq!(s.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::from_base32(&s.to_base32()), Ok(s.clone()));
        // Lowercase, grouped, padded input as people paste it.
        assert_eq!(
            TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq"),
            Ok(s)
        );
        let g = TotpSecret::generate([0xa5; 20]);
        assert_eq!(TotpSecret::from_base32(&g.to_base32()), Ok(g.clone()));
        assert!(!g.to_base32().contains('='));
        let odd = TotpSecret((0u8..17).collect());
        assert_eq!(TotpSecret::from_base32(&odd.to_base32()), Ok(odd));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(TotpSecret::from_base32(""), Err(TotpError::BadSecretLength));
        assert_eq!(
            TotpSecret::from_base32("MZXW6YTBOI"),
            Err(TotpError::BadSecretLength)
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1"),
            Err(TotpError::BadBase32)
        );
        // A final quantum of 1, 3 or 6 characters is impossible.
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQG"),
            Err(TotpError::BadBase32)
        );
        assert_eq!(
            TotpSecret::from_base32(&"A".repeat(200)),
            Err(TotpError::BadSecretLength)
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = rfc_secret();
        let shown = format!("{s:?} {:?}", Some(&s));
        assert_eq!(format!("{s:?}"), "TotpSecret(..)");
        assert!(!shown.contains("GEZD"));
    }

    #[test]
    fn provisioning_uri_is_encoded() {
        let s = rfc_secret();
        assert_eq!(
            provisioning_uri("Ward", "alice", &s),
            "otpauth://totp/Ward:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Ward&algorithm=SHA1&digits=6&period=30"
        );
        let uri = provisioning_uri("St Mary's: Ward", "a&b=c@x", &s);
        assert!(
            uri.starts_with("otpauth://totp/St%20Mary%27s%3A%20Ward:a%26b%3Dc%40x?secret="),
            "{uri}"
        );
        assert!(uri.contains("&issuer=St%20Mary%27s%3A%20Ward&"), "{uri}");
    }

    #[test]
    fn steps_before_1970_do_not_panic() {
        let s = rfc_secret();
        assert_eq!(step_at(-1), -1);
        assert_eq!(code_at(&s, -1).len(), 6);
        // Clamped to counter 0, not wrapped to a huge counter.
        assert_eq!(code_at(&s, i64::MIN / 2), code_at(&s, 0));
        let late = i64::MAX - 100;
        assert_eq!(
            verify(&s, &code_at(&s, late), late, None),
            Ok(step_at(late))
        );
    }
}
