//! The ranks' `SWARM_SUMMARY` lines and exit statuses, gathered into one `summary.json`.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::LauncherError;

/// Prefix of the one line each rank prints on stdout at its end.
pub const SUMMARY_MARKER: &str = "SWARM_SUMMARY ";

/// How a rank ended, as far as the launcher knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit code, when the rank exited normally (for a rank behind a shell wrapper, a rank
    /// killed by signal N shows as 128 + N).
    pub exit_code: Option<i32>,
    /// Signal that killed the rank's process.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none()
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.exit_code, self.signal) {
            (_, Some(s)) => write!(f, "killed by signal {s} ({})", signal_name(s)),
            (Some(c), None) if c > 128 && c < 128 + 65 => {
                write!(f, "exit code {c} (signal {}?)", signal_name(c - 128))
            }
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// Name of a common signal number (Linux numbering).
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// What the launcher learned about one rank.
#[derive(Clone, Debug, Default)]
pub struct RankRecord {
    /// The rank's `SWARM_SUMMARY` object (the last one, if it printed several).
    pub summary: Option<Map<String, Value>>,
    /// How it ended.
    pub exit: Option<ExitInfo>,
}

/// One entry of `failed_ranks`.
#[derive(Clone, Debug, Serialize)]
pub struct FailedRank {
    /// The rank.
    pub rank: u32,
    /// Exit code, if known.
    pub exit_code: Option<i32>,
    /// Killing signal, if known.
    pub signal: Option<i32>,
    /// Human-readable reason.
    pub reason: String,
}

/// The gathered result of a job, written as `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    /// `local`, `slurm`, `mpirun` or `ssh`.
    pub mode: String,
    /// The job id (`SWARM_JOB_ID`); the secret is never written.
    pub job_id: u64,
    /// Number of ranks.
    pub world_size: u32,
    /// Rank 0's `final_test_accuracy`, if it reported one.
    pub final_test_accuracy: Option<Value>,
    /// Rank 0's `lost_ranks`, if it reported them.
    pub lost_ranks: Option<Value>,
    /// Every rank's summary object that arrived, in rank order.
    pub ranks: Vec<Value>,
    /// Ranks with a non-zero exit, a signal, or no summary line.
    pub failed_ranks: Vec<FailedRank>,
    /// Why the launcher stopped the job early (timeout, signal, kill-on-failure), if it did.
    pub stopped: Option<String>,
    /// Wall-clock seconds from the first spawn to the end.
    pub wall_seconds: f64,
}

/// Parses the JSON after [`SUMMARY_MARKER`]; it must be one object.
pub fn parse_summary(json: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(json.trim()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("SWARM_SUMMARY is not a JSON object".into()),
        Err(e) => Err(format!("SWARM_SUMMARY is not valid JSON: {e}")),
    }
}

/// Builds the failed-rank list: a rank failed when it exited with a non-zero code or a signal,
/// or never printed a summary line. `missing_exit_note` explains ranks without any exit
/// information (e.g. "srun exited with code 1").
pub fn failed_ranks(records: &[RankRecord], missing_exit_note: Option<&str>) -> Vec<FailedRank> {
    let mut failed = Vec::new();
    for (rank, rec) in records.iter().enumerate() {
        let rank = u32::try_from(rank).unwrap_or(u32::MAX);
        let bad_exit = rec.exit.filter(|e| !e.success());
        if bad_exit.is_none() && rec.summary.is_some() {
            continue;
        }
        let mut reason = match (bad_exit, rec.exit) {
            (Some(e), _) => e.to_string(),
            (None, Some(_)) => "exit code 0".to_string(),
            (None, None) => match missing_exit_note {
                Some(note) => format!("no exit status ({note})"),
                None => "no exit status".to_string(),
            },
        };
        if rec.summary.is_none() {
            reason.push_str(", no SWARM_SUMMARY line");
        }
        failed.push(FailedRank {
            rank,
            exit_code: rec.exit.and_then(|e| e.exit_code),
            signal: rec.exit.and_then(|e| e.signal),
            reason,
        });
    }
    failed
}

impl JobSummary {
    /// Gathers the records of a finished job.
    pub fn gather(
        mode: &str,
        job_id: u64,
        records: &[RankRecord],
        missing_exit_note: Option<&str>,
        stopped: Option<String>,
        wall_seconds: f64,
    ) -> Self {
        let rank0 = records.first().and_then(|r| r.summary.as_ref());
        JobSummary {
            mode: mode.to_string(),
            job_id,
            world_size: u32::try_from(records.len()).unwrap_or(u32::MAX),
            final_test_accuracy: rank0.and_then(|s| s.get("final_test_accuracy").cloned()),
            lost_ranks: rank0.and_then(|s| s.get("lost_ranks").cloned()),
            ranks: records
                .iter()
                .filter_map(|r| r.summary.clone().map(Value::Object))
                .collect(),
            failed_ranks: failed_ranks(records, missing_exit_note),
            stopped,
            wall_seconds,
        }
    }

    /// Writes the summary as pretty JSON (creating parent directories).
    pub fn write(&self, path: &Path) -> Result<(), LauncherError> {
        let io = |e| LauncherError::Io(format!("writing {}", path.display()), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| LauncherError::Invalid(format!("encoding summary.json: {e}")))?;
        text.push('\n');
        std::fs::write(path, text).map_err(io)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failed_ranks_cover_every_case() {
        let ok = ExitInfo {
            exit_code: Some(0),
            signal: None,
        };
        let s = parse_summary(r#"{"rank":0,"status":"ok","final_test_accuracy":0.8}"#).unwrap();
        let records = vec![
            RankRecord {
                summary: Some(s.clone()),
                exit: Some(ok),
            },
            RankRecord {
                summary: Some(s.clone()),
                exit: Some(ExitInfo {
                    exit_code: Some(3),
                    signal: None,
                }),
            },
            RankRecord {
                summary: None,
                exit: Some(ok),
            },
            RankRecord {
                summary: None,
                exit: Some(ExitInfo {
                    exit_code: None,
                    signal: Some(9),
                }),
            },
            RankRecord {
                summary: Some(s),
                exit: None,
            },
            RankRecord::default(),
        ];
        let sum = JobSummary::gather("local", 7, &records, Some("srun exited"), None, 1.0);
        let f: Vec<_> = sum
            .failed_ranks
            .iter()
            .map(|f| (f.rank, f.reason.as_str()))
            .collect();
        assert_eq!(
            f,
            [
                (1, "exit code 3"),
                (2, "exit code 0, no SWARM_SUMMARY line"),
                (3, "killed by signal 9 (SIGKILL), no SWARM_SUMMARY line"),
                (5, "no exit status (srun exited), no SWARM_SUMMARY line"),
            ]
        );
        assert_eq!(sum.final_test_accuracy, Some(serde_json::json!(0.8)));
        assert_eq!(sum.ranks.len(), 3);
        assert!(parse_summary("[1]").is_err());
        assert!(parse_summary("{").is_err());
    }
}
