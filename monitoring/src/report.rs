//! `htex report`: draws one run of a monitoring database (`schema.sql`) as one self-contained
//! HTML page (inline CSS and SVG, no script, nothing fetched), or its slot timeline alone as an
//! SVG document. The database is opened read-only, in one read transaction: a live interchange
//! goes on writing it, and the report shows the run as of the moment it was opened.

mod charts;
mod gpu;
mod html;
mod labels;
mod query;
mod stats;
mod svg;
mod time;
mod timeline;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::db::SCHEMA_VERSION;

/// Which run of a database to draw (a database holds one run per interchange start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSelector {
    /// The run with the highest id: the last interchange start.
    Latest,
    /// The run with this `runs.run_id`.
    Id(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot open the monitoring database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot read the monitoring database {path}: {source}")]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the file {path} is not an htex monitoring database: it records no schema version")]
    NotMonitoring { path: PathBuf },
    #[error(
        "the database {path} has schema version {found}; this htex reads version {SCHEMA_VERSION}"
    )]
    Version { path: PathBuf, found: i64 },
    #[error("the database {path} has no runs yet")]
    NoRuns { path: PathBuf },
    #[error("the database {path} has no run {id} (its runs: {})", list_runs(.runs))]
    NoSuchRun {
        path: PathBuf,
        id: i64,
        runs: Vec<i64>,
    },
}

/// Draws a run of the database `db` as one HTML page: its header and task counts, the
/// timeline of every slot, tasks in flight, queue and run time histograms, slot utilization
/// and GPU samples.
///
/// Above 20 000 attempts the timeline's bars carry no tooltips (the page would grow by ~120
/// bytes a bar); every attempt still has its bar.
///
/// ```no_run
/// use htex_monitoring::report::{render_html, RunSelector};
///
/// let page = render_html(std::path::Path::new("htex.db"), RunSelector::Latest)?;
/// std::fs::write("report.html", page)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn render_html(db: &Path, run: RunSelector) -> Result<String, ReportError> {
    let data = load(db, run)?;
    Ok(html::page(db, &data))
}

/// The timeline of every slot, the figure `render_html` embeds, as a standalone SVG document.
pub fn render_timeline_svg(db: &Path, run: RunSelector) -> Result<String, ReportError> {
    let data = load(db, run)?;
    Ok(timeline::document(&data))
}

fn load(db: &Path, run: RunSelector) -> Result<query::RunData, ReportError> {
    let open_error = |source| ReportError::Open {
        path: db.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(open_error)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_error)?;
    // One snapshot for every query, however the interchange writes meanwhile.
    conn.execute_batch("BEGIN").map_err(open_error)?;
    check_schema(&conn, db)?;
    let run_id = select_run(&conn, db, run)?;
    query::load(&conn, run_id).map_err(|source| ReportError::Read {
        path: db.to_path_buf(),
        source,
    })
}

fn check_schema(conn: &Connection, path: &Path) -> Result<(), ReportError> {
    // The first read is where SQLite finds that a file is no database at all.
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master
             WHERE type = 'table' AND name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(|source| ReportError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let found: Option<i64> = if has_table {
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(|source| read_error(path, source))?
    } else {
        None
    };
    match found {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(found) => Err(ReportError::Version {
            path: path.to_path_buf(),
            found,
        }),
        None => Err(ReportError::NotMonitoring {
            path: path.to_path_buf(),
        }),
    }
}

fn select_run(conn: &Connection, path: &Path, run: RunSelector) -> Result<i64, ReportError> {
    let runs: Vec<i64> = conn
        .prepare("SELECT run_id FROM runs ORDER BY run_id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|source| read_error(path, source))?;
    let path = path.to_path_buf();
    match (run, runs.last()) {
        (_, None) => Err(ReportError::NoRuns { path }),
        (RunSelector::Latest, Some(last)) => Ok(*last),
        (RunSelector::Id(id), _) if runs.binary_search(&id).is_ok() => Ok(id),
        (RunSelector::Id(id), _) => Err(ReportError::NoSuchRun { path, id, runs }),
    }
}

fn read_error(path: &Path, source: rusqlite::Error) -> ReportError {
    ReportError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// "1, 2, 3", or the first and last few of a long list.
fn list_runs(runs: &[i64]) -> String {
    let join = |ids: &[i64]| {
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if runs.len() <= 12 {
        join(runs)
    } else {
        let (first, last) = (&runs[..5], &runs[runs.len() - 5..]);
        format!("{}, …, {}; {} runs", join(first), join(last), runs.len())
    }
}
