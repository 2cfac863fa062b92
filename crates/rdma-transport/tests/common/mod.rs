//! Helpers for the RDMA tests: device configuration from the environment, skipping outside the
//! soft-RoCE VM, and child processes (the test binary re-run in a child role) talking to the
//! parent test over line-based pipes.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use swarmsgd_rdma::RdmaConfig;

/// Environment variable naming the role of a child process.
pub const ROLE: &str = "SWARM_RDMA_TEST_ROLE";

/// The configuration of side `side` ("A": the parent, "B": the children): `SWARM_RDMA_DEV_<side>`,
/// `SWARM_RDMA_IP_<side>`, falling back to the plain `SWARM_RDMA_*` variables.
pub fn cfg(side: &str) -> RdmaConfig {
    let mut cfg = RdmaConfig::from_env().unwrap();
    if let Ok(d) = std::env::var(format!("SWARM_RDMA_DEV_{side}")) {
        cfg.device.name = Some(d);
    }
    if let Ok(ip) = std::env::var(format!("SWARM_RDMA_IP_{side}")) {
        cfg.device.ipv4 = Some(ip.parse().unwrap());
    }
    cfg.op_timeout = Duration::from_secs(120);
    cfg
}

/// True (after printing why) when there is no RDMA device and the test should skip. Inside the
/// VM `SWARM_RDMA_REQUIRE=1` turns a missing device into a failure.
pub fn skip(test: &str) -> bool {
    match swarmsgd_rdma::device_available(&cfg("A")) {
        Ok(()) => false,
        Err(e) => {
            if std::env::var("SWARM_RDMA_REQUIRE").as_deref() == Ok("1") {
                panic!("{test}: SWARM_RDMA_REQUIRE=1 but {e}");
            }
            eprintln!(
                "SKIPPED {test}: {e}. The RDMA tests run for real in the soft-RoCE VM: \
                 bash tools/rxe-vm/test.sh"
            );
            true
        }
    }
}

pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Deterministic bytes for (seed, len): a xorshift stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A child process of this test binary running one test in role `role`.
pub struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    inp: ChildStdin,
    pub name: String,
}

impl Peer {
    pub fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Peer {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let inp = child.stdin.take().unwrap();
        Peer {
            child,
            out,
            inp,
            name: role.to_string(),
        }
    }

    /// Reads lines until one starting with `tag`; returns the rest of it.
    pub fn expect(&mut self, tag: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "child {} exited before sending {tag}", self.name);
            // libtest may print "test NAME ... " before the child's first line: find the marker.
            let l = line.trim_end();
            if let Some(at) = l.find(&format!("@@{tag}")) {
                return l[at + 2 + tag.len()..].trim_start().to_string();
            }
            if let Some(at) = l.find("@@FAIL") {
                panic!("child {} failed: {}", self.name, &l[at + 6..]);
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.inp, "{line}").unwrap();
        self.inp.flush().unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_ok(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child {} exited with {status}", self.name);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The child's side of the pipes.
pub fn say(tag: &str, rest: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{tag} {rest}").unwrap();
    out.flush().unwrap();
}

/// Reads one line from the parent, stripping `tag`.
pub fn hear(tag: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::stdin().read_line(&mut line).unwrap();
        assert!(n > 0, "parent closed the pipe before sending {tag}");
        if let Some(rest) = line.trim_end().strip_prefix(tag) {
            return rest.trim_start().to_string();
        }
    }
}

/// Progress note on stderr (shown with --nocapture, as in the VM stage), tagged with the role.
pub fn note(msg: &str) {
    use std::sync::OnceLock;
    static T0: OnceLock<std::time::Instant> = OnceLock::new();
    let t = T0
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64();
    let who = role().unwrap_or_else(|| "parent".into());
    eprintln!("[{t:8.3}s {who}] {msg}");
}
