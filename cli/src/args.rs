//! The command line: every verb, its arguments and help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use ruse_proto::admin::v1 as pb;
use ruse_proto::types::{UnixMs, parse_duration};

use crate::incidents;
use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "rusectl",
    version,
    about = "Administer a Ruse deception controller"
)]
pub struct Cli {
    /// Context file (default: $RUSECTL_CONTEXT_FILE, then ~/.config/ruse/config.toml).
    #[arg(long, global = true, env = "RUSECTL_CONTEXT_FILE")]
    pub context_file: Option<PathBuf>,
    /// Context to use within the file (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Controller URL, overriding the context's.
    #[arg(long, global = true)]
    pub controller: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Sign in to the web console: prints a one-time link (and opens it in
    /// a browser when there is a desktop).
    Console {
        /// Only print the link.
        #[arg(long)]
        no_browser: bool,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum AckWhat {
    Incident { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ResolveWhat {
    Incident {
        id: String,
        /// What was found and done.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportWhat {
    Incidents(incidents::ExportArgs),
}

#[derive(Subcommand, Debug)]
pub enum GetWhat {
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
pub struct EventArgs {
    /// Only events of this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only events of this lure instance.
    #[arg(long)]
    pub lure: Option<String>,
    /// Only events of this kind (touch, modify, delete, rename, drift,
    /// decoy-login, credential-use, flood, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events the controller received in this last stretch of time
    /// (e.g. 1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
}

impl EventArgs {
    pub fn filter(&self) -> anyhow::Result<pb::EventFilter> {
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
pub enum WatchWhat {
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
pub enum RolloutCmd {
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
pub enum LabelWhat {
    Agent {
        id: String,
        /// k=v to set, k- to remove.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DescribeWhat {
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
pub enum TokenAction {
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
pub enum RevokeWhat {
    /// Revoke an agent: its session is closed and it can no longer connect.
    Agent {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End an admin's web console sessions (sign-in links they have not
    /// used yet stop working too).
    Session {
        /// The admin whose sessions end.
        admin: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeleteWhat {
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
pub enum AdminAction {
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
