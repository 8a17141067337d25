//! The HTTP decoy's own parsing: the request-line check, form bodies and
//! Authorization headers (requests themselves are parsed by hyper).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::http;

fuzz_target!(|data: &[u8]| {
    let _ = http::request_line_ok(data);
    let _ = http::form_fields(data);
    if let Ok(value) = std::str::from_utf8(data) {
        let _ = http::authorization(value);
    }
});
