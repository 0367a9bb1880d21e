//! Fuzz-style property tests of `Config::parse` (security case 28): arbitrary text, and
//! `SAMPLE_CONFIG` mutated line by line and value by value with values chosen to hit overflow
//! and boundary paths (durations, hours windows, offsets, addresses, limits). The CI smoke run of
//! what `fuzz/fuzz_targets/config_parse.rs` does in depth (see `docs/fuzzing.md`).
//!
//! Properties: never panics; an error names the file and a location inside the text; a
//! configuration that parses is deterministic and internally consistent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use ward_core::{Config, SAMPLE_CONFIG};

const FILE: &str = "fuzz.toml";

fn check_parse(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, FILE) {
        Ok(config) => {
            // Deterministic, and consistent: ids unique and each findable.
            prop_assert_eq!(Config::parse(text, FILE), Ok(config.clone()));
            for d in &config.devices {
                let found = config.device(d.id.as_str()).map(|x| x.id.clone());
                prop_assert_eq!(found, Some(d.id.clone()));
            }
            let mut ids: Vec<_> = config.devices.iter().map(|d| d.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(
                ids.len(),
                config.devices.len(),
                "duplicate device ids accepted"
            );
        }
        Err(e) => {
            prop_assert_eq!(&e.file, FILE);
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&format!("{FILE}:")), "{}", shown);
            if let Some(loc) = e.location {
                let lines: Vec<&str> = text.split('\n').collect();
                prop_assert!(
                    loc.line >= 1 && loc.line <= lines.len(),
                    "{:?} in {} lines",
                    loc,
                    lines.len()
                );
                let width = lines[loc.line - 1].chars().count();
                prop_assert!(
                    loc.column >= 1 && loc.column <= width + 1,
                    "{:?}, line is {} chars",
                    loc,
                    width
                );
            }
        }
    }
    Ok(())
}

/// Values that exercise the semantic checks' edges.
fn tricky_value() -> impl Strategy<Value = String> {
    proptest::sample::select(tricky_values())
}

fn tricky_values() -> Vec<String> {
    let quoted = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>();
    let mut values: Vec<String> = quoted(&[
        "",
        "0s",
        "1s",
        "18446744073709551615s",
        "9223372036854775807s",
        "9223372036854775808s",
        "213503982334601d",
        "99999999999999999999d",
        "1h1h",
        "30m1h",
        "1d2h3m4s",
        "5",
        "h",
        "Mon-Sun 00:00-24:00",
        "Fri-Mon 23:59-00:00",
        "Mon 24:00-24:00",
        "Mon 00:00-00:00",
        "Sun-Sun 23:59-23:58",
        "Xyz 01:00-02:00",
        "Mon 1:2-3:4",
        "Mon-Fri 07:00-19:00, Sat 01:00-02:00",
        "mon-fri 99:99-00:00",
        "+23:59",
        "-23:59",
        "+24:00",
        "+99:99",
        "+00:60",
        "-00:00",
        "Z",
        "127.0.0.1:0",
        "[::1]:4433",
        "[::1]",
        "host:99999",
        ":23",
        "a:b:c",
        "[zz]:1",
        "é.example:23",
        "localhost:65535",
        "10.0.0.1:-1",
        "telnet",
        "http",
        "dicom",
        "hl7",
        "raw",
        "vendor",
        "clinician",
        "admin",
        "security",
        "service",
        "gateway",
        "nobody",
        "pump-12",
        "monitor-3",
        "../../etc/passwd",
        "\u{1b}[2J",
        "a\u{0}b",
        "  ",
    ]);
    values.push(format!("{:?}", "x".repeat(300)));
    values.extend(
        [
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "1e309",
            "nan",
            "inf",
            "true",
            "false",
            "[]",
            "{}",
            "[\"\"]",
            "{ all = true }",
            "{ all = false }",
            "{ ids = [] }",
            "{ labels = {} }",
            "{ ids = [\"nope\"] }",
            "{ kind = \"vendor\" }",
            "{}",
            "{ who = {}, max = \"0s\" }",
            "1979-05-27T07:32:00Z",
            "'''\n'''",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    values
}

#[derive(Clone, Debug)]
enum Edit {
    /// Replace the value of the `key = value` on line `at`.
    Value { at: usize, value: String },
    /// Remove the line.
    Drop { at: usize },
    /// Repeat the line (or, for a `[[table]]` header, the whole table) right after itself.
    Dup { at: usize },
    /// Uncomment a `# key = value` line.
    Uncomment { at: usize },
    /// Insert a line.
    Insert { at: usize, line: String },
    /// Change one character.
    Char { at: usize, c: char },
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, tricky_value()).prop_map(|(at, value)| Edit::Value { at, value }),
        1 => at.prop_map(|at| Edit::Drop { at }),
        1 => at.prop_map(|at| Edit::Dup { at }),
        2 => at.prop_map(|at| Edit::Uncomment { at }),
        1 => (at, prop_oneof![
            Just("[gateway]".to_string()),
            Just("[[device]]".to_string()),
            Just("[[rule]]".to_string()),
            Just("[unknown]".to_string()),
            Just("unknown_field = 1".to_string()),
            ("[a-z_]{1,20}", tricky_value()).prop_map(|(k, v)| format!("{k} = {v}")),
            "\\PC{0,40}",
        ]).prop_map(|(at, line)| Edit::Insert { at, line }),
        1 => (at, prop_oneof![
            Just('"'), Just('['), Just(']'), Just('{'), Just('}'), Just('='), Just('\n'),
            Just('#'), Just('\\'), Just(','), Just('é'), any::<char>(),
        ]).prop_map(|(at, c)| Edit::Char { at, c }),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    for e in edits {
        let n = lines.len();
        match e {
            Edit::Value { at, value } => {
                let with_value: Vec<usize> = (0..n)
                    .filter(|i| {
                        !lines[*i].trim_start().starts_with('#') && lines[*i].contains(" = ")
                    })
                    .collect();
                if let Some(&i) = with_value.get(at % with_value.len().max(1)) {
                    let key = lines[i].split(" = ").next().unwrap().to_owned();
                    lines[i] = format!("{key} = {value}");
                }
            }
            Edit::Drop { at } if n > 0 => {
                lines.remove(at % n);
            }
            Edit::Dup { at } if n > 0 => {
                let i = at % n;
                let end = if lines[i].starts_with("[[") {
                    (i + 1..n).find(|j| lines[*j].starts_with('[')).unwrap_or(n)
                } else {
                    i + 1
                };
                let copy: Vec<String> = lines[i..end].to_vec();
                lines.splice(end..end, copy);
            }
            Edit::Uncomment { at } => {
                let commented: Vec<usize> = (0..n)
                    .filter(|i| lines[*i].starts_with("# ") && lines[*i].contains(" = "))
                    .collect();
                if let Some(&i) = commented.get(at % commented.len().max(1)) {
                    lines[i] = lines[i][2..].to_owned();
                }
            }
            Edit::Insert { at, line } => lines.insert(at % (n + 1), line.clone()),
            Edit::Char { at, c } => {
                let joined = lines.join("\n");
                let chars: Vec<char> = joined.chars().collect();
                if !chars.is_empty() {
                    let i = at % chars.len();
                    let mut s: String = chars[..i].iter().collect();
                    s.push(*c);
                    s.extend(&chars[i + 1..]);
                    lines = s.split('\n').map(str::to_owned).collect();
                }
            }
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text(text in "\\PC{0,200}") {
        check_parse(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_parse(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutated_sample(edits in proptest::collection::vec(arb_edit(), 1..5)) {
        check_parse(&apply(SAMPLE_CONFIG, &edits))?;
    }

    #[test]
    fn sample_prefixes(cut in any::<prop::sample::Index>()) {
        let chars: Vec<char> = SAMPLE_CONFIG.chars().collect();
        let text: String = chars[..cut.index(chars.len() + 1)].iter().collect();
        check_parse(&text)?;
    }
}

#[test]
fn the_sample_parses_and_every_commented_default_can_be_uncommented() {
    check_parse(SAMPLE_CONFIG).unwrap();
    Config::parse(SAMPLE_CONFIG, FILE).unwrap();
    let uncommented: String = SAMPLE_CONFIG
        .split('\n')
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    check_parse(&uncommented).unwrap();
}

#[test]
fn every_value_replaced_by_every_tricky_value() {
    // Exhaustive over (value line x tricky value) for single edits: a few thousand parses.
    let lines = SAMPLE_CONFIG
        .split('\n')
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(" = "))
        .count();
    assert!(lines > 10);
    for at in 0..lines {
        for value in tricky_values() {
            check_parse(&apply(SAMPLE_CONFIG, &[Edit::Value { at, value }])).unwrap();
        }
    }
}
