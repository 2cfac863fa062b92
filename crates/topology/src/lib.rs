//! Communication-graph generators, spectral analysis and hardware locality for SwarmSGD.
//!
//! SwarmSGD nodes average their models with a uniformly random neighbour on an undirected
//! communication graph; the graph's spectral gap (the second smallest eigenvalue `lambda2` of its
//! Laplacian) governs how fast models mix. This crate provides
//!
//! - [`Graph`]: a simple undirected graph in compressed adjacency form (sorted neighbour lists),
//!   with uniform neighbour and edge sampling ([`Graph::sample_neighbour`], [`Graph::sample_edge`]);
//! - [`TopologySpec`]: parseable descriptions (`ring`, `regular:8`, `slimfly:5`, `file:g.txt`, ...)
//!   that build deterministic graphs for a seed ([`TopologySpec::build`]);
//! - [`analysis`]: connectivity, regularity, degree statistics, diameter, spectral gap and the
//!   gossip-averaging mixing bound, gathered in [`Stats`];
//! - [`export`]: edge list, DOT and JSON output (and edge-list parsing);
//! - [`spectral`]: a dense symmetric eigen-solver and a thick-restart Lanczos solver;
//! - [`hw`]: NUMA / NIC locality through `hwlocality` (feature `hwloc`, off by default: it links
//!   the system libhwloc).
//!
//! ```
//! use swarmsgd_topology::{analysis::Stats, TopologySpec};
//!
//! let spec: TopologySpec = "regular:4".parse()?;
//! let g = spec.build(100, 7)?;
//! assert_eq!(g.n(), 100);
//! assert!(g.is_regular().is_some());
//! let stats = Stats::compute(&g);
//! assert!(stats.connected);
//! println!("{stats}");
//! # Ok::<(), swarmsgd_topology::TopologyError>(())
//! ```

pub mod analysis;
pub mod export;
mod generators;
mod graph;
pub mod hw;
pub mod spectral;

pub use analysis::Stats;
pub use generators::{Kind, TopologySpec};
pub use graph::{DegreeStats, Graph};

/// Every error this crate returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A generator parameter (or the node count) is impossible; names the parameter.
    #[error("invalid parameter `{param}`: {reason}")]
    InvalidParameter {
        /// The offending parameter, e.g. `n`, `r`, `p`, `q`.
        param: &'static str,
        /// Why the value is impossible.
        reason: String,
    },
    /// A topology specification string could not be parsed.
    #[error("cannot parse topology `{spec}`: {reason}")]
    Parse {
        /// The string given.
        spec: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A malformed line in an edge-list file (1-based line number).
    #[error("{path}:{line}: {reason}")]
    EdgeList {
        /// The file (or `<input>` for in-memory text).
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong with the line.
        reason: String,
    },
    /// An edge list or edge set that does not describe a simple graph.
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// A randomized generator gave up (e.g. Erdos-Renyi below the connectivity threshold).
    #[error("generation failed: {0}")]
    Generation(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialization failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// Hardware-locality discovery or binding failed.
    #[error("hardware locality: {context}: {source}")]
    Hardware {
        /// What was being done, e.g. `binding a buffer to NUMA nodes [1]`.
        context: String,
        /// The error hwloc (through `hwlocality`) reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Hardware locality is not built in: the crate was compiled without its `hwloc` feature.
    /// Callers that only pin opportunistically can treat this as "nothing to do".
    #[error("hardware locality support not compiled in (enable the `hwloc` feature of swarmsgd-topology)")]
    HardwareUnsupported,
}

/// Compiles and runs the README's code blocks as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub(crate) fn invalid(param: &'static str, reason: impl Into<String>) -> TopologyError {
    TopologyError::InvalidParameter {
        param,
        reason: reason.into(),
    }
}
