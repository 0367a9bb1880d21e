//! `cargo fuzz run recording_reader`: see `ward_fuzz::check_recording` and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_recording(data);
});
