//! The [`Graph`] type: a simple undirected graph in compressed sparse row form.

use rand::Rng;
use serde::Serialize;

use crate::TopologyError;

/// A simple undirected graph on nodes `0..n`.
///
/// Stored in compressed sparse row form: the neighbours of node `i` are
/// `adj[offsets[i]..offsets[i + 1]]`, sorted ascending, without duplicates or self-loops.
/// Every undirected edge `{u, v}` appears twice (in `u`'s list and in `v`'s list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    offsets: Vec<usize>,
    adj: Vec<usize>,
}

/// Degree statistics of a graph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DegreeStats {
    /// Smallest degree (0 for the empty graph).
    pub min: usize,
    /// Largest degree.
    pub max: usize,
    /// Mean degree, `2|E| / n`.
    pub mean: f64,
    /// Population standard deviation of the degrees.
    pub std_dev: f64,
}

impl Graph {
    /// Builds a graph on `n` nodes from undirected edges.
    ///
    /// Each edge may be given in either orientation. Self-loops, duplicate edges (in either
    /// orientation) and endpoints `>= n` are rejected with [`TopologyError::InvalidGraph`].
    pub fn from_edges(n: usize, edges: &[(usize, usize)]) -> Result<Self, TopologyError> {
        for &(u, v) in edges {
            if u >= n || v >= n {
                return Err(TopologyError::InvalidGraph(format!(
                    "edge {u}-{v} has an endpoint >= n = {n}"
                )));
            }
            if u == v {
                return Err(TopologyError::InvalidGraph(format!(
                    "self-loop at node {u}"
                )));
            }
        }
        let g = Self::from_edges_unchecked_dups(n, edges.iter().copied(), edges.len());
        for i in 0..n {
            let nb = g.neighbours(i);
            if let Some(w) = nb.windows(2).find(|w| w[0] == w[1]) {
                return Err(TopologyError::InvalidGraph(format!(
                    "duplicate edge {i}-{}",
                    w[0]
                )));
            }
        }
        Ok(g)
    }

    /// Builds a graph from edges that may contain duplicates (which are merged) but no
    /// self-loops or out-of-range endpoints. Used by the generators.
    pub(crate) fn from_edges_dedup(
        n: usize,
        edges: impl Iterator<Item = (usize, usize)> + Clone,
    ) -> Self {
        let count = edges.clone().count();
        let mut g = Self::from_edges_unchecked_dups(n, edges, count);
        g.dedup();
        g
    }

    /// CSR construction by counting sort; neighbour lists are sorted but may hold duplicates.
    fn from_edges_unchecked_dups(
        n: usize,
        edges: impl Iterator<Item = (usize, usize)> + Clone,
        count: usize,
    ) -> Self {
        let mut deg = vec![0usize; n + 1];
        for (u, v) in edges.clone() {
            debug_assert!(u != v && u < n && v < n);
            deg[u] += 1;
            deg[v] += 1;
        }
        let mut offsets = Vec::with_capacity(n + 1);
        let mut acc = 0;
        offsets.push(0);
        for d in &deg[..n] {
            acc += d;
            offsets.push(acc);
        }
        debug_assert_eq!(acc, 2 * count);
        let mut fill: Vec<usize> = offsets[..n].to_vec();
        let mut adj = vec![0usize; acc];
        for (u, v) in edges {
            adj[fill[u]] = v;
            fill[u] += 1;
            adj[fill[v]] = u;
            fill[v] += 1;
        }
        for i in 0..n {
            adj[offsets[i]..offsets[i + 1]].sort_unstable();
        }
        Graph { offsets, adj }
    }

    /// Builds a graph directly from CSR arrays whose lists are already sorted and duplicate-free.
    pub(crate) fn from_csr_unchecked(offsets: Vec<usize>, adj: Vec<usize>) -> Self {
        Graph { offsets, adj }
    }

    /// Removes duplicate entries from the (sorted) neighbour lists.
    fn dedup(&mut self) {
        let n = self.n();
        let mut write = 0;
        let mut start = 0;
        for i in 0..n {
            let end = self.offsets[i + 1];
            let mut last = usize::MAX;
            for k in start..end {
                let v = self.adj[k];
                if v != last {
                    self.adj[write] = v;
                    write += 1;
                    last = v;
                }
            }
            start = end;
            self.offsets[i + 1] = write;
        }
        self.adj.truncate(write);
    }

    /// Number of nodes.
    pub fn n(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of undirected edges.
    pub fn num_edges(&self) -> usize {
        self.adj.len() / 2
    }

    /// Sorted neighbours of node `i`.
    ///
    /// # Panics
    /// If `i >= n()`.
    pub fn neighbours(&self, i: usize) -> &[usize] {
        &self.adj[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Degree of node `i`.
    ///
    /// # Panics
    /// If `i >= n()`.
    pub fn degree(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// Whether the undirected edge `{u, v}` exists (binary search in `u`'s list).
    pub fn has_edge(&self, u: usize, v: usize) -> bool {
        u < self.n() && self.neighbours(u).binary_search(&v).is_ok()
    }

    /// Iterates over undirected edges `(u, v)` with `u < v`, in lexicographic order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.n()).flat_map(move |u| {
            self.neighbours(u)
                .iter()
                .copied()
                .filter(move |&v| v > u)
                .map(move |v| (u, v))
        })
    }

    /// Minimum, maximum, mean and standard deviation of the degrees.
    pub fn degree_stats(&self) -> DegreeStats {
        let n = self.n();
        if n == 0 {
            return DegreeStats {
                min: 0,
                max: 0,
                mean: 0.0,
                std_dev: 0.0,
            };
        }
        let (mut min, mut max) = (usize::MAX, 0);
        let mut sum_sq = 0.0;
        for i in 0..n {
            let d = self.degree(i);
            min = min.min(d);
            max = max.max(d);
            sum_sq += (d * d) as f64;
        }
        let mean = self.adj.len() as f64 / n as f64;
        let var = (sum_sq / n as f64 - mean * mean).max(0.0);
        DegreeStats {
            min,
            max,
            mean,
            std_dev: var.sqrt(),
        }
    }

    /// `Some(r)` if every node has degree `r` (`Some(0)` for the empty graph), else `None`.
    pub fn is_regular(&self) -> Option<usize> {
        let n = self.n();
        if n == 0 {
            return Some(0);
        }
        let r = self.degree(0);
        (1..n).all(|i| self.degree(i) == r).then_some(r)
    }

    /// A uniformly random neighbour of node `i`, or `None` if `i` has no neighbours.
    ///
    /// This is the per-node choice of SwarmSGD's interaction step.
    ///
    /// # Panics
    /// If `i >= n()`.
    pub fn sample_neighbour<R: Rng + ?Sized>(&self, i: usize, rng: &mut R) -> Option<usize> {
        let nb = self.neighbours(i);
        if nb.is_empty() {
            None
        } else {
            Some(nb[rng.random_range(0..nb.len())])
        }
    }

    /// A uniformly random edge, as an ordered pair `(initiator, partner)`, or `None` if the graph
    /// has no edges.
    ///
    /// This is the global scheduler of the SwarmSGD analysis: each step picks an edge uniformly
    /// at random. The orientation is also uniform (each of the `2|E|` directed half-edges is
    /// equally likely), so `(u, v)` and `(v, u)` each have probability `1 / (2|E|)`. Cost:
    /// `O(log n)` (binary search over the row offsets).
    pub fn sample_edge<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<(usize, usize)> {
        if self.adj.is_empty() {
            return None;
        }
        let k = rng.random_range(0..self.adj.len());
        // The source is the node whose row contains half-edge k: the last i with offsets[i] <= k.
        let u = self.offsets.partition_point(|&o| o <= k) - 1;
        Some((u, self.adj[k]))
    }

    /// The CSR offsets array (length `n + 1`).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The CSR adjacency array (length `2|E|`); row `i` is `adj[offsets[i]..offsets[i+1]]`.
    pub fn adjacency(&self) -> &[usize] {
        &self.adj
    }

    /// Returns `y = L x` for the graph Laplacian `L = D - A`.
    ///
    /// # Panics
    /// If `x.len() != n()` or `y.len() != n()`.
    pub fn laplacian_mul(&self, x: &[f64], y: &mut [f64]) {
        assert_eq!(x.len(), self.n());
        assert_eq!(y.len(), self.n());
        for (i, yi) in y.iter_mut().enumerate() {
            let nb = self.neighbours(i);
            let s: f64 = nb.iter().map(|&j| x[j]).sum();
            *yi = nb.len() as f64 * x[i] - s;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn from_edges_rejects_bad_input() {
        assert!(Graph::from_edges(3, &[(0, 3)]).is_err());
        assert!(Graph::from_edges(3, &[(1, 1)]).is_err());
        let e = Graph::from_edges(3, &[(0, 1), (1, 0)]).unwrap_err();
        assert!(e.to_string().contains("duplicate edge 0-1"), "{e}");
    }

    #[test]
    fn edges_and_degrees() {
        let g = Graph::from_edges(4, &[(2, 0), (0, 1), (3, 2)]).unwrap();
        assert_eq!(g.neighbours(0), &[1, 2]);
        assert_eq!(g.edges().collect::<Vec<_>>(), vec![(0, 1), (0, 2), (2, 3)]);
        assert_eq!(g.num_edges(), 3);
        let d = g.degree_stats();
        assert_eq!((d.min, d.max), (1, 2));
        assert!((d.mean - 1.5).abs() < 1e-12);
        assert_eq!(g.is_regular(), None);
    }

    #[test]
    fn sample_edge_is_uniform_over_half_edges() {
        // Star with 3 leaves: every half-edge has probability 1/6.
        let g = Graph::from_edges(4, &[(0, 1), (0, 2), (0, 3)]).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let mut from_centre = 0;
        let trials = 60_000;
        for _ in 0..trials {
            let (u, v) = g.sample_edge(&mut rng).unwrap();
            assert!(g.has_edge(u, v));
            if u == 0 {
                from_centre += 1;
            }
        }
        let frac = from_centre as f64 / trials as f64;
        assert!((frac - 0.5).abs() < 0.02, "{frac}");
        assert_eq!(g.sample_neighbour(1, &mut rng), Some(0));
        let empty = Graph::from_edges(2, &[]).unwrap();
        assert_eq!(empty.sample_edge(&mut rng), None);
        assert_eq!(empty.sample_neighbour(0, &mut rng), None);
    }
}
