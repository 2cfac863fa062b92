//! The supervisor: spawns the processes of a job, streams their output line by line with a
//! rank prefix, records summaries and exit statuses, enforces the timeout, stops everything on
//! SIGINT/SIGTERM/SIGHUP (SIGTERM to each child's process group, then SIGKILL after the grace
//! period) and leaves no child behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::LauncherError;
use crate::pin::{self, Binding};
use crate::summary::{self, ExitInfo, RankRecord, SUMMARY_MARKER};
use crate::wrap;

/// How a process's output lines map to ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demux {
    /// The process is one rank (local, ssh).
    Rank(u32),
    /// srun `--label`: lines start with `K: ` (possibly space-padded).
    SrunLabel,
    /// Open MPI `--tag-output`: lines start with `[J,K]<stdout>:` or `[J,K]<stderr>:`.
    MpiTag,
}

/// One process to start.
pub struct ProcSpec {
    /// Name in messages: `rank 3`, `srun`, `mpirun`.
    pub name: String,
    /// The command (stdio and process group are set by the supervisor).
    pub command: Command,
    /// How to attribute its output.
    pub demux: Demux,
    /// Bytes written to its stdin, which then stays open until the process ends or the job is
    /// stopped (ssh: the job secret). `None`: stdin is /dev/null.
    pub stdin_data: Option<Vec<u8>>,
    /// CPUs to bind it to (`--pin`).
    pub pin: Option<Binding>,
    /// What to tell the user when the program does not exist.
    pub missing_hint: String,
    /// srun only: the `scancel` program. srun answers SIGTERM by killing its step at once
    /// (SIGKILL), so a graceful stop asks `scancel --signal=TERM JOB.STEP` to send the tasks
    /// SIGTERM instead, once the step's id is known.
    pub scancel: Option<PathBuf>,
}

/// Job-wide supervision options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Number of ranks.
    pub world_size: u32,
    /// Stop the job after this long.
    pub timeout: Option<Duration>,
    /// SIGTERM-to-SIGKILL grace period.
    pub grace: Duration,
    /// Stop the others when one rank fails.
    pub kill_on_failure: bool,
}

/// What the supervisor observed.
#[derive(Debug)]
pub struct Outcome {
    /// Per-rank summaries and exit statuses, indexed by rank.
    pub records: Vec<RankRecord>,
    /// Exit status of each spawned process, by name (for srun/mpirun, the one launcher process).
    pub processes: Vec<(String, Option<ExitInfo>)>,
    /// Why the job was stopped early, if it was.
    pub stopped: Option<StopReason>,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

/// Why the supervisor stopped a job.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    /// `--timeout` expired.
    Timeout(f64),
    /// The launcher received this signal.
    Signal(i32),
    /// `--kill-on-failure` and this rank failed.
    RankFailed(u32),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Timeout(s) => write!(f, "timeout after {s} s"),
            StopReason::Signal(s) => write!(f, "launcher received {}", summary::signal_name(*s)),
            StopReason::RankFailed(r) => write!(f, "rank {r} failed (--kill-on-failure)"),
        }
    }
}

enum Event {
    Line {
        proc: usize,
        err: bool,
        line: Vec<u8>,
    },
    Eof {
        proc: usize,
    },
    Signal(i32),
}

struct Proc {
    name: String,
    child: Child,
    pid: i32,
    demux: Demux,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    open_streams: u8,
    exited_at: Option<Instant>,
    scancel: Option<PathBuf>,
    /// SIGKILL was sent to what the exited leader left in its group.
    leftovers_killed: bool,
    /// srun only: `JOB.STEP`, from the wrapper's first line.
    slurm_step: Option<String>,
}

fn exit_info(status: ExitStatus) -> ExitInfo {
    ExitInfo {
        exit_code: status.code(),
        signal: status.signal(),
    }
}

fn signal_group(pid: i32, sig: Signal) {
    // ESRCH (nothing left in the group) is the normal case after the leader exited.
    let _ = killpg(Pid::from_raw(pid), sig);
}

fn spawn_reader<R: Read + Send + 'static>(proc: usize, err: bool, stream: R, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    let line = std::mem::take(&mut buf);
                    if tx.send(Event::Line { proc, err, line }).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof { proc });
    });
}

fn spawn_one(spec: &mut ProcSpec) -> std::io::Result<Child> {
    spec.command
        .stdin(if spec.stdin_data.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    match (&spec.pin, spec.demux) {
        (Some(binding), Demux::Rank(rank)) => {
            let binding = binding.clone();
            let command = &mut spec.command;
            std::thread::scope(|s| {
                s.spawn(move || {
                    if pin::bind_this_thread(rank, &binding) {
                        eprintln!(
                            "launcher: rank {rank} bound to CPUs {} ({})",
                            topology::hw::format_ranges(&binding.cpus),
                            binding.why
                        );
                    }
                    command.spawn()
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("spawning thread panicked")))
            })
        }
        _ => spec.command.spawn(),
    }
}

/// Parses srun `--label` output: `K: text` with optional leading spaces.
fn split_srun_label(line: &[u8]) -> Option<(u32, &[u8])> {
    let start = line.iter().position(|&b| b != b' ')?;
    let rest = &line[start..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b':') {
        return None;
    }
    let rank = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let text = &rest[digits + 1..];
    Some((rank, text.strip_prefix(b" ").unwrap_or(text)))
}

/// Parses an Open MPI `--tag-output` tag at the start of `bytes`: `[J,K]<stdout>:`,
/// `[J,K]<stderr>:` or `[J,K]:`; returns rank K, whether it is stderr, and the tag's length.
fn parse_mpi_tag(bytes: &[u8]) -> Option<(u32, bool, usize)> {
    let rest = bytes.strip_prefix(b"[")?;
    let close = rest.iter().take(48).position(|&b| b == b']')?;
    let inside = std::str::from_utf8(&rest[..close]).ok()?;
    let (job, rank) = inside.split_once(',')?;
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rank = rank.parse().ok()?;
    let after = &rest[close + 1..];
    let used = 1 + close + 1;
    for (tag, err) in [
        (&b"<stdout>:"[..], false),
        (&b"<stderr>:"[..], true),
        (&b":"[..], false),
    ] {
        if after.starts_with(tag) {
            return Some((rank, err, used + tag.len()));
        }
    }
    None
}

/// A piece of an mpirun output line: (rank, is stderr) from its tag, and its text.
type MpiPiece = (Option<(u32, bool)>, Vec<u8>);

/// Splits one line of `mpirun --tag-output` into per-rank pieces. Open MPI tags every chunk a
/// rank writes, not every line, so a line written in pieces arrives as
/// `[1,2]<stderr>:text[1,2]<stderr>:` and pieces of different ranks can share a line: the tags
/// inside the line are removed and consecutive pieces of the same rank joined. Text before any
/// tag is mpirun's own (`None`).
fn split_mpi_line(line: &[u8]) -> Vec<MpiPiece> {
    let mut pieces: Vec<MpiPiece> = vec![(None, Vec::new())];
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'[' {
            if let Some((rank, err, len)) = parse_mpi_tag(&line[i..]) {
                let key = Some((rank, err));
                let last = pieces.len() - 1;
                if pieces[last].0 != key {
                    if pieces[last].1.is_empty() {
                        pieces[last].0 = key;
                    } else {
                        pieces.push((key, Vec::new()));
                    }
                }
                i += len;
                continue;
            }
        }
        let last = pieces.len() - 1;
        pieces[last].1.push(line[i]);
        i += 1;
    }
    if pieces.len() > 1 {
        pieces.retain(|(_, text)| !text.is_empty());
    }
    pieces
}

struct Supervisor {
    opts: Options,
    procs: Vec<Proc>,
    records: Vec<RankRecord>,
    stopped: Option<StopReason>,
    stop_deadline: Option<Instant>,
    killed: bool,
    /// When SIGKILL follows the SIGTERM that `kill_all` sent to srun.
    hard_kill_at: Option<Instant>,
    /// `scancel` processes, reaped at the end.
    helpers: Vec<Child>,
}

impl Supervisor {
    fn print(&self, err: bool, prefix: &str, text: &[u8]) {
        let mut line = Vec::with_capacity(prefix.len() + text.len() + 1);
        line.extend_from_slice(prefix.as_bytes());
        line.extend_from_slice(text);
        line.push(b'\n');
        // A closed stdout/stderr must not kill the job: ignore write errors.
        if err {
            let _ = std::io::stderr().lock().write_all(&line);
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    }

    fn on_line(&mut self, proc: usize, err: bool, line: &[u8]) {
        match self.procs[proc].demux {
            Demux::Rank(r) => self.on_rank_line(proc, Some(r), err, line),
            Demux::SrunLabel => match split_srun_label(line) {
                Some((r, t)) => self.on_rank_line(proc, Some(r), err, t),
                None => self.on_rank_line(proc, None, err, line),
            },
            Demux::MpiTag => {
                for (tag, text) in split_mpi_line(line) {
                    match tag {
                        Some((r, e)) => self.on_rank_line(proc, Some(r), err || e, &text),
                        None => self.on_rank_line(proc, None, err, &text),
                    }
                }
            }
        }
    }

    fn on_rank_line(&mut self, proc: usize, rank: Option<u32>, err: bool, text: &[u8]) {
        let Some(rank) = rank.filter(|&r| r < self.opts.world_size) else {
            let prefix = format!("[{}] ", self.procs[proc].name);
            self.print(err, &prefix, text);
            return;
        };
        if !err {
            let as_str = String::from_utf8_lossy(text);
            if let Some(step) = as_str.strip_prefix(wrap::SLURM_STEP_MARKER) {
                if self.procs[proc].scancel.is_some() {
                    self.procs[proc].slurm_step = Some(step.trim().to_string());
                    return;
                }
            }
            // The wrapper's exit line; glued to the command's last line when that had no
            // newline.
            if let Some((before, code)) = wrap::split_rank_exit(&as_str) {
                if !before.is_empty() {
                    self.print(err, &format!("[rank {rank}] "), before.as_bytes());
                }
                self.on_rank_exit(
                    rank,
                    ExitInfo {
                        exit_code: Some(code),
                        signal: None,
                    },
                );
                return;
            }
            if let Some(json) = as_str.strip_prefix(SUMMARY_MARKER) {
                match summary::parse_summary(json) {
                    Ok(obj) => {
                        if let Some(r) = obj.get("rank").and_then(|v| v.as_u64()) {
                            if r != u64::from(rank) {
                                eprintln!(
                                    "launcher: warning: rank {rank} printed a summary for rank {r}"
                                );
                            }
                        }
                        self.records[rank as usize].summary = Some(obj);
                    }
                    Err(e) => eprintln!("launcher: warning: rank {rank}: {e}"),
                }
            }
        }
        self.print(err, &format!("[rank {rank}] "), text);
    }

    fn on_rank_exit(&mut self, rank: u32, info: ExitInfo) {
        self.records[rank as usize].exit = Some(info);
        if !info.success() && self.opts.kill_on_failure && self.stopped.is_none() {
            eprintln!(
                "launcher: rank {rank} failed ({info}); stopping the job (--kill-on-failure)"
            );
            self.stop(StopReason::RankFailed(rank));
        }
    }

    /// Starts stopping the job: SIGTERM to every running process group (for srun: to its
    /// tasks through `scancel`; for ssh: end of the rank's stdin), SIGKILL after the grace
    /// period.
    fn stop(&mut self, reason: StopReason) {
        if self.stopped.is_none() {
            self.stopped = Some(reason);
        }
        self.stop_deadline = Some(Instant::now() + self.opts.grace);
        for p in &mut self.procs {
            // ssh: closing the rank's stdin makes the remote wrapper send the rank SIGTERM,
            // and the rank's last words still come back over the connection.
            let stdin_stop = p.stdin.take().is_some();
            if p.status.is_some() || stdin_stop {
                continue;
            }
            if let (Some(scancel), Some(step)) = (&p.scancel, &p.slurm_step) {
                match Command::new(scancel)
                    .args(["--signal=TERM", "--quiet", step.as_str()])
                    .stdin(Stdio::null())
                    .spawn()
                {
                    Ok(child) => {
                        self.helpers.push(child);
                        continue;
                    }
                    Err(e) => eprintln!(
                        "launcher: cannot run {} ({e}); stopping srun instead",
                        scancel.display()
                    ),
                }
            }
            signal_group(p.pid, Signal::SIGTERM);
        }
    }

    /// The end of the grace period (or a second Ctrl-C): SIGKILL every group. srun gets
    /// SIGTERM instead, which makes it kill its step on every node, and SIGKILL 10 s later.
    fn kill_all(&mut self) {
        self.killed = true;
        let mut srun_left = false;
        for p in &mut self.procs {
            p.stdin = None;
            if p.status.is_none() && p.scancel.is_some() && self.hard_kill_at.is_none() {
                signal_group(p.pid, Signal::SIGTERM);
                srun_left = true;
            } else if p.status.is_none() || p.open_streams > 0 {
                // Also groups whose leader already exited: leftovers keep pipes open.
                signal_group(p.pid, Signal::SIGKILL);
            }
        }
        if srun_left {
            self.hard_kill_at = Some(Instant::now() + Duration::from_secs(10));
        }
    }

    fn poll_children(&mut self) {
        for i in 0..self.procs.len() {
            if self.procs[i].status.is_some() {
                continue;
            }
            let status = match self.procs[i].child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("launcher: waiting for {}: {e}", self.procs[i].name);
                    continue;
                }
            };
            let p = &mut self.procs[i];
            p.status = Some(status);
            p.exited_at = Some(Instant::now());
            p.stdin = None;
            // Whatever the leader left in its group is an orphan now: ask it to stop.
            signal_group(p.pid, Signal::SIGTERM);
            let info = exit_info(status);
            match p.demux {
                Demux::Rank(rank) => {
                    // Over ssh the wrapper's report (the remote exit code) came first and is
                    // more precise than ssh's own status: keep it.
                    if self.records[rank as usize].exit.is_none() {
                        self.on_rank_exit(rank, info);
                    }
                }
                Demux::SrunLabel | Demux::MpiTag => {
                    if !info.success() {
                        eprintln!("launcher: {} ended with {info}", p.name);
                    }
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.procs
            .iter()
            .all(|p| p.status.is_some() && p.open_streams == 0)
    }
}

/// Runs the processes of one job to completion (or until stopped) and returns what happened.
pub fn run(specs: Vec<ProcSpec>, opts: Options) -> Result<Outcome, LauncherError> {
    let (tx, rx): (Sender<Event>, Receiver<Event>) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| LauncherError::Io("installing signal handlers".into(), e))?;
    let signal_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        });
    }

    let start = Instant::now();
    let mut sup = Supervisor {
        opts,
        procs: Vec::new(),
        records: vec![RankRecord::default(); opts.world_size as usize],
        stopped: None,
        stop_deadline: None,
        killed: false,
        hard_kill_at: None,
        helpers: Vec::new(),
    };
    for mut spec in specs {
        let program = spec.command.get_program().to_string_lossy().into_owned();
        let mut child = match spawn_one(&mut spec) {
            Ok(c) => c,
            Err(e) => {
                // Do not leave the ranks already started behind.
                for p in &mut sup.procs {
                    signal_group(p.pid, Signal::SIGKILL);
                    let _ = p.child.wait();
                }
                signal_handle.close();
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    LauncherError::MissingProgram {
                        program,
                        hint: spec.missing_hint,
                    }
                } else {
                    LauncherError::Io(format!("starting {} (`{program}`)", spec.name), e)
                });
            }
        };
        let idx = sup.procs.len();
        let mut open_streams = 0;
        if let Some(out) = child.stdout.take() {
            spawn_reader(idx, false, out, tx.clone());
            open_streams += 1;
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(idx, true, err, tx.clone());
            open_streams += 1;
        }
        let mut stdin = child.stdin.take();
        if let (Some(s), Some(data)) = (stdin.as_mut(), spec.stdin_data.as_ref()) {
            if let Err(e) = s.write_all(data).and_then(|()| s.flush()) {
                eprintln!("launcher: writing to {}'s stdin: {e}", spec.name);
            }
        }
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        sup.procs.push(Proc {
            name: spec.name,
            child,
            pid,
            demux: spec.demux,
            stdin,
            status: None,
            open_streams,
            exited_at: None,
            scancel: spec.scancel,
            leftovers_killed: false,
            slurm_step: None,
        });
    }
    drop(tx);

    let deadline = opts.timeout.map(|t| start + t);
    let tick = Duration::from_millis(50);
    loop {
        match rx.recv_timeout(tick) {
            Ok(Event::Line { proc, err, line }) => sup.on_line(proc, err, &line),
            Ok(Event::Eof { proc }) => {
                sup.procs[proc].open_streams = sup.procs[proc].open_streams.saturating_sub(1)
            }
            Ok(Event::Signal(sig)) => {
                if sup.stopped.is_some() && sup.stop_deadline.is_some() {
                    eprintln!(
                        "launcher: {} again; killing every rank now",
                        summary::signal_name(sig)
                    );
                    sup.kill_all();
                } else {
                    eprintln!(
                        "launcher: {}; stopping every rank (SIGTERM, SIGKILL after {:?})",
                        summary::signal_name(sig),
                        opts.grace
                    );
                    sup.stop(StopReason::Signal(sig));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {}
        }
        sup.poll_children();
        let now = Instant::now();
        if let Some(d) = deadline {
            if now >= d && sup.stopped.is_none() && !sup.finished() {
                let secs = opts.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                eprintln!("launcher: timeout after {secs} s; stopping every rank");
                sup.stop(StopReason::Timeout(secs));
            }
        }
        if let Some(d) = sup.hard_kill_at {
            if now >= d && !sup.finished() {
                for p in &sup.procs {
                    if p.status.is_none() || p.open_streams > 0 {
                        signal_group(p.pid, Signal::SIGKILL);
                    }
                }
                sup.hard_kill_at = None;
            }
        }
        if let Some(d) = sup.stop_deadline {
            if now >= d && !sup.killed && !sup.finished() {
                eprintln!("launcher: grace period over; sending SIGKILL");
                sup.kill_all();
            }
        }
        // A leader that exited while leftovers in its group keep its pipes open: SIGKILL that
        // group (only) once the grace period has passed.
        for p in &mut sup.procs {
            if p.open_streams > 0
                && !p.leftovers_killed
                && p.exited_at.is_some_and(|t| now >= t + opts.grace)
            {
                signal_group(p.pid, Signal::SIGKILL);
                p.leftovers_killed = true;
            }
        }
        if sup.finished() {
            break;
        }
        // After SIGKILL, give readers 2 s, then stop waiting for pipes held by processes that
        // left their group (nothing the launcher can signal).
        let settled = |p: &Proc| {
            p.open_streams == 0
                || (p.leftovers_killed
                    && p.exited_at
                        .is_some_and(|t| now >= t + opts.grace + Duration::from_secs(2)))
        };
        if sup.procs.iter().all(|p| p.status.is_some() && settled(p)) {
            break;
        }
    }
    // Drain lines that arrived with the last EOFs.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Line { proc, err, line } = ev {
            sup.on_line(proc, err, &line);
        }
    }
    signal_handle.close();
    for mut h in sup.helpers.drain(..) {
        if !matches!(h.try_wait(), Ok(Some(_))) {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    let processes = sup
        .procs
        .iter()
        .map(|p| (p.name.clone(), p.status.map(exit_info)))
        .collect();
    Ok(Outcome {
        records: sup.records,
        processes,
        stopped: sup.stopped,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn srun_labels() {
        assert_eq!(split_srun_label(b"3: hello"), Some((3, &b"hello"[..])));
        assert_eq!(split_srun_label(b" 12: x: y"), Some((12, &b"x: y"[..])));
        assert_eq!(split_srun_label(b"0:"), Some((0, &b""[..])));
        assert_eq!(split_srun_label(b"srun: error: x"), None);
        assert_eq!(split_srun_label(b""), None);
    }

    #[test]
    fn mpi_tags() {
        let key = |r, e| Some((r, e));
        assert_eq!(
            split_mpi_line(b"[1,3]<stdout>:hi"),
            vec![(key(3, false), b"hi".to_vec())]
        );
        assert_eq!(
            split_mpi_line(b"[1,0]<stderr>: e"),
            vec![(key(0, true), b" e".to_vec())]
        );
        // A line written in two pieces, and pieces of two ranks on one line.
        assert_eq!(
            split_mpi_line(b"[1,2]<stderr>:0.39 s/epoch[1,2]<stderr>:"),
            vec![(key(2, true), b"0.39 s/epoch".to_vec())]
        );
        assert_eq!(
            split_mpi_line(b"[1,0]<stdout>:abc[1,1]<stdout>:line"),
            vec![
                (key(0, false), b"abc".to_vec()),
                (key(1, false), b"line".to_vec())
            ]
        );
        assert_eq!(
            split_mpi_line(b"[1,0]<stdout>:"),
            vec![(key(0, false), vec![])]
        );
        assert_eq!(
            split_mpi_line(b"[host:123] oops [x]"),
            vec![(None, b"[host:123] oops [x]".to_vec())]
        );
    }
}
