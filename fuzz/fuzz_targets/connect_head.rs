//! An explicit listener's CONNECT head. A tunnel target it accepts is a normalised
//! `host:port` that parses back to itself (policy and the SNI pin compare it as text).
#![no_main]

use cordon_policy::input::parse_authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(target) = cordon_proxy::fuzzing::connect_head(data) {
        let again = parse_authority(&target, 0).expect("an accepted target parses again");
        assert_ne!(again.port, 0);
        assert_eq!(again.to_string(), target);
    }
});
