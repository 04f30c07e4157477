//! Audit records: any bytes decode or fail cleanly; whatever decodes
//! re-encodes to itself and replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    arbiter::fuzzing::audit_decode(data);
});
