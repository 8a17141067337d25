//! `ruse-controller dev`: a controller and one agent on this machine, in
//! one process, with nothing to set up. The data directory is kept between
//! runs, so the agent keeps its identity.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use ruse_agent::{AgentConfig, AgentError, AgentStatus};
use ruse_pki::CaPin;
use ruse_proto::transport::ControllerUrl;
use ruse_proto::types::{Identity, Labels};

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
    #[error("the demo agent stopped: {0}")]
    Agent(#[from] AgentError),
    #[error("the demo agent did not connect within {0:?}; see the log above")]
    AgentTimeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// The campaign `dev` plants: the example shipped in deploy/examples.
pub const DEMO_MANIFEST: &str = include_str!("../../deploy/examples/healthcare-campaign.yaml");

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
    pub decoy: Option<crate::resources::Decoy>,
    /// Decoy services the demo agent has listening.
    pub decoy_services: usize,
    /// The planted SSH key that leads to the decoy.
    pub ssh_key: Option<PathBuf>,
}

impl DevInfo {
    fn decoy_lines(&self) -> String {
        let Some(crate::resources::Decoy {
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
                  patient exports, HL7, DICOM and FHIR files, a passwords spreadsheet){honeyfile}{decoy}

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
        })?;
        tracing::info!(data_dir = %data_dir.display(), pin = %report.pin, "initialised a new dev data directory");
    }
    let config = ControllerConfig {
        data_dir: data_dir.clone(),
        listen: opts.listen,
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
    let mut agent_config = AgentConfig::new(url.clone(), pin, agent_dir.clone(), sandbox.clone());
    agent_config.token_file = Some(token_file);
    agent_config.min_backoff = Duration::from_millis(200);
    agent_config.max_backoff = Duration::from_secs(5);
    let (stop_agent, stop_rx) = watch::channel(false);
    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let mut agent = tokio::spawn(ruse_agent::run(agent_config, stop_rx, status_tx));

    let wait = Duration::from_secs(20);
    let connected = tokio::select! {
        r = tokio::time::timeout(wait, status.wait_for(|s| s.connected)) => match r {
            Ok(Ok(s)) => s.agent_id.clone(),
            _ => None,
        },
        finished = &mut agent => {
            controller.shutdown().await?;
            return match finished {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DevError::AgentTimeout(wait)),
            };
        }
    };
    let Some(agent_id) = connected else {
        let _ = stop_agent.send(true);
        controller.shutdown().await?;
        return Err(DevError::AgentTimeout(wait));
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
    let planted = tokio::time::timeout(wait, status.wait_for(|s| s.lures > 0))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| s.lures)
        .unwrap_or(0);
    let honeyfile = first_file(&sandbox.join("home/clinician/Documents/Exports"));
    let decoy = controller
        .core()
        .deploy
        .decoys()
        .into_iter()
        .find(|d| d.name == "pacs-archive02");
    let decoy_services = match &decoy {
        Some(d) => {
            let want = d.services.len();
            tokio::time::timeout(
                Duration::from_secs(5),
                status.wait_for(|s| s.decoy_services >= want),
            )
            .await
            .ok();
            status.borrow().decoy_services
        }
        None => 0,
    };
    let ssh_key =
        Some(sandbox.join("home/clinician/.ssh/id_ed25519_pacs-archive02")).filter(|k| k.exists());
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
    });

    tokio::select! {
        () = shutdown => {}
        finished = &mut agent => {
            if let Ok(Err(e)) = finished {
                tracing::error!(error = %e, "demo agent stopped");
            }
        }
    }
    let _ = stop_agent.send(true);
    let _ = agent.await;
    controller.shutdown().await?;
    Ok(())
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
