//! Weekly access windows: `Mon-Fri 07:00-19:00`, `Sat 22:00-06:00`, `Mon,Wed 08:00-12:00`.
//!
//! A window is a set of days and a time range on each of those days, evaluated at a fixed UTC
//! offset (UTC unless `[gateway] timezone_offset` says otherwise; there is no daylight-saving
//! logic, by design: a fixed offset never moves a window twice a year without anyone noticing).
//!
//! * Days: `Mon` `Tue` `Wed` `Thu` `Fri` `Sat` `Sun` (any case), ranges `Mon-Fri` (wrapping ranges
//!   such as `Fri-Mon` are allowed) and comma lists `Mon,Wed,Fri-Sun`.
//! * Times: `HH:MM-HH:MM`, 24-hour clock; `24:00` is allowed as an end. An end earlier than the
//!   start wraps past midnight: `Sat 22:00-06:00` runs from Saturday 22:00 to Sunday 06:00 (the
//!   day names the day the window *starts*). Start equal to end is rejected; write `00:00-24:00`
//!   for a whole day.
//!
//! [`Hours`] is the union of one or more windows. It precomputes which minutes of the week are
//! covered, so overlapping and adjacent windows merge: `Mon-Sun 00:00-24:00` never closes, and
//! `Mon 20:00-24:00` + `Tue 00:00-04:00` is one stretch ending Tuesday 04:00.

use std::fmt;

use time::{Duration, OffsetDateTime, UtcOffset};

const MINUTES_PER_DAY: u32 = 24 * 60;
/// Minutes in a week, the period of every [`Hours`].
pub const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;
const WORDS: usize = (MINUTES_PER_WEEK as usize).div_ceil(64);
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Why a window or offset was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The text was not `<days> <HH:MM>-<HH:MM>`.
    #[error("bad window {0:?}: expected \"<days> <HH:MM>-<HH:MM>\", e.g. \"Mon-Fri 07:00-19:00\"")]
    Shape(String),
    /// A day name other than Mon..Sun.
    #[error("bad window {text:?}: unknown day {day:?} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day {
        /// The whole window.
        text: String,
        /// The unknown day.
        day: String,
    },
    /// A time that is not `HH:MM` within 00:00..=24:00 (24:00 only as an end).
    #[error("bad window {text:?}: bad time {time:?} (use HH:MM from 00:00 to 23:59; 24:00 only as an end)")]
    Time {
        /// The whole window.
        text: String,
        /// The bad time.
        time: String,
    },
    /// Start and end are the same minute, which would be either nothing or everything.
    #[error("bad window {0:?}: start and end are equal (write 00:00-24:00 for a whole day)")]
    Empty(String),
    /// An `hours` list with no windows in it.
    #[error("no windows given (omit `hours` to allow any time)")]
    NoWindows,
    /// A timezone offset that is not `+HH:MM` / `-HH:MM` within ±23:59.
    #[error("bad timezone offset {0:?}: expected +HH:MM or -HH:MM, e.g. \"+01:00\"")]
    Offset(String),
}

/// One parsed window such as `Mon-Fri 07:00-19:00`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    /// Bit `d` set = window starts on day `d` (0 = Monday).
    days: u8,
    /// Minutes after midnight, 0..1440.
    start: u32,
    /// Minutes after midnight, 1..=1440; `end <= start` wraps into the next day.
    end: u32,
}

impl Window {
    /// Parses a window (see the module docs for the syntax).
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let normalized = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut parts = normalized.split(' ');
        let (Some(days_text), Some(times_text), None) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(WindowError::Shape(text.to_owned()));
        };
        let days = parse_days(days_text).map_err(|day| WindowError::Day {
            text: text.to_owned(),
            day,
        })?;
        let (start_text, end_text) = times_text
            .split_once('-')
            .ok_or_else(|| WindowError::Shape(text.to_owned()))?;
        let bad_time = |time: &str| WindowError::Time {
            text: text.to_owned(),
            time: time.to_owned(),
        };
        let start = parse_hhmm(start_text)
            .filter(|m| *m < MINUTES_PER_DAY)
            .ok_or_else(|| bad_time(start_text))?;
        let end = parse_hhmm(end_text).ok_or_else(|| bad_time(end_text))?;
        if end == start {
            return Err(WindowError::Empty(text.to_owned()));
        }
        // 00:00 as an end is midnight at the end of the day: `22:00-00:00` == `22:00-24:00`.
        let end = if end == 0 { MINUTES_PER_DAY } else { end };
        Ok(Window {
            text: normalized,
            days,
            start,
            end,
        })
    }

    /// Length of each occurrence in minutes.
    fn len_minutes(&self) -> u32 {
        if self.end > self.start {
            self.end - self.start
        } else {
            MINUTES_PER_DAY - self.start + self.end
        }
    }
}

/// The window as written (whitespace collapsed).
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_day(name: &str) -> Option<u32> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
}

/// Returns the day bitmask, or the offending day text.
fn parse_days(text: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let first_day = parse_day(first).ok_or_else(|| first.to_owned())?;
        let last_day = parse_day(last).ok_or_else(|| last.to_owned())?;
        let mut d = first_day;
        loop {
            mask |= 1 << d;
            if d == last_day {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(mask)
}

/// `HH:MM` → minutes after midnight, accepting up to 24:00.
fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Parses a fixed offset `+HH:MM` / `-HH:MM` (also `Z` and `UTC` for zero).
pub fn parse_offset(text: &str) -> Result<UtcOffset, WindowError> {
    let bad = || WindowError::Offset(text.to_owned());
    if text == "Z" || text.eq_ignore_ascii_case("utc") {
        return Ok(UtcOffset::UTC);
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1i8, rest),
        Some(("-", rest)) => (-1i8, rest),
        _ => return Err(bad()),
    };
    let minutes = parse_hhmm(rest)
        .filter(|m| *m < MINUTES_PER_DAY)
        .ok_or_else(bad)?;
    let h = i8::try_from(minutes / 60).map_err(|_| bad())?;
    let m = i8::try_from(minutes % 60).map_err(|_| bad())?;
    UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| bad())
}

/// Formats an offset for messages: `UTC`, `UTC+01:00`, `UTC-05:30`.
pub fn format_offset(offset: UtcOffset) -> String {
    if offset == UtcOffset::UTC {
        return "UTC".to_owned();
    }
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!("UTC{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

/// Whether [`Hours`] are open at an instant, and until / from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open now; `until` is when the current stretch ends, `None` if it never does.
    Open {
        /// End of the current stretch of open minutes.
        until: Option<OffsetDateTime>,
    },
    /// Closed now.
    Closed {
        /// Start of the next open minute.
        opens_at: OffsetDateTime,
    },
}

/// The union of one or more [`Window`]s at a fixed offset.
#[derive(Clone, PartialEq, Eq)]
pub struct Hours {
    windows: Vec<Window>,
    offset: UtcOffset,
    /// Bit `i` set = minute `i` of the week (0 = Monday 00:00 local) is open.
    cover: Vec<u64>,
}

impl Hours {
    /// Combines windows evaluated at `offset`. At least one window is required.
    pub fn new(windows: Vec<Window>, offset: UtcOffset) -> Result<Hours, WindowError> {
        if windows.is_empty() {
            return Err(WindowError::NoWindows);
        }
        let mut cover = vec![0u64; WORDS];
        for w in &windows {
            for day in 0..7u32 {
                if w.days & (1 << day) == 0 {
                    continue;
                }
                let first = day * MINUTES_PER_DAY + w.start;
                for i in 0..w.len_minutes() {
                    let minute = (first + i) % MINUTES_PER_WEEK;
                    if let Some(word) = cover.get_mut((minute / 64) as usize) {
                        *word |= 1 << (minute % 64);
                    }
                }
            }
        }
        Ok(Hours {
            windows,
            offset,
            cover,
        })
    }

    /// Parses each window text and combines them.
    pub fn parse<S: AsRef<str>>(texts: &[S], offset: UtcOffset) -> Result<Hours, WindowError> {
        let windows = texts
            .iter()
            .map(|t| Window::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Hours::new(windows, offset)
    }

    /// The windows, as given.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The offset the windows are evaluated at.
    pub fn offset(&self) -> UtcOffset {
        self.offset
    }

    fn covered(&self, minute_of_week: u32) -> bool {
        let minute = minute_of_week % MINUTES_PER_WEEK;
        self.cover
            .get((minute / 64) as usize)
            .is_some_and(|word| word & (1 << (minute % 64)) != 0)
    }

    /// True when `now` falls inside a window.
    pub fn is_open(&self, now: OffsetDateTime) -> bool {
        matches!(self.state(now), WindowState::Open { .. })
    }

    /// Open or closed at `now`, and the next boundary.
    pub fn state(&self, now: OffsetDateTime) -> WindowState {
        // Only fails within a day of the representable range; UTC is then the best we can do.
        let local = now.checked_to_offset(self.offset).unwrap_or(now);
        let minute_of_week = u32::from(local.weekday().number_days_from_monday()) * MINUTES_PER_DAY
            + u32::from(local.hour()) * 60
            + u32::from(local.minute());
        let minute_start = now
            - Duration::seconds(i64::from(local.second()))
            - Duration::nanoseconds(i64::from(local.nanosecond()));
        let at = |k: u32| minute_start.saturating_add(Duration::minutes(i64::from(k)));
        if self.covered(minute_of_week) {
            let stretch = (1..MINUTES_PER_WEEK).find(|k| !self.covered(minute_of_week + k));
            WindowState::Open {
                until: stretch.map(at),
            }
        } else {
            // `Hours::new` guarantees at least one window, and every window covers at least one
            // minute, so this finds one; `MINUTES_PER_WEEK` (a week from now) is unreachable.
            let k = (1..MINUTES_PER_WEEK)
                .find(|k| self.covered(minute_of_week + k))
                .unwrap_or(MINUTES_PER_WEEK);
            WindowState::Closed { opens_at: at(k) }
        }
    }
}

/// `Mon-Fri 08:00-18:00, Sat 09:00-12:00 (UTC)`.
impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{w}")?;
        }
        write!(f, " ({})", format_offset(self.offset))
    }
}

impl fmt::Debug for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hours({self})")
    }
}

/// `Mon 07:00`: a weekday and time at `offset`, for "next window opens …" messages.
pub fn format_local(t: OffsetDateTime, offset: UtcOffset) -> String {
    let local = t.checked_to_offset(offset).unwrap_or(t);
    let day = DAY_NAMES
        .get(usize::from(local.weekday().number_days_from_monday()))
        .copied()
        .unwrap_or("?");
    format!("{day} {:02}:{:02}", local.hour(), local.minute())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::{datetime, offset};

    // 2024-01-01 is a Monday.
    const MON: OffsetDateTime = datetime!(2024-01-01 0:00 UTC);

    fn hours(texts: &[&str]) -> Hours {
        Hours::parse(texts, UtcOffset::UTC).unwrap()
    }

    #[test]
    fn parses_and_rejects() {
        for ok in [
            "Mon-Fri 07:00-19:00",
            "Sat 22:00-06:00",
            "mon 00:00-24:00",
            "Mon,Wed,Fri-Sun 08:00-12:30",
            "Fri-Mon 10:00-11:00",
            "  Sun   23:00-00:00 ",
        ] {
            assert!(Window::parse(ok).is_ok(), "{ok}");
        }
        type Check = fn(&WindowError) -> bool;
        let cases: [(&str, Check); 10] = [
            ("Mon-Fri", |e| matches!(e, WindowError::Shape(_))),
            ("Mon-Fri 07:00", |e| matches!(e, WindowError::Shape(_))),
            ("Mon-Fri 07:00-19:00 x", |e| {
                matches!(e, WindowError::Shape(_))
            }),
            ("Mon-Fry 07:00-19:00", |e| {
                matches!(e, WindowError::Day { .. })
            }),
            ("Mon 7:00-19:00", |e| matches!(e, WindowError::Time { .. })),
            ("Mon 07:00-24:01", |e| matches!(e, WindowError::Time { .. })),
            ("Mon 24:00-02:00", |e| matches!(e, WindowError::Time { .. })),
            ("Mon 07:60-08:00", |e| matches!(e, WindowError::Time { .. })),
            ("Mon 07:00-07:00", |e| matches!(e, WindowError::Empty(_))),
            ("Mon 00:00-00:00", |e| matches!(e, WindowError::Empty(_))),
        ];
        for (text, check) in cases {
            let err = Window::parse(text).unwrap_err();
            assert!(check(&err), "{text:?} gave {err:?}");
        }
        assert_eq!(
            Hours::new(vec![], UtcOffset::UTC),
            Err(WindowError::NoWindows)
        );
    }

    #[test]
    fn weekday_window_open_and_closed() {
        let h = hours(&["Mon-Fri 07:00-19:00"]);
        assert_eq!(
            h.state(MON + Duration::hours(8)),
            WindowState::Open {
                until: Some(MON + Duration::hours(19))
            }
        );
        assert_eq!(
            h.state(MON + Duration::hours(6)),
            WindowState::Closed {
                opens_at: MON + Duration::hours(7)
            }
        );
        // Friday 19:00 is closed (end is exclusive); next opening is Monday 07:00.
        let fri_19 = MON + Duration::days(4) + Duration::hours(19);
        assert_eq!(
            h.state(fri_19),
            WindowState::Closed {
                opens_at: MON + Duration::days(7) + Duration::hours(7)
            }
        );
        assert_eq!(
            format_local(MON + Duration::days(7) + Duration::hours(7), UtcOffset::UTC),
            "Mon 07:00"
        );
    }

    #[test]
    fn seconds_are_kept_until_the_boundary() {
        let h = hours(&["Mon 07:00-08:00"]);
        let now = MON + Duration::hours(7) + Duration::seconds(90) + Duration::milliseconds(5);
        assert_eq!(
            h.state(now),
            WindowState::Open {
                until: Some(MON + Duration::hours(8))
            }
        );
    }

    #[test]
    fn wraps_past_midnight_and_week() {
        let h = hours(&["Sun 22:00-06:00"]);
        let sun_23 = MON + Duration::days(6) + Duration::hours(23);
        assert_eq!(
            h.state(sun_23),
            WindowState::Open {
                until: Some(MON + Duration::days(7) + Duration::hours(6))
            }
        );
        // Monday 05:00 is inside the window that started on Sunday.
        assert!(h.is_open(MON + Duration::hours(5)));
        assert!(!h.is_open(MON + Duration::hours(6)));
    }

    #[test]
    fn adjacent_windows_merge_and_always_open_never_ends() {
        let h = hours(&["Mon 20:00-24:00", "Tue 00:00-04:00"]);
        assert_eq!(
            h.state(MON + Duration::hours(21)),
            WindowState::Open {
                until: Some(MON + Duration::days(1) + Duration::hours(4))
            }
        );
        let always = hours(&["Mon-Sun 00:00-24:00"]);
        assert_eq!(
            always.state(MON + Duration::hours(3)),
            WindowState::Open { until: None }
        );
    }

    #[test]
    fn fixed_offset_shifts_windows() {
        let h = Hours::parse(&["Mon 09:00-10:00"], offset!(+1)).unwrap();
        // 08:30 UTC is 09:30 at +01:00.
        assert_eq!(
            h.state(MON + Duration::minutes(8 * 60 + 30)),
            WindowState::Open {
                until: Some(MON + Duration::hours(9))
            }
        );
        assert_eq!(h.to_string(), "Mon 09:00-10:00 (UTC+01:00)");
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+01:00"), Ok(offset!(+1)));
        assert_eq!(parse_offset("-05:30"), Ok(offset!(-5:30)));
        assert_eq!(parse_offset("Z"), Ok(UtcOffset::UTC));
        for bad in ["01:00", "+1:00", "+24:00", "", "+01:00x"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
        assert_eq!(format_offset(offset!(-5:30)), "UTC-05:30");
    }

    proptest! {
        /// The reported boundary is consistent with `is_open` on both sides of it.
        #[test]
        fn boundaries_agree_with_is_open(
            start in 0u32..1440, len in 1u32..1440, days in 1u8..128, minute in 0i64..20_160,
        ) {
            let end = (start + len) % 1440;
            let text = format!(
                "{} {:02}:{:02}-{:02}:{:02}",
                DAY_NAMES.iter().enumerate().filter(|(i, _)| days & (1 << i) != 0)
                    .map(|(_, d)| *d).collect::<Vec<_>>().join(","),
                start / 60, start % 60, end / 60, end % 60,
            );
            let h = Hours::parse(&[text], UtcOffset::UTC).unwrap();
            let now = MON + Duration::minutes(minute) + Duration::seconds(17);
            match h.state(now) {
                WindowState::Open { until: Some(until) } => {
                    prop_assert!(until > now);
                    prop_assert!(h.is_open(until - Duration::seconds(1)));
                    prop_assert!(!h.is_open(until));
                }
                WindowState::Open { until: None } => {
                    prop_assert!((0..10_080).all(|m| h.is_open(MON + Duration::minutes(m))));
                }
                WindowState::Closed { opens_at } => {
                    prop_assert!(opens_at > now);
                    prop_assert!(!h.is_open(opens_at - Duration::seconds(1)));
                    prop_assert!(h.is_open(opens_at));
                }
            }
        }
    }
}
