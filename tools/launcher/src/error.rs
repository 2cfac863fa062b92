//! The launcher's error type.

use std::path::PathBuf;

/// Everything that can stop the launcher before or while it runs a job.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// An I/O operation failed; the string says what the launcher was doing.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A hostfile line could not be parsed.
    #[error("{path}:{line}: {reason} (expected `host [slots=K]`)")]
    Hostfile {
        /// The hostfile.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The external program a mode needs (srun, mpirun, ssh) is not installed.
    #[error("`{program}` not found: {hint}")]
    MissingProgram {
        /// The program that was not found.
        program: String,
        /// What to do about it.
        hint: String,
    },
    /// The options do not describe a job that can run.
    #[error("{0}")]
    Invalid(String),
}
