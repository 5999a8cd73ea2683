//! The interchange's I/O shell: reader tasks decode frames from the two ROUTER sockets into
//! inputs, and one loop applies them to the core in bursts, then applies the core's effects.
//! Nothing here waits on one peer: frames are queued to each peer without waiting, a peer whose
//! queue stays over its budget is reported to the core as stalled (and dropped), and the loop
//! runs the core's tick on time however busy the sockets are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use htex_protocol::{
    decode, peek_batch_ids, peek_protocol_version, ClientRequest, CodecError, ManagerMessage,
};
use htex_transport::{RouterRecvHalf, RouterSendHalf, SocketRecv, TrySendError, ZmqMessage};
use tokio::sync::mpsc;

use crate::core::{
    BadFrame, Core, Effect, Effects, Incoming, Input, Now, ProviderAction, ProviderEvent, Side,
};

/// Most inputs applied between two flushes.
const EVENT_BURST: usize = 4096;

/// Decoded frames that may wait for the loop; beyond this the readers stop reading and TCP
/// pushes back on the senders, instead of decoded batches piling up in memory.
pub(crate) const INCOMING_QUEUE: usize = 64;

/// An input and the bytes of the frame it came in.
pub(crate) type Inbound = (Input, usize);

/// The send halves of both sockets.
pub(crate) struct Routers {
    pub clients: RouterSendHalf,
    pub managers: RouterSendHalf,
}

impl Routers {
    fn side(&self, side: Side) -> &RouterSendHalf {
        match side {
            Side::Client => &self.clients,
            Side::Manager => &self.managers,
        }
    }
}

/// What the loop needs besides the core.
pub(crate) struct ShellConfig {
    /// Where the provider thread takes the core's provider actions, when there is one.
    pub provider: Option<ProviderThread>,
    /// The journal's writer, with `--journal`.
    pub journal: Option<crate::journal::Writer>,
    /// The event stream's consumers, with `--monitoring` or `--metrics-address`.
    pub monitor: Option<htex_monitoring::Monitor>,
    pub tick: Duration,
    pub max_frame_bytes: usize,
    /// Bytes queued for one peer past which it counts as not reading.
    pub backlog_budget: usize,
    /// How long a peer may stay over its budget before it is dropped (twice the budget
    /// drops it at once).
    pub backlog_grace: Duration,
}

/// Reads one ROUTER and feeds its frames, decoded, to the loop.
pub(crate) fn spawn_reader(
    side: Side,
    mut recv: RouterRecvHalf,
    limit: usize,
    inputs: mpsc::Sender<Inbound>,
) {
    tokio::spawn(async move {
        loop {
            let message = match recv.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!("{side:?} socket receive ended: {e}");
                    break;
                }
            };
            let mut frames = message.into_vec();
            let peer = frames.remove(0);
            let bytes = frames.iter().map(Bytes::len).sum();
            let frame = if frames.len() == 1 {
                Ok(frames.pop().unwrap_or_default())
            } else {
                Err(BadFrame {
                    reason: format!("expected one frame per message, got {}", frames.len()),
                    claimed_version: None,
                    oversize: None,
                })
            };
            let input = match side {
                Side::Client => Input::Client {
                    peer,
                    message: decode_frame::<ClientRequest>(frame, limit),
                },
                Side::Manager => Input::Manager {
                    peer,
                    message: decode_frame::<ManagerMessage>(frame, limit),
                },
            };
            if inputs.send((input, bytes)).await.is_err() {
                break;
            }
        }
    });
}

fn decode_frame<T: serde::de::DeserializeOwned>(
    frame: Result<Bytes, BadFrame>,
    limit: usize,
) -> Incoming<T> {
    let frame = frame?;
    decode::<T>(&frame, limit).map_err(|e| BadFrame {
        oversize: match e {
            CodecError::TooLarge { size, .. } => {
                Some((size, peek_batch_ids(&frame).unwrap_or_default()))
            }
            _ => None,
        },
        reason: e.to_string(),
        claimed_version: peek_protocol_version(&frame),
    })
}

/// The thread that runs the provider's commands (each may take seconds: `sbatch`, `squeue`),
/// one at a time, and feeds the answers back to the loop as inputs.
pub(crate) struct ProviderThread {
    actions: std::sync::mpsc::Sender<ProviderAction>,
    thread: std::thread::JoinHandle<()>,
}

impl ProviderThread {
    pub fn spawn(
        mut provider: Box<dyn htex_provider::Provider>,
        run_dir: std::path::PathBuf,
        manager: Vec<String>,
        inputs: mpsc::Sender<Inbound>,
    ) -> ProviderThread {
        let (actions, queue) = std::sync::mpsc::channel::<ProviderAction>();
        let thread = std::thread::Builder::new()
            .name("htex-provider".into())
            .spawn(move || {
                while let Ok(action) = queue.recv() {
                    let event = match action {
                        ProviderAction::Submit { block } => {
                            let request = htex_provider::BlockRequest {
                                block,
                                dir: run_dir.join(format!("b{block}")),
                                manager: manager.clone(),
                            };
                            let result = provider.submit(&request).map_err(|e| e.to_string());
                            ProviderEvent::Submitted { block, result }
                        }
                        ProviderAction::Poll { jobs } => {
                            ProviderEvent::Polled(provider.status(&jobs).map_err(|e| e.to_string()))
                        }
                        ProviderAction::Cancel { block, job } => {
                            tracing::info!(block = %format!("b{block}"), job = %job, "cancelling block");
                            let result = provider.cancel(&[job]).map_err(|e| e.to_string());
                            ProviderEvent::Cancelled { block, result }
                        }
                    };
                    // After shutdown nobody reads: the remaining actions (cancels) still run.
                    let _ = inputs.blocking_send((Input::Provider(event), 0));
                }
            })
            .expect("a thread for the provider");
        ProviderThread { actions, thread }
    }

    /// Runs what is queued (cancels at shutdown), within `timeout`.
    async fn finish(self, timeout: Duration) {
        drop(self.actions);
        let joined = tokio::task::spawn_blocking(move || self.thread.join());
        if tokio::time::timeout(timeout, joined).await.is_err() {
            tracing::warn!(
                "the provider's last commands did not finish within {:.0} s",
                timeout.as_secs_f64()
            );
        }
    }
}

pub(crate) async fn run(
    mut core: Core,
    routers: Routers,
    mut config: ShellConfig,
    mut inputs: mpsc::Receiver<Inbound>,
    mut stop: mpsc::UnboundedReceiver<()>,
) {
    let provider = config.provider.take();
    let actions = provider.as_ref().map(|p| p.actions.clone());
    let journal = config.journal.take();
    let monitor = config.monitor.take();
    let mut out = Effects::default();
    let mut backlog = Backlog::default();
    let mut next_tick = tokio::time::Instant::now() + config.tick;
    let (mut inputs_open, mut stop_open) = (true, true);
    while !core.stopped() {
        let first = tokio::select! {
            input = inputs.recv(), if inputs_open => match input {
                Some(input) => Some(input),
                None => { inputs_open = false; None }
            },
            stopped = stop.recv(), if stop_open => match stopped {
                Some(()) => Some((Input::Stop, 0)),
                None => { stop_open = false; None }
            },
            _ = tokio::time::sleep_until(next_tick) => None,
        };
        if let Some(first) = first {
            burst(&mut core, first, &mut inputs, &mut stop, &config, &mut out);
        }
        if tokio::time::Instant::now() >= next_tick {
            // On time however busy the sockets are: a burst ends after EVENT_BURST inputs.
            core.apply(Now::read(), Input::Tick, &mut out);
            next_tick = tokio::time::Instant::now() + config.tick;
            backlog.check(&routers, &config, &mut core, &mut out);
        }
        let sinks = Sinks {
            provider: actions.as_ref(),
            journal: journal.as_ref(),
            monitor: monitor.as_ref(),
        };
        let queued = apply_effects(&routers, &mut core, &mut out, &mut backlog, &config, sinks);
        if queued >= config.max_frame_bytes.min(1 << 20) {
            // Let the connections' writers put big frames on the wire before more pile up.
            tokio::task::yield_now().await;
        }
        if !inputs_open && !stop_open {
            break;
        }
    }
    // zmq.rs gives no way to wait for queued frames to reach the wire: give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The provider's answers are not read any more: it must never wait on a full queue.
    drop(inputs);
    drop(actions);
    if let Some(provider) = provider {
        provider.finish(Duration::from_secs(60)).await;
    }
    if let Some(journal) = journal {
        // What the last inputs recorded is written before the interchange says it stopped.
        let _ = tokio::task::spawn_blocking(move || journal.finish()).await;
    }
    if let Some(monitor) = monitor {
        monitor.finish().await;
    }
    tracing::info!("interchange stopped");
}

/// Applies `first` and whatever else already waits (up to a burst, or a frame limit's worth of
/// bytes), then flushes: under load one flush serves many inputs, and a lone input is served
/// at once.
fn burst(
    core: &mut Core,
    first: Inbound,
    inputs: &mut mpsc::Receiver<Inbound>,
    stop: &mut mpsc::UnboundedReceiver<()>,
    config: &ShellConfig,
    out: &mut Effects,
) {
    let (mut input, mut bytes) = first;
    let mut handled = 0;
    loop {
        core.apply(Now::read(), input, out);
        handled += 1;
        if core.stopped() || handled >= EVENT_BURST || bytes >= config.max_frame_bytes {
            break;
        }
        let next = match stop.try_recv() {
            Ok(()) => Ok((Input::Stop, 0)),
            Err(_) => inputs.try_recv(),
        };
        match next {
            Ok((next, size)) => {
                input = next;
                bytes += size;
            }
            Err(_) => break,
        }
    }
    core.apply(Now::read(), Input::Flush, out);
}

/// Where the effects that are not frames go.
#[derive(Clone, Copy)]
struct Sinks<'a> {
    provider: Option<&'a std::sync::mpsc::Sender<ProviderAction>>,
    journal: Option<&'a crate::journal::Writer>,
    monitor: Option<&'a htex_monitoring::Monitor>,
}

/// Queues every frame the core sent, without waiting; returns the bytes queued. A peer over
/// twice its budget is stalled at once, one over its budget is watched.
fn apply_effects(
    routers: &Routers,
    core: &mut Core,
    out: &mut Effects,
    backlog: &mut Backlog,
    config: &ShellConfig,
    sinks: Sinks<'_>,
) -> usize {
    let mut queued_total = 0;
    // Stalling a peer makes effects of its own (a drop, cancels): applied in the next pass.
    while !out.0.is_empty() {
        let mut stalled: Vec<(Side, Bytes, usize)> = Vec::new();
        // Frames to managers go first: they start work, while the clients' frames (Accepted,
        // results) can wait the few microseconds a write takes. Each side keeps its order.
        let (managers, clients): (Vec<Effect>, Vec<Effect>) =
            std::mem::take(&mut out.0).into_iter().partition(|e| {
                matches!(
                    e,
                    Effect::Send {
                        side: Side::Manager,
                        ..
                    } | Effect::Disconnect {
                        side: Side::Manager,
                        ..
                    }
                )
            });
        for effect in managers.into_iter().chain(clients) {
            match effect {
                Effect::Send { side, peer, frame } => {
                    queued_total += frame.len();
                    let message = ZmqMessage::from(frame);
                    match routers.side(side).try_send_to(&peer, message) {
                        Ok(queued) if queued > config.backlog_budget.saturating_mul(2) => {
                            stalled.push((side, peer, queued))
                        }
                        Ok(queued) if queued > config.backlog_budget => backlog.watch(side, peer),
                        Ok(_) => {}
                        Err(TrySendError::Full) => stalled.push((side, peer, usize::MAX)),
                        Err(TrySendError::UnknownPeer) => {
                            tracing::debug!("a {side:?} peer left before its frame went out")
                        }
                    }
                }
                Effect::Disconnect { side, peer } => {
                    backlog.forget(side, &peer);
                    routers.side(side).disconnect(&peer);
                }
                Effect::Provider(action) => match sinks.provider {
                    Some(p) => {
                        let _ = p.send(action);
                    }
                    None => tracing::error!("a provider action with no provider: {action:?}"),
                },
                Effect::Journal(batch) => match sinks.journal {
                    Some(writer) => {
                        if !writer.send(batch) {
                            tracing::error!("the journal's writer stopped");
                        }
                    }
                    None => tracing::error!("a journal record with no journal"),
                },
                Effect::Events(events) => {
                    if let Some(monitor) = sinks.monitor {
                        monitor.send(events);
                    }
                }
                Effect::Stopped => {}
            }
        }
        for (side, peer, _) in &stalled {
            backlog.forget(*side, peer);
        }
        report_stalled(core, stalled, out);
    }
    queued_total
}

/// Tells the core about peers that stopped reading, each once.
fn report_stalled(core: &mut Core, stalled: Vec<(Side, Bytes, usize)>, out: &mut Effects) {
    let mut seen = std::collections::HashSet::new();
    for (side, peer, queued_bytes) in stalled {
        if seen.insert((side, peer.clone())) {
            let input = Input::Stalled {
                side,
                peer,
                queued_bytes,
            };
            core.apply(Now::read(), input, out);
        }
    }
}

/// Peers whose queue went over the budget, and since when.
#[derive(Default)]
struct Backlog {
    over: HashMap<(Side, Bytes), Instant>,
}

impl Backlog {
    fn watch(&mut self, side: Side, peer: Bytes) {
        self.over.entry((side, peer)).or_insert_with(Instant::now);
    }

    fn forget(&mut self, side: Side, peer: &Bytes) {
        self.over.remove(&(side, peer.clone()));
    }

    /// Peers back under the budget are forgotten; those over it for the grace are stalled.
    fn check(
        &mut self,
        routers: &Routers,
        config: &ShellConfig,
        core: &mut Core,
        out: &mut Effects,
    ) {
        let now = Instant::now();
        let mut stalled = Vec::new();
        self.over.retain(
            |(side, peer), since| match routers.side(*side).queued_bytes(peer) {
                Some(queued) if queued > config.backlog_budget => {
                    if now.duration_since(*since) >= config.backlog_grace {
                        stalled.push((*side, peer.clone(), queued));
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            },
        );
        report_stalled(core, stalled, out);
    }
}
