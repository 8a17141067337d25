//! `rusectl`: the Ruse admin CLI, in kubectl's habits.
//!
//! The context (controller URL, CA, admin certificate and key) comes from
//! `--context-file`, `$RUSECTL_CONTEXT_FILE`, or
//! `~/.config/ruse/config.toml`; `--controller` overrides the URL.

mod incidents;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand};
use tonic::transport::Channel;

use ruse_pki::{PrivateKey, pem_encode};
use ruse_proto::admin::v1 as pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::context::{Context, ContextFile};
use ruse_proto::transport::{self, ControllerUrl, DialOptions};
use ruse_proto::types::{AdminName, Labels, Role, UnixMs, parse_duration};

use output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "rusectl",
    version,
    about = "Administer a Ruse deception controller"
)]
struct Cli {
    /// Context file (default: $RUSECTL_CONTEXT_FILE, then ~/.config/ruse/config.toml).
    #[arg(long, global = true, env = "RUSECTL_CONTEXT_FILE")]
    context_file: Option<PathBuf>,
    /// Context to use within the file (default: its current-context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Controller URL, overriding the context's.
    #[arg(long, global = true)]
    controller: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List resources.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one resource in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Bootstrap tokens for enrolling agents.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Revoke a resource's credentials.
    Revoke {
        #[command(subcommand)]
        what: RevokeWhat,
    },
    /// Delete a resource.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Administrators.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Create or update Campaign and Decoy resources from YAML or JSON.
    Apply {
        /// The manifest file (several documents allowed); "-" reads stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Check the manifests without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Watch or steer a campaign's staged rollout.
    Rollout {
        #[command(subcommand)]
        action: RolloutCmd,
    },
    /// Replace the material of every lure of a campaign (campaign/NAME).
    Rotate { campaign: String },
    /// Set (k=v) or remove (k-) labels on an agent.
    Label {
        #[command(subcommand)]
        what: LabelWhat,
    },
    /// Follow resources as they change.
    Watch {
        #[command(subcommand)]
        what: WatchWhat,
    },
    /// Acknowledge an incident: someone is on it.
    Ack {
        #[command(subcommand)]
        what: AckWhat,
    },
    /// Resolve an incident, with a note; later events open a new one.
    Resolve {
        #[command(subcommand)]
        what: ResolveWhat,
    },
    /// Export incidents for sharing (STIX 2.1).
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// Make an agent trip a lure for real and check that the event, the
    /// incident and every output follow.
    Drill {
        /// The agent to drill.
        #[arg(long)]
        agent: String,
        /// The lure to trip (default: one of the agent's, honeyfiles first).
        #[arg(long)]
        lure: Option<String>,
    },
    /// Show who the controller thinks you are.
    Whoami,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum AckWhat {
    Incident { id: String },
}

#[derive(Subcommand, Debug)]
enum ResolveWhat {
    Incident {
        id: String,
        /// What was found and done.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Subcommand, Debug)]
enum ExportWhat {
    Incidents(incidents::ExportArgs),
}

#[derive(Subcommand, Debug)]
enum GetWhat {
    /// Incidents: correlated events a SOC acts on.
    Incidents(incidents::ListArgs),
    /// Suppressions and how many events each has hidden.
    Suppressions,
    /// Incident outputs: queue depth, last delivery, last error.
    Outputs,
    /// Enrolled agents (the device inventory).
    Agents {
        /// Only agents with these labels (k=v,k2=v2).
        #[arg(short = 'l', long = "selector")]
        selector: Vec<String>,
        /// Deleted (decommissioned) agents too.
        #[arg(long)]
        all: bool,
    },
    /// Bootstrap tokens (never their secrets).
    Tokens,
    /// The audit log of admin changes and enrollments.
    Audit {
        /// Only records newer than this (e.g. 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many of the most recent records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Administrators and their roles.
    Admins,
    /// Lure events: someone touched a lure.
    Events {
        #[command(flatten)]
        filter: EventArgs,
        /// The most recent this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The controller's metrics (Prometheus text format).
    Metrics,
    /// Campaigns and their rollout state.
    Campaigns,
    /// Decoy definitions.
    Decoys,
    /// Allow rules: readers whose lure accesses are recorded, not raised.
    #[command(name = "allowrules", alias = "allow-rules")]
    AllowRules,
    /// The lure registry: every lure instance and where it was planted.
    Lures {
        /// Only lures of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only lures of this campaign.
        #[arg(long)]
        campaign: Option<String>,
        /// Include instances retired by rotation, deletion or relabelling.
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args, Debug)]
struct EventArgs {
    /// Only events of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only events of this lure instance.
    #[arg(long)]
    lure: Option<String>,
    /// Only events of this kind (touch, modify, delete, rename, drift,
    /// decoy-login, credential-use, flood, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only events the controller received in this last stretch of time
    /// (e.g. 1h, 7d).
    #[arg(long)]
    since: Option<String>,
}

impl EventArgs {
    fn filter(&self) -> anyhow::Result<pb::EventFilter> {
        Ok(pb::EventFilter {
            agent_id: self.agent.clone().unwrap_or_default(),
            lure_id: self.lure.clone().unwrap_or_default(),
            kind: self.kind.clone().unwrap_or_default(),
            since_ms: match &self.since {
                Some(s) => UnixMs::now().saturating_sub(parse_duration(s)?).0,
                None => 0,
            },
        })
    }
}

#[derive(Subcommand, Debug)]
enum WatchWhat {
    /// Lure events as they arrive.
    Events {
        #[command(flatten)]
        filter: EventArgs,
        /// Start after this event cursor (the `cursor` of `-o json`
        /// output) instead of now: a watch that was interrupted resumes
        /// without a gap.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Incidents as they open and change.
    Incidents {
        /// Include drill incidents.
        #[arg(long)]
        drills: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCmd {
    /// Show progress; waits for the rollout to finish unless --watch=false.
    Status {
        campaign: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up waiting after this long (e.g. 10m).
        #[arg(long, default_value = "30m")]
        timeout: String,
    },
    /// Stop releasing further waves.
    Pause { campaign: String },
    /// Continue a paused rollout (after a failure pause: release the next wave).
    Resume { campaign: String },
    /// Stop the rollout for good; agents keep what they have.
    Abort { campaign: String },
}

#[derive(Subcommand, Debug)]
enum LabelWhat {
    Agent {
        id: String,
        /// k=v to set, k- to remove.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DescribeWhat {
    Agent {
        id: String,
    },
    Campaign {
        name: String,
    },
    /// An incident: timeline, attack path and where it was delivered.
    Incident {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token; prints the secret once.
    Create {
        /// Lifetime (e.g. 1h, 7d); default set by the controller.
        #[arg(long)]
        ttl: Option<String>,
        /// How many agents may enroll with it; default set by the controller.
        #[arg(long)]
        uses: Option<u32>,
        /// Labels stamped on every agent enrolled with it (k=v, repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Write the secret to this file, readable by you only (0600),
        /// instead of printing it: `> token` would make it readable by
        /// everyone your umask lets in.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum RevokeWhat {
    /// Revoke an agent: its session is closed and it can no longer connect.
    Agent {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeleteWhat {
    Token {
        id: String,
    },
    /// Delete a campaign; its lures are removed from agents.
    Campaign {
        name: String,
    },
    /// Delete an allow rule.
    #[command(name = "allowrule", alias = "allow-rule")]
    AllowRule {
        name: String,
    },
    /// Delete a decoy no campaign uses.
    Decoy {
        name: String,
    },
    /// Delete a suppression; what it hid raises incidents again.
    Suppression {
        name: String,
    },
    /// Remove a decommissioned machine from the inventory: it is revoked
    /// and no longer listed (`get agents --all` shows it); its lures and
    /// events keep naming it.
    Agent {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum AdminAction {
    /// Issue an admin certificate (key generated here) and write a context file.
    Issue {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Certificate lifetime (e.g. 90d); default set by the controller.
        #[arg(long)]
        ttl: Option<String>,
        /// Where to write NAME.pem, NAME-key.pem, ca.pem and rusectl.toml (default ./NAME).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
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
            eprintln!("rusectl: error: {}", describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line saying what went wrong, with gRPC codes in words.
fn describe_error(e: &anyhow::Error) -> String {
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

/// `incident/ID` or `ID`.
fn incident_id(s: &str) -> String {
    s.strip_prefix("incident/").unwrap_or(s).to_owned()
}

fn default_context_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ruse").join("config.toml"))
}

/// The context to use, from flags and files.
fn resolve_context(cli: &Cli) -> anyhow::Result<Context> {
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

async fn connect(ctx: &Context) -> anyhow::Result<AdminServiceClient<Channel>> {
    let url: ControllerUrl = ctx.controller.parse()?;
    let tls = ruse_pki::context_client_config(ctx)?;
    let channel = transport::connect(&url, tls, &DialOptions::default())
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))?;
    Ok(AdminServiceClient::new(channel))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = resolve_context(&cli)?;
    let mut client = connect(&ctx).await?;
    let format = cli.output;
    match cli.command {
        Command::Get { what } => get(&mut client, format, what).await,
        Command::Describe {
            what: DescribeWhat::Agent { id },
        } => {
            let agent = client
                .get_agent(pb::GetAgentRequest { id })
                .await?
                .into_inner();
            describe_agent(format, &agent)
        }
        Command::Describe {
            what: DescribeWhat::Campaign { name },
        } => {
            let campaign = client
                .get_campaign(pb::GetCampaignRequest {
                    name: campaign_name(&name)?,
                })
                .await?
                .into_inner();
            describe_campaign(format, &campaign)
        }
        Command::Describe {
            what: DescribeWhat::Incident { id },
        } => {
            let i = client
                .get_incident(pb::GetIncidentRequest {
                    id: incident_id(&id),
                })
                .await?
                .into_inner();
            incidents::describe(format, &i)
        }
        Command::Ack {
            what: AckWhat::Incident { id },
        } => {
            let i = client
                .ack_incident(pb::AckIncidentRequest {
                    id: incident_id(&id),
                })
                .await?
                .into_inner();
            match format {
                Format::Json | Format::Yaml => {
                    output::structured(format, &incidents::Incident::from(&i))
                }
                _ => {
                    println!("incident/{} acknowledged by {}", i.id, i.acknowledged_by);
                    Ok(())
                }
            }
        }
        Command::Resolve {
            what: ResolveWhat::Incident { id, note },
        } => {
            let i = client
                .resolve_incident(pb::ResolveIncidentRequest {
                    id: incident_id(&id),
                    note,
                })
                .await?
                .into_inner();
            match format {
                Format::Json | Format::Yaml => {
                    output::structured(format, &incidents::Incident::from(&i))
                }
                _ => {
                    println!("incident/{} resolved by {}", i.id, i.resolved_by);
                    Ok(())
                }
            }
        }
        Command::Export {
            what: ExportWhat::Incidents(args),
        } => incidents::export(&mut client, args).await,
        Command::Drill { agent, lure } => incidents::drill(&mut client, format, agent, lure).await,
        Command::Delete {
            what: DeleteWhat::Suppression { name },
        } => {
            let name = name
                .strip_prefix("suppression/")
                .unwrap_or(&name)
                .to_owned();
            client
                .delete_suppression(pb::DeleteSuppressionRequest { name: name.clone() })
                .await?;
            println!("suppression/{name} deleted");
            Ok(())
        }
        Command::Watch {
            what: WatchWhat::Incidents { drills },
        } => incidents::watch(&mut client, format, drills).await,
        Command::Apply { file, dry_run } => apply(&mut client, format, &file, dry_run).await,
        Command::Rollout { action } => rollout(&mut client, format, action).await,
        Command::Rotate { campaign } => {
            let c = client
                .rotate(pb::RotateRequest {
                    campaign: campaign_name(&campaign)?,
                })
                .await?
                .into_inner();
            match format {
                Format::Json | Format::Yaml => {
                    output::structured(format, &output::Campaign::from(&c))
                }
                _ => {
                    println!(
                        "campaign/{} rotating to epoch {}: new material rolls out in waves (rusectl rollout status campaign/{})",
                        c.name, c.epoch, c.name
                    );
                    Ok(())
                }
            }
        }
        Command::Label {
            what: LabelWhat::Agent { id, labels },
        } => {
            let mut set = Vec::new();
            let mut remove = Vec::new();
            for l in &labels {
                match l.strip_suffix('-') {
                    Some(key) if !l.contains('=') => remove.push(key.to_owned()),
                    _ => set.push(l.as_str()),
                }
            }
            let set = Labels::parse_pairs(set)?;
            let agent = client
                .label_agent(pb::LabelAgentRequest {
                    id,
                    set: set.to_map(),
                    remove,
                })
                .await?
                .into_inner();
            match format {
                Format::Json | Format::Yaml => {
                    output::structured(format, &output::Agent::from(&agent))
                }
                _ => {
                    println!(
                        "agent {} labelled: {}",
                        agent.id,
                        output::labels(&agent.labels.clone().into_iter().collect())
                    );
                    Ok(())
                }
            }
        }
        Command::Token {
            action:
                TokenAction::Create {
                    ttl,
                    uses,
                    labels,
                    description,
                    secret_file,
                },
        } => {
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
        Command::Revoke {
            what: RevokeWhat::Agent { id, reason },
        } => {
            let agent = client
                .revoke_agent(pb::RevokeAgentRequest { id, reason })
                .await?
                .into_inner();
            match format {
                Format::Json | Format::Yaml => {
                    output::structured(format, &output::Agent::from(&agent))
                }
                _ => {
                    println!("agent {} revoked", agent.id);
                    Ok(())
                }
            }
        }
        Command::Delete {
            what: DeleteWhat::Token { id },
        } => {
            client
                .delete_token(pb::DeleteTokenRequest { id: id.clone() })
                .await?;
            println!("token {id} deleted");
            Ok(())
        }
        Command::Delete {
            what: DeleteWhat::Campaign { name },
        } => {
            let name = campaign_name(&name)?;
            client
                .delete_campaign(pb::DeleteCampaignRequest { name: name.clone() })
                .await?;
            println!("campaign/{name} deleted; its lures are being removed from agents");
            Ok(())
        }
        Command::Delete {
            what: DeleteWhat::Agent { id, reason },
        } => {
            let id = id.strip_prefix("agent/").unwrap_or(&id).to_owned();
            let agent = client
                .delete_agent(pb::DeleteAgentRequest { id, reason })
                .await?
                .into_inner();
            println!(
                "agent/{} deleted from the inventory (revoked; `rusectl get agents --all` still lists it)",
                agent.id
            );
            Ok(())
        }
        Command::Delete {
            what: DeleteWhat::AllowRule { name },
        } => {
            let name = name.strip_prefix("allowrule/").unwrap_or(&name).to_owned();
            client
                .delete_allow_rule(pb::DeleteAllowRuleRequest { name: name.clone() })
                .await?;
            println!("allowrule/{name} deleted");
            Ok(())
        }
        Command::Delete {
            what: DeleteWhat::Decoy { name },
        } => {
            let name = name.strip_prefix("decoy/").unwrap_or(&name).to_owned();
            client
                .delete_decoy(pb::DeleteDecoyRequest { name: name.clone() })
                .await?;
            println!("decoy/{name} deleted");
            Ok(())
        }
        Command::Admin {
            action:
                AdminAction::Issue {
                    name,
                    role,
                    ttl,
                    out_dir,
                },
        } => issue_admin(&mut client, &ctx, &name, &role, ttl, out_dir).await,
        Command::Watch {
            what: WatchWhat::Events { filter, after },
        } => watch_events(&mut client, format, &filter, after).await,
        Command::Whoami => {
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
        Command::Completion { .. } => Ok(()),
    }
}

async fn get(
    client: &mut AdminServiceClient<Channel>,
    format: Format,
    what: GetWhat,
) -> anyhow::Result<()> {
    match what {
        GetWhat::Incidents(args) => incidents::list(client, format, args).await,
        GetWhat::Suppressions => incidents::suppressions(client, format).await,
        GetWhat::Outputs => incidents::outputs(client, format).await,
        GetWhat::Agents { selector, all } => {
            let selector = Labels::parse_pairs(selector.iter().map(String::as_str))?;
            let agents = client
                .list_agents(pb::ListAgentsRequest {
                    selector: selector.to_map(),
                    include_deleted: all,
                })
                .await?
                .into_inner()
                .agents;
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: agents.iter().map(output::Agent::from).collect::<Vec<_>>(),
                    },
                ),
                Format::Table => {
                    let rows: Vec<Vec<String>> = agents
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.hostname.clone(),
                                a.state().display_name().into(),
                                output::age(a.last_seen_ms),
                                output::labels(&a.labels.clone().into_iter().collect()),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "HOSTNAME", "STATE", "LAST SEEN", "LABELS"], &rows);
                    Ok(())
                }
                Format::Wide => {
                    let rows: Vec<Vec<String>> = agents
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.hostname.clone(),
                                a.state().display_name().into(),
                                output::age(a.last_seen_ms),
                                a.os.clone(),
                                a.addresses.join(","),
                                a.agent_version.clone(),
                                a.peer.clone(),
                                output::labels(&a.labels.clone().into_iter().collect()),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "ID",
                            "HOSTNAME",
                            "STATE",
                            "LAST SEEN",
                            "OS",
                            "ADDRESSES",
                            "VERSION",
                            "PEER",
                            "LABELS",
                        ],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Tokens => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let items: Vec<output::Token> = tokens.iter().map(output::Token::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let now = UnixMs::now().0;
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .zip(&items)
                        .map(|(t, item)| {
                            let status = if t.expires_ms <= now {
                                "expired"
                            } else if t.uses >= t.max_uses {
                                "used up"
                            } else {
                                "valid"
                            };
                            vec![
                                t.id.clone(),
                                status.into(),
                                format!("{}/{}", t.uses, t.max_uses),
                                item.expires.clone(),
                                output::labels(&item.labels),
                                t.description.clone(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["ID", "STATUS", "USES", "EXPIRES", "LABELS", "DESCRIPTION"],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Audit { since, limit } => {
            let since_ms = match since {
                Some(s) => UnixMs::now().saturating_sub(parse_duration(&s)?).0,
                None => 0,
            };
            // Page by page (the controller bounds each reply), newest
            // pages first, until `limit` records or the start of the log.
            let mut records = Vec::new();
            let mut before_seq = 0;
            loop {
                let want = limit.saturating_sub(records.len() as u32);
                if want == 0 {
                    break;
                }
                let page = client
                    .list_audit(pb::ListAuditRequest {
                        since_ms,
                        limit: want,
                        before_seq,
                    })
                    .await?
                    .into_inner();
                let mut page_records = page.records;
                page_records.append(&mut records);
                records = page_records;
                if page.next_before_seq == 0 {
                    break;
                }
                before_seq = page.next_before_seq;
            }
            let items: Vec<output::Audit> = records.iter().map(output::Audit::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                wide => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|r| {
                            let mut row = vec![
                                r.at.clone(),
                                r.actor.clone(),
                                r.action.clone(),
                                r.target.clone(),
                                r.result.clone(),
                            ];
                            if wide == Format::Wide {
                                row.push(r.peer.clone());
                                row.push(r.detail.clone());
                            }
                            row
                        })
                        .collect();
                    let mut headers = vec!["TIME", "ACTOR", "ACTION", "TARGET", "RESULT"];
                    if wide == Format::Wide {
                        headers.extend(["PEER", "DETAIL"]);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
        }
        GetWhat::Events { filter, limit } => {
            // Page by page (the controller bounds each reply), newest pages
            // first, until `limit` events or the oldest stored.
            let filter = filter.filter()?;
            let mut events = Vec::new();
            let mut before_cursor = 0;
            loop {
                let want = limit.saturating_sub(events.len() as u32);
                if want == 0 {
                    break;
                }
                let page = client
                    .list_events(pb::ListEventsRequest {
                        filter: Some(filter.clone()),
                        limit: want,
                        before_cursor,
                    })
                    .await?
                    .into_inner();
                let mut page_events = page.events;
                page_events.append(&mut events);
                events = page_events;
                if page.next_before_cursor == 0 {
                    break;
                }
                before_cursor = page.next_before_cursor;
            }
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: events.iter().map(output::Event::from).collect::<Vec<_>>(),
                    },
                ),
                wide => {
                    let wide = wide == Format::Wide;
                    let rows: Vec<Vec<String>> =
                        events.iter().map(|e| output::event_row(e, wide)).collect();
                    let mut headers = output::EVENT_HEADERS.to_vec();
                    if wide {
                        headers.extend(output::EVENT_WIDE_HEADERS);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
        }
        GetWhat::Metrics => {
            let text = client
                .get_metrics(pb::GetMetricsRequest {})
                .await?
                .into_inner()
                .text;
            print!("{text}");
            Ok(())
        }
        GetWhat::Campaigns => {
            let campaigns = client
                .list_campaigns(pb::ListCampaignsRequest {})
                .await?
                .into_inner()
                .campaigns;
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: campaigns
                            .iter()
                            .map(output::Campaign::from)
                            .collect::<Vec<_>>(),
                    },
                ),
                _ => {
                    let rows: Vec<Vec<String>> = campaigns
                        .iter()
                        .map(|c| {
                            let applied: u32 = c.wave_status.iter().map(|w| w.acked).sum();
                            let failed: u32 = c.wave_status.iter().map(|w| w.failed).sum();
                            vec![
                                c.name.clone(),
                                output::labels(&c.selector.clone().into_iter().collect()),
                                c.lures.len().to_string(),
                                c.matching_agents.to_string(),
                                c.rollout_state.clone(),
                                format!("{}/{}", c.wave, c.wave_status.len()),
                                format!("{applied}/{}", c.matching_agents),
                                failed.to_string(),
                                output::age(c.updated_ms),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "NAME", "SELECTOR", "LURES", "AGENTS", "ROLLOUT", "WAVE", "APPLIED",
                            "FAILED", "UPDATED",
                        ],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::AllowRules => {
            let rules = client
                .list_allow_rules(pb::ListAllowRulesRequest {})
                .await?
                .into_inner()
                .rules;
            #[derive(serde::Serialize)]
            struct Rule {
                name: String,
                selector: std::collections::BTreeMap<String, String>,
                process: String,
                user: String,
                template: String,
                matching_agents: u32,
            }
            let items: Vec<Rule> = rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    selector: r.selector.clone().into_iter().collect(),
                    process: r.process.clone(),
                    user: r.user.clone(),
                    template: r.template.clone(),
                    matching_agents: r.matching_agents,
                })
                .collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let any = |s: &str| {
                        if s.is_empty() {
                            "*".to_owned()
                        } else {
                            s.to_owned()
                        }
                    };
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                any(&r.process),
                                any(&r.user),
                                any(&r.template),
                                output::labels(&r.selector),
                                r.matching_agents.to_string(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["NAME", "PROCESS", "USER", "TEMPLATE", "SELECTOR", "AGENTS"],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Decoys => {
            let decoys = client
                .list_decoys(pb::ListDecoysRequest {})
                .await?
                .into_inner()
                .decoys;
            match format {
                Format::Json | Format::Yaml => output::structured(
                    format,
                    &output::List {
                        items: decoys.iter().map(output::Decoy::from).collect::<Vec<_>>(),
                    },
                ),
                _ => {
                    let rows: Vec<Vec<String>> = decoys
                        .iter()
                        .map(|d| {
                            vec![
                                d.name.clone(),
                                d.address.clone(),
                                d.services
                                    .iter()
                                    .map(|s| match s.refusal_delay_ms {
                                        Some(ms) => {
                                            format!("{}/{} (refusal {ms}ms)", s.protocol, s.port)
                                        }
                                        None => format!("{}/{}", s.protocol, s.port),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(","),
                                output::labels(&d.selector.clone().into_iter().collect()),
                                d.matching_agents.to_string(),
                            ]
                        })
                        .collect();
                    output::table(
                        &["NAME", "ADDRESS", "SERVICES", "SELECTOR", "AGENTS"],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        GetWhat::Lures {
            agent,
            campaign,
            all,
        } => {
            let lures = client
                .list_lures(pb::ListLuresRequest {
                    agent_id: agent.unwrap_or_default(),
                    campaign: campaign
                        .map(|c| campaign_name(&c))
                        .transpose()?
                        .unwrap_or_default(),
                    include_retired: all,
                })
                .await?
                .into_inner()
                .lures;
            let items: Vec<output::Lure> = lures.iter().map(output::Lure::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                wide => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|l| {
                            let mut row = vec![
                                l.id.clone(),
                                l.agent.clone(),
                                l.campaign.clone(),
                                l.template.clone(),
                                l.state.clone(),
                                l.identifiers.clone(),
                            ];
                            if wide == Format::Wide {
                                row.extend([
                                    l.slot.clone(),
                                    l.epoch.to_string(),
                                    l.revision.to_string(),
                                    l.created.clone(),
                                    l.retired.clone(),
                                    l.error.clone(),
                                ]);
                            }
                            row
                        })
                        .collect();
                    let mut headers = vec![
                        "ID",
                        "AGENT",
                        "CAMPAIGN",
                        "TEMPLATE",
                        "STATE",
                        "IDENTIFIERS",
                    ];
                    if wide == Format::Wide {
                        headers
                            .extend(["SLOT", "EPOCH", "REVISION", "CREATED", "RETIRED", "ERROR"]);
                    }
                    output::table(&headers, &rows);
                    Ok(())
                }
            }
        }
        GetWhat::Admins => {
            let admins = client
                .list_admins(pb::ListAdminsRequest {})
                .await?
                .into_inner()
                .admins;
            let items: Vec<output::Admin> = admins.iter().map(output::Admin::from).collect();
            match format {
                Format::Json | Format::Yaml => output::structured(format, &output::List { items }),
                _ => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|a| {
                            vec![
                                a.name.clone(),
                                a.role.clone(),
                                a.issued.clone(),
                                a.issued_by.clone(),
                            ]
                        })
                        .collect();
                    output::table(&["NAME", "ROLE", "ISSUED", "ISSUED BY"], &rows);
                    Ok(())
                }
            }
        }
    }
}

/// Prints events as they arrive until interrupted: a table row each, or
/// one JSON object per line with `-o json`. When the stream breaks (the
/// controller restarts) it reconnects and resumes after the last event
/// shown, so nothing is missed or shown twice.
async fn watch_events(
    client: &mut AdminServiceClient<Channel>,
    format: Format,
    args: &EventArgs,
    after: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    let filter = args.filter()?;
    let wide = format == Format::Wide;
    if matches!(format, Format::Table | Format::Wide) {
        let mut headers = output::EVENT_HEADERS.to_vec();
        if wide {
            headers.extend(output::EVENT_WIDE_HEADERS);
        }
        println!("{}", headers.join("   "));
        // Piped output (`| tee`) sees the header at once.
        std::io::stdout().flush()?;
    }
    let mut last = after;
    let mut retry = std::time::Duration::from_millis(500);
    loop {
        let request = pb::WatchEventsRequest {
            filter: Some(filter.clone()),
            after_cursor: last,
        };
        let mut stream = match client.watch_events(request).await {
            Ok(s) => s.into_inner(),
            Err(e) if last > 0 && e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(std::time::Duration::from_secs(10));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        retry = std::time::Duration::from_millis(500);
        loop {
            let item = match stream.message().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    eprintln!("rusectl: {}; resuming after event {last}", e.message());
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if item.missed > 0 {
                eprintln!(
                    "rusectl: {} events were deleted by the controller's retention before this watch read them",
                    item.missed
                );
            }
            let Some(e) = item.event else { continue };
            last = last.max(e.cursor);
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => {
                    writeln!(out, "{}", serde_json::to_string(&output::Event::from(&e))?)?;
                }
                Format::Yaml => write!(
                    out,
                    "---\n{}",
                    serde_norway::to_string(&output::Event::from(&e))?
                )?,
                _ => writeln!(out, "{}", output::event_row(&e, wide).join("   "))?,
            }
            out.flush()?;
        }
        if last == 0 {
            bail!("the controller closed the event stream");
        }
    }
}

fn describe_agent(format: Format, agent: &pb::Agent) -> anyhow::Result<()> {
    let view = output::Agent::from(agent);
    if matches!(format, Format::Json | Format::Yaml) {
        return output::structured(format, &view);
    }
    let field = |name: &str, value: &str| println!("{:<22}{}", format!("{name}:"), value);
    field("ID", &view.id);
    field("State", &view.state);
    field("Hostname", &view.hostname);
    field("OS", &view.os);
    field("Kernel", &view.kernel);
    field("Architecture", &view.arch);
    field("Addresses", &view.addresses.join(", "));
    field("Agent version", &view.agent_version);
    field("Labels", &output::labels(&view.labels));
    field("Reported labels", &output::labels(&view.reported_labels));
    field(
        "Enrolled",
        &format!("{} (token {})", view.enrolled, view.enrolled_with_token),
    );
    field(
        "Last seen",
        &format!(
            "{} ({} ago)",
            view.last_seen,
            output::age(agent.last_seen_ms)
        ),
    );
    field("Peer", &view.peer);
    field("Certificate expires", &view.certificate_expires);
    if !view.problems.is_empty() {
        field("Problems", &view.problems.join("; "));
    }
    if let Some(r) = &view.revoked {
        field("Revoked", &format!("{} by {} ({})", r.at, r.by, r.reason));
    }
    Ok(())
}

/// `campaign/NAME` (kubectl style) or a bare name.
fn campaign_name(reference: &str) -> anyhow::Result<String> {
    let name = match reference.split_once('/') {
        Some(("campaign" | "campaigns", name)) => name,
        Some((kind, _)) => bail!("{reference:?}: expected campaign/NAME, not a {kind}"),
        None => reference,
    };
    if name.is_empty() {
        bail!("{reference:?}: no campaign name");
    }
    Ok(name.to_owned())
}

async fn apply(
    client: &mut AdminServiceClient<Channel>,
    format: Format,
    file: &Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (source, content) = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
        ("stdin".to_owned(), text)
    } else {
        (
            file.display().to_string(),
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        )
    };
    let results = client
        .apply(pb::ApplyRequest {
            source: source.clone(),
            content,
            dry_run,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{source}: {}", s.message()))?
        .into_inner()
        .results;
    #[derive(serde::Serialize)]
    struct Applied {
        kind: String,
        name: String,
        action: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    }
    match format {
        Format::Json | Format::Yaml => output::structured(
            format,
            &output::List {
                items: results
                    .iter()
                    .map(|r| Applied {
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        action: r.action.clone(),
                        notes: r.notes.clone(),
                    })
                    .collect::<Vec<_>>(),
            },
        ),
        _ => {
            let suffix = if dry_run { " (dry run)" } else { "" };
            for r in &results {
                println!("{}/{} {}{suffix}", r.kind.to_lowercase(), r.name, r.action);
                for note in &r.notes {
                    println!("  {note}");
                }
            }
            Ok(())
        }
    }
}

async fn rollout(
    client: &mut AdminServiceClient<Channel>,
    format: Format,
    action: RolloutCmd,
) -> anyhow::Result<()> {
    let (campaign, action) = match action {
        RolloutCmd::Status {
            campaign,
            watch,
            timeout,
        } => {
            return rollout_status(
                client,
                format,
                &campaign_name(&campaign)?,
                watch,
                parse_duration(&timeout)?,
            )
            .await;
        }
        RolloutCmd::Pause { campaign } => (campaign, pb::RolloutAction::Pause),
        RolloutCmd::Resume { campaign } => (campaign, pb::RolloutAction::Resume),
        RolloutCmd::Abort { campaign } => (campaign, pb::RolloutAction::Abort),
    };
    let c = client
        .rollout(pb::RolloutRequest {
            campaign: campaign_name(&campaign)?,
            action: action.into(),
        })
        .await?
        .into_inner();
    match format {
        Format::Json | Format::Yaml => output::structured(format, &output::Campaign::from(&c)),
        _ => {
            println!("campaign/{} rollout {}", c.name, c.rollout_state);
            Ok(())
        }
    }
}

/// Prints rollout progress; with `watch`, redraws until the rollout
/// completes (exit 0), pauses or is aborted (an error), or `timeout`.
async fn rollout_status(
    client: &mut AdminServiceClient<Channel>,
    format: Format,
    name: &str,
    watch: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let started = std::time::Instant::now();
    let mut drawn = 0usize;
    let mut last: Vec<String> = Vec::new();
    loop {
        let c = client
            .rollout(pb::RolloutRequest {
                campaign: name.to_owned(),
                action: pb::RolloutAction::Status.into(),
            })
            .await?
            .into_inner();
        if matches!(format, Format::Json | Format::Yaml) {
            return output::structured(format, &output::Campaign::from(&c));
        }
        let lines = output::rollout_lines(&c);
        if lines != last {
            let mut out = std::io::stdout().lock();
            if tty && drawn > 0 {
                // Redraw in place.
                write!(out, "\x1b[{drawn}A\x1b[J")?;
            } else if drawn > 0 {
                writeln!(out)?;
            }
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            drawn = lines.len();
            last = lines;
        }
        match c.rollout_state.as_str() {
            "completed" => return Ok(()),
            "paused" if watch => {
                bail!("rollout of campaign/{name} is paused: {}", c.rollout_reason)
            }
            "aborted" if watch => bail!("rollout of campaign/{name} was aborted"),
            _ => {}
        }
        if !watch {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "rollout of campaign/{name} still {} after {}",
                c.rollout_state,
                ruse_proto::types::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn describe_campaign(format: Format, c: &pb::Campaign) -> anyhow::Result<()> {
    let view = output::Campaign::from(c);
    if matches!(format, Format::Json | Format::Yaml) {
        return output::structured(format, &view);
    }
    let field = |name: &str, value: &str| println!("{:<18}{}", format!("{name}:"), value);
    field("Name", &view.name);
    if !view.description.is_empty() {
        field("Description", &view.description);
    }
    field("Selector", &output::labels(&view.selector));
    field("Matching agents", &view.matching_agents.to_string());
    field(
        "Generation",
        &format!("{} (rotation epoch {})", view.generation, view.epoch),
    );
    field(
        "Rotate every",
        view.rotate_every.as_deref().unwrap_or("never"),
    );
    field("Last rotated", &view.last_rotated);
    field("Created", &view.created);
    field("Updated", &view.updated);
    println!("Lures:");
    for l in &view.lures {
        let mut line = format!("  {:<20} {}", l.name, l.template);
        if !l.decoy.is_empty() {
            line.push_str(&format!(" -> decoy {}", l.decoy));
        }
        if !l.path.is_empty() {
            line.push_str(&format!(" at {}", l.path));
        }
        if !l.params.is_empty() {
            line.push_str(&format!(" ({})", output::labels(&l.params)));
        }
        println!("{line}");
    }
    println!(
        "Rollout (max failure ratio {:.0}%):",
        view.max_failure_ratio * 100.0
    );
    for line in output::rollout_lines(c) {
        println!("  {line}");
    }
    Ok(())
}

async fn issue_admin(
    client: &mut AdminServiceClient<Channel>,
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

fn write_admin_files(
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
