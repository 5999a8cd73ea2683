//! The report page: the run's header and every figure in one HTML file, with inline CSS and
//! inline SVG; it needs no script and fetches nothing.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::path::Path;

use super::labels::Names;
use super::query::RunData;
use super::svg::Esc;
use super::time::{format_duration, format_utc};
use super::{charts, gpu, stats, timeline};

pub(super) fn page(db: &Path, data: &RunData) -> String {
    let mut out = String::with_capacity(16_384 + data.attempts.len() * 140);
    write_page(&mut out, db, data).expect("formatting into a String cannot fail");
    out
}

const STYLE: &str = "body{font-family:sans-serif;color:#222;max-width:1240px;margin:1.5em auto;\
padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}th,td{padding:2px 14px 2px 0;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.warning{background:#fff3cd;\
border:1px solid #d9a400;padding:.6em 1em;font-weight:bold}.figure{overflow-x:auto}\
svg{max-width:100%;height:auto}.pair{display:flex;flex-wrap:wrap;gap:2em}p.note{color:#555}";

fn write_page(out: &mut String, db: &Path, data: &RunData) -> fmt::Result {
    let names = Names::new(data);
    let rows = timeline::rows(data, &names);
    let run = &data.run;
    writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">"
    )?;
    writeln!(
        out,
        "<title>htex run {} on {}</title>",
        run.run_id,
        Esc(&run.host)
    )?;
    writeln!(
        out,
        "<style>{STYLE}</style>\n</head>\n<body>\n<h1>htex run {}</h1>",
        run.run_id
    )?;
    header(out, db, data)?;
    counts(out, data)?;
    let tooltips = if data.attempts.len() > timeline::TOOLTIP_LIMIT {
        format!(
            " Bars carry no tooltips: the run has more than {} attempts.",
            timeline::TOOLTIP_LIMIT
        )
    } else {
        " Hover over a bar for its task, or over a row's label for its slot.".into()
    };
    figure_start(out, "Timeline of every slot", &format!(
        "One row per slot, one bar per attempt from its start on the worker (or its dispatch) to its \
         end; time in seconds since the run started.{tooltips}"
    ))?;
    timeline::draw(out, data, &names, &rows)?;
    figure_end(out)?;
    figure_start(
        out,
        "Tasks in flight",
        "The most tasks queued and running in each interval.",
    )?;
    charts::in_flight(out, data)?;
    figure_end(out)?;
    distributions(out, data)?;
    figure_start(
        out,
        "Slot utilization",
        "Each slot's time in attempts over the run's length.",
    )?;
    charts::utilization(out, data, &rows)?;
    figure_end(out)?;
    gpu_section(out, data, &names)?;
    out.push_str("</body>\n</html>\n");
    Ok(())
}

fn figure_start(out: &mut String, title: &str, note: &str) -> fmt::Result {
    writeln!(
        out,
        "<section>\n<h2>{}</h2>\n<p class=\"note\">{}</p>\n<div class=\"figure\">",
        Esc(title),
        Esc(note)
    )
}

fn figure_end(out: &mut String) -> fmt::Result {
    writeln!(out, "</div>\n</section>")
}

fn header(out: &mut String, db: &Path, data: &RunData) -> fmt::Result {
    let run = &data.run;
    if run.events_dropped > 0 {
        writeln!(
            out,
            "<p class=\"warning\">⚠ {} events were dropped: the database writer could not keep up, \
             so this report misses some tasks, attempts or samples.</p>",
            run.events_dropped
        )?;
    }
    let ended = match run.ended_us {
        Some(end) => format_utc(end),
        None => format!(
            "not recorded: the interchange is still running, or was killed (last event {})",
            format_utc(data.t1)
        ),
    };
    let lost = data.managers.iter().filter(|m| m.state == "lost").count();
    let facts = [
        ("interchange", run.interchange.clone()),
        ("host", format!("{} (pid {})", run.host, run.pid)),
        ("htex version", run.htex_version.clone()),
        ("database", db.display().to_string()),
        ("started", format_utc(run.started_us)),
        ("ended", ended),
        ("duration", format_duration((data.t1 - data.t0) as f64)),
        (
            "managers",
            format!("{} registered, {lost} lost", data.managers.len()),
        ),
        ("events dropped", run.events_dropped.to_string()),
    ];
    out.push_str("<table class=\"facts\">\n");
    for (name, value) in facts {
        writeln!(out, "<tr><th>{name}</th><td>{}</td></tr>", Esc(&value))?;
    }
    out.push_str("</table>\n");
    Ok(())
}

/// Tasks by outcome (failed ones by error kind), then attempts by outcome.
fn counts(out: &mut String, data: &RunData) -> fmt::Result {
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    for t in &data.tasks {
        let outcome = match (&t.outcome, &t.error_kind) {
            (Some(o), Some(kind)) if o == "failed" => format!("failed: {kind}"),
            (Some(o), _) => o.clone(),
            (None, _) => "not ended (queued or running)".into(),
        };
        *tasks.entry(outcome).or_default() += 1;
    }
    let failed: usize = data
        .tasks
        .iter()
        .filter(|t| t.outcome.as_deref() == Some("failed"))
        .count();
    let restored = data.tasks.iter().filter(|t| t.restored).count();
    let mut attempts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &data.attempts {
        *attempts.entry(&a.outcome).or_default() += 1;
    }
    writeln!(out, "<h2>Tasks</h2>\n<table class=\"counts\">")?;
    let row = |out: &mut String, name: &str, n: usize| {
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            Esc(name)
        )
    };
    row(out, "tasks", data.tasks.len())?;
    row(out, "failed, all kinds", failed)?;
    for (outcome, n) in &tasks {
        row(out, outcome, *n)?;
    }
    row(out, "restored from an earlier run's journal", restored)?;
    row(out, "attempts", data.attempts.len())?;
    for (outcome, n) in &attempts {
        row(out, &format!("attempts {outcome}"), *n)?;
    }
    out.push_str("</table>\n");
    Ok(())
}

fn distributions(out: &mut String, data: &RunData) -> fmt::Result {
    figure_start(
        out,
        "Queue and run times",
        "Queue time: from acceptance to the first dispatch. Run time: from the start to the \
         finish of an attempt on its worker. Log-spaced bins, percentiles by nearest rank.",
    )?;
    out.push_str("<div class=\"pair\">\n");
    charts::histogram(out, "queue times", stats::queue_times(data))?;
    charts::histogram(out, "run times", stats::run_times(data))?;
    out.push_str("</div>\n");
    figure_end(out)
}

fn gpu_section(out: &mut String, data: &RunData, names: &Names<'_>) -> fmt::Result {
    figure_start(out, "GPUs", "Utilization (solid) and SM activity (dashed) of each GPU, its memory, and the GPU memory of each slot's workers, from the managers' NVML samples.")?;
    if data.gpu_samples.is_empty() {
        writeln!(
            out,
            "<p>no GPU samples in this run (managers without GPUs, or NVML unavailable)</p>"
        )?;
    } else {
        gpu::gpus(out, data, names)?;
    }
    if data.slot_samples.is_empty() {
        writeln!(out, "<p>no per-slot GPU memory samples in this run</p>")?;
    } else {
        gpu::slots(out, data, names)?;
    }
    figure_end(out)
}
