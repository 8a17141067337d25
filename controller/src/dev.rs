//! `ruse-controller dev`: a controller and one agent on this machine with
//! nothing to set up. The agent is the `ruse-agent` binary beside this one,
//! run as a child process (the controller does not link the agent). The
//! data directory is kept between runs, so the agent keeps its identity.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ruse_pki::CaPin;
use ruse_proto::transport::ControllerUrl;
use ruse_proto::types::{AgentId, Identity, Labels};

use crate::config::ControllerConfig;
use crate::core::{AuditEntry, Caller};
use crate::init::{self, InitOptions};
use crate::{Controller, ControllerError, layout};

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Init(#[from] init::InitError),
    #[error("the demo agent stopped ({0}); see its log above")]
    Agent(String),
    #[error("the demo agent did not connect within {0:?}; see the log above")]
    AgentTimeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// The campaign `dev` plants: the example shipped in deploy/examples.
pub const DEMO_MANIFEST: &str = include_str!("../../deploy/examples/healthcare-campaign.yaml");

/// How long the console link `dev` prints may wait to be opened: the
/// banner is read some time after it is printed.
pub const DEV_CONSOLE_LINK_TTL: Duration = Duration::from_secs(3600);

/// What `dev` started, for the caller to print.
#[derive(Debug, Clone)]
pub struct DevInfo {
    pub url: ControllerUrl,
    pub pin: CaPin,
    pub data_dir: PathBuf,
    pub context_file: PathBuf,
    pub agent_id: String,
    pub agent_state_dir: PathBuf,
    pub sandbox: PathBuf,
    /// A honeyfile to read to trip a lure.
    pub honeyfile: Option<PathBuf>,
    pub lures: usize,
    /// The demo decoy.
    pub decoy: Option<crate::model::Decoy>,
    /// Decoy services the demo agent has listening.
    pub decoy_services: usize,
    /// The planted SSH key that leads to the decoy.
    pub ssh_key: Option<PathBuf>,
    /// A sign-in link to the console, for the local admin.
    pub console_link: Option<String>,
}

impl DevInfo {
    fn decoy_lines(&self) -> String {
        let Some(crate::model::Decoy {
            name,
            address,
            services,
            ..
        }) = &self.decoy
        else {
            return String::new();
        };
        let list = services
            .iter()
            .map(|s| format!("{} {}", s.protocol, s.port))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = if self.decoy_services == 0 {
            format!(
                "\n  decoy           {name} is NOT running (a port in use?): see `rusectl describe agent {}`",
                self.agent_id
            )
        } else {
            format!(
                "\n  decoy           {name} on {address}: {list}\n                  ({} of {} services listening)",
                self.decoy_services,
                services.len()
            )
        };
        let ssh = services
            .iter()
            .find(|s| s.protocol == "ssh")
            .map(|s| s.port);
        if let (Some(key), Some(port)) = (&self.ssh_key, ssh) {
            out.push_str(&format!(
                "\n  trip the decoy  ssh -i {} -o IdentitiesOnly=yes -p {port} {address}",
                key.display()
            ));
        }
        out
    }
}

impl DevInfo {
    /// The text printed once everything runs.
    pub fn banner(&self) -> String {
        let ctx = self.context_file.display();
        format!(
            "\
Ruse controller (dev) is running at {url}
  data directory  {data}
  CA pin          {pin}
  demo agent      {agent} (state in {state}, lure root {sandbox})
  lures planted   {lures} from campaign clinical-workstations, under {sandbox}/home/clinician
                  (SSH keys and config, AWS and database credentials, a PACS config,
                  patient exports, HL7, DICOM and FHIR files, a passwords spreadsheet){honeyfile}{decoy}{console}

Next, in another terminal:
  rusectl --context-file {ctx} watch events      (then trip a lure, as above)
  rusectl --context-file {ctx} get events -o wide
  rusectl --context-file {ctx} get agents
  rusectl --context-file {ctx} describe campaign clinical-workstations
  rusectl --context-file {ctx} get lures -o wide
  rusectl --context-file {ctx} describe agent {agent}
  rusectl --context-file {ctx} token create --ttl 1h --uses 5 --label site=icu
  ruse-agent run --controller {url} --ca-pin {pin} \\
      --token-file TOKEN_FILE --state-dir /tmp/ruse-agent-2 --label role=workstation
  rusectl --context-file {ctx} get audit

(export RUSECTL_CONTEXT_FILE={ctx} to drop --context-file.)
Press Ctrl-C to stop; the data directory is kept for the next run.",
            url = self.url,
            data = self.data_dir.display(),
            pin = self.pin,
            agent = self.agent_id,
            state = self.agent_state_dir.display(),
            sandbox = self.sandbox.display(),
            lures = self.lures,
            honeyfile = self
                .honeyfile
                .as_ref()
                .map(|h| format!("\n  trip one        cat {}", h.display()))
                .unwrap_or_default(),
            decoy = self.decoy_lines(),
            console = self
                .console_link
                .as_ref()
                .map(|l| format!(
                    "\n  web console     {l}\n                  (signs in once, within {} min; `rusectl --context-file {ctx} console` for another)",
                    DEV_CONSOLE_LINK_TTL.as_secs() / 60
                ))
                .unwrap_or_default(),
        )
    }
}

fn loopback_url(addr: SocketAddr) -> ControllerUrl {
    if addr.ip().is_unspecified() {
        ControllerUrl::from_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())))
    } else {
        ControllerUrl::from_addr(addr)
    }
}

/// Runs the demo until `shutdown` resolves. `ready` is called once the agent
/// is connected.
pub async fn run(
    opts: DevOptions,
    ready: impl FnOnce(&DevInfo),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevError> {
    let data_dir = std::path::absolute(&opts.data_dir)
        .map_err(|e| DevError::Other(format!("{}: {e}", opts.data_dir.display())))?;
    if !init::is_initialised(&data_dir) {
        let report = init::init(&InitOptions {
            data_dir: data_dir.clone(),
            trust_domain: "ruse.local"
                .parse()
                .map_err(|e| DevError::Other(format!("{e}")))?,
            controller_url: loopback_url(opts.listen).to_string(),
            admin_name: "admin"
                .parse()
                .map_err(|e| DevError::Other(format!("{e}")))?,
            admin_cert_ttl: Duration::from_secs(365 * 86_400),
            store: None,
        })?;
        tracing::info!(data_dir = %data_dir.display(), pin = %report.pin, "initialised a new dev data directory");
    }
    // The console on the next port (any free one when the controller's
    // port is chosen by the system).
    let console_port = match opts.listen.port() {
        0 => 0,
        p => p.saturating_add(1),
    };
    let config = ControllerConfig {
        data_dir: data_dir.clone(),
        listen: opts.listen,
        console_listen: Some(SocketAddr::new(opts.listen.ip(), console_port)),
        heartbeat_interval: Duration::from_secs(10),
        offline_after: Duration::from_secs(30),
        ..ControllerConfig::default()
    };
    let controller = Controller::start(config).await?;
    let url = loopback_url(controller.agent_addr());
    let pin = controller.core().ca.pin();

    let agent_dir = data_dir.join("agent");
    let token_file = agent_dir.join("token");
    if !agent_dir.join("agent.pem").exists() {
        write_demo_token(&controller, &token_file).await?;
    }
    let sandbox = data_dir.join("sandbox");
    for dir in [sandbox.join("home/clinician"), sandbox.join("etc")] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| DevError::Other(format!("{}: {e}", dir.display())))?;
    }
    apply_demo_campaign(&controller).await?;
    let mut agent = match spawn_agent(&url, &pin, &agent_dir, &token_file, &sandbox) {
        Ok(child) => child,
        Err(e) => {
            controller.shutdown().await?;
            return Err(e);
        }
    };

    let wait = Duration::from_secs(20);
    let trust_domain = controller.core().ca.trust_domain().clone();
    let deadline = tokio::time::Instant::now() + wait;
    let agent_id = loop {
        if let Ok(Some(status)) = agent.try_wait() {
            controller.shutdown().await?;
            return Err(DevError::Agent(status.to_string()));
        }
        if let Some(id) = enrolled_as(&agent_dir, &trust_domain)
            && controller.core().fleet.get(&id).is_some_and(|v| {
                matches!(
                    v.state,
                    ruse_proto::convert::AgentState::Online
                        | ruse_proto::convert::AgentState::Degraded
                )
            })
        {
            break id;
        }
        if tokio::time::Instant::now() > deadline {
            stop_agent(&mut agent).await;
            controller.shutdown().await?;
            return Err(DevError::AgentTimeout(wait));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A demo agent enrolled by an earlier version got these labels from its
    // own configuration, which no longer selects anything: set them as an
    // admin would.
    let labels = demo_labels()?;
    if controller
        .core()
        .fleet
        .record(&agent_id)
        .is_some_and(|r| !r.labels().matches(&labels))
    {
        controller
            .core()
            .label_agent(&agent_id, &labels, &[])
            .map_err(|e| DevError::Other(e.to_string()))?;
    }
    // The demo campaign's waves over one agent finish in a moment.
    let applied = || {
        controller
            .core()
            .deploy
            .lures(Some(&agent_id), None, false)
            .map(|lures| lures.iter().filter(|l| l.state == "applied").count())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + wait;
    while applied() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let planted = applied();
    let honeyfile = first_file(&sandbox.join("home/clinician/Documents/Exports"));
    let decoy = controller
        .core()
        .deploy
        .decoys()
        .into_iter()
        .find(|d| d.name == "pacs-archive02");
    let decoy_services = match &decoy {
        Some(d) => {
            // Listening is what counts: a connect to each service's port.
            let host = if d.listen.is_empty() {
                &d.address
            } else {
                &d.listen
            };
            let listening = || {
                d.services
                    .iter()
                    .filter(|s| std::net::TcpStream::connect((host.as_str(), s.port)).is_ok())
                    .count()
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while listening() < d.services.len() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            listening()
        }
        None => 0,
    };
    let ssh_key =
        Some(sandbox.join("home/clinician/.ssh/id_ed25519_pacs-archive02")).filter(|k| k.exists());
    let admin: ruse_proto::types::AdminName = "admin"
        .parse()
        .map_err(|e| DevError::Other(format!("{e}")))?;
    let console_link = match controller
        .core()
        .console_link_for(&admin, DEV_CONSOLE_LINK_TTL)
    {
        Ok(link) => Some(link.url),
        Err(e) => {
            tracing::warn!(error = %e, "no console link");
            None
        }
    };
    ready(&DevInfo {
        url,
        pin,
        data_dir: data_dir.clone(),
        context_file: layout::context_file(&data_dir),
        agent_id: agent_id.to_string(),
        agent_state_dir: agent_dir,
        sandbox,
        honeyfile,
        lures: planted,
        decoy,
        decoy_services,
        ssh_key,
        console_link,
    });

    tokio::select! {
        () = shutdown => {}
        status = agent.wait() => {
            tracing::error!(status = ?status, "demo agent stopped");
        }
    }
    stop_agent(&mut agent).await;
    controller.shutdown().await?;
    Ok(())
}

/// Starts the demo agent: the `ruse-agent` beside this binary, its output
/// going where this process's goes.
fn spawn_agent(
    url: &ControllerUrl,
    pin: &CaPin,
    state: &Path,
    token_file: &Path,
    sandbox: &Path,
) -> Result<tokio::process::Child, DevError> {
    let exe = std::env::current_exe().map_err(|e| DevError::Other(e.to_string()))?;
    let binary = exe.with_file_name(format!("ruse-agent{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        return Err(DevError::Other(format!(
            "the demo agent runs {}, which is not there: build it beside ruse-controller (cargo build --release builds both)",
            binary.display()
        )));
    }
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("run")
        .arg("--controller")
        .arg(url.to_string())
        .arg("--ca-pin")
        .arg(pin.to_string())
        .arg("--state-dir")
        .arg(state)
        .arg("--root")
        .arg(sandbox)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if token_file.exists() {
        cmd.arg("--token-file").arg(token_file);
    }
    cmd.spawn()
        .map_err(|e| DevError::Other(format!("{}: {e}", binary.display())))
}

/// The agent the certificate in `state` names, once it has enrolled.
fn enrolled_as(state: &Path, trust_domain: &ruse_proto::types::TrustDomain) -> Option<AgentId> {
    let pem = ruse_pki::read_private_file(&state.join("agent.pem")).ok()?;
    let cert = ruse_pki::pem_decode_certificates(&pem, "agent certificate")
        .ok()?
        .into_iter()
        .next()?;
    match ruse_pki::certificate_identity(trust_domain, &cert)
        .ok()?
        .identity
    {
        Identity::Agent(id) => Some(id),
        _ => None,
    }
}

/// Asks the demo agent to stop (SIGTERM) and waits for it.
async fn stop_agent(agent: &mut tokio::process::Child) {
    if let Some(pid) = agent.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .is_err()
    {
        let _ = agent.kill().await;
    }
}

/// The first regular file in `dir`, if any.
fn first_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().next()
}

/// Applies the demo campaign unless this data directory already has it
/// (an operator may have changed it since).
async fn apply_demo_campaign(controller: &Controller) -> Result<(), DevError> {
    let core = controller.core();
    if core.deploy.campaign("clinical-workstations").is_some() {
        return Ok(());
    }
    let docs =
        crate::resources::parse(DEMO_MANIFEST).map_err(|e| DevError::Other(e.to_string()))?;
    let results = core
        .deploy
        .apply(&docs, false)
        .await
        .map_err(|e| DevError::Other(e.to_string()))?;
    let caller = local_admin()?;
    core.audit(
        &caller,
        AuditEntry {
            action: "resources.apply",
            target: "deploy/examples/healthcare-campaign.yaml".into(),
            detail: results
                .iter()
                .map(|r| format!("{}/{} {}", r.kind, r.name, r.action))
                .collect::<Vec<_>>()
                .join("; "),
        },
        "ok",
    )
    .await
    .map_err(|e| DevError::Other(e.to_string()))?;
    Ok(())
}

fn local_admin() -> Result<Caller, DevError> {
    Ok(Caller {
        identity: Some(Identity::Admin(
            "admin"
                .parse()
                .map_err(|e| DevError::Other(format!("{e}")))?,
        )),
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    })
}

/// Creates a single-use token for the demo agent, as the local admin.
/// The demo agent's labels, stamped by its token: a workstation that also
/// runs the demo decoy (selector decoys=pacs).
fn demo_labels() -> Result<Labels, DevError> {
    Labels::parse_pairs(["env=dev,role=workstation,site=dev,decoys=pacs"])
        .map_err(|e| DevError::Other(e.to_string()))
}

async fn write_demo_token(controller: &Controller, path: &Path) -> Result<(), DevError> {
    let core = controller.core();
    let caller = local_admin()?;
    let token = core
        .create_token(
            &caller,
            Some(Duration::from_secs(3600)),
            Some(1),
            demo_labels()?,
            "ruse-controller dev demo agent".into(),
        )
        .map_err(|e| DevError::Other(e.to_string()))?;
    core.audit(
        &caller,
        AuditEntry {
            action: "token.create",
            target: format!("token/{}", token.record.id),
            detail: "ruse-controller dev".into(),
        },
        "ok",
    )
    .await
    .map_err(|e| DevError::Other(e.to_string()))?;
    ruse_pki::write_private_file(path, token.secret.as_bytes())
        .map_err(|e| DevError::Other(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_manifest_is_valid() {
        let docs = crate::resources::parse(super::DEMO_MANIFEST).unwrap();
        assert_eq!(docs.len(), 2);
    }
}
