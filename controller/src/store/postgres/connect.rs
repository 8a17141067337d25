//! Reaching the database: the URL (never logged with its password), TLS
//! roots, and database errors as the store reports them.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::{Client, Config, Socket};

/// A database connection, TLS or not.
pub(super) type Connection = tokio_postgres::Connection<Socket, tls::RustlsStream<Socket>>;

use super::tls;
use crate::store::StoreError;

/// The system's CA bundle, trusted when no `ca_file` is given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the database is and how to reach it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?sslmode=…`, or the
    /// key=value form libpq accepts.
    pub url: String,
    /// CAs that sign the database's certificate (PEM); default the system
    /// bundle.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `url` with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}{}:***{}", &rest[..colon], &rest[at..]);
        }
        return url.to_owned();
    }
    // key=value form: drop the value of `password`.
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A database error as the store reports it.
pub(super) fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) if *d.code() == tokio_postgres::error::SqlState::DISK_FULL => {
            StoreError::Full(format!("the database: {}", d.message()).into())
        }
        Some(d) => StoreError::Engine(
            match d.detail() {
                Some(detail) => format!("database: {} ({detail})", d.message()),
                None => format!("database: {}", d.message()),
            }
            .into(),
        ),
        None => StoreError::Engine(format!("database: {}", with_causes(&e)).into()),
    }
}

/// `e` and what caused it ("error performing TLS handshake: invalid peer
/// certificate: …").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Opens connections.
#[derive(Debug)]
pub(super) struct Connector {
    config: Config,
    tls: tls::MakeRustls,
    /// For errors: the URL without its password.
    pub(super) target: String,
}

impl Connector {
    /// Every connection names this store (`ruse.writer`): the change
    /// feed's triggers put it in each notification, so a controller can
    /// leave out its own changes.
    pub(super) fn writer(mut self, me: &str) -> Self {
        self.config.options(format!("-c ruse.writer={me}"));
        self
    }

    pub(super) fn new(options: &PgOptions) -> Result<Self, StoreError> {
        let target = redact(&options.url);
        // The certificate and host name are always verified, so libpq's
        // strict modes mean what `require` means here.
        let url = options
            .url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config: Config = url.parse().map_err(|e| {
            StoreError::Engine(format!("store_url {target} is not a PostgreSQL URL: {e}").into())
        })?;
        let local = config.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            _ => true,
        });
        if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require && !local {
            tracing::warn!(
                database = %target,
                "store_url does not say sslmode=require: a database that offers no TLS is used without it"
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("ruse-controller");
        }
        let cas = match &options.ca_file {
            Some(path) => read_cas(path)?,
            None if std::path::Path::new(SYSTEM_CAS).exists() => {
                read_cas(std::path::Path::new(SYSTEM_CAS))?
            }
            None => Vec::new(),
        };
        let tls = ruse_pki::database_client_config(&cas)
            .map_err(|e| StoreError::Engine(format!("TLS to the database: {e}").into()))?;
        Ok(Connector {
            config,
            tls: tls::MakeRustls::new(tls),
            target,
        })
    }

    pub(super) async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.connect_parts().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection closed");
            }
        });
        Ok(client)
    }

    /// A client and the connection that drives it (the caller polls it).
    pub(super) async fn connect_parts(&self) -> Result<(Client, Connection), StoreError> {
        self.config.connect(self.tls.clone()).await.map_err(|e| {
            let why = match e.as_db_error() {
                Some(d) => d.message().to_owned(),
                None => with_causes(&e),
            };
            StoreError::Engine(
                format!("cannot connect to the database {}: {why}", self.target).into(),
            )
        })
    }
}

fn read_cas(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, StoreError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| StoreError::Engine(format!("store_ca_file {}: {e}", path.display()).into()))?;
    ruse_pki::pem_decode_certificates(&pem, &path.display().to_string())
        .map_err(|e| StoreError::Engine(e.to_string().into()))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://ruse:s3cr%40t@db.example:5432/ruse?sslmode=require"),
            "postgres://ruse:***@db.example:5432/ruse?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://ruse@db/ruse"),
            "postgresql://ruse@db/ruse"
        );
        assert_eq!(
            redact("host=db user=ruse password=hunter2 dbname=ruse"),
            "host=db user=ruse password=*** dbname=ruse"
        );
    }
}
