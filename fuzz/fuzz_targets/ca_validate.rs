//! `cargo fuzz run ca_validate`: see `ward_fuzz::check_cert` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_cert(data);
});
