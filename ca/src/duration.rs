//! Human durations: `45s`, `30m`, `1h30m`, `90d`.
//!
//! The grammar is one or more `<digits><unit>` groups with no spaces, units `d`, `h`, `m`, `s`,
//! each used at most once and largest first. It is used for certificate lifetimes on the command
//! line and in `ca.json`, and by the gateway's configuration (through [`HumanDuration`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::Duration;

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration (examples: \"45s\", \"30m\", \"1h30m\", \"90d\")")]
    Empty,
    /// A unit letter came without a number before it.
    #[error("invalid duration {input:?}: expected a number at position {pos}")]
    MissingNumber {
        /// The whole input.
        input: String,
        /// Character position (0-based) where a digit was expected.
        pos: usize,
    },
    /// A number came without a unit after it.
    #[error("invalid duration {input:?}: the number at the end needs a unit (s, m, h or d)")]
    MissingUnit {
        /// The whole input.
        input: String,
    },
    /// A character that is not a digit nor one of the units.
    #[error(
        "invalid duration {input:?}: unknown unit {unit:?} at position {pos} (use s, m, h or d)"
    )]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The offending character.
        unit: char,
        /// Its character position (0-based).
        pos: usize,
    },
    /// Units repeated or not largest first (`30m1h`, `1h1h`).
    #[error(
        "invalid duration {input:?}: units must appear once each, largest first (e.g. \"1h30m\")"
    )]
    UnitOrder {
        /// The whole input.
        input: String,
    },
    /// Longer than [`MAX_DURATION`] (100 years).
    #[error("invalid duration {input:?}: too large (the limit is 36500d)")]
    TooLarge {
        /// The whole input.
        input: String,
    },
    /// A zero length where a positive one is required (TTLs).
    #[error("invalid duration {input:?}: must be longer than zero")]
    Zero {
        /// The whole input.
        input: String,
    },
}

const MAX_DIGITS: usize = 12;

/// The longest duration [`parse_duration`] accepts: 100 years (36500d), far beyond any lifetime
/// or timeout, and small enough that adding it to a date cannot overflow.
pub const MAX_DURATION: Duration = Duration::days(36_500);

/// Parse a duration such as `45s`, `30m`, `1h30m` or `90d`. Zero (`0s`) is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let input = || s.to_owned();
    let mut total: i64 = 0;
    let mut last_rank = u8::MAX;
    let mut number: Option<i64> = None;
    let mut digits = 0usize;
    for (pos, c) in s.chars().enumerate() {
        if let Some(d) = c.to_digit(10) {
            digits += 1;
            if digits > MAX_DIGITS {
                return Err(DurationError::TooLarge { input: input() });
            }
            let n = number.unwrap_or(0);
            number = Some(n * 10 + i64::from(d));
            continue;
        }
        let (rank, secs) = match c {
            'd' => (3u8, 86_400i64),
            'h' => (2, 3_600),
            'm' => (1, 60),
            's' => (0, 1),
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input(),
                    unit: other,
                    pos,
                })
            }
        };
        let Some(n) = number.take() else {
            return Err(DurationError::MissingNumber {
                input: input(),
                pos,
            });
        };
        digits = 0;
        if rank >= last_rank {
            return Err(DurationError::UnitOrder { input: input() });
        }
        last_rank = rank;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::TooLarge { input: input() })?;
    }
    if number.is_some() {
        return Err(DurationError::MissingUnit { input: input() });
    }
    let d = Duration::seconds(total);
    if d > MAX_DURATION {
        return Err(DurationError::TooLarge { input: input() });
    }
    Ok(d)
}

/// Parse a certificate lifetime: a [`parse_duration`] that must be longer than zero.
pub fn parse_ttl(s: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(s)?;
    if d <= Duration::ZERO {
        return Err(DurationError::Zero {
            input: s.to_owned(),
        });
    }
    Ok(d)
}

/// Format a duration in the same notation, to whole seconds: `1h30m`, `90d`, `0s`, `-3m`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.whole_seconds();
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = secs.saturating_neg();
    }
    if secs == 0 {
        out.push_str("0s");
        return out;
    }
    for (unit, len) in [('d', 86_400i64), ('h', 3_600), ('m', 60), ('s', 1)] {
        let n = secs / len;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
            secs %= len;
        }
    }
    out
}

/// A [`Duration`] that reads and writes itself in the human notation, for configuration files
/// (`ttl = "8h"`). Use it as a field type with serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_examples() {
        let table: &[(&str, i64)] = &[
            ("45s", 45),
            ("30m", 1_800),
            ("1h", 3_600),
            ("90d", 90 * 86_400),
            ("1h30m", 5_400),
            ("1d2h3m4s", 86_400 + 7_200 + 180 + 4),
            ("0s", 0),
            ("007m", 420),
            ("36500d", 36_500 * 86_400),
        ];
        for (input, secs) in table {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::seconds(*secs)),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("10", "needs a unit"),
            ("h", "expected a number at position 0"),
            ("1h30", "needs a unit"),
            ("5x", "unknown unit 'x'"),
            ("1 h", "unknown unit ' '"),
            ("-5m", "unknown unit '-'"),
            ("30m1h", "largest first"),
            ("1h1h", "largest first"),
            ("1234567890123s", "too large"),
            ("999999999999d", "too large"),
            ("36501d", "too large"),
        ];
        for (input, want) in table {
            let err = parse_duration(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        assert!(parse_ttl("0s")
            .unwrap_err()
            .to_string()
            .contains("longer than zero"));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::minutes(90)));
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::minutes(90)), "1h30m");
        assert_eq!(format_duration(Duration::days(90)), "90d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::seconds(-180)), "-3m");
        assert_eq!(format_duration(Duration::milliseconds(61_500)), "1m1s");
    }

    #[test]
    fn serde_round_trip() {
        let d: HumanDuration = serde_json::from_str("\"8h\"").unwrap();
        assert_eq!(d.get(), Duration::hours(8));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"8h\"");
        let err = serde_json::from_str::<HumanDuration>("\"8 hours\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 0i64..=3_153_600_000) {
            let d = Duration::seconds(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
