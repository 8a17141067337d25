//! FTP command lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::ftp;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = ftp::command(&line);
});
