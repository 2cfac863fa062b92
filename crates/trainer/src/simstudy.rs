//! `swarm sim`: the swarm-core simulator at large n on a synthetic objective, showing how the
//! spread of the models (their mean squared distance to the average model) evolves for different
//! topologies (spectral gaps), numbers of local steps H, and codecs.
//!
//! The objective is noisy least squares (`LeastSquares::with_noise`): every node holds 4 rows of
//! a `d`-dimensional problem whose local optima differ, so local steps pull the models apart and
//! averaging pulls them together. The models start at independent random points, so each curve
//! shows first the contraction of averaging (fast on graphs with a large spectral gap) and then
//! the floor where local steps and averaging balance (higher for larger H and sparser graphs).
//!
//! One factor varies at a time around the baseline (the first value of each list): every topology
//! at the first H and codec, every H on the first topology with the first codec, every codec on the
//! first topology at the first H.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarm_core::{Interaction, LeastSquares, LocalSteps, Objective, SimConfig, Simulator};

use crate::plot::{line_chart, Chart, Series};
use crate::TrainError;

/// Flags of `swarm sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Dimension of the synthetic model.
    #[arg(long, default_value_t = 8)]
    pub dim: usize,
    /// Topologies, comma-separated (the first is the baseline).
    #[arg(long, default_value = "regular:8,ring,torus2d,regular:4,exponential")]
    pub topologies: String,
    /// Local steps H between interactions, comma-separated (the first is the baseline).
    #[arg(long, default_value = "1,4,16")]
    pub local_steps: String,
    /// Codecs of the model reads, comma-separated (the first is the baseline).
    #[arg(long, default_value = "none,lattice:8,lattice:4")]
    pub quant: String,
    /// Averaging variant: pull, pairwise or blocking.
    #[arg(long, default_value = "pairwise")]
    pub interaction: String,
    /// Activations per node (parallel time) of each simulation.
    #[arg(long, default_value_t = 200)]
    pub rounds: u64,
    /// Points recorded per curve.
    #[arg(long, default_value_t = 50)]
    pub samples: u64,
    /// Learning rate of the local steps.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Standard deviation of the targets' noise (how different the local optima are).
    #[arg(long, default_value_t = 1.0)]
    pub noise: f64,
    /// Seed of the problem, the graph and the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory for sim.csv and the PNG plots.
    #[arg(long, default_value = "runs/sim")]
    pub out: PathBuf,
}

/// One simulated configuration.
#[derive(Debug, Clone, PartialEq)]
struct Case {
    topology: String,
    local_steps: String,
    quant: String,
}

/// One curve's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Topology spec.
    pub topology: String,
    /// Local steps.
    pub local_steps: String,
    /// Codec spec.
    pub quant: String,
    /// Second-smallest Laplacian eigenvalue of the graph.
    pub lambda2: f64,
    /// Mean degree.
    pub degree: f64,
    /// `(parallel time, spread per node, loss of the mean model)` samples.
    pub curve: Vec<(f64, f64, f64)>,
    /// Interactions performed.
    pub interactions: u64,
    /// Reads whose quantized decode failed and fell back to full precision.
    pub decode_fallbacks: u64,
    /// Bytes moved per node.
    pub bytes_per_node: f64,
    /// Interactions per second of simulation (sampling excluded).
    pub interactions_per_second: f64,
}

fn list(field: &str, s: &str) -> Result<Vec<String>, TrainError> {
    let items: Vec<String> = s
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if items.is_empty() {
        return Err(TrainError::Config(format!(
            "--{field}: give at least one value"
        )));
    }
    Ok(items)
}

/// Runs the study and writes `sim.csv` and the plots into `args.out`; returns every curve.
pub fn run(args: &SimArgs) -> Result<Vec<CaseResult>, TrainError> {
    let cfg = |m: String| TrainError::Config(m);
    if args.nodes < 2 || args.dim == 0 || args.rounds == 0 || args.samples == 0 {
        return Err(cfg(
            "--nodes must be >= 2 and --dim, --rounds, --samples >= 1".into(),
        ));
    }
    if !(args.lr.is_finite() && args.lr >= 0.0) {
        return Err(cfg(format!("--lr must be a number >= 0, got {}", args.lr)));
    }
    let interaction: Interaction = args
        .interaction
        .parse()
        .map_err(|e: swarm_core::SwarmError| cfg(format!("--interaction: {e}")))?;
    let topologies = list("topologies", &args.topologies)?;
    let hs = list("local-steps", &args.local_steps)?;
    let quants = list("quant", &args.quant)?;
    // Check every value before the first long simulation.
    for t in &topologies {
        t.parse::<topology::TopologySpec>()
            .map_err(|e| cfg(format!("--topologies: '{t}': {e}")))?;
    }
    for h in &hs {
        h.parse::<LocalSteps>()
            .map_err(|e| cfg(format!("--local-steps: {e}")))?;
    }
    for q in &quants {
        q.parse::<quant::CodecSpec>()
            .map_err(|e| cfg(format!("--quant: '{q}': {e}")))?;
    }
    let mut cases: Vec<Case> = Vec::new();
    let mut push = |c: Case| {
        if !cases.contains(&c) {
            cases.push(c);
        }
    };
    for t in &topologies {
        push(Case {
            topology: t.clone(),
            local_steps: hs[0].clone(),
            quant: quants[0].clone(),
        });
    }
    for h in &hs {
        push(Case {
            topology: topologies[0].clone(),
            local_steps: h.clone(),
            quant: quants[0].clone(),
        });
    }
    for q in &quants {
        push(Case {
            topology: topologies[0].clone(),
            local_steps: hs[0].clone(),
            quant: q.clone(),
        });
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| TrainError::Output(format!("cannot create {}: {e}", args.out.display())))?;
    let objective = LeastSquares::with_noise(args.nodes, 4, args.dim, args.noise, args.seed);
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x51);
    let init: Vec<Vec<f32>> = (0..args.nodes)
        .map(|_| (0..args.dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut results = Vec::new();
    for case in &cases {
        let r = run_case(args, interaction, case, &objective, &init)?;
        eprintln!(
            "sim {:<14} H={:<4} {:<10} lambda2 {:.3e}  final spread/node {:.3e}  {:.2}M interactions/s  {} decode fallbacks",
            r.topology,
            r.local_steps,
            r.quant,
            r.lambda2,
            r.curve.last().map_or(f64::NAN, |c| c.1),
            r.interactions_per_second / 1e6,
            r.decode_fallbacks
        );
        results.push(r);
    }
    write_csv(args, &results)?;
    plot(args, &topologies, &hs, &quants, &results)?;
    Ok(results)
}

fn run_case(
    args: &SimArgs,
    interaction: Interaction,
    case: &Case,
    objective: &LeastSquares,
    init: &[Vec<f32>],
) -> Result<CaseResult, TrainError> {
    let cfg = |m: String| TrainError::Config(m);
    let spec: topology::TopologySpec = case
        .topology
        .parse()
        .map_err(|e| cfg(format!("--topologies: {e}")))?;
    let graph = spec
        .build(args.nodes, args.seed)
        .map_err(|e| cfg(format!("--topologies: '{}': {e}", case.topology)))?;
    let lambda2 = topology::spectral::lambda2(&graph).value;
    let neighbours: Vec<Vec<usize>> = (0..args.nodes)
        .map(|i| graph.neighbours(i).to_vec())
        .collect();
    let degree = 2.0 * graph.num_edges() as f64 / args.nodes as f64;
    let local_steps: LocalSteps = case
        .local_steps
        .parse()
        .map_err(|e| cfg(format!("--local-steps: {e}")))?;
    let sim_cfg = SimConfig {
        interaction,
        local_steps,
        lr: args.lr,
        seed: args.seed,
    };
    let mut sim = Simulator::with_models(neighbours, objective.clone(), sim_cfg, init.to_vec())?;
    let spec: quant::CodecSpec = case
        .quant
        .parse()
        .map_err(|e| cfg(format!("--quant: {e}")))?;
    if spec.to_string() != "none" {
        let codecs = (0..args.nodes)
            .map(|i| spec.build(args.seed ^ i as u64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cfg(format!("--quant: {e}")))?;
        sim = sim.with_codecs(codecs)?;
    }
    let n = args.nodes as f64;
    let sample = |sim: &Simulator<LeastSquares>, events: u64| {
        let models = sim.models();
        let mean: Vec<f32> = crate::report::average_model(models.iter().map(|m| m.as_slice()));
        (
            events as f64 / n,
            sim.spread() / n,
            sim.objective().loss(&mean),
        )
    };
    let total = args.rounds * args.nodes as u64;
    let per_sample = (total / args.samples).max(1);
    let mut curve = vec![sample(&sim, 0)];
    let mut done = 0;
    let mut busy = 0.0;
    while done < total {
        let k = per_sample.min(total - done);
        let t = Instant::now();
        sim.run(k)?;
        busy += t.elapsed().as_secs_f64();
        done += k;
        curve.push(sample(&sim, done));
    }
    let stats = sim.stats();
    Ok(CaseResult {
        topology: case.topology.clone(),
        local_steps: case.local_steps.clone(),
        quant: case.quant.clone(),
        lambda2,
        degree,
        curve,
        interactions: stats.interactions,
        decode_fallbacks: stats.decode_fallbacks,
        bytes_per_node: stats.bytes as f64 / n,
        interactions_per_second: stats.interactions as f64 / busy.max(1e-9),
    })
}

fn write_csv(args: &SimArgs, results: &[CaseResult]) -> Result<(), TrainError> {
    let path = args.out.join("sim.csv");
    let io =
        |e: std::io::Error| TrainError::Output(format!("cannot write {}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    writeln!(
        f,
        "nodes,dim,interaction,topology,mean_degree,lambda2,local_steps,quant,parallel_time,spread_per_node,loss_of_mean"
    )
    .map_err(io)?;
    for r in results {
        for (t, s, l) in &r.curve {
            writeln!(
                f,
                "{},{},{},{},{:.3},{:.6e},{},{},{:.3},{:.6e},{:.6e}",
                args.nodes,
                args.dim,
                args.interaction,
                r.topology,
                r.degree,
                r.lambda2,
                r.local_steps,
                r.quant,
                t,
                s,
                l
            )
            .map_err(io)?;
        }
    }
    f.flush().map_err(io)
}

fn plot(
    args: &SimArgs,
    topologies: &[String],
    hs: &[String],
    quants: &[String],
    results: &[CaseResult],
) -> Result<(), TrainError> {
    let curve = |r: &CaseResult, label: String| Series {
        label,
        points: r.curve.iter().map(|c| (c.0, c.1)).collect(),
        band: Vec::new(),
    };
    let find = |t: &str, h: &str, q: &str| {
        results
            .iter()
            .find(|r| r.topology == t && r.local_steps == h && r.quant == q)
    };
    let title = |what: &str| {
        format!(
            "{what}: n = {}, d = {}, {} averaging, lr {}",
            args.nodes, args.dim, args.interaction, args.lr
        )
    };
    let y_label = "spread per node (mean squared distance to the average)";
    let x_label = "parallel time (activations per node)";
    let charts: [(&str, String, Vec<Series>); 3] = [
        (
            "spread_by_topology.png",
            title(&format!("Topologies (H = {}, {})", hs[0], quants[0])),
            topologies
                .iter()
                .filter_map(|t| {
                    find(t, &hs[0], &quants[0])
                        .map(|r| curve(r, format!("{t} (lambda2 {:.2e})", r.lambda2)))
                })
                .collect(),
        ),
        (
            "spread_by_local_steps.png",
            title(&format!("Local steps ({}, {})", topologies[0], quants[0])),
            hs.iter()
                .filter_map(|h| {
                    find(&topologies[0], h, &quants[0]).map(|r| curve(r, format!("H = {h}")))
                })
                .collect(),
        ),
        (
            "spread_by_codec.png",
            title(&format!("Codecs ({}, H = {})", topologies[0], hs[0])),
            quants
                .iter()
                .filter_map(|q| {
                    find(&topologies[0], &hs[0], q).map(|r| {
                        curve(
                            r,
                            format!(
                                "{q} ({:.0} B/node, {} fallbacks)",
                                r.bytes_per_node, r.decode_fallbacks
                            ),
                        )
                    })
                })
                .collect(),
        ),
    ];
    for (file, title, series) in charts {
        line_chart(
            &args.out.join(file),
            &Chart {
                title: &title,
                x_label,
                y_label,
                log_x: false,
                log_y: true,
            },
            &series,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: PathBuf) -> SimArgs {
        SimArgs {
            nodes: 64,
            dim: 4,
            topologies: "regular:4,ring".into(),
            local_steps: "1,8".into(),
            quant: "none,lattice:8".into(),
            interaction: "pairwise".into(),
            rounds: 60,
            samples: 10,
            lr: 0.05,
            noise: 1.0,
            seed: 3,
            out,
        }
    }

    #[test]
    fn spread_contracts_faster_on_the_better_connected_graph_and_rises_with_h() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = run(&args(dir.path().to_path_buf())).expect("study");
        // regular:4 x {H=1, H=8}, ring, lattice:8: 4 distinct cases.
        assert_eq!(results.len(), 4);
        let get = |t: &str, h: &str, q: &str| {
            results
                .iter()
                .find(|r| r.topology == t && r.local_steps == h && r.quant == q)
                .expect("case")
        };
        let base = get("regular:4", "1", "none");
        let ring = get("ring", "1", "none");
        let h8 = get("regular:4", "8", "none");
        assert!(base.lambda2 > ring.lambda2);
        let last = |r: &CaseResult| r.curve.last().expect("curve").1;
        assert!(last(base) < base.curve[0].1 / 10.0, "averaging contracts");
        assert!(last(base) < last(ring), "{} vs {}", last(base), last(ring));
        assert!(last(h8) > last(base), "{} vs {}", last(h8), last(base));
        let csv = std::fs::read_to_string(dir.path().join("sim.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 1 + 4 * 11);
        for png in [
            "spread_by_topology.png",
            "spread_by_local_steps.png",
            "spread_by_codec.png",
        ] {
            assert!(dir.path().join(png).exists(), "{png}");
        }
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (edit, expected) in [
            (
                Box::new(|a: &mut SimArgs| a.topologies = "moebius".into())
                    as Box<dyn Fn(&mut SimArgs)>,
                "--topologies",
            ),
            (
                Box::new(|a: &mut SimArgs| a.local_steps = "0".into()),
                "--local-steps",
            ),
            (
                Box::new(|a: &mut SimArgs| a.quant = "zip".into()),
                "--quant",
            ),
            (
                Box::new(|a: &mut SimArgs| a.interaction = "x".into()),
                "--interaction",
            ),
        ] {
            let mut a = args(dir.path().to_path_buf());
            edit(&mut a);
            let e = run(&a).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }
}
