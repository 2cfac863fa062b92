//! Small POSIX `sh` wrappers that run a rank's command under srun, mpirun or ssh.
//!
//! Each wrapper derives the torchrun-style variables from the scheduler's own (Slurm or Open
//! MPI) where needed, runs the command and then prints one line `SWARM_RANK_EXIT <code>` on
//! stdout, so the launcher learns every rank's exit status even when a single srun or mpirun
//! process stands for all ranks. The launcher filters these lines out of the streamed output.

/// Marker line a wrapper prints after its command exits: `SWARM_RANK_EXIT <code>`.
pub const RANK_EXIT_MARKER: &str = "SWARM_RANK_EXIT ";

/// Marker line rank 0's srun wrapper prints first: `SWARM_SLURM_STEP <job>.<step>`, so the
/// launcher can signal the step's tasks with `scancel`.
pub const SLURM_STEP_MARKER: &str = "SWARM_SLURM_STEP ";

/// `$0` of the wrapper shell (shows up in `ps`).
pub const WRAPPER_NAME: &str = "swarm-rank";

/// Quotes one word for a POSIX shell (single quotes; `'` becomes `'\''`).
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs `"$@"` in the foreground and reports its exit code. srun and mpirun signal every
/// process of a rank (process group / tracked tree), so the shell only has to outlive its
/// command: a trap (not an ignore, which the command would inherit) makes it wait for the
/// command on SIGTERM/SIGINT/SIGHUP and still report the exit code.
const RUN_AND_REPORT: &str =
    r#"trap : TERM INT HUP; "$@"; rc=$?; echo "SWARM_RANK_EXIT $rc"; exit $rc"#;

/// Wrapper for srun: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from SLURM_*, and
/// MASTER_ADDR (when the launcher did not set one) = the step's first node, where rank 0 runs.
pub fn slurm_script() -> String {
    // SLURM_STEP_TASKS_PER_NODE is a compressed list like `2(x3),1`: expand it and take the
    // entry of this node.
    let awk = r#"{n=0; for(i=1;i<=NF;i++){c=$i; r=1; if(match(c,/\(x[0-9]+\)/)){r=substr(c,RSTART+2,RLENGTH-3)+0; c=substr(c,1,RSTART-1)} for(j=0;j<r;j++){if(n==id){print c+0; exit} n++}}}"#;
    format!(
        concat!(
            r#"if [ "$SLURM_PROCID" = 0 ]; then echo "SWARM_SLURM_STEP $SLURM_JOB_ID.$SLURM_STEP_ID"; fi; "#,
            r#"export RANK="$SLURM_PROCID" WORLD_SIZE="${{SLURM_STEP_NUM_TASKS:-$SLURM_NTASKS}}" LOCAL_RANK="$SLURM_LOCALID"; "#,
            r#"LOCAL_WORLD_SIZE=$(printf '%s\n' "${{SLURM_STEP_TASKS_PER_NODE:-$SLURM_TASKS_PER_NODE}}" | awk -F, -v id="${{SLURM_NODEID:-0}}" '{awk}'); export LOCAL_WORLD_SIZE; "#,
            r#"if [ -z "$MASTER_ADDR" ]; then MASTER_ADDR=$(scontrol show hostnames "${{SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}}" 2>/dev/null | head -n 1); export MASTER_ADDR; fi; "#,
            "{run}"
        ),
        awk = awk,
        run = RUN_AND_REPORT
    )
}

/// Wrapper for Open MPI's mpirun: the torchrun variables from OMPI_COMM_WORLD_*.
pub fn mpirun_script() -> String {
    format!(
        concat!(
            r#"export RANK="$OMPI_COMM_WORLD_RANK" WORLD_SIZE="$OMPI_COMM_WORLD_SIZE" "#,
            r#"LOCAL_RANK="$OMPI_COMM_WORLD_LOCAL_RANK" LOCAL_WORLD_SIZE="$OMPI_COMM_WORLD_LOCAL_SIZE"; "#,
            "{run}"
        ),
        run = RUN_AND_REPORT
    )
}

/// Wrapper for ssh (the remote side). The launcher sends the job secret as the first line of
/// the rank's stdin (so it never appears on a command line) and keeps stdin open; when the
/// launcher or the connection goes away, stdin reaches end-of-file and the wrapper sends
/// SIGTERM to the command, so no rank outlives its launcher. SIGTERM/SIGINT/SIGHUP to the
/// wrapper are forwarded too.
pub fn ssh_script() -> String {
    concat!(
        r#"IFS= read -r SWARM_JOB_SECRET || { echo "swarm-rank: no job secret on stdin" >&2; exit 97; }; export SWARM_JOB_SECRET; "#,
        // A background job's stdin is /dev/null: keep the real one on fd 3 for the watcher.
        r#"exec 3<&0; "$@" </dev/null 3<&- & c=$!; "#,
        r#"trap 'kill -TERM $c 2>/dev/null' TERM INT HUP; "#,
        r#"(cat <&3 >/dev/null; kill -TERM $c 2>/dev/null) >/dev/null 2>&1 & w=$!; exec 3<&-; "#,
        r#"while :; do wait $c; rc=$?; kill -0 $c 2>/dev/null || break; done; "#,
        r#"kill $w 2>/dev/null; echo "SWARM_RANK_EXIT $rc"; exit $rc"#
    )
    .to_string()
}

/// Splits a line that ends with `SWARM_RANK_EXIT <code>` into the text before the marker
/// (the command's unterminated last line, usually empty) and the code.
pub fn split_rank_exit(line: &str) -> Option<(&str, i32)> {
    let at = line.rfind(RANK_EXIT_MARKER)?;
    let code = line[at + RANK_EXIT_MARKER.len()..].trim().parse().ok()?;
    Some((&line[..at], code))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str, env: &[(&str, &str)], args: &[&str]) -> (String, i32) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(WRAPPER_NAME)
            .args(args)
            .env_remove("MASTER_ADDR")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let words = ["plain", "it's", "a b", "$HOME", "", "\"q\"", "x;y", "*"];
        let line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        let (out, code) = sh(
            &format!(r#"for a in {line}; do printf '[%s]' "$a"; done"#),
            &[],
            &[],
        );
        assert_eq!(code, 0);
        assert_eq!(out, "[plain][it's][a b][$HOME][][\"q\"][x;y][*]");
    }

    #[test]
    fn slurm_wrapper_derives_rank_vars() {
        let env = [
            ("SLURM_PROCID", "5"),
            ("SLURM_JOB_ID", "12"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x2),3"),
            ("MASTER_ADDR", "10.0.0.1"),
        ];
        let (out, code) = sh(
            &slurm_script(),
            &env,
            &[
                "sh",
                "-c",
                r#"echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR"; exit 3"#,
            ],
        );
        assert_eq!(code, 3);
        assert_eq!(out, "5 6 1 3 10.0.0.1\nSWARM_RANK_EXIT 3\n");
    }

    #[test]
    fn mpirun_wrapper_derives_rank_vars() {
        let env = [
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ];
        let (out, _) = sh(
            &mpirun_script(),
            &env,
            &[
                "sh",
                "-c",
                r#"echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE""#,
            ],
        );
        assert_eq!(out, "2 4 0 2\nSWARM_RANK_EXIT 0\n");
        assert_eq!(split_rank_exit("SWARM_RANK_EXIT 0"), Some(("", 0)));
        assert_eq!(
            split_rank_exit("partSWARM_RANK_EXIT 143"),
            Some(("part", 143))
        );
        assert_eq!(split_rank_exit("SWARM_RANK_EXIT x"), None);
    }

    #[test]
    fn ssh_wrapper_reads_secret_and_stops_on_eof() {
        use std::io::Write;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(ssh_script())
            .arg(WRAPPER_NAME)
            .args([
                "sh",
                "-c",
                r#"echo "s=$SWARM_JOB_SECRET"; sleep 0.5; echo alive; exec sleep 30"#,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"abc123\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let start = std::time::Instant::now();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        // sleep was stopped by SIGTERM: sh reports 128 + 15.
        assert_eq!(text, "s=abc123\nalive\nSWARM_RANK_EXIT 143\n");
    }
}
