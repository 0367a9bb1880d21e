//! `--gateway`'s list of gateways: one `HOST:PORT`, or several (comma-separated; the command line
//! joins a repeated `--gateway` the same way), where a host name may resolve to several addresses.
//! Splitting is pure; [`resolve`] is the one step that asks the system's resolver.

use std::net::{SocketAddr, ToSocketAddrs};

/// One `--gateway` entry as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEntry {
    /// As written (`gw1.example.org:4433`), blanks around it removed.
    pub given: String,
    /// The host without brackets: the name the gateway's certificate must carry.
    pub host: String,
}

/// One address to try: an entry's host name and one of the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The entry as written.
    pub given: String,
    /// The name to check the gateway's certificate against.
    pub host: String,
    /// The address to connect to.
    pub addr: SocketAddr,
}

impl Candidate {
    /// For people: the address, and the entry it came from when that was a name.
    pub fn describe(&self) -> String {
        match self.given.parse::<SocketAddr>() {
            Ok(a) if a == self.addr => self.given.clone(),
            _ => format!("{} ({})", self.given, self.addr),
        }
    }
}

/// An entry that resolved to nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The entry as written.
    pub given: String,
    /// The resolver's words.
    pub why: String,
}

/// Split a `--gateway` value into its entries, in order: comma-separated, blanks around each
/// ignored, empty entries and repeats skipped. An entry without `:PORT` is refused.
pub fn parse(spec: &str) -> Result<Vec<GatewayEntry>, String> {
    let mut out: Vec<GatewayEntry> = Vec::new();
    for part in spec.split(',') {
        let given = part.trim();
        if given.is_empty() {
            continue;
        }
        let (host, _port) = given
            .rsplit_once(':')
            .ok_or_else(|| format!("--gateway must be HOST:PORT, got {given:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("--gateway must be HOST:PORT, got {given:?}"));
        }
        if out.iter().any(|e| e.given == given) {
            continue;
        }
        out.push(GatewayEntry {
            given: given.to_string(),
            host: host.to_string(),
        });
    }
    if out.is_empty() {
        return Err(format!("--gateway must be HOST:PORT, got {spec:?}"));
    }
    Ok(out)
}

/// Resolve every entry, keeping the user's order and, within a name, the resolver's order (RFC 6724
/// on glibc); an address already listed for the same name is not tried twice.
pub fn resolve(entries: &[GatewayEntry]) -> (Vec<Candidate>, Vec<Unresolved>) {
    resolve_with(entries, |given| {
        given
            .to_socket_addrs()
            .map(|a| a.collect())
            .map_err(|e| e.to_string())
    })
}

/// [`resolve`] with the resolver given (tests use a table).
pub fn resolve_with(
    entries: &[GatewayEntry],
    lookup: impl Fn(&str) -> Result<Vec<SocketAddr>, String>,
) -> (Vec<Candidate>, Vec<Unresolved>) {
    let mut found: Vec<Candidate> = Vec::new();
    let mut failed = Vec::new();
    for e in entries {
        match lookup(&e.given) {
            Ok(addrs) if addrs.is_empty() => failed.push(Unresolved {
                given: e.given.clone(),
                why: "resolves to no address".into(),
            }),
            Ok(addrs) => {
                for addr in addrs {
                    if found.iter().any(|c| c.addr == addr && c.host == e.host) {
                        continue;
                    }
                    found.push(Candidate {
                        given: e.given.clone(),
                        host: e.host.clone(),
                        addr,
                    });
                }
            }
            Err(why) => failed.push(Unresolved {
                given: e.given.clone(),
                why,
            }),
        }
    }
    (found, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(spec: &str) -> Vec<(String, String)> {
        parse(spec)
            .unwrap()
            .into_iter()
            .map(|e| (e.given, e.host))
            .collect()
    }

    #[test]
    fn entries_are_split_trimmed_and_deduplicated_in_order() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            hosts("127.0.0.1:4433"),
            vec![s("127.0.0.1:4433", "127.0.0.1")]
        );
        assert_eq!(
            hosts(" gw2.example:4433 , [::1]:4433,,gw2.example:4433, gw1:1 "),
            vec![
                s("gw2.example:4433", "gw2.example"),
                s("[::1]:4433", "::1"),
                s("gw1:1", "gw1"),
            ]
        );
    }

    #[test]
    fn entries_without_a_port_or_host_are_refused() {
        for bad in ["", " , ", "gw.example", "127.0.0.1:1,gw.example", ":4433"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn names_expand_to_every_address_and_failures_are_kept() {
        let entries = parse("many:1,none:2,bad:3,127.0.0.1:1,many:1").unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (found, failed) = resolve_with(&entries, |g| match g {
            "many:1" => Ok(vec![a("127.0.0.1:1"), a("[::1]:1"), a("127.0.0.1:1")]),
            "none:2" => Ok(vec![]),
            "bad:3" => Err("no such host".into()),
            other => Ok(vec![other.parse().unwrap()]),
        });
        let got: Vec<String> = found.iter().map(Candidate::describe).collect();
        // The literal 127.0.0.1:1 is another name for the same address: still tried (its
        // certificate name differs), and said plainly.
        assert_eq!(
            got,
            vec!["many:1 (127.0.0.1:1)", "many:1 ([::1]:1)", "127.0.0.1:1"]
        );
        assert_eq!(found[0].host, "many");
        assert_eq!(
            failed,
            vec![
                Unresolved {
                    given: "none:2".into(),
                    why: "resolves to no address".into()
                },
                Unresolved {
                    given: "bad:3".into(),
                    why: "no such host".into()
                },
            ]
        );
    }
}
