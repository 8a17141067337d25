//! TDS from a client: packet headers, PRELOGIN options and LOGIN7.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::mssql;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..8).and_then(|h| <&[u8; 8]>::try_from(h).ok()) {
        if let Some((_, _, len)) = mssql::header(h) {
            assert!((8..=mssql::MAX_PACKET).contains(&len));
        }
    }
    if let Some(options) = mssql::prelogin_options(data) {
        assert!(options.iter().all(|(_, v)| v.len() <= data.len()));
    }
    if let Some(login) = mssql::parse_login(data) {
        assert!(login.user.chars().count() <= 256);
        assert!(login.password.chars().count() <= 256);
    }
});
