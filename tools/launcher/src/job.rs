//! Per-job identity: a job id and a secret that authenticate every rendezvous message.

use std::fmt::Write as _;
use std::io::Read;

use crate::error::LauncherError;

/// Environment variables of the launcher/trainer contract that carry the job's identity.
pub const JOB_ID_VAR: &str = "SWARM_JOB_ID";
/// The per-job secret: 64 lowercase hex characters (32 random bytes).
pub const JOB_SECRET_VAR: &str = "SWARM_JOB_SECRET";

/// Rank-identity variables (torchrun style) that the launcher sets or clears.
pub const RANK_VARS: [&str; 4] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"];

/// A job's id and secret, fresh from the operating system's random source.
#[derive(Clone)]
pub struct Job {
    /// Decimal job id exported as `SWARM_JOB_ID`.
    pub id: u64,
    /// 64 lowercase hex characters exported as `SWARM_JOB_SECRET`.
    pub secret: String,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl Job {
    /// Draws a new job id and secret from `/dev/urandom`.
    pub fn generate() -> Result<Self, LauncherError> {
        let mut bytes = [0u8; 40];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| LauncherError::Io("reading /dev/urandom for the job secret".into(), e))?;
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&bytes[..8]);
        // Keep the id positive in a signed 64-bit integer too, and never 0.
        let id = (u64::from_le_bytes(id_bytes) >> 1).max(1);
        let mut secret = String::with_capacity(64);
        for b in &bytes[8..] {
            let _ = write!(secret, "{b:02x}");
        }
        Ok(Job { id, secret })
    }

    /// A port in 20000..=39999 derived from the job id, for modes where the launcher cannot
    /// probe rank 0's host for a free port.
    pub fn derived_port(&self) -> u16 {
        // 20000 + (id mod 20000) < 40000 always fits in a u16.
        u16::try_from(20_000 + self.id % 20_000).unwrap_or(29_500)
    }
}

/// Asks the kernel for a free TCP port on 127.0.0.1 (closed again before the ranks start, so
/// another process could take it in between; good enough for one host).
pub fn free_local_port() -> Result<u16, LauncherError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| LauncherError::Io("finding a free port on 127.0.0.1".into(), e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| LauncherError::Io("finding a free port on 127.0.0.1".into(), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hex_and_fresh() {
        let a = Job::generate().unwrap();
        let b = Job::generate().unwrap();
        assert_eq!(a.secret.len(), 64);
        assert!(a
            .secret
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert!((20_000..40_000).contains(&a.derived_port()));
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}
