//! CPU affinity of worker slots, with Parsl's `cpu_affinity` choices.
//!
//! A slot's worker (and everything it starts: commands, warm runners) is confined to a set of
//! the manager's own CPUs (its affinity mask, so a Slurm allocation or cpuset is respected):
//!
//! - `none`: no pinning (the default);
//! - `block`: slot i gets cores `[i·k, (i+1)·k)` of the available list, k = cores per slot;
//! - `block-reverse`: the same blocks, counted from the end of the list;
//! - `alternating`: slot i gets cores i, i+n, i+2n, ... (n slots), at most k of them;
//! - `list:A:B:...`: slot i gets the CPUs of the i-th entry, each a comma list of CPU ids or
//!   ranges (`list:0,1:2-3`).
//!
//! k defaults to ⌊available / slots⌋. Pinning matters for GPU work: a batch-1 model call launches
//! thousands of small kernels, so its time follows the CPU that launches them.

use std::fmt;
use std::str::FromStr;

/// `[0, 2, 3, 4]` → `0,2-4`; the protocol owns it, since `htex status` prints slots' CPUs too.
pub use htex_protocol::format_cpu_list;

/// How slots are pinned to CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    #[default]
    None,
    Block,
    BlockReverse,
    Alternating,
    /// The CPUs of each slot, in slot order.
    List(Vec<Vec<u32>>),
}

/// Why CPUs cannot be given to the slots as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AffinityError {
    #[error("cannot read CPU affinity `{given}`: {reason}; use none, block, block-reverse, alternating or list:0,1:2-3")]
    Syntax { given: String, reason: String },
    #[error("--cores-per-slot must be at least 1")]
    ZeroCores,
    #[error("{slots} slots with {per_slot} core(s) each need {needed} CPUs; this manager may use {available} ({list})")]
    NotEnoughCpus {
        slots: usize,
        per_slot: usize,
        needed: usize,
        available: usize,
        list: String,
    },
    #[error("the affinity list has {entries} entries for {slots} slots; give one per slot")]
    ListLength { entries: usize, slots: usize },
    #[error("CPU {cpu} (slot {slot}) is not one this manager may use ({list})")]
    Unavailable { cpu: u32, slot: usize, list: String },
    #[error("cannot read this process's CPU affinity: {0}")]
    Query(String),
}

impl FromStr for CpuAffinity {
    type Err = AffinityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = |reason: String| AffinityError::Syntax {
            given: s.to_string(),
            reason,
        };
        match s.trim() {
            "none" | "" => Ok(CpuAffinity::None),
            "block" => Ok(CpuAffinity::Block),
            "block-reverse" => Ok(CpuAffinity::BlockReverse),
            "alternating" => Ok(CpuAffinity::Alternating),
            other => {
                let Some(list) = other.strip_prefix("list:") else {
                    return Err(syntax("unknown choice".into()));
                };
                let slots = list
                    .split(':')
                    .map(|entry| parse_cpu_list(entry).map_err(&syntax))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CpuAffinity::List(slots))
            }
        }
    }
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::None => f.write_str("none"),
            CpuAffinity::Block => f.write_str("block"),
            CpuAffinity::BlockReverse => f.write_str("block-reverse"),
            CpuAffinity::Alternating => f.write_str("alternating"),
            CpuAffinity::List(slots) => {
                let entries: Vec<String> = slots.iter().map(|c| format_cpu_list(c)).collect();
                write!(f, "list:{}", entries.join(":"))
            }
        }
    }
}

/// `0,2-4` → [0, 2, 3, 4] (sorted, no duplicates).
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err("an empty CPU entry".into());
        }
        let number = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{x}` is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("the range `{part}` runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs of each of `slots` slots (empty vectors for `none`), from the `available` CPUs.
pub fn assign(
    affinity: &CpuAffinity,
    available: &[u32],
    slots: usize,
    cores_per_slot: Option<usize>,
) -> Result<Vec<Vec<u32>>, AffinityError> {
    let list = || format_cpu_list(available);
    let per_slot = match cores_per_slot {
        Some(0) => return Err(AffinityError::ZeroCores),
        Some(k) => k,
        None => (available.len() / slots.max(1)).max(1),
    };
    let needed = per_slot * slots;
    let too_few = || AffinityError::NotEnoughCpus {
        slots,
        per_slot,
        needed,
        available: available.len(),
        list: list(),
    };
    match affinity {
        CpuAffinity::None => Ok(vec![Vec::new(); slots]),
        CpuAffinity::Block | CpuAffinity::BlockReverse | CpuAffinity::Alternating
            if needed > available.len() =>
        {
            Err(too_few())
        }
        CpuAffinity::Block => Ok(available
            .chunks(per_slot)
            .take(slots)
            .map(<[u32]>::to_vec)
            .collect()),
        CpuAffinity::BlockReverse => {
            let mut blocks: Vec<Vec<u32>> = available
                .rchunks(per_slot)
                .take(slots)
                .map(<[u32]>::to_vec)
                .collect();
            blocks.iter_mut().for_each(|b| b.sort_unstable());
            Ok(blocks)
        }
        CpuAffinity::Alternating => Ok((0..slots)
            .map(|i| {
                available
                    .iter()
                    .copied()
                    .skip(i)
                    .step_by(slots)
                    .take(per_slot)
                    .collect()
            })
            .collect()),
        CpuAffinity::List(entries) => {
            if entries.len() != slots {
                return Err(AffinityError::ListLength {
                    entries: entries.len(),
                    slots,
                });
            }
            for (slot, cpus) in entries.iter().enumerate() {
                if let Some(&cpu) = cpus.iter().find(|c| !available.contains(c)) {
                    return Err(AffinityError::Unavailable {
                        cpu,
                        slot,
                        list: list(),
                    });
                }
            }
            Ok(entries.clone())
        }
    }
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Result<Vec<u32>, AffinityError> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>().
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(AffinityError::Query(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok((0..libc::CPU_SETSIZE as u32)
            .filter(|&cpu| libc::CPU_ISSET(cpu as usize, &set))
            .collect())
    }
}

/// Confines the calling process to `cpus` (async-signal-safe: used between fork and exec).
pub fn pin_current_process(cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: only stack data and one system call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu as usize, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn parses_every_choice() {
        assert_eq!("none".parse(), Ok(CpuAffinity::None));
        assert_eq!("block".parse(), Ok(CpuAffinity::Block));
        assert_eq!("block-reverse".parse(), Ok(CpuAffinity::BlockReverse));
        assert_eq!("alternating".parse(), Ok(CpuAffinity::Alternating));
        assert_eq!(
            "list:0,1:2-4:7".parse(),
            Ok(CpuAffinity::List(vec![vec![0, 1], vec![2, 3, 4], vec![7]]))
        );
        for bad in ["blocks", "list:", "list:0:x", "list:3-1", "list:0,,1"] {
            let err = bad.parse::<CpuAffinity>().unwrap_err();
            assert!(matches!(err, AffinityError::Syntax { .. }), "{bad}: {err}");
        }
        let list: CpuAffinity = "list:0-3,5:8".parse().unwrap();
        assert_eq!(list.to_string(), "list:0-3,5:8");
    }

    #[test]
    fn block_alternating_and_reverse() {
        assert_eq!(
            assign(&CpuAffinity::Block, &cpus(8), 3, None).unwrap(),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(
            assign(&CpuAffinity::BlockReverse, &cpus(8), 3, None).unwrap(),
            vec![vec![6, 7], vec![4, 5], vec![2, 3]]
        );
        assert_eq!(
            assign(&CpuAffinity::Alternating, &cpus(8), 3, None).unwrap(),
            vec![vec![0, 3], vec![1, 4], vec![2, 5]]
        );
        assert_eq!(
            assign(&CpuAffinity::Block, &cpus(16), 4, Some(1)).unwrap(),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        // A cpuset with holes: the available list is what is split.
        assert_eq!(
            assign(&CpuAffinity::Block, &[2, 3, 8, 9], 2, None).unwrap(),
            vec![vec![2, 3], vec![8, 9]]
        );
        assert_eq!(
            assign(&CpuAffinity::None, &cpus(2), 3, None).unwrap(),
            vec![Vec::<u32>::new(); 3]
        );
    }

    #[test]
    fn impossible_requests_are_refused() {
        let err = assign(&CpuAffinity::Block, &cpus(2), 3, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "3 slots with 1 core(s) each need 3 CPUs; this manager may use 2 (0-1)"
        );
        let err = assign(&CpuAffinity::Alternating, &cpus(8), 2, Some(5)).unwrap_err();
        assert!(matches!(
            err,
            AffinityError::NotEnoughCpus { needed: 10, .. }
        ));
        assert_eq!(
            assign(&CpuAffinity::Block, &cpus(8), 2, Some(0)),
            Err(AffinityError::ZeroCores)
        );
        let list: CpuAffinity = "list:0:1".parse().unwrap();
        assert_eq!(
            assign(&list, &cpus(8), 3, None),
            Err(AffinityError::ListLength {
                entries: 2,
                slots: 3
            })
        );
        let list: CpuAffinity = "list:0:9".parse().unwrap();
        assert_eq!(
            assign(&list, &cpus(4), 2, None).unwrap_err().to_string(),
            "CPU 9 (slot 1) is not one this manager may use (0-3)"
        );
    }

    #[test]
    fn this_process_has_cpus() {
        let available = available_cpus().unwrap();
        assert!(!available.is_empty());
        assert!(available.windows(2).all(|w| w[0] < w[1]));
    }
}
