//! Multi-process runs (`--transport tcp`) on loopback that lose a rank, take a restarted rank
//! back, and shrug off foreign connections. Each test is bounded in time: a hung run fails.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ranks of one job, started directly with the launcher's environment contract.
struct Job {
    n: usize,
    out: PathBuf,
    logs: PathBuf,
    port: u16,
    job_id: u64,
    secret: String,
    args: Vec<String>,
    children: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Job {
    fn new(dir: &Path, n: usize, args: &[&str]) -> Job {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let secret: String = (0..32)
            .map(|i: u8| format!("{:02x}", (nanos >> (i % 16 * 4)) as u8 ^ i.wrapping_mul(37)))
            .collect();
        Job {
            n,
            out: dir.join("run"),
            logs: dir.to_path_buf(),
            port: free_port(),
            job_id: (nanos % 1_000_000) as u64,
            secret,
            args: args.iter().map(|s| s.to_string()).collect(),
            children: (0..n).map(|_| None).collect(),
        }
    }

    fn stderr_path(&self, rank: usize, attempt: usize) -> PathBuf {
        self.logs.join(format!("rank{rank}.{attempt}.err"))
    }

    fn stdout_path(&self, rank: usize, attempt: usize) -> PathBuf {
        self.logs.join(format!("rank{rank}.{attempt}.out"))
    }

    fn start(&mut self, rank: usize, attempt: usize, extra: &[&str]) {
        let child = Command::new(env!("CARGO_BIN_EXE_swarm"))
            .arg("train")
            .args(["--transport", "tcp", "--quiet", "--out"])
            .arg(&self.out)
            .args(&self.args)
            .args(extra)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", self.n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", self.port.to_string())
            .env("SWARM_JOB_ID", self.job_id.to_string())
            .env("SWARM_JOB_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.stdout_path(rank, attempt)).unwrap())
            .stderr(std::fs::File::create(self.stderr_path(rank, attempt)).unwrap())
            .spawn()
            .expect("swarm starts");
        self.children[rank] = Some(child);
    }

    fn start_all(&mut self) {
        for r in 0..self.n {
            self.start(r, 0, &[]);
        }
    }

    /// Waits until `rank`'s stderr (attempt `attempt`) holds `needle`.
    fn wait_for(&self, rank: usize, attempt: usize, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(self.stderr_path(rank, attempt)).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rank {rank} never logged {needle:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for every running rank; returns each one's exit success. Kills all after `limit`.
    fn wait_all(&mut self, limit: Duration) -> Vec<Option<bool>> {
        let deadline = Instant::now() + limit;
        let mut done: Vec<Option<bool>> = vec![None; self.n];
        loop {
            for (r, slot) in self.children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    if let Some(status) = child.try_wait().unwrap() {
                        done[r] = Some(status.success());
                        *slot = None;
                    }
                }
            }
            if self.children.iter().all(Option::is_none) {
                return done;
            }
            if Instant::now() > deadline {
                let logs: String = (0..self.n)
                    .map(|r| {
                        format!(
                            "--- rank {r}\n{}",
                            std::fs::read_to_string(self.stderr_path(r, 0)).unwrap_or_default()
                        )
                    })
                    .collect();
                self.kill_all();
                panic!("the job did not finish within {limit:?}:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self, rank: usize) {
        let mut child = self.children[rank].take().expect("rank running");
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    fn kill_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `SWARM_SUMMARY` object of `rank`'s attempt.
    fn summary(&self, rank: usize, attempt: usize) -> serde_json::Value {
        let text = std::fs::read_to_string(self.stdout_path(rank, attempt)).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("SWARM_SUMMARY "))
            .unwrap_or_else(|| panic!("rank {rank} printed no summary:\n{text}"));
        serde_json::from_str(line).unwrap()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.kill_all();
    }
}

const EIGHT_RANKS: &[&str] = &[
    "--epochs",
    "4",
    "--train-subset",
    "16000",
    "--test-subset",
    "2000",
    "--peer-timeout",
    "3",
    "--checkpoint-every",
    "1",
];

#[test]
fn killing_one_of_eight_ranks_leaves_seven_that_finish_and_report_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::new(dir.path(), 8, EIGHT_RANKS);
    job.start_all();
    job.wait_for(5, 0, "epoch   2/4", Duration::from_secs(120));
    job.kill(5);
    let exits = job.wait_all(Duration::from_secs(240));
    for (r, ok) in exits.iter().enumerate() {
        if r != 5 {
            assert_eq!(*ok, Some(true), "rank {r} failed");
        }
    }
    let s0 = job.summary(0, 0);
    assert_eq!(s0["lost_ranks"], serde_json::json!([5]), "{s0}");
    assert!(s0["final_test_accuracy"].as_f64().unwrap() > 0.7, "{s0}");
    // Every neighbour of rank 5 (complete graph: everyone) that tried it afterwards noticed.
    let noticed = (0..8)
        .filter(|&r| r != 5)
        .filter(|&r| {
            job.summary(r, 0)["unreachable_peers"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(5))
        })
        .count();
    assert!(noticed >= 1, "no rank noticed that rank 5 died");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job.out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["node_stats"].as_array().unwrap().len(), 7);
}

#[test]
fn a_killed_rank_restarted_with_resume_rejoins_and_the_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = EIGHT_RANKS.to_vec();
    args[1] = "6";
    let mut job = Job::new(dir.path(), 8, &args);
    job.start_all();
    job.wait_for(3, 0, "epoch   2/6", Duration::from_secs(120));
    job.kill(3);
    let resume = job.out.to_str().unwrap().to_string();
    job.start(3, 1, &["--resume", &resume]);
    job.wait_for(3, 1, "resumed from", Duration::from_secs(60));
    let exits = job.wait_all(Duration::from_secs(300));
    assert!(exits.iter().all(|e| *e == Some(true)), "{exits:?}");
    let s3 = job.summary(3, 1);
    // Killed right after logging epoch 2: its checkpoint is of epoch 1 or 2.
    assert!(s3["resumed_from_epoch"].as_u64().unwrap() >= 1, "{s3}");
    // After the restart it averaged with the others again, also after they had finished: they
    // keep folding its corrections while they wait, so its pairwise averages do not find their
    // inbox slots busy (before they did: 7 interactions against 71 busy skips).
    let (interactions, busy) = (
        s3["stats"]["interactions"].as_u64().unwrap(),
        s3["stats"]["skipped_busy"].as_u64().unwrap(),
    );
    eprintln!("restarted rank 3: {interactions} interactions, {busy} skipped as busy");
    assert!(interactions > 0, "{s3}");
    assert!(interactions > 2 * busy, "{s3}");
    let s0 = job.summary(0, 0);
    assert_eq!(s0["lost_ranks"], serde_json::json!([]), "{s0}");
    assert!(s0["final_test_accuracy"].as_f64().unwrap() > 0.7, "{s0}");
}

#[test]
fn foreign_connections_are_refused_and_the_run_is_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::new(
        dir.path(),
        2,
        &[
            "--epochs",
            "2",
            "--train-subset",
            "8000",
            "--test-subset",
            "2000",
        ],
    );
    job.start_all();
    job.wait_for(1, 0, "neighbours", Duration::from_secs(60));
    // Another job's process, and one with this job's id but a wrong secret, at the store.
    for (id, secret) in [(job.job_id + 1, [0u8; 32]), (job.job_id, [0xAB; 32])] {
        let auth = rendezvous::JobAuth::new(id, secret);
        let cfg = rendezvous::StoreConfig {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let addr = format!("127.0.0.1:{}", job.port);
        let err = rendezvous::Client::connect(&addr, &auth, 1, cfg)
            .err()
            .expect("a foreign process was let in");
        assert!(err.to_string().contains("refused"), "{err}");
    }
    // Random bytes at the store and at rank 1's node endpoint.
    let log1 = std::fs::read_to_string(job.stderr_path(1, 0)).unwrap();
    let node_addr = log1
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .unwrap()
        .trim_end_matches(',')
        .to_string();
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    for target in [format!("127.0.0.1:{}", job.port), node_addr] {
        for len in [3usize, 56, 200, 4096] {
            let mut s = TcpStream::connect(&target).unwrap();
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
        }
    }
    let exits = job.wait_all(Duration::from_secs(180));
    assert_eq!(exits, vec![Some(true), Some(true)]);
    let s0 = job.summary(0, 0);
    assert_eq!(s0["lost_ranks"], serde_json::json!([]));
    assert!(s0["final_test_accuracy"].as_f64().unwrap() > 0.7, "{s0}");
    let logs = std::fs::read_to_string(job.stderr_path(0, 0)).unwrap()
        + &std::fs::read_to_string(job.stderr_path(1, 0)).unwrap();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn sigterm_stops_a_rank_cleanly_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::new(
        dir.path(),
        2,
        &[
            "--epochs",
            "40",
            "--train-subset",
            "8000",
            "--test-subset",
            "500",
            "--checkpoint-every",
            "1",
        ],
    );
    job.start_all();
    // Past epoch 3's log line, each rank has saved its epoch-2 checkpoint.
    for r in 0..2 {
        job.wait_for(r, 0, "epoch   3/40", Duration::from_secs(120));
    }
    for r in 0..2 {
        let pid = job.children[r].as_ref().unwrap().id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let exits = job.wait_all(Duration::from_secs(60));
    assert_eq!(
        exits,
        vec![Some(false), Some(false)],
        "interrupted ranks exit non-zero"
    );
    for r in 0..2 {
        let err = std::fs::read_to_string(job.stderr_path(r, 0)).unwrap();
        assert!(err.contains("interrupted"), "{err}");
        let summary = job.summary(r, 0);
        assert_eq!(summary["status"], "interrupted", "{summary}");
        assert_eq!(summary["rank"], r);
        assert!(!err.contains("panicked"), "{err}");
        let ck = job
            .out
            .join(format!("rank-{r}"))
            .join("checkpoint.safetensors");
        assert!(ck.is_file(), "no checkpoint for rank {r}");
    }
}
