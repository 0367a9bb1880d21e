//! Devices behind the gateway: ids, addresses, protocols and labels, each valid by construction.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest device id, label key or label value.
pub const MAX_NAME_LEN: usize = 64;

/// Why a device id, label, protocol or address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// An id, label key or label value was empty, too long or used a character outside `[A-Za-z0-9._-]`.
    #[error("{what} {value:?} is not allowed: use 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - starting with a letter or digit")]
    BadName {
        /// What was being named (`device id`, `label key`, `label value`).
        what: &'static str,
        /// The rejected text.
        value: String,
    },
    /// A protocol name Ward does not know.
    #[error("unknown protocol {0:?} (expected telnet, http, dicom, hl7 or raw)")]
    UnknownProtocol(String),
    /// An address that is neither `ip:port` nor `hostname:port`.
    #[error("bad address {value:?}: {why}")]
    BadAddress {
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A certificate pin that is not `sha256:` and 64 hex digits.
    #[error("bad certificate pin {0:?}: expected \"sha256:\" and 64 hex digits (as `ward devices pin DEVICE` shows it)")]
    BadPin(String),
    /// A TLS server name that is neither a DNS name nor an IP address.
    #[error(
        "bad TLS server name {0:?}: expected a DNS name such as \"pacs.local\" or an IP address"
    )]
    BadServerName(String),
}

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), DeviceError> {
    let ok_len = !value.is_empty() && value.len() <= MAX_NAME_LEN;
    let ok_first = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(DeviceError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// Checks a label key or value (same character set as a device id). Labels end up in audit
/// records, file names and terminal output, so nothing that needs quoting is allowed.
pub fn check_label(key: &str, value: &str) -> Result<(), DeviceError> {
    check_name("label key", key)?;
    check_name("label value", value)
}

/// A device id such as `pump-12`: 1-64 characters from `[A-Za-z0-9._-]`, starting alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates and wraps an id.
    pub fn new(id: &str) -> Result<Self, DeviceError> {
        check_name("device id", id)?;
        Ok(DeviceId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::new(s)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        DeviceId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The protocol a device speaks. It decides how the gateway dials it and how the recorder and
/// replay tools render the traffic; the bytes themselves are passed through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Telnet console (usually port 23).
    Telnet,
    /// HTTP web UI or API.
    Http,
    /// DICOM association (usually port 104 or 11112).
    Dicom,
    /// HL7 v2 over MLLP.
    Hl7,
    /// Any other TCP byte stream.
    Raw,
}

impl Protocol {
    /// Every protocol, in declaration order.
    pub const ALL: [Protocol; 5] = [
        Protocol::Telnet,
        Protocol::Http,
        Protocol::Dicom,
        Protocol::Hl7,
        Protocol::Raw,
    ];

    /// The lowercase name used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Telnet => "telnet",
            Protocol::Http => "http",
            Protocol::Dicom => "dicom",
            Protocol::Hl7 => "hl7",
            Protocol::Raw => "raw",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| DeviceError::UnknownProtocol(s.to_owned()))
    }
}

/// Where the gateway dials a device: an IP socket address, or a DNS name and port resolved at
/// connect time (by the I/O layer, not here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceAddress {
    /// `10.20.0.12:23`, `[fd00::12]:23`.
    Ip(SocketAddr),
    /// `pump-12.icu.example:23`.
    Host {
        /// DNS name (letters, digits, hyphens, dots).
        host: String,
        /// TCP port, never 0.
        port: u16,
    },
}

impl DeviceAddress {
    /// The port to dial.
    pub fn port(&self) -> u16 {
        match self {
            DeviceAddress::Ip(addr) => addr.port(),
            DeviceAddress::Host { port, .. } => *port,
        }
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAddress::Ip(addr) => write!(f, "{addr}"),
            DeviceAddress::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl FromStr for DeviceAddress {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| DeviceError::BadAddress {
            value: s.to_owned(),
            why,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0 cannot be dialled"));
            }
            return Ok(DeviceAddress::Ip(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port, e.g. \"10.20.0.12:23\""))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 cannot be dialled"));
        }
        if !is_hostname(host) {
            return Err(bad(
                "the host must be an IP address (IPv6 in brackets) or a DNS name",
            ));
        }
        Ok(DeviceAddress::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A device the gateway can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Unique id, what clients ask for.
    pub id: DeviceId,
    /// Where to dial it.
    pub address: DeviceAddress,
    /// What it speaks.
    pub protocol: Protocol,
    /// Free-form labels rules select on (keys and values checked by [`check_label`]).
    pub labels: BTreeMap<String, String>,
    /// Maintenance windows: vendor sessions only inside them, unless a grant covers the time.
    pub maintenance: Option<crate::window::Hours>,
    /// Emergency access: who may break the glass here, and for how long. `None` = never.
    pub break_glass: Option<crate::access::BreakGlass>,
    /// The Linux network namespace (`ip netns` name) the gateway dials the device from; `None` =
    /// the gateway's own. Checked by [`check_netns`].
    pub netns: Option<String>,
    /// The device speaks TLS itself: the gateway connects over TLS and accepts only the pinned
    /// certificate. `None` = plain TCP.
    pub tls: Option<DeviceTls>,
}

/// How the gateway speaks TLS to a device (`tls = true` or `tls = { pin = "sha256:…",
/// server_name = "…" }` in the config). The device's certificate is trusted by its pin alone
/// (devices mostly have self-signed certificates): its chain, names and dates are not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTls {
    /// The pin given in the config; it wins over one stored with `ward devices pin`. `None`: the
    /// stored pin (a device without either is refused until a security/admin identity pins it).
    pub pin: Option<CertPin>,
    /// The name sent in the TLS handshake (SNI); `None`: the address's host name, none for an IP.
    pub server_name: Option<String>,
}

impl DeviceTls {
    /// Checks a config's pin and server name.
    pub fn new(pin: Option<&str>, server_name: Option<&str>) -> Result<DeviceTls, DeviceError> {
        let pin = pin.map(str::parse).transpose()?;
        let server_name = server_name
            .map(|n| {
                let n = n.to_ascii_lowercase();
                if is_hostname(&n) || n.parse::<std::net::IpAddr>().is_ok() {
                    Ok(n)
                } else {
                    Err(DeviceError::BadServerName(n))
                }
            })
            .transpose()?;
        Ok(DeviceTls { pin, server_name })
    }
}

/// The SHA-256 of a certificate's DER encoding, written `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertPin([u8; 32]);

impl CertPin {
    /// The pin of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> CertPin {
        use sha2::Digest;
        CertPin(sha2::Sha256::digest(der).into())
    }

    /// The digest.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CertPin {
    type Err = DeviceError;

    /// `sha256:` then 64 hex digits, either case; colons between byte pairs (as `openssl x509
    /// -fingerprint` prints them) are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceError::BadPin(s.to_owned());
        let t = s.trim();
        let hexs = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .ok_or_else(bad)?;
        let hexs: String = hexs.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hexs, &mut out).map_err(|_| bad())?;
        Ok(CertPin(out))
    }
}

/// A network-namespace name: the device-id syntax (so it starts with a letter or digit and holds
/// no `/`), which `ip netns add` accepts and which cannot escape `/run/netns`.
pub fn check_netns(name: &str) -> Result<(), DeviceError> {
    check_name("network namespace", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["pump-12", "a", "MRI_3.console", "0x"] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "-pump", "pump 12", "pump/12", "pümp", long.as_str()] {
            assert!(DeviceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            "10.20.0.12:23".parse::<DeviceAddress>().unwrap(),
            DeviceAddress::Ip("10.20.0.12:23".parse().unwrap())
        );
        assert_eq!(
            "[fd00::12]:104".parse::<DeviceAddress>().unwrap().port(),
            104
        );
        assert_eq!(
            "Pump-12.ICU.example:23".parse::<DeviceAddress>().unwrap(),
            DeviceAddress::Host {
                host: "pump-12.icu.example".into(),
                port: 23
            }
        );
        for bad in [
            "10.20.0.12",
            "10.20.0.12:0",
            "host:99999",
            ":23",
            "bad_host:23",
            "-a.example:23",
            "fd00::12:23",
            "a..b:23",
        ] {
            assert!(bad.parse::<DeviceAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn protocols_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
        }
        assert!("ssh".parse::<Protocol>().is_err());
    }

    #[test]
    fn pins() {
        let hex64 = "AB".repeat(32);
        let pin: CertPin = format!("sha256:{hex64}").parse().unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(pin.to_string().parse::<CertPin>().unwrap(), pin);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(format!("SHA256:{colons}").parse::<CertPin>().unwrap(), pin);
        for bad in [
            "",
            "ab".repeat(32).as_str(),
            "sha256:abcd",
            "sha1:00",
            "sha256:zz",
        ] {
            assert!(bad.parse::<CertPin>().is_err(), "{bad}");
        }
        assert_eq!(
            CertPin::of_der(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(DeviceTls::new(None, Some("PACS.local")).is_ok());
        assert!(DeviceTls::new(None, Some("10.0.0.1")).is_ok());
        assert!(DeviceTls::new(None, Some("bad name")).is_err());
    }

    #[test]
    fn labels_reject_unsafe_characters() {
        assert!(check_label("vendor", "acme").is_ok());
        assert!(check_label("vendor", "ac me").is_err());
        assert!(check_label("vendor", "acme\n").is_err());
        assert!(check_label("ven=dor", "acme").is_err());
        assert!(check_label("vendor", "").is_err());
    }
}
