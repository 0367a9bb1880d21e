//! The services: each operation a front end offers, with an authenticated principal and a typed
//! request in, a typed answer or a typed refusal out, and its audit event written in one place.
//! The frame dispatcher (`gateway.rs`) is a thin adapter over them; the web console will be
//! another.

pub mod review;
