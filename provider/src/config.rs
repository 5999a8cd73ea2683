//! The `[provider]` table of the interchange's configuration, named as Parsl's `SlurmProvider`
//! names its parameters where they mean the same.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ProviderError;

/// Which batch system starts the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Managers as child processes of the interchange.
    #[default]
    Local,
    Slurm,
}

/// How a block's job script starts its managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// `exec` for one node, `srun` for more.
    #[default]
    Auto,
    /// The job script becomes the manager (one node only).
    Exec,
    /// `srun` starts one manager per node.
    Srun,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Names the jobs: `htex-<label>-b<N>`.
    pub label: String,
    /// Each block's job script, stdout and stderr go to `<run_dir>/b<N>/`.
    pub run_dir: PathBuf,
    /// The htex executable managers run (default: the interchange's own).
    pub htex: Option<PathBuf>,
    /// The interchange's address as the nodes reach it (default: the address it listens on,
    /// or this host's name when that is 0.0.0.0).
    pub address: Option<String>,
    /// Slurm: `--partition`.
    pub partition: Option<String>,
    /// Slurm: `--account`.
    pub account: Option<String>,
    /// Slurm: `--qos`.
    pub qos: Option<String>,
    /// Slurm: `--constraint`.
    pub constraint: Option<String>,
    /// Slurm: `--reservation`.
    pub reservation: Option<String>,
    /// Nodes per block, one manager each (local: managers per block).
    pub nodes_per_block: u32,
    /// Slurm: `--cpus-per-task` (one task, the manager, per node).
    pub cores_per_node: Option<u32>,
    /// Slurm: `--mem`, e.g. `4G`.
    pub mem_per_node: Option<String>,
    /// Slurm: `--gpus-per-node`.
    pub gpus_per_node: Option<u32>,
    /// Slurm's `--time`: `MM`, `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS`. Blocks drain before it
    /// ends (see `[scaling] drain_margin`).
    pub walltime: Option<String>,
    /// Slurm: `--exclusive`.
    pub exclusive: bool,
    /// Extra `#SBATCH` lines, as written after `#SBATCH ` (e.g. `--gres=gpu:2`).
    pub scheduler_options: Vec<String>,
    /// Shell lines run before the managers start (module loads, a venv).
    pub worker_init: String,
    pub launcher: Launcher,
    /// Flags for every manager (slots, GPU plan, runners...), as `htex manager` takes them.
    pub manager_args: Vec<String>,
    /// The tasks one node's manager runs at once, for scaling before any manager registered
    /// (default: `cores_per_node`, else 1); the first manager's registration replaces it.
    pub slots_per_node: Option<u32>,
    /// CURVE: the secret key file managers use (its public key in the interchange's
    /// `managers/` directory); the interchange's public key is passed along with it.
    pub manager_key: Option<PathBuf>,
    /// Seconds any one `sbatch`, `squeue` or `scancel` may take.
    pub cmd_timeout_s: f64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::Local,
            label: "htex".into(),
            run_dir: PathBuf::from("htex-blocks"),
            htex: None,
            address: None,
            partition: None,
            account: None,
            qos: None,
            constraint: None,
            reservation: None,
            nodes_per_block: 1,
            cores_per_node: None,
            mem_per_node: None,
            gpus_per_node: None,
            walltime: None,
            exclusive: false,
            scheduler_options: Vec::new(),
            worker_init: String::new(),
            launcher: Launcher::Auto,
            manager_args: Vec::new(),
            slots_per_node: None,
            manager_key: None,
            cmd_timeout_s: 30.0,
        }
    }
}

impl ProviderConfig {
    pub fn validate(&self) -> Result<(), ProviderError> {
        let fail = |m: String| Err(ProviderError::Config(m));
        if self.nodes_per_block == 0 || self.nodes_per_block > 10_000 {
            return fail(format!(
                "nodes_per_block must be between 1 and 10000, not {}",
                self.nodes_per_block
            ));
        }
        if self.label.is_empty()
            || !self
                .label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return fail(format!(
                "label `{}` must be letters, digits, `-` or `_`",
                self.label
            ));
        }
        if !(self.cmd_timeout_s > 0.0 && self.cmd_timeout_s <= 3600.0) {
            return fail(format!(
                "cmd_timeout_s must be between 0 and 3600 seconds, not {}",
                self.cmd_timeout_s
            ));
        }
        if self.launcher == Launcher::Exec && self.nodes_per_block > 1 {
            return fail(format!(
                "launcher `exec` starts one manager, but nodes_per_block is {}: use `srun`",
                self.nodes_per_block
            ));
        }
        if self.kind == ProviderKind::Local && self.launcher == Launcher::Srun {
            return fail("launcher `srun` needs kind = \"slurm\"".into());
        }
        if let Some(w) = &self.walltime {
            parse_walltime(w)?;
        }
        for line in &self.scheduler_options {
            if line.contains('\n') {
                return fail(format!("scheduler option `{line}` spans lines"));
            }
        }
        if self.slots_per_node == Some(0) {
            return fail("slots_per_node must be at least 1".into());
        }
        Ok(())
    }

    /// The walltime as a duration, when one is set.
    pub fn walltime_duration(&self) -> Option<Duration> {
        self.walltime
            .as_deref()
            .and_then(|w| parse_walltime(w).ok())
    }

    /// Slots of one block, until a manager registers and tells.
    pub fn slots_per_block_estimate(&self) -> u32 {
        self.slots_per_node
            .or(self.cores_per_node)
            .unwrap_or(1)
            .max(1)
            .saturating_mul(self.nodes_per_block)
    }

    pub fn cmd_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cmd_timeout_s)
    }
}

/// Slurm's `--time` forms: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
pub fn parse_walltime(text: &str) -> Result<Duration, ProviderError> {
    let bad = || {
        ProviderError::Config(format!(
            "walltime `{text}` is not one of Slurm's forms MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, \
             D-HH:MM:SS"
        ))
    };
    let number = |s: &str| -> Result<u64, ProviderError> {
        if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Result<_, _>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86_400 + h * 3600,
        (Some(d), [h, m]) => d * 86_400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86_400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    if seconds == 0 {
        return Err(ProviderError::Config(format!("walltime `{text}` is zero")));
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltimes_in_slurms_forms() {
        let secs = |t| parse_walltime(t).map(|d| d.as_secs()).ok();
        assert_eq!(secs("5"), Some(300));
        assert_eq!(secs("1:30"), Some(90));
        assert_eq!(secs("01:00:00"), Some(3600));
        assert_eq!(secs("1-0"), Some(86_400));
        assert_eq!(secs("1-02:03"), Some(86_400 + 7200 + 180));
        assert_eq!(secs("0-00:00:10"), Some(10));
        for bad in ["", "0", "1:2:3:4", "x", "1h", "-5", "1-", "99999999"] {
            assert!(parse_walltime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_toml_table_reads_as_parsl_names_it_and_refuses_unknown_keys() {
        let config: ProviderConfig = toml::from_str(
            r#"
            kind = "slurm"
            partition = "debug"
            nodes_per_block = 2
            cores_per_node = 4
            walltime = "00:10:00"
            scheduler_options = ["--gres=gpu:1"]
            launcher = "srun"
            "#,
        )
        .unwrap();
        assert_eq!(config.kind, ProviderKind::Slurm);
        assert_eq!(config.slots_per_block_estimate(), 8);
        assert_eq!(config.walltime_duration(), Some(Duration::from_secs(600)));
        config.validate().unwrap();
        let err = toml::from_str::<ProviderConfig>("partiton = \"x\"").unwrap_err();
        assert!(err.to_string().contains("partiton"), "{err}");
        let exec_two = ProviderConfig {
            nodes_per_block: 2,
            launcher: Launcher::Exec,
            ..ProviderConfig::default()
        };
        assert!(exec_two
            .validate()
            .unwrap_err()
            .to_string()
            .contains("srun"));
    }
}
