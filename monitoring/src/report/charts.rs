//! The report's smaller figures: tasks in flight over time, the queue and run time
//! distributions, and how busy each slot was.

use std::fmt::{self, Write};

use super::query::RunData;
use super::stats::{self, LogHistogram};
use super::svg::{self, Esc, LineChart, Plot, Series, CHART_WIDTH, N, PALETTE};
use super::time::format_duration;
use super::timeline::Row;

/// Tasks queued and tasks running, the most of each in every interval of the run.
pub(super) fn in_flight(out: &mut String, data: &RunData) -> fmt::Result {
    const COLUMNS: usize = 800;
    let (queued, running) = stats::in_flight(data, COLUMNS);
    let at = |i: usize| (i as f64 + 0.5) * data.span_s() / COLUMNS as f64;
    let series = |name: &str, colour, values: &[f64]| Series {
        name: name.into(),
        colour,
        dashed: false,
        points: values
            .iter()
            .enumerate()
            .map(|(i, v)| (at(i), *v))
            .collect(),
    };
    let y_max = queued
        .iter()
        .chain(&running)
        .fold(1.0, |m: f64, v| m.max(*v));
    let series = [
        series("queued (accepted, at no manager)", PALETTE[0], &queued),
        series("running (dispatched to a manager)", PALETTE[1], &running),
    ];
    svg::line_chart(
        out,
        &LineChart {
            title: "tasks in flight",
            y_label: "tasks",
            x_max: data.span_s(),
            y_max,
            series: &series,
        },
    )
}

const HISTOGRAM_WIDTH: f64 = 440.0;

/// A log-binned histogram of durations (µs) with its p50, p90 and p99, or a sentence when
/// there are none.
pub(super) fn histogram(out: &mut String, what: &str, mut values: Vec<i64>) -> fmt::Result {
    values.sort_unstable();
    let Some(histogram) = LogHistogram::of(&values) else {
        return writeln!(out, r#"<p class="note">no {} in this run</p>"#, Esc(what));
    };
    let top = histogram.counts.iter().copied().max().unwrap_or(1) as f64;
    let plot = Plot {
        left: 50.0,
        top: 44.0,
        width: HISTOGRAM_WIDTH - 50.0 - 16.0,
        height: 150.0,
        x_max: histogram.counts.len() as f64,
        y_max: top,
    };
    svg::open(out, HISTOGRAM_WIDTH, plot.bottom() + 44.0, what)?;
    svg::y_axis(out, &plot, "count")?;
    writeln!(
        out,
        r##"<g fill="{}" stroke="#fff" stroke-width="0.5">"##,
        PALETTE[0]
    )?;
    for (i, count) in histogram.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let (x0, x1, y) = (
            plot.x(i as f64),
            plot.x(i as f64 + 1.0),
            plot.y(*count as f64),
        );
        let range = format!(
            "{} to {}",
            format_duration(histogram.edge_us(i)),
            format_duration(histogram.edge_us(i + 1))
        );
        write!(
            out,
            r#"<rect x="{}" y="{}" width="{}" height="{}"><title>{range}: {count}</title></rect>"#,
            N(x0),
            N(y),
            N(x1 - x0),
            N(plot.bottom() - y)
        )?;
    }
    out.push_str("</g>\n");
    decade_axis(out, &plot, &histogram)?;
    percentiles(out, &plot, &histogram, &values)?;
    svg::close(out);
    Ok(())
}

fn decade_axis(out: &mut String, plot: &Plot, histogram: &LogHistogram) -> fmt::Result {
    let every = if histogram.decades <= 6 { 1 } else { 2 };
    out.push_str("<g text-anchor=\"middle\" fill=\"#444\">");
    for d in (0..=histogram.decades).step_by(every) {
        let x = N(plot.x((d as usize * stats::BINS_PER_DECADE) as f64));
        let label = decade_label(histogram.first_decade + d);
        let (y1, y2, ty) = (
            N(plot.bottom()),
            N(plot.bottom() + 4.0),
            N(plot.bottom() + 16.0),
        );
        write!(
            out,
            r##"<line x1="{x}" x2="{x}" y1="{y1}" y2="{y2}" stroke="#888"/><text x="{x}" y="{ty}">{label}</text>"##
        )?;
    }
    let (x, y) = (N(plot.left + plot.width / 2.0), N(plot.bottom() + 34.0));
    writeln!(
        out,
        r#"<text x="{x}" y="{y}">duration (log scale)</text></g>"#
    )?;
    let (l, r, t, b) = (N(plot.left), N(plot.right()), N(plot.top), N(plot.bottom()));
    writeln!(
        out,
        r##"<polyline fill="none" stroke="#888" points="{l},{t} {l},{b} {r},{b}"/>"##
    )
}

/// "1 µs", "10 µs", ... "100 s", then minutes and hours.
fn decade_label(decade: u32) -> String {
    let power = |d: u32| 10u64.pow(d % 3);
    match decade {
        0..=2 => format!("{} µs", power(decade)),
        3..=5 => format!("{} ms", power(decade)),
        6..=8 => format!("{} s", power(decade)),
        _ => format_duration(10f64.powi(decade as i32)),
    }
}

/// The percentiles printed above the plot and marked on it.
fn percentiles(
    out: &mut String,
    plot: &Plot,
    histogram: &LogHistogram,
    sorted: &[i64],
) -> fmt::Result {
    let mut summary = format!("n = {}", sorted.len());
    // Labels at staggered heights: the three are often a pixel apart.
    for (row, p) in [50.0, 90.0, 99.0].into_iter().enumerate() {
        let Some(v) = stats::percentile(sorted, p) else {
            continue;
        };
        summary += &format!(" · p{p} {}", format_duration(v as f64));
        let x = N(plot.left + histogram.position(v) * plot.width);
        let ty = plot.top - 4.0 - 9.0 * row as f64;
        let (t, b, ty) = (N(ty + 3.0), N(plot.bottom()), N(ty));
        write!(
            out,
            r##"<line x1="{x}" x2="{x}" y1="{t}" y2="{b}" stroke="#d62728" stroke-dasharray="3 2"/>"##
        )?;
        writeln!(
            out,
            r##"<text x="{x}" y="{ty}" font-size="9" text-anchor="middle" fill="#d62728">p{p}</text>"##
        )?;
    }
    writeln!(
        out,
        r#"<text x="{}" y="16" font-weight="bold">{}</text>"#,
        N(plot.left),
        Esc(&summary)
    )
}

/// Each slot's busy fraction: the sum of its attempts' bars over the run's length.
pub(super) fn utilization(out: &mut String, data: &RunData, rows: &[Row]) -> fmt::Result {
    let slots: Vec<&Row> = rows.iter().filter(|r| r.slot.is_some()).collect();
    if slots.is_empty() {
        return writeln!(out, r#"<p class="note">no slots in this run</p>"#);
    }
    const ROW: f64 = 16.0;
    let longest = slots
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_width = (longest.min(46) as f64 * 6.2 + 12.0).clamp(100.0, 300.0);
    let bar_width = CHART_WIDTH - label_width - 70.0;
    svg::open(
        out,
        CHART_WIDTH,
        ROW * slots.len() as f64 + 8.0,
        "busy fraction of each slot",
    )?;
    for (i, row) in slots.iter().enumerate() {
        let fraction = busy_fraction(data, row);
        let y = i as f64 * ROW + 4.0;
        let (lx, ty, by) = (N(label_width - 6.0), N(y + 11.0), N(y + 2.0));
        let label = svg::truncate(&row.label, 46);
        write!(
            out,
            r#"<text x="{lx}" y="{ty}" text-anchor="end"><title>{}</title>{}</text>"#,
            Esc(&row.detail),
            Esc(&label)
        )?;
        let (x, full, busy) = (
            N(label_width),
            N(bar_width),
            N(bar_width * fraction.min(1.0)),
        );
        write!(
            out,
            r##"<rect x="{x}" y="{by}" width="{full}" height="12" fill="#eee"/><rect x="{x}" y="{by}" width="{busy}" height="12" fill="{}"/>"##,
            PALETTE[0]
        )?;
        writeln!(
            out,
            r#"<text x="{}" y="{ty}">{:.1} %</text>"#,
            N(label_width + bar_width + 6.0),
            fraction * 100.0
        )?;
    }
    svg::close(out);
    Ok(())
}

fn busy_fraction(data: &RunData, row: &Row) -> f64 {
    let busy: i64 = row
        .attempts
        .iter()
        .map(|i| {
            let (start, end) = data.attempts[*i].span();
            end.min(data.t1) - start.max(data.t0)
        })
        .filter(|d| *d > 0)
        .sum();
    busy as f64 / (data.t1 - data.t0) as f64
}
