//! MySQL handshake responses (the client's login packet).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::mysql;

fuzz_target!(|data: &[u8]| {
    if let Ok(login) = mysql::parse_login(data) {
        // Whatever was read fits in the packet it came from.
        assert!(login.auth.len() <= data.len());
        assert!(login.user.len() <= data.len() * 3);
    }
});
