//! What the controller does with an event an agent sends: protobuf
//! decoding, then the checks that bound every field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ruse_proto::agent::v1 as pb;
use ruse_proto::convert::ReportedEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = pb::Event::decode(data) {
        if let Ok(e) = ReportedEvent::try_from(event) {
            assert!(e.detail.len() <= 512);
        }
    }
});
