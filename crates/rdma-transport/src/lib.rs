//! SwarmSGD's one-sided transport: [`swarmsgd_core::Transport`] over RDMA verbs (InfiniBand, RoCE,
//! soft-RoCE), on `sideway`.
//!
//! A node's window lives in two registered memory regions:
//! - the **published region** (peers may only READ it): a seqlock word (0 = never published, odd
//!   = a publish is under way, even = stable, version = word / 2), the payload length, one
//!   *consumed* counter per inbox slot, then the payload;
//! - the **inbox region** (peers may only WRITE it): one slot per neighbour, each a deposit word
//!   (`count << 32 | length`) followed by the payload.
//!
//! A read of a neighbour is three RDMA READs on that neighbour's queue pair, fenced so that they
//! execute in order: the seqlock word and length, the payload (in chunks, several in flight), the
//! seqlock word again. Equal even words mean the copy is consistent; otherwise the read is retried
//! and finally reported as [`ReadOutcome::Torn`](swarmsgd_core::ReadOutcome). A deposit first
//! READs the owner's consumed counter for this writer's slot (skipped when the slot is already
//! known to be free), WRITEs the payload, and once that completed WRITEs the deposit word: the
//! owner never sees a deposit word before its payload. The owner folds deposits and publishes the
//! consumed counters with [`take_inbox`](swarmsgd_core::Transport::take_inbox) /
//! [`release_inbox`](swarmsgd_core::Transport::release_inbox). Exactly one writer per slot means
//! no remote atomics are needed; [`verbs::Op`] still offers compare-and-swap and fetch-and-add.
//!
//! Every operation is started and then advanced by [`poll`](swarmsgd_core::Transport::poll), which
//! drains the completion queue without blocking, so compute overlaps communication. Errors are
//! values: a failed completion (wrong rkey, peer gone, QP in error) or an operation that does not
//! complete within [`RdmaConfig::op_timeout`] marks that peer unreachable (logged with `tracing`
//! at `warn`), and every later operation on it completes with
//! [`TransportError::Unreachable`](swarmsgd_core::TransportError); other peers are unaffected.
//!
//! Setting up a node is three steps, so the trainer can exchange endpoint records through any
//! key-value store:
//!
//! ```no_run
//! use swarmsgd_rdma::{RdmaConfig, RdmaEndpoint};
//! # fn publish_to_store(_: &[u8]) {}
//! # fn fetch_from_store(_: usize) -> Vec<u8> { Vec::new() }
//! let cfg = RdmaConfig::from_env()?; // SWARM_RDMA_DEVICE, SWARM_RDMA_IP, SWARM_RDMA_GID_INDEX
//! let neighbours = vec![1, 3];
//! let mut ep = RdmaEndpoint::new(0, &neighbours, 4 << 20, &cfg)?;
//! publish_to_store(&ep.record());
//! let records: Vec<Vec<u8>> = neighbours.iter().map(|&j| fetch_from_store(j)).collect();
//! ep.connect(&records)?;
//! # Ok::<(), swarmsgd_rdma::RdmaError>(())
//! ```
//!
//! All `unsafe` code is in [`verbs`], the lowest module.
//!
//! Features: `numa` (default) places the window near the NIC through swarmsgd-topology's hwloc
//! binding ([`NumaPlacement`]; needs libhwloc and libudev headers to build); without it
//! [`NumaPlacement::NearDevice`] keeps the operating system's policy and
//! [`NumaPlacement::Nodes`] fails with [`RdmaError::Config`]. `cli` makes
//! [`bench::BenchArgs`] a `clap::Args`.

pub mod bench;
mod endpoint;
mod record;
pub mod verbs;

use std::net::Ipv4Addr;
use std::time::Duration;

pub use endpoint::{RdmaEndpoint, RdmaStats};
pub use record::{EndpointRecord, RECORD_MAGIC, RECORD_VERSION};
pub use verbs::DeviceSelector;

/// Errors of the RDMA transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// No usable RDMA device (no verbs stack, no device of that name, no GID for that address).
    #[error("no RDMA device: {0}")]
    NoDevice(String),
    /// A verbs call failed. `source` is sideway's error, whose own source is usually the OS
    /// error (e.g. `ENOMEM` from registering memory beyond `ulimit -l`); the message renders the
    /// whole chain.
    #[error("verbs: {call}: {}", verbs::chain(&**source))]
    Call {
        /// What was being done, e.g. `creating a queue pair`.
        call: String,
        /// The error sideway returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A verbs-level failure found by this crate (a failed completion in the bench, no
    /// completion in time, memory for a region).
    #[error("verbs: {0}")]
    Verbs(String),
    /// A range outside a registered region or a peer's advertised buffer.
    #[error("out of range: {0}")]
    Range(String),
    /// An endpoint record that is not a valid record of this protocol version.
    #[error("invalid endpoint record: {0}")]
    Record(String),
    /// An impossible configuration or argument.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// How an endpoint uses the device.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// Which device, port and GID.
    pub device: DeviceSelector,
    /// Payload bytes per RDMA READ/WRITE work request (larger payloads are split; at most
    /// [`RdmaConfig::max_chunks`] requests per payload).
    pub chunk: usize,
    /// Most work requests per payload.
    pub max_chunks: usize,
    /// How many times a read retries a copy that changed under it before reporting it torn.
    pub read_attempts: usize,
    /// An operation with no completion within this time marks its peer unreachable.
    pub op_timeout: Duration,
    /// Verbs ACK timeout exponent (4.096 us * 2^x per try; default 16, 268 ms). Raise it where
    /// the transport itself is slow: under qemu's emulation a 16 MiB transfer outlasts 268 ms,
    /// the resulting spurious retry stalled the Debian 6.1 rxe, and the harness uses 20 (4.3 s).
    pub ack_timeout: u8,
    /// Transport retries before a request fails (at most 7).
    pub retries: u8,
    /// Where the window's pages live.
    pub numa: NumaPlacement,
}

/// Where an endpoint's registered window (published model and inbox) is placed in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NumaPlacement {
    /// On the NUMA nodes hwloc reports nearest the device, so the NIC's DMA stays local;
    /// nothing where hwloc does not place the device (soft-RoCE, single-node machines) or
    /// without the `numa` feature, and a warning if binding fails.
    #[default]
    NearDevice,
    /// The operating system's default policy (first touch).
    Default,
    /// Bound to these NUMA nodes (OS indices); failing to bind is an error (always, without the
    /// `numa` feature).
    Nodes(Vec<usize>),
}

impl std::str::FromStr for NumaPlacement {
    type Err = String;

    /// `auto` (near the device), `off` (default policy) or a comma-separated node list `0,1`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" | "near-device" => Ok(NumaPlacement::NearDevice),
            "off" | "default" => Ok(NumaPlacement::Default),
            list => list
                .split(',')
                .map(|n| n.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map(NumaPlacement::Nodes)
                .map_err(|_| "expected auto, off or NUMA node indices such as 0,1".to_string()),
        }
    }
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: DeviceSelector::default(),
            chunk: 1 << 20,
            max_chunks: 32,
            read_attempts: 64,
            op_timeout: Duration::from_secs(60),
            ack_timeout: 16,
            retries: 7,
            numa: NumaPlacement::default(),
        }
    }
}

impl RdmaConfig {
    /// The default configuration with the device chosen by environment variables:
    /// `SWARM_RDMA_DEVICE` (name), `SWARM_RDMA_IP` (IPv4 address whose GID to use),
    /// `SWARM_RDMA_GID_INDEX`, `SWARM_RDMA_PORT`; the window's placement by `SWARM_RDMA_NUMA`
    /// (`auto`, `off` or node indices, see [`NumaPlacement`]); the ACK timeout exponent by
    /// `SWARM_RDMA_ACK_TIMEOUT` (see [`RdmaConfig::ack_timeout`]).
    pub fn from_env() -> Result<Self, RdmaError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`RdmaConfig::from_env`], with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, RdmaError> {
        fn parse<T: std::str::FromStr>(key: &str, v: Option<String>) -> Result<Option<T>, RdmaError>
        where
            T::Err: std::fmt::Display,
        {
            v.filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<T>()
                        .map_err(|e| RdmaError::Config(format!("{key}={s:?}: {e}")))
                })
                .transpose()
        }
        let mut cfg = RdmaConfig::default();
        cfg.device.name = var("SWARM_RDMA_DEVICE").filter(|s| !s.is_empty());
        cfg.device.ipv4 = parse::<Ipv4Addr>("SWARM_RDMA_IP", var("SWARM_RDMA_IP"))?;
        cfg.device.gid_index = parse::<u8>("SWARM_RDMA_GID_INDEX", var("SWARM_RDMA_GID_INDEX"))?;
        cfg.device.port = parse::<u8>("SWARM_RDMA_PORT", var("SWARM_RDMA_PORT"))?;
        if let Some(numa) = parse::<NumaPlacement>("SWARM_RDMA_NUMA", var("SWARM_RDMA_NUMA"))? {
            cfg.numa = numa;
        }
        if let Some(t) = parse::<u8>("SWARM_RDMA_ACK_TIMEOUT", var("SWARM_RDMA_ACK_TIMEOUT"))? {
            if t > 31 {
                return Err(RdmaError::Config(format!(
                    "SWARM_RDMA_ACK_TIMEOUT={t}: the exponent is 0..=31 (4.096 us * 2^x)"
                )));
            }
            cfg.ack_timeout = t;
        }
        Ok(cfg)
    }
}

/// Whether this host has an RDMA device the default configuration can open. Tests use it to skip
/// with a clear message outside the soft-RoCE VM.
pub fn device_available(cfg: &RdmaConfig) -> Result<(), RdmaError> {
    verbs::Device::open(&cfg.device).map(|_| ())
}

/// The README's example, compiled as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<RdmaConfig, RdmaError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RdmaConfig::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_sets_device_numa_and_ack_timeout() {
        let cfg = vars(&[
            ("SWARM_RDMA_DEVICE", "mlx5_1"),
            ("SWARM_RDMA_IP", "10.0.0.7"),
            ("SWARM_RDMA_NUMA", "1,3"),
            ("SWARM_RDMA_ACK_TIMEOUT", "20"),
        ])
        .unwrap();
        assert_eq!(cfg.device.name.as_deref(), Some("mlx5_1"));
        assert_eq!(cfg.device.ipv4, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(cfg.numa, NumaPlacement::Nodes(vec![1, 3]));
        assert_eq!(cfg.ack_timeout, 20);
        let default = vars(&[]).unwrap();
        assert_eq!(default.numa, NumaPlacement::NearDevice);
        assert_eq!(default.ack_timeout, 16);
        assert_eq!(
            vars(&[("SWARM_RDMA_NUMA", "off")]).unwrap().numa,
            NumaPlacement::Default
        );
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        for (key, value) in [
            ("SWARM_RDMA_NUMA", "near"),
            ("SWARM_RDMA_ACK_TIMEOUT", "32"),
            ("SWARM_RDMA_ACK_TIMEOUT", "x"),
            ("SWARM_RDMA_IP", "10.0.0"),
        ] {
            let err = vars(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }
}
