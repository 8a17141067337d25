//! Administrators and tokens: issue an admin's certificate, create and
//! delete bootstrap tokens, who am I.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use ruse_pki::{PrivateKey, pem_encode};
use ruse_proto::admin::v1 as pb;
use ruse_proto::context::{Context, ContextFile};
use ruse_proto::types::{AdminName, Labels, Role, parse_duration};

use crate::Client;
use crate::args::{AdminAction, TokenAction};
use crate::output::{self, Format};

pub async fn issue_admin(
    client: &mut Client,
    ctx: &Context,
    name: &str,
    role: &str,
    ttl: Option<String>,
    out_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let name: AdminName = name.parse()?;
    let role: Role = role.parse()?;
    let ttl_ms = match ttl {
        Some(t) => u64::try_from(parse_duration(&t)?.as_millis())?,
        None => 0,
    };
    let dir = out_dir.unwrap_or_else(|| PathBuf::from(name.as_str()));
    let key = PrivateKey::generate()?;
    let issued = client
        .issue_admin(pb::IssueAdminRequest {
            name: name.to_string(),
            role: pb::Role::from(role).into(),
            csr_der: key.csr_der()?,
            ttl_ms,
        })
        .await?
        .into_inner();
    write_admin_files(&dir, &name, &key, &issued, &ctx.controller)?;
    println!(
        "issued admin {name} (role {role}) valid until {}\n  files:   {}\n  context: {}",
        output::time(issued.not_after_ms),
        dir.display(),
        dir.join("rusectl.toml").display()
    );
    Ok(())
}

pub fn write_admin_files(
    dir: &Path,
    name: &AdminName,
    key: &PrivateKey,
    issued: &pb::IssueAdminResponse,
    controller: &str,
) -> anyhow::Result<()> {
    ruse_pki::write_private_file(
        &dir.join(format!("{name}-key.pem")),
        key.to_pem().as_bytes(),
    )?;
    ruse_pki::write_public_file(
        &dir.join(format!("{name}.pem")),
        pem_encode("CERTIFICATE", &issued.certificate_der).as_bytes(),
    )?;
    ruse_pki::write_public_file(
        &dir.join("ca.pem"),
        pem_encode("CERTIFICATE", &issued.ca_certificate_der).as_bytes(),
    )?;
    let context = ContextFile::for_admin(&issued.trust_domain, controller, name.as_str());
    ruse_pki::write_public_file(&dir.join("rusectl.toml"), context.to_toml().as_bytes())?;
    Ok(())
}

/// `rusectl admin issue NAME --role ROLE`.
pub async fn admin(client: &mut Client, ctx: &Context, action: AdminAction) -> anyhow::Result<()> {
    let AdminAction::Issue {
        name,
        role,
        ttl,
        out_dir,
    } = action;
    issue_admin(client, ctx, &name, &role, ttl, out_dir).await
}

/// `rusectl whoami`.
pub async fn whoami(client: &mut Client, ctx: &Context) -> anyhow::Result<()> {
    let me = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    println!(
        "{} (role {}) at {} — trust domain {}, controller {}",
        me.name,
        me.role().display_name(),
        ctx.controller,
        me.trust_domain,
        me.controller_version
    );
    Ok(())
}

/// `rusectl console`: a one-time sign-in link, printed, and opened with
/// `xdg-open` where a desktop session is there to show it.
pub async fn console(client: &mut Client, no_browser: bool) -> anyhow::Result<()> {
    let link = client
        .console_sign_in(pb::ConsoleSignInRequest {})
        .await?
        .into_inner();
    let expires = i64::try_from(link.expires_ms).unwrap_or(i64::MAX);
    let seconds = expires.saturating_sub(ruse_proto::types::UnixMs::now().0) / 1000;
    println!("{}", link.url);
    eprintln!("This link signs you in once, within {}s.", seconds.max(0));
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_browser && desktop {
        let opened = std::process::Command::new("xdg-open")
            .arg(&link.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok();
        if opened {
            eprintln!("Opened in your browser.");
        }
    }
    Ok(())
}

/// `rusectl revoke session ADMIN`.
pub async fn revoke_sessions(client: &mut Client, admin: &str) -> anyhow::Result<()> {
    let r = client
        .revoke_console_sessions(pb::RevokeConsoleSessionsRequest {
            admin: admin.to_owned(),
        })
        .await?
        .into_inner();
    println!(
        "ended {} console session(s) and {} unused sign-in link(s) of {admin}",
        r.sessions, r.links
    );
    Ok(())
}

/// `rusectl token create`.
pub async fn token(client: &mut Client, format: Format, action: TokenAction) -> anyhow::Result<()> {
    let TokenAction::Create {
        ttl,
        uses,
        labels,
        description,
        secret_file,
    } = action;
    let ttl_ms = match ttl {
        Some(t) => u64::try_from(parse_duration(&t)?.as_millis())?,
        None => 0,
    };
    let labels = Labels::parse_pairs(labels.iter().map(String::as_str))?;
    let created = client
        .create_token(pb::CreateTokenRequest {
            ttl_ms,
            max_uses: uses.unwrap_or(0),
            labels: labels.to_map(),
            description,
        })
        .await?
        .into_inner();
    let info = created.info.unwrap_or_default();
    if let Some(path) = &secret_file {
        ruse_pki::write_private_file(path, format!("{}\n", created.token).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "token {} written to {} (mode 0600), valid until {}, {} use(s), labels {}",
            info.id,
            path.display(),
            output::time(info.expires_ms),
            info.max_uses,
            output::labels(&labels.into_map())
        );
        return Ok(());
    }
    match format {
        Format::Json | Format::Yaml => output::structured(
            format,
            &output::CreatedToken {
                token: created.token,
                id: info.id,
                expires: output::time(info.expires_ms),
                max_uses: info.max_uses,
                labels: labels.into_map(),
            },
        ),
        Format::Table | Format::Wide => {
            // The secret alone on stdout, so `> token` works; the rest
            // is for the person at the terminal.
            println!("{}", created.token);
            eprintln!(
                "token {} valid until {}, {} use(s), labels {}",
                info.id,
                output::time(info.expires_ms),
                info.max_uses,
                output::labels(&labels.into_map())
            );
            eprintln!(
                "the secret is shown only now: store it in a file readable only by the agent's installer"
            );
            Ok(())
        }
    }
}

/// `rusectl delete token ID`.
pub async fn delete_token(client: &mut Client, id: String) -> anyhow::Result<()> {
    client
        .delete_token(pb::DeleteTokenRequest { id: id.clone() })
        .await?;
    println!("token {id} deleted");
    Ok(())
}
