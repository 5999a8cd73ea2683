//! The manager's session with the interchange across links: heartbeats and silence, losing a
//! link, registering again in the background (as the same instance, naming the tasks it still
//! holds), and installing the new link. Events carry their link's generation, so those of a
//! replaced link are ignored; a new link's reader starts only once the link is installed, so no
//! task it brings can arrive before the link itself.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use htex_protocol::{ManagerMessage, TaskId};
use tokio::sync::mpsc;

use super::slot::SlotState;
use super::{Event, State};
use crate::config::{deadline_after, seconds_text};
use crate::link::Registered;
use crate::{ManagerConfig, ManagerError};

impl State {
    /// Installs a link that registered: its reader starts now, with the current generation.
    pub(super) fn install(&mut self, registered: Registered) {
        let Registered {
            mut link,
            recv,
            session,
        } = registered;
        link.start_reader(
            recv,
            self.events.clone(),
            self.link_generation,
            self.config.max_frame_bytes,
        );
        self.link = Some(link);
        self.heartbeat = session.heartbeat;
        self.last_heard = Instant::now();
        self.frame_limit = self.config.max_frame_bytes.min(session.max_frame_bytes);
        self.outbox.set_frame_limit(self.frame_limit);
        self.outbox.new_link(session.stores_results);
        self.reporting.on = session.wants_reports;
    }

    /// Registered again after losing the link: the tasks the interchange no longer expects are
    /// dropped; everything else runs on, and the results held meanwhile go out on the new link.
    pub(super) async fn on_reconnected(&mut self, generation: u64, registered: Registered) {
        if generation != self.link_generation || self.link.is_some() {
            return;
        }
        tracing::info!(manager = %self.config.manager_id, "registered again with the interchange");
        self.drop_orphaned(&registered.session.orphaned);
        self.install(registered);
        self.flush().await;
    }

    /// Every task the interchange may still expect from this manager: pending, queued in a
    /// worker's pipe, running, or answered with the result not yet sent.
    pub(super) fn held(&self) -> Vec<TaskId> {
        let mut held: Vec<TaskId> = self.pending.iter().map(|t| t.id).collect();
        for slot in &self.slots {
            if let SlotState::Busy(task) = &slot.state {
                if task.owes_result() {
                    held.push(task.id);
                }
            }
            held.extend(
                slot.queued
                    .iter()
                    .filter(|q| !q.answered)
                    .map(|q| q.spec.id),
            );
        }
        held.extend(self.outbox.ids());
        held
    }

    /// Drops the tasks the interchange no longer expects from this manager: pending ones are
    /// discarded, queued ones marked answered (the worker may still run them; nothing goes
    /// out), running ones stopped without a result, held results discarded.
    pub(super) fn drop_orphaned(&mut self, orphaned: &[TaskId]) {
        if orphaned.is_empty() {
            return;
        }
        let orphaned: HashSet<TaskId> = orphaned.iter().copied().collect();
        let before = self.pending.len();
        self.pending.retain(|t| !orphaned.contains(&t.id));
        let mut dropped = before - self.pending.len();
        let mut stopped = 0;
        for slot in &mut self.slots {
            for queued in slot.queued.iter_mut() {
                if !queued.answered && orphaned.contains(&queued.spec.id) {
                    queued.answered = true;
                    dropped += 1;
                }
            }
            if let SlotState::Busy(task) = &mut slot.state {
                if task.owes_result() && orphaned.contains(&task.id) {
                    task.orphaned = true;
                    stopped += 1;
                    if let Some(process) = &slot.process {
                        super::slot::WorkerPipe::kill(process);
                    }
                }
            }
        }
        self.outbox.retain(|id| !orphaned.contains(&id));
        tracing::info!("dropped {dropped} waiting and stopped {stopped} running task(s) the interchange no longer expects from this manager");
    }

    /// The link is gone: exit, or (with a reconnect timeout) keep running tasks, hold their
    /// results and register again in the background.
    pub(super) fn lose_link(&mut self, why: &str) -> Option<Result<(), ManagerError>> {
        let link = self.link.take()?;
        let timeout = self.config.reconnect_timeout;
        if timeout.is_zero() {
            return Some(Err(ManagerError::InterchangeLost(link.endpoint.clone())));
        }
        tracing::warn!(manager = %self.config.manager_id, "lost the interchange ({why}); reconnecting for up to {} s", seconds_text(timeout));
        self.link_generation += 1;
        // What it holds stays the same until the new link is installed: no task arrives
        // meanwhile, and no result leaves.
        let held = self.held();
        self.reconnecting = Some(tokio::spawn(reconnect(
            self.config.clone(),
            self.instance,
            held,
            self.events.clone(),
            self.link_generation,
        )));
        None
    }

    /// Heartbeats and silence; `Some` ends the manager. Neither counts while reconnecting.
    pub(super) async fn keep_alive(&mut self, now: Instant) -> Option<Result<(), ManagerError>> {
        self.link.as_ref()?;
        if now.duration_since(self.last_heard) > self.heartbeat.threshold {
            let why = format!(
                "silent for over {} s",
                seconds_text(self.heartbeat.threshold)
            );
            return self.lose_link(&why);
        }
        if let Some(report) = self.due_report(now) {
            if let Some(link) = &mut self.link {
                link.send(&report).await;
            }
            self.last_sent = now;
        } else if now.duration_since(self.last_sent) >= self.heartbeat.period {
            if let Some(link) = &mut self.link {
                link.send(&ManagerMessage::Heartbeat).await;
            }
            self.last_sent = now;
        }
        None
    }
}

/// Registers again until it works or the reconnect timeout passes; a refusal ends it at once.
async fn reconnect(
    config: ManagerConfig,
    instance: u64,
    held: Vec<TaskId>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
) {
    let deadline = deadline_after(config.reconnect_timeout);
    let mut attempt = config.clone();
    attempt.connect_timeout = config.connect_timeout.min(Duration::from_secs(5));
    loop {
        match crate::link::connect(&attempt, instance, held.clone()).await {
            Ok(registered) => {
                let _ = events.send(Event::Reconnected {
                    generation,
                    registered,
                });
                return;
            }
            Err(error @ ManagerError::Refused(_)) => {
                let _ = events.send(Event::ReconnectFailed(error));
                return;
            }
            Err(error) if deadline.is_some_and(|d| Instant::now() >= d) => {
                tracing::error!("giving up on the interchange: {error}");
                let _ = events.send(Event::ReconnectFailed(ManagerError::InterchangeLost(
                    config.interchange.clone(),
                )));
                return;
            }
            Err(error) => {
                tracing::debug!("reconnect attempt failed: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
