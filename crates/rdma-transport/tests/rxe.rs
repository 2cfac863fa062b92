//! RDMA tests between processes. They need a verbs device: outside the soft-RoCE VM they skip
//! with a message; `bash tools/rxe-vm/test.sh` runs them inside it, once with both processes on
//! one rxe device and once on two rxe devices joined by a veth pair.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{cfg, hear, hex, note, pattern, role, say, skip, unhex, Peer};
use swarmsgd_core::{Completion, OpId, ReadOutcome, Transport, TransportError, WriteOutcome};
use swarmsgd_rdma::RdmaEndpoint;

const MIB: usize = 1 << 20;

fn wait(ep: &mut RdmaEndpoint, op: OpId) -> Completion {
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(c) = ep.poll() {
            assert_eq!(c.op(), op, "one operation at a time in these tests");
            return c;
        }
        assert!(Instant::now() < end, "operation {op} did not complete");
        std::thread::yield_now();
    }
}

fn read(
    ep: &mut RdmaEndpoint,
    peer: usize,
    offset: usize,
    len: usize,
) -> (Vec<u8>, Result<ReadOutcome, TransportError>) {
    let op = ep.start_read(peer, offset, len, Vec::new()).unwrap();
    match wait(ep, op) {
        Completion::Read { buf, result, .. } => (buf, result),
        other => panic!("{other:?}"),
    }
}

fn write(
    ep: &mut RdmaEndpoint,
    peer: usize,
    payload: &[u8],
) -> Result<WriteOutcome, TransportError> {
    let op = ep.start_write(peer, payload).unwrap();
    match wait(ep, op) {
        Completion::Write { result, .. } => result,
        other => panic!("{other:?}"),
    }
}

/// A child endpoint: node `me` with `neighbours`, exchanging records with the parent over the
/// pipes (parent records arrive as one line each, "REC <hex>").
fn child_endpoint(me: usize, neighbours: &[usize], capacity: usize) -> RdmaEndpoint {
    note("creating endpoint");
    let mut ep = RdmaEndpoint::new(me, neighbours, capacity, &cfg("B")).unwrap();
    note(&format!("endpoint on {:?}", ep.device()));
    say("REC", &hex(&ep.record()));
    let records: Vec<Vec<u8>> = neighbours.iter().map(|_| unhex(&hear("REC"))).collect();
    ep.connect(&records).unwrap();
    note("connected");
    say("CONNECTED", "");
    ep
}

/// The parent's side: spawns one child per neighbour, connects, hands its record to them.
fn parent_endpoint(
    test: &str,
    me: usize,
    children: &[(usize, &str)],
    capacity: usize,
) -> (RdmaEndpoint, Vec<Peer>) {
    let mut peers: Vec<Peer> = children
        .iter()
        .map(|&(_, role)| Peer::spawn(test, role, &[]))
        .collect();
    let records: Vec<Vec<u8>> = peers.iter_mut().map(|p| unhex(&p.expect("REC"))).collect();
    let neighbours: Vec<usize> = children.iter().map(|&(id, _)| id).collect();
    note("children's records in");
    let mut ep = RdmaEndpoint::new(me, &neighbours, capacity, &cfg("A")).unwrap();
    ep.connect(&records).unwrap();
    note(&format!("connected on {:?}", ep.device()));
    let mine = hex(&ep.record());
    for p in &mut peers {
        p.send(&format!("REC {mine}"));
        p.expect("CONNECTED");
    }
    (ep, peers)
}

#[test]
fn window_of_16_mib_reads_and_writes_byte_exact_between_processes() {
    const TEST: &str = "window_of_16_mib_reads_and_writes_byte_exact_between_processes";
    const CAP: usize = 16 * MIB;
    if let Some(r) = role() {
        assert_eq!(r, "node1");
        let mut ep = child_endpoint(1, &[0], CAP);
        hear("PUBLISH");
        ep.publish(&pattern(1, CAP)).unwrap();
        say("PUBLISHED", "");
        hear("CHECK");
        let mut got = Vec::new();
        let n = ep
            .take_inbox(&mut |writer, bytes| got.push((writer, bytes.to_vec())))
            .unwrap();
        let want = pattern(2, CAP);
        if n != 1 || got.len() != 1 || got[0].0 != 0 || got[0].1 != want {
            let first_diff = got
                .first()
                .and_then(|g| g.1.iter().zip(&want).position(|(a, b)| a != b));
            say(
                "FAIL",
                &format!("inbox held {n} deposits, first difference at {first_diff:?}"),
            );
            return;
        }
        ep.release_inbox().unwrap();
        // A second look finds nothing: the deposit counts once.
        let again = ep.take_inbox(&mut |_, _| {}).unwrap();
        if again != 0 {
            say("FAIL", &format!("deposit visited again ({again})"));
            return;
        }
        say("CHECKED", "");
        hear("BYE");
        return;
    }
    if skip(TEST) {
        return;
    }
    let (mut ep, mut peers) = parent_endpoint(TEST, 0, &[(1, "node1")], CAP);
    let child = &mut peers[0];
    // Before any publish the window is not a model.
    let (_, r) = read(&mut ep, 1, 0, 4096);
    assert_eq!(r.unwrap(), ReadOutcome::NotPublished);
    child.send("PUBLISH");
    child.expect("PUBLISHED");
    let t = Instant::now();
    let (buf, r) = read(&mut ep, 1, 0, CAP);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.unwrap(), ReadOutcome::Model { version: 1 });
    let want = pattern(1, CAP);
    assert!(
        buf == want,
        "16 MiB READ not byte-exact (first difference at {:?})",
        buf.iter().zip(&want).position(|(a, b)| a != b)
    );
    eprintln!("16 MiB READ in {secs:.2} s ({:.1} MiB/s)", 16.0 / secs);
    // A range in the middle, at an odd offset.
    let (buf, r) = read(&mut ep, 1, 12_345, 3 * MIB + 7);
    assert_eq!(r.unwrap(), ReadOutcome::Model { version: 1 });
    assert!(
        buf[..] == want[12_345..12_345 + 3 * MIB + 7],
        "sub-range READ not byte-exact"
    );
    // Past the end: an error value, not a panic or a wild read.
    let (_, r) = read(&mut ep, 1, CAP - 8, 16);
    assert!(matches!(r, Err(TransportError::TooLarge { .. })), "{r:?}");

    // WRITE 16 MiB into our inbox slot at node 1.
    assert!(ep.slot_free_at(1).unwrap());
    let t = Instant::now();
    assert_eq!(
        write(&mut ep, 1, &pattern(2, CAP)).unwrap(),
        WriteOutcome::Delivered
    );
    eprintln!("16 MiB WRITE in {:.2} s", t.elapsed().as_secs_f64());
    assert!(
        !ep.slot_free_at(1).unwrap(),
        "slot must be busy until node 1 releases it"
    );
    assert_eq!(
        write(&mut ep, 1, b"too early").unwrap(),
        WriteOutcome::SlotBusy
    );
    child.send("CHECK");
    child.expect("CHECKED");
    assert!(
        ep.slot_free_at(1).unwrap(),
        "released slot must read as free"
    );
    assert_eq!(ep.stats().deposits, 1);
    assert!(ep.unreachable().is_empty());
    child.send("BYE");
    peers.pop().unwrap().wait_ok();
}

#[test]
fn concurrent_publisher_never_yields_an_undetected_torn_read() {
    const TEST: &str = "concurrent_publisher_never_yields_an_undetected_torn_read";
    const CAP: usize = MIB;
    const VERSIONS: u64 = 30;
    if role().is_some() {
        let mut ep = child_endpoint(1, &[0], CAP);
        hear("GO");
        for v in 1..=VERSIONS {
            let words: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), CAP / 8)
                .flatten()
                .collect();
            ep.publish(&words).unwrap();
            std::thread::sleep(Duration::from_millis(120));
        }
        say("DONE", "");
        hear("BYE");
        return;
    }
    if skip(TEST) {
        return;
    }
    let (mut ep, mut peers) = parent_endpoint(TEST, 0, &[(1, "node1")], CAP);
    peers[0].send("GO");
    let mut models = 0u64;
    let mut versions = std::collections::BTreeSet::new();
    let mut last = 0;
    let end = Instant::now() + Duration::from_secs(240);
    while last < VERSIONS && Instant::now() < end {
        let (buf, r) = read(&mut ep, 1, 0, CAP);
        match r.unwrap() {
            ReadOutcome::Model { version } => {
                // The payload of version v is the word v, everywhere: a torn copy mixes two.
                let bad = buf
                    .chunks_exact(8)
                    .position(|w| u64::from_le_bytes(w.try_into().unwrap()) != version);
                assert_eq!(
                    bad, None,
                    "undetected torn read: version {version}, word {bad:?} differs"
                );
                models += 1;
                versions.insert(version);
                last = version;
            }
            ReadOutcome::NotPublished | ReadOutcome::Torn => {}
        }
    }
    let s = ep.stats();
    eprintln!("{models} consistent reads of {} versions; {} retries after a detected torn copy, {} reads torn", versions.len(), s.torn_retries, s.torn);
    assert_eq!(last, VERSIONS, "never read the last version");
    assert!(models >= 10, "only {models} consistent reads");
    assert!(
        s.torn_retries + s.torn > 0,
        "no read overlapped a publish: the check was never exercised"
    );
    peers[0].expect("DONE");
    peers[0].send("BYE");
    peers.pop().unwrap().wait_ok();
}

#[test]
fn inbox_corrections_from_several_writers_arrive_exactly_once() {
    const TEST: &str = "inbox_corrections_from_several_writers_arrive_exactly_once";
    const CAP: usize = 64 * 1024;
    const EACH: u64 = 25;
    let body = |writer: u64, seq: u64| {
        let mut p = writer.to_le_bytes().to_vec();
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend(pattern(
            writer * 1000 + seq,
            16 + (seq as usize * 2917) % (CAP - 32),
        ));
        p
    };
    if let Some(r) = role() {
        let me: usize = r.trim_start_matches("node").parse().unwrap();
        let mut ep = child_endpoint(me, &[0], CAP);
        hear("GO");
        let mut busy = 0;
        for seq in 0..EACH {
            let payload = body(me as u64, seq);
            loop {
                match write(&mut ep, 0, &payload).unwrap() {
                    WriteOutcome::Delivered => break,
                    WriteOutcome::SlotBusy => {
                        busy += 1;
                        while !ep.slot_free_at(0).unwrap() {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            }
        }
        say("DONE", &busy.to_string());
        hear("BYE");
        return;
    }
    if skip(TEST) {
        return;
    }
    let writers = [(1, "node1"), (2, "node2"), (3, "node3")];
    let (mut ep, mut peers) = parent_endpoint(TEST, 0, &writers, CAP);
    for p in &mut peers {
        p.send("GO");
    }
    let mut seen: HashMap<(usize, u64), u32> = HashMap::new();
    let mut next: HashMap<usize, u64> = HashMap::new();
    let total = EACH as usize * writers.len();
    let end = Instant::now() + Duration::from_secs(240);
    while seen.len() < total && Instant::now() < end {
        let mut bad = Vec::new();
        ep.take_inbox(&mut |writer, bytes| {
            let w = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            if w != writer as u64 || bytes != body(w, seq) {
                bad.push(format!(
                    "deposit from {writer} claims ({w}, {seq}) and is corrupt"
                ));
            }
            let expected = next.entry(writer).or_insert(0);
            if seq != *expected {
                bad.push(format!(
                    "writer {writer}: got seq {seq}, expected {expected}"
                ));
            }
            *expected = seq + 1;
            *seen.entry((writer, seq)).or_insert(0) += 1;
        })
        .unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        ep.release_inbox().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        seen.len(),
        total,
        "missing deposits: got {} of {total}",
        seen.len()
    );
    assert!(seen.values().all(|&n| n == 1), "a deposit arrived twice");
    for p in &mut peers {
        let busy = p.expect("DONE");
        eprintln!("{} saw its slot busy {busy} times", p.name);
        p.send("BYE");
    }
    for p in peers {
        p.wait_ok();
    }
}

#[test]
fn dead_peer_and_wrong_rkey_mark_only_that_peer_unreachable() {
    const TEST: &str = "dead_peer_and_wrong_rkey_mark_only_that_peer_unreachable";
    const CAP: usize = 64 * 1024;
    if let Some(r) = role() {
        let me: usize = r.trim_start_matches("node").parse().unwrap();
        let mut ep = child_endpoint(me, &[0], CAP);
        ep.publish(&pattern(me as u64, CAP)).unwrap();
        say("PUBLISHED", "");
        hear("BYE");
        return;
    }
    if skip(TEST) {
        return;
    }
    let nodes = [(1, "node1"), (2, "node2"), (3, "node3")];
    let (mut ep, mut peers) = parent_endpoint(TEST, 0, &nodes, CAP);
    for p in &mut peers {
        p.expect("PUBLISHED");
    }
    // rxe may never time out a request to a destroyed QP: the endpoint's own deadline decides.
    ep.set_op_timeout(Duration::from_secs(10));
    for &(j, _) in &nodes {
        let (buf, r) = read(&mut ep, j, 0, CAP);
        assert_eq!(r.unwrap(), ReadOutcome::Model { version: 1 });
        assert!(buf == pattern(j as u64, CAP));
    }
    // A wrong rkey: remote access error, peer 2 unreachable, the others unaffected.
    ep.corrupt_rkey_for_tests(2);
    let (_, r) = read(&mut ep, 2, 0, CAP);
    match r {
        Err(TransportError::Unreachable { peer: 2, why }) => {
            assert!(why.contains("remote access"), "{why}");
        }
        other => panic!("wrong rkey gave {other:?}"),
    }
    // Peer 1 dies: the read fails once the transport gives up.
    peers[0].kill();
    let t = Instant::now();
    let (_, r) = read(&mut ep, 1, 0, CAP);
    assert!(
        matches!(r, Err(TransportError::Unreachable { peer: 1, .. })),
        "{r:?}"
    );
    eprintln!(
        "dead peer detected in {:.1} s: {r:?}",
        t.elapsed().as_secs_f64()
    );
    // Later operations on dead peers fail at once; a non-neighbour is refused.
    assert!(matches!(
        write(&mut ep, 2, b"x"),
        Err(TransportError::Unreachable { .. })
    ));
    assert!(ep.slot_free_at(1).is_err());
    assert!(matches!(
        read(&mut ep, 7, 0, 8).1,
        Err(TransportError::NotANeighbour { .. })
    ));
    let lost: Vec<usize> = ep.unreachable().into_iter().map(|(j, _)| j).collect();
    assert_eq!(lost, vec![1, 2]);
    // Node 3 still works: read and write.
    let (buf, r) = read(&mut ep, 3, 0, CAP);
    assert_eq!(r.unwrap(), ReadOutcome::Model { version: 1 });
    assert!(buf == pattern(3, CAP));
    assert_eq!(
        write(&mut ep, 3, b"still here").unwrap(),
        WriteOutcome::Delivered
    );
    for p in &mut peers[1..] {
        p.send("BYE");
    }
    for p in peers.drain(1..) {
        p.wait_ok();
    }
}

#[test]
fn hostile_records_are_refused_by_connect() {
    const TEST: &str = "hostile_records_are_refused_by_connect";
    if role().is_some() || skip(TEST) {
        return;
    }
    let cfg = cfg("A");
    let mut a = RdmaEndpoint::new(0, &[1], 4096, &cfg).unwrap();
    let b = RdmaEndpoint::new(1, &[2], 4096, &cfg).unwrap();
    let good = b.record();
    // b does not list 0 as a neighbour.
    let err = a
        .connect(std::slice::from_ref(&good))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not list node 0"), "{err}");
    // Truncations and garbage.
    for n in [0, 3, 8, good.len() / 2, good.len() - 1] {
        assert!(a.connect(&[good[..n].to_vec()]).is_err());
    }
    // A missing neighbour.
    let err = a.connect::<Vec<u8>>(&[]).unwrap_err().to_string();
    assert!(err.contains("no record for neighbours [1]"), "{err}");
}

#[test]
fn verbs_atomics_fetch_add_and_compare_swap() {
    use std::sync::atomic::Ordering;
    use swarmsgd_rdma::verbs::{Access, Device, Op, RemoteBuf, Wr};
    const TEST: &str = "verbs_atomics_fetch_add_and_compare_swap";
    if role().is_some() || skip(TEST) {
        return;
    }
    let dev = Device::open(&cfg("A").device).unwrap();
    let cq = dev.cq(256).unwrap();
    let mut a = dev.qp(&cq, 64).unwrap();
    let mut b = dev.qp(&dev.cq(16).unwrap(), 4).unwrap();
    let (aa, ba) = (a.address(&dev), b.address(&dev));
    a.connect(&ba, 16, 7).unwrap();
    b.connect(&aa, 16, 7).unwrap();
    let target = dev.region(64, Access::RemoteAll).unwrap();
    let local = dev.region(8 * 1000, Access::Local).unwrap();
    let remote = RemoteBuf {
        addr: target.addr(),
        len: 64,
        rkey: target.rkey(),
    };
    let atomic = |id: u64, op: Op| Wr {
        id,
        op,
        local: &local,
        local_offset: (id as usize % 1000) * 8,
        len: 8,
        remote,
        remote_offset: 8,
        fence: false,
    };
    // 1000 fetch-and-adds, 32 in flight: every old value distinct, the sum exact.
    let mut wcs = Vec::new();
    let (mut posted, mut done) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(120);
    while done < 1000 {
        while posted < 1000 && posted - done < 32 {
            a.post(&[atomic(posted, Op::FetchAdd { add: 3 })]).unwrap();
            posted += 1;
        }
        wcs.clear();
        cq.poll(&mut wcs).unwrap();
        assert!(wcs.iter().all(|w| w.ok()), "{wcs:?}");
        done += wcs.len() as u64;
        assert!(Instant::now() < end, "atomics did not complete");
    }
    assert_eq!(target.load(8, Ordering::Acquire).unwrap(), 3000);
    let mut olds: Vec<u64> = (0..1000)
        .map(|i| local.load(i * 8, Ordering::Acquire).unwrap())
        .collect();
    olds.sort_unstable();
    assert_eq!(olds, (0..1000).map(|i| 3 * i).collect::<Vec<_>>());
    // Compare-and-swap: succeeds on the right value, fails (returning the current one) otherwise.
    for (id, compare, expect_after) in [(0u64, 3000u64, 7u64), (1, 3000, 7)] {
        a.post(&[atomic(id, Op::CompareSwap { compare, swap: 7 })])
            .unwrap();
        wcs.clear();
        while wcs.is_empty() {
            cq.poll(&mut wcs).unwrap();
        }
        assert!(wcs[0].ok());
        assert_eq!(target.load(8, Ordering::Acquire).unwrap(), expect_after);
    }
    assert_eq!(
        local.load(8, Ordering::Acquire).unwrap(),
        7,
        "failed CAS returns the current value"
    );
    // Misaligned atomics and out-of-range requests are refused before posting.
    let mut bad = atomic(5, Op::FetchAdd { add: 1 });
    bad.remote_offset = 4;
    assert!(a.post(&[bad]).is_err());
    let mut bad = atomic(6, Op::Read);
    bad.len = 128;
    assert!(a.post(&[bad]).is_err());
}

#[cfg(feature = "numa")]
#[test]
fn window_is_placed_on_the_numa_nodes_asked_for() {
    use swarmsgd_rdma::NumaPlacement;
    const TEST: &str = "window_is_placed_on_the_numa_nodes_asked_for";
    if skip(TEST) {
        return;
    }
    let node = swarmsgd_topology::hw::probe().unwrap().numa_nodes[0].os_index;
    let endpoint = |numa: NumaPlacement| {
        let mut c = cfg("A");
        c.numa = numa;
        RdmaEndpoint::new(0, &[1, 2], MIB, &c)
    };
    let bound = endpoint(NumaPlacement::Nodes(vec![node])).unwrap();
    assert_eq!(bound.window_numa_nodes(), Some(vec![node]));
    assert_eq!(bound.window_numa_binding().unwrap(), Some(vec![node]));
    let default = endpoint(NumaPlacement::Default).unwrap();
    assert_eq!(default.window_numa_nodes(), None);
    assert_eq!(default.window_numa_binding().unwrap(), None);
    // Near the device: wherever hwloc places it (nowhere for soft-RoCE), and the OS agrees.
    let device = cfg("A").device.name.unwrap_or_else(|| "rxe0".into());
    let near = swarmsgd_topology::hw::numa_nodes_near(&device).unwrap();
    let auto = endpoint(NumaPlacement::NearDevice).unwrap();
    assert_eq!(auto.window_numa_nodes(), near);
    assert_eq!(auto.window_numa_binding().unwrap(), near);
    eprintln!("NUMA node {node}: bound window ok; near {device}: {near:?}");
    let err = endpoint(NumaPlacement::Nodes(vec![4000]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NUMA nodes [4000]"), "{err}");
}
