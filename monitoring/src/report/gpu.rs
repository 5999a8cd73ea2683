//! The GPU figures: each GPU's utilization, SM activity and memory over time (`gpu_samples`),
//! and the GPU memory of each slot's workers (`slot_samples`).

use std::collections::BTreeMap;
use std::fmt;

use super::labels::{Names, GIB};
use super::query::{GpuSample, RunData};
use super::svg::{self, LineChart, Series, PALETTE};

/// Utilization and SM activity (0-100 %) of every GPU, then its memory in GiB; the run has
/// GPU samples.
pub(super) fn gpus(out: &mut String, data: &RunData, names: &Names<'_>) -> fmt::Result {
    let mut by_gpu: BTreeMap<&str, Vec<&GpuSample>> = BTreeMap::new();
    for s in &data.gpu_samples {
        by_gpu.entry(&s.gpu_uuid).or_default().push(s);
    }
    let (mut activity, mut memory) = (Vec::new(), Vec::new());
    let mut memory_max: f64 = 1.0;
    for (i, (uuid, samples)) in by_gpu.iter().enumerate() {
        let gpu = GpuLines {
            data,
            samples,
            colour: PALETTE[i % PALETTE.len()],
            name: format!(
                "{} ({})",
                svg::truncate(uuid, 16),
                names.manager_id(samples[0].manager_key)
            ),
        };
        activity.push(gpu.line("utilization", false, |s| Some(s.utilization_ratio? * 100.0)));
        let sm = gpu.line("SM activity", true, |s| Some(s.sm_activity_ratio? * 100.0));
        if !sm.points.is_empty() {
            activity.push(sm);
        }
        memory.push(gpu.line("", false, |s| Some(s.memory_used_bytes? as f64 / GIB)));
        let total = samples
            .iter()
            .filter_map(|s| s.memory_total_bytes.max(s.memory_used_bytes))
            .max();
        memory_max = memory_max.max(total.unwrap_or(0) as f64 / GIB);
    }
    let activity = over_run(
        data,
        "GPU utilization and SM activity",
        "%",
        100.0,
        &activity,
    );
    svg::line_chart(out, &activity)?;
    let memory = over_run(data, "GPU memory used", "GiB", memory_max, &memory);
    svg::line_chart(out, &memory)
}

/// One GPU's samples, drawn in one colour.
struct GpuLines<'a> {
    data: &'a RunData,
    samples: &'a [&'a GpuSample],
    colour: &'static str,
    name: String,
}

impl GpuLines<'_> {
    /// The line of one measure, `what` (appended to the GPU's name), where samples have it.
    fn line(&self, what: &str, dashed: bool, value: fn(&GpuSample) -> Option<f64>) -> Series {
        let points = self
            .samples
            .iter()
            .filter_map(|s| Some((self.data.seconds(s.at_us), value(s)?)));
        Series {
            name: format!("{} {what}", self.name).trim_end().to_string(),
            colour: self.colour,
            dashed,
            points: points.collect(),
        }
    }
}

fn over_run<'a>(
    data: &RunData,
    title: &'a str,
    y_label: &'a str,
    y_max: f64,
    series: &'a [Series],
) -> LineChart<'a> {
    LineChart {
        title,
        y_label,
        x_max: data.span_s(),
        y_max,
        series,
    }
}

/// The GPU memory of each slot's worker processes, in GiB; the run has slot samples.
pub(super) fn slots(out: &mut String, data: &RunData, names: &Names<'_>) -> fmt::Result {
    let mut by_slot: BTreeMap<(i64, i64), Vec<(f64, f64)>> = BTreeMap::new();
    for s in &data.slot_samples {
        if let Some(bytes) = s.gpu_memory_used_bytes {
            let points = by_slot.entry((s.manager_key, s.slot)).or_default();
            points.push((data.seconds(s.at_us), bytes as f64 / GIB));
        }
    }
    let y_max = by_slot
        .values()
        .flatten()
        .fold(0.001, |m: f64, p| m.max(p.1));
    let series: Vec<Series> = by_slot
        .into_iter()
        .enumerate()
        .map(|(i, ((key, slot), points))| Series {
            name: names.slot_label(key, Some(slot)),
            colour: PALETTE[i % PALETTE.len()],
            dashed: false,
            points,
        })
        .collect();
    let chart = over_run(data, "GPU memory of each slot", "GiB", y_max, &series);
    svg::line_chart(out, &chart)
}
