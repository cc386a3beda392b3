//! The relay's classification of an HTTP/1.1 request head (which requests it serves itself and
//! which go to Pingora): client bytes on every kept-alive connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cordon_proxy::fuzzing::relay_head(data);
});
