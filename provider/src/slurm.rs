//! Blocks as Slurm jobs: `sbatch --parsable` of a generated job script (always `--no-requeue`,
//! one manager per node), `squeue -t all` for up to 50 jobs a call, `scancel`. A job missing from
//! `squeue`'s answer ended (Slurm forgets finished jobs after `MinJobAge`); a failing `squeue` is
//! an error, never "no jobs".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::command::{run, run_ok};
use crate::config::{Launcher, ProviderConfig};
use crate::{
    shell_quote, BlockRequest, JobEnd, JobId, JobState, JobStatus, Provider, ProviderError,
};

/// Jobs asked about in one `squeue` call.
const STATUS_BATCH: usize = 50;

pub struct SlurmProvider {
    config: ProviderConfig,
}

impl SlurmProvider {
    pub fn new(config: ProviderConfig) -> SlurmProvider {
        SlurmProvider { config }
    }

    /// The job script of a block.
    pub fn script(&self, request: &BlockRequest) -> String {
        let c = &self.config;
        let nodes = c.nodes_per_block;
        let dir = request.dir.display();
        let mut s = String::from("#!/bin/bash\n");
        let mut sbatch = |line: String| {
            let _ = writeln!(s, "#SBATCH {line}");
        };
        sbatch(format!("--job-name=htex-{}-b{}", c.label, request.block));
        sbatch(format!("--output={dir}/stdout"));
        sbatch(format!("--error={dir}/stderr"));
        sbatch(format!("--nodes={nodes}"));
        sbatch("--ntasks-per-node=1".into());
        // A node failure must end the block (its tasks go elsewhere), not requeue it behind
        // the interchange's back.
        sbatch("--no-requeue".into());
        let optional = [
            ("--partition", &c.partition),
            ("--account", &c.account),
            ("--qos", &c.qos),
            ("--constraint", &c.constraint),
            ("--reservation", &c.reservation),
            ("--time", &c.walltime),
            ("--mem", &c.mem_per_node),
        ];
        for (flag, value) in optional {
            if let Some(v) = value {
                sbatch(format!("{flag}={v}"));
            }
        }
        if let Some(n) = c.cores_per_node {
            sbatch(format!("--cpus-per-task={n}"));
        }
        if let Some(n) = c.gpus_per_node {
            sbatch(format!("--gpus-per-node={n}"));
        }
        if c.exclusive {
            sbatch("--exclusive".into());
        }
        sbatch(format!("--comment=htex-block-{}", request.block));
        for line in &c.scheduler_options {
            sbatch(line.clone());
        }
        s.push('\n');
        if !c.worker_init.trim().is_empty() {
            s.push_str(c.worker_init.trim_end());
            s.push('\n');
        }
        let mut manager: Vec<String> = request.manager.iter().map(|a| shell_quote(a)).collect();
        manager.push("--block-id".into());
        manager.push(format!("b{}", request.block));
        manager.push("--manager-id".into());
        let srun = match c.launcher {
            Launcher::Srun => true,
            Launcher::Exec => false,
            Launcher::Auto => nodes > 1,
        };
        if srun {
            // One manager per node; its id names the job and the node, so ids stay unique
            // when nodes share a hostname.
            manager.push("\"${SLURM_JOB_ID}.${SLURM_NODEID}\"".into());
            let inner = format!("exec {}", manager.join(" "));
            let _ = writeln!(
                s,
                "exec srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=0 \
                 bash -c {}",
                shell_quote(&inner)
            );
        } else {
            manager.push("\"${SLURM_JOB_ID}.0\"".into());
            let _ = writeln!(s, "exec {}", manager.join(" "));
        }
        s
    }
}

impl Provider for SlurmProvider {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn managers_per_block(&self) -> u32 {
        self.config.nodes_per_block
    }

    fn walltime(&self) -> Option<Duration> {
        self.config.walltime_duration()
    }

    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError> {
        let files = |source| ProviderError::Files {
            path: request.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&request.dir).map_err(files)?;
        let script = request.dir.join("submit.sh");
        std::fs::write(&script, self.script(request)).map_err(files)?;
        let args = vec!["--parsable".to_string(), path_arg(&script)];
        let out = run_ok("sbatch", &args, self.config.cmd_timeout())?;
        parse_job_id(&out.stdout).ok_or_else(|| ProviderError::Unreadable {
            command: format!("sbatch --parsable {}", script.display()),
            output: out.stdout.trim().to_string(),
        })
    }

    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        let mut states = HashMap::new();
        for batch in jobs.chunks(STATUS_BATCH) {
            let args = vec![
                "--noheader".to_string(),
                "--states=all".into(),
                format!("--jobs={}", batch.join(",")),
                "--format=%i|%T|%r".into(),
            ];
            let out = run("squeue", &args, self.config.cmd_timeout())?;
            if !out.success {
                // squeue refuses a lone unknown id (but not one in a list): it ended.
                if out.stderr.contains("Invalid job id") {
                    continue;
                }
                return Err(ProviderError::Failed {
                    command: crate::command::display("squeue", &args),
                    status: out.status,
                    stderr: crate::command::last_lines(&out.stderr, 5),
                });
            }
            for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
                let Some((id, status)) = parse_squeue_line(line) else {
                    return Err(ProviderError::Unreadable {
                        command: "squeue --format=%i|%T|%r".into(),
                        output: line.to_string(),
                    });
                };
                if batch.contains(&id) {
                    states.insert(id, status);
                }
            }
        }
        Ok(states)
    }

    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let out = run("scancel", jobs, self.config.cmd_timeout())?;
        if out.success || out.stderr.contains("Invalid job id") {
            Ok(())
        } else {
            Err(ProviderError::Failed {
                command: crate::command::display("scancel", jobs),
                status: out.status,
                stderr: crate::command::last_lines(&out.stderr, 5),
            })
        }
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
fn parse_job_id(stdout: &str) -> Option<JobId> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let id = line.split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_')).then(|| id.to_string())
}

/// One line of `squeue --format=%i|%T|%r`.
fn parse_squeue_line(line: &str) -> Option<(JobId, JobStatus)> {
    let mut fields = line.trim().splitn(3, '|');
    let id = fields.next()?.trim().to_string();
    let word = fields.next()?.trim();
    let reason = fields
        .next()
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "None" && *r != "(null)")
        .map(str::to_string);
    if id.is_empty() || word.is_empty() {
        return None;
    }
    Some((
        id,
        JobStatus {
            state: job_state(word),
            reason,
        },
    ))
}

/// Slurm's job state words.
fn job_state(word: &str) -> JobState {
    match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => {
            JobState::Pending
        }
        // COMPLETING: the job's processes are ending; its final state follows.
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "RESIZING" | "SIGNALING"
        | "STAGE_OUT" => JobState::Running,
        "COMPLETED" => JobState::Ended(JobEnd::Completed),
        "CANCELLED" => JobState::Ended(JobEnd::Cancelled),
        "TIMEOUT" | "DEADLINE" => JobState::Ended(JobEnd::Timeout),
        "FAILED" | "BOOT_FAIL" => JobState::Ended(JobEnd::Failed),
        "NODE_FAIL" => JobState::Ended(JobEnd::NodeFail),
        "OUT_OF_MEMORY" => JobState::Ended(JobEnd::OutOfMemory),
        "PREEMPTED" => JobState::Ended(JobEnd::Preempted),
        other => JobState::Ended(JobEnd::Other(other.to_lowercase())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn request() -> BlockRequest {
        BlockRequest {
            block: 7,
            dir: PathBuf::from("/runs/b7"),
            manager: vec![
                "/opt/htex".into(),
                "manager".into(),
                "--interchange".into(),
                "10.0.0.1".into(),
                "--runner".into(),
                "py=python3 -m htex_runner m".into(),
            ],
        }
    }

    #[test]
    fn a_one_node_script_execs_the_manager_with_an_id_per_job() {
        let provider = SlurmProvider::new(ProviderConfig {
            partition: Some("debug".into()),
            walltime: Some("00:10:00".into()),
            cores_per_node: Some(4),
            scheduler_options: vec!["--gres=gpu:1".into()],
            worker_init: "module load cuda".into(),
            ..ProviderConfig::default()
        });
        let s = provider.script(&request());
        for line in [
            "#SBATCH --job-name=htex-htex-b7",
            "#SBATCH --output=/runs/b7/stdout",
            "#SBATCH --nodes=1",
            "#SBATCH --no-requeue",
            "#SBATCH --partition=debug",
            "#SBATCH --time=00:10:00",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --gres=gpu:1",
            "module load cuda",
            "exec /opt/htex manager --interchange 10.0.0.1 --runner 'py=python3 -m htex_runner m' \
             --block-id b7 --manager-id \"${SLURM_JOB_ID}.0\"",
        ] {
            assert!(s.lines().any(|l| l == line), "no line `{line}` in\n{s}");
        }
        assert!(!s.contains("srun"), "{s}");
    }

    #[test]
    fn a_multi_node_script_starts_one_manager_per_node_through_srun() {
        let provider = SlurmProvider::new(ProviderConfig {
            nodes_per_block: 3,
            ..ProviderConfig::default()
        });
        let s = provider.script(&request());
        let line = s.lines().find(|l| l.starts_with("exec srun")).expect(&s);
        assert!(
            line.contains("--nodes=3 --ntasks=3 --ntasks-per-node=1"),
            "{line}"
        );
        assert!(line.contains("${SLURM_JOB_ID}.${SLURM_NODEID}"), "{line}");
        // The runner's spaces survive two shells.
        let inner = line.split("bash -c ").nth(1).unwrap();
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("printf '%s\\n' {inner}")])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("'py=python3 -m htex_runner m'"), "{text}");
    }

    #[test]
    fn sbatch_and_squeue_output_parse() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("1234;cluster\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("Submitted batch job 5"), None);
        let (id, s) = parse_squeue_line("42|PENDING|PartitionDown").unwrap();
        assert_eq!(id, "42");
        assert_eq!(s.state, JobState::Pending);
        assert_eq!(s.reason.as_deref(), Some("PartitionDown"));
        let (_, s) = parse_squeue_line("43|TIMEOUT|None").unwrap();
        assert_eq!(s.state, JobState::Ended(JobEnd::Timeout));
        assert_eq!(s.reason, None);
        assert_eq!(
            parse_squeue_line("44|COMPLETING|None").unwrap().1.state,
            JobState::Running
        );
        assert!(parse_squeue_line("garbage").is_none());
    }
}
