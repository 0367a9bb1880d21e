//! Peer input checked before anything else touches it (security case: log injection).

use ward_core::device::{DeviceId, MAX_NAME_LEN};
use ward_core::escape::escape_prefix;

/// Refuses a requested device id that could not be a configured one, with a sentence naming the
/// rule; nothing of a refused id reaches a log or an answer unescaped (and at most 64 characters
/// of it).
pub fn check_requested_device(device: &str) -> Result<(), String> {
    if DeviceId::new(device).is_ok() {
        return Ok(());
    }
    let len = device.chars().count();
    Err(if len > MAX_NAME_LEN {
        format!(
            "device id refused: it is {len} characters long and the limit is {MAX_NAME_LEN} (A-Z a-z 0-9 . _ -)"
        )
    } else {
        format!(
            "device id \"{}\" refused: a device id is 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
            escape_prefix(device, MAX_NAME_LEN)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_are_refused_escaped() {
        let e = check_requested_device("pump\x1b]0;T\x07-12\nFAKE line").unwrap_err();
        assert!(!e.chars().any(char::is_control), "{e}");
        assert!(e.contains("\\x1b]0;T\\x07-12\\nFAKE line"), "{e}");
        let e = check_requested_device(&"p".repeat(5000)).unwrap_err();
        assert!(
            e.contains("5000 characters") && e.contains("limit is 64"),
            "{e}"
        );
        assert!(e.len() < 200);
        assert!(check_requested_device("pump-12").is_ok());
    }
}
