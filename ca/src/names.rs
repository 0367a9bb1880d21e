//! The safe character sets for everything Ward writes into a certificate, a log line or a
//! terminal: names, orgs, roles, trust domains and DNS names.
//!
//! A name, org or role is 1 to 64 characters from `A-Z a-z 0-9 . _ -`, not starting with `.` or
//! `-`. A trust domain or DNS name is lowercase DNS: labels of `a-z 0-9 -` (1 to 63 characters,
//! not starting or ending with `-`) joined by `.`, at most 253 characters. Neither can hold a
//! control character, an ANSI escape, a `/`, a space or anything outside ASCII.

use std::fmt;

/// Longest name, org or role (also the X.520 upper bound for CN, O and OU).
pub const MAX_NAME_LEN: usize = 64;
/// Longest trust domain or DNS name.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// A refused name, saying which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct NameError {
    /// Which field: `name`, `org`, `role`, `roles`, `trust domain`, `dns name`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Nothing there.
    Empty,
    /// Over the length limit.
    TooLong {
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character (including ESC, which starts ANSI escapes).
    Control {
        /// The character.
        ch: char,
        /// Its character position, 0-based.
        pos: usize,
    },
    /// A `/`, which would add a path segment to the SPIFFE ID.
    Slash {
        /// Its character position, 0-based.
        pos: usize,
    },
    /// Any other character outside the allowed set.
    Disallowed {
        /// The character.
        ch: char,
        /// Its character position, 0-based.
        pos: usize,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// An uppercase letter in a DNS-style name.
    Uppercase {
        /// The character.
        ch: char,
        /// Its character position, 0-based.
        pos: usize,
    },
    /// Starts with a character that may not start it.
    BadStart {
        /// The character.
        ch: char,
    },
    /// A DNS label that is empty (`a..b`, a leading or trailing dot).
    EmptyLabel,
    /// A DNS label longer than 63 characters.
    LongLabel {
        /// The label.
        label: String,
    },
    /// A DNS label starting or ending with `-`.
    LabelHyphen {
        /// The label.
        label: String,
    },
    /// Not a string (not valid UTF-8 or not a string type), in a certificate.
    NotAString,
    /// The same role twice.
    Duplicate {
        /// The repeated value.
        value: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("is empty"),
            Problem::TooLong { len, max } => {
                write!(f, "is {len} characters long; the limit is {max}")
            }
            Problem::Control { ch, pos } => {
                let esc = if *ch == '\u{1b}' {
                    ", an ANSI escape"
                } else {
                    ""
                };
                write!(
                    f,
                    "contains a control character ({}{esc}) at position {pos}",
                    ch.escape_debug()
                )
            }
            Problem::Slash { pos } => write!(
                f,
                "contains '/' at position {pos}; it would add a segment to the SPIFFE ID"
            ),
            Problem::Disallowed { ch, pos, allowed } => write!(
                f,
                "contains '{}' at position {pos}; allowed characters are {allowed}",
                ch.escape_debug()
            ),
            Problem::Uppercase { ch, pos } => {
                write!(
                    f,
                    "contains uppercase '{ch}' at position {pos}; use lowercase"
                )
            }
            Problem::BadStart { ch } => write!(f, "must not start with '{ch}'"),
            Problem::EmptyLabel => {
                f.write_str("has an empty label (leading, trailing or double dot)")
            }
            Problem::LongLabel { label } => write!(
                f,
                "has a label longer than {MAX_LABEL_LEN} characters ({label})"
            ),
            Problem::LabelHyphen { label } => {
                write!(f, "has a label starting or ending with '-' ({label})")
            }
            Problem::NotAString => f.write_str("is not a valid string"),
            Problem::Duplicate { value } => write!(f, "lists {value:?} twice"),
        }
    }
}

const NAME_ALLOWED: &str = "A-Z a-z 0-9 . _ -";
const DOMAIN_ALLOWED: &str = "a-z 0-9 - .";

fn err(field: &'static str, problem: Problem) -> NameError {
    NameError { field, problem }
}

/// Check one character for the things every field refuses first: control characters and `/`.
fn common(field: &'static str, pos: usize, ch: char) -> Result<(), NameError> {
    if ch.is_control() {
        return Err(err(field, Problem::Control { ch, pos }));
    }
    if ch == '/' {
        return Err(err(field, Problem::Slash { pos }));
    }
    Ok(())
}

fn safe_token(field: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(err(field, Problem::Empty));
    }
    for (pos, ch) in s.chars().enumerate() {
        common(field, pos, ch)?;
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')) {
            return Err(err(
                field,
                Problem::Disallowed {
                    ch,
                    pos,
                    allowed: NAME_ALLOWED,
                },
            ));
        }
    }
    if s.len() > MAX_NAME_LEN {
        return Err(err(
            field,
            Problem::TooLong {
                len: s.len(),
                max: MAX_NAME_LEN,
            },
        ));
    }
    if let Some(ch @ ('.' | '-')) = s.chars().next() {
        return Err(err(field, Problem::BadStart { ch }));
    }
    Ok(())
}

/// Check a person's or gateway's name (the last segment of the SPIFFE ID, and the CN).
pub fn check_name(s: &str) -> Result<(), NameError> {
    safe_token("name", s)
}

/// Check an organisation (the subject O).
pub fn check_org(s: &str) -> Result<(), NameError> {
    safe_token("org", s)
}

/// Check one role.
pub fn check_role(s: &str) -> Result<(), NameError> {
    safe_token("role", s)
}

/// Check a role list: each role safe, none twice, and the comma-joined list (stored in the
/// subject OU) at most 64 characters.
pub fn check_roles(roles: &[String]) -> Result<(), NameError> {
    for (i, role) in roles.iter().enumerate() {
        check_role(role)?;
        if roles.iter().take(i).any(|r| r == role) {
            return Err(err(
                "roles",
                Problem::Duplicate {
                    value: role.clone(),
                },
            ));
        }
    }
    let joined = roles.iter().map(String::len).sum::<usize>() + roles.len().saturating_sub(1);
    if joined > MAX_NAME_LEN {
        return Err(err(
            "roles",
            Problem::TooLong {
                len: joined,
                max: MAX_NAME_LEN,
            },
        ));
    }
    Ok(())
}

fn dns_like(field: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(err(field, Problem::Empty));
    }
    for (pos, ch) in s.chars().enumerate() {
        common(field, pos, ch)?;
        if ch.is_ascii_uppercase() {
            return Err(err(field, Problem::Uppercase { ch, pos }));
        }
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '-' | '.')) {
            return Err(err(
                field,
                Problem::Disallowed {
                    ch,
                    pos,
                    allowed: DOMAIN_ALLOWED,
                },
            ));
        }
    }
    if s.len() > MAX_DOMAIN_LEN {
        return Err(err(
            field,
            Problem::TooLong {
                len: s.len(),
                max: MAX_DOMAIN_LEN,
            },
        ));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(err(field, Problem::EmptyLabel));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(err(
                field,
                Problem::LongLabel {
                    label: label.to_owned(),
                },
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err(
                field,
                Problem::LabelHyphen {
                    label: label.to_owned(),
                },
            ));
        }
    }
    Ok(())
}

/// Check a trust domain (the SPIFFE ID's authority, e.g. `ward.dev`, `hospital.example`).
pub fn check_trust_domain(s: &str) -> Result<(), NameError> {
    dns_like("trust domain", s)
}

/// Check a DNS name for a gateway certificate's DNS SAN (no wildcards).
pub fn check_dns_name(s: &str) -> Result<(), NameError> {
    dns_like("dns name", s)
}

/// Escape a string from a certificate or a peer for display: control characters (and so ANSI
/// escapes) become visible `\u{..}` sequences.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn name_rules_table() {
        let long = "a".repeat(65);
        let table: &[(&str, Option<&str>)] = &[
            ("jdoe", None),
            ("j.doe_2-x", None),
            ("_svc", None),
            (&"a".repeat(64), None),
            ("", Some("name is empty")),
            (&long, Some("name is 65 characters long; the limit is 64")),
            (
                "jdoe\nx",
                Some("name contains a control character (\\n) at position 4"),
            ),
            (
                "jd\u{1b}[31m",
                Some("name contains a control character (\\u{1b}, an ANSI escape) at position 2"),
            ),
            ("a/b", Some("name contains '/' at position 1")),
            (
                "a b",
                Some("name contains ' ' at position 1; allowed characters are A-Z a-z 0-9 . _ -"),
            ),
            ("jöe", Some("name contains 'ö' at position 1")),
            (".hidden", Some("name must not start with '.'")),
            ("-rf", Some("name must not start with '-'")),
            ("a\u{0}", Some("control character (\\0) at position 1")),
        ];
        for (input, want) in table {
            match (check_name(input), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, wanted {want:?}"),
            }
        }
        assert!(check_org("Acme Corp")
            .unwrap_err()
            .to_string()
            .starts_with("org contains ' '"));
    }

    #[test]
    fn roles_rules() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_roles(&r(&[])).unwrap();
        check_roles(&r(&["biomed", "oncall"])).unwrap();
        let e = check_roles(&r(&["biomed", "biomed"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "roles lists \"biomed\" twice");
        let e = check_roles(&r(&["ok", "x,y"])).unwrap_err().to_string();
        assert!(e.starts_with("role contains ','"), "{e}");
        let e = check_roles(&r(&[&"a".repeat(40), &"b".repeat(30)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("roles is 71 characters long; the limit is 64"),
            "{e}"
        );
    }

    #[test]
    fn trust_domain_rules_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("ward.dev", None),
            ("localhost", None),
            ("hospital-1.example.org", None),
            ("Ward.dev", Some("uppercase 'W' at position 0")),
            ("ward..dev", Some("empty label")),
            (".ward.dev", Some("empty label")),
            ("-ward.dev", Some("starting or ending with '-'")),
            ("ward.dev:443", Some("contains ':' at position 8")),
            ("ward.dev/x", Some("contains '/' at position 8")),
            ("ward\tdev", Some("control character (\\t) at position 4")),
            ("", Some("trust domain is empty")),
        ];
        for (input, want) in table {
            match (check_trust_domain(input), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, wanted {want:?}"),
            }
        }
        let long_label = format!("{}.dev", "a".repeat(64));
        assert!(check_trust_domain(&long_label).is_err());
    }

    #[test]
    fn printable_escapes_controls() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("plain"), "plain");
    }

    proptest! {
        #[test]
        fn accepted_names_are_safe(s in "\\PC{0,70}|[ -~]{0,70}") {
            if check_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= 64);
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                prop_assert!(!s.starts_with('.') && !s.starts_with('-'));
            }
        }
    }
}
