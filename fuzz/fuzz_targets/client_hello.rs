//! The transparent listener's first-bytes classifier (ClientHello, HTTP, other): whatever a
//! sandbox sends first. A server name it reports is what policy and the certificate are
//! decided on, so it must be a plain lower-case name.
#![no_main]

use cordon_proxy::intercept::client_hello::{FirstBytes, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let FirstBytes::Tls { sni: Some(name), .. } = classify(data) {
        assert!(!name.is_empty(), "an empty server name");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
            "server name {name:?} is not a plain lower-case DNS name"
        );
    }
});
