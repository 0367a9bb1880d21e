//! `[[oidc]]`: the hospital's OpenID providers the web console (and `ward login --sso`) signs in
//! with (docs/web.md, "Sign-in with the hospital's identity provider"). Parsed into
//! [`OidcProvider`]s; the claim mapping they carry is applied by [`crate::sso`].

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx};
use crate::principal::PrincipalKind;
use crate::sso::{is_token, ClaimRule, MAX_TOKEN_LEN};

/// Most `[[oidc]]` providers (each is a button on the sign-in page).
pub const MAX_PROVIDERS: usize = 16;
/// Most `[[oidc.map]]` rules of one provider.
pub const MAX_RULES: usize = 256;

/// How a provider's sign-in proves a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SsoMfa {
    /// The IdP's own MFA, proven by the ID token's `amr`/`acr` (`require_amr`, `require_acr`).
    #[default]
    Idp,
    /// Ward's own TOTP of the Ward user with the same name, asked after the IdP.
    Ward,
}

/// One `[[oidc]]` table: an OpenID provider, its client registration and its claim rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// The id in URLs (`/api/v1/sso/<name>/start`), `[a-z0-9-]`.
    pub name: String,
    /// The button's text ("Sign in with <display>").
    pub display: String,
    /// The issuer URL (`https://…`, or `http://` on a loopback address only), without a
    /// trailing `/`; its `/.well-known/openid-configuration` is read at the first sign-in.
    pub issuer: String,
    /// Ward's client id at the IdP.
    pub client_id: String,
    /// The file holding the client secret (read at each sign-in, trimmed; keep it 0600).
    pub client_secret_file: PathBuf,
    /// Where the IdP sends the browser back: `https://<console>/api/v1/sso/callback`,
    /// registered at the IdP.
    pub redirect_url: String,
    /// Scopes asked for; always contains `openid` (default `openid profile email`).
    pub scopes: Vec<String>,
    /// A PEM file of the CAs the IdP's certificate chains to (default: the public web roots).
    pub ca_file: Option<PathBuf>,
    /// The claim that names the Ward user (default `preferred_username`).
    pub username_claim: String,
    /// Where the second factor comes from.
    pub mfa: SsoMfa,
    /// With `mfa = "idp"`: every one of these must be in the ID token's `amr` (default
    /// `["mfa"]` when neither this nor `require_acr` is set).
    pub require_amr: Vec<String>,
    /// With `mfa = "idp"`: the ID token's `acr` must be one of these (empty: not checked).
    pub require_acr: Vec<String>,
    /// `[[oidc.map]]`, in file order.
    pub map: Vec<ClaimRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    name: Spanned<String>,
    display: Option<Spanned<String>>,
    issuer: Spanned<String>,
    client_id: Spanned<String>,
    client_secret_file: Spanned<PathBuf>,
    redirect_url: Spanned<String>,
    scopes: Option<Spanned<Vec<String>>>,
    ca_file: Option<Spanned<PathBuf>>,
    username_claim: Option<Spanned<String>>,
    mfa: Option<Spanned<String>>,
    require_amr: Option<Spanned<Vec<String>>>,
    require_acr: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    map: Vec<Spanned<RawMap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMap {
    claim: Spanned<String>,
    value: Spanned<String>,
    kind: Option<Spanned<String>>,
    org: Option<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
}

/// Whether `url` is `https://…`, or `http://` to a loopback host; the host part (for errors).
pub(super) fn url_ok(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL: expected https://host[:port]/path"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host (or has user info)"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{url:?} must not carry a query or fragment"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains whitespace"));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{url:?} is plain http: use https (plain http is accepted only on a loopback address)"
        )),
        other => Err(format!("{url:?}: scheme {other:?} is not https")),
    }
}

/// `localhost`, `127.x.y.z` or `::1`.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Cx<'_> {
    pub(super) fn oidc(
        &self,
        raw: Vec<Spanned<RawOidc>>,
    ) -> Result<Vec<OidcProvider>, ConfigError> {
        let mut out: Vec<OidcProvider> = Vec::new();
        if let Some(extra) = raw.get(MAX_PROVIDERS) {
            return Err(self.err(
                extra.span(),
                format!("oidc[{MAX_PROVIDERS}]"),
                ConfigErrorKind::Limit(format!("at most {MAX_PROVIDERS} [[oidc]] providers")),
            ));
        }
        for (i, spanned) in raw.into_iter().enumerate() {
            let f = |s: &str| format!("oidc[{i}].{s}");
            let pspan = spanned.span();
            let o = spanned.into_inner();
            let name = o.name.get_ref().clone();
            let good_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !good_name {
                return Err(self.err(
                    o.name.span(),
                    f("name"),
                    ConfigErrorKind::Limit(format!(
                        "{name:?}: a provider's name is its id in URLs: 1 to 32 of a-z, 0-9, -"
                    )),
                ));
            }
            if out.iter().any(|p| p.name == name) {
                return Err(self.err(
                    o.name.span(),
                    f("name"),
                    ConfigErrorKind::Limit(format!("two [[oidc]] providers are named {name:?}")),
                ));
            }
            let dspan = o.display.as_ref().map_or(pspan.clone(), Spanned::span);
            let display = match o.display {
                Some(d) => self.non_empty(d, f("display"))?,
                None => name.clone(),
            };
            if display.chars().count() > 64 || display.chars().any(char::is_control) {
                return Err(self.err(
                    dspan,
                    f("display"),
                    ConfigErrorKind::Limit("at most 64 printable characters".into()),
                ));
            }
            let issuer_span = o.issuer.span();
            let issuer = o.issuer.into_inner();
            url_ok(&issuer).map_err(|why| {
                self.err(
                    issuer_span.clone(),
                    f("issuer"),
                    ConfigErrorKind::Limit(why),
                )
            })?;
            let issuer = issuer.trim_end_matches('/').to_owned();
            let redirect_span = o.redirect_url.span();
            let redirect_url = o.redirect_url.into_inner();
            url_ok(&redirect_url).map_err(|why| {
                self.err(
                    redirect_span.clone(),
                    f("redirect_url"),
                    ConfigErrorKind::Limit(why),
                )
            })?;
            if !redirect_url.ends_with("/api/v1/sso/callback") {
                return Err(self.err(
                    redirect_span,
                    f("redirect_url"),
                    ConfigErrorKind::Limit(format!(
                        "{redirect_url:?} must be the console's https://<host:port>/api/v1/sso/callback (and registered at the IdP)"
                    )),
                ));
            }
            let client_id = self.non_empty(o.client_id, f("client_id"))?;
            let client_secret_file = self.path(o.client_secret_file, &f("client_secret_file"))?;
            let scopes = match o.scopes {
                None => vec!["openid".into(), "profile".into(), "email".into()],
                Some(s) => {
                    let span = s.span();
                    let mut v = s.into_inner();
                    if let Some(bad) = v.iter().find(|s| {
                        s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic())
                    }) {
                        return Err(self.err(
                            span,
                            f("scopes"),
                            ConfigErrorKind::Limit(format!("{bad:?} is not a scope")),
                        ));
                    }
                    if !v.iter().any(|s| s == "openid") {
                        v.insert(0, "openid".into());
                    }
                    v.dedup();
                    v
                }
            };
            let ca_file = o.ca_file.map(|c| self.path(c, &f("ca_file"))).transpose()?;
            let username_claim = match o.username_claim {
                Some(c) => self.non_empty(c, f("username_claim"))?,
                None => "preferred_username".into(),
            };
            let mfa = match o.mfa {
                None => SsoMfa::Idp,
                Some(m) => match m.get_ref().as_str() {
                    "idp" => SsoMfa::Idp,
                    "ward" => SsoMfa::Ward,
                    other => {
                        return Err(self.err(
                            m.span(),
                            f("mfa"),
                            ConfigErrorKind::Limit(format!(
                                "{other:?}: expected \"idp\" (the IdP's MFA, proven by amr/acr) or \"ward\" (Ward's TOTP after the IdP)"
                            )),
                        ))
                    }
                },
            };
            let list = |v: Option<Spanned<Vec<String>>>, field: &str| {
                let Some(v) = v else {
                    return Ok(None);
                };
                let span = v.span();
                let v = v.into_inner();
                match v.iter().find(|s| !is_token(s)) {
                    Some(bad) => Err(self.err(
                        span,
                        f(field),
                        ConfigErrorKind::Limit(format!(
                            "{bad:?}: 1 to {MAX_TOKEN_LEN} printable characters"
                        )),
                    )),
                    None => Ok(Some((v, span))),
                }
            };
            let amr = list(o.require_amr, "require_amr")?;
            let acr = list(o.require_acr, "require_acr")?;
            let (require_amr, require_acr) = match (mfa, amr, acr) {
                (SsoMfa::Idp, None, None) => (vec!["mfa".to_owned()], Vec::new()),
                (SsoMfa::Idp, amr, acr) => {
                    let span = amr
                        .as_ref()
                        .or(acr.as_ref())
                        .map(|(_, s)| s.clone())
                        .unwrap_or_else(|| pspan.clone());
                    let amr = amr.map(|(v, _)| v).unwrap_or_default();
                    let acr = acr.map(|(v, _)| v).unwrap_or_default();
                    if amr.is_empty() && acr.is_empty() {
                        return Err(self.err(
                            span,
                            f("require_amr"),
                            ConfigErrorKind::Limit(
                                "with mfa = \"idp\" the ID token must prove MFA: set require_amr (e.g. [\"mfa\"]) or require_acr, or use mfa = \"ward\" for Ward's own TOTP".into(),
                            ),
                        ));
                    }
                    (amr, acr)
                }
                (SsoMfa::Ward, amr, acr) => (
                    amr.map(|(v, _)| v).unwrap_or_default(),
                    acr.map(|(v, _)| v).unwrap_or_default(),
                ),
            };
            let map = self.oidc_map(o.map, i, pspan)?;
            out.push(OidcProvider {
                name,
                display,
                issuer,
                client_id,
                client_secret_file,
                redirect_url,
                scopes,
                ca_file,
                username_claim,
                mfa,
                require_amr,
                require_acr,
                map,
            });
        }
        Ok(out)
    }

    fn oidc_map(
        &self,
        raw: Vec<Spanned<RawMap>>,
        i: usize,
        pspan: std::ops::Range<usize>,
    ) -> Result<Vec<ClaimRule>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                pspan.clone(),
                format!("oidc[{i}].map"),
                ConfigErrorKind::Limit(
                    "a provider needs [[oidc.map]] rules: without them nobody could sign in".into(),
                ),
            ));
        }
        if let Some(extra) = raw.get(MAX_RULES) {
            return Err(self.err(
                extra.span(),
                format!("oidc[{i}].map[{MAX_RULES}]"),
                ConfigErrorKind::Limit(format!("at most {MAX_RULES} rules")),
            ));
        }
        let mut out = Vec::new();
        for (j, spanned) in raw.into_iter().enumerate() {
            let f = |s: &str| format!("oidc[{i}].map[{j}].{s}");
            let span = spanned.span();
            let m = spanned.into_inner();
            let claim = self.non_empty(m.claim, f("claim"))?;
            let value = m.value.into_inner();
            if !is_token(&claim) || !is_token(&value) {
                return Err(self.err(
                    span,
                    f("value"),
                    ConfigErrorKind::Limit(format!(
                        "claim and value: 1 to {MAX_TOKEN_LEN} printable characters"
                    )),
                ));
            }
            let kind = match m.kind {
                None => None,
                Some(k) => {
                    let kind = k
                        .get_ref()
                        .parse::<PrincipalKind>()
                        .map_err(|e| self.err(k.span(), f("kind"), e))?;
                    if kind == PrincipalKind::Gateway {
                        return Err(self.err(
                            k.span(),
                            f("kind"),
                            ConfigErrorKind::Limit(
                                "a person signs in with SSO: kind is vendor, clinician, security or admin".into(),
                            ),
                        ));
                    }
                    Some(kind)
                }
            };
            let org = match m.org {
                None => None,
                Some(o) => {
                    let span = o.span();
                    let o = o.into_inner();
                    if !crate::sso::is_safe_name(&o) {
                        return Err(self.err(
                            span,
                            f("org"),
                            ConfigErrorKind::Limit(format!(
                                "{o:?}: an org is 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)"
                            )),
                        ));
                    }
                    Some(o)
                }
            };
            let mut roles = Vec::new();
            for r in m.roles {
                let span = r.span();
                let r = r.into_inner();
                if !crate::sso::is_safe_name(&r) {
                    return Err(self.err(
                        span,
                        f("roles"),
                        ConfigErrorKind::Limit(format!(
                            "{r:?}: a role is 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)"
                        )),
                    ));
                }
                roles.push(r);
            }
            if kind.is_none() && org.is_none() && roles.is_empty() {
                return Err(self.err(
                    span,
                    format!("oidc[{i}].map[{j}]"),
                    ConfigErrorKind::Limit("a rule must set kind, org or roles".into()),
                ));
            }
            out.push(ClaimRule {
                claim,
                value,
                kind,
                org,
                roles,
            });
        }
        if !out.iter().any(|r| r.kind.is_some()) {
            return Err(self.err(
                pspan,
                format!("oidc[{i}].map"),
                ConfigErrorKind::Limit(
                    "no [[oidc.map]] rule sets a kind: every signed-in person needs one".into(),
                ),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::Config;

    const GATEWAY: &str = r#"[gateway]
listen = "127.0.0.1:4433"
ca = "certs-dev"
cert = "certs-dev/gateway.crt"
key = "certs-dev/gateway.key"
state_dir = "var/ward"
"#;

    const PROVIDER: &str = r#"
[web]
listen = "127.0.0.1:8443"

[[oidc]]
name = "hospital"
display = "St Mary's account"
issuer = "https://login.st-mary.example/realms/staff/"
client_id = "ward"
client_secret_file = "/etc/ward/oidc-secret"
redirect_url = "https://ward.st-mary.example:8443/api/v1/sso/callback"

[[oidc.map]]
claim = "groups"
value = "icu-nurses"
kind = "clinician"
org = "st-mary"
roles = ["icu"]

[[oidc.map]]
claim = "groups"
value = "oncall"
roles = ["oncall"]
"#;

    fn parse(extra: &str) -> Result<Config, crate::ConfigError> {
        Config::parse(&format!("{GATEWAY}{PROVIDER}{extra}"), "w.toml")
    }

    fn with(field: &str) -> Result<Config, crate::ConfigError> {
        // Inserts `field` into the provider's table (before its first [[oidc.map]]).
        let text = PROVIDER.replacen("\n[[oidc.map]]", &format!("{field}\n\n[[oidc.map]]"), 1);
        Config::parse(&format!("{GATEWAY}{text}"), "w.toml")
    }

    #[test]
    fn a_provider_parses_with_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.oidc.len(), 1);
        let p = &c.oidc[0];
        assert_eq!(p.name, "hospital");
        assert_eq!(p.display, "St Mary's account");
        assert_eq!(
            p.issuer, "https://login.st-mary.example/realms/staff",
            "trailing / dropped"
        );
        assert_eq!(p.scopes, vec!["openid", "profile", "email"]);
        assert_eq!(p.username_claim, "preferred_username");
        assert_eq!(p.mfa, SsoMfa::Idp);
        assert_eq!(
            p.require_amr,
            vec!["mfa"],
            "MFA is required of the IdP by default"
        );
        assert!(p.require_acr.is_empty());
        assert_eq!(p.map.len(), 2);
        assert_eq!(p.map[0].kind, Some(PrincipalKind::Clinician));
        assert_eq!(p.map[1].roles, vec!["oncall"]);
        assert!(Config::parse(GATEWAY, "w.toml").unwrap().oidc.is_empty());
        // Without the console there is nothing to sign in to.
        let e = Config::parse(
            &format!(
                "{GATEWAY}{}",
                PROVIDER.replace("listen = \"127.0.0.1:8443\"", "")
            ),
            "w.toml",
        )
        .unwrap_err();
        assert_eq!(e.field, "oidc[0]", "{e}");
        assert!(e.to_string().contains("set [web] listen"), "{e}");
    }

    #[test]
    fn the_sample_configs_commented_provider_parses() {
        let sample = crate::config::SAMPLE_CONFIG;
        let at = sample.find("# [[oidc]]").unwrap();
        let (before, after) = sample.split_at(at);
        let uncommented: String = after
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&format!("{before}{uncommented}\n"), "sample.toml").unwrap();
        assert_eq!(c.oidc.len(), 1);
        assert_eq!(c.oidc[0].map[0].org.as_deref(), Some("st-mary"));
        assert!(Config::parse(sample, "sample.toml")
            .unwrap()
            .oidc
            .is_empty());
    }

    #[test]
    fn options_parse() {
        let c = with(
            "scopes = [\"profile\", \"groups\"]\nca_file = \"idp-ca.pem\"\nusername_claim = \"email\"\nrequire_acr = [\"urn:loa:2\"]",
        )
        .unwrap();
        let p = &c.oidc[0];
        assert_eq!(
            p.scopes,
            vec!["openid", "profile", "groups"],
            "openid is always asked for"
        );
        assert_eq!(
            p.ca_file.as_deref(),
            Some(std::path::Path::new("idp-ca.pem"))
        );
        assert_eq!(p.username_claim, "email");
        assert!(
            p.require_amr.is_empty(),
            "require_acr alone replaces the default amr"
        );
        assert_eq!(p.require_acr, vec!["urn:loa:2"]);
        let c = with("mfa = \"ward\"").unwrap();
        assert_eq!(c.oidc[0].mfa, SsoMfa::Ward);
        assert!(
            c.oidc[0].require_amr.is_empty(),
            "Ward's TOTP is the second factor"
        );
        let c = with("issuer_x = 1");
        assert!(c.is_err());
        // Plain http only on loopback (a test IdP, or one on the gateway host).
        for ok in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/x",
            "http://[::1]:9000",
        ] {
            let text = PROVIDER.replace("https://login.st-mary.example/realms/staff/", ok);
            let c = Config::parse(&format!("{GATEWAY}{text}"), "w.toml");
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
    }

    #[test]
    fn bad_providers_are_refused_with_the_field_named() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                PROVIDER.replace("name = \"hospital\"", "name = \"Hospital\""),
                "oidc[0].name",
                "a-z",
            ),
            (
                PROVIDER.replace("name = \"hospital\"", "name = \"a/b\""),
                "oidc[0].name",
                "a-z",
            ),
            (
                PROVIDER.replace(
                    "https://login.st-mary.example/realms/staff/",
                    "http://login.example",
                ),
                "oidc[0].issuer",
                "loopback",
            ),
            (
                PROVIDER.replace(
                    "https://login.st-mary.example/realms/staff/",
                    "ftp://login.example",
                ),
                "oidc[0].issuer",
                "https",
            ),
            (
                PROVIDER.replace(
                    "https://login.st-mary.example/realms/staff/",
                    "login.example",
                ),
                "oidc[0].issuer",
                "not a URL",
            ),
            (
                PROVIDER.replace("/api/v1/sso/callback", "/callback"),
                "oidc[0].redirect_url",
                "/api/v1/sso/callback",
            ),
            (
                PROVIDER.replace("client_id = \"ward\"", "client_id = \"\""),
                "oidc[0].client_id",
                "empty",
            ),
            (
                PROVIDER.replace("kind = \"clinician\"", "kind = \"gateway\""),
                "oidc[0].map[0].kind",
                "person",
            ),
            (
                PROVIDER.replace("kind = \"clinician\"", "kind = \"nurse\""),
                "oidc[0].map[0].kind",
                "nurse",
            ),
            (
                PROVIDER.replace("kind = \"clinician\"\n", ""),
                "oidc[0].map",
                "no [[oidc.map]] rule sets a kind",
            ),
            (
                PROVIDER.replace("org = \"st-mary\"", "org = \"St Mary\""),
                "oidc[0].map[0].org",
                "org",
            ),
            (
                PROVIDER.replace("roles = [\"icu\"]", "roles = [\"a/b\"]"),
                "oidc[0].map[0].roles",
                "role",
            ),
            (
                PROVIDER.replace("roles = [\"oncall\"]", ""),
                "oidc[0].map[1]",
                "kind, org or roles",
            ),
            (
                PROVIDER.split("\n[[oidc.map]]").next().unwrap().to_owned(),
                "oidc[0].map",
                "nobody could sign in",
            ),
            (
                format!(
                    "{PROVIDER}[[oidc]]{}",
                    PROVIDER.split("[[oidc]]").nth(1).unwrap()
                ),
                "oidc[1].name",
                "two [[oidc]] providers",
            ),
        ];
        for (text, field, says) in cases {
            let e = Config::parse(&format!("{GATEWAY}{text}"), "w.toml").unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(says), "{field}: {e}");
            assert!(
                e.location.is_some_and(|l| l.line > 6),
                "{e}: points into the [[oidc]] table"
            );
        }
        let cases = [
            ("mfa = \"sms\"", "oidc[0].mfa", "\"ward\""),
            ("require_amr = []", "oidc[0].require_amr", "mfa = \"ward\""),
            ("require_amr = [\"\"]", "oidc[0].require_amr", "printable"),
            ("display = \"\"", "oidc[0].display", "empty"),
        ];
        for (field_text, field, says) in cases {
            // `display` is already set: replace it rather than adding a second one.
            let e = if field_text.starts_with("display") {
                Config::parse(
                    &format!(
                        "{GATEWAY}{}",
                        PROVIDER.replace("display = \"St Mary's account\"", field_text)
                    ),
                    "w.toml",
                )
                .unwrap_err()
            } else {
                with(field_text).unwrap_err()
            };
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(says), "{field}: {e}");
        }
    }
}
