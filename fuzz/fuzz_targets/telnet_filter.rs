//! `cargo fuzz run telnet_filter`: see `ward_fuzz::check_telnet` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_telnet(data);
});
