//! `htex status --watch` (and `htex top`): the interchange's status redrawn in place every
//! interval: queue, rates since the last frame, managers, and every slot busy or idle with its
//! GPU share, its worker's GPU memory and its GPU's utilization (from the managers' reports).

use std::fmt::Write;
use std::time::{Duration, Instant};

use htex_client::Client;
use htex_protocol::{ManagerStatus, StatusReport};

/// Clears the terminal and puts the cursor at its top left.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Redraws the status every `every` until Ctrl-C or until the interchange goes away.
pub async fn watch(client: &Client, every: Duration) -> anyhow::Result<()> {
    let mut previous: Option<(StatusReport, Instant)> = None;
    loop {
        let report = client.status().await?;
        let now = Instant::now();
        let frame = render(&report, previous.as_ref().map(|(r, at)| (r, now - *at)));
        print!("{CLEAR}{frame}");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        previous = Some((report, now));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One frame; `previous` (a report and how long ago it was) gives the rates.
pub fn render(report: &StatusReport, previous: Option<(&StatusReport, Duration)>) -> String {
    let mut out = String::new();
    let rate = |now: u64, before: fn(&StatusReport) -> u64| match previous {
        Some((p, ago)) if !ago.is_zero() => {
            format!(
                "{:.0}/s",
                now.saturating_sub(before(p)) as f64 / ago.as_secs_f64()
            )
        }
        _ => "-".into(),
    };
    let _ = writeln!(
        out,
        "{}  up {:.0} s  {} client(s)  links {}",
        report.interchange,
        report.uptime_ms as f64 / 1000.0,
        report.clients,
        if report.security.is_empty() {
            "?"
        } else {
            &report.security
        }
    );
    let running: u32 = report.managers.iter().map(busy_slots).sum();
    let slots: usize = report.managers.iter().map(|m| m.slots.len()).sum();
    let _ = writeln!(
        out,
        "tasks: {} queued, {} outstanding, {running}/{slots} slots busy | submitted {} ({}), \
         completed {} ({}), failed {} ({})",
        report.queued,
        report.outstanding,
        report.submitted_total,
        rate(report.submitted_total, |r| r.submitted_total),
        report.completed_total,
        rate(report.completed_total, |r| r.completed_total),
        report.failed_total,
        rate(report.failed_total, |r| r.failed_total),
    );
    if let Some(scaling) = &report.scaling {
        let live = scaling.blocks.iter().filter(|b| b.state != "ended").count();
        let _ = writeln!(
            out,
            "blocks ({}): {live} live; {}",
            scaling.provider, scaling.decision
        );
    }
    for m in &report.managers {
        render_manager(&mut out, m);
    }
    if report.managers.is_empty() {
        let _ = writeln!(out, "no managers");
    }
    let _ = writeln!(out, "(Ctrl-C to quit)");
    out
}

fn busy_slots(m: &ManagerStatus) -> u32 {
    m.report
        .as_ref()
        .map_or(0, |r| r.slots.iter().filter(|s| s.busy).count() as u32)
}

fn render_manager(out: &mut String, m: &ManagerStatus) {
    let _ = writeln!(
        out,
        "\nmanager {} on {} ({}): {}/{} tasks, heard from {} ms ago",
        m.id, m.hostname, m.state, m.tasks, m.capacity, m.last_heartbeat_ms_ago
    );
    let report = m.report.as_deref();
    for slot in &m.slots {
        let state = report.and_then(|r| r.slots.iter().find(|s| s.slot == slot.index));
        let busy = match state {
            Some(s) if s.busy => "busy",
            Some(_) => "idle",
            None => "?   ",
        };
        let mut line = format!("  [{busy}] slot {slot}");
        let share = slot.mps_percentage.map(|p| format!("{p}% of"));
        if let Some(uuid) = &slot.gpu_uuid {
            let gpu = report.and_then(|r| r.gpus.iter().find(|g| &g.gpu_uuid == uuid));
            if let Some(share) = share {
                let _ = write!(line, " | {share} its GPU");
            }
            if let Some(util) = gpu.and_then(|g| g.utilization_ratio) {
                let _ = write!(line, " | GPU util {:.0}%", util * 100.0);
            }
            if let Some(sm) = gpu.and_then(|g| g.sm_activity_ratio) {
                let _ = write!(line, " SM {:.0}%", sm * 100.0);
            }
            let memory = report
                .and_then(|r| r.slot_gpu_memory.iter().find(|s| s.slot == slot.index))
                .map(|s| s.bytes);
            if let Some(bytes) = memory {
                let _ = write!(
                    line,
                    " | slot mem {:.2} GiB",
                    bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use htex_protocol::{
        GpuSample, ManagerReport, ManagerState, SlotDescriptor, SlotGpuMemory, SlotKind, SlotState,
    };

    fn report(completed: u64) -> StatusReport {
        let mut gpu = SlotDescriptor::cpu(1);
        gpu.kind = SlotKind::Mps;
        gpu.gpu_uuid = Some("GPU-1".into());
        gpu.mps_percentage = Some(25);
        StatusReport {
            interchange: "htex test".into(),
            protocol_version: 5,
            uptime_ms: 3000,
            clients: 1,
            queued: 4,
            outstanding: 6,
            managers: vec![ManagerStatus {
                id: "m".into(),
                hostname: "node".into(),
                block_id: None,
                version: "test".into(),
                state: ManagerState::Active,
                slots: vec![SlotDescriptor::cpu(0), gpu],
                tasks: 2,
                capacity: 2,
                last_heartbeat_ms_ago: 10,
                report: Some(Box::new(ManagerReport {
                    at_us: 1,
                    slots: vec![
                        SlotState {
                            slot: 0,
                            busy: false,
                            pid: Some(9),
                        },
                        SlotState {
                            slot: 1,
                            busy: true,
                            pid: Some(10),
                        },
                    ],
                    slot_events: vec![],
                    gpus: vec![GpuSample {
                        gpu_uuid: "GPU-1".into(),
                        at_us: 1,
                        utilization_ratio: Some(0.5),
                        sm_activity_ratio: Some(0.25),
                        memory_used_bytes: Some(1 << 30),
                        memory_total_bytes: Some(4 << 30),
                    }],
                    slot_gpu_memory: vec![SlotGpuMemory {
                        slot: 1,
                        bytes: 1 << 29,
                    }],
                })),
            }],
            task_bytes: 0,
            max_task_bytes: 1,
            security: "curve".into(),
            scaling: None,
            submitted_total: 10,
            completed_total: completed,
            failed_total: 0,
        }
    }

    #[test]
    fn a_frame_shows_rates_and_every_slot_with_its_gpu() {
        let before = report(0);
        let frame = render(&report(100), Some((&before, Duration::from_secs(2))));
        assert!(frame.contains("completed 100 (50/s)"), "{frame}");
        assert!(frame.contains("1/2 slots busy"), "{frame}");
        assert!(frame.contains("[idle] slot 0 cpu"), "{frame}");
        assert!(
            frame.contains("[busy] slot 1 mps GPU-1 25% | 25% of its GPU | GPU util 50% SM 25% | slot mem 0.50 GiB"),
            "{frame}"
        );
    }
}
