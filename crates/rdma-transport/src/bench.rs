//! `swarm bench rdma`: RDMA READ and WRITE bandwidth and 8-byte READ latency through this crate's
//! verbs layer, measured the way perftest's `ib_read_bw`, `ib_write_bw` and `ib_read_lat` measure
//! them (a window of requests kept in flight; one request at a time for latency), so the numbers
//! can be compared as ratios with perftest run on the same device in the same boot.
//!
//! Both queue pairs live in this process (one active, one passive: a one-sided target needs no
//! CPU), connected to each other through the chosen device.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::verbs::{Access, Cq, Device, DeviceSelector, Op, Qp, Region, RemoteBuf, Wc, Wr};
use crate::RdmaError;

/// Arguments of `swarm bench rdma` (a clap `Args` with the `cli` feature).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BenchArgs {
    /// RDMA device name (default: the first device).
    #[cfg_attr(feature = "cli", arg(long))]
    pub device: Option<String>,
    /// Use the RoCE GID holding this IPv4 address.
    #[cfg_attr(feature = "cli", arg(long))]
    pub ip: Option<Ipv4Addr>,
    /// Use this GID index.
    #[cfg_attr(feature = "cli", arg(long))]
    pub gid_index: Option<u8>,
    /// Message sizes in bytes for the bandwidth runs.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', default_value = "65536,1048576,4194304")
    )]
    pub sizes: Vec<usize>,
    /// MiB moved per size and direction.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub mib: usize,
    /// Requests kept in flight for the bandwidth runs (perftest's default TX depth is 128).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 128))]
    pub depth: usize,
    /// Requests are posted in groups of this many with one completion per group (perftest
    /// signals every 100th request; groups of 32 keep 4 in flight at depth 128, so the queue never
    /// drains while a group completes).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub cq_mod: usize,
    /// 8-byte READs timed one at a time for the latency run.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1000))]
    pub lat_iters: usize,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            device: None,
            ip: None,
            gid_index: None,
            sizes: vec![65536, 1 << 20, 4 << 20],
            mib: 64,
            depth: 128,
            cq_mod: 32,
            lat_iters: 1000,
        }
    }
}

/// One bandwidth measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct BwRow {
    /// "read" or "write".
    pub op: &'static str,
    /// Bytes per request.
    pub size: usize,
    /// Requests completed.
    pub iters: usize,
    /// MiB/s (2^20 bytes, as perftest's MB/sec).
    pub mib_per_s: f64,
}

/// The results of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The device used.
    pub device: String,
    /// Bandwidth rows.
    pub bandwidth: Vec<BwRow>,
    /// Median 8-byte READ latency, microseconds.
    pub lat_median_us: f64,
    /// Minimum 8-byte READ latency, microseconds.
    pub lat_min_us: f64,
    /// 99th percentile, microseconds.
    pub lat_p99_us: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rdma-transport bench on {}", self.device)?;
        writeln!(
            f,
            "{:>6} {:>10} {:>8} {:>12}",
            "op", "bytes", "iters", "MiB/s"
        )?;
        for r in &self.bandwidth {
            writeln!(
                f,
                "{:>6} {:>10} {:>8} {:>12.2}",
                r.op, r.size, r.iters, r.mib_per_s
            )?;
        }
        writeln!(
            f,
            "read latency (8 B): median {:.2} us, min {:.2} us, p99 {:.2} us",
            self.lat_median_us, self.lat_min_us, self.lat_p99_us
        )?;
        // Machine-readable lines for scripts (tools/rxe-vm/bench.sh compares them with perftest).
        for r in &self.bandwidth {
            writeln!(
                f,
                "RESULT {}_bw size={} mib_per_s={:.3}",
                r.op, r.size, r.mib_per_s
            )?;
        }
        write!(
            f,
            "RESULT read_lat size=8 median_us={:.3}",
            self.lat_median_us
        )
    }
}

struct Pair {
    cq: Cq,
    active: Qp,
    _passive: Qp,
    local: Arc<Region>,
    remote: Arc<Region>,
    dev: Device,
}

fn pair(args: &BenchArgs, bytes: usize, depth: usize) -> Result<Pair, RdmaError> {
    let sel = DeviceSelector {
        name: args.device.clone(),
        ipv4: args.ip,
        gid_index: args.gid_index,
        port: None,
    };
    let dev = Device::open(&sel)?;
    let cq = dev.cq((depth as u32 + 8).max(64))?;
    let passive_cq = dev.cq(16)?;
    let mut active = dev.qp(&cq, depth as u32 + 4)?;
    let mut passive = dev.qp(&passive_cq, 4)?;
    let (a, p) = (active.address(&dev), passive.address(&dev));
    active.connect(&p, 16, 7)?;
    passive.connect(&a, 16, 7)?;
    let local = dev.region(bytes, Access::Local)?;
    let remote = dev.region(bytes, Access::RemoteAll)?;
    Ok(Pair {
        cq,
        active,
        _passive: passive,
        local,
        remote,
        dev,
    })
}

fn wait_one(cq: &Cq, wcs: &mut Vec<Wc>, deadline: Instant) -> Result<(), RdmaError> {
    let mut polls = 0u64;
    loop {
        polls = polls.wrapping_add(1);
        if !wcs.is_empty() {
            return Ok(());
        }
        cq.poll(wcs)?;
        if let Some(bad) = wcs.iter().find(|w| !w.ok()) {
            return Err(RdmaError::Verbs(format!(
                "completion failed: {}",
                crate::verbs::status_name(bad.status)
            )));
        }
        // Reading the clock costs more than a poll (much more under emulation): not every time.
        if wcs.is_empty() && polls % 4096 == 0 && Instant::now() > deadline {
            return Err(RdmaError::Verbs(
                "no completion within the time limit".into(),
            ));
        }
    }
}

fn bandwidth(
    p: &mut Pair,
    op: Op,
    size: usize,
    iters: usize,
    (depth, cq_mod): (usize, usize),
) -> Result<f64, RdmaError> {
    let remote = RemoteBuf {
        addr: p.remote.addr(),
        len: p.remote.len() as u64,
        rkey: p.remote.rkey(),
    };
    let wr = |id| Wr {
        id,
        op,
        local: &p.local,
        local_offset: 0,
        len: size,
        remote,
        remote_offset: 0,
        fence: false,
    };
    // Requests go out in groups of `cq_mod` with one completion per group (its id is the group's
    // size), keeping up to `depth` requests in flight, as perftest does.
    let group = cq_mod.clamp(1, depth);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut wcs = Vec::new();
    let mut batch = Vec::with_capacity(group);
    let start = Instant::now();
    let mut posted = 0;
    let mut done = 0;
    while done < iters {
        while posted < iters && posted - done + group.min(iters - posted) <= depth {
            let k = group.min(iters - posted);
            batch.clear();
            batch.extend((0..k).map(|_| wr(k as u64)));
            p.active.post_moderated(&batch)?;
            posted += k;
        }
        wait_one(&p.cq, &mut wcs, deadline)?;
        for wc in wcs.drain(..) {
            done += wc.id as usize;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((size * iters) as f64 / secs / (1 << 20) as f64)
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> Result<BenchReport, RdmaError> {
    let max = args.sizes.iter().copied().max().unwrap_or(8).max(8);
    if args.sizes.contains(&0) || args.depth == 0 || args.cq_mod == 0 || args.lat_iters == 0 {
        return Err(RdmaError::Config(
            "sizes, depth, cq-mod and lat-iters must be positive".into(),
        ));
    }
    let mut p = pair(args, max, args.depth)?;
    let mut rows = Vec::new();
    for op in [Op::Read, Op::Write] {
        for &size in &args.sizes {
            let iters = ((args.mib << 20) / size).max(8);
            let mib_per_s = bandwidth(&mut p, op, size, iters, (args.depth, args.cq_mod))?;
            rows.push(BwRow {
                op: if op == Op::Read { "read" } else { "write" },
                size,
                iters,
                mib_per_s,
            });
        }
    }
    // Latency: one 8-byte READ at a time, busy-polling as ib_read_lat does.
    p.remote
        .store(0, 0x0123_4567_89ab_cdef, Ordering::Release)?;
    let remote = RemoteBuf {
        addr: p.remote.addr(),
        len: p.remote.len() as u64,
        rkey: p.remote.rkey(),
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut wcs = Vec::new();
    let mut lat = Vec::with_capacity(args.lat_iters);
    for i in 0..args.lat_iters + 10 {
        let t = Instant::now();
        p.active.post(&[Wr {
            id: i as u64,
            op: Op::Read,
            local: &p.local,
            local_offset: 0,
            len: 8,
            remote,
            remote_offset: 0,
            fence: false,
        }])?;
        wait_one(&p.cq, &mut wcs, deadline)?;
        wcs.clear();
        if i >= 10 {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    if p.local.load(0, Ordering::Acquire)? != 0x0123_4567_89ab_cdef {
        return Err(RdmaError::Verbs(
            "8-byte READ returned the wrong value".into(),
        ));
    }
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    Ok(BenchReport {
        device: p.dev.name().to_string(),
        bandwidth: rows,
        lat_median_us: pct(0.5),
        lat_min_us: lat[0],
        lat_p99_us: pct(0.99),
    })
}
