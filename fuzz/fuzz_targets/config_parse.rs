//! `cargo fuzz run config_parse`: see `ward_fuzz::check_config` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_config(&String::from_utf8_lossy(data));
});
