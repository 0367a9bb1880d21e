//! Device credentials held by the gateway (the vault) and what it does with them.
//!
//! A rule names the vault account a session gets (`inject = "service"`); the gateway then logs in
//! to the device for the user and the secret never reaches the client, the recording, a log line
//! or an export. This module holds the value types the config, the vault and the drivers share:
//! a decrypted [`Credential`], a telnet device's [`LoginProfile`] (prompts to match, and the
//! [`RotateProcedure`] that changes its password), and how an HTTP device takes a credential
//! ([`HttpAuth`]). The prompt matcher and the HTTP injector are pure, like the rest of this crate.

pub mod http;

use std::time::Duration;

use crate::secret::Secret;

pub mod telnet;

/// A vaulted device credential, decrypted for one session (or one rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The vault account (the role on the device: `service`, `nurse`).
    pub account: String,
    /// The user name the device knows.
    pub username: String,
    /// The password (or header value).
    pub secret: Secret<String>,
}

/// The name of the login profile every telnet device gets unless its config names another.
pub const GENERIC_TELNET: &str = "generic-telnet";

/// How the gateway logs in to a telnet console: the prompts it waits for and what tells success
/// from failure. Patterns match case-insensitively at the end of what the device has sent since
/// the gateway last answered it (leading and trailing spaces ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginProfile {
    /// The profile's name (`generic-telnet`, or a `[[login_profile]]`'s).
    pub name: String,
    /// The user-name prompt (`login:`, `username:`).
    pub user_prompt: Vec<String>,
    /// The password prompt.
    pub password_prompt: Vec<String>,
    /// What the device shows once logged in (its shell prompt).
    pub success: Vec<String>,
    /// What it shows when the login is refused.
    pub failure: Vec<String>,
    /// How long the whole login may take.
    pub timeout: Duration,
    /// How to change the account's password on the device (`None`: rotation is not configured).
    pub rotate: Option<RotateProcedure>,
}

impl LoginProfile {
    /// The built-in profile: fits the common consoles (`login:`/`Username:`, `Password:`, a shell
    /// prompt ending in `>`, `#` or `$`).
    pub fn generic_telnet() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        LoginProfile {
            name: GENERIC_TELNET.to_string(),
            user_prompt: s(&["login:", "username:", "user:"]),
            password_prompt: s(&["password:"]),
            success: s(&[">", "#", "$"]),
            failure: s(&["incorrect", "invalid", "denied", "failed", "bad password"]),
            timeout: Duration::from_secs(10),
            rotate: Some(RotateProcedure::passwd()),
        }
    }
}

/// The console dialogue that changes the logged-in account's password: a command, then prompts
/// answered in order, then what the device says on success or failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateProcedure {
    /// The command typed at the shell prompt (`passwd`).
    pub command: String,
    /// The prompts, in order, and what to answer each with.
    pub steps: Vec<RotateStep>,
    /// What the device shows when the password was changed.
    pub success: Vec<String>,
    /// What it shows when it refused the change.
    pub failure: Vec<String>,
}

impl RotateProcedure {
    /// `passwd`: old password, new password, new password again.
    pub fn passwd() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        RotateProcedure {
            command: "passwd".to_string(),
            steps: vec![
                RotateStep {
                    expect: s(&["old password:", "current password:"]),
                    send: SendWhat::Old,
                },
                RotateStep {
                    expect: s(&["new password:"]),
                    send: SendWhat::New,
                },
                // Patterns match at the end of the output: "Retype new password:", BusyBox's
                // "Retype password:" and "New password (again):" all end in one of these.
                RotateStep {
                    expect: s(&["password:", "again:", "again):"]),
                    send: SendWhat::New,
                },
            ],
            success: s(&["password changed", "password updated", "successfully"]),
            failure: s(&["fail", "error", "mismatch", "incorrect", "denied"]),
        }
    }
}

/// One prompt of a rotation and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateStep {
    /// The prompt (any of these).
    pub expect: Vec<String>,
    /// What to type.
    pub send: SendWhat,
}

/// What a rotation step types (the secrets are never in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendWhat {
    /// The current password.
    Old,
    /// The new password.
    New,
    /// The account's user name.
    Username,
    /// Fixed text (e.g. a confirmation `y`).
    Text(String),
}

/// How an HTTP device takes the vaulted credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HttpAuth {
    /// `Authorization: Basic base64(username:password)`.
    #[default]
    Basic,
    /// A header of this name carrying the secret as it is (an API key).
    Header(String),
}

/// `[vault]`: where the key-encryption key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultConfig {
    /// A file holding the key (base64 of 32 bytes), mode 0600; relative paths are under the state
    /// dir. Default `vault.key`, created on first use.
    pub key_file: Option<std::path::PathBuf>,
    /// An environment variable holding the key instead (base64 of 32 bytes).
    pub key_env: Option<String>,
    /// Rotate every vaulted password this often (`rotate_every = "30d"`); `None`: only by hand.
    pub rotate_every: Option<Duration>,
}
