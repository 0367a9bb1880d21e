//! How the `ward` command shows things to people: one time format (UTC, or the local zone with
//! `--local`), one table printer for every listing, and progress bars for long work that appear
//! only on a terminal and never under `--json`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use time::{OffsetDateTime, UtcOffset};

static OFFSET: OnceLock<UtcOffset> = OnceLock::new();

/// Choose the zone times are shown in: UTC, or with `local` this machine's zone. Called once, at
/// start, before any thread is spawned (the local offset can only be read safely then).
pub fn set_zone(local: bool) {
    let offset = if local {
        UtcOffset::current_local_offset().unwrap_or_else(|_| {
            eprintln!(
                "ward: --local: this machine's time zone could not be read; times are in UTC"
            );
            UtcOffset::UTC
        })
    } else {
        UtcOffset::UTC
    };
    let _ = OFFSET.set(offset);
}

fn offset() -> UtcOffset {
    OFFSET.get().copied().unwrap_or(UtcOffset::UTC)
}

/// A time for people: `2026-11-27 15:32:42Z`.
pub fn when(t: OffsetDateTime) -> String {
    ward_core::when::human(t, offset())
}

/// Unix seconds for people.
pub fn when_unix(unix: i64) -> String {
    ward_core::when::human_unix(unix, offset())
}

/// An RFC 3339 text (from the gateway's JSON) for people; other text unchanged.
pub fn when_text(text: &str) -> String {
    ward_core::when::human_rfc3339(text, offset())
}

/// A table aligned to its content: every column as wide as its widest cell, two spaces apart,
/// numbers (columns marked with [`Table::right`]) right-aligned, no padding after the last column.
#[derive(Debug, Default)]
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
    no_head: bool,
}

impl Table {
    /// A table with these column headings.
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|h| (*h).to_owned()).collect(),
            ..Table::default()
        }
    }

    /// Right-align these columns (0-based).
    pub fn right(mut self, cols: &[usize]) -> Self {
        self.right = cols.to_vec();
        self
    }

    /// Print no heading row (a list of `key: value` lines).
    pub fn without_head(mut self) -> Self {
        self.no_head = true;
        self
    }

    /// Add a row (missing cells print empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Print it.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let n = self.head.len();
        let head = (!self.no_head).then_some(&self.head);
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        if self.no_head {
            widths.iter_mut().for_each(|w| *w = 0);
        }
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in head.into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                let last = i + 1 == n;
                if self.right.contains(&i) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                if !last {
                    line.push_str("  ");
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    /// Print it on stdout.
    pub fn print(&self) -> std::io::Result<()> {
        self.write(&mut std::io::stdout().lock())
    }
}

/// A progress bar on stderr for `total` steps of `what`, shown only when stderr is a terminal
/// and the output is for people (`quiet` under `--json`); hidden otherwise.
pub fn progress(total: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
            .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// A spinner counting bytes received on stderr, for a download of unknown size; same rules as
/// [`progress`].
pub fn downloading(what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&["ID", "STATE", "N"]).right(&[2]);
        t.row(vec!["req-1".into(), "pending".into(), "1".into()]);
        t.row(vec!["r".into(), "approved-and-more".into(), "120".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ID     STATE                N\n\
             req-1  pending              1\n\
             r      approved-and-more  120\n"
        );
    }

    #[test]
    fn the_last_column_is_not_padded_and_wide_characters_count_once() {
        let mut t = Table::new(&["WHO", "WHY"]);
        t.row(vec!["é".into(), "a".into()]);
        t.row(vec!["abc".into(), "".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "WHO  WHY\né    a\nabc\n");
    }
}
