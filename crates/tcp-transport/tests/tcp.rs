//! The TCP transport: the in-process transport's properties, over loopback sockets, plus hostile
//! peers and dead peers.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use swarmsgd_core::{
    Completion, Interaction, LocalSteps, ReadOutcome, SwarmNode, Transport, TransportError,
    WriteOutcome,
};
use swarmsgd_quant::IdentityCodec;
use swarmsgd_tcp::wire::{
    Ack, AckStatus, Header, Hello, Kind, Status, ACK_LEN, HEADER_LEN, PROTOCOL_VERSION,
};
use swarmsgd_tcp::{JobAuth, TcpConfig, TcpEndpoint};

const JOB: u64 = 0x5157_4152_4d00_0001;
const SECRET: [u8; 32] = [0xA5; 32];

fn auth() -> JobAuth {
    JobAuth::new(JOB, SECRET)
}

/// Short timeouts so that failure tests finish quickly.
fn config() -> TcpConfig {
    TcpConfig {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(700),
        max_connections: 64,
    }
}

fn bind(me: usize, capacity: usize) -> TcpEndpoint {
    TcpEndpoint::bind_with(me, loopback(), capacity, auth(), config()).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Endpoints for the undirected graph `graph`, each registered with its neighbours.
fn fabric(graph: &[Vec<usize>], capacity: usize) -> Vec<TcpEndpoint> {
    let mut endpoints: Vec<TcpEndpoint> = (0..graph.len()).map(|i| bind(i, capacity)).collect();
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.local_addr()).collect();
    for (i, e) in endpoints.iter_mut().enumerate() {
        let peers: Vec<_> = graph[i].iter().map(|&j| (j, addrs[j])).collect();
        e.connect_peers(&peers).unwrap();
    }
    endpoints
}

/// Polls until `op` completes, failing the test after 10 s.
fn wait(t: &mut impl Transport, op: u64) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(10);
    for empty_polls in 1.. {
        if let Some(c) = t.poll() {
            assert_eq!(c.op(), op, "completions come back in order here");
            return c;
        }
        assert!(Instant::now() < deadline, "operation {op} never completed");
        t.idle(empty_polls);
    }
    unreachable!("the loop ends by returning or failing")
}

fn read(
    t: &mut impl Transport,
    peer: usize,
    offset: usize,
    len: usize,
) -> (Result<ReadOutcome, TransportError>, Vec<u8>) {
    let op = t.start_read(peer, offset, len, Vec::new()).unwrap();
    match wait(t, op) {
        Completion::Read {
            peer: from,
            buf,
            result,
            ..
        } => {
            assert_eq!(from, peer);
            (result, buf)
        }
        other => panic!("unexpected completion {other:?}"),
    }
}

fn write(
    t: &mut impl Transport,
    peer: usize,
    payload: &[u8],
) -> Result<WriteOutcome, TransportError> {
    let op = t.start_write(peer, payload).unwrap();
    match wait(t, op) {
        Completion::Write {
            peer: to, result, ..
        } => {
            assert_eq!(to, peer);
            result
        }
        other => panic!("unexpected completion {other:?}"),
    }
}

#[test]
fn a_concurrent_writer_never_lets_a_reader_see_a_torn_copy() {
    const LEN: usize = 256 << 10;
    let mut nodes = fabric(&[vec![1], vec![0]], LEN).into_iter();
    let (mut writer, mut reader) = (nodes.next().unwrap(), nodes.next().unwrap());
    assert_eq!(
        read(&mut reader, 0, 0, LEN).0.unwrap(),
        ReadOutcome::NotPublished
    );
    writer.publish(&vec![0u8; LEN]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let handle = thread::spawn(move || {
        let mut k = 0u8;
        let mut payload = vec![0u8; LEN];
        while !stop_writer.load(Ordering::Relaxed) {
            k = k.wrapping_add(1);
            payload.fill(k);
            writer.publish(&payload).unwrap();
        }
        writer
    });
    let (mut consistent, mut versions_seen) = (0, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while versions_seen.len() < 50 && Instant::now() < deadline {
        match read(&mut reader, 0, 0, LEN) {
            (Ok(ReadOutcome::Model { version }), buf) => {
                assert_eq!(buf.len(), LEN);
                let first = buf[0];
                assert!(
                    buf.iter().all(|&b| b == first),
                    "torn copy accepted at version {version}"
                );
                consistent += 1;
                versions_seen.insert(version);
            }
            (Ok(ReadOutcome::Torn), _) => {}
            (other, _) => panic!("unexpected read outcome {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _writer = handle.join().unwrap();
    assert!(consistent >= 50, "only {consistent} reads succeeded");
    assert!(
        versions_seen.len() >= 50,
        "the writer never overlapped the reads: {} versions",
        versions_seen.len()
    );
}

#[test]
fn inbox_deposits_arrive_exactly_once_and_a_busy_slot_refuses_a_second_write() {
    let mut nodes = fabric(&[vec![1, 2], vec![0], vec![0]], 64).into_iter();
    let (mut owner, mut w1, mut w2) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    assert_eq!(owner.capacity(), 64);
    assert!(w1.slot_free_at(0).unwrap());
    assert_eq!(
        write(&mut w1, 0, b"from-1").unwrap(),
        WriteOutcome::Delivered
    );
    assert_eq!(write(&mut w1, 0, b"again").unwrap(), WriteOutcome::SlotBusy);
    assert_eq!(
        write(&mut w2, 0, b"from-2").unwrap(),
        WriteOutcome::Delivered
    );
    assert!(!w1.slot_free_at(0).unwrap());
    let mut seen = Vec::new();
    assert_eq!(
        owner
            .take_inbox(&mut |w, b| seen.push((w, b.to_vec())))
            .unwrap(),
        2
    );
    assert_eq!(seen, vec![(1, b"from-1".to_vec()), (2, b"from-2".to_vec())]);
    // Not released yet: the slot stays busy for its writer.
    assert_eq!(write(&mut w1, 0, b"again").unwrap(), WriteOutcome::SlotBusy);
    assert!(!w1.slot_free_at(0).unwrap());
    owner.release_inbox().unwrap();
    assert!(w1.slot_free_at(0).unwrap());
    assert!(w2.slot_free_at(0).unwrap());
    assert_eq!(
        owner
            .take_inbox(&mut |_, _| panic!("delivered twice"))
            .unwrap(),
        0
    );
    assert_eq!(
        write(&mut w1, 0, b"again").unwrap(),
        WriteOutcome::Delivered
    );
    let mut seen = Vec::new();
    assert_eq!(
        owner
            .take_inbox(&mut |w, b| seen.push((w, b.to_vec())))
            .unwrap(),
        1
    );
    assert_eq!(seen, vec![(1, b"again".to_vec())]);
    // A payload larger than the slot is refused before it is sent.
    assert_eq!(
        write(&mut w2, 0, &[0u8; 65]),
        Err(TransportError::TooLarge {
            len: 65,
            capacity: 64
        })
    );
    // Writing into a node that is not a registered peer is an error value, not a panic.
    assert!(matches!(
        write(&mut w1, 2, b"x"),
        Err(TransportError::NotANeighbour { me: 1, peer: 2, .. })
    ));
    assert!(w1.slot_free_at(2).is_err());
}

#[test]
fn reads_report_not_published_then_versions_and_enforce_bounds() {
    let mut nodes = fabric(&[vec![1], vec![0]], 64).into_iter();
    let (mut a, mut b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (result, buf) = read(&mut a, 1, 0, 16);
    assert_eq!(result.unwrap(), ReadOutcome::NotPublished);
    assert_eq!(buf.len(), 16, "the buffer is resized to the request");
    b.publish(b"0123456789abcdef").unwrap();
    let (result, buf) = read(&mut a, 1, 8, 8);
    assert_eq!(result.unwrap(), ReadOutcome::Model { version: 1 });
    assert_eq!(buf, b"89abcdef");
    b.publish(b"ABCDEFGHIJKLMNOPQRSTUVWX").unwrap();
    let (result, buf) = read(&mut a, 1, 0, 24);
    assert_eq!(result.unwrap(), ReadOutcome::Model { version: 2 });
    assert_eq!(buf, b"ABCDEFGHIJKLMNOPQRSTUVWX");
    // Past the published payload, past the window, or not 8-aligned: TooLarge, as in-process.
    assert_eq!(
        read(&mut a, 1, 0, 32).0,
        Err(TransportError::TooLarge {
            len: 32,
            capacity: 24
        })
    );
    assert_eq!(
        read(&mut a, 1, 8, 64).0,
        Err(TransportError::TooLarge {
            len: 72,
            capacity: 64
        })
    );
    assert!(matches!(
        read(&mut a, 1, 4, 4).0,
        Err(TransportError::TooLarge { .. })
    ));
    assert_eq!(
        b.publish(&[0u8; 65]),
        Err(TransportError::TooLarge {
            len: 65,
            capacity: 64
        })
    );
    // Not a registered peer.
    assert!(matches!(
        read(&mut a, 5, 0, 8).0,
        Err(TransportError::NotANeighbour { peer: 5, .. })
    ));
    // The connection is still good after every refused request.
    assert_eq!(
        read(&mut a, 1, 0, 8).0.unwrap(),
        ReadOutcome::Model { version: 2 }
    );
    assert_eq!(b.server_stats().refused, 0);
    assert_eq!(b.server_stats().dropped, 0);
}

#[test]
fn threaded_pairwise_averaging_over_tcp_conserves_the_mean_exactly_once_settled() {
    let n = 8;
    let dim = 1000;
    let target = 200;
    let graph: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect();
    let endpoints = fabric(&graph, 8 + 4 * dim);
    let start: Vec<Vec<f32>> = (0..n)
        .map(|i| (0..dim).map(|k| ((i * 31 + k) % 17) as f32).collect())
        .collect();
    let finished_nodes = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(i, endpoint)| {
            let mut swarm = SwarmNode::new(
                endpoint,
                graph[i].clone(),
                dim,
                Interaction::Pairwise,
                LocalSteps::Fixed(1),
                Box::new(IdentityCodec),
                11,
            )
            .unwrap();
            let mut x = start[i].clone();
            swarm.publish(&x).unwrap();
            let finished_nodes = finished_nodes.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut done = false;
                // Run until every node reached the target, folding for the others meanwhile.
                while finished_nodes.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                    swarm.step_boundary(&mut x).unwrap();
                    if !done && swarm.stats().interactions >= target {
                        done = true;
                        finished_nodes.fetch_add(1, Ordering::SeqCst);
                    }
                    if done || swarm.after_local_step(&mut x).unwrap().is_none() {
                        // Nothing to do, or the partner has not folded our last correction yet.
                        thread::sleep(Duration::from_micros(200));
                    }
                }
                (swarm, x)
            })
        })
        .collect();
    let mut finished: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Settle: every node lands what is still in flight, then folds what is in its inbox.
    for (swarm, x) in &mut finished {
        swarm.drain(x).unwrap();
    }
    for (swarm, x) in &mut finished {
        swarm.step_boundary(x).unwrap();
    }
    for (swarm, x) in &mut finished {
        assert_eq!(swarm.step_boundary(x).unwrap(), 0);
    }
    for (swarm, _) in &finished {
        assert!(
            swarm.unreachable().is_empty(),
            "a live peer was marked unreachable"
        );
        assert!(swarm.stats().interactions >= target, "{:?}", swarm.stats());
    }
    let models: Vec<&[f32]> = finished.iter().map(|(_, x)| x.as_slice()).collect();
    let mean_now = swarmsgd_core::mean_of(models.iter().copied());
    let mean_start = swarmsgd_core::mean_of(start.iter().map(|m| m.as_slice()));
    for (a, b) in mean_now.iter().zip(&mean_start) {
        assert!((a - b).abs() < 1e-3, "mean moved from {b} to {a}");
    }
    let spread_start = swarmsgd_core::spread(start.iter().map(|m| m.as_slice()));
    assert!(swarmsgd_core::spread(models.iter().copied()) < 1e-3 * spread_start);
    let folded: u64 = finished
        .iter()
        .map(|(s, _)| s.stats().corrections_folded)
        .sum();
    let written: u64 = finished.iter().map(|(s, _)| s.stats().bytes_written).sum();
    let interactions: u64 = finished.iter().map(|(s, _)| s.stats().interactions).sum();
    // Every delivered correction is folded exactly once: one per completed pairwise interaction,
    // all of the same size.
    assert_eq!(
        folded, interactions,
        "every delivered correction folded once"
    );
    assert_eq!(written % folded, 0);
    assert!((4 * dim as u64..=8 + 4 * dim as u64).contains(&(written / folded)));
}

/// Opens a raw connection to `addr` and sends `bytes`; returns what the server answered before
/// closing (or within 3 s).
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_handshake(addr, bytes, 0, &[]).0
}

/// Sends `first`, reads up to `expect` bytes of answer, then sends `then` and reads everything
/// else the server says before it closes (or within 3 s).
fn raw_handshake(addr: SocketAddr, first: &[u8], expect: usize, then: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // The server may hang up before reading everything: a failed write is an answer too.
    let _ = s.write_all(first);
    let mut answer = vec![0u8; expect];
    if s.read_exact(&mut answer).is_err() {
        answer.clear();
    }
    let _ = s.write_all(then);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    if expect == 0 {
        return (rest, Vec::new());
    }
    (answer, rest)
}

fn hello(version: u16, job: u64, secret: [u8; 32], from: u64, to: u64) -> [u8; 72] {
    Hello {
        version,
        job,
        secret,
        from,
        to,
    }
    .encode()
}

fn ack_status(answer: &[u8]) -> AckStatus {
    assert!(answer.len() >= ACK_LEN, "no ack: {answer:?}");
    let ack = Ack::decode(answer[..ACK_LEN].try_into().unwrap()).unwrap();
    assert_eq!(ack.version, PROTOCOL_VERSION);
    ack.status
}

#[test]
fn foreign_connections_are_refused_and_the_node_keeps_serving_others() {
    let mut nodes = fabric(&[vec![1], vec![0]], 64).into_iter();
    let (mut a, mut b) = (nodes.next().unwrap(), nodes.next().unwrap());
    b.publish(b"the model").unwrap();
    let addr = b.local_addr();
    assert!(matches!(
        read(&mut a, 1, 0, 8).0,
        Ok(ReadOutcome::Model { .. })
    ));

    let mut wrong = SECRET;
    wrong[31] ^= 1;
    let read_request = Header {
        kind: Kind::Read,
        status: Status::Ok,
        req: 1,
        a: 0,
        b: 8,
    }
    .encode();
    // Wrong secret, job, version, node, or a claim to be the node itself: an ack saying why, then
    // the connection is closed and the request that followed is never answered.
    for (frame, why) in [
        (
            hello(PROTOCOL_VERSION, JOB, wrong, 7, 1),
            AckStatus::BadSecret,
        ),
        (
            hello(PROTOCOL_VERSION, JOB + 1, SECRET, 7, 1),
            AckStatus::WrongJob,
        ),
        (
            hello(PROTOCOL_VERSION + 1, JOB, SECRET, 7, 1),
            AckStatus::BadVersion,
        ),
        (
            hello(PROTOCOL_VERSION, JOB, SECRET, 7, 2),
            AckStatus::WrongNode,
        ),
        (
            hello(PROTOCOL_VERSION, JOB, SECRET, 1, 1),
            AckStatus::WrongNode,
        ),
    ] {
        let (ack, rest) = raw_handshake(addr, &frame, ACK_LEN, &read_request);
        assert_eq!(ack_status(&ack), why);
        assert!(
            rest.is_empty(),
            "a refused peer got an answer to its request"
        );
    }
    // Random bytes, and an HTTP request: closed without a word.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert!(raw_exchange(addr, &noise).is_empty());
    assert!(raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    // A connection that says nothing is dropped after the I/O timeout.
    let t0 = Instant::now();
    assert!(raw_exchange(addr, b"").is_empty());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // An authenticated peer sending garbage after the handshake: answered, then dropped.
    let good = hello(PROTOCOL_VERSION, JOB, SECRET, 9, 1);
    let huge_write = Header {
        kind: Kind::WriteInbox,
        status: Status::Ok,
        req: 1,
        a: u64::MAX,
        b: 0,
    }
    .encode();
    let (ack, rest) = raw_handshake(addr, &good, ACK_LEN, &huge_write);
    assert_eq!(ack_status(&ack), AckStatus::Accepted);
    assert_eq!(rest.len(), HEADER_LEN);
    let refusal = Header::decode(rest[..].try_into().unwrap()).unwrap();
    assert_eq!(refusal.status, Status::TooLarge);
    assert_eq!(refusal.b, 64);
    let mut unknown_kind = read_request;
    unknown_kind[0] = 77;
    let (ack, rest) = raw_handshake(addr, &good, ACK_LEN, &unknown_kind);
    assert_eq!(ack_status(&ack), AckStatus::Accepted);
    assert!(rest.is_empty(), "garbage request answered");
    // An endpoint of the same job with a wrong secret cannot read: unreachable, not a model.
    let mut impostor =
        TcpEndpoint::bind_with(5, loopback(), 64, JobAuth::new(JOB, wrong), config()).unwrap();
    impostor.connect_peers(&[(1, addr)]).unwrap();
    assert!(matches!(
        read(&mut impostor, 1, 0, 8).0,
        Err(TransportError::Unreachable { peer: 1, .. })
    ));
    let stats = b.server_stats();
    assert!(stats.refused >= 9, "{stats:?}");
    assert_eq!(stats.dropped, 2, "{stats:?}");
    // Nothing crashed: the legitimate peer still reads, writes and queries.
    let (result, buf) = read(&mut a, 1, 0, 8);
    assert_eq!(result.unwrap(), ReadOutcome::Model { version: 1 });
    assert_eq!(buf, b"the mode");
    assert_eq!(write(&mut a, 1, b"corr").unwrap(), WriteOutcome::Delivered);
    assert!(!a.slot_free_at(1).unwrap());
    let mut seen = Vec::new();
    b.take_inbox(&mut |w, p| seen.push((w, p.to_vec())))
        .unwrap();
    assert_eq!(seen, vec![(0, b"corr".to_vec())]);
}

#[test]
fn a_killed_peer_makes_operations_fail_with_unreachable_within_the_timeout() {
    let mut nodes = fabric(&[vec![1, 2], vec![0], vec![0]], 64).into_iter();
    let (mut a, b, mut c) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    c.publish(b"still here").unwrap();
    // Connections to b are open and in use when it dies.
    assert_eq!(read(&mut a, 1, 0, 8).0.unwrap(), ReadOutcome::NotPublished);
    drop(b);
    let limit = config().connect_timeout + config().io_timeout + Duration::from_millis(500);
    let t0 = Instant::now();
    assert!(matches!(
        read(&mut a, 1, 0, 8).0,
        Err(TransportError::Unreachable { peer: 1, .. })
    ));
    assert!(matches!(
        write(&mut a, 1, b"x"),
        Err(TransportError::Unreachable { peer: 1, .. })
    ));
    assert!(matches!(
        a.slot_free_at(1),
        Err(TransportError::Unreachable { peer: 1, .. })
    ));
    assert!(t0.elapsed() < limit, "took {:?}", t0.elapsed());
    // The node keeps working with the others.
    let (result, buf) = read(&mut a, 2, 0, 8);
    assert_eq!(result.unwrap(), ReadOutcome::Model { version: 1 });
    assert_eq!(buf, b"still he");
    assert_eq!(write(&mut a, 2, b"x").unwrap(), WriteOutcome::Delivered);
}

#[test]
fn a_peer_that_stops_answering_times_out_instead_of_hanging() {
    // A "peer" that accepts connections and reads, but never answers.
    let silent = TcpListener::bind(loopback()).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_silent = stop.clone();
    silent.set_nonblocking(true).unwrap();
    let sink = thread::spawn(move || {
        let mut held = Vec::new();
        while !stop_silent.load(Ordering::Relaxed) {
            if let Ok((s, _)) = silent.accept() {
                held.push(s);
            }
            thread::sleep(Duration::from_millis(5));
        }
        held.len()
    });
    let mut a = bind(0, 64);
    let mut c = bind(2, 64);
    a.connect_peers(&[(1, silent_addr), (2, c.local_addr())])
        .unwrap();
    c.publish(b"alive...").unwrap();
    let io = config().io_timeout;
    let limit = config().connect_timeout + io + Duration::from_millis(300);
    let t0 = Instant::now();
    let op_read = a.start_read(1, 0, 8, Vec::new()).unwrap();
    // Meanwhile another peer answers at once: one dead peer does not hold up the others.
    let (result, buf) = {
        let op = a.start_read(2, 0, 8, Vec::new()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match a.poll() {
                Some(Completion::Read {
                    op: done,
                    buf,
                    result,
                    ..
                }) if done == op => break (result, buf),
                Some(other) => panic!("the silent peer answered first: {other:?}"),
                None => {
                    assert!(Instant::now() < deadline);
                    a.idle(u32::MAX);
                }
            }
        }
    };
    assert_eq!(result.unwrap(), ReadOutcome::Model { version: 1 });
    assert_eq!(buf, b"alive...");
    assert!(
        t0.elapsed() < io / 2,
        "the live peer waited for the silent one"
    );
    match wait(&mut a, op_read) {
        Completion::Read { result, .. } => assert!(matches!(
            result,
            Err(TransportError::Unreachable { peer: 1, .. })
        )),
        other => panic!("{other:?}"),
    }
    let elapsed = t0.elapsed();
    assert!(elapsed >= io / 2, "failed before any timeout: {elapsed:?}");
    assert!(
        elapsed < 2 * io + Duration::from_millis(500),
        "took {elapsed:?}"
    );
    let t1 = Instant::now();
    assert!(matches!(
        a.slot_free_at(1),
        Err(TransportError::Unreachable { peer: 1, .. })
    ));
    assert!(t1.elapsed() < limit, "took {:?}", t1.elapsed());
    stop.store(true, Ordering::Relaxed);
    assert!(sink.join().unwrap() >= 1);
}

#[test]
fn swarm_nodes_pull_over_tcp_and_skip_unpublished_and_dead_peers() {
    let graph = vec![vec![1, 2], vec![0], vec![0]];
    let mut nodes = fabric(&graph, 8 + 16).into_iter();
    let make = |e: TcpEndpoint, id: usize| {
        SwarmNode::new(
            e,
            graph[id].clone(),
            4,
            Interaction::Pull,
            LocalSteps::Fixed(1),
            Box::new(IdentityCodec),
            1,
        )
        .unwrap()
    };
    let mut a = make(nodes.next().unwrap(), 0);
    let mut b = make(nodes.next().unwrap(), 1);
    let c = make(nodes.next().unwrap(), 2);
    let mut x = vec![1.0f32; 4];
    assert!(!a.interact_with(1, &mut x).unwrap());
    assert_eq!(a.stats().skipped_unpublished, 1);
    b.publish(&[f32::NAN, 0.0, 0.0, 0.0]).unwrap();
    assert!(!a.interact_with(1, &mut x).unwrap());
    assert_eq!(a.stats().rejected_non_finite, 1);
    b.publish(&[3.0, 3.0, 3.0, 3.0]).unwrap();
    assert!(a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![2.0; 4]);
    drop(c);
    assert!(!a.interact_with(2, &mut x).unwrap());
    assert_eq!(x, vec![2.0; 4]);
    assert!(a.unreachable().contains(&2));
    assert_eq!(a.stats().skipped_unreachable, 1);
}
