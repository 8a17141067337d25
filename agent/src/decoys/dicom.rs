//! A DICOM archive (PACS) that accepts any association far enough to
//! answer C-ECHO, then releases it.
//!
//! The A-ASSOCIATE-RQ is parsed by the `dicom-ul` upper-layer library; the
//! calling and called AE titles, any user identity and the proposed
//! presentation contexts are reported. Other DIMSE commands are reported
//! and the association aborted.

use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceUserReason, AssociationRJSource,
    AssociationRQ, PDataValue, PDataValueType, PresentationContextResult,
    PresentationContextResultReason, UserIdentityType, UserVariableItem,
};
use ruse_proto::convert::PresentedCredential;
use tokio::io::AsyncWriteExt;

use super::{Conn, credential};

/// Largest PDU accepted (header excluded).
pub const MAX_PDU: u32 = 64 << 10;
/// The largest PDU the archive says it receives: dcm4che's default.
const ADVERTISED_MAX_PDU: u32 = 16_378;
/// Largest command set gathered from fragments.
const MAX_COMMAND: usize = 16 << 10;
/// PDUs one association may exchange.
const MAX_PDUS: usize = 256;

const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// What the archive calls itself (a widely deployed open-source PACS).
const IMPLEMENTATION_CLASS: &str = "1.2.40.0.13.1.3";
const IMPLEMENTATION_VERSION: &str = "dcm4che-5.31.1";

/// Parses one whole PDU (6-byte header included). Pure, for fuzzing.
pub fn parse_pdu(bytes: &[u8]) -> Option<Pdu> {
    dicom_ul::read_pdu(bytes, MAX_PDU, true).ok().flatten()
}

/// The fields of a DIMSE command set that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub sop_class: String,
}

/// Parses a command set (implicit VR little endian, group 0000). Pure,
/// for fuzzing.
pub fn parse_command(bytes: &[u8]) -> Option<Command> {
    let mut cmd = Command::default();
    let mut seen_field = false;
    let mut rest = bytes;
    while rest.len() >= 8 {
        let group = u16::from_le_bytes([rest[0], rest[1]]);
        let element = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let value = rest.get(8..8usize.checked_add(len)?)?;
        rest = &rest[8 + len..];
        if group != 0 {
            return None;
        }
        let us = || (value.len() == 2).then(|| u16::from_le_bytes([value[0], value[1]]));
        match element {
            0x0002 => {
                cmd.sop_class = String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .chars()
                    .take(64)
                    .collect();
            }
            0x0100 => {
                cmd.field = us()?;
                seen_field = true;
            }
            0x0110 => cmd.message_id = us()?,
            _ => {}
        }
    }
    (seen_field && rest.is_empty()).then_some(cmd)
}

/// The name of a DIMSE command field.
pub fn command_name(field: u16) -> String {
    match field {
        0x0001 => "C-STORE-RQ".into(),
        0x0010 => "C-GET-RQ".into(),
        0x0020 => "C-FIND-RQ".into(),
        0x0021 => "C-MOVE-RQ".into(),
        0x0030 => "C-ECHO-RQ".into(),
        0x0FFF => "C-CANCEL-RQ".into(),
        other => format!("command 0x{other:04x}"),
    }
}

fn element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// The C-ECHO-RSP (status success) answering `rq`.
pub fn echo_response(rq: &Command) -> Vec<u8> {
    let mut uid = if rq.sop_class.is_empty() {
        VERIFICATION.as_bytes().to_vec()
    } else {
        rq.sop_class.as_bytes().to_vec()
    };
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let mut body = Vec::new();
    element(&mut body, 0x0002, &uid);
    element(&mut body, 0x0100, &0x8030u16.to_le_bytes());
    element(&mut body, 0x0120, &rq.message_id.to_le_bytes());
    // No data set follows.
    element(&mut body, 0x0800, &0x0101u16.to_le_bytes());
    element(&mut body, 0x0900, &0u16.to_le_bytes());
    let mut out = Vec::with_capacity(body.len() + 12);
    element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Whether an archive supports `abstract_syntax`: Verification, the
/// storage SOP classes and query/retrieve. Anything else (a UID a scanner
/// made up) is refused as a real archive refuses it.
fn supported(abstract_syntax: &str) -> bool {
    abstract_syntax == VERIFICATION
        || ["1.2.840.10008.5.1.4.1.1.", "1.2.840.10008.5.1.4.1.2."]
            .iter()
            .any(|prefix| abstract_syntax.starts_with(prefix))
}

/// How the archive answers an association request called to `called`
/// (its own AE title), as an archive does (PS3.8 §9.3.4): a request
/// called to another AE title, or of a protocol version without bit 0,
/// is rejected; otherwise it is accepted with each proposed context for
/// which it supports the abstract syntax and a little-endian transfer
/// syntax was offered.
pub fn answer(rq: &AssociationRQ, called: &str) -> Result<AssociationAC, AssociationRJ> {
    if rq.protocol_version & 1 == 0 {
        return Err(AssociationRJ {
            result: AssociationRJResult::Permanent,
            source: AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ),
        });
    }
    if rq.called_ae_title.trim_matches([' ', '\0']) != called {
        return Err(AssociationRJ {
            result: AssociationRJResult::Permanent,
            source: AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ),
        });
    }
    let presentation_contexts = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            // The first little-endian syntax in the proposer's order, as
            // dcm4che and dcmtk choose.
            let ts = pc
                .transfer_syntaxes
                .iter()
                .map(|t| t.trim_end_matches('\0'))
                .find(|t| [IMPLICIT_LE, EXPLICIT_LE].contains(t));
            let reason = if !supported(pc.abstract_syntax.trim_end_matches('\0')) {
                PresentationContextResultReason::AbstractSyntaxNotSupported
            } else if ts.is_some() {
                PresentationContextResultReason::Acceptance
            } else {
                PresentationContextResultReason::TransferSyntaxesNotSupported
            };
            PresentationContextResult {
                id: pc.id,
                reason,
                transfer_syntax: ts.unwrap_or(IMPLICIT_LE).to_owned(),
            }
        })
        .collect();
    Ok(AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: APPLICATION_CONTEXT.into(),
        presentation_contexts,
        user_variables: vec![
            UserVariableItem::MaxLength(ADVERTISED_MAX_PDU),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS.into()),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION.into()),
        ],
    })
}

/// The credential an association request presents.
pub fn presented(rq: &AssociationRQ) -> PresentedCredential {
    let mut c = credential();
    c.ae_title = rq.calling_ae_title.trim().chars().take(16).collect();
    c.called_ae_title = rq.called_ae_title.trim().chars().take(16).collect();
    for item in &rq.user_variables {
        if let UserVariableItem::UserIdentityItem(id) = item {
            let text = |b: Vec<u8>| {
                String::from_utf8_lossy(&b)
                    .chars()
                    .take(256)
                    .collect::<String>()
            };
            match id.identity_type() {
                UserIdentityType::Username => c.username = text(id.primary_field()),
                UserIdentityType::UsernamePassword => {
                    c.username = text(id.primary_field());
                    c.password = text(id.secondary_field());
                }
                _ => {
                    c.token = text(id.primary_field());
                }
            }
        }
    }
    c
}

fn encode(pdu: &Pdu) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, pdu).ok()?;
    Some(out)
}

/// Reads one PDU; `Ok(None)` at a clean end of stream.
async fn read_pdu(conn: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 6];
    match conn.read_exact(&mut header[..1]).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    conn.read_exact(&mut header[1..]).await?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if len > MAX_PDU {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("PDU of {len} bytes"),
        ));
    }
    let mut pdu = vec![0u8; 6 + len as usize];
    pdu[..6].copy_from_slice(&header);
    conn.read_exact(&mut pdu[6..]).await?;
    Ok(Some(pdu))
}

async fn send(conn: &mut Conn, pdu: &Pdu) -> bool {
    match encode(pdu) {
        Some(bytes) => conn.stream.write_all(&bytes).await.is_ok(),
        None => false,
    }
}

async fn abort(conn: &mut Conn) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
    };
    send(conn, &pdu).await;
}

/// Serves one association.
pub async fn serve(mut conn: Conn) {
    let ctx = conn.ctx.clone();
    let peer = conn.peer;
    let rq = match read_pdu(&mut conn).await {
        Ok(Some(bytes)) => match parse_pdu(&bytes) {
            Some(Pdu::AssociationRQ(rq)) => rq,
            _ => {
                ctx.report(
                    peer,
                    "decoy-connection",
                    None,
                    "not a DICOM association request".into(),
                )
                .await;
                abort(&mut conn).await;
                return;
            }
        },
        Ok(None) => {
            ctx.report(
                peer,
                "decoy-connection",
                None,
                "connected and closed".into(),
            )
            .await;
            return;
        }
        Err(e) => {
            ctx.report(
                peer,
                "decoy-connection",
                None,
                format!("cut off before an association request: {e}"),
            )
            .await;
            return;
        }
    };
    let contexts: Vec<String> = rq
        .presentation_contexts
        .iter()
        .take(8)
        .map(|pc| pc.abstract_syntax.trim_end_matches('\0').to_owned())
        .collect();
    let answer = answer(&rq, &ruse_proto::types::dicom_ae_title(&ctx.decoy));
    let outcome = match &answer {
        Ok(_) => String::new(),
        Err(rj) => match &rj.source {
            AssociationRJSource::ServiceUser(reason) => format!("; rejected: {reason}"),
            AssociationRJSource::ServiceProviderASCE(reason) => format!("; rejected: {reason}"),
            AssociationRJSource::ServiceProviderPresentation(_) => "; rejected".into(),
        },
    };
    ctx.report(
        peer,
        "decoy-login",
        Some(presented(&rq)),
        format!(
            "A-ASSOCIATE-RQ from {:?} to {:?}, {} presentation context(s): {}{outcome}",
            rq.calling_ae_title.trim(),
            rq.called_ae_title.trim(),
            rq.presentation_contexts.len(),
            contexts.join(", ")
        ),
    )
    .await;
    let ac = match answer {
        Ok(ac) => ac,
        Err(rj) => {
            send(&mut conn, &Pdu::AssociationRJ(rj)).await;
            let _ = conn.stream.shutdown().await;
            return;
        }
    };
    let accepted: Vec<u8> = ac
        .presentation_contexts
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .collect();
    if !send(&mut conn, &Pdu::AssociationAC(ac)).await {
        return;
    }
    let mut command = Vec::new();
    for _ in 0..MAX_PDUS {
        let pdu = match read_pdu(&mut conn).await {
            Ok(Some(bytes)) => parse_pdu(&bytes),
            Ok(None) | Err(_) => return,
        };
        match pdu {
            Some(Pdu::PData { data }) => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command
                        || !accepted.contains(&pdv.presentation_context_id)
                    {
                        abort(&mut conn).await;
                        return;
                    }
                    command.extend_from_slice(&pdv.data);
                    if command.len() > MAX_COMMAND {
                        abort(&mut conn).await;
                        return;
                    }
                    if !pdv.is_last {
                        continue;
                    }
                    let Some(rq) = parse_command(&std::mem::take(&mut command)) else {
                        abort(&mut conn).await;
                        return;
                    };
                    if rq.field != 0x0030 {
                        ctx.report(
                            peer,
                            "decoy-message",
                            None,
                            format!("{} ({}) refused", command_name(rq.field), rq.sop_class),
                        )
                        .await;
                        abort(&mut conn).await;
                        return;
                    }
                    let rsp = Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: pdv.presentation_context_id,
                            value_type: PDataValueType::Command,
                            is_last: true,
                            data: echo_response(&rq),
                        }],
                    };
                    if !send(&mut conn, &rsp).await {
                        return;
                    }
                }
            }
            Some(Pdu::ReleaseRQ) => {
                send(&mut conn, &Pdu::ReleaseRP).await;
                let _ = conn.stream.shutdown().await;
                return;
            }
            Some(Pdu::AbortRQ { .. }) => return,
            _ => {
                abort(&mut conn).await;
                return;
            }
        }
    }
    abort(&mut conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_response_round_trips_through_the_parser() {
        let rq = Command {
            field: 0x0030,
            message_id: 7,
            sop_class: VERIFICATION.into(),
        };
        let rsp = parse_command(&echo_response(&rq)).unwrap();
        assert_eq!(rsp.field, 0x8030);
        assert_eq!(rsp.sop_class, VERIFICATION);
    }

    #[test]
    fn command_parser_rejects_truncation_and_other_groups() {
        let rq = Command {
            field: 0x0030,
            message_id: 1,
            sop_class: VERIFICATION.into(),
        };
        let bytes = echo_response(&rq);
        for cut in 0..bytes.len() {
            // Every prefix either parses to a whole-element command or is refused.
            if let Some(c) = parse_command(&bytes[..cut]) {
                assert_eq!(c.field, 0x8030);
            }
        }
        let mut other = bytes.clone();
        other[0] = 8;
        assert_eq!(parse_command(&other), None);
        assert_eq!(parse_command(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn association_request_credentials_and_acceptance() {
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY01      ".into(),
            called_ae_title: "PACS".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                dicom_ul::pdu::PresentationContextProposed {
                    id: 1,
                    abstract_syntax: VERIFICATION.into(),
                    transfer_syntaxes: vec![EXPLICIT_LE.into(), IMPLICIT_LE.into()],
                },
                dicom_ul::pdu::PresentationContextProposed {
                    id: 3,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2.4.50".into()],
                },
                dicom_ul::pdu::PresentationContextProposed {
                    id: 5,
                    abstract_syntax: "1.2.3.4.5".into(),
                    transfer_syntaxes: vec![IMPLICIT_LE.into()],
                },
            ],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        };
        let c = presented(&rq);
        assert_eq!(c.ae_title, "MODALITY01");
        assert_eq!(c.called_ae_title, "PACS");
        let ac = answer(&rq, "PACS").unwrap();
        assert_eq!(
            ac.presentation_contexts[0].reason,
            PresentationContextResultReason::Acceptance
        );
        assert_eq!(ac.presentation_contexts[0].transfer_syntax, EXPLICIT_LE);
        assert_eq!(
            ac.presentation_contexts[1].reason,
            PresentationContextResultReason::TransferSyntaxesNotSupported
        );
        assert_eq!(
            ac.presentation_contexts[2].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        // Called to another AE title, or with protocol version 2: rejected.
        let rj = answer(&rq, "PACS2").unwrap_err();
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized
            )
        );
        let v2 = AssociationRQ {
            protocol_version: 2,
            ..rq.clone()
        };
        assert_eq!(
            answer(&v2, "PACS").unwrap_err().source,
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported
            )
        );
        // The request survives the library's writer and reader.
        let bytes = encode(&Pdu::AssociationRQ(rq.clone())).unwrap();
        let Some(Pdu::AssociationRQ(parsed)) = parse_pdu(&bytes) else {
            panic!("not parsed")
        };
        assert_eq!(parsed.calling_ae_title, "MODALITY01");
        assert_eq!(parsed.presentation_contexts, rq.presentation_contexts);
        assert_eq!(parse_pdu(&bytes[..bytes.len() - 1]), None);
    }
}
