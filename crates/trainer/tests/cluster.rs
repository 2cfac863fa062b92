//! `swarm train --cluster`: emulated runs in virtual time on real Fashion-MNIST.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

fn emulated(out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "train",
        "--nodes",
        "4",
        "--epochs",
        "2",
        "--train-subset",
        "4000",
        "--test-subset",
        "1000",
        "--topology",
        "ring",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "swarm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json(&out.join("summary.json"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn outputs(out: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    (
        read("summary.json"),
        read("model.safetensors"),
        read("metrics.csv"),
    )
}

/// Threads run in whatever order the OS picks; the emulation must not care.
#[test]
fn the_same_seed_and_spec_give_bit_identical_outputs() {
    let spec = "10gbe,fixed:3,lognormal:0.3,stragglers:0.25:4";
    for algo in ["swarm", "allreduce", "localsgd", "lasgd"] {
        let dir = tempfile::tempdir().unwrap();
        let first = emulated(dir.path(), &["--algo", algo, "--cluster", spec]);
        let before = outputs(dir.path());
        emulated(dir.path(), &["--algo", algo, "--cluster", spec]);
        assert!(before == outputs(dir.path()), "{algo}: outputs differ");
        let other = emulated(
            dir.path(),
            &["--algo", algo, "--cluster", spec, "--seed", "2"],
        );
        assert_ne!(
            first["final_test_accuracy"], other["final_test_accuracy"],
            "{algo}: another seed should give another run"
        );
        assert!(
            first["final_test_accuracy"].as_f64().unwrap() > 0.6,
            "{algo} learns: {first}"
        );
    }
}

/// All-reduce SGD's virtual time is exact: every step is a compute step and a ring all-reduce of
/// the gradient, 2 (n - 1) messages of a quarter of it.
#[test]
fn allreduce_takes_steps_times_compute_plus_ring_all_reduce() {
    let dir = tempfile::tempdir().unwrap();
    let s = emulated(
        dir.path(),
        &["--algo", "allreduce", "--cluster", "net:20:1,fixed:2"],
    );
    let dim = s["parameters"].as_u64().unwrap();
    let steps = s["local_steps_total"].as_u64().unwrap() / 4;
    // 4000 examples / (4 nodes * 32) = 32 steps per epoch, 2 epochs.
    assert_eq!(steps, 64);
    let chunk = (4 * dim).div_ceil(4) as f64;
    let ring = 2.0 * 3.0 * (20e-6 + chunk * 8.0 / 1e9);
    let expected = steps as f64 * (2e-3 + ring);
    let got = s["train_seconds"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-6,
        "virtual {got} s, expected {expected} s"
    );
    let cluster = json(&dir.path().join("cluster.json"));
    for node in cluster["node_time"].as_array().unwrap() {
        let busy = node["busy_seconds"].as_f64().unwrap();
        let idle = node["idle_seconds"].as_f64().unwrap();
        assert!((busy - 64.0 * 2e-3).abs() < 1e-6, "{node}");
        assert!((idle - 64.0 * ring).abs() < 1e-6, "{node}");
    }
}

/// On a slow link a SwarmSGD read spans many local steps, and with overlap the node does not wait
/// for it; without overlap it waits for every read.
#[test]
fn swarm_overlaps_slow_reads_with_steps_and_waits_for_them_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    // The MLP's ~0.8 MB model over 1 Gbit/s: ~6.5 ms a read, against 1 ms a step.
    let on = emulated(dir.path(), &["--cluster", "net:50:1,fixed:1"]);
    let on_time = json(&dir.path().join("cluster.json"));
    let off = emulated(
        dir.path(),
        &["--cluster", "net:50:1,fixed:1", "--overlap", "off"],
    );
    let off_time = json(&dir.path().join("cluster.json"));
    let stale = on["mean_staleness_steps"].as_f64().unwrap();
    assert!(stale > 4.0, "overlapped copies are {stale} steps stale");
    assert!(off["mean_staleness_steps"].as_f64().unwrap() < 0.5);
    let idle = |t: &serde_json::Value| {
        t["node_time"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["idle_seconds"].as_f64().unwrap())
            .sum::<f64>()
    };
    // Overlapped nodes wait only for the read in flight at the end of the run.
    assert!(
        idle(&on_time) < idle(&off_time) / 4.0,
        "overlapped nodes idled {} s, blocking ones {} s",
        idle(&on_time),
        idle(&off_time)
    );
    assert!(
        off["train_seconds"].as_f64().unwrap() > 2.0 * on["train_seconds"].as_f64().unwrap(),
        "blocking {} s vs overlapped {} s",
        off["train_seconds"],
        on["train_seconds"]
    );
    for s in [&on, &off] {
        assert!(s["final_test_accuracy"].as_f64().unwrap() > 0.6, "{s}");
    }
}

#[test]
fn a_bad_cluster_spec_says_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, says) in [
        ("5gbe", "unknown network"),
        ("10gbe,fixed:0", "fixed:MS"),
        ("10gbe,stragglers:0.1", "stragglers:FRACTION:FACTOR"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
            .args(["train", "--quiet", "--cluster", spec, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{spec} should fail");
        assert!(stderr.contains(says), "{spec}: {stderr}");
    }
}
