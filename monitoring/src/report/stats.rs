//! The numbers behind the charts: queue and run times, log-binned histograms and percentiles,
//! and the tasks in flight over time.

use std::collections::HashMap;

use super::query::RunData;

/// Each task's wait before its first dispatch (µs), for the tasks that reached a manager.
pub(super) fn queue_times(data: &RunData) -> Vec<i64> {
    let mut first_dispatch: HashMap<i64, i64> = HashMap::new();
    for a in &data.attempts {
        let first = first_dispatch.entry(a.task_id).or_insert(a.dispatched_us);
        *first = (*first).min(a.dispatched_us);
    }
    let queued: HashMap<i64, i64> = data
        .tasks
        .iter()
        .map(|t| (t.task_id, t.queued_us))
        .collect();
    first_dispatch
        .iter()
        .filter_map(|(task, dispatched)| Some(dispatched - queued.get(task)?))
        .collect()
}

/// Each attempt's time on its worker (µs), for the attempts whose worker reported both ends.
pub(super) fn run_times(data: &RunData) -> Vec<i64> {
    let ran = |a: &super::query::AttemptRow| Some(a.finished_us? - a.started_us?);
    data.attempts.iter().filter_map(ran).collect()
}

pub(super) const BINS_PER_DECADE: usize = 5;

/// Counts of values in log-spaced bins, `BINS_PER_DECADE` to a decade, covering the decades
/// from the smallest value's to the largest's. Values under 1 µs count in the first bin.
#[derive(Debug, PartialEq)]
pub(super) struct LogHistogram {
    pub first_decade: u32,
    pub decades: u32,
    pub counts: Vec<u64>,
}

impl LogHistogram {
    /// The histogram of `values_us`; `None` when there are none.
    pub fn of(values_us: &[i64]) -> Option<LogHistogram> {
        let first_decade = decade(*values_us.iter().min()?);
        let decades = decade(*values_us.iter().max()?) - first_decade + 1;
        let mut histogram = LogHistogram {
            first_decade,
            decades,
            counts: vec![0; decades as usize * BINS_PER_DECADE],
        };
        for v in values_us {
            let bin = histogram.bin(*v);
            histogram.counts[bin] += 1;
        }
        Some(histogram)
    }

    /// The lower edge of bin `i` (µs); `i == counts.len()` gives the last bin's upper edge.
    pub fn edge_us(&self, i: usize) -> f64 {
        10f64.powf(self.first_decade as f64 + i as f64 / BINS_PER_DECADE as f64)
    }

    /// Where `v` falls along the histogram, 0 (first edge) to 1 (last edge).
    pub fn position(&self, v: i64) -> f64 {
        let log = (v.max(1) as f64).log10() - self.first_decade as f64;
        (log / self.decades as f64).clamp(0.0, 1.0)
    }

    fn bin(&self, v: i64) -> usize {
        let v = v.max(1);
        let d = decade(v);
        // Within the decade by floating point, the decade itself exactly.
        let within = (v as f64 / 10f64.powi(d as i32)).log10();
        let sub = ((within * BINS_PER_DECADE as f64) as usize).min(BINS_PER_DECADE - 1);
        (d - self.first_decade) as usize * BINS_PER_DECADE + sub
    }
}

/// The decade of `v` µs: 0 for 1-9 µs (and anything less), 1 for 10-99, ...
fn decade(v: i64) -> u32 {
    v.max(1).ilog10()
}

/// The nearest-rank `p`th percentile of sorted values.
pub(super) fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The most tasks queued (accepted, at no manager) and the most running (dispatched to a
/// manager) in each of `columns` equal intervals of the run: maxima, so a burst shorter than an
/// interval still shows.
pub(super) fn in_flight(data: &RunData, columns: usize) -> (Vec<f64>, Vec<f64>) {
    // (time, change of tasks alive, change of tasks at a manager)
    let mut changes: Vec<(i64, i64, i64)> = Vec::new();
    for t in &data.tasks {
        changes.push((t.queued_us, 1, 0));
        changes.extend(t.ended_us.map(|end| (end, -1, 0)));
        changes.extend(t.in_flight_since.map(|dispatched| (dispatched, 0, 1)));
    }
    for a in &data.attempts {
        changes.push((a.dispatched_us, 0, 1));
        changes.push((a.ended_us, 0, -1));
    }
    column_maxima(changes, data.t0, data.t1, columns)
}

fn column_maxima(
    mut changes: Vec<(i64, i64, i64)>,
    t0: i64,
    t1: i64,
    columns: usize,
) -> (Vec<f64>, Vec<f64>) {
    changes.sort_unstable_by_key(|c| c.0);
    let (mut alive, mut running) = (0i64, 0i64);
    let (mut queued_max, mut running_max) = (Vec::new(), Vec::new());
    let mut next = changes.iter().peekable();
    let span = (t1 - t0) as f64;
    for column in 0..columns {
        let end = t0 + (span * (column + 1) as f64 / columns as f64) as i64;
        let end = if column + 1 == columns { i64::MAX } else { end };
        let (mut q, mut r) = ((alive - running).max(0), running);
        // Changes at one instant are applied together: a task that ends as its attempt does is
        // never seen queued in between.
        while let Some(&&(at, ..)) = next.peek().filter(|c| c.0 < end) {
            while let Some((_, da, dr)) = next.next_if(|c| c.0 == at) {
                alive += da;
                running += dr;
            }
            q = q.max(alive - running);
            r = r.max(running);
        }
        queued_max.push(q as f64);
        running_max.push(r as f64);
    }
    (queued_max, running_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_log_spaced_from_the_smallest_decade() {
        let h = LogHistogram::of(&[1, 10, 100]).unwrap();
        assert_eq!((h.first_decade, h.decades, h.counts.len()), (0, 3, 15));
        let filled: Vec<usize> = (0..15).filter(|i| h.counts[*i] == 1).collect();
        assert_eq!(filled, [0, 5, 10]);

        let h = LogHistogram::of(&[999, 1_000, 1_584, 1_585, 9_999]).unwrap();
        assert_eq!(h.first_decade, 2);
        assert_eq!(h.counts, [0, 0, 0, 0, 1, 2, 1, 0, 0, 1]);
        assert!((h.edge_us(5) - 1_000.0).abs() < 1e-6);
        assert!((h.edge_us(10) - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn tiny_and_missing_values() {
        let h = LogHistogram::of(&[0, -5, 1]).unwrap();
        assert_eq!(h.counts, [3, 0, 0, 0, 0]);
        assert_eq!(LogHistogram::of(&[]), None);
        let hours = LogHistogram::of(&[5, 3_600_000_000 * 5]).unwrap();
        assert_eq!(hours.decades, 11);
        assert_eq!(hours.counts.iter().sum::<u64>(), 2);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<i64> = (1..=100).collect();
        let p = |q| percentile(&values, q);
        assert_eq!(
            (p(50.0), p(90.0), p(99.0), p(100.0)),
            (Some(50), Some(90), Some(99), Some(100))
        );
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn in_flight_takes_each_interval_maximum() {
        // Task A queued at 0, dispatched at 10, ends at 30 with its attempt; B queued at 15.
        let changes = vec![(0, 1, 0), (10, 0, 1), (30, -1, 0), (30, 0, -1), (15, 1, 0)];
        let (queued, running) = column_maxima(changes, 0, 40, 4);
        assert_eq!(queued, [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(running, [0.0, 1.0, 1.0, 1.0]);
    }
}
