//! What the bench waits for: sessions coming up and `Assign`s arriving,
//! as reported by the simulated agents through the [`Hub`], and events
//! being acknowledged. Every wait has a deadline and, when it passes, says
//! what did not happen and, for a few agents, why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::mpsc;

use super::agent::{Hub, HubEvent, SimAgent};

/// One `Assign` as an agent received it.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub agent: usize,
    pub task_id: String,
    pub at: Instant,
}

#[derive(Debug)]
pub struct Observer {
    rx: mpsc::UnboundedReceiver<HubEvent>,
    /// Welcomes count only from this instant on.
    since: Instant,
    welcomed: Vec<bool>,
    welcomed_count: usize,
    last_welcome: Option<Instant>,
    assigns: HashMap<String, Vec<Assigned>>,
}

impl Observer {
    pub fn new(rx: mpsc::UnboundedReceiver<HubEvent>) -> Self {
        Observer {
            rx,
            since: Instant::now(),
            welcomed: Vec::new(),
            welcomed_count: 0,
            last_welcome: None,
            assigns: HashMap::new(),
        }
    }

    fn absorb(&mut self, ev: HubEvent) {
        match ev {
            HubEvent::Welcome { agent, at } => {
                if at < self.since {
                    return;
                }
                if self.welcomed.len() <= agent {
                    self.welcomed.resize(agent + 1, false);
                }
                if !self.welcomed[agent] {
                    self.welcomed[agent] = true;
                    self.welcomed_count += 1;
                    self.last_welcome = Some(self.last_welcome.map_or(at, |l| l.max(at)));
                }
            }
            HubEvent::Assign {
                agent,
                job_id,
                task_id,
                at,
            } => self
                .assigns
                .entry(job_id)
                .or_default()
                .push(Assigned { agent, task_id, at }),
        }
    }

    /// Takes whatever has arrived; false once `deadline` passed with nothing.
    async fn pump(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.rx.recv()).await {
            Ok(Some(ev)) => {
                self.absorb(ev);
                while let Ok(ev) = self.rx.try_recv() {
                    self.absorb(ev);
                }
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    /// Counts sessions established from `since` on, once per agent.
    pub fn count_sessions_from(&mut self, since: Instant) {
        self.since = since;
        self.welcomed.clear();
        self.welcomed_count = 0;
        self.last_welcome = None;
    }

    /// Waits until every one of `agents` has had a session since
    /// [`Observer::count_sessions_from`]; returns when the last one came up.
    pub async fn wait_sessions(
        &mut self,
        agents: &[Arc<SimAgent>],
        within: Duration,
        what: &str,
    ) -> Result<Instant> {
        let deadline = Instant::now() + within;
        let mut next_report = Instant::now() + Duration::from_secs(5);
        loop {
            if self.welcomed_count >= agents.len()
                && let Some(last) = self.last_welcome
            {
                return Ok(last);
            }
            if Instant::now() >= next_report {
                eprintln!(
                    "  … {what}: {} of {} sessions up",
                    self.welcomed_count,
                    agents.len()
                );
                next_report += Duration::from_secs(5);
            }
            if !self.pump(deadline.min(next_report)).await && Instant::now() >= deadline {
                let missing: Vec<&Arc<SimAgent>> = agents
                    .iter()
                    .filter(|a| !self.welcomed.get(a.index).copied().unwrap_or(false))
                    .collect();
                bail!(
                    "{what}: only {} of {} agents had a session after {within:?}; {}",
                    agents.len() - missing.len(),
                    agents.len(),
                    why(&missing)
                );
            }
        }
    }

    /// Waits until `count` agents have received an `Assign` of `job_id`,
    /// and hands those over.
    pub async fn wait_assigns(
        &mut self,
        job_id: &str,
        count: usize,
        within: Duration,
        agents: &[Arc<SimAgent>],
    ) -> Result<Vec<Assigned>> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.assigns.get(job_id).map_or(0, Vec::len);
            if got >= count {
                return Ok(self.assigns.remove(job_id).unwrap_or_default());
            }
            if !self.pump(deadline).await && Instant::now() >= deadline {
                let reached: std::collections::HashSet<usize> = self
                    .assigns
                    .get(job_id)
                    .map(|v| v.iter().map(|a| a.agent).collect())
                    .unwrap_or_default();
                let offline: Vec<&Arc<SimAgent>> = agents
                    .iter()
                    .filter(|a| !reached.contains(&a.index))
                    .collect();
                bail!(
                    "job {job_id}: only {got} of {count} agents received its Assign within {within:?}; not reached e.g. {}",
                    why(&offline)
                );
            }
        }
    }
}

/// Names a few agents and their last session error.
fn why(agents: &[&Arc<SimAgent>]) -> String {
    let mut parts: Vec<String> = agents
        .iter()
        .take(3)
        .map(|a| {
            format!(
                "{} ({})",
                a.identity.name,
                a.last_error().unwrap_or_else(|| "no error recorded".into())
            )
        })
        .collect();
    if agents.len() > 3 {
        parts.push(format!("and {} more", agents.len() - 3));
    }
    parts.join(", ")
}

/// Waits until `target` events have been acknowledged in all; returns when.
pub async fn wait_acked(hub: &Hub, target: u64, within: Duration, what: &str) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if hub.acked() >= target {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: only {} of {target} events acknowledged after {within:?} ({} emitted in all)",
                hub.acked(),
                hub.emitted()
            );
        }
        // Polling every millisecond bounds the error of an ingest figure
        // measured in seconds well below its own noise.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
