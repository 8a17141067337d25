//! The scenarios run on the simulated fleet, in the order given.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use ruse_proto::admin::v1 as admin_pb;
use ruse_proto::admin::v1::admin_service_client::AdminServiceClient;
use ruse_proto::transport::ControllerUrl;
use ruse_proto::types::UnixMs;

use crate::fleet::{Command, Fleet, Report, online, wait_reports};
use crate::peers::Peers;
use crate::{Args, Summary, cpu_seconds, fleet_name, ms, percentile, rss_kib};

/// The fleet, once ramped, and what every scenario reads.
pub struct Sim<'a> {
    pub args: &'a Args,
    pub admin: AdminServiceClient<Channel>,
    pub admin_url: ControllerUrl,
    pub fleet: Fleet,
    pub urls: Arc<[ControllerUrl]>,
    pub run: String,
    pub timeout: Duration,
    /// `ingest` and `failover`: how long to send.
    pub duration: Duration,
    /// Agents the controller should count online (the fleet and any
    /// others that were online before).
    pub target_online: u64,
    /// Each controller's RSS before the ramp (KiB), in `--controller-pid`
    /// order.
    pub rss_before: Vec<Option<u64>>,
    pub summary: Summary,
    /// The other simulators driving the same fleet, if any.
    pub peers: Option<Peers>,
}

/// What [`Sim::send_events`] saw.
#[derive(Debug, Default)]
struct Sent {
    events: u64,
    acked: u64,
    latencies: Vec<Duration>,
    sending: Duration,
}

impl Sent {
    fn all_acked(&self) -> anyhow::Result<()> {
        if self.acked < self.events {
            bail!(
                "{} events were never acknowledged",
                self.events - self.acked
            );
        }
        Ok(())
    }
}

impl Sim<'_> {
    /// The controllers' CPU time so far, summed (`None` without pids).
    fn controllers_cpu(&self) -> Option<f64> {
        let pids = &self.args.controller_pid;
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    /// Holds the fleet for `--hold`, then reports each controller's memory
    /// per agent it holds.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        // Every simulator's fleet size: agent i of each starts at
        // controller i % n and stays there.
        let sizes: Vec<usize> = match &self.peers {
            Some(peers) => peers
                .meet("connect", &self.args.agents.to_string())
                .await?
                .values()
                .map(|v| v.parse().unwrap_or(0))
                .collect(),
            None => vec![self.args.agents],
        };
        let hold = ruse_proto::types::parse_duration(&self.args.hold)?;
        tokio::time::sleep(hold).await;
        let pids = &self.args.controller_pid;
        let agents: usize = sizes.iter().sum();
        let mut total_before = 0;
        let mut total_after = 0;
        for (k, (pid, before)) in pids.iter().zip(&self.rss_before).enumerate() {
            let (Some(before), Some(after)) = (*before, rss_kib(*pid)) else {
                continue;
            };
            total_before += before;
            total_after += after;
            if pids.len() > 1 {
                let held: usize = sizes
                    .iter()
                    .map(|n| (0..*n).filter(|i| i % pids.len() == k).count())
                    .sum();
                let held = held.max(1);
                self.summary.add(
                    "connect",
                    &format!("replica {k} RSS holding"),
                    after as f64 / 1024.0,
                    "MiB",
                );
                self.summary.add(
                    "connect",
                    &format!("replica {k} memory per agent"),
                    after.saturating_sub(before) as f64 / held as f64,
                    "KiB",
                );
            }
        }
        if total_after > 0 {
            let s = &mut self.summary;
            s.add(
                "connect",
                "controller RSS before",
                total_before as f64 / 1024.0,
                "MiB",
            );
            s.add(
                "connect",
                "controller RSS holding",
                total_after as f64 / 1024.0,
                "MiB",
            );
            s.add(
                "connect",
                "controller memory per agent",
                total_after.saturating_sub(total_before) as f64 / agents as f64,
                "KiB",
            );
        }
        self.summary.add(
            "connect",
            "sim RSS",
            rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0,
            "MiB",
        );
        Ok(())
    }

    /// Applies a campaign for the fleet; time until every agent acked it.
    pub async fn push(&mut self) -> anyhow::Result<()> {
        let (lures, agents) = (self.args.lures, self.args.agents);
        // One campaign for the whole fleet, simulators sharing it included.
        let (name, selector) = match fleet_name(self.args) {
            Some(fleet) => (fleet.clone(), format!("fleet: \"{fleet}\"")),
            None => (self.run.clone(), format!("sim: \"{}\"", self.run)),
        };
        let mut manifest = format!(
            "kind: Campaign\nname: sim-{name}\nselector: {{{selector}}}\nrollout: {{waves: [\"100%\"], max_failure_ratio: 1}}\nlures:\n"
        );
        for i in 0..lures {
            manifest.push_str(&format!(
                "  - {{template: pgpass, name: pg-{i}, params: {{database: db{i}}}}}\n"
            ));
        }
        let leads = match &self.peers {
            Some(peers) => peers.leads(&peers.meet("push", "").await?),
            None => true,
        };
        let (t0, applied) = if leads {
            let t0 = Instant::now();
            let wall = UnixMs::now();
            self.admin
                .apply(admin_pb::ApplyRequest {
                    source: "ruse-sim".into(),
                    content: manifest,
                    dry_run: false,
                })
                .await
                .context("applying the campaign")?;
            if let Some(peers) = &self.peers {
                peers.publish("push.t0", &wall.0.to_string())?;
            }
            (t0, t0.elapsed())
        } else {
            let peers = self.peers.as_ref().context("no peers")?;
            (peers.wait_moment("push.t0").await?, Duration::ZERO)
        };
        let mut done = 0usize;
        let mut seen = vec![false; agents];
        let mut latencies = Vec::with_capacity(agents);
        wait_reports(&mut self.fleet, t0 + self.timeout, |index, at, r| {
            if let Report::Updated { lures: n } = r
                && *n >= lures
                && !seen[index]
            {
                seen[index] = true;
                done += 1;
                latencies.push(at.duration_since(t0));
            }
            done == agents
        })
        .await
        .context("push")?;
        latencies.sort();
        let s = &mut self.summary;
        s.samples("push acked", &latencies);
        s.add("push", "lures per agent", lures as f64, "");
        s.add("push", "apply call", ms(applied), "ms");
        s.percentiles("push", "acked", &latencies, &[50.0, 99.0]);
        s.add(
            "push",
            "all acked (max)",
            ms(percentile(&latencies, 100.0)),
            "ms",
        );
        Ok(())
    }

    /// Sends `--rate` events/s over the fleet in `--batch`es for
    /// `--duration`, calling `tick` with the time elapsed every 10 ms and
    /// `other` with every report that is not an ack; then waits (within
    /// `--timeout`) until every event sent is acknowledged.
    async fn send_events(
        &mut self,
        mut tick: impl FnMut(Duration),
        mut other: impl FnMut(usize, Instant, &Report),
    ) -> Sent {
        let (rate, batch) = (self.args.rate, self.args.batch as u64);
        let mut sent = Sent::default();
        let t0 = Instant::now();
        let mut next = 0usize;
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let mut take = |sent: &mut Sent, index: usize, at: Instant, r: &Report| {
            if let Report::Acked { events, latency } = r {
                sent.acked += *events as u64;
                sent.latencies.push(*latency);
            } else {
                other(index, at, r);
            }
        };
        while t0.elapsed() < self.duration {
            interval.tick().await;
            tick(t0.elapsed());
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            for _ in 0..due.saturating_sub(sent.events) / batch {
                let commands = &self.fleet.commands;
                let target = &commands[next % commands.len()];
                next += 1;
                if target.try_send(Command::SendEvents(batch as usize)).is_ok() {
                    sent.events += batch;
                }
            }
            while let Ok((index, at, r)) = self.fleet.reports.try_recv() {
                take(&mut sent, index, at, &r);
            }
        }
        sent.sending = t0.elapsed();
        if sent.acked < sent.events {
            let _ = wait_reports(
                &mut self.fleet,
                Instant::now() + self.timeout,
                |i, at, r| {
                    take(&mut sent, i, at, r);
                    sent.acked >= sent.events
                },
            )
            .await;
        }
        sent.latencies.sort();
        sent
    }

    /// A sustained event rate: durable rate, ack latency, events per
    /// controller CPU-second.
    pub async fn ingest(&mut self) -> anyhow::Result<()> {
        let cpu_before = self.controllers_cpu();
        let t0 = Instant::now();
        let sent = self.send_events(|_| {}, |_, _, _| {}).await;
        let elapsed = t0.elapsed();
        let cpu = match (cpu_before, self.controllers_cpu()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let s = &mut self.summary;
        s.add("ingest", "target rate", self.args.rate as f64, "events/s");
        s.add("ingest", "events sent", sent.events as f64, "");
        s.add("ingest", "events acked", sent.acked as f64, "");
        s.add("ingest", "sending time", sent.sending.as_secs_f64(), "s");
        s.add(
            "ingest",
            "durable rate",
            sent.acked as f64 / elapsed.as_secs_f64(),
            "events/s",
        );
        if let Some(cpu) = cpu {
            s.add("ingest", "controller CPU", cpu, "s");
            s.add(
                "ingest",
                "events per controller CPU-second",
                sent.acked as f64 / cpu.max(0.001),
                "events/s/core",
            );
        }
        s.percentiles("ingest", "batch ack", &sent.latencies, &[50.0, 99.0, 100.0]);
        sent.all_acked()
    }

    /// Every agent drops its session, then all come back at once.
    pub async fn storm(&mut self) -> anyhow::Result<()> {
        for c in &self.fleet.commands {
            let _ = c.send(Command::Disconnect).await;
        }
        let expected_online = self.target_online - self.args.agents as u64;
        let drop_deadline = Instant::now() + self.timeout;
        while self.fleet.connected.load(Ordering::Relaxed) > 0
            || online(&mut self.admin).await? > expected_online
        {
            if Instant::now() > drop_deadline {
                bail!("the fleet did not go offline");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while self.fleet.reports.try_recv().is_ok() {}
        let t0 = Instant::now();
        for c in &self.fleet.commands {
            let _ = c.send(Command::Reconnect).await;
        }
        let agents = self.args.agents;
        let mut back = 0usize;
        let mut times = Vec::with_capacity(agents);
        wait_reports(&mut self.fleet, t0 + self.timeout, |_, at, r| {
            if matches!(r, Report::Connected) {
                back += 1;
                times.push(at.duration_since(t0));
            }
            back == agents
        })
        .await
        .context("storm")?;
        let sessions_back = t0.elapsed();
        while online(&mut self.admin).await? < self.target_online {
            if Instant::now() > t0 + self.timeout {
                bail!("the controller does not count every agent online after the storm");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained = t0.elapsed();
        times.sort();
        let s = &mut self.summary;
        s.add("storm", "agents reconnecting", agents as f64, "");
        s.percentiles("storm", "session", &times, &[50.0, 99.0]);
        s.add(
            "storm",
            "all sessions back",
            sessions_back.as_secs_f64(),
            "s",
        );
        s.add(
            "storm",
            "all online at controller",
            drained.as_secs_f64(),
            "s",
        );
        Ok(())
    }

    /// The fleet's agents as the admin API lists them.
    async fn list_agents(&mut self) -> anyhow::Result<Vec<admin_pb::Agent>> {
        list_agents(&mut self.admin, &self.run).await
    }

    /// Events flow while one replica is killed (SIGKILL): how long until its
    /// agents hold sessions elsewhere, how long until the admin API shows
    /// every agent online at a live replica, and whether every event sent
    /// was acknowledged (the agents send again what was in flight).
    pub async fn failover(&mut self) -> anyhow::Result<()> {
        let k = self.args.kill_replica;
        if self.urls.len() < 2 {
            bail!("`failover` needs two controllers or more (--controller URL,URL,…)");
        }
        let victim = self
            .urls
            .get(k)
            .context("--kill-replica is not a --controller")?;
        if *victim == self.admin_url {
            bail!("--admin must be a replica other than the one `failover` kills ({victim})");
        }
        let pid = *self.args.controller_pid.get(k).context(
            "`failover` needs the replicas' pids (--controller-pid, in the order of --controller)",
        )?;
        // The victim's name, as `get agents` shows it: agent k started there.
        let hostname = format!("sim-{}-{k}", self.run);
        let agents = self.list_agents().await?;
        let name = agents
            .iter()
            .find(|a| a.hostname == hostname)
            .map(|a| a.controller.clone())
            .filter(|c| !c.is_empty())
            .context("the admin API does not say which replica holds the agents' sessions")?;
        let held = agents.iter().filter(|a| a.controller == name).count();

        // The controllers' view, polled from the kill on: every agent
        // online, none at the victim.
        let (kill_tx, mut kill_rx) = tokio::sync::watch::channel(None::<Instant>);
        let (mut admin, run, agents) = (self.admin.clone(), self.run.clone(), self.args.agents);
        let deadline = self.timeout;
        let watcher = tokio::spawn({
            let name = name.clone();
            async move {
                let killed = *kill_rx.wait_for(Option::is_some).await?;
                let killed = killed.context("no kill time")?;
                loop {
                    let elsewhere = list_agents(&mut admin, &run)
                        .await?
                        .iter()
                        .filter(|a| {
                            a.state == admin_pb::AgentState::Online as i32 && a.controller != name
                        })
                        .count();
                    if elsewhere == agents {
                        return anyhow::Ok(killed.elapsed());
                    }
                    if killed.elapsed() > deadline {
                        bail!(
                            "{elsewhere} of {agents} agents online at a live replica after {deadline:?}"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        // With peers, all send at once and the first kills for all.
        let leads = match &self.peers {
            Some(peers) => peers.leads(&peers.meet("failover", "").await?),
            None => true,
        };
        let peers = self.peers.take();
        let kill_at = self.duration / 3;
        let mut killed: Option<Instant> = None;
        let mut lost = HashSet::new();
        let mut back = Vec::new();
        let mut failures = 0usize;
        let mut kill_error = None;
        let sent = self
            .send_events(
                |elapsed| {
                    if killed.is_some() {
                        return;
                    }
                    if !leads {
                        killed = peers.as_ref().and_then(|p| p.moment("failover.t0"));
                        let _ = kill_tx.send(killed);
                    } else if elapsed >= kill_at {
                        let wall = UnixMs::now();
                        let signal = nix::sys::signal::Signal::SIGKILL;
                        let pid = nix::unistd::Pid::from_raw(pid as i32);
                        kill_error = nix::sys::signal::kill(pid, signal).err();
                        killed = Some(Instant::now());
                        let _ = kill_tx.send(killed);
                        if let Some(p) = &peers
                            && let Err(e) = p.publish("failover.t0", &wall.0.to_string())
                        {
                            eprintln!("cannot tell the other simulators of the kill: {e:#}");
                        }
                    }
                },
                |index, at, r| match r {
                    Report::Lost => {
                        lost.insert(index);
                    }
                    Report::Connected if lost.contains(&index) => back.push((index, at)),
                    Report::Failed(why) => {
                        failures += 1;
                        if failures <= 3 {
                            eprintln!("agent {index}: {why}");
                        }
                    }
                    _ => {}
                },
            )
            .await;
        self.peers = peers;
        if let Some(e) = kill_error {
            bail!("cannot kill the replica (pid {pid}): {e}");
        }
        let killed = killed.context("--duration too short to kill a replica")?;
        // Sessions still coming back after the sending stopped.
        let deadline = killed + self.timeout;
        let returned =
            |back: &[(usize, Instant)]| back.iter().map(|(i, _)| *i).collect::<HashSet<_>>().len();
        if returned(&back) < lost.len() {
            wait_reports(&mut self.fleet, deadline, |index, at, r| {
                if matches!(r, Report::Connected) && lost.contains(&index) {
                    back.push((index, at));
                }
                returned(&back) >= lost.len()
            })
            .await
            .context("the killed replica's agents did not all come back")?;
        }
        let mut times: Vec<Duration> = back
            .iter()
            .map(|(_, at)| at.saturating_duration_since(killed))
            .collect();
        times.sort();
        let online_elsewhere = watcher.await??;
        let s = &mut self.summary;
        s.samples("failover session back", &times);
        s.add("failover", "agents at the killed replica", held as f64, "");
        s.add("failover", "sessions lost", lost.len() as f64, "");
        s.add("failover", "reconnect failures", failures as f64, "");
        s.percentiles("failover", "session back", &times, &[50.0, 99.0]);
        s.add(
            "failover",
            "all sessions back",
            ms(percentile(&times, 100.0)),
            "ms",
        );
        s.add(
            "failover",
            "all online elsewhere (get agents)",
            online_elsewhere.as_secs_f64(),
            "s",
        );
        s.add("failover", "events sent", sent.events as f64, "");
        s.add("failover", "events acked", sent.acked as f64, "");
        s.percentiles("failover", "batch ack", &sent.latencies, &[99.0, 100.0]);
        sent.all_acked()
    }
}

/// The agents of simulator run `run`, as the admin API lists them (page
/// by page).
async fn list_agents(
    admin: &mut AdminServiceClient<Channel>,
    run: &str,
) -> anyhow::Result<Vec<admin_pb::Agent>> {
    let mut agents = Vec::new();
    let mut after_id = String::new();
    loop {
        let page = admin
            .list_agents(admin_pb::ListAgentsRequest {
                selector: [("sim".to_owned(), run.to_owned())].into(),
                include_deleted: false,
                after_id,
            })
            .await?
            .into_inner();
        agents.extend(page.agents);
        if page.next_after_id.is_empty() {
            return Ok(agents);
        }
        after_id = page.next_after_id;
    }
}
