//! `cargo fuzz run ca_csr`: see `ward_fuzz::check_csr` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_csr(data);
});
