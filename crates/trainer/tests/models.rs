//! The built-in models beyond the MLP and CNN: ResNet-20 on a CIFAR-format fixture, the
//! Transformer classifier on token sequences and on image rows.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

use trainer::data::{load_dir, InputShape, Split};
use trainer::model::{batch, FlatModel, ModelKind, SgdConfig};

mod common;

/// Takes `steps` SGD steps over `split` in order; returns the losses.
fn train_steps(model: &mut FlatModel, split: &Split, steps: usize, bs: usize, lr: f64) -> Vec<f64> {
    (0..steps)
        .map(|s| {
            let idx: Vec<usize> = (0..bs).map(|k| (s * bs + k) % split.len()).collect();
            let (x, y) = batch(split, &idx);
            let loss = model.backward(&x, &y);
            model.sgd_step(lr);
            loss
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn resnet20_has_the_reference_size_and_its_loss_falls_on_a_cifar_fixture() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let data = load_dir(&common::cifar10_dir(dir.path(), 64, 20)).unwrap();
    let kind: ModelKind = "resnet20".parse().unwrap();
    let mut model = FlatModel::new(kind, data.train.shape, 10, 1).unwrap();
    // He et al.'s ResNet-20 (option A shortcuts) with the affine norm parameters: 0.27M.
    assert_eq!(model.dim(), 269_722);
    let w = model
        .specs()
        .iter()
        .find(|s| s.name == "layer3.2.conv2.weight")
        .unwrap();
    assert_eq!(w.shape, vec![64, 64, 3, 3]);
    model.set_sgd(SgdConfig {
        momentum: 0.9,
        ..Default::default()
    });
    let losses = train_steps(&mut model, &data.train, 16, 16, 0.02);
    let (first, last) = (mean(&losses[..4]), mean(&losses[12..]));
    assert!(last < 0.6 * first, "losses {losses:?}");
}

#[test]
fn swarm_trains_resnet20_on_cifar10_binary_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar10_dir(dir.path(), 128, 40);
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
        .args(["train", "--model", "resnet20", "--data"])
        .arg(&data)
        .args([
            "--nodes",
            "2",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.02",
            "--momentum",
            "0.9",
            "--lr-schedule",
            "constant",
            "--local-steps",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let loss: Vec<f64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(loss.len(), 3);
    assert!(
        loss[1] < loss[0] && loss[2] < loss[1] && loss[2] < 0.8 * loss[0],
        "train loss per epoch {loss:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // 128 examples / (2 nodes * 16) = 4 steps per node and epoch.
    assert_eq!(summary["local_steps_total"], 4 * 3 * 2);
    assert_eq!(summary["parameters"], 269_722);
    // The final model: tensors by name, with the run's metadata.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "swarm-model");
    assert_eq!(
        (meta["algo"].as_str(), meta["step"].as_str()),
        ("swarm", "12")
    );
    assert!(
        meta["config"].contains("model = \"resnet20\""),
        "{}",
        meta["config"]
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("layer2.0.conv1.weight").unwrap().shape(),
        &[32, 16, 3, 3]
    );

    // A corrupt CIFAR file is refused before training, with the file and the problem.
    let mut bytes = std::fs::read(data.join("data_batch_1.bin")).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(data.join("data_batch_1.bin"), bytes).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_swarm"))
        .args(["train", "--model", "resnet20", "--quiet", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("data_batch_1.bin") && stderr.contains("not a valid CIFAR-10 binary file"),
        "{stderr}"
    );
}

/// Sequences of 8 tokens below 12 whose class is 1 when the sequence holds token 11, else 0.
fn token_split(n: usize, seed: usize) -> Split {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for k in 0..n {
        let has = k % 2 == 1;
        let at = (k * 5 + seed) % 8;
        for t in 0..8 {
            let tok = if has && t == at {
                11
            } else {
                ((k * 31 + t * 17 + seed * 7) % 11) as u8
            };
            images.push(f32::from(tok));
        }
        labels.push(u8::from(has));
    }
    let shape = InputShape {
        vocab: Some(12),
        ..InputShape::image(1, 1, 8)
    };
    Split {
        images,
        labels,
        features: 8,
        shape,
    }
}

#[test]
fn transformer_learns_which_sequences_hold_a_token() {
    tch::set_num_threads(1);
    let (train, test) = (token_split(256, 0), token_split(128, 3));
    let kind: ModelKind = "transformer:32:2:4".parse().unwrap();
    let mut model = FlatModel::new(kind, train.shape, 2, 1).unwrap();
    let names: Vec<&str> = model.specs().iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tok_emb.weight") && names.contains(&"blocks.1.attn.qkv.weight"));
    model.set_sgd(SgdConfig {
        momentum: 0.9,
        clip_grad_norm: Some(1.0),
        ..Default::default()
    });
    let (_, before) = model.evaluate(&test);
    train_steps(&mut model, &train, 150, 32, 0.05);
    let (_, after) = model.evaluate(&test);
    assert!(after > 0.9, "accuracy {before} -> {after}");
}

#[test]
fn transformer_reads_images_as_rows_and_token_data_needs_it() {
    let data = token_split(4, 0);
    let err = FlatModel::new("mlp".parse().unwrap(), data.shape, 2, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("token sequences") && err.contains("transformer"),
        "{err}"
    );
    let model = FlatModel::new(
        "transformer".parse().unwrap(),
        InputShape::image(3, 32, 32),
        10,
        1,
    )
    .unwrap();
    let proj = model
        .specs()
        .iter()
        .find(|s| s.name == "in_proj.weight")
        .unwrap();
    assert_eq!(
        proj.shape,
        vec![64, 96],
        "one token per row of 3 x 32 values"
    );
    for bad in ["transformer:30:2:4", "transformer:64", "resnet", "mlp:0"] {
        let e = bad.parse::<ModelKind>().unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("resnet20"), "{e}");
    }
}
