//! Per-node accounting of a run and a network-time model that estimates the run's end-to-end
//! time on a real cluster from what this machine measured.
//!
//! Each node's account holds what it put on the network (bytes, messages), what it did
//! (interactions, local steps), and its time: `compute_seconds` is the CPU time of the node's
//! thread (gradient computation, optimizer, averaging arithmetic, encoding); `wait_seconds` is the
//! rest of its wall time inside training (blocked on peers, or descheduled: on a machine with fewer
//! cores than nodes this is mostly the latter).
//!
//! The model replays each node's traffic on a network of latency `alpha` and bandwidth `beta`:
//! a node spends `messages * alpha + bytes * 8 / beta` communicating, and
//! `compute_seconds + communication` in total, or `max(compute, communication)` for algorithms
//! that overlap the two (LASGD's background all-reduce). Synchronous algorithms wait for their
//! slowest node and asynchronous ones finish when their last node does, so the run's modelled
//! time is the maximum over nodes. It ignores contention between nodes sharing a link and assumes
//! one node per machine, each with the CPU this machine gave one thread.

use serde::Serialize;
use swarm_core::NodeStats;

use crate::config::Algo;

/// A network the run's traffic is replayed on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Network {
    /// Short name, e.g. `10GbE`.
    pub name: &'static str,
    /// One-way latency of a message, seconds.
    pub latency_seconds: f64,
    /// Link bandwidth, bits per second.
    pub bits_per_second: f64,
}

/// 100 Gb/s InfiniBand EDR (verbs; ~2 us per message).
pub const IB_100G: Network = Network {
    name: "IB-100G",
    latency_seconds: 2e-6,
    bits_per_second: 100e9,
};
/// 25 Gb/s Ethernet (RoCE or kernel TCP; ~10 us per message).
pub const ETH_25G: Network = Network {
    name: "25GbE",
    latency_seconds: 10e-6,
    bits_per_second: 25e9,
};
/// 10 Gb/s Ethernet (kernel TCP; ~30 us per message).
pub const ETH_10G: Network = Network {
    name: "10GbE",
    latency_seconds: 30e-6,
    bits_per_second: 10e9,
};
/// The networks reports show, fastest first.
pub const NETWORKS: [Network; 3] = [IB_100G, ETH_25G, ETH_10G];

/// What one node did during a run (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeAccount {
    /// Bytes this node moved over the network on its own initiative (sent, or pulled from peers).
    pub bytes_sent: u64,
    /// Messages behind those bytes (one latency each in the model).
    pub messages: u64,
    /// Interactions: averagings with a peer, all-reduce rounds, or pushes to a shared model.
    pub interactions: u64,
    /// Local SGD steps.
    pub local_steps: u64,
    /// CPU time of the node's thread inside training.
    pub compute_seconds: f64,
    /// Wall time inside training not spent on the CPU (waiting on peers or descheduled).
    pub wait_seconds: f64,
}

impl NodeAccount {
    /// Bits this node sent.
    pub fn bits_sent(&self) -> u64 {
        8 * self.bytes_sent
    }

    /// Seconds this node would spend communicating on `net`.
    pub fn communication_seconds(&self, net: &Network) -> f64 {
        self.messages as f64 * net.latency_seconds
            + 8.0 * self.bytes_sent as f64 / net.bits_per_second
    }

    /// Seconds this node would take on `net`: compute plus communication, or their maximum when
    /// the algorithm overlaps them.
    pub fn modelled_seconds(&self, net: &Network, overlap: bool) -> f64 {
        let comm = self.communication_seconds(net);
        if overlap {
            self.compute_seconds.max(comm)
        } else {
            self.compute_seconds + comm
        }
    }
}

/// Whether `algo` overlaps communication with computation in the model.
pub fn overlaps(algo: Algo) -> bool {
    matches!(algo, Algo::Lasgd)
}

/// A run's modelled end-to-end time on `net`: the slowest node's.
pub fn modelled_seconds(accounts: &[NodeAccount], net: &Network, algo: Algo) -> f64 {
    accounts
        .iter()
        .map(|a| a.modelled_seconds(net, overlaps(algo)))
        .fold(0.0, f64::max)
}

/// Bytes and messages of one ring all-reduce of `dim` f32 values, per node: reduce-scatter and
/// all-gather, `2 (n - 1)` messages of `4 dim / n` bytes.
pub fn ring_allreduce_per_node(n: usize, dim: usize) -> (u64, u64) {
    if n <= 1 {
        return (0, 0);
    }
    let n64 = n as u64;
    (2 * (n64 - 1) * 4 * dim as u64 / n64, 2 * (n64 - 1))
}

/// Node `stats` plus measured times as an account. Algorithms whose threads exchange data through
/// shared memory report what the equivalent network transfers would be in `stats`
/// (`bytes_sent()`, `messages`); synchronous all-reduce SGD reports nothing, and is charged one
/// ring all-reduce of the gradient per step here.
pub fn account(
    algo: Algo,
    n: usize,
    dim: usize,
    stats: &NodeStats,
    cpu_seconds: f64,
    wall_seconds: f64,
) -> NodeAccount {
    let (bytes_sent, messages) = match algo {
        Algo::Allreduce => {
            let (b, m) = ring_allreduce_per_node(n, dim);
            (b * stats.interactions, m * stats.interactions)
        }
        _ => (stats.bytes_sent(), stats.messages),
    };
    NodeAccount {
        bytes_sent,
        messages,
        interactions: stats.interactions,
        local_steps: stats.local_steps,
        compute_seconds: cpu_seconds,
        wait_seconds: (wall_seconds - cpu_seconds).max(0.0),
    }
}

/// One epoch's accounts and modelled times, as `accounting.json` holds them.
#[derive(Debug, Clone, Serialize)]
pub struct EpochAccounting<'a> {
    /// Epochs completed.
    pub epoch: usize,
    /// `(network, seconds)`: the run's modelled time so far on each of [`NETWORKS`].
    pub modelled_seconds: Vec<(&'static str, f64)>,
    /// Every node's cumulative account.
    pub nodes: &'a [NodeAccount],
}

/// Writes `accounting.json` (one entry per epoch) into `out`.
pub fn write_accounting(
    out: &std::path::Path,
    algo: Algo,
    epochs: &[Vec<NodeAccount>],
) -> Result<(), crate::TrainError> {
    let rows: Vec<EpochAccounting<'_>> = epochs
        .iter()
        .enumerate()
        .map(|(k, nodes)| EpochAccounting {
            epoch: k + 1,
            modelled_seconds: NETWORKS
                .iter()
                .map(|net| (net.name, modelled_seconds(nodes, net, algo)))
                .collect(),
            nodes,
        })
        .collect();
    let path = out.join("accounting.json");
    let json = serde_json::to_string_pretty(&rows)
        .map_err(|e| crate::TrainError::Output(format!("{}: {e}", path.display())))?;
    std::fs::write(&path, json + "\n")
        .map_err(|e| crate::TrainError::Output(format!("cannot write {}: {e}", path.display())))
}

/// CPU time consumed so far by the calling thread (Linux: `/proc/thread-self/schedstat`, in
/// nanoseconds); `None` where that file does not exist.
pub fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_bandwidth_add_up_per_message_and_byte() {
        let a = NodeAccount {
            bytes_sent: 1_250_000_000, // 10 Gbit
            messages: 1000,
            compute_seconds: 2.0,
            ..NodeAccount::default()
        };
        // 10 Gbit at 10 Gb/s is 1 s, plus 1000 x 30 us.
        assert!((a.communication_seconds(&ETH_10G) - 1.03).abs() < 1e-9);
        assert!((a.modelled_seconds(&ETH_10G, false) - 3.03).abs() < 1e-9);
        assert!((a.modelled_seconds(&ETH_10G, true) - 2.0).abs() < 1e-9);
        assert!(a.modelled_seconds(&IB_100G, false) < a.modelled_seconds(&ETH_25G, false));
        let slow = NodeAccount {
            compute_seconds: 5.0,
            ..NodeAccount::default()
        };
        assert_eq!(modelled_seconds(&[a, slow], &IB_100G, Algo::Swarm), 5.0);
    }

    #[test]
    fn allreduce_is_charged_the_ring_volume() {
        assert_eq!(ring_allreduce_per_node(4, 1000), (6000, 6));
        assert_eq!(ring_allreduce_per_node(1, 1000), (0, 0));
        let stats = NodeStats {
            interactions: 10,
            local_steps: 10,
            ..NodeStats::default()
        };
        let a = account(Algo::Allreduce, 4, 1000, &stats, 1.0, 3.0);
        assert_eq!((a.bytes_sent, a.messages), (60_000, 60));
        assert_eq!(a.wait_seconds, 2.0);
        // The kernel updates a thread's runtime at ticks and switches: burn some CPU first.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::thread::yield_now();
        assert!(thread_cpu_seconds().is_some_and(|s| s > 0.0), "{x}");
    }
}
