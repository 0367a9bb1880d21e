//! Password hashing (argon2id, PHC strings), a strength check, and generated passwords.
//!
//! Pure: the caller supplies the random salt and the random bytes for generated passwords.
//! Parameters are OWASP's minimum for argon2id: m = 19456 KiB, t = 2, p = 1. A stored hash keeps
//! its own parameters, so raising them later still verifies old hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// argon2id memory cost in KiB.
pub const M_COST_KIB: u32 = 19_456;
/// argon2id iterations.
pub const T_COST: u32 = 2;
/// argon2id lanes.
pub const P_COST: u32 = 1;
/// Shortest password [`check_strength`] accepts, in characters.
pub const MIN_LEN: usize = 12;
/// Longest password accepted, in bytes.
pub const MAX_LEN: usize = 1024;
/// Length of a password made by [`generate_password`].
pub const GENERATED_LEN: usize = 24;

/// Largest parameters [`verify_password`] will run, so that a tampered row cannot make one
/// login allocate gigabytes or spin for minutes.
const MAX_VERIFY_M_KIB: u32 = 256 * 1024;
const MAX_VERIFY_T: u32 = 16;
const MAX_VERIFY_P: u32 = 8;

/// Generated passwords use lowercase letters and digits without `0`, `1`, `l` and `o`: 32
/// symbols, five bits each, nothing to confuse when read aloud or typed from paper.
const ALPHABET: &[u8; 32] = b"23456789abcdefghijkmnpqrstuvwxyz";

/// Words that make a password guessable however they are padded with digits and symbols.
const COMMON: &[&str] = &[
    "administrator",
    "password",
    "passwort",
    "motdepasse",
    "contrasena",
    "admin",
    "welcome",
    "letmein",
    "changeme",
    "qwertyuiop",
    "qwerty",
    "qwertz",
    "azerty",
    "asdfghjkl",
    "asdf",
    "zxcvbnm",
    "iloveyou",
    "secret",
    "hospital",
    "clinic",
    "ward",
    "login",
    "default",
    "guest",
    "root",
    "user",
    "test",
    "monkey",
    "dragon",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "summer",
    "winter",
    "spring",
    "autumn",
    "vendor",
    "service",
    "support",
    "abc123",
];

/// Why a password was refused or could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Fewer than [`MIN_LEN`] characters.
    #[error("password must be at least {MIN_LEN} characters")]
    TooShort,
    /// More than [`MAX_LEN`] bytes.
    #[error("password must be at most {MAX_LEN} bytes")]
    TooLong,
    /// The password is, or contains, the user's name.
    #[error("password must not contain the user name")]
    ContainsUserName,
    /// The password is mostly a common word, a keyboard or counting run, or one repeated piece.
    #[error("password is too easy to guess (common words, runs like 1234 or repeats)")]
    TooPredictable,
    /// argon2 refused the input (for example a password over its length limit).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn argon2id() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash `password` with argon2id and the caller's random 16-byte salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
pub fn hash_password(password: &str, salt16: [u8; 16]) -> Result<String, PasswordError> {
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    let salt = SaltString::encode_b64(&salt16).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let hash = argon2id()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string. False for a malformed PHC, an algorithm other than
/// argon2id, or parameters beyond sane bounds; never panics. Comparison is constant-time
/// (the `password-hash` crate's `Output` equality).
pub fn verify_password(phc: &str, password: &str) -> bool {
    if password.len() > MAX_LEN {
        return false;
    }
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    if hash.algorithm != Algorithm::Argon2id.ident() || hash.hash.is_none() {
        return false;
    }
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if params.m_cost() > MAX_VERIFY_M_KIB
        || params.t_cost() > MAX_VERIFY_T
        || params.p_cost() > MAX_VERIFY_P
    {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Spend the same time as a [`verify_password`] call and return false: call it when the user
/// does not exist (or has no password) so response times do not reveal which names exist.
pub fn verify_dummy(password: &str) -> bool {
    let _ = hash_password(password, [0u8; 16]);
    false
}

/// Refuse passwords that are short, contain the user's name, or are mostly guessable parts.
///
/// Rules: at least [`MIN_LEN`] characters and at most [`MAX_LEN`] bytes; not containing `user`
/// (case-insensitive, names of 3+ characters); at least 5 distinct characters; and after
/// lowercasing, undoing common substitutions (`0`→o, `@`→a, `$`→s, `3`→e, `1`/`!`→i, `5`→s,
/// `7`→t), and removing common words (`password`, `admin`, `qwerty`, …), runs of 4+
/// consecutive characters (`1234`, `dcba`) and symbols, at least 8 characters must remain.
pub fn check_strength(password: &str, user: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    let lower = password.to_lowercase();
    let user_lower = user.trim().to_lowercase();
    if user_lower.chars().count() >= 3 && lower.contains(&user_lower) {
        return Err(PasswordError::ContainsUserName);
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Err(PasswordError::TooPredictable);
    }
    // Runs first on the text as typed (`1234` would not be a run after undoing substitutions),
    // then words on the text with substitutions undone, then runs again (`pass1234word`).
    let mut rest = unleet(&remove_runs(&lower));
    if user_lower.chars().count() >= 3 {
        rest = rest.replace(&unleet(&user_lower), "");
    }
    for word in COMMON {
        rest = rest.replace(word, "");
    }
    let rest: String = rest.chars().filter(|c| c.is_alphanumeric()).collect();
    if remove_runs(&rest).chars().count() < 8 {
        return Err(PasswordError::TooPredictable);
    }
    Ok(())
}

/// Undo the substitutions people use to dress up a word.
fn unleet(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '0' => 'o',
            '@' | '4' => 'a',
            '$' | '5' => 's',
            '3' => 'e',
            '1' | '!' | '|' => 'i',
            '7' | '+' => 't',
            other => other,
        })
        .collect()
}

/// `s` without runs of 4+ consecutive code points (ascending or descending: `abcd`, `4321`)
/// and runs of 3+ identical ones (`aaa`).
fn remove_runs(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut kept = String::with_capacity(s.len());
    let mut i = 0usize;
    while i < chars.len() {
        let mut best = 1usize;
        for delta in [1i64, -1, 0] {
            let mut j = i + 1;
            while j < chars.len() {
                let (Some(&a), Some(&b)) = (chars.get(j - 1), chars.get(j)) else {
                    break;
                };
                if i64::from(u32::from(b)) - i64::from(u32::from(a)) != delta {
                    break;
                }
                j += 1;
            }
            let min = if delta == 0 { 3 } else { 4 };
            if j - i >= min {
                best = best.max(j - i);
            }
        }
        if best == 1 {
            if let Some(&c) = chars.get(i) {
                kept.push(c);
            }
        }
        i += best;
    }
    kept
}

/// A random password of [`GENERATED_LEN`] characters from an unambiguous 32-symbol alphabet
/// (120 bits: the first 15 of the 18 bytes, five bits per character; the last three are spare).
/// The caller draws the bytes from a CSPRNG; such a password passes [`check_strength`] except
/// with negligible probability, so callers should still check and draw again if it fails.
pub fn generate_password(rng_bytes: [u8; 18]) -> String {
    let mut out = String::with_capacity(GENERATED_LEN);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &b in &rng_bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < GENERATED_LEN {
            bits -= 5;
            if let Some(&c) = ALPHABET.get(((acc >> bits) & 31) as usize) {
                out.push(char::from(c));
            }
        }
        acc &= (1 << bits) - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse battery staple", [7u8; 16]).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse battery staple"));
        assert!(!verify_password(&phc, "correct horse battery stapl"));
        assert!(!verify_password(&phc, "Correct horse battery staple"));
        assert!(!verify_password(&phc, ""));
        // Another salt, another string; both verify.
        let other = hash_password("correct horse battery staple", [8u8; 16]).unwrap();
        assert_ne!(phc, other);
        assert!(verify_password(&other, "correct horse battery staple"));
        // The password never appears in the PHC.
        assert!(!phc.contains("horse"));
    }

    #[test]
    fn verify_is_false_on_bad_phc() {
        let good = hash_password("a long enough passphrase", [1u8; 16]).unwrap();
        let pw = "a long enough passphrase";
        let bad = [
            String::new(),
            "not a phc".into(),
            "$argon2id$".into(),
            good.replace("$argon2id$", "$argon2i$"),
            good.replace("$argon2id$", "$argon2d$"),
            good.replace("$argon2id$", "$pbkdf2-sha256$"),
            good.replace("m=19456", "m=4294967295"),
            good.replace("t=2", "t=1000000"),
            good.replace("p=1", "p=255"),
            good.replace("m=19456", "m=abc"),
            // Drop the hash part.
            good.rsplit_once('$').unwrap().0.to_string(),
            // Corrupt the hash part.
            format!("{}$AAAA", good.rsplit_once('$').unwrap().0),
            format!("{good}$extra"),
            "\u{0}\u{ffff}$$$$".into(),
        ];
        for phc in &bad {
            assert!(!verify_password(phc, pw), "{phc:?}");
        }
        assert!(verify_password(&good, pw));
    }

    #[test]
    fn other_params_still_verify() {
        // A hash made with other (e.g. future, stronger) argon2id parameters verifies.
        let params = Params::new(8 * 1024, 3, 1, None).unwrap();
        let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(&[3u8; 16]).unwrap();
        let phc = a
            .hash_password(b"twelve chars plus", &salt)
            .unwrap()
            .to_string();
        assert!(phc.contains("m=8192,t=3,p=1"));
        assert!(verify_password(&phc, "twelve chars plus"));
        assert!(!verify_password(&phc, "twelve chars plu"));
    }

    #[test]
    fn too_long_is_refused() {
        let long = "x".repeat(MAX_LEN + 1);
        assert_eq!(hash_password(&long, [0; 16]), Err(PasswordError::TooLong));
        assert!(!verify_password("$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &long));
        assert!(!verify_dummy("whatever"));
    }

    #[test]
    fn strength_rules() {
        let table: &[(&str, &str, Result<(), PasswordError>)] = &[
            ("short", "alice", Err(PasswordError::TooShort)),
            ("elevenchars", "alice", Err(PasswordError::TooShort)),
            // 11 characters even though it is more than 12 bytes.
            ("ééééééééééé", "alice", Err(PasswordError::TooShort)),
            ("admin", "alice", Err(PasswordError::TooShort)),
            (
                "alice-is-great-2024",
                "alice",
                Err(PasswordError::ContainsUserName),
            ),
            (
                "ALICE-is-great-2024",
                "alice",
                Err(PasswordError::ContainsUserName),
            ),
            (
                "aaaaaaaaaaaaaaaa",
                "bob",
                Err(PasswordError::TooPredictable),
            ),
            (
                "abababababababab",
                "bob",
                Err(PasswordError::TooPredictable),
            ),
            ("Password1234!", "bob", Err(PasswordError::TooPredictable)),
            ("P@ssw0rd2024!!", "bob", Err(PasswordError::TooPredictable)),
            ("administrator1", "bob", Err(PasswordError::TooPredictable)),
            ("adminadminadmin", "bob", Err(PasswordError::TooPredictable)),
            ("123456789012", "bob", Err(PasswordError::TooPredictable)),
            (
                "abcdefghijklmnop",
                "bob",
                Err(PasswordError::TooPredictable),
            ),
            ("qwertyuiop123", "bob", Err(PasswordError::TooPredictable)),
            ("Welcome2Ward!", "bob", Err(PasswordError::TooPredictable)),
            // Short names are not searched for (too many false hits).
            ("correct horse battery", "co", Ok(())),
            ("correct horse battery", "bob", Ok(())),
            ("MyPumpHas3Valves&aDog", "bob", Ok(())),
            ("tr0ub4dor&3xyzq", "bob", Ok(())),
        ];
        for (pw, user, want) in table {
            assert_eq!(&check_strength(pw, user), want, "{pw:?} for {user:?}");
        }
        assert_eq!(
            check_strength(&"Zq9!".repeat(300), "bob"),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn runs_are_counted() {
        assert_eq!(remove_runs("abcd"), "");
        assert_eq!(remove_runs("abc"), "abc");
        assert_eq!(remove_runs("xabcdx"), "xx");
        assert_eq!(remove_runs("9876z"), "z");
        assert_eq!(remove_runs("zzzq"), "q");
        assert_eq!(remove_runs("zzq"), "zzq");
        assert_eq!(remove_runs("a1234567b"), "ab");
        assert_eq!(remove_runs(""), "");
    }

    #[test]
    fn generated_passwords() {
        let a = generate_password([0x00; 18]);
        assert_eq!(a, "2".repeat(24));
        let b = generate_password([0xff; 18]);
        assert_eq!(b, "z".repeat(24));
        // Bits map in order: 0b00000_00001_00010_00011_00100 ... over the first bytes.
        let c = generate_password([
            0x00, 0x44, 0x32, 0x14, 0xc7, 0x42, 0x54, 0xb6, 0x35, 0xcf, 0x84, 0x65, 0x3a, 0x56,
            0xd7, 0, 0, 0,
        ]);
        assert_eq!(&c, "23456789abcdefghijkmnpqr");
        // Pseudo-random inputs (a fixed xorshift stream) give passwords that pass the check and
        // use only the alphabet.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let mut bytes = [0u8; 18];
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 24) as u8;
            }
            let p = generate_password(bytes);
            assert_eq!(p.len(), GENERATED_LEN);
            assert!(p.bytes().all(|c| ALPHABET.contains(&c)), "{p}");
            assert_eq!(check_strength(&p, "alice"), Ok(()), "{p}");
            seen.insert(p);
        }
        assert_eq!(seen.len(), 500);
        // The degenerate inputs are caught by the check the caller runs.
        assert_eq!(
            check_strength(&a, "alice"),
            Err(PasswordError::TooPredictable)
        );
    }
}
