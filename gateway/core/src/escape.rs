//! Peer-controlled text made safe for logs and terminals (security case: log injection).
//!
//! Device ids, names, reasons and error texts that came from a peer may hold terminal escape
//! sequences (`ESC ] 0 ; … BEL` retitles a terminal, `ESC [ 2 J` clears it) or line breaks that
//! forge a log line. [`Escaped`] writes every control character as a visible escape instead.

use std::fmt::{self, Write};

/// Displays its text with every control character escaped: C0 (including `\n`, `\r`, `\t`), DEL,
/// C1, and the Unicode bidirectional overrides, as `\x1b`, `\n`, `\u{202e}`… A backslash is
/// doubled, so an escaped text cannot pass for an escape it does not hold.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if u32::from(c) < 0x100 && needs_escape(c) => {
                    write!(f, "\\x{:02x}", u32::from(c))?
                }
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// [`Escaped`] as a `String`.
pub fn escape(text: &str) -> String {
    Escaped(text).to_string()
}

/// At most `max` characters of `text`, escaped, with `…` when cut: for echoing a refused value.
pub fn escape_prefix(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    let more = cut.len() < text.len();
    cut = escape(&cut);
    if more {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let s = escape("pump\x1b]0;T\x07-12\nFAKE line\u{9b}\u{7f}\u{202e}\\");
        assert_eq!(
            s,
            "pump\\x1b]0;T\\x07-12\\nFAKE line\\x9b\\x7f\\u{202e}\\\\"
        );
        assert!(!s.chars().any(needs_escape));
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(escape("acme/jdoe pump-12 é"), "acme/jdoe pump-12 é");
    }

    #[test]
    fn prefix_is_bounded() {
        let long = "x".repeat(5000);
        assert_eq!(escape_prefix(&long, 10), "xxxxxxxxxx…");
        assert_eq!(escape_prefix("ab", 10), "ab");
    }
}
