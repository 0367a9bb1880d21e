//! Connection admission: who may hold one of the gateway's connection slots.
//!
//! Pure bookkeeping; the gateway calls it from its accept loops and acts on what it answers.
//! Every connection starts *anonymous*: its handshake has not finished, or it finished without a
//! client certificate (such a connection may only log in). Anonymous connections share a budget of
//! [`AdmissionLimits::max_anonymous`]; the rest of [`AdmissionLimits::max_connections`] is a
//! reserve that only connections that presented a valid certificate ([`Admission::authenticate`])
//! can hold. When a new connection finds no room, the oldest anonymous connection of the source
//! holding the most anonymous slots is evicted to make room for it, so stalled handshakes and idle
//! anonymous connections cannot keep a newcomer (who may hold a certificate) out, and a source
//! with one pending connection is the last to lose it. [`AdmissionLimits::max_per_source`] caps
//! one source's connections of both kinds on every transport together (IPv4-mapped IPv6
//! addresses count as the IPv4 address).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// QUIC application close code: refused, too many connections from the peer's address.
pub const CLOSE_BUSY_SOURCE: u32 = 0x5701;
/// QUIC application close code: refused, the gateway is full.
pub const CLOSE_BUSY: u32 = 0x5702;
/// QUIC application close code: an anonymous connection was evicted to make room for a newer one.
pub const CLOSE_EVICTED: u32 = 0x5703;
/// QUIC application close code: no request, or no finished login, before the connection's deadline.
pub const CLOSE_DEADLINE: u32 = 0x5704;

/// The connection budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections of both kinds, all sources.
    pub max_connections: usize,
    /// Anonymous connections (handshaking, or without a certificate), all sources.
    pub max_anonymous: usize,
    /// Connections of both kinds from one source, all transports.
    pub max_per_source: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source already holds its share.
    #[error("gateway busy: too many connections from your address")]
    Source,
    /// Every slot is held by certificate holders.
    #[error("gateway busy: too many connections")]
    Global,
}

impl Refusal {
    /// The QUIC application close code that carries this refusal.
    pub fn close_code(self) -> u32 {
        match self {
            Refusal::Source => CLOSE_BUSY_SOURCE,
            Refusal::Global => CLOSE_BUSY,
        }
    }
}

/// A connection's handle in the books.
pub type ConnId = u64;

/// An admitted connection, and the anonymous connection evicted to make room for it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The new connection (anonymous until [`Admission::authenticate`]).
    pub id: ConnId,
    /// The connection to close now: it no longer holds a slot.
    pub evicted: Option<ConnId>,
}

/// The books: every connection holding a slot, by kind and source.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    next: ConnId,
    /// Anonymous connections in admission order (ids grow), with their source.
    anonymous: BTreeMap<ConnId, IpAddr>,
    /// Connections that presented a valid certificate.
    authenticated: HashMap<ConnId, IpAddr>,
    /// Connections of both kinds per source.
    per_source: HashMap<IpAddr, usize>,
    /// Anonymous connections per source.
    anonymous_per_source: HashMap<IpAddr, usize>,
}

/// The address a source is counted under: IPv4-mapped IPv6 (a dual-stack listener) is IPv4.
pub fn source_key(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn dec(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(c) = map.get_mut(&ip) {
        *c = c.saturating_sub(1);
        if *c == 0 {
            map.remove(&ip);
        }
    }
}

impl Admission {
    /// Empty books with `limits`. `max_anonymous` is clamped to `max_connections`.
    pub fn new(limits: AdmissionLimits) -> Self {
        let limits = AdmissionLimits {
            max_anonymous: limits.max_anonymous.min(limits.max_connections),
            ..limits
        };
        Admission {
            limits,
            next: 0,
            anonymous: BTreeMap::new(),
            authenticated: HashMap::new(),
            per_source: HashMap::new(),
            anonymous_per_source: HashMap::new(),
        }
    }

    /// Connections holding a slot.
    pub fn total(&self) -> usize {
        self.anonymous.len() + self.authenticated.len()
    }

    /// Connections admitted since the books were opened (evicted and ended ones included).
    pub fn admitted(&self) -> u64 {
        self.next
    }

    /// Anonymous connections holding a slot.
    pub fn anonymous(&self) -> usize {
        self.anonymous.len()
    }

    /// Connections from `ip` (both kinds).
    pub fn from_source(&self, ip: IpAddr) -> usize {
        self.per_source.get(&source_key(ip)).copied().unwrap_or(0)
    }

    /// Whether `id` still holds a slot.
    pub fn holds(&self, id: ConnId) -> bool {
        self.anonymous.contains_key(&id) || self.authenticated.contains_key(&id)
    }

    /// A new connection from `ip`, anonymous until its certificate is seen. Refused when its
    /// source holds its share, or when every slot is held by certificate holders; otherwise
    /// admitted, evicting an anonymous connection if there was no room.
    pub fn admit(&mut self, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = source_key(ip);
        if self.per_source.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_source {
            return Err(Refusal::Source);
        }
        let full = self.anonymous.len() >= self.limits.max_anonymous
            || self.total() >= self.limits.max_connections;
        let evicted = if full {
            let victim = self.victim().ok_or(Refusal::Global)?;
            self.release(victim);
            Some(victim)
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.anonymous.insert(id, ip);
        *self.per_source.entry(ip).or_insert(0) += 1;
        *self.anonymous_per_source.entry(ip).or_insert(0) += 1;
        Ok(Admitted { id, evicted })
    }

    /// The anonymous connection to evict: the oldest of the source holding the most.
    fn victim(&self) -> Option<ConnId> {
        let (&ip, _) = self
            .anonymous_per_source
            .iter()
            .max_by_key(|(ip, n)| (**n, std::cmp::Reverse(**ip)))?;
        self.anonymous
            .iter()
            .find(|(_, src)| **src == ip)
            .map(|(id, _)| *id)
    }

    /// `id` presented a valid certificate: it moves to the certificate holders' budget. False when
    /// it no longer holds a slot (it was evicted meanwhile): close it.
    pub fn authenticate(&mut self, id: ConnId) -> bool {
        let Some(ip) = self.anonymous.remove(&id) else {
            return self.authenticated.contains_key(&id);
        };
        dec(&mut self.anonymous_per_source, ip);
        self.authenticated.insert(id, ip);
        true
    }

    /// `id` ended (or was evicted): its slot is free. Releasing twice is harmless.
    pub fn release(&mut self, id: ConnId) {
        if let Some(ip) = self.anonymous.remove(&id) {
            dec(&mut self.anonymous_per_source, ip);
            dec(&mut self.per_source, ip);
        } else if let Some(ip) = self.authenticated.remove(&id) {
            dec(&mut self.per_source, ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn books(max_connections: usize, max_anonymous: usize, max_per_source: usize) -> Admission {
        Admission::new(AdmissionLimits {
            max_connections,
            max_anonymous,
            max_per_source,
        })
    }

    #[test]
    fn anonymous_connections_never_take_the_reserve() {
        let mut a = books(10, 4, 100);
        let mut ids = Vec::new();
        for i in 0..50 {
            let got = a.admit(ip(&format!("127.0.1.{i}"))).unwrap();
            ids.push(got.id);
            assert!(a.anonymous() <= 4);
        }
        assert_eq!(a.total(), 4);
        // Six certificate holders still fit beside the four anonymous connections.
        for i in 0..6 {
            let got = a.admit(ip(&format!("127.0.2.{i}"))).unwrap();
            assert!(a.authenticate(got.id));
        }
        assert_eq!((a.total(), a.anonymous()), (9, 3));
        // Anonymous ones fill their budget again, and then only evict each other.
        for i in 0..20 {
            a.admit(ip(&format!("127.0.3.{i}"))).unwrap();
        }
        assert_eq!((a.total(), a.anonymous()), (10, 4));
        let got = a.admit(ip("127.0.4.1")).unwrap();
        assert!(got.evicted.is_some());
        assert!(a.authenticate(got.id));
        assert_eq!((a.total(), a.anonymous()), (10, 3));
    }

    #[test]
    fn a_newcomer_evicts_the_oldest_anonymous_connection_of_the_largest_source() {
        let mut a = books(100, 4, 100);
        let first_big = a.admit(ip("127.0.0.9")).unwrap().id;
        let small = a.admit(ip("127.0.0.1")).unwrap().id;
        let second_big = a.admit(ip("127.0.0.9")).unwrap().id;
        a.admit(ip("127.0.0.9")).unwrap();
        let got = a.admit(ip("127.0.0.5")).unwrap();
        assert_eq!(got.evicted, Some(first_big));
        let got = a.admit(ip("127.0.0.6")).unwrap();
        assert_eq!(got.evicted, Some(second_big));
        assert!(a.holds(small));
        assert!(!a.holds(first_big));
    }

    #[test]
    fn an_evicted_connection_cannot_authenticate_and_frees_its_source() {
        let mut a = books(100, 1, 2);
        let old = a.admit(ip("127.0.0.9")).unwrap().id;
        let new = a.admit(ip("127.0.0.8")).unwrap();
        assert_eq!(new.evicted, Some(old));
        assert!(!a.authenticate(old));
        assert_eq!(a.from_source(ip("127.0.0.9")), 0);
        assert!(a.authenticate(new.id));
        a.release(old);
        assert_eq!(a.total(), 1);
    }

    #[test]
    fn when_certificate_holders_fill_every_slot_newcomers_are_refused() {
        let mut a = books(3, 2, 100);
        for i in 0..3 {
            let id = a.admit(ip(&format!("127.0.0.{i}"))).unwrap().id;
            assert!(a.authenticate(id));
        }
        assert_eq!(a.admit(ip("127.0.0.200")), Err(Refusal::Global));
        assert_eq!(
            Refusal::Global.to_string(),
            "gateway busy: too many connections"
        );
    }

    #[test]
    fn the_per_source_cap_counts_both_kinds_and_both_address_forms() {
        let mut a = books(100, 50, 3);
        let id = a.admit(ip("127.0.0.7")).unwrap().id;
        assert!(a.authenticate(id));
        a.admit(ip("::ffff:127.0.0.7")).unwrap();
        a.admit(ip("127.0.0.7")).unwrap();
        let refused = a.admit(ip("::ffff:127.0.0.7")).unwrap_err();
        assert_eq!(refused, Refusal::Source);
        assert_eq!(
            refused.to_string(),
            "gateway busy: too many connections from your address"
        );
        assert_eq!(a.total(), 3, "a refusal evicts nobody");
        a.release(id);
        a.release(id);
        assert_eq!(a.from_source(ip("127.0.0.7")), 2);
        assert!(a.admit(ip("127.0.0.7")).is_ok());
    }
}
