//! The Prometheus metrics: state kept from the event stream (counters, histograms, the manager
//! and slot table) and rendered in the text exposition format (version 0.0.4). Names follow
//! Prometheus's rules: an `htex_` prefix, base units (seconds, bytes), `_total` counters, ratios
//! 0-1, histograms for latencies, and no label with a value per task.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use htex_protocol::{ManagerReport, SlotDescriptor};

use crate::event::{AttemptOutcome, Ended, Event, Gauges, ManagerKey};

/// Histogram buckets in seconds: a no-op task takes about 100 µs end to end, a model call
/// seconds, a simulation an hour.
const BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last one for +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = BUCKETS.partition_point(|&b| b < seconds);
        self.counts[i] += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// A registered manager, as the metrics see it.
struct ManagerEntry {
    id: String,
    draining: bool,
    slots: Vec<SlotDescriptor>,
    /// The latest report (slot states, GPU samples), if any came.
    report: Option<Box<ManagerReport>>,
}

/// Everything `/metrics` shows.
#[derive(Default)]
pub struct Metrics {
    version: String,
    submitted: u64,
    /// Ended tasks by (outcome, error kind).
    ended: BTreeMap<(&'static str, &'static str), u64>,
    /// Attempts that ended without ending their task, by outcome (lost, returned).
    interrupted: BTreeMap<&'static str, u64>,
    managers_registered: u64,
    managers_lost: u64,
    managers: BTreeMap<ManagerKey, ManagerEntry>,
    slot_events: BTreeMap<&'static str, u64>,
    /// Seconds each slot of a registered manager spent running tasks, by (manager, slot).
    slot_busy: HashMap<(ManagerKey, u32), f64>,
    queue_time: Histogram,
    run_time: Histogram,
    latency: Histogram,
    gauges: Gauges,
    dropped: u64,
}

impl Metrics {
    pub fn new(version: &str) -> Metrics {
        Metrics {
            version: version.to_string(),
            ..Metrics::default()
        }
    }

    /// Events the monitoring queue could not take, so far.
    pub fn set_dropped(&mut self, dropped: u64) {
        self.dropped = dropped;
    }

    pub fn apply(&mut self, events: &[Event]) {
        for event in events {
            self.apply_one(event);
        }
    }

    fn apply_one(&mut self, event: &Event) {
        match event {
            Event::Submitted(_) => self.submitted += 1,
            Event::AttemptEnded { attempt, .. } => {
                *self
                    .interrupted
                    .entry(attempt.outcome.as_str())
                    .or_default() += 1;
            }
            Event::Ended(ended) => self.on_ended(ended),
            Event::ManagerRegistered(m) => {
                self.managers_registered += 1;
                self.managers.insert(
                    m.manager,
                    ManagerEntry {
                        id: m.manager_id.clone(),
                        draining: false,
                        slots: m.slots.clone(),
                        report: None,
                    },
                );
            }
            Event::ManagerDraining { manager, .. } => {
                if let Some(m) = self.managers.get_mut(manager) {
                    m.draining = true;
                }
            }
            Event::ManagerEnded { manager, lost, .. } => {
                // Its series end with it: blocks come and go with new manager ids.
                self.managers.remove(manager);
                self.slot_busy.retain(|(key, _), _| key != manager);
                self.managers_lost += u64::from(*lost);
            }
            Event::ManagerReport { manager, report } => {
                for e in &report.slot_events {
                    *self.slot_events.entry(e.kind.as_str()).or_default() += 1;
                }
                if let Some(m) = self.managers.get_mut(manager) {
                    m.report = Some(report.clone());
                }
            }
            Event::Gauges(g) => self.gauges = g.clone(),
            Event::ClientConnected { .. } | Event::Queued { .. } | Event::Dispatched { .. } => {}
        }
    }

    fn on_ended(&mut self, ended: &Ended) {
        let key = match &ended.error {
            None => ("completed", ""),
            Some((kind, _)) => ("failed", *kind),
        };
        *self.ended.entry(key).or_default() += 1;
        if ended.queue_us > 0 {
            self.queue_time.observe(ended.queue_us as f64 / 1e6);
        }
        let Some(last) = &ended.last else {
            return;
        };
        if last.started_us > 0 {
            let run = last.finished_us.saturating_sub(last.started_us) as f64 / 1e6;
            self.run_time.observe(run);
            if let Some(slot) = last
                .slot
                .filter(|_| self.managers.contains_key(&last.manager))
            {
                *self.slot_busy.entry((last.manager, slot)).or_default() += run;
            }
        }
        if last.outcome == AttemptOutcome::Completed && last.dispatched_us > 0 {
            let total = last.ended_us.saturating_sub(last.dispatched_us);
            self.latency.observe(total as f64 / 1e6);
        }
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "htex_build_info",
            "The htex release serving these metrics.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "htex_build_info{{version=\"{}\"}} 1",
            escape(&self.version)
        );
        self.render_tasks(&mut out);
        self.render_managers(&mut out);
        self.render_slots(&mut out);
        self.render_gpus(&mut out);
        header(
            &mut out,
            "htex_monitoring_events_dropped_total",
            "Events the monitoring consumers could not keep up with, dropped.",
            "counter",
        );
        let _ = writeln!(out, "htex_monitoring_events_dropped_total {}", self.dropped);
        out
    }

    fn render_tasks(&self, out: &mut String) {
        let g = &self.gauges;
        counter(
            out,
            "htex_tasks_submitted_total",
            "Tasks accepted.",
            self.submitted,
        );
        header(
            out,
            "htex_tasks_ended_total",
            "Tasks ended, by outcome and error kind.",
            "counter",
        );
        for outcome in ["completed", "failed"] {
            if !self.ended.keys().any(|(o, _)| *o == outcome) {
                let _ = writeln!(
                    out,
                    "htex_tasks_ended_total{{outcome=\"{outcome}\",error_kind=\"\"}} 0"
                );
            }
        }
        for ((outcome, kind), n) in &self.ended {
            let _ = writeln!(
                out,
                "htex_tasks_ended_total{{outcome=\"{outcome}\",error_kind=\"{kind}\"}} {n}"
            );
        }
        header(
            out,
            "htex_task_attempts_interrupted_total",
            "Attempts that ended without a result: their manager was lost, or gave them back unstarted.",
            "counter",
        );
        for outcome in ["lost", "returned"] {
            let n = self.interrupted.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "htex_task_attempts_interrupted_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        gauge(
            out,
            "htex_tasks_queued",
            "Tasks waiting for a slot.",
            g.queued,
        );
        gauge(
            out,
            "htex_tasks_outstanding",
            "Tasks accepted and not answered yet, queued ones included.",
            g.outstanding,
        );
        gauge(
            out,
            "htex_tasks_dispatched",
            "Tasks on managers, running or prefetched.",
            g.dispatched,
        );
        gauge(
            out,
            "htex_clients",
            "Connected clients.",
            u64::from(g.clients),
        );
        gauge(
            out,
            "htex_task_spec_bytes",
            "Bytes of the encoded specs of outstanding tasks, held by the interchange.",
            g.task_bytes,
        );
        self.queue_time.render(
            out,
            "htex_task_queue_seconds",
            "Time from a task's acceptance to the dispatch of the attempt that ended it.",
        );
        self.run_time.render(
            out,
            "htex_task_run_seconds",
            "Time a task's last attempt ran in its worker.",
        );
        self.latency.render(
            out,
            "htex_task_dispatch_to_result_seconds",
            "Time from a completed task's dispatch to its result at the interchange.",
        );
    }

    fn render_managers(&self, out: &mut String) {
        header(
            out,
            "htex_managers",
            "Registered managers, by state.",
            "gauge",
        );
        let draining = self.managers.values().filter(|m| m.draining).count();
        let active = self.managers.len() - draining;
        let _ = writeln!(out, "htex_managers{{state=\"active\"}} {active}");
        let _ = writeln!(out, "htex_managers{{state=\"draining\"}} {draining}");
        counter(
            out,
            "htex_managers_registered_total",
            "Manager registrations.",
            self.managers_registered,
        );
        counter(
            out,
            "htex_managers_lost_total",
            "Managers lost (silent, disconnected or refused), not counting those that left.",
            self.managers_lost,
        );
    }

    fn render_slots(&self, out: &mut String) {
        let mut by_kind: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for kind in ["cpu", "gpu", "mps", "mig"] {
            for state in ["busy", "idle"] {
                by_kind.insert((kind, state), 0);
            }
        }
        for m in self.managers.values() {
            for s in &m.slots {
                let busy = m
                    .report
                    .as_ref()
                    .and_then(|r| r.slots.iter().find(|x| x.slot == s.index))
                    .is_some_and(|x| x.busy);
                let state = if busy { "busy" } else { "idle" };
                *by_kind.entry((s.kind.as_str(), state)).or_default() += 1;
            }
        }
        header(
            out,
            "htex_slots",
            "Worker slots of registered managers, by kind and state (from the managers' last reports).",
            "gauge",
        );
        for ((kind, state), n) in &by_kind {
            let _ = writeln!(out, "htex_slots{{kind=\"{kind}\",state=\"{state}\"}} {n}");
        }
        header(
            out,
            "htex_slot_busy_seconds_total",
            "Seconds each slot spent running tasks.",
            "counter",
        );
        let mut busy: Vec<_> = self
            .slot_busy
            .iter()
            .filter_map(|((key, slot), seconds)| {
                Some((&self.managers.get(key)?.id, *slot, *seconds))
            })
            .collect();
        busy.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (manager, slot, seconds) in busy {
            let _ = writeln!(
                out,
                "htex_slot_busy_seconds_total{{manager=\"{}\",slot=\"{slot}\"}} {seconds}",
                escape(manager)
            );
        }
        header(
            out,
            "htex_slot_worker_events_total",
            "What happened to slot workers: worker_started, worker_died, gpu_fault.",
            "counter",
        );
        for kind in ["worker_started", "worker_died", "gpu_fault"] {
            let n = self.slot_events.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "htex_slot_worker_events_total{{event=\"{kind}\"}} {n}");
        }
    }

    fn render_gpus(&self, out: &mut String) {
        let mut share = String::new();
        let mut slot_memory = String::new();
        let mut util = String::new();
        let mut sm = String::new();
        let mut used = String::new();
        let mut total = String::new();
        for m in self.managers.values() {
            let manager = escape(&m.id);
            for s in m.slots.iter().filter(|s| s.gpu_uuid.is_some()) {
                let labels = format!(
                    "manager=\"{manager}\",slot=\"{}\",kind=\"{}\"",
                    s.index,
                    s.kind.as_str()
                );
                let ratio = s.mps_percentage.map_or(1.0, |p| f64::from(p) / 100.0);
                let _ = writeln!(share, "htex_slot_gpu_share_ratio{{{labels}}} {ratio}");
                if let Some(bytes) = m.report.as_ref().and_then(|r| {
                    r.slot_gpu_memory
                        .iter()
                        .find(|x| x.slot == s.index)
                        .map(|x| x.bytes)
                }) {
                    let _ = writeln!(
                        slot_memory,
                        "htex_slot_gpu_memory_used_bytes{{{labels}}} {bytes}"
                    );
                }
            }
            for g in m.report.iter().flat_map(|r| &r.gpus) {
                let labels = format!("manager=\"{manager}\",gpu_uuid=\"{}\"", escape(&g.gpu_uuid));
                if let Some(v) = g.utilization_ratio {
                    let _ = writeln!(util, "htex_gpu_utilization_ratio{{{labels}}} {v}");
                }
                if let Some(v) = g.sm_activity_ratio {
                    let _ = writeln!(sm, "htex_gpu_sm_activity_ratio{{{labels}}} {v}");
                }
                if let Some(v) = g.memory_used_bytes {
                    let _ = writeln!(used, "htex_gpu_memory_used_bytes{{{labels}}} {v}");
                }
                if let Some(v) = g.memory_total_bytes {
                    let _ = writeln!(total, "htex_gpu_memory_total_bytes{{{labels}}} {v}");
                }
            }
        }
        let families = [
            (
                "htex_slot_gpu_share_ratio",
                "The share of its GPU a slot may use (MPS percentage, or 1).",
                share,
            ),
            (
                "htex_slot_gpu_memory_used_bytes",
                "GPU memory used by a slot's worker processes.",
                slot_memory,
            ),
            (
                "htex_gpu_utilization_ratio",
                "Fraction of time a kernel ran on the GPU (NVML).",
                util,
            ),
            (
                "htex_gpu_sm_activity_ratio",
                "SM activity of the GPU (NVML GPM), where the GPU has GPM.",
                sm,
            ),
            ("htex_gpu_memory_used_bytes", "GPU memory in use.", used),
            ("htex_gpu_memory_total_bytes", "GPU memory in all.", total),
        ];
        for (name, help, samples) in families {
            header(out, name, help, "gauge");
            out.push_str(&samples);
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let mut h = Histogram::default();
        for s in [0.00005, 0.0001, 0.002, 7200.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.0025\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"3600\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
