//! Checkpoints and `--resume`: a resumed run continues the same run (step counter, schedule,
//! minibatch order, optimizer state), it does not restart it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use trainer::checkpoint;
use trainer::config::{Algo, TrainArgs};

fn args(out: &Path) -> TrainArgs {
    TrainArgs {
        train_subset: Some(2000),
        test_subset: Some(500),
        batch_size: Some(25),
        out: Some(out.to_path_buf()),
        quiet: true,
        ..Default::default()
    }
}

fn run(a: TrainArgs) -> trainer::train::Summary {
    trainer::train::train(&a.resolve().unwrap()).unwrap()
}

fn metrics(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn resumed_allreduce_run_is_bit_identical_to_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    // 2 nodes: the gradient sum g0 + g1 is the same whichever node adds first, so the run is
    // deterministic and a resumed run must reproduce it exactly.
    let base = |out: &Path| TrainArgs {
        algo: Some(Algo::Allreduce),
        nodes: Some(2),
        epochs: Some(3),
        momentum: Some(0.9),
        weight_decay: Some(1e-4),
        lr: Some(0.05),
        checkpoint_every: Some(1),
        ..args(out)
    };
    run(base(&full));
    let ck_dir = full.join("checkpoints/epoch-0002");
    let ck = checkpoint::load(&checkpoint::node_file(&ck_dir, 1)).unwrap();
    // 2000 examples / (2 nodes * 25) = 40 steps per node and epoch.
    assert_eq!((ck.node, ck.nodes, ck.epoch, ck.step), (1, 2, 2, 80));
    assert_eq!(ck.optimizer_state.len(), ck.params.len());
    assert!(ck.optimizer_state.iter().any(|&m| m != 0.0));
    assert!(
        !full.join("checkpoints/epoch-0001").exists(),
        "keeps the two newest"
    );

    run(TrainArgs {
        resume: Some(ck_dir),
        ..base(&resumed)
    });
    let (a, b) = (metrics(&full), metrics(&resumed));
    assert_eq!(b.len(), 1, "the resumed run does epoch 3 only");
    assert_eq!(b[0][0], "3");
    assert_eq!(
        b[0][1..4],
        a[2][1..4],
        "same train loss, test loss, accuracy"
    );
    let last = |out: &Path| {
        checkpoint::load(&checkpoint::node_file(
            &out.join("checkpoints/epoch-0003"),
            0,
        ))
        .unwrap()
    };
    let (x, y) = (last(&full), last(&resumed));
    assert_eq!(y.step, 120);
    let differing = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        let d: Vec<f32> = a.iter().zip(b).map(|(p, q)| (p - q).abs()).collect();
        let n = a
            .iter()
            .zip(b)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        (n, d.iter().copied().fold(0.0f32, f32::max))
    };
    assert_eq!(differing(&x.params, &y.params), (0, 0.0), "parameters");
    assert_eq!(
        differing(&x.optimizer_state, &y.optimizer_state),
        (0, 0.0),
        "momentum"
    );
}

#[test]
fn resumed_swarm_run_continues_from_its_loss_and_refuses_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    run(TrainArgs {
        nodes: Some(3),
        epochs: Some(2),
        lr: Some(0.1),
        lr_schedule: Some("constant".into()),
        checkpoint_every: Some(2),
        eval_every: Some(9),
        ..args(&first)
    });
    let before = metrics(&first);
    let eval_steps = |out: &Path| -> Vec<usize> {
        std::fs::read_to_string(out.join("evals.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect()
    };
    // 2000 / (3 * 25) = 27 steps per epoch: node 0 is evaluated after steps 9, 18, ..., 54.
    assert_eq!(eval_steps(&first), vec![9, 18, 27, 36, 45, 54]);
    // Only --epochs, --out and --resume: every other setting comes from the checkpoint.
    let s = run(TrainArgs {
        epochs: Some(3),
        resume: Some(first.clone()),
        out: Some(second.clone()),
        quiet: true,
        ..Default::default()
    });
    assert_eq!((s.nodes, s.config.train_subset), (3, Some(2000)));
    let after = metrics(&second);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0][0], "3");
    let loss = |row: &[String]| row[1].parse::<f64>().unwrap();
    // A restart from scratch would be back at the first epoch's loss.
    assert!(
        loss(&after[0]) < loss(&before[0]) * 0.9 && loss(&after[0]) < loss(&before[1]) * 1.1,
        "epoch losses {} {} then {}",
        loss(&before[0]),
        loss(&before[1]),
        loss(&after[0])
    );
    // The resumed run's step counter goes on from 54: evaluations after steps 63, 72, 81, and
    // its checkpoint counts all 3 epochs.
    assert_eq!(eval_steps(&second), vec![63, 72, 81]);
    let ck = checkpoint::load(&checkpoint::node_file(
        &second.join("checkpoints/epoch-0003"),
        2,
    ))
    .unwrap();
    assert_eq!((ck.epoch, ck.step), (3, 81));

    let err = |a: TrainArgs| {
        a.resolve()
            .and_then(|c| trainer::train::train(&c))
            .unwrap_err()
            .to_string()
    };
    let e = err(TrainArgs {
        nodes: Some(4),
        epochs: Some(3),
        resume: Some(first.clone()),
        out: Some(dir.path().join("x")),
        quiet: true,
        ..Default::default()
    });
    assert!(e.contains("node-3.safetensors is missing"), "{e}");
    let e = err(TrainArgs {
        model: Some("mlp:32".into()),
        epochs: Some(3),
        resume: Some(first.clone()),
        out: Some(dir.path().join("x")),
        quiet: true,
        ..Default::default()
    });
    assert!(
        e.contains("node-0.safetensors") && e.contains("parameters"),
        "{e}"
    );
    let e = err(TrainArgs {
        epochs: Some(2),
        resume: Some(first.clone()),
        out: Some(dir.path().join("x")),
        quiet: true,
        ..Default::default()
    });
    assert!(e.contains("already completed 2 epochs"), "{e}");
}
