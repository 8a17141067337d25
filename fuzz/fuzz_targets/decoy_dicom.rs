//! DICOM upper-layer PDUs (through dicom-ul) and DIMSE command sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruse_agent::decoys::dicom;

fuzz_target!(|data: &[u8]| {
    if let Some(dicom_ul::Pdu::AssociationRQ(rq)) = dicom::parse_pdu(data) {
        let _ = dicom::presented(&rq);
        let _ = dicom::answer(&rq, "PACSARCHIVE02");
    }
    if let Some(cmd) = dicom::parse_command(data) {
        let rsp = dicom::echo_response(&cmd);
        assert!(dicom::parse_command(&rsp).is_some());
    }
});
