//! SSH client identification lines, judged as sshd judges them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::ssh;

fuzz_target!(|data: &[u8]| {
    let _ = ssh::identification(data);
});
