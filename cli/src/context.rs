//! Where the controller is and who we are: the context file, the
//! connection, and errors in words.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::context::{Context, ContextFile};
use ruse_proto::transport::{self, ControllerUrl, DialOptions};

use crate::args::Cli;

pub fn describe_error(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        let what = match status.code() {
            tonic::Code::PermissionDenied => "permission denied",
            tonic::Code::Unauthenticated => "not authenticated",
            tonic::Code::NotFound => "not found",
            tonic::Code::InvalidArgument => "invalid argument",
            tonic::Code::Unavailable => "controller unavailable",
            tonic::Code::ResourceExhausted => "rate limited",
            _ => "request failed",
        };
        return format!("{what}: {}", status.message());
    }
    format!("{e:#}")
}

pub fn default_context_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ruse").join("config.toml"))
}

/// The context to use, from flags and files.
pub fn resolve_context(cli: &Cli) -> anyhow::Result<Context> {
    let path = match &cli.context_file {
        Some(p) => p.clone(),
        None => default_context_file().context("no --context-file given and no home directory")?,
    };
    if !path.exists() {
        bail!(
            "context file {} does not exist; pass --context-file (ruse-controller init writes one in <data-dir>/admin/rusectl.toml)",
            path.display()
        );
    }
    let mut ctx = ContextFile::load(&path)?.select(&path, cli.context.as_deref())?;
    if ctx.key_pem.is_some() {
        // A key inline: the context file itself must be private.
        ruse_pki::read_private_file(&path)?;
    }
    if let Some(url) = &cli.controller {
        ctx.controller = url.clone();
    }
    Ok(ctx)
}

pub async fn connect(ctx: &Context) -> anyhow::Result<AdminServiceClient<Channel>> {
    let url: ControllerUrl = ctx.controller.parse()?;
    let tls = ruse_pki::context_client_config(ctx)?;
    let channel = transport::connect(&url, tls, &DialOptions::default())
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))?;
    Ok(AdminServiceClient::new(channel))
}
