//! Windows Security-log events (4663, 4656) as the event log renders them
//! in XML: the object names in them come from whoever opened the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::platform::security_event;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(access) = security_event::parse(text) {
            assert!(access.event_id == 4663 || access.event_id == 4656);
            assert!(access.object_name.len() <= text.len());
            let _ = access.ops();
        }
    }
});
