//! An SSH server (russh) that looks like a Debian OpenSSH, offers password
//! and public-key authentication, records every attempt (key
//! fingerprints for keys) and refuses them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, Config, Handler as SshHandler, PublicKeyOffer, VerifiedPublicKey};
use russh::{MethodKind, MethodSet, SshId};

use ruse_proto::agent::v1 as pb;
use ruse_proto::types::random_bytes;

use super::{Conn, DecoyError, Handler, ServiceCtx};

/// What the server says it is: the OpenSSH of Debian 12.
pub const BANNER: &str = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3";

struct Decoy {
    ctx: Arc<ServiceCtx>,
    peer: std::net::SocketAddr,
    presented: Arc<AtomicBool>,
}

impl Decoy {
    async fn report(&self, credential: pb::Credential, how: &str) {
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
            pb::Credential {
                username: user.chars().take(256).collect(),
                password: password.chars().take(256).collect(),
                ..Default::default()
            },
            "password",
        )
        .await;
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.report(
            pb::Credential {
                username: user.chars().take(256).collect(),
                key_fingerprint: offer.public_key.fingerprint(HashAlg::Sha256).to_string(),
                key_type: offer.algorithm.as_str().to_owned(),
                ..Default::default()
            },
            "publickey",
        )
        .await;
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.report(
            pb::Credential {
                username: user.chars().take(256).collect(),
                key_fingerprint: key.public_key.fingerprint(HashAlg::Sha256).to_string(),
                key_type: key.algorithm.as_str().to_owned(),
                ..Default::default()
            },
            "publickey (signed)",
        )
        .await;
        Ok(Auth::reject())
    }
}

/// The decoy's host key: made once, kept, so its fingerprint never
/// changes (a changed host key would warn the client).
fn host_key(ctx: &ServiceCtx) -> Result<PrivateKey, DecoyError> {
    let path = ctx.dir.join(format!("{}-ssh_host_ed25519_key", ctx.decoy));
    if let Ok(pem) = ruse_pki::read_private_file(&path) {
        return PrivateKey::from_openssh(pem.as_bytes())
            .map_err(|e| DecoyError::Setup(format!("{}: {e}", path.display())));
    }
    let mut seed = [0u8; 32];
    random_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| DecoyError::Setup(e.to_string()))?;
    ruse_pki::write_private_file(&path, pem.as_bytes())
        .map_err(|e| DecoyError::Setup(e.to_string()))?;
    Ok(key)
}

pub fn handler(ctx: &Arc<ServiceCtx>) -> Result<Handler, DecoyError> {
    let config = Arc::new(Config {
        server_id: SshId::Standard(BANNER.into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        // Refusals take the same time whatever was presented.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key(ctx)?],
        max_auth_attempts: 6,
        inactivity_timeout: Some(ctx.limits.read_timeout),
        nodelay: true,
        ..Config::default()
    });
    Ok(Arc::new(move |conn: Conn| {
        let config = config.clone();
        Box::pin(async move {
            let presented = Arc::new(AtomicBool::new(false));
            let decoy = Decoy {
                ctx: conn.ctx.clone(),
                peer: conn.peer,
                presented: presented.clone(),
            };
            if let Ok(session) = russh::server::run_stream(config, conn.stream, decoy).await {
                let _ = session.await;
            }
            if !presented.load(Ordering::Relaxed) {
                conn.ctx
                    .report(conn.peer, "decoy-connection", None, String::new())
                    .await;
            }
        })
    }))
}
