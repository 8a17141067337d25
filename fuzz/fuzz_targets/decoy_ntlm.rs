//! NTLMSSP inside a security blob: locating, typing, reading AUTHENTICATE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::ntlm;

fuzz_target!(|data: &[u8]| {
    if let Some(msg) = ntlm::find(data) {
        let _ = ntlm::message_type(msg);
        if let Some(flags) = ntlm::negotiate_flags(msg) {
            let names = ntlm::Names::new("files01", "127.0.0.1");
            let c = ntlm::challenge(flags, [1; 8], &names, 0, ntlm::SAMBA_VERSION);
            assert_eq!(ntlm::message_type(&c), Some(2));
        }
        if let Some(a) = ntlm::authenticate(msg) {
            assert!(a.user.chars().count() <= 256);
        }
    }
});
