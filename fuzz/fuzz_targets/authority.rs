//! Authority, path and query parsing for the policy input (Host headers, :authority, CONNECT
//! targets, request targets). An accepted host carries nothing that could name another host
//! (user info, a path, whitespace) and prints back to the same authority.
#![no_main]

use cordon_policy::input::{parse_authority, parse_path, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_path(text);
    let _ = parse_query(text);
    if let Some(a) = parse_authority(text, 443) {
        assert!(!a.host.is_empty(), "an empty host from {text:?}");
        assert!(
            !a.host
                .contains(['@', '/', '\\', '?', '#', ' ', '\t', '\r', '\n', '\0']),
            "host {:?} from {text:?}",
            a.host
        );
        let printed = a.to_string();
        let again = parse_authority(&printed, 443).expect("a printed authority parses");
        assert_eq!(again, a, "{text:?} -> {printed:?}");
    }
});
