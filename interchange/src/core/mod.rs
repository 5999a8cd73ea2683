//! The interchange's synchronous core: the task table, the resource classes and their queues,
//! the manager table and the client table, and every rule that moves a task between them. It
//! turns each [`Input`] (a decoded frame, a tick, the end of a burst) into [`Effect`]s (frames to
//! send, peers to drop) and has no sockets, no timers of its own and no `.await`: the I/O shell
//! (`shell.rs`) reads the sockets, applies the effects, and never waits on one peer. The core is
//! tested on its own, with no ports and no processes (`tests.rs`).

mod blocks;
mod clients;
mod dispatch;
mod events;
mod journaled;
mod managers;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use htex_monitoring::Event;
use htex_protocol::{encode, ClientRequest, ManagerMessage, PROTOCOL_VERSION};
use serde::Serialize;

use crate::records::{GlobalId, ManagerKey};
use crate::task_table::TaskTable;
use crate::InterchangeConfig;
use clients::Clients;
use dispatch::Classes;
use managers::Managers;

pub(crate) use blocks::{BlockShape, ProviderAction, ProviderEvent, Scaling};
pub(crate) use journaled::JournalState;

/// Which of the two ports a peer is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Client,
    Manager,
}

/// A frame that could not be decoded.
#[derive(Debug)]
pub(crate) struct BadFrame {
    pub reason: String,
    /// The protocol version the frame claimed, when it is a hello or registration of any shape.
    pub claimed_version: Option<u32>,
    /// When the frame was refused for its size: its length, and the ids of the tasks or results
    /// it carried (a batch's ids can be read without decoding it), so each can be answered.
    pub oversize: Option<(usize, Vec<u64>)>,
}

pub(crate) type Incoming<T> = Result<T, BadFrame>;

pub(crate) enum Input {
    Client {
        peer: Bytes,
        message: Incoming<ClientRequest>,
    },
    Manager {
        peer: Bytes,
        message: Incoming<ManagerMessage>,
    },
    /// Frames for a peer piled up past the send budget: it stopped reading.
    Stalled {
        side: Side,
        peer: Bytes,
        queued_bytes: usize,
    },
    /// The end of a burst of inputs: dispatch queued tasks and send the results that wait.
    Flush,
    /// The heartbeat period passed: heartbeats out, silent managers lost, parked tasks expired.
    Tick,
    /// Shut down: managers are told to stop and every outstanding task ends `Cancelled`.
    Stop,
    /// The provider answered (a block submitted, the blocks' states, a cancel).
    Provider(ProviderEvent),
    /// The journal's writer answered (batches durable, or a write failed).
    Journal(crate::journal::JournalEvent),
}

pub(crate) enum Effect {
    Send {
        side: Side,
        peer: Bytes,
        frame: Vec<u8>,
    },
    /// Close the peer's connection (and drop what is queued for it).
    Disconnect { side: Side, peer: Bytes },
    /// Ask the provider (submit, poll or cancel a block).
    Provider(ProviderAction),
    /// Append to the journal (or replace it with a snapshot).
    Journal(crate::journal::Batch),
    /// Hand these events to the monitor.
    Events(Vec<htex_monitoring::Event>),
    /// The core shut down; nothing more comes.
    Stopped,
}

/// The time of an input: monotonic for deadlines, wall-clock (µs since the epoch) for timings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub at: Instant,
    pub epoch_us: u64,
}

impl Now {
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            epoch_us: htex_protocol::now_us(),
        }
    }
}

/// Counts of tasks since the interchange started.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TaskTotals {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
}

/// The effects of the inputs applied so far, with the helpers that make them.
#[derive(Default)]
pub(crate) struct Effects(pub Vec<Effect>);

impl Effects {
    fn send<T: Serialize>(&mut self, side: Side, peer: &Bytes, message: &T) {
        match encode(message) {
            Ok(frame) => self.frame(side, peer, frame),
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    fn frame(&mut self, side: Side, peer: &Bytes, frame: Vec<u8>) {
        self.0.push(Effect::Send {
            side,
            peer: peer.clone(),
            frame,
        });
    }
}

pub(crate) struct Core {
    /// How the ports are secured ("curve", "plaintext (loopback)", "plaintext (--insecure)").
    security: &'static str,
    config: InterchangeConfig,
    started: Instant,
    tasks: TaskTable,
    classes: Classes,
    clients: Clients,
    managers: Managers,
    /// Bytes of the encoded specs of every task in the table.
    task_bytes: usize,
    /// Tasks in the `Queued` state.
    queued: usize,
    /// Cancels to send with the next flush, per manager.
    cancels: HashMap<ManagerKey, Vec<GlobalId>>,
    /// Blocks of managers from a provider, when the interchange has one.
    scaling: Option<Scaling>,
    /// The journal's state, when the interchange keeps one (`--journal`).
    journal: Option<Box<JournalState>>,
    /// Tasks accepted and ended since the start, for `htex status`.
    totals: TaskTotals,
    /// The event stream, when monitoring is on.
    events: Option<Box<events::EventLog>>,
    /// The wall-clock time of the input being applied, for events.
    event_us: u64,
    stopped: bool,
}

impl Core {
    /// `security` says how the ports are secured, for `htex status`.
    pub fn new(
        config: InterchangeConfig,
        security: &'static str,
        scaling: Option<Scaling>,
        journal: Option<JournalState>,
        monitored: bool,
        now: Now,
    ) -> Core {
        Core {
            config,
            security,
            started: now.at,
            tasks: TaskTable::new(1),
            classes: Classes::default(),
            clients: Clients::default(),
            managers: Managers::default(),
            task_bytes: 0,
            queued: 0,
            cancels: HashMap::new(),
            scaling,
            journal: journal.map(Box::new),
            totals: TaskTotals::default(),
            events: monitored.then(Box::default),
            event_us: now.epoch_us,
            stopped: false,
        }
    }

    /// Applies one input; what it makes happen goes into `out`.
    pub fn apply(&mut self, now: Now, input: Input, out: &mut Effects) {
        if self.stopped {
            return;
        }
        self.event_us = now.epoch_us;
        match input {
            Input::Client { peer, message } => self.on_client(now, peer, message, out),
            Input::Manager { peer, message } => self.on_manager(now, peer, message, out),
            Input::Stalled {
                side,
                peer,
                queued_bytes,
            } => self.on_stalled(side, peer, queued_bytes, out),
            Input::Flush => {
                self.dispatch(now, out);
                self.flush(out);
            }
            Input::Tick => {
                self.acknowledge_clients(out);
                self.on_tick(now, out);
                self.release_restored(now);
                self.scale(now, out);
                self.dispatch(now, out);
                self.flush(out);
            }
            Input::Stop => self.shut_down(now, out),
            Input::Provider(event) => {
                self.on_provider(now, event, out);
                self.dispatch(now, out);
                self.flush(out);
            }
            Input::Journal(event) => {
                self.on_journal(event, out);
                self.dispatch(now, out);
                self.flush(out);
            }
        }
    }

    /// Whether `Stop` was applied.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Cancels and results that wait go out, and the burst's journal records to the writer.
    fn flush(&mut self, out: &mut Effects) {
        self.flush_cancels(out);
        self.flush_results(out);
        self.resume_clients(out);
        self.flush_journal(out);
        self.flush_events(out);
    }

    fn on_stalled(&mut self, side: Side, peer: Bytes, queued_bytes: usize, out: &mut Effects) {
        let why = format!(
            "it stopped reading: {queued_bytes} bytes waited for it, over the budget of {} bytes",
            self.config.max_peer_backlog_bytes
        );
        match side {
            Side::Client => self.drop_client(&peer, &why),
            Side::Manager => {
                if let Some(key) = self.managers.key_of(&peer) {
                    self.lose_manager(key, &why);
                }
            }
        }
        out.0.push(Effect::Disconnect { side, peer });
    }

    fn on_tick(&mut self, now: Now, out: &mut Effects) {
        let threshold = self.config.heartbeat_threshold;
        for key in self.managers.silent(now.at, threshold) {
            let why = format!("no message for over {:.1} s", threshold.as_secs_f64());
            self.lose_manager(key, &why);
        }
        self.expire_parked(now);
        for peer in self.managers.peers() {
            out.send(
                Side::Manager,
                &peer,
                &htex_protocol::InterchangeMessage::Heartbeat,
            );
        }
        for peer in self.clients.connected_peers() {
            out.send(Side::Client, &peer, &htex_protocol::ClientReply::Heartbeat);
        }
        if self.events.is_some() {
            let gauges = self.gauges(now);
            self.event(|| Event::Gauges(gauges));
        }
    }

    /// The counters gauges show, for the event stream.
    fn gauges(&self, now: Now) -> htex_monitoring::event::Gauges {
        htex_monitoring::event::Gauges {
            at_us: now.epoch_us,
            queued: self.queued as u64,
            outstanding: self.tasks.len() as u64,
            dispatched: self
                .managers
                .iter()
                .map(|(_, m)| m.tasks.len() as u64)
                .sum(),
            clients: self.clients.connected_peers().len() as u32,
            task_bytes: self.task_bytes as u64,
        }
    }

    /// Tells managers to stop and ends every outstanding task with `Cancelled`.
    fn shut_down(&mut self, now: Now, out: &mut Effects) {
        tracing::info!(outstanding = self.tasks.len(), "interchange shutting down");
        self.cancel_pending_blocks(now, out);
        for peer in self.managers.peers() {
            out.send(
                Side::Manager,
                &peer,
                &htex_protocol::InterchangeMessage::Shutdown,
            );
        }
        let gids: Vec<GlobalId> = self.tasks.iter().map(|(gid, _)| gid).collect();
        for gid in gids {
            self.finish(
                gid,
                htex_protocol::TaskError::Cancelled {
                    reason: "the interchange shut down".into(),
                },
            );
        }
        self.flush_results(out);
        self.flush_journal(out);
        self.flush_events(out);
        self.stopped = true;
        out.0.push(Effect::Stopped);
    }
}

fn version_mismatch(peer: &str, theirs: u32) -> String {
    format!(
        "{peer} speaks htex protocol version {theirs}, this interchange speaks version \
         {PROTOCOL_VERSION}; run the same htex release on both"
    )
}

/// The frame limit of a link: the smaller of both ends' (a peer that names none gets ours).
fn link_limit(ours: usize, theirs: u64) -> usize {
    match usize::try_from(theirs) {
        Ok(0) | Err(_) => ours,
        Ok(theirs) => ours.min(theirs.max(htex_protocol::MIN_MAX_FRAME_BYTES)),
    }
}
