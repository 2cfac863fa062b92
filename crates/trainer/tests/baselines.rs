//! Every baseline trains for real on a small slice of Fashion-MNIST, with its accounting; the
//! synchronous all-reduce family and the shared-model family end with identical replicas.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use trainer::config::{Algo, TrainArgs};

fn args(algo: Algo, out: &Path) -> TrainArgs {
    TrainArgs {
        algo: Some(algo),
        nodes: Some(4),
        epochs: Some(2),
        // 1600 examples / (4 nodes * 25) = 16 steps per node and epoch: a multiple of H = 4.
        train_subset: Some(1600),
        test_subset: Some(500),
        batch_size: Some(25),
        lr: Some(0.1),
        local_steps: Some("4".into()),
        // The square (4-cycle) is bipartite, as AD-PSGD needs.
        topology: Some("ring".into()),
        quant: Some(match algo {
            Algo::Qsparse | Algo::QsparseAsync => "topk:0.05+minmax:4".into(),
            Algo::Elastic | Algo::ElasticEf => "topk:0.1".into(),
            _ => "none".into(),
        }),
        out: Some(out.to_path_buf()),
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn every_baseline_learns_and_accounts_for_its_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::collections::BTreeMap::new();
    for algo in Algo::ALL {
        let out = dir.path().join(algo.to_string());
        let cfg = args(algo, &out).resolve().unwrap();
        let (s, accounts) = trainer::train::train_accounted(&cfg).unwrap();
        assert!(
            s.final_test_accuracy > 0.45,
            "{algo}: accuracy {}",
            s.final_test_accuracy
        );
        assert_eq!(accounts.len(), 2, "{algo}: one account per epoch");
        let last = &accounts[1];
        assert_eq!(last.len(), 4);
        for a in last {
            assert_eq!(a.local_steps, 32, "{algo}");
            assert!(a.compute_seconds > 0.0, "{algo}: compute time measured");
        }
        let total: u64 = last.iter().map(|a| a.bytes_sent).sum();
        assert!(total > 0, "{algo}: no traffic counted");
        assert_eq!(
            total, s.bytes_sent_total,
            "{algo}: accounts match the summary"
        );
        bytes.insert(algo.to_string(), total);
        assert!(out.join("accounting.json").exists());
        // Identical replicas give identical predictions.
        let identical = matches!(
            algo,
            Algo::Allreduce | Algo::LocalSgd | Algo::Qsparse | Algo::Elastic | Algo::ElasticEf
        );
        if identical {
            assert_eq!(
                (s.min_node_test_accuracy, s.mean_node_test_accuracy),
                (s.final_test_accuracy, s.final_test_accuracy),
                "{algo}: replicas differ"
            );
        }
    }
    // Byte counts follow the algorithms' definitions: local SGD all-reduces every 4th step,
    // all-reduce every step (the model has 203,530 parameters: 784-256-10).
    let d = 203_530u64;
    assert_eq!(bytes["allreduce"], 4 * 32 * (2 * 3 * 4 * d / 4));
    assert_eq!(bytes["localsgd"], bytes["allreduce"] / 4);
    assert_eq!(bytes["lasgd"], bytes["localsgd"]);
    // D-PSGD on a ring: two neighbour messages a step.
    assert_eq!(bytes["dpsgd"], 4 * 32 * 2 * (8 + 4 * d));
    // Compressed progress moves far less than local SGD's full models.
    assert!(bytes["qsparse"] * 5 < bytes["localsgd"], "{bytes:?}");
}

#[test]
fn adpsgd_refuses_a_topology_that_is_not_bipartite_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainArgs {
        topology: Some("complete".into()),
        ..args(Algo::Adpsgd, dir.path())
    };
    let e = trainer::train::train(&a.resolve().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bipartite"), "{e}");
}

#[test]
fn unknown_algorithms_are_named_in_the_error() {
    let e = "gossip".parse::<Algo>().unwrap_err().to_string();
    assert!(e.contains("gossip") && e.contains("qsparse-async"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "algo = \"gossip\"\n").unwrap();
    let e = TrainArgs {
        config: Some(path),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(e.contains("gossip") && e.contains("algo"), "{e}");
}
