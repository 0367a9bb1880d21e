//! Human duration strings: `45s`, `30m`, `2h`, `1h30m`, `90d`.
//!
//! Grammar: one or more `<digits><unit>` groups, units `d` (days), `h`, `m`, `s`, each unit at most
//! once and in that order (`1h30m`, not `30m1h`). No spaces, no signs, no fractions. The total must
//! be greater than zero: every duration Ward configures (timeouts, session limits, certificate
//! lifetimes) is meaningless at zero.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration (expected e.g. \"30m\", \"2h\", \"1h30m\", \"90d\")")]
    Empty,
    /// A group had a unit but no number before it, or a number with no unit after it.
    #[error("bad duration {0:?}: every number needs a unit (d, h, m, s), e.g. \"1h30m\"")]
    MissingPart(String),
    /// A character that is neither a digit nor one of the units `d`, `h`, `m`, `s`.
    #[error("bad duration {text:?}: unknown unit {unit:?} (use d, h, m or s)")]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The offending character.
        unit: char,
    },
    /// A unit repeated or out of order (`30m1h`, `1h1h`).
    #[error("bad duration {0:?}: units must appear at most once, largest first (d, h, m, s)")]
    Order(String),
    /// The value does not fit in a 64-bit count of seconds.
    #[error("bad duration {0:?}: too large")]
    Overflow(String),
    /// The total was zero.
    #[error("bad duration {0:?}: must be greater than zero")]
    Zero(String),
}

/// Parses a duration such as `"1h30m"` (see the module docs for the grammar).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    // Rank of the last unit seen: d=4, h=3, m=2, s=1. Units must strictly decrease.
    let mut last_rank = u8::MAX;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(digit)))
                .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
            number = Some(n);
            continue;
        }
        let (rank, secs_per_unit) = match c {
            'd' => (4, 86_400),
            'h' => (3, 3_600),
            'm' => (2, 60),
            's' => (1, 1),
            unit => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_owned(),
                    unit,
                })
            }
        };
        let n = number
            .take()
            .ok_or_else(|| DurationError::MissingPart(text.to_owned()))?;
        if rank >= last_rank {
            return Err(DurationError::Order(text.to_owned()));
        }
        last_rank = rank;
        total = n
            .checked_mul(secs_per_unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
    }
    if number.is_some() {
        return Err(DurationError::MissingPart(text.to_owned()));
    }
    // Keep every duration representable as a `time::Duration` (i64 seconds) too, so callers can
    // add it to an `OffsetDateTime` without a second overflow check on the conversion.
    if i64::try_from(total).is_err() {
        return Err(DurationError::Overflow(text.to_owned()));
    }
    if total == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration in the same grammar, largest units first (`5400s` → `"1h30m"`).
/// Sub-second parts are dropped; a zero duration is `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("45s", 45),
            ("30m", 1_800),
            ("2h", 7_200),
            ("1h30m", 5_400),
            ("90d", 7_776_000),
            ("1d2h3m4s", 93_784),
            ("0h5m", 300),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_input() {
        type Check = fn(&DurationError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("", |e| matches!(e, DurationError::Empty)),
            ("30", |e| matches!(e, DurationError::MissingPart(_))),
            ("h", |e| matches!(e, DurationError::MissingPart(_))),
            ("1h30", |e| matches!(e, DurationError::MissingPart(_))),
            ("5w", |e| {
                matches!(e, DurationError::UnknownUnit { unit: 'w', .. })
            }),
            ("1 h", |e| {
                matches!(e, DurationError::UnknownUnit { unit: ' ', .. })
            }),
            ("30m1h", |e| matches!(e, DurationError::Order(_))),
            ("0s", |e| matches!(e, DurationError::Zero(_))),
            ("99999999999999999999s", |e| {
                matches!(e, DurationError::Overflow(_))
            }),
        ];
        for (text, check) in cases {
            let err = parse_duration(text).unwrap_err();
            assert!(check(&err), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn formats_largest_units_first() {
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(secs in 1u64..=10_000_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }
    }
}
