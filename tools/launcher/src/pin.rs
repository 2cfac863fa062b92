//! `--pin`: which CPUs each local rank is bound to, from the topology crate's hwloc probe.
//!
//! The launcher binds a short-lived thread to the rank's CPUs and spawns the rank from that
//! thread; a new process inherits the CPU affinity of the thread that created it.

use topology::hw::{self, HwInfo};

/// Where one local rank is bound and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// OS indices of the CPUs.
    pub cpus: Vec<usize>,
    /// What the CPUs are: "near RDMA device mlx5_0 (NUMA 0)", "NUMA node 1", ...
    pub why: String,
}

/// Chooses a binding per local rank: the CPUs nearest an RDMA device (round-robin over the
/// devices that have known CPUs), else round-robin over the NUMA nodes that have CPUs, else
/// every CPU of the machine.
pub fn plan(info: &HwInfo, local_ranks: usize) -> Vec<Binding> {
    let nics: Vec<_> = info
        .rdma_devices
        .iter()
        .filter(|d| !d.cpus.is_empty())
        .collect();
    let numa: Vec<_> = info
        .numa_nodes
        .iter()
        .filter(|n| !n.cpus.is_empty())
        .collect();
    (0..local_ranks)
        .map(|r| {
            if !nics.is_empty() {
                let d = nics[r % nics.len()];
                Binding {
                    cpus: d.cpus.clone(),
                    why: format!(
                        "nearest RDMA device {} (NUMA {})",
                        d.name,
                        hw::format_ranges(&d.numa_nodes)
                    ),
                }
            } else if !numa.is_empty() {
                let n = numa[r % numa.len()];
                Binding {
                    cpus: n.cpus.clone(),
                    why: format!("NUMA node {} (no RDMA device)", n.os_index),
                }
            } else {
                Binding {
                    cpus: info.cpus.clone(),
                    why: "all CPUs (no NUMA information)".into(),
                }
            }
        })
        .collect()
}

/// Probes the machine and plans the bindings, or returns `None` after a warning on stderr
/// when hwloc cannot probe it (the ranks then start unpinned).
pub fn probe_and_plan(local_ranks: usize) -> Option<Vec<Binding>> {
    match hw::probe() {
        Ok(info) => Some(plan(&info, local_ranks)),
        Err(e) => {
            eprintln!(
                "launcher: warning: --pin: cannot probe the hardware ({e}); ranks start unpinned"
            );
            None
        }
    }
}

/// Binds the calling thread to `cpus`; on failure prints a warning and returns false.
pub fn bind_this_thread(rank: u32, binding: &Binding) -> bool {
    match hw::bind_current_thread(&binding.cpus) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("launcher: warning: --pin: rank {rank}: {e}; starting it unpinned");
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use topology::hw::{NumaNode, RdmaDevice};

    fn machine(nics: Vec<RdmaDevice>) -> HwInfo {
        HwInfo {
            cpus: (0..8).collect(),
            numa_nodes: vec![
                NumaNode {
                    os_index: 0,
                    cpus: (0..4).collect(),
                    memory_bytes: None,
                },
                NumaNode {
                    os_index: 1,
                    cpus: (4..8).collect(),
                    memory_bytes: None,
                },
            ],
            rdma_devices: nics,
        }
    }

    #[test]
    fn round_robin_over_numa_without_nic() {
        let b = plan(&machine(vec![]), 3);
        assert_eq!(b[0].cpus, vec![0, 1, 2, 3]);
        assert_eq!(b[1].cpus, vec![4, 5, 6, 7]);
        assert_eq!(b[2].cpus, vec![0, 1, 2, 3]);
        assert!(b[1].why.contains("NUMA node 1"));
    }

    #[test]
    fn near_the_nic_when_there_is_one() {
        let nic = RdmaDevice {
            name: "mlx5_0".into(),
            cpus: (4..8).collect(),
            numa_nodes: vec![1],
        };
        let b = plan(&machine(vec![nic]), 2);
        assert!(b.iter().all(|b| b.cpus == vec![4, 5, 6, 7]));
        assert!(b[0].why.contains("mlx5_0"), "{}", b[0].why);
    }
}
