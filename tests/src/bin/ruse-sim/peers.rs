//! Several simulators driving one fleet (`--peers DIR --peer-count N`):
//! past one process's file-descriptor limit, a 30,000-agent fleet is two
//! simulators. They meet at each step through files in a shared directory
//! and the one whose run id sorts first acts for all — it applies the
//! campaign, it kills the replica — and writes when it did, so each
//! measures its own agents from the same moment (one machine, one clock).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use ruse_proto::types::UnixMs;

#[derive(Debug)]
pub struct Peers {
    pub dir: PathBuf,
    pub count: usize,
    pub run: String,
    pub timeout: Duration,
}

impl Peers {
    /// Writes `value` for `step` and waits until every simulator has;
    /// returns what each wrote, by run id.
    pub async fn meet(&self, step: &str, value: &str) -> anyhow::Result<BTreeMap<String, String>> {
        self.publish(&format!("{step}.{}", self.run), value)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let mut met = BTreeMap::new();
            let prefix = format!("{step}.");
            for entry in std::fs::read_dir(&self.dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(run) = name.strip_prefix(&prefix)
                    && !run.contains('.')
                {
                    met.insert(
                        run.to_owned(),
                        std::fs::read_to_string(self.dir.join(&name))?,
                    );
                }
            }
            if met.len() >= self.count {
                return Ok(met);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {} simulators reached `{step}`",
                    met.len(),
                    self.count
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether this simulator acts for all at a step `met` describes.
    pub fn leads(&self, met: &BTreeMap<String, String>) -> bool {
        met.keys().next() == Some(&self.run)
    }

    /// Writes `name` whole (a reader never sees half of it).
    pub fn publish(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{name}.{}", self.run));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, self.dir.join(name))
            .with_context(|| format!("publishing {name} in {}", self.dir.display()))
    }

    /// The moment another simulator published as `name`, if it has.
    pub fn moment(&self, name: &str) -> Option<Instant> {
        let ms: i64 = std::fs::read_to_string(self.dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let ago = UnixMs::now().0.saturating_sub(ms).max(0);
        Instant::now().checked_sub(Duration::from_millis(u64::try_from(ago).unwrap_or(0)))
    }

    /// Waits for [`Peers::moment`] `name`.
    pub async fn wait_moment(&self, name: &str) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(at) = self.moment(name) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!("no simulator published `{name}`");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
