//! SwarmSGD's portable transport: [`swarmsgd_core::Transport`] over TCP, for hosts without verbs.
//!
//! Each [`TcpEndpoint`] runs a small server that owns the node's window (the published payload and
//! its version, and one inbox slot per peer) and answers peers' requests: read a byte range of the
//! published payload, deposit a payload into the caller's inbox slot, ask whether that slot is
//! free. The node's own [`publish`](swarmsgd_core::Transport::publish),
//! [`take_inbox`](swarmsgd_core::Transport::take_inbox) and
//! [`release_inbox`](swarmsgd_core::Transport::release_inbox) act on the window directly.
//! Reads and writes to peers are started, carried out by one client thread per peer, and
//! returned by [`poll`](swarmsgd_core::Transport::poll), so compute overlaps communication.
//!
//! The semantics are those of swarm-core's in-process transport: versions count publishes (1 for
//! the first), a window never published reads as [`ReadOutcome::NotPublished`](swarmsgd_core::ReadOutcome),
//! a deposit into a slot whose previous deposit has not been released is refused with
//! [`WriteOutcome::SlotBusy`](swarmsgd_core::WriteOutcome), reads must start at a multiple of 8.
//! A publish fills a buffer no reader holds and swaps it in under the window's lock; the server
//! answers a read from the buffer published when the read arrived, so a copy is never torn.
//!
//! Every byte from the network is hostile until proven otherwise: a connection must open with a
//! handshake carrying the magic, the protocol version, the job id and the per-job secret
//! ([`JobAuth`]) within the I/O timeout, or it is refused and logged (`tracing` at `warn`);
//! headers are fixed-size and checked field by field; no length is trusted beyond the window
//! capacity. A peer that dies or stops answering makes the operations to it complete with
//! [`TransportError::Unreachable`](swarmsgd_core::TransportError) within the configured timeouts.
//! The wire format is documented in [`wire`].
//!
//! The secret authenticates peers of one job against each other on a trusted cluster network;
//! it travels in clear and nothing is encrypted.
//!
//! ```
//! use std::time::Duration;
//! use swarmsgd_core::{Completion, ReadOutcome, Transport};
//! use swarmsgd_tcp::{JobAuth, TcpEndpoint};
//!
//! let job = JobAuth::new(42, [7; 32]);
//! let mut a = TcpEndpoint::bind(0, "127.0.0.1:0".parse()?, 64, job.clone())?;
//! let mut b = TcpEndpoint::bind(1, "127.0.0.1:0".parse()?, 64, job)?;
//! a.connect_peers(&[(1, b.local_addr())])?;
//! b.connect_peers(&[(0, a.local_addr())])?;
//!
//! b.publish(b"hello, swarm")?;
//! let op = a.start_read(1, 0, 12, Vec::new())?;
//! let mut empty_polls = 0;
//! let completion = loop {
//!     if let Some(c) = a.poll() {
//!         break c;
//!     }
//!     empty_polls += 1;
//!     a.idle(empty_polls); // spins a little, then sleeps until a completion arrives
//! };
//! match completion {
//!     Completion::Read { op: done, buf, result, .. } => {
//!         assert_eq!(done, op);
//!         assert_eq!(result?, ReadOutcome::Model { version: 1 });
//!         assert_eq!(buf, b"hello, swarm");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod endpoint;
mod io;
mod server;
pub mod wire;

use std::time::Duration;

pub use endpoint::{ServerStats, TcpEndpoint};

/// A job's credentials: every connection between nodes of the job presents them, and a server
/// accepts only connections presenting its own.
///
/// With the `rendezvous` feature, the credentials of a job found by
/// [`swarmsgd_rendezvous`](https://docs.rs/swarmsgd-rendezvous) convert into this type, so
/// `TcpEndpoint::bind(.., job_env.auth.clone())` takes them as they are.
#[derive(Clone, PartialEq, Eq)]
pub struct JobAuth {
    /// The job id (from the launcher or the scheduler).
    pub job: u64,
    /// The per-job secret, shared by every node of the job.
    pub secret: [u8; wire::SECRET_LEN],
}

impl JobAuth {
    /// Credentials for job `job` with the given secret.
    pub fn new(job: u64, secret: [u8; wire::SECRET_LEN]) -> Self {
        JobAuth { job, secret }
    }

    /// Whether `secret` is this job's, compared in time independent of where they differ.
    pub fn secret_matches(&self, secret: &[u8; wire::SECRET_LEN]) -> bool {
        self.secret
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for JobAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobAuth")
            .field("job", &self.job)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(feature = "rendezvous")]
impl From<swarmsgd_rendezvous::JobAuth> for JobAuth {
    fn from(auth: swarmsgd_rendezvous::JobAuth) -> Self {
        JobAuth::new(auth.job, auth.secret)
    }
}

#[cfg(feature = "rendezvous")]
impl From<&swarmsgd_rendezvous::JobAuth> for JobAuth {
    fn from(auth: &swarmsgd_rendezvous::JobAuth) -> Self {
        JobAuth::new(auth.job, auth.secret)
    }
}

/// Timeouts and limits of a [`TcpEndpoint`].
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// How long a TCP connect to a peer may take.
    pub connect_timeout: Duration,
    /// How long one operation may take once connected (handshake, request and response together):
    /// every operation completes, with a result or [`TransportError::Unreachable`], at most
    /// `connect_timeout + io_timeout` after it was started. On the server, how long a peer may take
    /// to send its handshake, or the rest of a frame it began.
    ///
    /// [`TransportError::Unreachable`]: swarmsgd_core::TransportError::Unreachable
    pub io_timeout: Duration,
    /// Most connections the server keeps open, and most distinct peers it keeps an inbox slot for.
    pub max_connections: usize,
}

impl Default for TcpConfig {
    /// 3 s to connect, 10 s per operation, 1024 connections.
    fn default() -> Self {
        TcpConfig {
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Errors of setting up a TCP endpoint, and malformed frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A configuration value is impossible.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A frame from the network is malformed.
    #[error("malformed frame: {0}")]
    Wire(String),
}

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
