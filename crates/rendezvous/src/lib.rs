//! Multi-process SwarmSGD jobs: who am I, and where are the others.
//!
//! - [`JobEnv::detect`] reads this process's rank, the world size, its local rank and where the
//!   job's store runs from the variables of torchrun (and `tools/launcher`), Slurm, Open MPI or
//!   PMI, and the job's credentials from `SWARM_JOB_ID` and `SWARM_JOB_SECRET`.
//! - [`StoreServer`] (on rank 0) and [`Client`] (on every rank) form a small key-value store over
//!   TCP: ranks publish their endpoint records and wait, with timeouts, for their neighbours'.
//!   Every connection presents the job id and secret ([`JobAuth`]); another job's process,
//!   another protocol version or garbage bytes are refused and logged (`tracing` at `warn`),
//!   never trusted, and no length from the network is believed beyond the configured limits.
//!
//! ```
//! use std::time::Duration;
//! use swarmsgd_rendezvous::{Client, JobAuth, StoreConfig, StoreServer};
//!
//! let auth = JobAuth::new(7, [42; 32]);
//! let store = StoreServer::bind("127.0.0.1:0".parse()?, auth.clone(), 2, StoreConfig::default())?;
//! let addr = store.local_addr().to_string();
//!
//! let mut rank1 = Client::connect(&addr, &auth, 1, StoreConfig::default())?;
//! rank1.set("endpoint/1", b"10.0.0.2:4242")?;
//!
//! let mut rank0 = Client::connect(&addr, &auth, 0, StoreConfig::default())?;
//! assert_eq!(rank0.get("endpoint/1", Duration::from_secs(5))?, b"10.0.0.2:4242");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The secret authenticates the ranks of one job to each other on a trusted cluster network; it
//! travels in clear and nothing is encrypted.

mod env;
mod store;

use std::time::Duration;

pub use env::{
    expand_nodelist, format_secret, parse_secret, slurm_default_port, EnvSource, JobEnv,
};
pub use store::{
    Client, HelloStatus, Liveness, StoreConfig, StoreServer, MAX_KEY_LEN, OBSERVER,
    PROTOCOL_VERSION,
};

/// Length of a job secret, in bytes.
pub const SECRET_LEN: usize = 32;

/// A job's credentials: every connection between processes of the job presents them.
#[derive(Clone, PartialEq, Eq)]
pub struct JobAuth {
    /// The job id (from the launcher or the scheduler).
    pub job: u64,
    /// The per-job secret, shared by every rank.
    pub secret: [u8; SECRET_LEN],
}

impl JobAuth {
    /// Credentials for job `job` with the given secret.
    pub fn new(job: u64, secret: [u8; SECRET_LEN]) -> Self {
        JobAuth { job, secret }
    }

    /// Whether `secret` is this job's, compared in time independent of where they differ.
    pub fn secret_matches(&self, secret: &[u8; SECRET_LEN]) -> bool {
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

/// What can go wrong finding the job and talking to its store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// The environment does not describe a job, or describes it wrongly.
    #[error("job environment: {0}")]
    Env(String),
    /// The store could not listen.
    #[error("cannot serve the rendezvous store on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be reached, or the connection to it broke. The I/O error says which
    /// (`ConnectionRefused`: nothing listens there yet; `TimedOut`/`WouldBlock`: no answer within
    /// the I/O timeout; `UnexpectedEof`, `ConnectionReset`: the store went away).
    #[error("rendezvous store at {addr} unreachable: {source}")]
    Unreachable {
        /// The store's address.
        addr: String,
        /// The I/O error of the connect, read or write.
        #[source]
        source: std::io::Error,
    },
    /// The store refused this process or a request.
    #[error("{0}")]
    Refused(String),
    /// No rank set the key in time.
    #[error("no rank published {key:?} within {waited:?}")]
    Timeout {
        /// The key waited for.
        key: String,
        /// How long.
        waited: Duration,
    },
    /// A request this client will not send (key or value too large).
    #[error("{0}")]
    Usage(String),
}

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
