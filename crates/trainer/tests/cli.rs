//! End-to-end runs of the `swarm` binary on real Fashion-MNIST (Debian's dataset-fashion-mnist).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

fn swarm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swarm"))
        .args(args)
        .output()
        .expect("swarm runs")
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn small_run(out: &Path, extra: &[&str]) -> serde_json::Value {
    let out_s = out.to_str().expect("utf-8 path");
    let mut args = vec![
        "train",
        "--nodes",
        "4",
        "--epochs",
        "2",
        "--train-subset",
        "12000",
        "--test-subset",
        "2000",
        "--topology",
        "ring",
        "--out",
        out_s,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let output = swarm(&args);
    assert!(
        output.status.success(),
        "swarm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let epoch_lines = stderr.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(
        epoch_lines, 2,
        "one log line per epoch, also without a terminal:\n{stderr}"
    );
    summary(out)
}

#[test]
fn pairwise_swarm_run_learns_and_accounts_for_every_step_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = small_run(
        dir.path(),
        &["--interaction", "pairwise", "--local-steps", "2"],
    );
    let accuracy = s["final_test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.75, "averaged model reached only {accuracy}");
    // 12000 examples / (4 nodes * 32) = 94 steps per node and epoch.
    assert_eq!(s["local_steps_total"].as_u64().unwrap(), 94 * 2 * 4);
    let stats = s["node_stats"].as_array().unwrap();
    let sum = |k: &str| stats.iter().map(|n| n[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("local_steps"), 94 * 2 * 4);
    assert_eq!(s["interactions"].as_u64().unwrap(), sum("interactions"));
    assert!(
        sum("interactions") > 100,
        "too few interactions: {}",
        sum("interactions")
    );
    // Full precision: every read moves 4 bytes per parameter (raw f32), and every
    // pairwise interaction writes one correction of the same size.
    let model_bytes = 4 * s["parameters"].as_u64().unwrap();
    assert_eq!(sum("bytes_read"), model_bytes * sum("models_read"));
    assert!(sum("models_read") >= sum("interactions"));
    assert_eq!(sum("bytes_written"), model_bytes * sum("interactions"));
    assert_eq!(
        sum("corrections_folded"),
        sum("interactions"),
        "each correction folded exactly once"
    );
    assert_eq!(
        s["bytes_sent_total"].as_u64().unwrap(),
        sum("bytes_read") + sum("bytes_written")
    );

    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        3,
        "header and one row per epoch:\n{metrics}"
    );
    let tensors = tch::Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
    let mut shapes: Vec<(String, Vec<i64>)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            ("fc1.bias".to_string(), vec![256]),
            ("fc1.weight".to_string(), vec![256, 784]),
            ("fc2.bias".to_string(), vec![10]),
            ("fc2.weight".to_string(), vec![10, 256]),
        ]
    );
}

#[test]
fn allreduce_keeps_replicas_identical_and_counts_ring_volume() {
    let dir = tempfile::tempdir().unwrap();
    let s = small_run(dir.path(), &["--algo", "allreduce"]);
    let final_acc = s["final_test_accuracy"].as_f64().unwrap();
    assert!(final_acc > 0.75, "all-reduce reached only {final_acc}");
    // Identical replicas: every node scores exactly what the average scores.
    assert_eq!(s["min_node_test_accuracy"].as_f64().unwrap(), final_acc);
    assert_eq!(s["mean_node_test_accuracy"].as_f64().unwrap(), final_acc);
    let params = s["parameters"].as_u64().unwrap();
    let rounds = 94 * 2;
    assert_eq!(s["interactions"].as_u64().unwrap(), rounds);
    assert_eq!(
        s["bytes_sent_total"].as_u64().unwrap(),
        rounds * 2 * 3 * 4 * params
    );
}

#[test]
fn lattice_quantized_reads_move_about_a_quarter_of_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = small_run(dir.path(), &["--quant", "lattice:8"]);
    assert!(s["final_test_accuracy"].as_f64().unwrap() > 0.75);
    let stats = s["node_stats"].as_array().unwrap();
    let sum = |k: &str| stats.iter().map(|n| n[k].as_u64().unwrap()).sum::<u64>();
    // Every read first moves the 8-bit payload; a read whose decode fails its check then also
    // moves the full-precision copy (4 bytes per parameter).
    let full = 4 * s["parameters"].as_u64().unwrap();
    let reads = sum("models_read");
    let quantized = sum("bytes_read") - sum("decode_fallbacks") * full;
    assert_eq!(
        quantized % reads,
        0,
        "every quantized read has the same size"
    );
    let per_read = quantized / reads;
    assert!(
        per_read * 100 < 26 * full,
        "{per_read} bytes per quantized read vs {full} at full precision"
    );
    assert!(
        per_read * 4 > full,
        "{per_read} bytes per read is less than 8 bits per parameter"
    );
    assert!(
        sum("decode_fallbacks") * 5 < reads,
        "{} of {reads} reads fell back",
        sum("decode_fallbacks")
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_message_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--data".into(),
                dir.path().join("missing").display().to_string(),
            ],
            "dataset-fashion-mnist",
        ),
        (
            vec!["--nodes".into(), "0".into()],
            "nodes must be at least 1",
        ),
        (vec!["--topology".into(), "moebius".into()], "topology"),
        (
            vec!["--interaction".into(), "shout".into()],
            "pull, pairwise or blocking",
        ),
        (vec!["--quant".into(), "lattice:99".into()], "quant"),
        (vec!["--lr=-1".into()], "lr must be a positive number"),
    ];
    for (flags, expected) in cases {
        let mut args = vec![
            "train".to_string(),
            "--quiet".into(),
            "--epochs".into(),
            "1".into(),
        ];
        args.extend(flags.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = swarm(&refs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} should fail");
        assert!(
            stderr.contains(expected),
            "{flags:?}: message {stderr:?} lacks {expected:?}"
        );
    }
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "nodes = \"eight\"\n").unwrap();
    let output = swarm(&["train", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bad.toml") && stderr.contains("nodes"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_dataset_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(dir.path().join(name), [0u8, 0, 8, 3, 0, 0, 0, 9]).unwrap();
    }
    let output = swarm(&["train", "--quiet", "--data", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("train-images-idx3-ubyte") && stderr.contains("not a valid IDX file"),
        "{stderr}"
    );
}

#[test]
fn topo_gen_prints_the_spectral_gap_of_a_ring() {
    let output = swarm(&["topo", "gen", "--kind", "ring", "--n", "16", "--stats"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = 2.0 - 2.0 * (2.0 * std::f64::consts::PI / 16.0).cos();
    assert!(
        stdout.contains(&format!("{expected:.4}")),
        "no lambda2 {expected:.4} in:\n{stdout}"
    );
}

#[test]
fn a_cuda_device_without_a_visible_gpu_is_refused_with_what_to_do() {
    // An empty CUDA_VISIBLE_DEVICES hides every GPU, so this holds on any machine.
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../third_party/libtorch/lib");
    let cpu_libtorch = !lib.join("libtorch_cuda.so").exists();
    for device in ["cuda:0", "cuda"] {
        let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
            .args(["train", "--quiet", "--epochs", "1", "--device", device])
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .expect("swarm runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--device {device} should fail");
        assert!(
            stderr.contains(&format!("device {device}: no CUDA device is visible")),
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("SWARM_CUDA=1 bash tools/setup.sh"),
            cpu_libtorch,
            "{stderr}"
        );
        assert!(stderr.contains("--device cpu"), "{stderr}");
    }
}
