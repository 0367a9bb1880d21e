//! The vault's part of the configuration: `[vault]`, `[[login_profile]]`, a device's `login` and
//! `http_auth`, and a rule's `inject` (see docs/vault.md). Parsed into [`InjectConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx};
use crate::device::{Device, Protocol};
use crate::inject::{
    HttpAuth, LoginProfile, RotateProcedure, RotateStep, SendWhat, VaultConfig, GENERIC_TELNET,
};

/// Longest a device login may be given (a typo beyond it would hold sessions for hours).
const MAX_LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What the gateway injects, where, and how: resolved from the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InjectConfig {
    /// `[vault]`.
    pub vault: VaultConfig,
    /// Login profiles by name: `generic-telnet` and every `[[login_profile]]`.
    pub profiles: BTreeMap<String, LoginProfile>,
    /// Telnet devices' login profiles, resolved (a device without `login` gets `generic-telnet`).
    pub logins: BTreeMap<String, LoginProfile>,
    /// HTTP devices' `http_auth` (default Basic).
    pub http_auth: BTreeMap<String, HttpAuth>,
    /// The vault account each rule injects (`inject = "service"`).
    pub rule_accounts: BTreeMap<String, String>,
}

impl InjectConfig {
    /// The vault account a session permitted by `rule` gets, if any.
    pub fn account_for_rule(&self, rule: &str) -> Option<&str> {
        self.rule_accounts.get(rule).map(String::as_str)
    }

    /// A telnet device's login profile.
    pub fn login_for(&self, device: &str) -> LoginProfile {
        self.logins
            .get(device)
            .cloned()
            .unwrap_or_else(LoginProfile::generic_telnet)
    }

    /// How an HTTP device takes a credential.
    pub fn http_auth_for(&self, device: &str) -> HttpAuth {
        self.http_auth.get(device).cloned().unwrap_or_default()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    key_file: Option<Spanned<PathBuf>>,
    key_env: Option<Spanned<String>>,
    rotate_every: Option<Spanned<String>>,
}

/// A `[[login_profile]]`, or a device's `login = { … }` (which has no `name`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoginProfile {
    name: Option<Spanned<String>>,
    /// The profile this one starts from (default `generic-telnet`).
    profile: Option<Spanned<String>>,
    user_prompt: Option<Vec<String>>,
    password_prompt: Option<Vec<String>>,
    success: Option<Vec<String>>,
    failure: Option<Vec<String>>,
    timeout: Option<Spanned<String>>,
    rotate: Option<Spanned<RawRotate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotate {
    command: String,
    steps: Vec<RawStep>,
    success: Option<Vec<String>>,
    failure: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    expect: Vec<String>,
    /// `"old"`, `"new"`, `"username"`, or `"text:…"`.
    send: String,
}

/// `http_auth = { scheme = "basic" }` or `{ header = "X-Api-Key" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpAuth {
    scheme: Option<String>,
    header: Option<String>,
}

/// The inject-related fields taken off one device before the rest of it is parsed.
pub(super) struct DeviceInject {
    pub(super) login: Option<Spanned<RawLoginProfile>>,
    pub(super) http_auth: Option<Spanned<RawHttpAuth>>,
}

impl Cx<'_> {
    pub(super) fn inject(
        &self,
        vault: RawVault,
        profiles: Vec<Spanned<RawLoginProfile>>,
        devices: &[Device],
        device_inject: Vec<DeviceInject>,
        rule_inject: Vec<(String, Option<Spanned<String>>)>,
    ) -> Result<InjectConfig, ConfigError> {
        let mut out = InjectConfig {
            vault: self.vault(vault)?,
            ..InjectConfig::default()
        };
        out.profiles
            .insert(GENERIC_TELNET.to_string(), LoginProfile::generic_telnet());
        for (i, p) in profiles.into_iter().enumerate() {
            let field = format!("login_profile[{i}]");
            let span = p.span();
            let p = p.into_inner();
            let Some(name) = p.name.as_ref().map(|n| n.get_ref().clone()) else {
                return Err(self.err(span, format!("{field}.name"), ConfigErrorKind::Empty));
            };
            crate::device::check_name("login profile name", &name)
                .map_err(|e| self.err(span.clone(), format!("{field}.name"), e))?;
            if out.profiles.contains_key(&name) {
                let why = format!("login profile {name:?} is defined twice");
                return Err(self.err(span, format!("{field}.name"), ConfigErrorKind::Limit(why)));
            }
            let profile = self.profile(p, &out.profiles, &field, &name)?;
            out.profiles.insert(name, profile);
        }
        for (i, (device, di)) in devices.iter().zip(device_inject).enumerate() {
            let id = device.id.to_string();
            if let Some(login) = di.login {
                let field = format!("device[{i}].login");
                if device.protocol != Protocol::Telnet {
                    let why = format!(
                        "device {id} speaks {}: a login profile is for telnet devices",
                        device.protocol
                    );
                    return Err(self.err(login.span(), field, ConfigErrorKind::Limit(why)));
                }
                let span = login.span();
                let raw = login.into_inner();
                if raw.name.is_some() {
                    let why = "a device's login takes no name: name a [[login_profile]] with profile = \"…\"".to_string();
                    return Err(self.err(
                        span,
                        format!("{field}.name"),
                        ConfigErrorKind::Limit(why),
                    ));
                }
                let profile = self.profile(raw, &out.profiles, &field, &id)?;
                out.logins.insert(id.clone(), profile);
            }
            if let Some(auth) = di.http_auth {
                let field = format!("device[{i}].http_auth");
                if device.protocol != Protocol::Http {
                    let why = format!(
                        "device {id} speaks {}: http_auth is for http devices",
                        device.protocol
                    );
                    return Err(self.err(auth.span(), field, ConfigErrorKind::Limit(why)));
                }
                let span = auth.span();
                let auth = match auth.into_inner() {
                    RawHttpAuth {
                        scheme: Some(s),
                        header: None,
                    } if s.eq_ignore_ascii_case("basic") => HttpAuth::Basic,
                    RawHttpAuth {
                        scheme: None,
                        header: Some(h),
                    } if is_header_name(&h) => HttpAuth::Header(h),
                    _ => {
                        let why = "http_auth is { scheme = \"basic\" } or { header = \"X-Api-Key\" } (a header name: letters, digits and -)".to_string();
                        return Err(self.err(span, field, ConfigErrorKind::Limit(why)));
                    }
                };
                out.http_auth.insert(id, auth);
            }
        }
        for (i, (rule, inject)) in rule_inject.into_iter().enumerate() {
            if let Some(account) = inject {
                let field = format!("rule[{i}].inject");
                crate::device::check_name("vault account", account.get_ref())
                    .map_err(|e| self.err(account.span(), field, e))?;
                out.rule_accounts.insert(rule, account.into_inner());
            }
        }
        Ok(out)
    }

    fn vault(&self, raw: RawVault) -> Result<VaultConfig, ConfigError> {
        if let (Some(_), Some(env)) = (&raw.key_file, &raw.key_env) {
            let why = "give the vault's key either as key_file or as key_env, not both".to_string();
            return Err(self.err(env.span(), "vault.key_env", ConfigErrorKind::Limit(why)));
        }
        let key_file = raw
            .key_file
            .map(|p| self.path(p, "vault.key_file"))
            .transpose()?;
        let key_env = match raw.key_env {
            Some(e) if e.get_ref().is_empty() => {
                return Err(self.err(e.span(), "vault.key_env", ConfigErrorKind::Empty))
            }
            e => e.map(Spanned::into_inner),
        };
        let rotate_every = match raw.rotate_every {
            None => None,
            Some(r) => {
                let d = crate::duration::parse_duration(r.get_ref())
                    .map_err(|e| self.err(r.span(), "vault.rotate_every", e))?;
                if d < std::time::Duration::from_secs(3600) {
                    let why = "rotate_every must be at least 1h".to_string();
                    return Err(self.err(
                        r.span(),
                        "vault.rotate_every",
                        ConfigErrorKind::Limit(why),
                    ));
                }
                Some(d)
            }
        };
        Ok(VaultConfig {
            key_file,
            key_env,
            rotate_every,
        })
    }

    /// A profile from `raw`, starting from the profile it names (default `generic-telnet`).
    fn profile(
        &self,
        raw: RawLoginProfile,
        known: &BTreeMap<String, LoginProfile>,
        field: &str,
        name: &str,
    ) -> Result<LoginProfile, ConfigError> {
        let mut p = match &raw.profile {
            None => LoginProfile::generic_telnet(),
            Some(base) => known.get(base.get_ref()).cloned().ok_or_else(|| {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                let why = format!(
                    "no login profile {:?} (defined above this one: {})",
                    base.get_ref(),
                    names.join(", ")
                );
                self.err(
                    base.span(),
                    format!("{field}.profile"),
                    ConfigErrorKind::Limit(why),
                )
            })?,
        };
        p.name = name.to_string();
        for (dst, src, what) in [
            (&mut p.user_prompt, raw.user_prompt, "user_prompt"),
            (
                &mut p.password_prompt,
                raw.password_prompt,
                "password_prompt",
            ),
            (&mut p.success, raw.success, "success"),
            (&mut p.failure, raw.failure, "failure"),
        ] {
            if let Some(v) = src {
                if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
                    let why = format!("{what} needs at least one non-blank pattern");
                    return Err(self.err(
                        0..0,
                        format!("{field}.{what}"),
                        ConfigErrorKind::Limit(why),
                    ));
                }
                *dst = v;
            }
        }
        if let Some(t) = raw.timeout {
            let span = t.span();
            let d = self.duration(Some(t), &format!("{field}.timeout"), p.timeout)?;
            if d.is_zero() || d > MAX_LOGIN_TIMEOUT {
                let why = "a device login's timeout is from 1s to 5m".to_string();
                return Err(self.err(
                    span,
                    format!("{field}.timeout"),
                    ConfigErrorKind::Limit(why),
                ));
            }
            p.timeout = d;
        }
        if let Some(r) = raw.rotate {
            p.rotate = Some(self.rotate(r, &format!("{field}.rotate"))?);
        }
        Ok(p)
    }

    fn rotate(&self, raw: Spanned<RawRotate>, field: &str) -> Result<RotateProcedure, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let bad = |why: String| self.err(span.clone(), field, ConfigErrorKind::Limit(why));
        if raw.command.trim().is_empty() || raw.command.contains(['\r', '\n']) {
            return Err(bad(
                "rotate.command is one line of text, e.g. \"passwd\"".into()
            ));
        }
        if raw.steps.is_empty() {
            return Err(bad(
                "rotate.steps needs at least one { expect = [...], send = \"new\" }".into(),
            ));
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for s in raw.steps {
            if s.expect.is_empty() || s.expect.iter().any(|e| e.trim().is_empty()) {
                return Err(bad(
                    "each rotate step expects at least one non-blank prompt".into(),
                ));
            }
            let send = match s.send.as_str() {
                "old" => SendWhat::Old,
                "new" => SendWhat::New,
                "username" => SendWhat::Username,
                t => match t.strip_prefix("text:") {
                    Some(text) if !text.contains(['\r', '\n']) => SendWhat::Text(text.to_string()),
                    _ => {
                        return Err(bad(format!(
                            "a rotate step sends \"old\", \"new\", \"username\" or \"text:…\", not {t:?}"
                        )))
                    }
                },
            };
            steps.push(RotateStep {
                expect: s.expect,
                send,
            });
        }
        if !steps.iter().any(|s| s.send == SendWhat::New) {
            return Err(bad(
                "a rotation that never sends the new password changes nothing".into(),
            ));
        }
        let default = RotateProcedure::passwd();
        Ok(RotateProcedure {
            command: raw.command,
            steps,
            success: raw.success.unwrap_or(default.success),
            failure: raw.failure.unwrap_or(default.failure),
        })
    }
}

/// An HTTP header name (a token of letters, digits and `-`), not one the injector must not touch.
fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !["host", "content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|x| h.eq_ignore_ascii_case(x))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::{Config, SAMPLE_CONFIG};

    const BASE: &str = r#"[gateway]
listen = "127.0.0.1:4433"
ca = "certs-dev"
cert = "certs-dev/gateway.crt"
key = "certs-dev/gateway.key"
state_dir = "var/ward"

[[device]]
id = "pump-12"
address = "10.20.0.12:23"
protocol = "telnet"
labels = { vendor = "acme" }

[[device]]
id = "monitor-3"
address = "10.20.0.13:80"
protocol = "http"
"#;

    fn parse(extra: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), "w.toml")
    }

    #[test]
    fn sample_config_names_an_injected_account_and_a_profile() {
        let c = Config::parse(SAMPLE_CONFIG, "sample.toml").unwrap();
        assert_eq!(
            c.inject.account_for_rule("acme-maintains-its-pumps"),
            Some("service")
        );
        assert_eq!(c.inject.account_for_rule("admins-reach-everything"), None);
        let p = &c.inject.profiles["acme-pump"];
        assert_eq!(p.success, vec!["pump>".to_string()]);
        assert_eq!(p.user_prompt, LoginProfile::generic_telnet().user_prompt);
        assert_eq!(p.rotate.as_ref().unwrap().steps.len(), 3);
        assert_eq!(c.inject.login_for("pump-12").name, "pump-12");
        assert_eq!(c.inject.http_auth_for("monitor-3"), HttpAuth::Basic);
        assert_eq!(
            c.inject.vault.key_file.as_deref(),
            Some(std::path::Path::new("vault.key"))
        );
    }

    #[test]
    fn defaults_without_any_vault_config() {
        let c = parse("").unwrap();
        assert_eq!(c.inject.vault, VaultConfig::default());
        assert_eq!(
            c.inject.login_for("pump-12"),
            LoginProfile::generic_telnet()
        );
        assert!(c.inject.rule_accounts.is_empty());
    }

    #[test]
    fn device_login_extends_a_named_profile_and_header_auth_parses() {
        let c = parse(
            r#"
[[login_profile]]
name = "p"
success = ["pump>"]
"#,
        )
        .unwrap();
        assert_eq!(c.inject.profiles["p"].success, vec!["pump>".to_string()]);
        let text = BASE.replace(
            "labels = { vendor = \"acme\" }",
            "labels = { vendor = \"acme\" }\nlogin = { profile = \"p\", timeout = \"3s\" }",
        );
        let text = text + "\n[[login_profile]]\nname = \"p\"\nsuccess = [\"pump>\"]\n";
        let c = Config::parse(&text, "w.toml").unwrap();
        let l = c.inject.login_for("pump-12");
        assert_eq!(l.success, vec!["pump>".to_string()]);
        assert_eq!(l.timeout, std::time::Duration::from_secs(3));
        let text = BASE.replace(
            "protocol = \"http\"",
            "protocol = \"http\"\nhttp_auth = { header = \"X-Api-Key\" }",
        );
        let c = Config::parse(&text, "w.toml").unwrap();
        assert_eq!(
            c.inject.http_auth_for("monitor-3"),
            HttpAuth::Header("X-Api-Key".into())
        );
    }

    #[test]
    fn misplaced_or_malformed_injection_config_is_refused_with_the_field_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "protocol = \"http\"",
                "protocol = \"http\"\nlogin = { profile = \"generic-telnet\" }",
                "device[1].login",
            ),
            (
                "protocol = \"telnet\"",
                "protocol = \"telnet\"\nhttp_auth = { scheme = \"basic\" }",
                "device[0].http_auth",
            ),
            (
                "protocol = \"http\"",
                "protocol = \"http\"\nhttp_auth = { header = \"Content-Length\" }",
                "device[1].http_auth",
            ),
            (
                "protocol = \"telnet\"",
                "protocol = \"telnet\"\nlogin = { profile = \"nope\" }",
                "device[0].login.profile",
            ),
        ];
        for (from, to, field) in cases {
            let e = Config::parse(&BASE.replace(from, to), "w.toml").unwrap_err();
            assert_eq!(e.field, *field, "{e}");
        }
        let e = parse("\n[[rule]]\nname = \"r\"\nwho = { kind = \"vendor\" }\ndevices = { all = true }\ninject = \"bad account\"\n").unwrap_err();
        assert_eq!(e.field, "rule[0].inject", "{e}");
        let e = parse("\n[vault]\nkey_file = \"k\"\nkey_env = \"K\"\n").unwrap_err();
        assert_eq!(e.field, "vault.key_env", "{e}");
        let e = parse("\n[vault]\nrotate_every = \"5m\"\n").unwrap_err();
        assert_eq!(e.field, "vault.rotate_every", "{e}");
        let e = parse("\n[[login_profile]]\nname = \"p\"\nrotate = { command = \"passwd\", steps = [{ expect = [\"old password:\"], send = \"old\" }] }\n").unwrap_err();
        assert!(
            e.to_string().contains("never sends the new password"),
            "{e}"
        );
        let e = parse("\n[[login_profile]]\nname = \"p\"\nrotate = { command = \"passwd\", steps = [{ expect = [\"x:\"], send = \"hunter2\" }] }\n").unwrap_err();
        assert!(e.to_string().contains("text:"), "{e}");
        let e = parse("\n[[login_profile]]\nname = \"generic-telnet\"\n").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
