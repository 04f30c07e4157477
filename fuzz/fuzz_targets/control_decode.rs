//! Control messages: any request decodes or is refused with a status, and a
//! refused request changes nothing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    arbiter::fuzzing::control(data);
});
