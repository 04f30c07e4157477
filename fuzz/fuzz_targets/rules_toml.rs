//! The rules TOML front end: any text parses or yields diagnostics (never a
//! panic); whatever it accepts compiles to a blob that decodes to the same
//! rule set.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match arbiter_ruleset::parse_str(text, "fuzz.toml") {
        Ok(loaded) => {
            let blob = arbiter::compiled::encode(&loaded.rules).expect("accepted rules encode");
            let back = arbiter::compiled::decode_rule_set(&blob).expect("encoded rules decode");
            assert_eq!(back.rules.len(), loaded.rules.rules.len());
            let _ = arbiter::compiled::decode(&blob).expect("encoded rules compile");
        }
        Err(report) => {
            // Rendering the diagnostics must not panic either.
            let _ = report.to_string();
        }
    }
});
