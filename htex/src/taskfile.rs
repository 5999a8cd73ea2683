//! The task file of `htex run` and `htex submit`: one JSON object per line.
//!
//! ```text
//! {"id": "t1", "command": ["echo", "hi"]}
//! {"id": "t2", "function": "echo", "args": {"any": "JSON"}, "priority": 5, "timeout_s": 2.5}
//! ```
//! Other keys: `env` (object), `cwd`, `stdin` (string), `max_retries`, `resources` (object with
//! `gpu`, `whole_gpu`, `min_mps_percentage`, `min_sm_count`, `min_gpu_memory_bytes`,
//! `mig_profile`, `cpu_only`). Blank lines and lines starting with `#` are skipped.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use htex_client::Task;
use htex_protocol::ResourceRequest;
use serde::Deserialize;

/// The longest `timeout_s` a task file may give.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// One line of a task file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    id: Option<serde_json::Value>,
    command: Option<Vec<String>>,
    function: Option<String>,
    runner: Option<String>,
    args: Option<serde_json::Value>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    stdin: Option<String>,
    #[serde(default)]
    priority: i32,
    timeout_s: Option<f64>,
    #[serde(default)]
    max_retries: u32,
    #[serde(default)]
    resources: ResourceRequest,
}

/// A task read from a file, with the name its results are reported under.
#[derive(Debug)]
pub struct NamedTask {
    pub name: String,
    pub task: Task,
}

/// A line that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Reads every line; any bad line makes the whole file an error (nothing should run).
pub fn parse(text: &str) -> Result<Vec<NamedTask>, Vec<LineError>> {
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, line_no) {
            Ok(task) if !names.insert(task.name.clone()) => errors.push(LineError {
                line: line_no,
                message: format!("duplicate task id `{}`", task.name),
            }),
            Ok(task) => tasks.push(task),
            Err(message) => errors.push(LineError {
                line: line_no,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

fn parse_line(text: &str, line_no: usize) -> Result<NamedTask, String> {
    let line: TaskLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let name = match &line.id {
        None => format!("line-{line_no}"),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("`id` must be a string or a number, not {other}")),
    };
    let msgpack_args = |args: &Option<serde_json::Value>| {
        rmp_serde::to_vec(args.as_ref().unwrap_or(&serde_json::Value::Null))
            .map_err(|e| format!("cannot encode `args`: {e}"))
    };
    let mut task = match (&line.command, &line.function, &line.runner) {
        (Some(argv), None, None) => {
            if argv.is_empty() {
                return Err("`command` is an empty list".into());
            }
            if line.args.is_some() {
                return Err(
                    "`args` goes with `function` or `runner`; put arguments in `command`".into(),
                );
            }
            let mut task = Task::command(argv.clone());
            for (k, v) in &line.env {
                task = task.env(k, v);
            }
            if let Some(cwd) = &line.cwd {
                task = task.cwd(cwd);
            }
            if let Some(stdin) = &line.stdin {
                task = task.stdin(stdin.as_bytes());
            }
            task
        }
        (None, Some(function), None) => Task::function(function, msgpack_args(&line.args)?),
        (None, None, Some(runner)) => Task::runner_call(runner, msgpack_args(&line.args)?),
        (None, None, None) => return Err("needs one of `command`, `function` or `runner`".into()),
        _ => return Err("give only one of `command`, `function` or `runner`".into()),
    };
    if line.command.is_none()
        && (!line.env.is_empty() || line.cwd.is_some() || line.stdin.is_some())
    {
        return Err("`env`, `cwd` and `stdin` apply to `command` tasks only".into());
    }
    if let Some(seconds) = line.timeout_s {
        // A timeout travels in milliseconds; past a year it is a mistake, not a limit.
        let timeout = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|t| !t.is_zero() && *t <= MAX_TIMEOUT)
            .ok_or_else(|| {
                format!(
                    "`timeout_s` must be a number of seconds above 0 and at most {} (a year), \
                     not {seconds}",
                    MAX_TIMEOUT.as_secs()
                )
            })?;
        task = task.timeout(timeout);
    }
    let task = task
        .priority(line.priority)
        .max_retries(line.max_retries)
        .resources(line.resources);
    Ok(NamedTask { name, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_and_functions() {
        let text = "# a comment\n{\"id\": \"a\", \"command\": [\"echo\", \"hi\"]}\n\n\
                    {\"id\": 7, \"function\": \"echo\", \"args\": [1, 2], \"priority\": 3}\n\
                    {\"function\": \"noop\", \"timeout_s\": 0.5}\n";
        let tasks = parse(text).unwrap();
        let names: Vec<_> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "7", "line-5"]);
    }

    #[test]
    fn timeouts_out_of_range_are_line_errors_not_panics() {
        for bad in ["1e30", "-1", "0", "1e-12"] {
            let text = format!("{{\"function\": \"noop\", \"timeout_s\": {bad}}}\n");
            let errors = parse(&text).unwrap_err();
            assert!(
                errors[0].message.contains("timeout_s"),
                "{bad}: {}",
                errors[0]
            );
        }
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "{\"command\": []}\n{\"id\": \"x\", \"function\": \"noop\"}\n\
                    {\"id\": \"x\", \"function\": \"noop\"}\nnot json\n\
                    {\"function\": \"f\", \"command\": [\"a\"]}\n{\"function\": \"f\", \"colour\": 1}\n";
        let errors = parse(text).unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6], "{errors:?}");
        assert!(errors[1].message.contains("duplicate task id `x`"));
        assert!(
            errors[4].message.contains("unknown field `colour`"),
            "{}",
            errors[4]
        );
    }
}
