//! The one mapping between the CA's certificate kinds and the policy's principal kinds (the core
//! does not depend on the CA, nor the CA on the core).

use ward_ca::{Identity, Kind};
use ward_core::{Principal, PrincipalKind};

/// The policy kind of a certificate kind. Exhaustive: a new kind in the CA will not compile until
/// policy knows it.
pub fn principal_kind(k: Kind) -> PrincipalKind {
    match k {
        Kind::Vendor => PrincipalKind::Vendor,
        Kind::Clinician => PrincipalKind::Clinician,
        Kind::Security => PrincipalKind::Security,
        Kind::Admin => PrincipalKind::Admin,
        Kind::Gateway => PrincipalKind::Gateway,
    }
}

/// The certificate kind of a policy kind (every policy kind has one).
pub fn ca_kind(k: PrincipalKind) -> Kind {
    match k {
        PrincipalKind::Vendor => Kind::Vendor,
        PrincipalKind::Clinician => Kind::Clinician,
        PrincipalKind::Security => Kind::Security,
        PrincipalKind::Admin => Kind::Admin,
        PrincipalKind::Gateway => Kind::Gateway,
    }
}

/// Map a ward-ca identity onto the policy's view of a principal.
pub fn principal_of(id: &Identity) -> Principal {
    Principal {
        kind: principal_kind(id.kind),
        name: id.name.clone(),
        org: id.org.clone(),
        roles: id.roles.clone(),
        serial: id.serial.clone(),
        not_after: id.not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in PrincipalKind::ALL {
            assert_eq!(principal_kind(ca_kind(k)), k);
            assert_eq!(ca_kind(k).as_str(), k.as_str());
        }
    }
}
