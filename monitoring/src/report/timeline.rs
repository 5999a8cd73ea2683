//! The slot timeline, the report's main figure: one row per (manager, slot), one bar per
//! attempt from its start to its end, coloured by outcome, and where managers were lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write};

use super::labels::{manager_end, Names};
use super::query::{AttemptRow, RunData};
use super::svg::{self, Esc, Legend, LegendItem, Mark, Plot, N};
use super::time::format_duration;

/// Above this many attempts the bars carry no `<title>` tooltip: a tooltip costs ~120 bytes,
/// so 200 000 titled bars would make a page of 50 MB. The bars and their `data-` attributes
/// (task, attempt, outcome) stay, so the figure and anything that reads it lose nothing else.
pub(super) const TOOLTIP_LIMIT: usize = 20_000;

/// The outcomes an attempt can have, in legend order, with their colours.
pub(super) const OUTCOMES: [(&str, &str); 5] = [
    ("completed", "#2ca02c"),
    ("failed", "#d62728"),
    ("lost", "#ff7f0e"),
    ("returned", "#7f7f7f"),
    ("cancelled", "#9467bd"),
];
/// An outcome this htex does not know (a newer writer's).
const OTHER_COLOUR: &str = "#000000";
const LOST_COLOUR: &str = "#8b0000";

const WIDTH: f64 = 1200.0;
const LABEL_CHARS: usize = 46;

/// A row of the timeline: a slot, or a manager's attempts that reached no slot.
pub(super) struct Row {
    pub manager_key: i64,
    pub slot: Option<i64>,
    pub label: String,
    pub detail: String,
    /// Indexes into `RunData::attempts`.
    pub attempts: Vec<usize>,
}

/// The rows in manager registration order, each manager's slots in order and its
/// "(no slot)" row last; slots and managers the attempts name but the tables lack get rows too.
pub(super) fn rows(data: &RunData, names: &Names<'_>) -> Vec<Row> {
    let rank: HashMap<i64, usize> = data
        .managers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.key, i))
        .collect();
    let order = |key: i64, slot: Option<i64>| {
        let manager = rank.get(&key).copied().unwrap_or(usize::MAX);
        (manager, key, slot.is_none(), slot.unwrap_or(0))
    };
    let mut rows: BTreeMap<_, Row> = BTreeMap::new();
    for s in &data.slots {
        let (key, slot) = (s.manager_key, Some(s.slot));
        rows.entry(order(key, slot))
            .or_insert_with(|| new_row(names, key, slot));
    }
    for (i, a) in data.attempts.iter().enumerate() {
        let (key, slot) = (a.manager_key, a.slot);
        let row = rows
            .entry(order(key, slot))
            .or_insert_with(|| new_row(names, key, slot));
        row.attempts.push(i);
    }
    rows.into_values().collect()
}

fn new_row(names: &Names<'_>, key: i64, slot: Option<i64>) -> Row {
    Row {
        manager_key: key,
        slot,
        label: names.slot_label(key, slot),
        detail: names.slot_detail(key, slot),
        attempts: Vec::new(),
    }
}

/// The figure as a standalone SVG document.
pub(super) fn document(data: &RunData) -> String {
    let names = Names::new(data);
    let rows = rows(data, &names);
    let mut out = String::with_capacity(4096 + data.attempts.len() * 140);
    draw(&mut out, data, &names, &rows).expect("formatting into a String cannot fail");
    out
}

/// Sizes: rows shrink when there are many, so a thousand slots still fit a tall page.
struct Layout {
    plot: Plot,
    row_height: f64,
    bar_height: f64,
    font_size: f64,
    legend_top: f64,
}

impl Layout {
    fn new(data: &RunData, rows: &[Row]) -> Layout {
        let longest = rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(10);
        let label_width = (longest.min(LABEL_CHARS) as f64 * 6.2 + 12.0).clamp(100.0, 300.0);
        let row_height = if rows.len() <= 300 { 16.0 } else { 8.0 };
        let plot = Plot {
            left: label_width,
            top: 34.0,
            width: WIDTH - label_width - 20.0,
            height: row_height * rows.len().max(1) as f64,
            x_max: data.span_s(),
            y_max: 1.0,
        };
        Layout {
            plot,
            row_height,
            bar_height: row_height - 4.0,
            font_size: (row_height - 4.0).min(11.0),
            legend_top: 18.0,
        }
    }

    fn row_top(&self, row: usize) -> f64 {
        self.plot.top + row as f64 * self.row_height
    }

    fn height(&self) -> f64 {
        self.plot.bottom() + 40.0
    }
}

/// Draws the figure, an `<svg>` element, into `out`.
pub(super) fn draw(
    out: &mut String,
    data: &RunData,
    names: &Names<'_>,
    rows: &[Row],
) -> fmt::Result {
    let layout = Layout::new(data, rows);
    svg::open(out, WIDTH, layout.height(), "timeline of every slot")?;
    legend(out, data, &layout)?;
    stripes(out, data, rows, &layout)?;
    svg::x_axis(out, &layout.plot, "time since run start (s)")?;
    if rows.is_empty() {
        let (x, y) = (N(layout.plot.left + 8.0), N(layout.plot.top + 12.0));
        writeln!(
            out,
            r#"<text x="{x}" y="{y}">no slots and no attempts in this run</text>"#
        )?;
    }
    bars(out, data, rows, &layout)?;
    manager_ends(out, data, names, rows, &layout)?;
    labels(out, rows, &layout)?;
    svg::close(out);
    Ok(())
}

fn legend(out: &mut String, data: &RunData, layout: &Layout) -> fmt::Result {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &data.attempts {
        *counts.entry(a.outcome.as_str()).or_default() += 1;
    }
    let mut items: Vec<LegendItem> = OUTCOMES
        .iter()
        .map(|(outcome, colour)| swatch(colour, outcome, counts.get(outcome).copied().unwrap_or(0)))
        .collect();
    for (outcome, count) in counts.iter().filter(|(o, _)| colour_of(o) == OTHER_COLOUR) {
        items.push(swatch(OTHER_COLOUR, outcome, *count));
    }
    items.push(LegendItem {
        colour: LOST_COLOUR,
        name: "manager lost".into(),
        mark: Mark::Line,
    });
    Legend::new(&items, layout.plot.width).draw(out, layout.plot.left, layout.legend_top)
}

fn swatch(colour: &'static str, outcome: &str, count: usize) -> LegendItem {
    LegendItem {
        colour,
        name: format!("{outcome} ({count})"),
        mark: Mark::Swatch,
    }
}

fn colour_of(outcome: &str) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| *o == outcome)
        .map_or(OTHER_COLOUR, |(_, c)| c)
}

/// Alternate row shading, each manager's lifetime tinted, a line between managers.
fn stripes(out: &mut String, data: &RunData, rows: &[Row], layout: &Layout) -> fmt::Result {
    let plot = &layout.plot;
    out.push_str("<g fill=\"#f4f4f4\">");
    for i in (1..rows.len()).step_by(2) {
        let y = N(layout.row_top(i));
        let (x, w, h) = (N(plot.left), N(plot.width), N(layout.row_height));
        write!(out, r#"<rect x="{x}" y="{y}" width="{w}" height="{h}"/>"#)?;
    }
    out.push_str("</g>\n<g fill=\"#dfe8f5\" fill-opacity=\"0.5\">");
    for (key, first, last) in manager_spans(rows) {
        let Some(m) = data.managers.iter().find(|m| m.key == key) else {
            continue;
        };
        let x0 = plot.x(data.seconds(m.registered_us));
        let x1 = plot.x(data.seconds(m.ended_us.unwrap_or(data.t1)));
        let (y, h) = (
            N(layout.row_top(first)),
            N(layout.row_height * (last - first + 1) as f64),
        );
        write!(
            out,
            r#"<rect x="{}" y="{y}" width="{}" height="{h}"/>"#,
            N(x0),
            N(x1 - x0)
        )?;
    }
    out.push_str("</g>\n<g stroke=\"#999\">");
    for (_, first, _) in manager_spans(rows).skip(1) {
        let y = N(layout.row_top(first));
        write!(
            out,
            r#"<line x1="0" x2="{}" y1="{y}" y2="{y}"/>"#,
            N(plot.right())
        )?;
    }
    out.push_str("</g>\n");
    Ok(())
}

/// (manager key, first row, last row) of each manager's run of rows.
fn manager_spans(rows: &[Row]) -> impl Iterator<Item = (i64, usize, usize)> + '_ {
    let mut spans: Vec<(i64, usize, usize)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match spans.last_mut() {
            Some(span) if span.0 == row.manager_key => span.2 = i,
            _ => spans.push((row.manager_key, i, i)),
        }
    }
    spans.into_iter()
}

/// One `<rect class="attempt">` per attempt, grouped by outcome under one `fill`.
fn bars(out: &mut String, data: &RunData, rows: &[Row], layout: &Layout) -> fmt::Result {
    let mut row_of = vec![0usize; data.attempts.len()];
    for (r, row) in rows.iter().enumerate() {
        for a in &row.attempts {
            row_of[*a] = r;
        }
    }
    let others: BTreeSet<&str> = data
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .filter(|o| colour_of(o) == OTHER_COLOUR)
        .collect();
    let outcomes = OUTCOMES.iter().map(|(o, _)| *o).chain(others);
    let tooltips = data.attempts.len() <= TOOLTIP_LIMIT;
    for outcome in outcomes {
        writeln!(out, r#"<g fill="{}">"#, colour_of(outcome))?;
        for (i, a) in data
            .attempts
            .iter()
            .enumerate()
            .filter(|(_, a)| a.outcome == outcome)
        {
            bar(out, data, a, layout, row_of[i], tooltips)?;
        }
        out.push_str("</g>\n");
    }
    Ok(())
}

fn bar(
    out: &mut String,
    data: &RunData,
    a: &AttemptRow,
    layout: &Layout,
    row: usize,
    tooltip: bool,
) -> fmt::Result {
    let (start, end) = a.span();
    let x0 = layout.plot.x(data.seconds(start));
    let width = (layout.plot.x(data.seconds(end)) - x0).max(0.5);
    let y = layout.row_top(row) + (layout.row_height - layout.bar_height) / 2.0;
    write!(
        out,
        r#"<rect class="attempt" x="{}" y="{}" width="{}" height="{}" data-task="{}" data-attempt="{}" data-outcome="{}""#,
        N(x0),
        N(y),
        N(width),
        N(layout.bar_height),
        a.task_id,
        a.attempt,
        Esc(&a.outcome)
    )?;
    if !tooltip {
        out.push_str("/>\n");
        return Ok(());
    }
    out.push_str("><title>");
    attempt_tooltip(out, data, a)?;
    out.push_str("</title></rect>\n");
    Ok(())
}

fn attempt_tooltip(out: &mut String, data: &RunData, a: &AttemptRow) -> fmt::Result {
    let client = a
        .client_task_id
        .map_or_else(|| "?".into(), |id| id.to_string());
    let label = a.label.as_deref().unwrap_or("");
    write!(
        out,
        "task {} (client task {client}) {}\nattempt {}: {}",
        a.task_id,
        Esc(label),
        a.attempt,
        Esc(&a.outcome)
    )?;
    if let Some(kind) = &a.error_kind {
        write!(out, " ({})", Esc(kind))?;
    }
    let (start, end) = a.span();
    let (dispatched, s, e) = (
        data.seconds(a.dispatched_us),
        data.seconds(start),
        data.seconds(end),
    );
    let ran = format_duration((end - start) as f64);
    write!(
        out,
        "\ndispatched {dispatched:.3} s, ran {s:.3} s to {e:.3} s ({ran})"
    )
}

/// A line across each ended manager's rows where it ended, with why in its tooltip.
fn manager_ends(
    out: &mut String,
    data: &RunData,
    names: &Names<'_>,
    rows: &[Row],
    layout: &Layout,
) -> fmt::Result {
    for (key, first, last) in manager_spans(rows) {
        let Some(m) = names.manager(key) else {
            continue;
        };
        let Some(ended) = m.ended_us else { continue };
        let lost = m.state == "lost";
        let (colour, width, dash) = if lost {
            (LOST_COLOUR, 2, "")
        } else {
            ("#555", 1, r#" stroke-dasharray="3 2""#)
        };
        let x = N(layout.plot.x(data.seconds(ended)));
        let (y1, y2) = (N(layout.row_top(first)), N(layout.row_top(last + 1)));
        write!(
            out,
            r#"<line class="manager-end" x1="{x}" x2="{x}" y1="{y1}" y2="{y2}" stroke="{colour}" stroke-width="{width}"{dash}><title>{}</title></line>"#,
            Esc(&manager_end(data, m, ended))
        )?;
        if lost {
            let (tx, ty) = (
                N(layout.plot.x(data.seconds(ended)) + 3.0),
                N(layout.row_top(first) + 9.0),
            );
            write!(
                out,
                r#"<text x="{tx}" y="{ty}" font-size="9" fill="{LOST_COLOUR}">lost</text>"#
            )?;
        }
        out.push('\n');
    }
    Ok(())
}

fn labels(out: &mut String, rows: &[Row], layout: &Layout) -> fmt::Result {
    let x = N(layout.plot.left - 6.0);
    writeln!(
        out,
        r#"<g text-anchor="end" font-size="{}">"#,
        N(layout.font_size)
    )?;
    for (i, row) in rows.iter().enumerate() {
        let y = N(layout.row_top(i) + layout.row_height / 2.0 + layout.font_size * 0.35);
        let label = svg::truncate(&row.label, LABEL_CHARS);
        writeln!(
            out,
            r#"<text x="{x}" y="{y}"><title>{}</title>{}</text>"#,
            Esc(&row.detail),
            Esc(&label)
        )?;
    }
    out.push_str("</g>\n");
    Ok(())
}
