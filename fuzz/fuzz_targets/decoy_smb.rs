//! The SMB decoy's state machine over a sequence of messages: the input is
//! split at each 0xFE 'S' 'M' 'B' / 0xFF 'S' 'M' 'B' marker into messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::{ntlm, smb};

fuzz_target!(|data: &[u8]| {
    let mut session = smb::Session::new(ntlm::Names::new("files01", "files01.radiology.example.org"), [7; 64], 0);
    let mut starts: Vec<usize> = data
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w[1..] == *b"SMB" && (w[0] == 0xfe || w[0] == 0xff))
        .map(|(i, _)| i)
        .collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(data.len());
        let (reply, _) = session.handle(&data[start..end]);
        if let Some(reply) = reply {
            assert!(reply.len() < 4096, "reply of {} bytes", reply.len());
        }
        if session.done {
            break;
        }
    }
});
