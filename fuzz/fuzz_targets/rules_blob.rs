//! Rules blobs: any bytes decode or fail cleanly; an accepted blob
//! re-encodes to itself and its compiled matcher agrees with the naive scan.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    arbiter::fuzzing::rules_blob(data);
});
