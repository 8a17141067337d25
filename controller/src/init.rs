//! `ruse-controller init`: a new CA, the first admin, and a rusectl context.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ruse_pki::{CaPin, CertificateAuthority, PkiError, write_private_file, write_public_file};
use ruse_proto::context::ContextFile;
use ruse_proto::types::{AdminName, Identity, Role, TrustDomain, UnixMs};

use crate::layout;
use crate::model::AdminRecord;
use crate::store::{PgOptions, PgStore, SledStore, Store, StoreError};

/// What `init` needs to know.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub trust_domain: TrustDomain,
    /// The URL written into the rusectl context.
    pub controller_url: String,
    pub admin_name: AdminName,
    pub admin_cert_ttl: Duration,
    /// The PostgreSQL store the first admin is written to; `None`: the
    /// embedded store in `data_dir`.
    pub store: Option<PgOptions>,
}

/// What `init` made, for the caller to print.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub pin: CaPin,
    pub ca_cert: PathBuf,
    pub admin_dir: PathBuf,
    pub context_file: PathBuf,
    pub admin_cert_not_after: UnixMs,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{0} already exists: this data directory is initialised (use `serve`, or choose another --data-dir)"
    )]
    AlreadyInitialised(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `data_dir` already holds a CA.
pub fn is_initialised(data_dir: &Path) -> bool {
    layout::ca_cert(data_dir).exists()
}

/// Creates the CA, the store with the first admin, and the admin's
/// credentials and context file.
pub fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    let ca_cert = layout::ca_cert(&opts.data_dir);
    if ca_cert.exists() {
        return Err(InitError::AlreadyInitialised(ca_cert.display().to_string()));
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| InitError::Io {
        path: opts.data_dir.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
        |source| InitError::Io {
            path: opts.data_dir.display().to_string(),
            source,
        },
    )?;

    let ca = CertificateAuthority::generate(opts.trust_domain.clone())?;
    // Key first: a CA certificate without its key would look initialised.
    write_private_file(&layout::ca_key(&opts.data_dir), ca.key_pem().as_bytes())?;

    let store: Box<dyn Store> = match &opts.store {
        Some(options) => Box::new(PgStore::open(options)?),
        None => Box::new(SledStore::open(&layout::store(&opts.data_dir), 16 << 20)?),
    };
    store.put_admin(&AdminRecord {
        name: opts.admin_name.clone(),
        role: Role::Admin,
        issued_at: UnixMs::now(),
        issued_by: "ruse-controller init".into(),
    })?;
    store.flush()?;
    drop(store);

    let admin_dir = layout::admin_dir(&opts.data_dir);
    let (cert, key) = ca.issue_client(
        &Identity::Admin(opts.admin_name.clone()),
        opts.admin_cert_ttl,
    )?;
    let name = opts.admin_name.as_str();
    write_private_file(
        &admin_dir.join(format!("{name}-key.pem")),
        key.to_pem().as_bytes(),
    )?;
    write_public_file(
        &admin_dir.join(format!("{name}.pem")),
        cert.to_pem().as_bytes(),
    )?;
    write_public_file(&admin_dir.join("ca.pem"), ca.cert_pem().as_bytes())?;
    let context_file = layout::context_file(&opts.data_dir);
    let context = ContextFile::for_admin(opts.trust_domain.as_str(), &opts.controller_url, name);
    write_public_file(&context_file, context.to_toml().as_bytes())?;

    // Last: its presence marks the directory initialised.
    write_public_file(&ca_cert, ca.cert_pem().as_bytes())?;
    Ok(InitReport {
        pin: ca.pin(),
        ca_cert,
        admin_dir,
        context_file,
        admin_cert_not_after: cert.not_after,
    })
}

/// Loads the CA from its files; the trust domain is read from the CA
/// certificate's URI SAN (`spiffe://<trust-domain>`).
pub fn load_ca(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority, InitError> {
    load_ca_with(cert_path, key_path, false)
}

/// [`load_ca`]; `mounted` accepts a key readable by its group (a
/// Kubernetes Secret mounted with `fsGroup`), never by others.
pub fn load_ca_with(
    cert_path: &Path,
    key_path: &Path,
    mounted: bool,
) -> Result<CertificateAuthority, InitError> {
    let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| InitError::Io {
        path: cert_path.display().to_string(),
        source,
    })?;
    let key_pem = if mounted {
        ruse_pki::read_mounted_private_file(key_path)?
    } else {
        ruse_pki::read_private_file(key_path)?
    };
    let trust_domain = ruse_pki::ca_trust_domain(&cert_pem)?;
    Ok(CertificateAuthority::from_pem(
        trust_domain,
        &cert_pem,
        &key_pem,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            data_dir: dir.path().join("data"),
            trust_domain: "ruse.test".parse().unwrap(),
            controller_url: "https://127.0.0.1:7443".into(),
            admin_name: "admin".parse().unwrap(),
            admin_cert_ttl: Duration::from_secs(3600),
            store: None,
        };
        let report = init(&opts).unwrap();
        let ca = load_ca(&report.ca_cert, &layout::ca_key(&opts.data_dir)).unwrap();
        assert_eq!(ca.pin(), report.pin);
        assert_eq!(ca.trust_domain().as_str(), "ruse.test");
        let key_mode = std::fs::metadata(report.admin_dir.join("admin-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let ctx = ContextFile::load(&report.context_file)
            .unwrap()
            .select(&report.context_file, None)
            .unwrap();
        assert_eq!(ctx.cert, report.admin_dir.join("admin.pem"));
        assert!(matches!(init(&opts), Err(InitError::AlreadyInitialised(_))));
    }
}
