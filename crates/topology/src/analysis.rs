//! Graph analysis: connectivity, diameter, spectral gap, gossip mixing bound, and [`Stats`].

use std::collections::VecDeque;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::graph::{DegreeStats, Graph};
use crate::spectral::{self, Lambda2, SpectralOptions};

/// Breadth-first distances from `src` (`usize::MAX` for unreachable nodes).
///
/// # Panics
/// If `src >= g.n()`.
pub fn bfs_distances(g: &Graph, src: usize) -> Vec<usize> {
    let mut dist = vec![usize::MAX; g.n()];
    let mut queue = VecDeque::with_capacity(g.n());
    dist[src] = 0;
    queue.push_back(src);
    while let Some(u) = queue.pop_front() {
        let du = dist[u] + 1;
        for &v in g.neighbours(u) {
            if dist[v] == usize::MAX {
                dist[v] = du;
                queue.push_back(v);
            }
        }
    }
    dist
}

/// Number of connected components (0 for the empty graph).
pub fn connected_components(g: &Graph) -> usize {
    let n = g.n();
    let mut seen = vec![false; n];
    let mut stack = Vec::new();
    let mut count = 0;
    for s in 0..n {
        if seen[s] {
            continue;
        }
        count += 1;
        seen[s] = true;
        stack.push(s);
        while let Some(u) = stack.pop() {
            for &v in g.neighbours(u) {
                if !seen[v] {
                    seen[v] = true;
                    stack.push(v);
                }
            }
        }
    }
    count
}

/// Whether the graph is connected (a graph with one node is; the empty graph is not).
pub fn is_connected(g: &Graph) -> bool {
    g.n() > 0 && connected_components(g) == 1
}

/// Diameter (longest shortest path), exact or bracketed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diameter {
    /// A lower bound (the largest eccentricity seen).
    pub lower: usize,
    /// An upper bound (twice the smallest eccentricity seen, or the exact value).
    pub upper: usize,
    /// Whether `lower == upper` was established by BFS from every node or by the bounds
    /// meeting. `None` diameters (disconnected graphs) are reported as `lower = upper = 0`,
    /// `exact = false`, with [`Stats::connected`] false.
    pub exact: bool,
}

impl fmt::Display for Diameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exact {
            write!(f, "{}", self.lower)
        } else {
            write!(f, "in [{}, {}] (sampled)", self.lower, self.upper)
        }
    }
}

/// Diameter of a connected graph: exact by BFS from every node when `n * |E| <= exact_work`,
/// otherwise bracketed by `samples` BFS runs (double sweeps from random nodes, giving a lower
/// bound, and `2 * min eccentricity` as the upper bound). Returns `None` if disconnected.
pub fn diameter(g: &Graph, exact_work: usize, samples: usize, seed: u64) -> Option<Diameter> {
    let n = g.n();
    if !is_connected(g) {
        return None;
    }
    let ecc = |s: usize| -> (usize, usize) {
        let d = bfs_distances(g, s);
        let (far, &e) = d
            .iter()
            .enumerate()
            .max_by_key(|&(_, &x)| x)
            .unwrap_or((s, &0));
        (e, far)
    };
    if n.saturating_mul(g.num_edges().max(1)) <= exact_work {
        let d = (0..n).map(|s| ecc(s).0).max().unwrap_or(0);
        return Some(Diameter {
            lower: d,
            upper: d,
            exact: true,
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut lower, mut upper) = (0, usize::MAX);
    let mut s = rng.random_range(0..n);
    for k in 0..samples.max(2) {
        let (e, far) = ecc(s);
        lower = lower.max(e);
        upper = upper.min(2 * e);
        if lower == upper {
            break;
        }
        // Alternate: jump to the farthest node (double sweep), then to a fresh random node.
        s = if k % 2 == 0 {
            far
        } else {
            rng.random_range(0..n)
        };
    }
    Some(Diameter {
        lower,
        upper,
        exact: lower == upper,
    })
}

/// The convergence bound that `lambda2` implies for randomized gossip averaging.
///
/// Model (Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
/// Theory 52(6), 2006; the same global edge scheduler as the SwarmSGD analysis of Nadiradze et
/// al., NeurIPS 2021): each interaction picks an edge `{i, j}` uniformly at random and both
/// endpoints replace their values by their average, `x <- W x` with
/// `W = I - (e_i - e_j)(e_i - e_j)^T / 2`. `W` is a symmetric projection, so
/// `E[W^T W] = E[W] = I - L / (2|E|)`, and for the disagreement `x - mean(x)` (orthogonal to the
/// constant vector)
///
/// `E ||x(t+1) - mean||^2 <= (1 - lambda2 / (2|E|)) ||x(t) - mean||^2`.
///
/// For an `r`-regular graph `2|E| = r n`, giving the factor `1 - lambda2 / (r n)` that appears in
/// the SwarmSGD potential analysis. (With one-sided averaging, where only the initiator moves,
/// the mean is not preserved and this bound does not apply as stated.)
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixingBound {
    /// `1 - lambda2 / (2|E|)`: bound on the expected contraction of the squared distance to
    /// the mean per interaction.
    pub contraction_per_interaction: f64,
    /// Interactions after which the bound guarantees the expected squared distance has halved:
    /// `ln 2 / -ln(contraction)` (about `2|E| ln 2 / lambda2`).
    pub interactions_to_halve: f64,
    /// The same in rounds of `n` interactions (one per node on average).
    pub rounds_to_halve: f64,
}

impl MixingBound {
    /// The bound for a graph with `n` nodes, `edges` edges and spectral gap `lambda2`.
    /// Returns `None` if the graph has no edges or `lambda2 <= 0` (no contraction).
    pub fn new(n: usize, edges: usize, lambda2: f64) -> Option<Self> {
        if edges == 0 || lambda2 <= 0.0 || n == 0 {
            return None;
        }
        let c = (1.0 - lambda2 / (2.0 * edges as f64)).max(0.0);
        let interactions = if c == 0.0 {
            1.0
        } else {
            std::f64::consts::LN_2 / -(c.ln())
        };
        Some(MixingBound {
            contraction_per_interaction: c,
            interactions_to_halve: interactions,
            rounds_to_halve: interactions / n as f64,
        })
    }
}

/// Options for [`Stats::compute_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatsOptions {
    /// Compute the diameter exactly (BFS from every node) when `n * |E|` is at most this.
    pub diameter_exact_work: usize,
    /// BFS runs for the sampled diameter bracket on larger graphs.
    pub diameter_samples: usize,
    /// Spectral solver settings.
    pub spectral: SpectralOptions,
    /// Skip the spectral gap (and the mixing bound) entirely.
    pub skip_spectral: bool,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            diameter_exact_work: 200_000_000,
            diameter_samples: 16,
            spectral: SpectralOptions::default(),
            skip_spectral: false,
        }
    }
}

/// Summary statistics of a communication graph. `Display` is human readable; `Serialize` gives
/// JSON for tooling.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of undirected edges.
    pub edges: usize,
    /// Degree statistics.
    pub degree: DegreeStats,
    /// `Some(r)` if the graph is `r`-regular.
    pub regular: Option<usize>,
    /// Whether the graph is connected.
    pub connected: bool,
    /// Number of connected components.
    pub components: usize,
    /// Diameter (`None` if disconnected).
    pub diameter: Option<Diameter>,
    /// Second smallest Laplacian eigenvalue (`None` if skipped).
    pub lambda2: Option<Lambda2>,
    /// Gossip-averaging bound implied by `lambda2` (`None` if skipped or not contracting).
    pub mixing: Option<MixingBound>,
}

impl Stats {
    /// All statistics with default options.
    pub fn compute(g: &Graph) -> Self {
        Self::compute_with(g, &StatsOptions::default())
    }

    /// All statistics with explicit options.
    pub fn compute_with(g: &Graph, opts: &StatsOptions) -> Self {
        let components = connected_components(g);
        let connected = components == 1;
        let lambda2 = (!opts.skip_spectral).then(|| spectral::lambda2_with(g, &opts.spectral));
        let mixing = lambda2
            .as_ref()
            .and_then(|l| MixingBound::new(g.n(), g.num_edges(), l.value));
        Stats {
            nodes: g.n(),
            edges: g.num_edges(),
            degree: g.degree_stats(),
            regular: g.is_regular(),
            connected,
            components,
            diameter: diameter(g, opts.diameter_exact_work, opts.diameter_samples, 1),
            lambda2,
            mixing,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes:        {}", self.nodes)?;
        writeln!(f, "edges:        {}", self.edges)?;
        let d = &self.degree;
        write!(
            f,
            "degree:       min {} / mean {:.3} / max {} (std {:.3})",
            d.min, d.mean, d.max, d.std_dev
        )?;
        match self.regular {
            Some(r) => writeln!(f, ", {r}-regular")?,
            None => writeln!(f, ", not regular")?,
        }
        if self.connected {
            writeln!(f, "connected:    yes")?;
        } else {
            writeln!(f, "connected:    no ({} components)", self.components)?;
        }
        match &self.diameter {
            Some(d) => writeln!(f, "diameter:     {d}")?,
            None => writeln!(f, "diameter:     infinite (disconnected)")?,
        }
        if let Some(l) = &self.lambda2 {
            if l.value == 0.0 || l.value >= 1e-3 {
                write!(f, "lambda2:      {:.6} ({:?}", l.value, l.method)?;
            } else {
                write!(f, "lambda2:      {:.6e} ({:?}", l.value, l.method)?;
            }
            if l.method == spectral::Method::Lanczos {
                write!(f, ", {} matvecs, residual {:.1e}", l.matvecs, l.residual)?;
                if !l.converged {
                    write!(f, ", NOT converged: upper bound")?;
                }
            }
            writeln!(f, ")")?;
        }
        if let Some(m) = &self.mixing {
            writeln!(
                f,
                "gossip bound: E|x-mean|^2 shrinks by >= factor {:.6} per random-edge interaction",
                m.contraction_per_interaction
            )?;
            writeln!(
                f,
                "              halves within {:.1} interactions ({:.2} rounds of n)",
                m.interactions_to_halve, m.rounds_to_halve
            )?;
        }
        Ok(())
    }
}
