//! The `ward` binary's own code: the CLI's commands, `ward quickstart` and the simulated devices
//! it starts. The gateway is `ward-server`, the client `ward-client`, the store `ward-store`, the
//! wire `ward-transport`. See docs/architecture.md.
#![forbid(unsafe_code)]

pub mod evidence;
pub mod quickstart;
pub mod sim;
pub mod telemetry;
