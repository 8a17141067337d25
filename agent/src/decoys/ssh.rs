//! An SSH server (russh) that looks like a Debian OpenSSH, offers password
//! and public-key authentication, records every attempt (key
//! fingerprints for keys) and refuses them all.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};
use russh::server::{Auth, Config, Handler as SshHandler, PublicKeyOffer, VerifiedPublicKey};
use russh::{MethodKind, MethodSet, Preferred, SshId, cipher, compression, kex, mac};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use ruse_proto::convert::PresentedCredential;
use ruse_proto::types::random_bytes;

use super::{Conn, DecoyError, Handler, ServiceCtx};

/// What the server says it is: the OpenSSH of Debian 12, at the patch
/// level of its security updates as of 2026.
pub const BANNER: &str = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10";

/// The longest identification line sshd reads (OpenSSH's
/// `SSH_MAX_BANNER_LEN`).
const MAX_ID_LINE: usize = 8192;

/// How sshd answers a client's identification line (RFC 4253 §4.2, as
/// OpenSSH checks it; `line` without its line end): `Ok` to go on with the
/// key exchange, or the message sshd sends before it hangs up.
pub fn identification(line: &[u8]) -> Result<(), &'static str> {
    const INVALID: &str = "Invalid SSH identification string.";
    if line.len() > MAX_ID_LINE || line.contains(&0) {
        return Err(INVALID);
    }
    let rest = line.strip_prefix(b"SSH-").ok_or(INVALID)?;
    let (major, rest) = number(rest).ok_or(INVALID)?;
    let rest = rest.strip_prefix(b".").ok_or(INVALID)?;
    let (minor, rest) = number(rest).ok_or(INVALID)?;
    let software = rest.strip_prefix(b"-").ok_or(INVALID)?;
    if software.is_empty() {
        return Err(INVALID);
    }
    // 1.99 is a 2.0 client that also speaks 1 (RFC 4253 §5.1).
    if major != 2 && (major, minor) != (1, 99) {
        return Err("Protocol major versions differ.");
    }
    Ok(())
}

/// The decimal number `s` starts with, and what follows it.
fn number(s: &[u8]) -> Option<(u32, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (n, rest) = s.split_at(digits);
    let value = n.iter().fold(0u32, |v, d| {
        v.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    Some((value, rest))
}

/// What sshd offers in its KEXINIT, less what russh cannot do (the
/// sntrup761 key exchange, the UMAC MACs): docs/security.md.
fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(&[
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::ECDH_SHA2_NISTP256,
            kex::ECDH_SHA2_NISTP384,
            kex::ECDH_SHA2_NISTP521,
            kex::DH_GEX_SHA256,
            kex::DH_G16_SHA512,
            kex::DH_G18_SHA512,
            kex::DH_G14_SHA256,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ed25519,
        ]),
        cipher: Cow::Borrowed(&[
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_CTR,
            cipher::AES_192_CTR,
            cipher::AES_256_CTR,
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
        ]),
        mac: Cow::Borrowed(&[
            mac::HMAC_SHA256_ETM,
            mac::HMAC_SHA512_ETM,
            mac::HMAC_SHA1_ETM,
            mac::HMAC_SHA256,
            mac::HMAC_SHA512,
            mac::HMAC_SHA1,
        ]),
        compression: Cow::Borrowed(&[compression::NONE, compression::ZLIB_LEGACY]),
        ..Preferred::DEFAULT
    }
}

struct Decoy {
    ctx: Arc<ServiceCtx>,
    peer: std::net::SocketAddr,
    presented: Arc<AtomicBool>,
}

impl Decoy {
    async fn report(&self, credential: PresentedCredential, how: &str) {
        self.presented.store(true, Ordering::Relaxed);
        self.ctx
            .report(self.peer, "decoy-login", Some(credential), how.into())
            .await;
    }
}

impl SshHandler for Decoy {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.report(
            PresentedCredential {
                username: user.chars().take(256).collect(),
                password: password.chars().take(256).collect(),
                ..Default::default()
            },
            "password",
        )
        .await;
        self.ctx.refusal_pause(password_refusal_wait()).await;
        Ok(refuse())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.report(
            PresentedCredential {
                username: user.chars().take(256).collect(),
                key_fingerprint: offer.public_key.fingerprint(HashAlg::Sha256).to_string(),
                key_type: offer.algorithm.as_str().to_owned(),
                ..Default::default()
            },
            "publickey",
        )
        .await;
        Ok(refuse())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.report(
            PresentedCredential {
                username: user.chars().take(256).collect(),
                key_fingerprint: key.public_key.fingerprint(HashAlg::Sha256).to_string(),
                key_type: key.algorithm.as_str().to_owned(),
                ..Default::default()
            },
            "publickey (signed)",
        )
        .await;
        Ok(refuse())
    }
}

/// The host keys Debian makes when openssh-server is installed (RSA
/// 3072, ECDSA P-256, Ed25519): made once per decoy and kept, so their
/// fingerprints never change (a changed host key would warn the client).
fn host_keys(ctx: &ServiceCtx) -> Result<Vec<PrivateKey>, DecoyError> {
    let kinds = [
        ("rsa", Algorithm::Rsa { hash: None }),
        (
            "ecdsa",
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ),
        ("ed25519", Algorithm::Ed25519),
    ];
    kinds
        .into_iter()
        .map(|(name, algorithm)| {
            let path = ctx.dir.join(format!("{}-ssh_host_{name}_key", ctx.decoy));
            if let Ok(pem) = ruse_pki::read_private_file(&path) {
                return PrivateKey::from_openssh(pem.as_bytes())
                    .map_err(|e| DecoyError::Setup(format!("{}: {e}", path.display())));
            }
            let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), algorithm)
                .map_err(|e| DecoyError::Setup(format!("{name} host key: {e}")))?;
            let pem = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| DecoyError::Setup(e.to_string()))?;
            ruse_pki::write_private_file(&path, pem.as_bytes())
                .map_err(|e| DecoyError::Setup(e.to_string()))?;
            Ok(key)
        })
        .collect()
}

/// A refusal that leaves both methods open, as sshd's does (russh's own
/// drops password after a refused one).
fn refuse() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(methods()),
        partial_success: false,
    }
}

fn methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..])
}

/// How long sshd takes to refuse a password: `pam_unix` waits 2 s after a
/// failure, after hashing the password (for a user who does not exist as
/// well). Measured against Debian's sshd, less the connection: 1.9-2.4 s
/// between the password and the refusal, some at twice that. A refused
/// public key is answered at once, as sshd does.
fn password_refusal_wait() -> Duration {
    let mut b = [0u8; 2];
    random_bytes(&mut b);
    Duration::from_millis(2_000 + u64::from(u16::from_le_bytes(b)) % 200)
}

/// The identification exchange done here rather than in russh, so that a
/// client that does not speak SSH gets sshd's answer: the banner at once,
/// then the client's line checked as sshd checks it. Returns the bytes read
/// (the line and anything after it) when the key exchange should go on.
async fn exchange_identification(conn: &mut Conn) -> Option<Vec<u8>> {
    conn.stream
        .write_all(format!("{BANNER}\r\n").as_bytes())
        .await
        .ok()?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = seen.iter().position(|b| *b == b'\n') {
            break Some(end);
        }
        if seen.len() > MAX_ID_LINE {
            break None;
        }
        let n = tokio::time::timeout(conn.ctx.limits.read_timeout, conn.stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&chunk[..n]);
    };
    let line = match end {
        Some(end) => {
            let line = &seen[..end];
            line.strip_suffix(b"\r").unwrap_or(line)
        }
        None => &seen[..],
    };
    if let Err(message) = identification(line) {
        let _ = conn
            .stream
            .write_all(format!("{message}\r\n").as_bytes())
            .await;
        return None;
    }
    // What russh reads itself (docs/security.md: sshd also takes longer
    // and non-UTF-8 lines).
    let russh_takes = line.len() <= 253
        && std::str::from_utf8(line)
            .is_ok_and(|l| l.starts_with("SSH-2.0-") || l.starts_with("SSH-1.99-"));
    russh_takes.then_some(seen)
}

/// The connection as russh sees it once the identification exchange is
/// done: what was read is read again, and russh's banner, already sent, is
/// not sent twice.
struct Exchanged {
    inner: TcpStream,
    replay: Vec<u8>,
    replayed: usize,
    /// Bytes of russh's banner line still to swallow.
    banner_left: usize,
}

impl AsyncRead for Exchanged {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let rest = this.replay.get(this.replayed..).unwrap_or_default();
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.replayed += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Exchanged {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.banner_left > 0 {
            let n = this.banner_left.min(buf.len());
            this.banner_left -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub async fn handler(ctx: &Arc<ServiceCtx>) -> Result<Handler, DecoyError> {
    // Making an RSA key takes about a second: not on the async threads.
    let keys = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || host_keys(&ctx))
            .await
            .map_err(|e| DecoyError::Setup(format!("host keys: {e}")))??
    };
    let config = Arc::new(Config {
        server_id: SshId::Standard(BANNER.into()),
        methods: methods(),
        // Each method waits as sshd does (in the handler above).
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        preferred: preferred(),
        max_auth_attempts: 6,
        inactivity_timeout: Some(ctx.limits.read_timeout),
        nodelay: true,
        ..Config::default()
    });
    Ok(Arc::new(move |mut conn: Conn| {
        let config = config.clone();
        Box::pin(async move {
            let presented = Arc::new(AtomicBool::new(false));
            if let Some(replay) = exchange_identification(&mut conn).await {
                let decoy = Decoy {
                    ctx: conn.ctx.clone(),
                    peer: conn.peer,
                    presented: presented.clone(),
                };
                let stream = Exchanged {
                    inner: conn.stream,
                    replay,
                    replayed: 0,
                    banner_left: BANNER.len() + 2,
                };
                if let Ok(session) = russh::server::run_stream(config, stream, decoy).await {
                    let _ = session.await;
                }
            }
            if !presented.load(Ordering::Relaxed) {
                conn.ctx
                    .report(conn.peer, "decoy-connection", None, String::new())
                    .await;
            }
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identification_lines_are_judged_as_sshd_judges_them() {
        const INVALID: &str = "Invalid SSH identification string.";
        const VERSIONS: &str = "Protocol major versions differ.";
        let cases: &[(&[u8], Result<(), &str>)] = &[
            (b"SSH-2.0-OpenSSH_9.6", Ok(())),
            (b"SSH-2.0-x y z", Ok(())),
            (b"SSH-1.99-PuTTY", Ok(())),
            (b"SSH-02.0-a", Ok(())),
            (b"SSH-2.0-\xff\xfe", Ok(())),
            (b"SSH-1.5-scanner", Err(VERSIONS)),
            (b"SSH-3.0-x", Err(VERSIONS)),
            (b"GET / HTTP/1.0", Err(INVALID)),
            (b"", Err(INVALID)),
            (b"SSH-2.0", Err(INVALID)),
            (b"SSH-2.0-", Err(INVALID)),
            (b"ssh-2.0-x", Err(INVALID)),
            (b"SSH-2.x-a", Err(INVALID)),
            (b"SSH-2.0-\0x", Err(INVALID)),
            (b"SSH-99999999999999999999.0-x", Err(VERSIONS)),
        ];
        for (line, expected) in cases {
            assert_eq!(
                identification(line),
                *expected,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = [b"SSH-2.0-".as_slice(), &[b'x'; MAX_ID_LINE]].concat();
        assert_eq!(identification(&long), Err(INVALID));
        assert_eq!(identification(&long[..MAX_ID_LINE]), Ok(()));
    }
}
