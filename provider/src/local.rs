//! Blocks as child processes: each block starts `nodes_per_block` managers on this machine, each
//! in its own process group, with its output in the block's directory. A block runs while any
//! of its managers does; it ended `completed` when all exited 0.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::ProviderConfig;
use crate::{BlockRequest, JobEnd, JobId, JobState, JobStatus, Provider, ProviderError};

/// How long a cancelled manager has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

struct LocalBlock {
    children: Vec<Child>,
    /// Exit statuses of the children that ended.
    exits: Vec<std::process::ExitStatus>,
    cancelled_at: Option<Instant>,
}

pub struct LocalProvider {
    config: ProviderConfig,
    blocks: HashMap<JobId, LocalBlock>,
}

impl LocalProvider {
    pub fn new(config: ProviderConfig) -> LocalProvider {
        LocalProvider {
            config,
            blocks: HashMap::new(),
        }
    }

    fn reap(block: &mut LocalBlock) {
        let exits = &mut block.exits;
        // A child whose try_wait answered is reaped: it can be dropped.
        block.children.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                exits.push(status);
                false
            }
            _ => true,
        });
        if let Some(at) = block.cancelled_at {
            if at.elapsed() >= KILL_GRACE {
                for child in &block.children {
                    signal(child, libc::SIGKILL);
                }
            }
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the child's own process group (it was started with process_group(0)).
    unsafe { libc::kill(-(child.id() as i32), signal) };
}

impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn managers_per_block(&self) -> u32 {
        self.config.nodes_per_block
    }

    fn walltime(&self) -> Option<Duration> {
        None
    }

    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError> {
        let files = |source| ProviderError::Files {
            path: request.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&request.dir).map_err(files)?;
        let Some((program, args)) = request.manager.split_first() else {
            return Err(ProviderError::Config("the manager command is empty".into()));
        };
        let mut children = Vec::new();
        for i in 0..self.config.nodes_per_block {
            let out =
                File::create(request.dir.join(format!("manager-{i}.stdout"))).map_err(files)?;
            let err =
                File::create(request.dir.join(format!("manager-{i}.stderr"))).map_err(files)?;
            let spawned = Command::new(program)
                .args(args)
                .args(["--block-id".to_string(), format!("b{}", request.block)])
                .args([
                    "--manager-id".to_string(),
                    format!("local-b{}-{i}", request.block),
                ])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn();
            match spawned {
                Ok(child) => children.push(child),
                Err(source) => {
                    for child in &mut children {
                        signal(child, libc::SIGKILL);
                        let _ = child.wait();
                    }
                    return Err(ProviderError::Spawn {
                        program: program.clone(),
                        source,
                    });
                }
            }
        }
        let job = format!("local-{}", request.block);
        self.blocks.insert(
            job.clone(),
            LocalBlock {
                children,
                exits: Vec::new(),
                cancelled_at: None,
            },
        );
        Ok(job)
    }

    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        let mut states = HashMap::new();
        for job in jobs {
            let Some(block) = self.blocks.get_mut(job) else {
                continue;
            };
            Self::reap(block);
            let state = if !block.children.is_empty() {
                JobState::Running
            } else if block.cancelled_at.is_some() {
                JobState::Ended(JobEnd::Cancelled)
            } else if block.exits.iter().all(|s| s.success()) {
                JobState::Ended(JobEnd::Completed)
            } else {
                JobState::Ended(JobEnd::Failed)
            };
            let reason = block
                .exits
                .iter()
                .find(|s| !s.success())
                .map(|s| format!("a manager {s}"));
            states.insert(job.clone(), JobStatus { state, reason });
        }
        Ok(states)
    }

    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError> {
        for job in jobs {
            if let Some(block) = self.blocks.get_mut(job) {
                block.cancelled_at.get_or_insert_with(Instant::now);
                for child in &block.children {
                    signal(child, libc::SIGTERM);
                }
            }
        }
        Ok(())
    }
}

impl Drop for LocalProvider {
    /// Managers do not outlive the interchange that started them.
    fn drop(&mut self) {
        for block in self.blocks.values_mut() {
            for child in &mut block.children {
                signal(child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_block_runs_its_processes_and_ends_by_their_exits_or_a_cancel() {
        let dir = std::env::temp_dir().join(format!("htex-local-provider-{}", std::process::id()));
        let mut provider = LocalProvider::new(ProviderConfig {
            nodes_per_block: 2,
            ..ProviderConfig::default()
        });
        // `sh -c SCRIPT --block-id bN --manager-id ID`: $0 is `--block-id`.
        let quick = BlockRequest {
            block: 1,
            dir: dir.join("b1"),
            manager: vec!["sh".into(), "-c".into(), "echo \"$2 $3\"".into()],
        };
        let job = provider.submit(&quick).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = provider.status(std::slice::from_ref(&job)).unwrap();
            if s[&job].state == JobState::Ended(JobEnd::Completed) {
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = std::fs::read_to_string(dir.join("b1/manager-1.stdout")).unwrap();
        assert_eq!(out.trim(), "--manager-id local-b1-1");

        let slow = BlockRequest {
            block: 2,
            dir: dir.join("b2"),
            manager: vec!["sh".into(), "-c".into(), "sleep 600".into()],
        };
        let job = provider.submit(&slow).unwrap();
        let s = provider.status(std::slice::from_ref(&job)).unwrap();
        assert_eq!(s[&job].state, JobState::Running);
        provider.cancel(std::slice::from_ref(&job)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = provider.status(std::slice::from_ref(&job)).unwrap();
            if s[&job].state == JobState::Ended(JobEnd::Cancelled) {
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(provider.status(&["local-99".into()]).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
