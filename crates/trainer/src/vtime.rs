//! Virtual time for `swarm train --cluster`: the cluster a run emulates (network, compute,
//! stragglers), and the clock that makes node threads take turns in virtual-time order.
//!
//! Every node is a thread, but only one runs at a time: the one whose virtual time is the
//! earliest. A node runs its real local step, then tells the clock how long the step takes on the
//! emulated machine; the clock parks it and hands the turn to the next earliest node, or runs the
//! next timer (a transfer that completes) first. Ties go to timers, then to the order in which
//! nodes were parked, so a run is a deterministic function of its seed and spec, whatever the
//! load of the machine that emulates it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Nanoseconds of virtual time.
pub(crate) type Nanos = u64;

fn nanos(seconds: f64) -> Nanos {
    (seconds * 1e9).round().max(0.0) as Nanos
}

/// Links of the emulated cluster: every node has one full-duplex NIC, the switch never blocks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkModel {
    /// Preset name, or `custom`.
    pub name: String,
    /// One-way latency of a message, seconds.
    pub latency_seconds: f64,
    /// Bandwidth of each NIC, bits per second.
    pub bits_per_second: f64,
    /// All messages share one link of this bandwidth (a loopback interface, a hub) instead of
    /// each node having its own NIC.
    pub shared_medium: bool,
}

/// `(name, latency in microseconds, Gbit/s)` of the network presets.
pub const NETWORK_PRESETS: [(&str, f64, f64); 5] = [
    ("ib-hdr", 1.5, 200.0),
    ("ib-edr", 2.0, 100.0),
    ("100gbe", 5.0, 100.0),
    ("25gbe", 10.0, 25.0),
    ("10gbe", 30.0, 10.0),
];

impl LinkModel {
    /// A preset by name (see [`NETWORK_PRESETS`]).
    pub fn preset(name: &str) -> Option<LinkModel> {
        NETWORK_PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(n, us, gbps)| LinkModel {
                name: n.into(),
                latency_seconds: us * 1e-6,
                bits_per_second: gbps * 1e9,
                shared_medium: false,
            })
    }

    /// Seconds that `bytes` occupy a NIC.
    pub fn wire_seconds(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.bits_per_second
    }

    /// Seconds of a ring all-reduce of `bytes` over `n` nodes: 2 (n - 1) steps, each one message
    /// of `bytes / n` on every link at once.
    pub fn ring_allreduce_seconds(&self, n: usize, bytes: u64) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let chunk = bytes.div_ceil(n as u64);
        2.0 * (n as f64 - 1.0) * (self.latency_seconds + self.wire_seconds(chunk))
    }
}

/// How long one local step takes before jitter and stragglers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum StepTime {
    /// This machine's step time, measured once before the run.
    Measured,
    /// A fixed time, seconds.
    Fixed(f64),
}

/// Slow nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stragglers {
    /// Fraction of the nodes that are slow (at any one time, for transient ones).
    pub fraction: f64,
    /// How many times slower a slow node's step is.
    pub factor: f64,
    /// `None`: the same nodes are slow for the whole run; `Some(p)`: virtual time is cut into
    /// periods of `p` seconds and each node is slow in a period with probability `fraction`.
    pub period_seconds: Option<f64>,
}

/// The cluster a `--cluster` run emulates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    /// Links.
    pub network: LinkModel,
    /// Step time.
    pub step: StepTime,
    /// Per-node speed factors multiplying the step time (empty: all 1); cycled over the nodes.
    pub speed: Vec<f64>,
    /// Sigma of the log-normal jitter of each step's time (mean kept at 1); 0 for none.
    pub jitter_sigma: f64,
    /// Slow nodes, if any.
    pub stragglers: Option<Stragglers>,
    /// Evaluate the averaged model every this many virtual seconds (default: the compute time of
    /// one epoch of a node).
    pub eval_every_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    network: Option<String>,
    latency_us: Option<f64>,
    gbps: Option<f64>,
    shared_medium: Option<bool>,
    step: Option<String>,
    speed: Option<Vec<f64>>,
    jitter: Option<String>,
    stragglers: Option<StragglersFile>,
    eval_every_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StragglersFile {
    fraction: f64,
    factor: f64,
    period_seconds: Option<f64>,
}

const SPEC_HELP: &str = "a cluster is a TOML file, or a preset name (ib-hdr, ib-edr, 100gbe, \
    25gbe, 10gbe) or net:LATENCY_US:GBPS, optionally followed by comma-separated items: \
    shared (every message crosses one shared link, like a loopback interface), \
    fixed:MS or measured (step time), lognormal:SIGMA (jitter), \
    stragglers:FRACTION:FACTOR[:PERIOD_S] (slow nodes, persistent or re-drawn every PERIOD_S \
    virtual seconds), eval:SECONDS; e.g. 10gbe,fixed:5,stragglers:0.1:4";

impl ClusterSpec {
    /// Parses `--cluster`: the path of a TOML file, or a preset name with optional items (see
    /// the error message for the grammar).
    pub fn parse(text: &str) -> Result<ClusterSpec, String> {
        let path = Path::new(text);
        if text.ends_with(".toml") || path.is_file() {
            let body = std::fs::read_to_string(path)
                .map_err(|e| format!("cluster file {text}: {e}; {SPEC_HELP}"))?;
            let file: SpecFile =
                toml::from_str(&body).map_err(|e| format!("cluster file {text}: {e}"))?;
            return Self::from_file(file).map_err(|e| format!("cluster file {text}: {e}"));
        }
        let mut items = text.split(',').map(str::trim);
        let head = items.next().unwrap_or_default();
        let mut file = SpecFile::default();
        if let Some(rest) = head.strip_prefix("net:") {
            let (lat, gbps) = rest
                .split_once(':')
                .ok_or_else(|| format!("cluster '{text}': net:LATENCY_US:GBPS; {SPEC_HELP}"))?;
            file.latency_us = Some(number(lat, text)?);
            file.gbps = Some(number(gbps, text)?);
        } else {
            file.network = Some(head.to_string());
        }
        for item in items {
            let (key, value) = item.split_once(':').unwrap_or((item, ""));
            match key {
                "fixed" | "measured" => file.step = Some(item.to_string()),
                "shared" => file.shared_medium = Some(true),
                "lognormal" => file.jitter = Some(item.to_string()),
                "eval" => file.eval_every_seconds = Some(number(value, text)?),
                "stragglers" => {
                    let parts: Vec<&str> = value.split(':').collect();
                    if !(2..=3).contains(&parts.len()) {
                        return Err(format!(
                            "cluster '{text}': stragglers:FRACTION:FACTOR[:PERIOD_S]"
                        ));
                    }
                    file.stragglers = Some(StragglersFile {
                        fraction: number(parts[0], text)?,
                        factor: number(parts[1], text)?,
                        period_seconds: parts.get(2).map(|p| number(p, text)).transpose()?,
                    });
                }
                _ => {
                    return Err(format!(
                        "cluster '{text}': unknown item '{item}'; {SPEC_HELP}"
                    ))
                }
            }
        }
        Self::from_file(file).map_err(|e| format!("cluster '{text}': {e}"))
    }

    fn from_file(file: SpecFile) -> Result<ClusterSpec, String> {
        let mut network = match (file.network, file.latency_us, file.gbps) {
            (Some(name), None, None) => LinkModel::preset(&name)
                .ok_or_else(|| format!("unknown network '{name}'; {SPEC_HELP}"))?,
            (None, Some(us), Some(gbps)) => {
                if !(us >= 0.0 && us.is_finite() && gbps > 0.0 && gbps.is_finite()) {
                    return Err(format!(
                        "latency {us} us and bandwidth {gbps} Gbit/s: use a latency >= 0 and a \
                         bandwidth > 0"
                    ));
                }
                LinkModel {
                    name: "custom".into(),
                    latency_seconds: us * 1e-6,
                    bits_per_second: gbps * 1e9,
                    shared_medium: false,
                }
            }
            _ => {
                return Err(format!(
                    "give either network = PRESET or both latency_us and gbps; {SPEC_HELP}"
                ))
            }
        };
        network.shared_medium = file.shared_medium.unwrap_or(false);
        let step = match file.step.as_deref() {
            None | Some("measured") => StepTime::Measured,
            Some(s) => match s.strip_prefix("fixed:").map(str::parse::<f64>) {
                Some(Ok(ms)) if ms > 0.0 && ms.is_finite() => StepTime::Fixed(ms * 1e-3),
                _ => return Err(format!("step '{s}': use measured or fixed:MS with MS > 0")),
            },
        };
        let jitter_sigma = match file.jitter.as_deref() {
            None => 0.0,
            Some(s) => match s.strip_prefix("lognormal:").map(str::parse::<f64>) {
                Some(Ok(sigma)) if (0.0..=3.0).contains(&sigma) => sigma,
                _ => {
                    return Err(format!(
                        "jitter '{s}': use lognormal:SIGMA, 0 <= SIGMA <= 3"
                    ))
                }
            },
        };
        let speed = file.speed.unwrap_or_default();
        if speed.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err("speed: every factor must be a positive number".into());
        }
        let stragglers = match file.stragglers {
            None => None,
            Some(s) => {
                let period_ok = s.period_seconds.is_none_or(|p| p > 0.0 && p.is_finite());
                if !((0.0..=1.0).contains(&s.fraction) && s.factor >= 1.0 && period_ok) {
                    return Err(format!(
                        "stragglers {s:?}: fraction in 0..=1, factor >= 1, period > 0 seconds"
                    ));
                }
                Some(Stragglers {
                    fraction: s.fraction,
                    factor: s.factor,
                    period_seconds: s.period_seconds,
                })
            }
        };
        if let Some(e) = file.eval_every_seconds {
            if !(e > 0.0 && e.is_finite()) {
                return Err(format!(
                    "eval every {e} s: use a positive number of seconds"
                ));
            }
        }
        Ok(ClusterSpec {
            network,
            step,
            speed,
            jitter_sigma,
            stragglers,
            eval_every_seconds: file.eval_every_seconds,
        })
    }
}

fn number(s: &str, spec: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("cluster '{spec}': '{s}' is not a number; {SPEC_HELP}"))
}

/// Each node's step times under a [`ClusterSpec`], drawn from seeded streams.
pub(crate) struct ComputeModel {
    base_seconds: f64,
    speed: Vec<f64>,
    sigma: f64,
    stragglers: Option<Stragglers>,
    /// Persistent stragglers: whether node i is one.
    slow: Vec<bool>,
    seed: u64,
    jitter: Vec<StdRng>,
}

impl ComputeModel {
    /// The model of `n` nodes with step time `base_seconds` before speed, jitter and stragglers.
    pub(crate) fn new(spec: &ClusterSpec, n: usize, base_seconds: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_57A6_61E5);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut slow = vec![false; n];
        if let Some(s) = spec.stragglers.filter(|s| s.period_seconds.is_none()) {
            let count = (s.fraction * n as f64).round() as usize;
            for &i in &order[..count.min(n)] {
                slow[i] = true;
            }
        }
        ComputeModel {
            base_seconds,
            speed: (0..n)
                .map(|i| {
                    if spec.speed.is_empty() {
                        1.0
                    } else {
                        spec.speed[i % spec.speed.len()]
                    }
                })
                .collect(),
            sigma: spec.jitter_sigma,
            stragglers: spec.stragglers,
            slow,
            seed,
            jitter: (0..n)
                .map(|i| StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9)))
                .collect(),
        }
    }

    /// Whether `node` is slow at virtual time `now`.
    pub(crate) fn is_slow(&self, node: usize, now: Nanos) -> bool {
        match self.stragglers {
            None => false,
            Some(Stragglers {
                period_seconds: None,
                ..
            }) => self.slow[node],
            Some(Stragglers {
                fraction,
                period_seconds: Some(p),
                ..
            }) => {
                let period = (now as f64 * 1e-9 / p) as u64;
                let h = splitmix(self.seed ^ splitmix(node as u64 ^ splitmix(period)));
                (h >> 11) as f64 / (1u64 << 53) as f64 <= fraction && fraction > 0.0
            }
        }
    }

    /// The duration of `node`'s next step, starting at virtual time `now`.
    pub(crate) fn next_step(&mut self, node: usize, now: Nanos) -> Nanos {
        let mut seconds = self.base_seconds * self.speed[node];
        if self.sigma > 0.0 {
            let z = standard_normal(&mut self.jitter[node]);
            seconds *= (self.sigma * z - self.sigma * self.sigma / 2.0).exp();
        }
        if self.is_slow(node, now) {
            seconds *= self.stragglers.map_or(1.0, |s| s.factor);
        }
        nanos(seconds).max(1)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Box-Muller, from two uniform draws.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

type Timer = Box<dyn FnOnce() + Send>;

/// What a node's virtual time went to (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NodeTime {
    /// Computing local steps.
    pub busy_seconds: f64,
    /// Waiting: for a transfer, a collective, or the slowest node.
    pub idle_seconds: f64,
    /// The node's virtual time when it stopped.
    pub end_seconds: f64,
}

struct ClockState {
    node_time: Vec<Nanos>,
    running: Option<usize>,
    /// `(time, kind, seq)`: kind 0 is a timer (runs first at equal times), 1 wakes a node.
    queue: BinaryHeap<Reverse<(Nanos, u8, u64)>>,
    wakes: HashMap<u64, usize>,
    timers: HashMap<u64, Timer>,
    seq: u64,
    entered: usize,
    live: Vec<bool>,
    tx_free: Vec<Nanos>,
    rx_free: Vec<Nanos>,
    busy: Vec<Nanos>,
    idle: Vec<Nanos>,
    /// Nodes waiting at the collective, and the latest of their arrival times.
    gathered: Vec<usize>,
    gathered_latest: Nanos,
    gathered_cost: Nanos,
    /// Background collectives in progress, by key.
    background: HashMap<u64, BackgroundRound>,
    failure: Option<String>,
    /// Real time the nodes held the turn, summed; and when the holder got it.
    held: f64,
    held_since: Option<Instant>,
    /// Real time between handing the turn to a node and that node running, summed; and when the
    /// turn was last handed over.
    handoff: f64,
    handed_at: Option<Instant>,
}

/// The virtual clock of an emulated cluster. See the module documentation.
pub(crate) struct VirtualClock {
    state: Mutex<ClockState>,
    turn: Vec<Condvar>,
    link: LinkModel,
}

/// A collective that runs while its nodes compute (LASGD's all-reduce).
#[derive(Default)]
struct BackgroundRound {
    started: usize,
    finished: usize,
    latest: Nanos,
    /// Nodes that wait for it to complete.
    parked: Vec<usize>,
    release: Option<Nanos>,
}

/// The run stopped (a node failed, or no node can move): the caller should return.
#[derive(Debug, Clone)]
pub(crate) struct Stopped(pub String);

impl From<Stopped> for TrainError {
    fn from(s: Stopped) -> Self {
        TrainError::Node(s.0)
    }
}

impl VirtualClock {
    /// A clock for `n` node threads on `link`; every node must [`VirtualClock::enter`] before any
    /// runs.
    pub(crate) fn new(n: usize, link: LinkModel) -> Self {
        VirtualClock {
            state: Mutex::new(ClockState {
                node_time: vec![0; n],
                running: None,
                queue: BinaryHeap::new(),
                wakes: HashMap::new(),
                timers: HashMap::new(),
                seq: 0,
                entered: 0,
                live: vec![true; n],
                tx_free: vec![0; n],
                rx_free: vec![0; n],
                busy: vec![0; n],
                idle: vec![0; n],
                gathered: Vec::new(),
                gathered_latest: 0,
                gathered_cost: 0,
                background: HashMap::new(),
                failure: None,
                held: 0.0,
                held_since: None,
                handoff: 0.0,
                handed_at: None,
            }),
            turn: (0..n).map(|_| Condvar::new()).collect(),
            link,
        }
    }

    pub(crate) fn link(&self) -> &LinkModel {
        &self.link
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_wake(state: &mut ClockState, node: usize, at: Nanos) {
        state.seq += 1;
        let seq = state.seq;
        state.wakes.insert(seq, node);
        state.queue.push(Reverse((at, 1, seq)));
    }

    /// Hands the turn to the earliest event, running the timers due before it.
    fn dispatch(&self, state: &mut ClockState) {
        if let Some(since) = state.held_since.take() {
            state.held += since.elapsed().as_secs_f64();
        }
        state.running = None;
        while let Some(Reverse((_, kind, seq))) = state.queue.pop() {
            if kind == 0 {
                if let Some(timer) = state.timers.remove(&seq) {
                    timer();
                }
                continue;
            }
            if let Some(node) = state.wakes.remove(&seq) {
                state.running = Some(node);
                state.handed_at = Some(Instant::now());
                self.turn[node].notify_one();
                return;
            }
        }
        if state.live.iter().any(|&l| l) && state.failure.is_none() {
            state.failure = Some(
                "virtual-time emulation: every live node waits and no event is left (a node \
                 waits for a peer that stopped)"
                    .into(),
            );
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        for cv in &self.turn {
            cv.notify_all();
        }
    }

    fn wait_turn<'a>(
        &self,
        me: usize,
        mut state: MutexGuard<'a, ClockState>,
    ) -> Result<MutexGuard<'a, ClockState>, Stopped> {
        loop {
            if let Some(f) = &state.failure {
                return Err(Stopped(f.clone()));
            }
            if state.running == Some(me) {
                if let Some(handed) = state.handed_at.take() {
                    state.handoff += handed.elapsed().as_secs_f64();
                }
                state.held_since = Some(Instant::now());
                return Ok(state);
            }
            state = self.turn[me].wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Node `me` joins at virtual time 0 and waits for its turn; the first turn goes out when every
    /// node has entered.
    pub(crate) fn enter(&self, me: usize) -> Result<(), Stopped> {
        let mut state = self.lock();
        state.entered += 1;
        if state.entered == self.turn.len() {
            // In node order, not in the order the threads happened to arrive.
            for node in 0..self.turn.len() {
                Self::push_wake(&mut state, node, 0);
            }
            self.dispatch(&mut state);
        }
        self.wait_turn(me, state).map(drop)
    }

    /// Node `me`'s virtual time, seconds.
    pub(crate) fn now(&self, me: usize) -> Nanos {
        self.lock().node_time[me]
    }

    /// Node `me` (holding the turn) spends `duration` computing (`busy`) or waiting; it gets the
    /// turn back when every event before its new time has happened.
    pub(crate) fn advance(&self, me: usize, duration: Nanos, busy: bool) -> Result<(), Stopped> {
        let mut state = self.lock();
        state.node_time[me] += duration;
        if busy {
            state.busy[me] += duration;
        } else {
            state.idle[me] += duration;
        }
        let at = state.node_time[me];
        Self::push_wake(&mut state, me, at);
        self.dispatch(&mut state);
        self.wait_turn(me, state).map(drop)
    }

    /// Node `me` waits (idle) until virtual time `at`, if that is later than its time.
    pub(crate) fn wait_until(&self, me: usize, at: Nanos) -> Result<(), Stopped> {
        let now = self.now(me);
        self.advance(me, at.saturating_sub(now), false)
    }

    /// Runs `timer` at virtual time `at`, before any node whose turn comes at `at` or later.
    pub(crate) fn at(&self, at: Nanos, timer: Timer) {
        let mut state = self.lock();
        state.seq += 1;
        let seq = state.seq;
        state.timers.insert(seq, timer);
        state.queue.push(Reverse((at, 0, seq)));
    }

    /// A message of `bytes` that `from` starts sending to `to` at virtual time `start`: when its
    /// last byte arrives. It occupies `from`'s transmit and `to`'s receive side of their NICs,
    /// after whatever they carry already.
    pub(crate) fn message(&self, from: usize, to: usize, bytes: u64, start: Nanos) -> Nanos {
        let mut state = self.lock();
        let wire = nanos(self.link.wire_seconds(bytes));
        let (from, to) = if self.link.shared_medium {
            (0, 0)
        } else {
            (from, to)
        };
        let begin = start.max(state.tx_free[from]).max(state.rx_free[to]);
        let end = begin + wire;
        state.tx_free[from] = end;
        state.rx_free[to] = end;
        end + nanos(self.link.latency_seconds)
    }

    /// A one-sided read by `reader` of `bytes` from `owner`, started at `start`: a request
    /// message, then the data. When the data has landed.
    pub(crate) fn read(&self, reader: usize, owner: usize, bytes: u64, start: Nanos) -> Nanos {
        let requested = start + nanos(self.link.latency_seconds);
        self.message(owner, reader, bytes, requested)
    }

    /// The node holding the turn waits for every live node to arrive; all leave together at the
    /// latest arrival plus `cost` (the collective's own time, waiting for the slowest).
    pub(crate) fn collective(&self, cost: Nanos) -> Result<(), Stopped> {
        let mut state = self.lock();
        let me = Self::holder(&state)?;
        state.gathered.push(me);
        state.gathered_latest = state.gathered_latest.max(state.node_time[me]);
        state.gathered_cost = cost;
        Self::release_if_complete(&mut state);
        self.dispatch(&mut state);
        self.wait_turn(me, state).map(drop)
    }

    /// Releases the collective once every live node is in it.
    fn release_if_complete(state: &mut ClockState) {
        let live = state.live.iter().filter(|&&l| l).count();
        if state.gathered.is_empty() || state.gathered.len() < live {
            return;
        }
        let release = state.gathered_latest + state.gathered_cost;
        let gathered = std::mem::take(&mut state.gathered);
        for k in gathered {
            state.idle[k] += release - state.node_time[k];
            state.node_time[k] = release;
            Self::push_wake(state, k, release);
        }
        state.gathered_latest = 0;
    }

    /// The node holding the turn contributes to background collective `key` (it does not wait);
    /// once every live node has, the collective completes `cost` after the last contribution.
    pub(crate) fn background_start(&self, key: u64, cost: Nanos) -> Result<(), Stopped> {
        let mut state = self.lock();
        let me = Self::holder(&state)?;
        let live = state.live.iter().filter(|&&l| l).count();
        let now = state.node_time[me];
        let round = state.background.entry(key).or_default();
        round.started += 1;
        round.latest = round.latest.max(now);
        if round.started >= live {
            let release = round.latest + cost;
            round.release = Some(release);
            let parked = std::mem::take(&mut round.parked);
            for k in parked {
                let at = release.max(state.node_time[k]);
                state.idle[k] += at - state.node_time[k];
                state.node_time[k] = at;
                Self::push_wake(&mut state, k, at);
            }
        }
        Ok(())
    }

    /// The node holding the turn waits until background collective `key` has completed.
    pub(crate) fn background_finish(&self, key: u64) -> Result<(), Stopped> {
        let mut state = self.lock();
        let me = Self::holder(&state)?;
        let round = state.background.entry(key).or_default();
        round.finished += 1;
        let release = round.release;
        // Not by the live count: nodes that stopped after contributing never finish.
        if release.is_some() && round.finished >= round.started {
            state.background.remove(&key);
        }
        match release {
            Some(at) => {
                let now = state.node_time[me];
                let wait = at.saturating_sub(now);
                state.node_time[me] += wait;
                state.idle[me] += wait;
                let at = state.node_time[me];
                Self::push_wake(&mut state, me, at);
            }
            None => {
                if let Some(round) = state.background.get_mut(&key) {
                    round.parked.push(me);
                }
            }
        }
        self.dispatch(&mut state);
        self.wait_turn(me, state).map(drop)
    }

    fn holder(state: &ClockState) -> Result<usize, Stopped> {
        state
            .running
            .ok_or_else(|| Stopped("a collective was entered outside a node's turn".into()))
    }

    /// Node `me` stops (end of its run); the turn passes on.
    pub(crate) fn leave(&self, me: usize) {
        let mut state = self.lock();
        state.live[me] = false;
        Self::release_if_complete(&mut state);
        if state.running == Some(me) {
            self.dispatch(&mut state);
        }
    }

    /// Stops the run: every node waiting for its turn returns [`Stopped`].
    pub(crate) fn fail(&self, why: String) {
        let mut state = self.lock();
        state.failure.get_or_insert(why);
        self.wake_all();
    }

    /// Each node's busy and idle virtual time and its end time.
    pub(crate) fn node_times(&self) -> Vec<NodeTime> {
        let state = self.lock();
        (0..self.turn.len())
            .map(|i| NodeTime {
                busy_seconds: state.busy[i] as f64 * 1e-9,
                idle_seconds: state.idle[i] as f64 * 1e-9,
                end_seconds: state.node_time[i] as f64 * 1e-9,
            })
            .collect()
    }

    /// Real seconds during which some node held the turn.
    pub(crate) fn held_seconds(&self) -> f64 {
        self.lock().held
    }

    /// Real seconds the turn spent between nodes (the clock's own cost).
    pub(crate) fn handoff_seconds(&self) -> f64 {
        self.lock().handoff
    }
}

/// A barrier of the synchronous baselines: a real one between threads, or a collective in
/// virtual time that costs `cost` after the slowest node arrives.
pub(crate) enum Rendezvous {
    Threads(std::sync::Barrier),
    Virtual {
        clock: std::sync::Arc<VirtualClock>,
        cost: Nanos,
    },
}

impl Rendezvous {
    /// A rendezvous of `n` threads, or of the nodes of `clock` when emulating a cluster, where it
    /// costs what `cost_seconds` gives on its links (the communication it stands for).
    pub(crate) fn new(
        n: usize,
        clock: Option<&std::sync::Arc<VirtualClock>>,
        cost_seconds: impl FnOnce(&LinkModel) -> f64,
    ) -> Self {
        match clock {
            None => Rendezvous::Threads(std::sync::Barrier::new(n)),
            Some(clock) => Rendezvous::Virtual {
                clock: std::sync::Arc::clone(clock),
                cost: nanos(cost_seconds(clock.link())),
            },
        }
    }

    /// Waits for every node.
    pub(crate) fn wait(&self) -> Result<(), Stopped> {
        match self {
            Rendezvous::Threads(b) => {
                b.wait();
                Ok(())
            }
            Rendezvous::Virtual { clock, cost } => clock.collective(*cost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn presets_and_inline_specs_parse_and_bad_ones_say_what_to_write() {
        let spec = ClusterSpec::parse("10gbe,fixed:5,lognormal:0.2,stragglers:0.1:4").unwrap();
        assert_eq!(spec.network.bits_per_second, 10e9);
        assert!((spec.network.latency_seconds - 30e-6).abs() < 1e-15);
        assert_eq!(spec.step, StepTime::Fixed(0.005));
        assert_eq!(spec.jitter_sigma, 0.2);
        assert_eq!(
            spec.stragglers,
            Some(Stragglers {
                fraction: 0.1,
                factor: 4.0,
                period_seconds: None
            })
        );
        let custom = ClusterSpec::parse("net:3:40,shared,measured,stragglers:0.5:2:1.5").unwrap();
        assert_eq!(custom.network.bits_per_second, 40e9);
        assert!(custom.network.shared_medium && !spec.network.shared_medium);
        assert_eq!(custom.step, StepTime::Measured);
        assert_eq!(custom.stragglers.and_then(|s| s.period_seconds), Some(1.5));
        for (bad, says) in [
            ("5gbe", "unknown network"),
            ("10gbe,fixed:-1", "fixed:MS"),
            ("10gbe,turbo", "unknown item"),
            ("10gbe,stragglers:2:4", "fraction in 0..=1"),
            ("net:1", "net:LATENCY_US:GBPS"),
            ("missing.toml", "cluster file"),
        ] {
            let err = ClusterSpec::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_toml_spec_reads_like_the_inline_one() {
        let dir = std::env::temp_dir().join(format!("vtime-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "network = \"ib-edr\"\nstep = \"fixed:2\"\nspeed = [1.0, 2.0]\n\
             [stragglers]\nfraction = 0.25\nfactor = 3\n",
        )
        .unwrap();
        let spec = ClusterSpec::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(spec.network.name, "ib-edr");
        assert_eq!(spec.speed, vec![1.0, 2.0]);
        let mut model = ComputeModel::new(&spec, 8, 0.002, 1);
        let slow: Vec<usize> = (0..8).filter(|&i| model.is_slow(i, 0)).collect();
        assert_eq!(slow.len(), 2);
        for i in 0..8 {
            let factor = if slow.contains(&i) { 3.0 } else { 1.0 } * [1.0, 2.0][i % 2];
            assert_eq!(model.next_step(i, 0), nanos(0.002 * factor));
        }
        std::fs::write(&path, "network = \"10gbe\"\nlatency_us = 3\n").unwrap();
        let err = ClusterSpec::parse(path.to_str().unwrap()).unwrap_err();
        assert!(err.contains("either network"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jitter_keeps_the_mean_step_time_and_transient_stragglers_hit_the_fraction() {
        let spec = ClusterSpec::parse("10gbe,fixed:1,lognormal:0.5,stragglers:0.2:4:0.01").unwrap();
        let mut model = ComputeModel::new(&spec, 4, 0.001, 7);
        let (mut sum, mut slow, draws) = (0.0, 0, 20_000u64);
        for k in 0..draws {
            let now = k * 10_000_000;
            if model.is_slow(1, now) {
                slow += 1;
            } else {
                sum += model.next_step(1, now) as f64;
            }
        }
        let mean = sum / (draws - slow) as f64 * 1e-6;
        assert!((mean - 1.0).abs() < 0.03, "mean step {mean} ms");
        let fraction = slow as f64 / draws as f64;
        assert!((fraction - 0.2).abs() < 0.02, "slow fraction {fraction}");
    }

    #[test]
    fn messages_serialize_on_each_nic_and_a_ring_costs_2_n_minus_1_steps() {
        let mut link = LinkModel {
            name: "t".into(),
            latency_seconds: 1e-6,
            bits_per_second: 8e9,
            shared_medium: false,
        };
        let clock = VirtualClock::new(3, link.clone());
        // 1000 bytes at 1 GB/s: 1 us on the wire, plus 1 us of latency.
        assert_eq!(clock.message(0, 1, 1000, 0), 2_000);
        // Node 0's transmit side is busy until 1 us: the next message to node 2 queues behind.
        assert_eq!(clock.message(0, 2, 1000, 0), 3_000);
        // Node 2 reads 1000 bytes from node 1: request (1 us), data (1 us), latency (1 us).
        assert_eq!(clock.read(2, 1, 1000, 0), 4_000);
        let ring = link.ring_allreduce_seconds(4, 4000);
        assert!((ring - 6.0 * (1e-6 + 1e-6)).abs() < 1e-12, "{ring}");
        // On a shared medium, messages between distinct pairs queue behind each other too.
        link.shared_medium = true;
        let shared = VirtualClock::new(4, link);
        assert_eq!(shared.message(0, 1, 1000, 0), 2_000);
        assert_eq!(shared.message(2, 3, 1000, 0), 3_000);
    }

    /// Three threads advance by different steps; their turns come in virtual-time order and a
    /// timer runs before the node whose turn is at the same instant.
    #[test]
    fn turns_follow_virtual_time_and_collectives_release_at_the_slowest_plus_cost() {
        let clock = Arc::new(VirtualClock::new(3, LinkModel::preset("10gbe").unwrap()));
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            clock.at(
                6,
                Box::new(move || log.lock().unwrap().push(("timer".to_string(), 6))),
            );
        }
        let handles: Vec<_> = (0..3usize)
            .map(|i| {
                let (clock, log) = (Arc::clone(&clock), Arc::clone(&log));
                std::thread::spawn(move || {
                    clock.enter(i).unwrap();
                    for _ in 0..3 {
                        clock.advance(i, (i as u64 + 1) * 2, true).unwrap();
                        log.lock()
                            .unwrap()
                            .push((format!("node {i}"), clock.now(i)));
                    }
                    clock.collective(100).unwrap();
                    let after = clock.now(i);
                    clock.leave(i);
                    after
                })
            })
            .collect();
        let after: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let log = log.lock().unwrap().clone();
        let times: Vec<u64> = log.iter().map(|(_, t)| *t).collect();
        let mut sorted = times.clone();
        sorted.sort_unstable();
        assert_eq!(times, sorted, "{log:?}");
        let at6: Vec<&str> = log
            .iter()
            .filter(|(_, t)| *t == 6)
            .map(|(w, _)| w.as_str())
            .collect();
        // Node 2 was parked for 6 (at 0) before node 0 was (at 4): parking order breaks the tie.
        assert_eq!(at6, ["timer", "node 2", "node 0"]);
        // The slowest node arrives at 18; everyone leaves at 118.
        assert_eq!(after, vec![118, 118, 118]);
        let times = clock.node_times();
        assert!((times[0].idle_seconds - 112e-9).abs() < 1e-15);
        assert!((times[2].busy_seconds - 18e-9).abs() < 1e-15);
    }

    /// Node 0 contributes at 10 and waits at 20; node 1 contributes at 30: the collective ends at
    /// 30 + 5, when node 0 goes on. Node 1 finishes at 40, after the end: it does not wait.
    #[test]
    fn a_background_collective_completes_after_the_last_contribution() {
        let clock = Arc::new(VirtualClock::new(2, LinkModel::preset("10gbe").unwrap()));
        let first = {
            let clock = Arc::clone(&clock);
            std::thread::spawn(move || -> Result<u64, Stopped> {
                clock.enter(0)?;
                clock.advance(0, 10, true)?;
                clock.background_start(7, 5)?;
                clock.advance(0, 10, true)?;
                clock.background_finish(7)?;
                let t = clock.now(0);
                clock.leave(0);
                Ok(t)
            })
        };
        clock.enter(1).unwrap();
        clock.advance(1, 30, true).unwrap();
        clock.background_start(7, 5).unwrap();
        clock.advance(1, 10, true).unwrap();
        clock.background_finish(7).unwrap();
        assert_eq!(clock.now(1), 40);
        clock.leave(1);
        assert_eq!(first.join().unwrap().unwrap(), 35);
        let times = clock.node_times();
        assert!((times[0].idle_seconds - 15e-9).abs() < 1e-18);
    }

    #[test]
    fn a_collective_left_by_a_stopped_node_releases_the_others() {
        let clock = Arc::new(VirtualClock::new(2, LinkModel::preset("10gbe").unwrap()));
        let waiter = {
            let clock = Arc::clone(&clock);
            std::thread::spawn(move || {
                clock.enter(0)?;
                clock.advance(0, 5, true)?;
                clock.collective(1)
            })
        };
        clock.enter(1).unwrap();
        clock.advance(1, 10, true).unwrap();
        clock.leave(1);
        // Node 1 left: node 0, alone in the collective, is released (at 5 + 1) and does not hang.
        assert!(waiter.join().unwrap().is_ok());
        assert_eq!(clock.now(0), 6);
    }
}
