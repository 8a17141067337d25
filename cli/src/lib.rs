//! `rusectl`: the Ruse admin CLI, in kubectl's habits, as a library.
//!
//! The context (controller URL, CA, admin certificate and key) comes from
//! `--context-file`, `$RUSECTL_CONTEXT_FILE`, or
//! `~/.config/ruse/config.toml`; `--controller` overrides the URL.
//!
//! Code map: `args` (the command line), `context` (context file,
//! connection, errors in words), one module per verb group (`get`,
//! `agents`, `campaigns`, `incidents`, `events`, `admins`), and `output`
//! (the one table / `-o json|yaml|wide` path every listing goes through).
#![forbid(unsafe_code)]

mod admins;
mod agents;
mod args;
mod campaigns;
mod context;
mod events;
mod get;
mod incidents;
mod listing;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tonic::transport::Channel;

use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;

use crate::args::{
    AckWhat, Cli, Command, DeleteWhat, DescribeWhat, ExportWhat, LabelWhat, ResolveWhat,
    RevokeWhat, WatchWhat,
};

/// The admin API client every verb uses.
type Client = AdminServiceClient<Channel>;

/// Runs `rusectl` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "rusectl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rusectl: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rusectl: error: {}", context::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// One verb: connect, then hand it to its module.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = context::resolve_context(&cli)?;
    let mut client = context::connect(&ctx).await?;
    let c = &mut client;
    let format = cli.output;
    match cli.command {
        Command::Get { what } => get::get(c, format, what).await,
        Command::Describe { what } => match what {
            DescribeWhat::Agent { id } => agents::describe(c, format, id).await,
            DescribeWhat::Campaign { name } => campaigns::describe(c, format, &name).await,
            DescribeWhat::Incident { id } => incidents::show(c, format, &id).await,
        },
        Command::Ack {
            what: AckWhat::Incident { id },
        } => incidents::ack(c, format, &id).await,
        Command::Resolve {
            what: ResolveWhat::Incident { id, note },
        } => incidents::resolve(c, format, &id, note).await,
        Command::Export {
            what: ExportWhat::Incidents(args),
        } => incidents::export(c, args).await,
        Command::Drill { agent, lure } => incidents::drill(c, format, agent, lure).await,
        Command::Watch { what } => match what {
            WatchWhat::Incidents { drills } => incidents::watch(c, format, drills).await,
            WatchWhat::Events { filter, after } => {
                events::watch_events(c, format, &filter, after).await
            }
        },
        Command::Apply { file, dry_run } => campaigns::apply(c, format, &file, dry_run).await,
        Command::Rollout { action } => campaigns::rollout(c, format, action).await,
        Command::Rotate { campaign } => campaigns::rotate(c, format, &campaign).await,
        Command::Label {
            what: LabelWhat::Agent { id, labels },
        } => agents::label(c, format, id, &labels).await,
        Command::Token { action } => admins::token(c, format, action).await,
        Command::Revoke {
            what: RevokeWhat::Agent { id, reason },
        } => agents::revoke(c, format, id, reason).await,
        Command::Revoke {
            what: RevokeWhat::Session { admin },
        } => admins::revoke_sessions(c, &admin).await,
        Command::Delete { what } => match what {
            DeleteWhat::Token { id } => admins::delete_token(c, id).await,
            DeleteWhat::Agent { id, reason } => agents::delete(c, &id, reason).await,
            DeleteWhat::Campaign { name } => campaigns::delete_campaign(c, &name).await,
            DeleteWhat::AllowRule { name } => campaigns::delete_allow_rule(c, &name).await,
            DeleteWhat::Decoy { name } => campaigns::delete_decoy(c, &name).await,
            DeleteWhat::Suppression { name } => incidents::delete_suppression(c, &name).await,
        },
        Command::Admin { action } => admins::admin(c, &ctx, action).await,
        Command::Whoami => admins::whoami(c, &ctx).await,
        Command::Console { no_browser } => admins::console(c, no_browser).await,
        Command::Completion { .. } => Ok(()),
    }
}
