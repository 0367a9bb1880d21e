//! `cargo fuzz run frame_decode`: see `ward_fuzz::check_frame` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_frame(data);
});
