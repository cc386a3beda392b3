//! The controller's server-sent-events parser (CMA's session event stream): any chunking of
//! the same bytes yields the same frames, and every frame can be interpreted.
#![no_main]

use cordon_controller::cma::events::{SseParser, interpret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = SseParser::default().push(stream);
    let at = usize::from(cut).min(stream.len());
    let mut parser = SseParser::default();
    let mut split = parser.push(&stream[..at]);
    split.extend(parser.push(&stream[at..]));
    assert_eq!(whole, split, "chunking at {at} changed the frames");
    for frame in &whole {
        let _ = interpret(frame);
    }
});
