//! End-to-end tests of the `launcher` binary with small shell-script ranks: local mode (env
//! contract, prefixes, summary.json, failures, signals, timeout, kill-on-failure, pinning),
//! ssh mode through a stand-in `ssh` that runs the remote command on this host, and mpirun
//! when Open MPI is installed. Every job runs under the launcher's own `--timeout`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_launcher");

/// Prints its env contract, one stderr line, one unterminated line; rank 3 exits 3 without a
/// summary, the others print a SWARM_SUMMARY line.
const RANK_SCRIPT: &str = r#"#!/bin/sh
echo "env rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT job=$SWARM_JOB_ID secret=$SWARM_JOB_SECRET"
echo "err $RANK" >&2
printf 'no newline %s' "$RANK"
if [ "$RANK" = 3 ]; then exit 3; fi
echo
acc=0.5
if [ "$RANK" = 0 ]; then acc=0.875; fi
echo "SWARM_SUMMARY {\"rank\": $RANK, \"world_size\": $WORLD_SIZE, \"status\": \"ok\", \"final_test_accuracy\": $acc, \"lost_ranks\": [3]}"
"#;

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn launcher(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(LAUNCHER).args(args).output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(60));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `[rank K] env rank=...` lines → rank → key=value map.
fn env_lines(stdout: &str) -> BTreeMap<u32, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("[rank ") else {
            continue;
        };
        let (k, body) = rest.split_once("] ").unwrap();
        let Some(body) = body.strip_prefix("env ") else {
            continue;
        };
        let map: BTreeMap<String, String> = body
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(out.insert(k.parse().unwrap(), map).is_none(), "{stdout}");
    }
    out
}

fn check_failed_job(
    out: &Output,
    summary: &Path,
    n: u32,
) -> BTreeMap<u32, BTreeMap<String, String>> {
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // Every stdout line is prefixed, partial last lines included, nothing interleaved.
    for line in stdout.lines() {
        assert!(line.starts_with("[rank "), "unprefixed line {line:?}");
    }
    for r in 0..n {
        assert!(
            stdout.contains(&format!("[rank {r}] no newline {r}\n")),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("[rank {r}] err {r}\n")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("1 of 4 ranks failed: rank 3 (exit code 3, no SWARM_SUMMARY line)"),
        "{stderr}"
    );
    let s = read_json(summary);
    assert_eq!(s["world_size"], 4);
    assert_eq!(s["final_test_accuracy"], 0.875);
    assert_eq!(s["lost_ranks"], serde_json::json!([3]));
    let ranks: Vec<u64> = s["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, [0, 1, 2]);
    let failed = s["failed_ranks"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{s}");
    assert_eq!(failed[0]["rank"], 3);
    assert_eq!(failed[0]["exit_code"], 3);
    assert!(!std::fs::read_to_string(summary).unwrap().contains("secret"));

    let envs = env_lines(&stdout);
    assert_eq!(
        envs.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    for (rank, env) in &envs {
        assert_eq!(env["rank"], rank.to_string());
        assert_eq!(env["world"], n.to_string());
        assert_eq!(env["job"], envs[&0]["job"]);
        assert_eq!(env["secret"], envs[&0]["secret"]);
        assert_eq!(env["master"], envs[&0]["master"]);
        assert!(env["job"].parse::<u64>().is_ok());
        let secret = &env["secret"];
        assert_eq!(secret.len(), 64, "{secret}");
        assert!(secret
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }
    envs
}

#[test]
fn local_env_contract_summary_and_failed_rank() {
    let dir = tempfile::tempdir().unwrap();
    let rank = script(dir.path(), "rank.sh", RANK_SCRIPT);
    let summary = dir.path().join("out/summary.json");
    let args = |s: &Path| {
        vec![
            "local".to_string(),
            "-n".into(),
            "4".into(),
            "--timeout".into(),
            "30".into(),
            "--summary".into(),
            s.to_str().unwrap().into(),
            "--".into(),
            rank.to_str().unwrap().into(),
        ]
    };
    let a1 = args(&summary);
    let out = launcher(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let first = check_failed_job(&out, &summary, 4);
    for (rank, env) in &first {
        assert_eq!(env["local"], format!("{rank}/4"));
        assert!(env["master"].starts_with("127.0.0.1:"));
    }
    // A second job gets a new id and secret.
    let summary2 = dir.path().join("summary2.json");
    let a2 = args(&summary2);
    let out = launcher(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    let second = check_failed_job(&out, &summary2, 4);
    assert_ne!(first[&0]["secret"], second[&0]["secret"]);
    assert_ne!(first[&0]["job"], second[&0]["job"]);
}

#[test]
fn local_success_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let out = launcher(&[
        "local",
        "-n",
        "2",
        "--timeout",
        "30",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        r#"echo "SWARM_SUMMARY {\"rank\": $RANK, \"world_size\": 2, \"status\": \"ok\"}""#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = read_json(&summary);
    assert_eq!(s["ranks"].as_array().unwrap().len(), 2);
    assert_eq!(s["failed_ranks"], serde_json::json!([]));
    assert_eq!(s["final_test_accuracy"], Value::Null);
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is not alive: it is only waiting to be reaped.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Starts `launcher local -n 3` whose ranks report their pids, waits for all three, sends
/// `sig` to the launcher and returns (exit code, seconds until it exited, rank pids, stderr).
fn signal_job(rank_script: &str, grace: &str, sig: &str) -> (Option<i32>, f64, Vec<u32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let rank = script(dir.path(), "rank.sh", rank_script);
    let summary = dir.path().join("s.json");
    let mut child = Command::new(LAUNCHER)
        .args([
            "local",
            "-n",
            "3",
            "--timeout",
            "40",
            "--grace",
            grace,
            "--summary",
        ])
        .arg(&summary)
        .arg("--")
        .arg(&rank)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    while pids.len() < 3 {
        let line = lines.next().unwrap().unwrap();
        if let Some((_, pid)) = line.split_once("pid ") {
            pids.push(pid.trim().parse::<u32>().unwrap());
        }
    }
    let sent = Instant::now();
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let secs = sent.elapsed().as_secs_f64();
    let stderr = format!("{}\nstdout after signal: {rest:?}", text(&out.stderr));
    assert!(summary.exists(), "{stderr}");
    (out.status.code(), secs, pids, stderr)
}

#[test]
fn sigterm_stops_every_rank_cleanly() {
    let (code, secs, pids, stderr) = signal_job(
        // Short sleeps in the foreground: a long background sleep forked while the SIGTERM was
        // in flight (between fork and exec, under load) missed it and held the rank's pipes for
        // the whole grace period.
        "#!/bin/sh\ntrap 'echo stopping; exit 0' TERM\necho \"pid $$\"\nwhile :; do sleep 0.1; done\n",
        "20",
        "TERM",
    );
    assert_eq!(code, Some(143), "{stderr}");
    // Well inside the 20 s grace period: the ranks stopped on SIGTERM, nothing was killed.
    assert!(secs < 15.0, "took {secs} s: {stderr}");
    assert!(pids.iter().all(|&p| !pid_alive(p)), "{stderr}");
    assert!(!stderr.contains("grace period over"), "{stderr}");
}

#[test]
fn sigint_escalates_to_sigkill_after_grace() {
    // These ranks ignore SIGTERM; the launcher must SIGKILL them after the 1 s grace period.
    let (code, secs, pids, stderr) = signal_job(
        "#!/bin/sh\ntrap '' TERM\necho \"pid $$\"\nwhile :; do sleep 0.2; done\n",
        "1",
        "INT",
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!((0.9..8.0).contains(&secs), "took {secs} s: {stderr}");
    assert!(stderr.contains("grace period over"), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(pids.iter().all(|&p| !pid_alive(p)), "{stderr}");
}

#[test]
fn timeout_and_kill_on_failure_stop_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let start = Instant::now();
    let out = launcher(&[
        "local",
        "-n",
        "2",
        "--timeout",
        "1",
        "--grace",
        "2",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        "sleep",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(start.elapsed() < Duration::from_secs(5));
    let s = read_json(&summary);
    assert_eq!(s["failed_ranks"].as_array().unwrap().len(), 2);
    assert_eq!(s["failed_ranks"][0]["signal"], 15);
    assert!(s["stopped"].as_str().unwrap().contains("timeout"));

    let start = Instant::now();
    let out = launcher(&[
        "local",
        "-n",
        "3",
        "--timeout",
        "30",
        "--kill-on-failure",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        r#"if [ "$RANK" = 1 ]; then exit 5; fi; exec sleep 100"#,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10), "{stderr}");
    assert!(stderr.contains("rank 1 (exit code 5"), "{stderr}");
    assert!(stderr.contains("rank 0 (killed by signal 15"), "{stderr}");
    let s = read_json(&summary);
    assert_eq!(s["stopped"], "rank 1 failed (--kill-on-failure)");
}

#[test]
fn leftovers_of_a_finished_rank_are_stopped() {
    // The rank exits but leaves a child that ignores SIGTERM and holds its stdout (the rank waits
    // 0.3 s first, so that the child has set its trap before the launcher signals the group).
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let start = Instant::now();
    let out = launcher(&[
        "local",
        "-n",
        "1",
        "--grace",
        "1",
        "--timeout",
        "30",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        r#"(trap '' TERM; exec sleep 100) & echo "pid $!"; sleep 0.3; echo "SWARM_SUMMARY {\"rank\": 0, \"world_size\": 1, \"status\": \"ok\"}""#,
    ]);
    let secs = start.elapsed().as_secs_f64();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!((0.9..10.0).contains(&secs), "took {secs} s");
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[rank 0] pid "))
        .unwrap()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pid_alive(pid), "leftover {pid} still running");
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = launcher(&["local", "-n", "2", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`/no/such/program` not found"));

    let out = launcher(&["slurm", "-n", "2", "--srun", "/no/such/srun", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("install Slurm") && e.contains("launcher local"),
        "{e}"
    );

    let hf = dir.path().join("hosts");
    std::fs::write(&hf, "node1 slots=2\nnode2 slots=two\n").unwrap();
    let out = launcher(&[
        "ssh",
        "--hostfile",
        hf.to_str().unwrap(),
        "-n",
        "2",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("hosts:2: `slots=two`"), "{e}");

    let out = launcher(&["local", "-n", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let out = launcher(&["local", "-n", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn pin_binds_each_rank_and_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let out = launcher(&[
        "local",
        "-n",
        "2",
        "--pin",
        "--timeout",
        "30",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        r#"grep Cpus_allowed_list /proc/self/status; echo "SWARM_SUMMARY {\"rank\": $RANK, \"world_size\": 2, \"status\": \"ok\"}""#,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Either both ranks are bound (and say where), or hwloc could not bind and said so.
    for r in 0..2 {
        assert!(
            stderr.contains(&format!("rank {r} bound to CPUs"))
                || stderr.contains(&format!("--pin: rank {r}:"))
                || stderr.contains("--pin: cannot probe"),
            "{stderr}"
        );
    }
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("Cpus_allowed_list").count(), 2, "{stdout}");
}

/// A stand-in for ssh: drops the options, ignores the host and runs the remote command with
/// `sh -c` here, as sshd would on the remote host (stdin and stdout pass through).
const FAKE_SSH: &str = r#"#!/bin/sh
while [ $# -gt 2 ]; do shift; done
echo "$1" >> "$(dirname "$0")/hosts.log"
exec sh -c "$2"
"#;

#[test]
fn ssh_mode_places_ranks_and_passes_the_secret_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let rank = script(dir.path(), "rank.sh", RANK_SCRIPT);
    let ssh = script(dir.path(), "fake-ssh", FAKE_SSH);
    let hf = dir.path().join("hostfile");
    std::fs::write(&hf, "# two hosts\nalpha slots=3\nbeta\n").unwrap();
    let summary = dir.path().join("s.json");
    let workdir = dir.path().join("work dir 'quoted'");
    std::fs::create_dir(&workdir).unwrap();
    let out = launcher(&[
        "ssh",
        "--hostfile",
        hf.to_str().unwrap(),
        "-n",
        "4",
        "--ssh",
        ssh.to_str().unwrap(),
        "--workdir",
        workdir.to_str().unwrap(),
        "--timeout",
        "30",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        rank.to_str().unwrap(),
    ]);
    let envs = check_failed_job(&out, &summary, 4);
    let locals: Vec<&str> = (0..4).map(|r| envs[&r]["local"].as_str()).collect();
    assert_eq!(locals, ["0/3", "1/3", "2/3", "0/1"]);
    assert!(envs[&0]["master"].starts_with("alpha:"));
    let hosts = std::fs::read_to_string(dir.path().join("hosts.log")).unwrap();
    let hosts: BTreeSet<&str> = hosts.lines().collect();
    assert_eq!(hosts, BTreeSet::from(["alpha", "beta"]));
}

#[test]
fn ssh_mode_stops_remote_ranks_when_the_launcher_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // The "remote" side runs in a session of its own, as on another host: no signal from
    // the launcher reaches it, only the end of its stdin when the launcher lets go of it.
    let ssh = script(
        dir.path(),
        "fake-ssh",
        &FAKE_SSH.replace("exec sh -c", "exec setsid -w sh -c"),
    );
    let hf = dir.path().join("hostfile");
    std::fs::write(&hf, "localhost slots=2\n").unwrap();
    let pidfile = dir.path().join("pids");
    let out = launcher(&[
        "ssh",
        "--hostfile",
        hf.to_str().unwrap(),
        "-n",
        "2",
        "--ssh",
        ssh.to_str().unwrap(),
        "--timeout",
        "2",
        "--grace",
        "3",
        "--summary",
        dir.path().join("s.json").to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &format!("echo $$ >> {}; exec sleep 100", pidfile.display()),
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let pids = std::fs::read_to_string(&pidfile).unwrap();
    let pids: Vec<u32> = pids.lines().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| !pid_alive(p)));
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn mpirun_mode_with_open_mpi() {
    if !have("mpirun") {
        eprintln!("SKIPPED: mpirun not installed (tools/setup.sh installs openmpi-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rank = script(dir.path(), "rank.sh", RANK_SCRIPT);
    let summary = dir.path().join("s.json");
    let out = launcher(&[
        "mpirun",
        "-n",
        "4",
        "--mpirun-arg=--oversubscribe",
        "--timeout",
        "50",
        "--summary",
        summary.to_str().unwrap(),
        "--",
        rank.to_str().unwrap(),
    ]);
    let envs = check_failed_job(&out, &summary, 4);
    assert!(envs[&0]["master"].starts_with("127.0.0.1:"));
    for (rank, env) in &envs {
        assert_eq!(env["local"], format!("{rank}/4"));
    }
}
