//! The `[scaling]` table: how many blocks of managers the interchange keeps, and when it adds or
//! releases them. The loop itself is in `core/blocks.rs`.

use std::time::Duration;

use serde::Deserialize;

use crate::InterchangeError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingConfig {
    /// Blocks submitted at start, whatever the backlog.
    pub init_blocks: u32,
    /// Blocks kept however idle.
    pub min_blocks: u32,
    /// Most blocks at once (pending, running and draining ones).
    pub max_blocks: u32,
    /// Most blocks waiting in the batch queue at once: pending blocks count as capacity, so a
    /// backlog never submits a block twice.
    pub max_pending: u32,
    /// Slots wanted per task of backlog, as Parsl's: 1 = a slot for every task, 0.5 = half.
    pub parallelism: f64,
    /// A block whose managers all held no task this long is drained and released.
    pub idle_timeout_s: f64,
    /// How long a draining block's managers may take to finish before it is cancelled.
    pub drain_timeout_s: f64,
    /// A block drains this long before its walltime ends (a replacement is submitted while
    /// work remains), and takes no task whose time limit would outlast it.
    pub drain_margin_s: f64,
    /// How often the provider is asked about its blocks.
    pub poll_interval_s: f64,
    /// Waits after 1, 2, 3... failed submissions in a row (the last repeats).
    pub submit_backoff_s: Vec<f64>,
    /// Failed submissions in a row after which scaling pauses until `htex blocks --resume`.
    pub max_failures: u32,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 1,
            max_pending: 1,
            parallelism: 1.0,
            idle_timeout_s: 120.0,
            drain_timeout_s: 120.0,
            drain_margin_s: 120.0,
            poll_interval_s: 10.0,
            submit_backoff_s: vec![0.0, 30.0, 300.0, 900.0],
            max_failures: 5,
        }
    }
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value)
}

impl ScalingConfig {
    pub fn validate(&self) -> Result<(), InterchangeError> {
        let fail = |m: String| Err(InterchangeError::Config(format!("[scaling] {m}")));
        if self.max_blocks == 0 {
            return fail("max_blocks must be at least 1".into());
        }
        if self.min_blocks > self.max_blocks || self.init_blocks > self.max_blocks {
            return fail(format!(
                "min_blocks ({}) and init_blocks ({}) must be at most max_blocks ({})",
                self.min_blocks, self.init_blocks, self.max_blocks
            ));
        }
        if self.max_pending == 0 {
            return fail("max_pending must be at least 1".into());
        }
        if !(self.parallelism > 0.0 && self.parallelism <= 1.0) {
            return fail(format!(
                "parallelism must be more than 0 and at most 1, not {}",
                self.parallelism
            ));
        }
        let year = 365.0 * 86_400.0;
        let durations = [
            ("idle_timeout_s", self.idle_timeout_s),
            ("drain_timeout_s", self.drain_timeout_s),
            ("drain_margin_s", self.drain_margin_s),
            ("poll_interval_s", self.poll_interval_s),
        ];
        for (name, value) in durations.into_iter().chain(
            self.submit_backoff_s
                .iter()
                .map(|&v| ("submit_backoff_s", v)),
        ) {
            if !(value >= 0.0 && value <= year) {
                return fail(format!("{name} must be between 0 and a year, not {value}"));
            }
        }
        if self.poll_interval_s < 0.1 {
            return fail(format!(
                "poll_interval_s must be at least 0.1 s, not {}",
                self.poll_interval_s
            ));
        }
        if self.max_failures == 0 {
            return fail("max_failures must be at least 1".into());
        }
        Ok(())
    }

    pub fn idle_timeout(&self) -> Duration {
        seconds(self.idle_timeout_s)
    }

    pub fn drain_timeout(&self) -> Duration {
        seconds(self.drain_timeout_s)
    }

    pub fn drain_margin(&self) -> Duration {
        seconds(self.drain_margin_s)
    }

    pub fn poll_interval(&self) -> Duration {
        seconds(self.poll_interval_s)
    }

    /// The wait after `failures` failed submissions in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let i = (failures.max(1) - 1) as usize;
        self.submit_backoff_s
            .get(i)
            .or(self.submit_backoff_s.last())
            .map_or(Duration::ZERO, |&s| seconds(s))
    }
}
