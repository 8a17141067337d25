//! RDP from a client: TPKT headers, X.224 connection requests with their
//! negotiation, CredSSP TSRequests (and the DER under them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::{der, rdp};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..4).and_then(|h| <&[u8; 4]>::try_from(h).ok()) {
        if let Some(len) = rdp::tpkt_length(h) {
            assert!(len <= rdp::MAX_PDU);
        }
    }
    if let Some(req) = rdp::connection_request(data) {
        assert!(req.cookie.chars().count() <= 64);
        let (_, confirm) = rdp::connection_confirm(&req);
        assert!(confirm.len() <= 19);
    }
    if let der::ElementLen::Known(n) = der::element_len(data) {
        assert!(n >= 2);
    }
    if let Some(req) = rdp::ts_request(data) {
        assert!(req.nego_token.len() <= data.len());
        let again = rdp::ts_request_bytes(req.version, Some(&req.nego_token), req.error_code);
        assert!(rdp::ts_request(&again).is_some());
    }
});
