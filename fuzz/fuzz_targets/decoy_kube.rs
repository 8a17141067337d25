//! Requests to the Kubernetes API decoy: the request line it checks as Go
//! does, and the answer (always valid JSON when it is JSON) to any method
//! and path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::kube;

fuzz_target!(|data: &[u8]| {
    let _ = kube::go_request_line_ok(data);
    let text = String::from_utf8_lossy(data);
    let (method, path) = text.split_once(' ').unwrap_or((&text, "/"));
    for credentials in [false, true] {
        let (_, body) = kube::answer(method, path, credentials);
        if body.starts_with('{') {
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "{body}");
        }
    }
});
