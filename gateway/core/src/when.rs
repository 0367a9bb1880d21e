//! Times for people: one format everywhere the CLI shows a time to a person,
//! `2026-11-27 15:32:42Z` (UTC, whole seconds) or, in a local zone, `2026-11-27 16:32:42+01:00`.
//! Machines get RFC 3339 (`--json`). Pure: the offset to show is an input.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// `t` for people, in `offset` (UTC shows as `Z`), to the second.
pub fn human(t: OffsetDateTime, offset: UtcOffset) -> String {
    let t = t.to_offset(offset);
    let zone = if offset.is_utc() {
        "Z".to_owned()
    } else {
        let (h, m, _) = offset.as_hms();
        let sign = if offset.is_negative() { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{zone}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Unix seconds for people; out-of-range values are shown as the number.
pub fn human_unix(unix: i64, offset: UtcOffset) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => human(t, offset),
        Err(_) => format!("unix {unix}"),
    }
}

/// An RFC 3339 text (as the gateway's JSON carries) for people; other text is returned as is.
pub fn human_rfc3339(text: &str, offset: UtcOffset) -> String {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => human(t, offset),
        Err(_) => text.to_owned(),
    }
}

/// `t` for machines: RFC 3339 in UTC, whole seconds.
pub fn machine(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| format!("unix {}", t.unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    #[test]
    fn utc_is_seconds_and_z() {
        let t = datetime!(2026-11-27 15:32:42.123456789 UTC);
        assert_eq!(human(t, UtcOffset::UTC), "2026-11-27 15:32:42Z");
        assert_eq!(machine(t), "2026-11-27T15:32:42Z");
    }

    #[test]
    fn local_zones_carry_their_offset() {
        let t = datetime!(2026-11-27 15:32:42 UTC);
        assert_eq!(human(t, offset!(+1)), "2026-11-27 16:32:42+01:00");
        assert_eq!(human(t, offset!(-5:30)), "2026-11-27 10:02:42-05:30");
    }

    #[test]
    fn rfc3339_text_is_reformatted_and_other_text_kept() {
        assert_eq!(
            human_rfc3339("2026-11-27T15:32:42.5+00:00", UtcOffset::UTC),
            "2026-11-27 15:32:42Z"
        );
        assert_eq!(human_rfc3339("-", UtcOffset::UTC), "-");
        assert_eq!(human_unix(0, UtcOffset::UTC), "1970-01-01 00:00:00Z");
    }
}
