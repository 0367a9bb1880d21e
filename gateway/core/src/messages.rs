//! Sentences both ends share: the gateway sends them with a typed [`ErrorCode`](crate::ErrorCode),
//! and the client prints them for that code whatever the gateway's wording.

/// A login with a right password and an already used TOTP code ([`ErrorCode::TotpReused`](crate::ErrorCode::TotpReused)).
pub const TOTP_REUSED: &str = "this code was used already: wait for the next one";

/// A login refused because too many are in progress ([`ErrorCode::LoginBusy`](crate::ErrorCode::LoginBusy)).
pub const LOGIN_BUSY: &str = "gateway busy: too many logins in progress, retry in a moment";
