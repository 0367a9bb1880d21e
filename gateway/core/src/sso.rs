//! Sign-in with the hospital's OpenID provider, the pure part: a verified ID token's claims are
//! mapped to Ward's principal (name, kind, org, roles) by a provider's `[[oidc.map]]` rules, and
//! the IdP's proof of MFA (`amr`, `acr`) is checked. No I/O: the gateway verifies the token
//! (signature, issuer, audience, expiry, nonce) and hands the claims here.
//!
//! Rules apply in file order: the first matching rule that sets `kind` gives the kind, the
//! first that sets `org` gives the org, and every matching rule's `roles` accumulate. A claim
//! matches a rule's `value` when it is that string, or an array holding it (`groups`); a
//! `claim` with dots (`realm_access.roles`) reads nested objects when no top-level claim has
//! that exact name.

use serde_json::{Map, Value};

use crate::principal::PrincipalKind;

/// Longest claim name, claim value or `amr`/`acr` value in the config.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest name, org or role (as Ward's CA takes them).
pub const MAX_NAME_LEN: usize = 64;

/// One `[[oidc.map]]` rule: when `claim` holds `value`, the principal gets `kind`, `org`,
/// `roles` (each optional, at least one set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    /// The claim's name (or a dotted path into nested objects).
    pub claim: String,
    /// The value it must be, or that its array must hold.
    pub value: String,
    /// The kind given (the first matching rule with a kind wins).
    pub kind: Option<PrincipalKind>,
    /// The org given (the first matching rule with an org wins).
    pub org: Option<String>,
    /// Roles added.
    pub roles: Vec<String>,
}

/// Who the claims map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The Ward user name (from the provider's `username_claim`).
    pub name: String,
    /// The kind.
    pub kind: PrincipalKind,
    /// The organisation.
    pub org: Option<String>,
    /// The roles, in rule order, each once.
    pub roles: Vec<String>,
    /// The indexes of the rules that matched (for the audit log).
    pub rules: Vec<usize>,
}

/// Why a sign-in through the IdP is refused. The text is shown to the person and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoRefusal {
    /// The ID token has no usable user name claim.
    #[error("the identity provider sent no {claim:?} claim to name you in Ward: ask an admin to set username_claim of this provider to a claim your account has")]
    NoUsername {
        /// The claim looked for.
        claim: String,
    },
    /// The user name claim is not a name Ward can use.
    #[error("the identity provider's {claim:?} claim {value:?} is not a Ward user name (1 to 64 of A-Z a-z 0-9 . _ -): ask an admin to set username_claim to another claim")]
    BadUsername {
        /// The claim.
        claim: String,
        /// Its value.
        value: String,
    },
    /// No `[[oidc.map]]` rule matched the claims.
    #[error("{name} is known to the identity provider but matches no [[oidc.map]] rule of this provider, so Ward does not know your kind: ask an admin to map one of your groups")]
    NoRuleMatched {
        /// The user name.
        name: String,
    },
    /// Rules matched, but none gave a kind.
    #[error("the [[oidc.map]] rules matching {name} give no kind (vendor, clinician, security or admin): ask an admin to map one of your groups to a kind")]
    NoKind {
        /// The user name.
        name: String,
    },
    /// A vendor needs an org.
    #[error("{name} maps to a vendor without an org: ask an admin to give the matching [[oidc.map]] rule an org")]
    VendorWithoutOrg {
        /// The user name.
        name: String,
    },
    /// The roles do not fit in a certificate.
    #[error("the roles mapped for {name} are longer than 64 characters together: ask an admin to map fewer roles")]
    TooManyRoles {
        /// The user name.
        name: String,
    },
    /// `amr` lacks a required method.
    #[error("the identity provider did not report {missing:?} among the authentication methods (amr {got:?}): sign in again with multi-factor authentication at your identity provider")]
    AmrMissing {
        /// The required methods that are missing.
        missing: Vec<String>,
        /// What the token carried.
        got: Vec<String>,
    },
    /// `acr` is not one of the accepted ones.
    #[error("the identity provider reported authentication context {got:?}, but this provider requires one of {want:?}: sign in again with a stronger method at your identity provider")]
    AcrNotAccepted {
        /// What the token carried (`None`: no `acr`).
        got: Option<String>,
        /// What is accepted.
        want: Vec<String>,
    },
}

/// A claim's value: the top-level claim `name`, else a dotted path into nested objects.
pub fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// Whether claim `name` is `value`, or an array holding it. Numbers and booleans compare by
/// their JSON text (`"true"`, `"42"`).
pub fn claim_holds(claims: &Map<String, Value>, name: &str, value: &str) -> bool {
    fn is(v: &Value, want: &str) -> bool {
        match v {
            Value::String(s) => s == want,
            Value::Bool(b) => want == if *b { "true" } else { "false" },
            Value::Number(n) => n.to_string() == want,
            _ => false,
        }
    }
    match claim(claims, name) {
        Some(Value::Array(items)) => items.iter().any(|v| is(v, value)),
        Some(v) => is(v, value),
        None => false,
    }
}

/// Maps verified claims to a principal: the name from `username_claim`, kind/org/roles from
/// `rules`.
pub fn map_claims(
    claims: &Map<String, Value>,
    username_claim: &str,
    rules: &[ClaimRule],
) -> Result<Mapped, SsoRefusal> {
    let name = match claim(claims, username_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(SsoRefusal::NoUsername {
                claim: username_claim.to_owned(),
            })
        }
    };
    if !is_safe_name(&name) {
        return Err(SsoRefusal::BadUsername {
            claim: username_claim.to_owned(),
            value: name.chars().take(80).collect(),
        });
    }
    let mut kind = None;
    let mut org = None;
    let mut roles: Vec<String> = Vec::new();
    let mut matched = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !claim_holds(claims, &r.claim, &r.value) {
            continue;
        }
        matched.push(i);
        if kind.is_none() {
            kind = r.kind;
        }
        if org.is_none() {
            org.clone_from(&r.org);
        }
        for role in &r.roles {
            if !roles.contains(role) {
                roles.push(role.clone());
            }
        }
    }
    if matched.is_empty() {
        return Err(SsoRefusal::NoRuleMatched { name });
    }
    let Some(kind) = kind else {
        return Err(SsoRefusal::NoKind { name });
    };
    if kind == PrincipalKind::Vendor && org.is_none() {
        return Err(SsoRefusal::VendorWithoutOrg { name });
    }
    let joined = roles.iter().map(String::len).sum::<usize>() + roles.len().saturating_sub(1);
    if joined > MAX_NAME_LEN {
        return Err(SsoRefusal::TooManyRoles { name });
    }
    Ok(Mapped {
        name,
        kind,
        org,
        roles,
        rules: matched,
    })
}

/// Checks the IdP's proof of MFA: every `require_amr` method in the `amr` claim, and the
/// `acr` claim one of `require_acr` (when that is not empty).
pub fn check_mfa(
    claims: &Map<String, Value>,
    require_amr: &[String],
    require_acr: &[String],
) -> Result<(), SsoRefusal> {
    let amr: Vec<String> = match claims.get("amr") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let missing: Vec<String> = require_amr
        .iter()
        .filter(|m| !amr.contains(m))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(SsoRefusal::AmrMissing { missing, got: amr });
    }
    if !require_acr.is_empty() {
        let got = claims.get("acr").and_then(Value::as_str);
        if !got.is_some_and(|a| require_acr.iter().any(|w| w == a)) {
            return Err(SsoRefusal::AcrNotAccepted {
                got: got.map(|g| g.chars().take(80).collect()),
                want: require_acr.to_vec(),
            });
        }
    }
    Ok(())
}

/// A user name, org or role as Ward's CA takes them: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['.', '-'])
}

/// Whether `s` may be a claim name, claim value, `amr` or `acr` in the config: 1 to
/// [`MAX_TOKEN_LEN`] bytes, none a control character.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOKEN_LEN && !s.chars().any(char::is_control)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn rule(
        claim: &str,
        value: &str,
        kind: Option<PrincipalKind>,
        org: Option<&str>,
        roles: &[&str],
    ) -> ClaimRule {
        ClaimRule {
            claim: claim.into(),
            value: value.into(),
            kind,
            org: org.map(Into::into),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn rules() -> Vec<ClaimRule> {
        vec![
            rule(
                "groups",
                "icu-nurses",
                Some(PrincipalKind::Clinician),
                Some("st-mary"),
                &["icu"],
            ),
            rule(
                "groups",
                "acme-field",
                Some(PrincipalKind::Vendor),
                Some("acme"),
                &["field"],
            ),
            rule("groups", "oncall", None, None, &["oncall"]),
            rule(
                "groups",
                "icu-leads",
                Some(PrincipalKind::Security),
                None,
                &["icu", "lead"],
            ),
            rule(
                "realm_access.roles",
                "soc",
                Some(PrincipalKind::Security),
                None,
                &["soc"],
            ),
            rule("email_verified", "true", None, None, &["verified"]),
        ]
    }

    #[test]
    fn first_match_gives_kind_and_org_roles_accumulate() {
        let c = claims(
            json!({"preferred_username": "alice", "groups": ["oncall", "icu-nurses", "icu-leads"]}),
        );
        let m = map_claims(&c, "preferred_username", &rules()).unwrap();
        assert_eq!(m.name, "alice");
        assert_eq!(
            m.kind,
            PrincipalKind::Clinician,
            "the first rule with a kind wins"
        );
        assert_eq!(m.org.as_deref(), Some("st-mary"));
        assert_eq!(
            m.roles,
            vec!["icu", "oncall", "lead"],
            "roles accumulate once each"
        );
        assert_eq!(m.rules, vec![0, 2, 3]);
    }

    #[test]
    fn scalar_nested_and_boolean_claims_match() {
        let c = claims(json!({"sub": "x", "preferred_username": "bob", "groups": "acme-field"}));
        let m = map_claims(&c, "preferred_username", &rules()).unwrap();
        assert_eq!(
            (m.kind, m.org.as_deref()),
            (PrincipalKind::Vendor, Some("acme"))
        );
        let c = claims(
            json!({"preferred_username": "sam", "realm_access": {"roles": ["soc"]}, "email_verified": true}),
        );
        let m = map_claims(&c, "preferred_username", &rules()).unwrap();
        assert_eq!(m.kind, PrincipalKind::Security);
        assert_eq!(m.roles, vec!["soc", "verified"]);
        // A nested path never matches a number or an object by accident.
        let c = claims(json!({"preferred_username": "sam", "realm_access": {"roles": {"soc": 1}}}));
        assert!(matches!(
            map_claims(&c, "preferred_username", &rules()),
            Err(SsoRefusal::NoRuleMatched { .. })
        ));
    }

    #[test]
    fn refusals_say_why() {
        let r = rules();
        type Case = (Value, &'static str, fn(&SsoRefusal) -> bool);
        let table: Vec<Case> = vec![
            (
                json!({"groups": ["icu-nurses"]}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoUsername { .. }),
            ),
            (
                json!({"preferred_username": "", "groups": ["icu-nurses"]}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoUsername { .. }),
            ),
            (
                json!({"preferred_username": 7}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoUsername { .. }),
            ),
            (
                json!({"email": "a@b.org", "groups": ["icu-nurses"]}),
                "email",
                |e| matches!(e, SsoRefusal::BadUsername { .. }),
            ),
            (
                json!({"preferred_username": "../x", "groups": ["icu-nurses"]}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::BadUsername { .. }),
            ),
            (
                json!({"preferred_username": "eve", "groups": ["visitors"]}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoRuleMatched { .. }),
            ),
            (
                json!({"preferred_username": "eve"}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoRuleMatched { .. }),
            ),
            (
                json!({"preferred_username": "eve", "groups": ["oncall"]}),
                "preferred_username",
                |e| matches!(e, SsoRefusal::NoKind { .. }),
            ),
        ];
        for (i, (c, claim, want)) in table.into_iter().enumerate() {
            let e = map_claims(&claims(c), claim, &r).unwrap_err();
            assert!(want(&e), "{i}: {e:?}");
            assert!(e.to_string().contains("ask an admin"), "{i}: {e}");
        }
        let vendor = vec![rule("groups", "v", Some(PrincipalKind::Vendor), None, &[])];
        let e = map_claims(
            &claims(json!({"preferred_username": "v1", "groups": ["v"]})),
            "preferred_username",
            &vendor,
        )
        .unwrap_err();
        assert!(matches!(e, SsoRefusal::VendorWithoutOrg { .. }), "{e:?}");
        let long: Vec<String> = (0..10).map(|i| format!("role-number-{i}")).collect();
        let many = vec![ClaimRule {
            roles: long,
            ..rule("groups", "g", Some(PrincipalKind::Clinician), None, &[])
        }];
        let e = map_claims(
            &claims(json!({"preferred_username": "c", "groups": ["g"]})),
            "preferred_username",
            &many,
        )
        .unwrap_err();
        assert!(matches!(e, SsoRefusal::TooManyRoles { .. }), "{e:?}");
    }

    #[test]
    fn mfa_is_proven_by_amr_and_acr() {
        let amr = vec!["mfa".to_owned()];
        assert!(check_mfa(&claims(json!({"amr": ["pwd", "mfa"]})), &amr, &[]).is_ok());
        assert!(check_mfa(&claims(json!({"amr": "mfa"})), &amr, &[]).is_ok());
        for c in [
            json!({"amr": ["pwd"]}),
            json!({}),
            json!({"amr": [1, {"mfa": 1}]}),
            json!({"amr": ["MFA"]}),
        ] {
            let e = check_mfa(&claims(c.clone()), &amr, &[]).unwrap_err();
            assert!(matches!(e, SsoRefusal::AmrMissing { .. }), "{c}: {e:?}");
            assert!(e.to_string().contains("multi-factor"), "{e}");
        }
        let two = vec!["pwd".to_owned(), "otp".to_owned()];
        assert!(check_mfa(&claims(json!({"amr": ["otp", "pwd"]})), &two, &[]).is_ok());
        assert!(check_mfa(&claims(json!({"amr": ["otp"]})), &two, &[]).is_err());
        let acr = vec![
            "urn:hospital:loa:2".to_owned(),
            "urn:hospital:loa:3".to_owned(),
        ];
        assert!(check_mfa(&claims(json!({"acr": "urn:hospital:loa:3"})), &[], &acr).is_ok());
        for c in [
            json!({"acr": "urn:hospital:loa:1"}),
            json!({}),
            json!({"acr": ["urn:hospital:loa:3"]}),
        ] {
            let e = check_mfa(&claims(c.clone()), &[], &acr).unwrap_err();
            assert!(matches!(e, SsoRefusal::AcrNotAccepted { .. }), "{c}: {e:?}");
        }
        // Both configured: both must hold.
        assert!(check_mfa(
            &claims(json!({"amr": ["mfa"], "acr": "urn:hospital:loa:1"})),
            &amr,
            &acr
        )
        .is_err());
        assert!(check_mfa(
            &claims(json!({"amr": ["mfa"], "acr": "urn:hospital:loa:2"})),
            &amr,
            &acr
        )
        .is_ok());
        // Nothing required (mfa = "ward"): nothing checked.
        assert!(check_mfa(&claims(json!({})), &[], &[]).is_ok());
    }

    #[test]
    fn names() {
        for ok in ["alice", "a.b-c_d", "A1", &"x".repeat(64)] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a b", "a@b", "é", &"x".repeat(65)] {
            assert!(!is_safe_name(bad), "{bad}");
        }
    }
}
