//! "Did you mean": the closest known names to a typo (e.g. `ward lock --device pump-l2`).

/// Levenshtein distance between `a` and `b`, in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        if let Some(first) = cur.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(usize::MAX / 2) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(usize::MAX / 2) + 1;
            let ins = cur.get(j).copied().unwrap_or(usize::MAX / 2) + 1;
            if let Some(slot) = cur.get_mut(j + 1) {
                *slot = sub.min(del).min(ins);
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// Up to `max` of `known` closest to `wanted` (case-insensitive), nearest first, within a third
/// of `wanted`'s length (at least 2 edits); names equal ignoring case come first.
pub fn closest<'a>(
    wanted: &str,
    known: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Vec<String> {
    let w = wanted.to_lowercase();
    let limit = (w.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(&w, &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(max)
        .map(|(_, k)| k.to_owned())
        .collect()
}

/// Names a lock can match, as the gateway knows them now.
#[derive(Debug, Clone, Default)]
pub struct KnownNames {
    /// Configured device ids.
    pub devices: Vec<String>,
    /// Organisations named in rules, approval policies, users, grants and live sessions.
    pub orgs: Vec<String>,
    /// Principals as a lock names them: `name`, `org/name` or a live certificate's serial.
    pub principals: Vec<String>,
}

/// Longest lock target Ward accepts (an org, principal name or serial).
pub const MAX_TARGET_LEN: usize = 128;

/// Why a lock target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a name at all: empty, too long, control characters, or not a device id's syntax.
    #[error("{what} \"{shown}\" is not valid: {why}")]
    Invalid {
        /// `device`, `org`, `principal`.
        what: &'static str,
        /// The target, escaped and cut to 64 characters.
        shown: String,
        /// What a valid one looks like.
        why: String,
    },
    /// Well-formed but matching nothing the gateway knows; `--force` locks it anyway.
    #[error("no {what} \"{shown}\" is known to this gateway{}; nothing was locked (use --force to lock a {what} that has not connected yet)", did_you_mean(.suggestions))]
    Unknown {
        /// `device`, `org`, `principal`.
        what: &'static str,
        /// The target, escaped.
        shown: String,
        /// The closest known names.
        suggestions: Vec<String>,
    },
}

fn did_you_mean(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", s.join(", "))
    }
}

/// Whether a lock on `target` matches something in `known`. An invalid target is refused even
/// with `force`; an unknown one only without it.
pub fn check_lock_target(
    target: &crate::policy::LockTarget,
    known: &KnownNames,
    force: bool,
) -> Result<(), TargetError> {
    use crate::policy::LockTarget as T;
    let (what, text, names) = match target {
        T::Device(d) => ("device", d, &known.devices),
        T::Org(o) => ("org", o, &known.orgs),
        T::Principal(p) => ("principal", p, &known.principals),
    };
    let shown = crate::escape::escape_prefix(text, 64);
    let invalid = |why: String| TargetError::Invalid {
        what,
        shown: shown.clone(),
        why,
    };
    if let T::Device(d) = target {
        crate::device::DeviceId::new(d).map_err(|_| {
            let why = format!("a device id is 1-{} characters from A-Z a-z 0-9 . _ - starting with a letter or digit", crate::device::MAX_NAME_LEN);
            let mut e = invalid(why);
            if let TargetError::Invalid { why, .. } = &mut e {
                why.push_str(&did_you_mean(&closest(d, names.iter().map(String::as_str), 3)));
            }
            e
        })?;
    }
    if text.is_empty()
        || text.chars().count() > MAX_TARGET_LEN
        || text.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "use 1-{MAX_TARGET_LEN} characters without control characters"
        )));
    }
    if force || names.iter().any(|n| n == text) {
        return Ok(());
    }
    Err(TargetError::Unknown {
        what,
        shown,
        suggestions: closest(text, names.iter().map(String::as_str), 3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LockTarget;

    fn known() -> KnownNames {
        KnownNames {
            devices: vec!["pump-12".into(), "pump-14".into(), "mri-1".into()],
            orgs: vec!["acme".into(), "globex".into()],
            principals: vec!["jdoe".into(), "acme/jdoe".into()],
        }
    }

    #[test]
    fn typo_locks_are_refused_with_suggestions() {
        let k = known();
        let e = check_lock_target(&LockTarget::Device("pump-l2".into()), &k, false).unwrap_err();
        assert!(
            e.to_string().contains("did you mean pump-12, pump-14?"),
            "{e}"
        );
        let e = check_lock_target(&LockTarget::Org("acmee".into()), &k, false).unwrap_err();
        assert!(e.to_string().contains("did you mean acme?"), "{e}");
        let e = check_lock_target(&LockTarget::Device("../../x".into()), &k, true).unwrap_err();
        assert!(matches!(e, TargetError::Invalid { .. }), "{e}");
        let e =
            check_lock_target(&LockTarget::Principal("jdoe\n\x1b".into()), &k, false).unwrap_err();
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }

    #[test]
    fn known_or_forced_targets_pass() {
        let k = known();
        assert!(check_lock_target(&LockTarget::Device("pump-12".into()), &k, false).is_ok());
        assert!(check_lock_target(&LockTarget::Principal("acme/jdoe".into()), &k, false).is_ok());
        assert!(check_lock_target(&LockTarget::Principal("newvendor".into()), &k, true).is_ok());
        assert!(check_lock_target(&LockTarget::Principal("newvendor".into()), &k, false).is_err());
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("pump-l2", "pump-12"), 1);
        assert_eq!(edit_distance("acmee", "acme"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn typos_find_their_names() {
        let known = ["pump-12", "pump-14", "mri-1"];
        assert_eq!(closest("pump-l2", known, 3), vec!["pump-12", "pump-14"]);
        assert_eq!(closest("acmee", ["acme", "globex"], 3), vec!["acme"]);
        assert!(closest("../../x", known, 3).is_empty());
    }
}
