//! Telnet input: option negotiation, subnegotiation and line breaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::telnet;

fuzz_target!(|data: &[u8]| {
    // Fed whole and byte by byte: the reader's state carries across reads.
    let (mut whole, mut split) = (Vec::new(), Vec::new());
    telnet::Reader::default().feed(data, &mut whole);
    let mut r = telnet::Reader::default();
    for b in data {
        r.feed(std::slice::from_ref(b), &mut split);
    }
    assert_eq!(whole, split);
    for input in &whole {
        if let telnet::Input::Sub { option, data } = input {
            let _ = telnet::terminal_type(*option, data);
        }
    }
});
