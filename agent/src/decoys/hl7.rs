//! An HL7 v2 interface listening over MLLP: reads framed messages, records
//! message type and sending application and facility, and answers each
//! with a well-formed ACK (MSA|AA).

use ruse_proto::convert::PresentedCredential;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Conn;

const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];
/// Largest message accepted.
pub const MAX_MESSAGE: usize = 64 << 10;
const MAX_MESSAGES: usize = 64;

/// What an MSH segment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub message_type: String,
    pub control_id: String,
    pub version: String,
}

/// Parses the MSH segment of a message. Pure, for fuzzing.
pub fn parse(message: &[u8]) -> Option<Header> {
    let text = String::from_utf8_lossy(message);
    let msh = text.split(['\r', '\n']).find(|s| s.starts_with("MSH"))?;
    let sep = msh.chars().nth(3)?;
    if sep.is_alphanumeric() {
        return None;
    }
    // MSH-1 is the separator itself, so fields[n] is MSH-(n+1).
    let fields: Vec<&str> = msh.split(sep).collect();
    let field = |n: usize| -> String {
        fields
            .get(n)
            .map(|f| f.chars().take(64).collect())
            .unwrap_or_default()
    };
    let component = |s: String| -> String { s.split('^').next().unwrap_or_default().to_owned() };
    Some(Header {
        sending_application: component(field(2)),
        sending_facility: component(field(3)),
        receiving_application: component(field(4)),
        receiving_facility: component(field(5)),
        message_type: field(8),
        control_id: field(9),
        version: field(11),
    })
}

/// The ACK for a message.
pub fn ack(h: &Header, now: &str) -> Vec<u8> {
    let trigger = h.message_type.split('^').nth(1).unwrap_or_default();
    // Echoed fields lose separators and control bytes (MLLP framing).
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '|' && !c.is_control())
            .collect::<String>()
    };
    let text = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{now}||ACK^{}^ACK|ACK{}|P|{}\rMSA|AA|{}\r",
        clean(&h.receiving_application),
        clean(&h.receiving_facility),
        clean(&h.sending_application),
        clean(&h.sending_facility),
        clean(trigger),
        clean(&h.control_id),
        if h.version.is_empty() {
            "2.5.1".to_owned()
        } else {
            clean(&h.version)
        },
        clean(&h.control_id),
    );
    let mut out = vec![START];
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&END);
    out
}

/// Reads one MLLP frame; `Ok(None)` at end of stream.
async fn read_frame(conn: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let mut byte = [0u8; 1];
    // Skip to the start byte.
    loop {
        let n = tokio::time::timeout(conn.ctx.limits.read_timeout, conn.stream.read(&mut byte))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
        if n == 0 {
            return Ok(None);
        }
        if byte[0] == START {
            break;
        }
    }
    let mut message = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(conn.ctx.limits.read_timeout, conn.stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "frame not terminated",
            ));
        }
        message.extend_from_slice(&chunk[..n]);
        if let Some(end) = message.windows(2).position(|w| w == END) {
            message.truncate(end);
            return Ok(Some(message));
        }
        if message.len() > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "message too large",
            ));
        }
    }
}

pub async fn serve(mut conn: Conn) {
    let peer = conn.peer;
    let ctx = conn.ctx.clone();
    let mut seen = 0;
    for _ in 0..MAX_MESSAGES {
        let message = match read_frame(&mut conn).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                ctx.report(
                    peer,
                    "decoy-connection",
                    None,
                    format!("malformed MLLP: {e}"),
                )
                .await;
                return;
            }
        };
        seen += 1;
        let Some(header) = parse(&message) else {
            ctx.report(
                peer,
                "decoy-message",
                None,
                "a frame without an MSH segment".into(),
            )
            .await;
            continue;
        };
        ctx.report(
            peer,
            "decoy-message",
            Some(PresentedCredential {
                application: header.sending_application.clone(),
                ..Default::default()
            }),
            format!(
                "{} from {}@{} (control id {})",
                header.message_type,
                header.sending_application,
                header.sending_facility,
                header.control_id
            ),
        )
        .await;
        let now = ruse_proto::types::UnixMs::now()
            .rfc3339()
            .replace(['-', ':', 'T', 'Z'], "");
        if conn
            .stream
            .write_all(&ack(&header, &now[..14.min(now.len())]))
            .await
            .is_err()
        {
            return;
        }
    }
    if seen == 0 {
        ctx.report(peer, "decoy-connection", None, String::new())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] = b"MSH|^~\\&|REGADT|GENHOSP|EHR|GENHOSP|20261128101500||ADT^A01^ADT_A01|MSG00001|P|2.5.1\rEVN|A01|20261128101500\rPID|1||MRN1234567^^^GENHOSP^MR||DOE^JANE||19800101|F\r";

    #[test]
    fn parses_the_header_and_acks_it() {
        let h = parse(ADT).unwrap();
        assert_eq!(h.sending_application, "REGADT");
        assert_eq!(h.sending_facility, "GENHOSP");
        assert_eq!(h.message_type, "ADT^A01^ADT_A01");
        assert_eq!(h.control_id, "MSG00001");
        let ack = ack(&h, "20261128101501");
        assert_eq!(ack[0], START);
        assert!(ack.ends_with(&END));
        let text = String::from_utf8(ack[1..ack.len() - 2].to_vec()).unwrap();
        assert_eq!(
            text,
            "MSH|^~\\&|EHR|GENHOSP|REGADT|GENHOSP|20261128101501||ACK^A01^ACK|ACKMSG00001|P|2.5.1\rMSA|AA|MSG00001\r"
        );
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert!(parse(b"").is_none());
        assert!(parse(b"PID|1").is_none());
        assert!(parse(b"MSH").is_none());
        assert!(parse(b"MSHA").is_none());
        assert!(parse(&[0xff; 100]).is_none());
    }
}
