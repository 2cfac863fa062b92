//! TorchScript models saved from PyTorch (`tests/fixtures/*.pt`, written by
//! `tools/export_torchscript.py`) train through the flat buffer.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use trainer::data::{load_dir, DEBIAN_FASHION_MNIST};
use trainer::model::{batch, FlatModel, ModelKind, SgdConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn kind(name: &str) -> ModelKind {
    format!("torchscript:{}", fixture(name).display())
        .parse()
        .unwrap()
}

#[test]
fn a_scripted_model_computes_with_the_flat_buffer_and_learns() {
    tch::set_num_threads(1);
    let mut data = load_dir(Path::new(DEBIAN_FASHION_MNIST)).unwrap();
    data.train = data.train.truncated(3000);
    data.test = data.test.truncated(1000);
    for (file, params) in [
        ("layernorm_mlp.pt", 12_762),
        ("batchnorm_no_stats.pt", 5_882),
    ] {
        let mut model = FlatModel::new(kind(file), data.train.shape, 10, 1).unwrap();
        assert_eq!(model.dim(), params, "{file}");
        let names: Vec<String> = model.specs().iter().map(|s| s.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "flat order is by name");

        // The module's parameters are the flat buffer: zeroing it zeroes the logits.
        let saved = model.params();
        model.load(&vec![0.0; params]).unwrap();
        let (x, _) = batch(&data.test, &[0, 1, 2]);
        let logits = model.forward(&x);
        assert_eq!(logits.size(), [3, 10]);
        assert_eq!(logits.abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
        model.load(&saved).unwrap();

        model.set_sgd(SgdConfig {
            momentum: 0.9,
            ..Default::default()
        });
        let (_, before) = model.evaluate(&data.test);
        for s in 0..150 {
            let idx: Vec<usize> = (0..32).map(|k| (s * 32 + k) % 3000).collect();
            let (x, y) = batch(&data.train, &idx);
            model.backward(&x, &y);
            model.sgd_step(0.05);
        }
        let (_, after) = model.evaluate(&data.test);
        assert!(
            after > 0.65 && after > before + 0.3,
            "{file}: accuracy {before} -> {after}"
        );
    }
}

#[test]
fn swarm_trains_a_torchscript_model_and_saves_it_by_parameter_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
        .arg("train")
        .arg("--model")
        .arg(format!(
            "torchscript:{}",
            fixture("layernorm_mlp.pt").display()
        ))
        .args([
            "--nodes",
            "2",
            "--epochs",
            "2",
            "--train-subset",
            "6000",
            "--test-subset",
            "1000",
            "--lr",
            "0.1",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let acc: Vec<f64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    assert!(
        acc[0] > 0.6 && acc[1] > 0.7,
        "test accuracy per epoch {acc:?}"
    );
    let tensors = tch::Tensor::read_safetensors(out.join("model.safetensors")).unwrap();
    let mut shapes: Vec<(String, Vec<i64>)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    shapes.sort();
    assert_eq!(
        shapes,
        [
            ("fc1.bias", vec![16]),
            ("fc1.weight", vec![16, 784]),
            ("fc2.bias", vec![10]),
            ("fc2.weight", vec![10, 16]),
            ("norm.bias", vec![16]),
            ("norm.weight", vec![16]),
        ]
        .map(|(n, s)| (n.to_string(), s))
    );
}

#[test]
fn unusable_torchscript_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let shape = trainer::data::InputShape::image(1, 28, 28);
    let err = |k: ModelKind, classes: usize, shape| {
        FlatModel::new(k, shape, classes, 1)
            .err()
            .unwrap()
            .to_string()
    };
    let missing: ModelKind = format!("torchscript:{}", dir.path().join("nope.pt").display())
        .parse()
        .unwrap();
    let e = err(missing, 10, shape);
    assert!(e.contains("nope.pt") && e.contains("no such file"), "{e}");
    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a zip archive").unwrap();
    let e = err(
        format!("torchscript:{}", garbage.display())
            .parse()
            .unwrap(),
        10,
        shape,
    );
    assert!(
        e.contains("garbage.pt") && e.contains("cannot be loaded as TorchScript"),
        "{e}"
    );
    let e = err(
        kind("layernorm_mlp.pt"),
        10,
        trainer::data::InputShape::image(3, 32, 32),
    );
    assert!(
        e.contains("forward fails on a batch of the data's shape (3x32x32)"),
        "{e}"
    );
    let e = err(kind("layernorm_mlp.pt"), 100, shape);
    assert!(e.contains("[2, 100]"), "{e}");
}
