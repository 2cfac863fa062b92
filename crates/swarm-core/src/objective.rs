//! Synthetic objectives for the simulator: each node holds its own shard of a global problem.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr_free::standard_normal;

/// A decentralized objective: the sum over nodes of local losses on a shared parameter vector.
pub trait Objective {
    /// Number of nodes (shards).
    fn nodes(&self) -> usize;
    /// Length of the parameter vector.
    fn dim(&self) -> usize;
    /// One local gradient step of node `node` on `x` with learning rate `lr`.
    fn step(&self, node: usize, x: &mut [f32], lr: f32, rng: &mut StdRng);
    /// The global loss (mean over nodes of local losses) at `x`.
    fn loss(&self, x: &[f32]) -> f64;
}

mod rand_distr_free {
    use rand::Rng;

    /// A standard normal draw by Box-Muller (keeps the crate free of a distributions dependency).
    pub fn standard_normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Least squares: node i holds rows `A_i` (m x d) and targets `b_i`; the global loss is
/// `sum_i ||A_i x - b_i||^2 / (2 m n)`. Each node takes full local gradient steps.
#[derive(Debug, Clone)]
pub struct LeastSquares {
    n: usize,
    m: usize,
    d: usize,
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    optimum: Vec<f32>,
}

impl LeastSquares {
    /// A consistent problem `b_i = A_i x*` with Gaussian rows. With `m < d` no node can find `x*`
    /// alone (its local problem has a null space); together (`n * m >= d`) they determine it.
    pub fn consistent(n: usize, m: usize, d: usize, seed: u64) -> Self {
        Self::with_noise(n, m, d, 0.0, seed)
    }

    /// Targets `b_i = A_i x* + noise * N(0, 1)`; the optimum is computed from the normal equations.
    pub fn with_noise(n: usize, m: usize, d: usize, noise: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let planted: Vec<f64> = (0..d).map(|_| standard_normal(&mut rng)).collect();
        let mut a = Vec::with_capacity(n);
        let mut b = Vec::with_capacity(n);
        for _ in 0..n {
            let rows: Vec<f64> = (0..m * d).map(|_| standard_normal(&mut rng)).collect();
            let targets: Vec<f64> = (0..m)
                .map(|r| {
                    let dot: f64 = (0..d).map(|c| rows[r * d + c] * planted[c]).sum();
                    dot + noise * standard_normal(&mut rng)
                })
                .collect();
            a.push(rows);
            b.push(targets);
        }
        let optimum = solve_normal_equations(&a, &b, m, d).unwrap_or(planted);
        LeastSquares {
            n,
            m,
            d,
            a,
            b,
            optimum: optimum.iter().map(|&v| v as f32).collect(),
        }
    }

    /// The minimiser of the global loss.
    pub fn optimum(&self) -> &[f32] {
        &self.optimum
    }

    /// The local loss of node `node` at `x`.
    pub fn local_loss(&self, node: usize, x: &[f32]) -> f64 {
        let (a, b) = (&self.a[node], &self.b[node]);
        (0..self.m)
            .map(|r| {
                let dot: f64 = (0..self.d)
                    .map(|c| a[r * self.d + c] * f64::from(x[c]))
                    .sum();
                (dot - b[r]).powi(2)
            })
            .sum::<f64>()
            / (2.0 * self.m as f64)
    }
}

impl Objective for LeastSquares {
    fn nodes(&self) -> usize {
        self.n
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn step(&self, node: usize, x: &mut [f32], lr: f32, _rng: &mut StdRng) {
        let (a, b, d) = (&self.a[node], &self.b[node], self.d);
        // The gradient sum_r residual_r * row_r, with every residual taken at the old x; the
        // residuals sit on the stack for small shards, so a step allocates nothing.
        let mut small = [0.0f64; 32];
        let mut large = Vec::new();
        let residuals: &mut [f64] = if self.m <= small.len() {
            &mut small[..self.m]
        } else {
            large.resize(self.m, 0.0);
            &mut large
        };
        for (r, res) in residuals.iter_mut().enumerate() {
            let row = &a[r * d..(r + 1) * d];
            *res = row
                .iter()
                .zip(x.iter())
                .map(|(a, x)| a * f64::from(*x))
                .sum::<f64>()
                - b[r];
        }
        let scale = f64::from(lr) / self.m as f64;
        for (c, xi) in x.iter_mut().enumerate() {
            let g: f64 = residuals
                .iter()
                .enumerate()
                .map(|(r, res)| res * a[r * d + c])
                .sum();
            *xi -= (g * scale) as f32;
        }
    }

    fn loss(&self, x: &[f32]) -> f64 {
        (0..self.n).map(|i| self.local_loss(i, x)).sum::<f64>() / self.n as f64
    }
}

/// Solves `(sum A_i^T A_i) x = sum A_i^T b_i` by Gaussian elimination with partial pivoting.
fn solve_normal_equations(a: &[Vec<f64>], b: &[Vec<f64>], m: usize, d: usize) -> Option<Vec<f64>> {
    let mut mat = vec![0.0; d * (d + 1)];
    for (rows, targets) in a.iter().zip(b) {
        for r in 0..m {
            let row = &rows[r * d..(r + 1) * d];
            for i in 0..d {
                for j in 0..d {
                    mat[i * (d + 1) + j] += row[i] * row[j];
                }
                mat[i * (d + 1) + d] += row[i] * targets[r];
            }
        }
    }
    for col in 0..d {
        let pivot = (col..d).max_by(|&p, &q| {
            mat[p * (d + 1) + col]
                .abs()
                .total_cmp(&mat[q * (d + 1) + col].abs())
        })?;
        if mat[pivot * (d + 1) + col].abs() < 1e-12 {
            return None;
        }
        for k in 0..=d {
            mat.swap(col * (d + 1) + k, pivot * (d + 1) + k);
        }
        for row in 0..d {
            if row != col {
                let factor = mat[row * (d + 1) + col] / mat[col * (d + 1) + col];
                for k in col..=d {
                    mat[row * (d + 1) + k] -= factor * mat[col * (d + 1) + k];
                }
            }
        }
    }
    Some(
        (0..d)
            .map(|i| mat[i * (d + 1) + d] / mat[i * (d + 1) + i])
            .collect(),
    )
}

/// L2-regularised logistic regression on Gaussian features, with labels from a planted separator.
/// Node shards can be made non-i.i.d.: node i sees mostly one class when `skew` approaches 1.
#[derive(Debug, Clone)]
pub struct LogisticRegression {
    n: usize,
    d: usize,
    features: Vec<Vec<f32>>,
    labels: Vec<Vec<f32>>,
    l2: f32,
    batch: usize,
}

impl LogisticRegression {
    /// `per_node` samples of dimension `d` per node; minibatches of `batch`; `skew` in [0, 1) the
    /// probability that a node keeps only samples of its preferred class (even nodes +1, odd -1).
    pub fn new(n: usize, per_node: usize, d: usize, batch: usize, skew: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let planted: Vec<f64> = (0..d).map(|_| standard_normal(&mut rng)).collect();
        let mut features = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for node in 0..n {
            let preferred = if node % 2 == 0 { 1.0 } else { -1.0 };
            let (mut xs, mut ys) = (
                Vec::with_capacity(per_node * d),
                Vec::with_capacity(per_node),
            );
            while ys.len() < per_node {
                let x: Vec<f64> = (0..d).map(|_| standard_normal(&mut rng)).collect();
                let margin: f64 = x.iter().zip(&planted).map(|(a, b)| a * b).sum();
                let y = if margin >= 0.0 { 1.0 } else { -1.0 };
                if y != preferred && rng.random::<f64>() < skew {
                    continue;
                }
                xs.extend(x.iter().map(|&v| v as f32));
                ys.push(y);
            }
            features.push(xs);
            labels.push(ys);
        }
        LogisticRegression {
            n,
            d,
            features,
            labels,
            l2: 1e-3,
            batch: batch.max(1),
        }
    }

    /// The fraction of all samples that `x` classifies correctly.
    pub fn accuracy(&self, x: &[f32]) -> f64 {
        let mut correct = 0usize;
        let mut total = 0usize;
        for (xs, ys) in self.features.iter().zip(&self.labels) {
            for (row, y) in xs.chunks_exact(self.d).zip(ys) {
                let margin: f32 = row.iter().zip(x).map(|(a, b)| a * b).sum();
                correct += usize::from(margin * y > 0.0);
                total += 1;
            }
        }
        correct as f64 / total.max(1) as f64
    }
}

impl Objective for LogisticRegression {
    fn nodes(&self) -> usize {
        self.n
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn step(&self, node: usize, x: &mut [f32], lr: f32, rng: &mut StdRng) {
        let (xs, ys) = (&self.features[node], &self.labels[node]);
        let mut grad = vec![0.0f32; self.d];
        for _ in 0..self.batch {
            let k = rng.random_range(0..ys.len());
            let row = &xs[k * self.d..(k + 1) * self.d];
            let margin: f32 = row.iter().zip(x.iter()).map(|(a, b)| a * b).sum::<f32>() * ys[k];
            let coef = -ys[k] / (1.0 + margin.exp());
            for (g, a) in grad.iter_mut().zip(row) {
                *g += coef * a;
            }
        }
        let scale = 1.0 / self.batch as f32;
        for (xi, g) in x.iter_mut().zip(grad) {
            *xi -= lr * (g * scale + self.l2 * *xi);
        }
    }

    fn loss(&self, x: &[f32]) -> f64 {
        let mut sum = 0.0f64;
        let mut count = 0usize;
        for (xs, ys) in self.features.iter().zip(&self.labels) {
            for (row, y) in xs.chunks_exact(self.d).zip(ys) {
                let margin: f32 = row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() * y;
                sum += f64::from((-margin).exp().ln_1p());
                count += 1;
            }
        }
        let reg: f64 =
            x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() * f64::from(self.l2) / 2.0;
        sum / count.max(1) as f64 + reg
    }
}
