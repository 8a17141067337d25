//! HL7 v2 MSH parsing and the ACK built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::hl7;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = hl7::parse(data) {
        let ack = hl7::ack(&h, "20261128101500");
        // The ACK is one well-framed message: no frame bytes inside.
        assert!(!ack[1..ack.len() - 2].contains(&0x1c));
    }
});
