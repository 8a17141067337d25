//! What the controller does with a manifest an operator applies: the shape
//! check, YAML/JSON parsing of every document and each kind's validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ruse_controller::resources::parse(text);
    }
});
