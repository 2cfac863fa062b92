//! Laplacian spectra: a dense symmetric eigen-solver for small graphs and a thick-restart
//! Lanczos solver (constant vector deflated) for large sparse graphs.
//!
//! The quantity of interest is `lambda2`, the second smallest eigenvalue of the Laplacian
//! `L = D - A` (the algebraic connectivity, or spectral gap since `lambda1 = 0`). It is positive
//! exactly when the graph is connected.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::analysis;
use crate::graph::Graph;

/// How `lambda2` was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No computation needed: the graph is disconnected (`lambda2 = 0`) or has one node.
    Trivial,
    /// Householder tridiagonalization + implicit symmetric QR on the dense Laplacian.
    Dense,
    /// Thick-restart Lanczos with full reorthogonalization on the complement of the constant
    /// vector.
    Lanczos,
}

/// Result of a `lambda2` computation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lambda2 {
    /// The estimate of the second smallest Laplacian eigenvalue.
    pub value: f64,
    /// How it was computed.
    pub method: Method,
    /// Whether the residual reached the requested tolerance (always true for dense/trivial).
    pub converged: bool,
    /// Residual norm `||L y - value y||` of the Ritz vector `y` (0 for dense/trivial).
    /// Some eigenvalue lies within this distance of `value`, and `value >= lambda2` always
    /// (Cauchy interlacing), so the Lanczos estimate is an upper bound.
    pub residual: f64,
    /// Laplacian-vector products used (0 for dense/trivial).
    pub matvecs: usize,
}

/// Tuning of [`lambda2_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpectralOptions {
    /// Graphs with at most this many nodes use the exact dense solver (`O(n^3)` time,
    /// `O(n^2)` memory).
    pub dense_max_n: usize,
    /// Lanczos stops when the residual is at most `tol * 2 * max_degree` (an upper bound on
    /// `||L||`).
    pub tol: f64,
    /// Lanczos basis size before a thick restart.
    pub max_basis: usize,
    /// Ritz vectors kept at a restart.
    pub keep: usize,
    /// Budget of Laplacian-vector products; when exhausted the best estimate is returned with
    /// `converged = false`.
    pub max_matvecs: usize,
    /// Seed of the random start vector.
    pub seed: u64,
}

impl Default for SpectralOptions {
    fn default() -> Self {
        SpectralOptions {
            dense_max_n: 600,
            tol: 1e-6,
            max_basis: 32,
            keep: 8,
            max_matvecs: 2000,
            seed: 0x5eed,
        }
    }
}

/// `lambda2` with default options: exact dense for `n <= 600`, Lanczos above.
pub fn lambda2(g: &Graph) -> Lambda2 {
    lambda2_with(g, &SpectralOptions::default())
}

/// `lambda2` with explicit options (see [`SpectralOptions`]).
pub fn lambda2_with(g: &Graph, opts: &SpectralOptions) -> Lambda2 {
    let trivial = |value| Lambda2 {
        value,
        method: Method::Trivial,
        converged: true,
        residual: 0.0,
        matvecs: 0,
    };
    if g.n() <= 1 || !analysis::is_connected(g) {
        return trivial(0.0);
    }
    if g.n() <= opts.dense_max_n {
        Lambda2 {
            value: lambda2_dense(g),
            method: Method::Dense,
            converged: true,
            residual: 0.0,
            matvecs: 0,
        }
    } else {
        lambda2_lanczos(g, opts)
    }
}

/// All Laplacian eigenvalues, ascending, by the dense solver. `O(n^3)`; for small graphs.
pub fn laplacian_eigenvalues_dense(g: &Graph) -> Vec<f64> {
    let n = g.n();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = g.degree(i) as f64;
        for &j in g.neighbours(i) {
            a[i * n + j] = -1.0;
        }
    }
    symmetric_eigenvalues(&mut a, n)
}

/// Second smallest Laplacian eigenvalue by the dense solver (0 for `n <= 1`).
pub fn lambda2_dense(g: &Graph) -> f64 {
    let ev = laplacian_eigenvalues_dense(g);
    ev.get(1).copied().unwrap_or(0.0).max(0.0)
}

/// Eigenvalues (ascending) of the symmetric `n x n` row-major matrix `a` (destroyed).
///
/// Householder reduction to tridiagonal form followed by implicit symmetric QR steps with
/// Wilkinson shifts.
///
/// # Panics
/// If `a.len() != n * n`.
pub fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n);
    if n == 0 {
        return Vec::new();
    }
    let (mut d, mut e) = tridiagonalize(a, n);
    tridiagonal_eigenvalues(&mut d, &mut e);
    d.sort_by(f64::total_cmp);
    d
}

/// Householder tridiagonalization; returns the diagonal and the sub-diagonal.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n.saturating_sub(1)];
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1; // length of the column below the diagonal
        let x0 = a[(k + 1) * n + k];
        let norm: f64 = (k + 1..n)
            .map(|i| a[i * n + k] * a[i * n + k])
            .sum::<f64>()
            .sqrt();
        d[k] = a[k * n + k];
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        let alpha = if x0 > 0.0 { -norm } else { norm };
        e[k] = alpha;
        // v = x - alpha e1, normalized.
        for (t, i) in (k + 1..n).enumerate() {
            v[t] = a[i * n + k];
        }
        v[0] -= alpha;
        let vn: f64 = v[..m].iter().map(|x| x * x).sum::<f64>().sqrt();
        if vn == 0.0 {
            continue;
        }
        for x in &mut v[..m] {
            *x /= vn;
        }
        // p = A_sub v, K = v.p, w = p - K v; A_sub -= 2 (v w^T + w v^T).
        for (t, i) in (k + 1..n).enumerate() {
            let row = &a[i * n + k + 1..i * n + n];
            p[t] = row.iter().zip(&v[..m]).map(|(x, y)| x * y).sum();
        }
        let kk: f64 = p[..m].iter().zip(&v[..m]).map(|(x, y)| x * y).sum();
        for t in 0..m {
            p[t] -= kk * v[t];
        }
        for (t, i) in (k + 1..n).enumerate() {
            let (vt, wt) = (v[t], p[t]);
            let row = &mut a[i * n + k + 1..i * n + n];
            for (s, x) in row.iter_mut().enumerate() {
                *x -= 2.0 * (vt * p[s] + wt * v[s]);
            }
        }
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 1) * n + n - 2];
    }
    d[n - 1] = a[(n - 1) * n + n - 1];
    (d, e)
}

/// Eigenvalues of the symmetric tridiagonal matrix (`d` diagonal, `e` sub-diagonal), in place
/// in `d` (unsorted).
fn tridiagonal_eigenvalues(d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let small = |e: f64, a: f64, b: f64| e.abs() <= f64::EPSILON * (a.abs() + b.abs()) || e == 0.0;
    let mut hi = n - 1;
    let mut iterations = 0usize;
    while hi > 0 {
        if small(e[hi - 1], d[hi - 1], d[hi]) {
            e[hi - 1] = 0.0;
            hi -= 1;
            continue;
        }
        let mut lo = hi - 1;
        while lo > 0 && !small(e[lo - 1], d[lo - 1], d[lo]) {
            lo -= 1;
        }
        iterations += 1;
        if iterations > 60 * n {
            break; // Not expected; leaves the current approximations.
        }
        // Wilkinson shift from the trailing 2x2 block.
        let delta = (d[hi - 1] - d[hi]) / 2.0;
        let b = e[hi - 1];
        let sign = if delta >= 0.0 { 1.0 } else { -1.0 };
        let mu = d[hi] - b * b / (delta + sign * delta.hypot(b));
        let mut x = d[lo] - mu;
        let mut z = e[lo];
        for k in lo..hi {
            let r = x.hypot(z);
            let (c, s) = if r == 0.0 { (1.0, 0.0) } else { (x / r, z / r) };
            if k > lo {
                e[k - 1] = r;
            }
            let (a, bb, cc) = (d[k], e[k], d[k + 1]);
            d[k] = c * c * a + 2.0 * c * s * bb + s * s * cc;
            d[k + 1] = s * s * a - 2.0 * c * s * bb + c * c * cc;
            e[k] = c * s * (cc - a) + (c * c - s * s) * bb;
            if k + 1 < hi {
                z = s * e[k + 1];
                e[k + 1] *= c;
                x = e[k];
            }
        }
    }
}

/// Eigen-decomposition of a small symmetric `m x m` row-major matrix by cyclic Jacobi.
///
/// Returns the eigenvalues ascending and the matching eigenvectors as columns of a row-major
/// `m x m` matrix.
fn jacobi_eigen(a: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..m)
            .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * m + j] * a[i * m + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let (akp, akq) = (a[k * m + p], a[k * m + q]);
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let (apk, aqk) = (a[p * m + k], a[q * m + k]);
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let (vkp, vkq) = (v[k * m + p], v[k * m + q]);
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[i * m + i].total_cmp(&a[j * m + j]));
    let vals = order.iter().map(|&i| a[i * m + i]).collect();
    let mut vecs = vec![0.0; m * m];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..m {
            vecs[k * m + new] = v[k * m + old];
        }
    }
    (vals, vecs)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn remove_mean(x: &mut [f64]) {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    for v in x {
        *v -= mean;
    }
}

/// `lambda2` by thick-restart Lanczos on the Laplacian restricted to the complement of the
/// constant vector (every basis vector is kept mean-free and fully reorthogonalized, twice).
///
/// The graph should be connected (otherwise the result approximates 0 only slowly; use
/// [`lambda2_with`], which checks). Returns the smallest Ritz value, an upper bound on `lambda2`.
pub fn lambda2_lanczos(g: &Graph, opts: &SpectralOptions) -> Lambda2 {
    let n = g.n();
    let dim = n.saturating_sub(1); // dimension of the deflated space
    let m = opts.max_basis.clamp(2, dim.max(2));
    let keep = opts.keep.clamp(1, m - 1);
    let norm_bound = 2.0 * g.degree_stats().max as f64;
    let tol_abs = opts.tol * norm_bound.max(1.0);
    let mut rng = StdRng::seed_from_u64(opts.seed);

    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(m);
    let mut start: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    remove_mean(&mut start);
    let nrm = dot(&start, &start).sqrt();
    start.iter_mut().for_each(|x| *x /= nrm);
    basis.push(start);
    // h[i * m + j] for i <= j holds v_i . L v_j (the restart block is kept diagonal).
    let mut h = vec![0.0; m * m];
    let mut w = vec![0.0; n];
    let mut matvecs = 0;
    let mut best = (f64::INFINITY, f64::INFINITY); // (value, residual)
    loop {
        let mut size = basis.len();
        let mut j = size - 1;
        let beta = loop {
            g.laplacian_mul(&basis[j], &mut w);
            matvecs += 1;
            for i in 0..=j {
                h[i * m + j] = 0.0;
            }
            for _pass in 0..2 {
                for (i, v) in basis.iter().enumerate() {
                    let c = dot(v, &w);
                    h[i * m + j] += c;
                    w.iter_mut().zip(v).for_each(|(x, y)| *x -= c * y);
                }
            }
            remove_mean(&mut w);
            let beta = dot(&w, &w).sqrt();
            let invariant = beta <= 1e-12 * norm_bound.max(1.0);
            if size == m || invariant || size == dim {
                break beta;
            }
            let next: Vec<f64> = w.iter().map(|x| x / beta).collect();
            basis.push(next);
            size += 1;
            j += 1;
        };
        // Rayleigh-Ritz on the projected matrix (upper triangle mirrored).
        let mut t = vec![0.0; size * size];
        for i in 0..size {
            for jj in i..size {
                let x = h[i * m + jj];
                t[i * size + jj] = x;
                t[jj * size + i] = x;
            }
        }
        let (theta, s) = jacobi_eigen(&t, size);
        let residual = |idx: usize| beta * s[(size - 1) * size + idx].abs();
        let res0 = residual(0);
        if res0 < best.1 || theta[0] < best.0 {
            best = (theta[0], res0);
        }
        let done = res0 <= tol_abs || size == dim || beta <= 1e-12 * norm_bound.max(1.0);
        if done || matvecs >= opts.max_matvecs {
            return Lambda2 {
                value: theta[0].max(0.0),
                method: Method::Lanczos,
                converged: done,
                residual: res0,
                matvecs,
            };
        }
        // Thick restart: keep the `keep` smallest Ritz vectors plus the normalized residual.
        let kk = keep.min(size - 1);
        let mut new_basis: Vec<Vec<f64>> = Vec::with_capacity(m);
        for idx in 0..kk {
            let mut y = vec![0.0; n];
            for (r, v) in basis.iter().enumerate() {
                let coef = s[r * size + idx];
                y.iter_mut().zip(v).for_each(|(a, b)| *a += coef * b);
            }
            new_basis.push(y);
        }
        let f: Vec<f64> = w.iter().map(|x| x / beta).collect();
        new_basis.push(f);
        basis = new_basis;
        h.iter_mut().for_each(|x| *x = 0.0);
        for (idx, &th) in theta.iter().enumerate().take(kk) {
            h[idx * m + idx] = th;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dense_eigenvalues_of_known_matrix() {
        // [[2,1,0],[1,2,1],[0,1,2]] has eigenvalues 2 - sqrt2, 2, 2 + sqrt2.
        let mut a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0];
        let ev = symmetric_eigenvalues(&mut a, 3);
        let s = 2f64.sqrt();
        for (x, y) in ev.iter().zip([2.0 - s, 2.0, 2.0 + s]) {
            assert!((x - y).abs() < 1e-12, "{ev:?}");
        }
    }

    #[test]
    fn jacobi_matches_qr() {
        let m = 7;
        let mut rng = StdRng::seed_from_u64(3);
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in i..m {
                let x: f64 = rng.random_range(-1.0..1.0);
                a[i * m + j] = x;
                a[j * m + i] = x;
            }
        }
        let (vals, vecs) = jacobi_eigen(&a, m);
        let qr = symmetric_eigenvalues(&mut a.clone(), m);
        for (x, y) in vals.iter().zip(&qr) {
            assert!((x - y).abs() < 1e-10, "{vals:?} vs {qr:?}");
        }
        // A v = lambda v for each column.
        for c in 0..m {
            for i in 0..m {
                let av: f64 = (0..m).map(|k| a[i * m + k] * vecs[k * m + c]).sum();
                assert!((av - vals[c] * vecs[i * m + c]).abs() < 1e-10);
            }
        }
    }
}
