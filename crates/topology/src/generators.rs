//! Graph generators and the [`TopologySpec`] / [`Kind`] descriptions that select them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::graph::Graph;
use crate::{analysis, export, invalid, TopologyError};

/// The family of a topology, without its parameters (useful for CLI help and value lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Complete graph `K_n`.
    Complete,
    /// Cycle `C_n`.
    Ring,
    /// Two-dimensional torus (Cartesian product of two cycles).
    Torus2d,
    /// Three-dimensional torus (Cartesian product of three cycles).
    Torus3d,
    /// Hypercube on `n = 2^d` nodes.
    Hypercube,
    /// Random `r`-regular simple connected graph.
    Regular,
    /// Connected Erdos-Renyi `G(n, p)` graph.
    ErdosRenyi,
    /// Star with centre node 0.
    Star,
    /// Exponential graph of SGP / BlueFog, made undirected.
    Exponential,
    /// Slim Fly (McKay-Miller-Siran construction), diameter 2.
    SlimFly,
    /// Edge list read from a file.
    File,
}

impl Kind {
    /// Every kind, in documentation order.
    pub const ALL: [Kind; 11] = [
        Kind::Complete,
        Kind::Ring,
        Kind::Torus2d,
        Kind::Torus3d,
        Kind::Hypercube,
        Kind::Regular,
        Kind::ErdosRenyi,
        Kind::Star,
        Kind::Exponential,
        Kind::SlimFly,
        Kind::File,
    ];

    /// The canonical name used in specification strings (`regular`, `slimfly`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Complete => "complete",
            Kind::Ring => "ring",
            Kind::Torus2d => "torus2d",
            Kind::Torus3d => "torus3d",
            Kind::Hypercube => "hypercube",
            Kind::Regular => "regular",
            Kind::ErdosRenyi => "erdos-renyi",
            Kind::Star => "star",
            Kind::Exponential => "exponential",
            Kind::SlimFly => "slimfly",
            Kind::File => "file",
        }
    }

    /// The full specification syntax, e.g. `regular:R`, for help texts.
    pub fn syntax(self) -> &'static str {
        match self {
            Kind::Complete => "complete",
            Kind::Ring => "ring",
            Kind::Torus2d => "torus2d[:RxC]",
            Kind::Torus3d => "torus3d[:AxBxC]",
            Kind::Hypercube => "hypercube",
            Kind::Regular => "regular:R",
            Kind::ErdosRenyi => "erdos-renyi[:P]",
            Kind::Star => "star",
            Kind::Exponential => "exponential",
            Kind::SlimFly => "slimfly:Q",
            Kind::File => "file:PATH",
        }
    }

    /// One-line description for help texts.
    pub fn description(self) -> &'static str {
        match self {
            Kind::Complete => "every pair connected",
            Kind::Ring => "cycle 0-1-...-(n-1)-0",
            Kind::Torus2d => "2D torus, most-square RxC = n unless given",
            Kind::Torus3d => "3D torus, most-cubic AxBxC = n unless given",
            Kind::Hypercube => "d-cube, n = 2^d",
            Kind::Regular => "uniform random simple connected R-regular graph",
            Kind::ErdosRenyi => "G(n,p) resampled until connected (default p = 2 ln n / n)",
            Kind::Star => "node 0 joined to all others",
            Kind::Exponential => "i ~ i + 2^k mod n (SGP/BlueFog), symmetrized",
            Kind::SlimFly => "MMS Slim Fly on 2q^2 nodes, odd prime q, diameter 2",
            Kind::File => "edge list 'u v' per line, '#' comments, optional '# n=N'",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = TopologyError;

    /// Parses a kind name (case-insensitive); accepts `er`, `erdos_renyi`, `slim-fly`,
    /// `torus`/`torus-2d` style aliases.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match k.as_str() {
            "complete" | "full" => Kind::Complete,
            "ring" | "cycle" => Kind::Ring,
            "torus2d" | "torus-2d" | "torus" => Kind::Torus2d,
            "torus3d" | "torus-3d" => Kind::Torus3d,
            "hypercube" => Kind::Hypercube,
            "regular" | "random-regular" => Kind::Regular,
            "erdos-renyi" | "er" | "gnp" => Kind::ErdosRenyi,
            "star" => Kind::Star,
            "exponential" | "exp" => Kind::Exponential,
            "slimfly" | "slim-fly" => Kind::SlimFly,
            "file" => Kind::File,
            _ => {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.syntax()).collect();
                return Err(TopologyError::Parse {
                    spec: s.to_string(),
                    reason: format!("unknown kind; expected one of {}", known.join(", ")),
                });
            }
        })
    }
}

/// A topology with its parameters; parse one from a string and [`build`](Self::build) it.
///
/// Accepted strings (see [`Kind::syntax`]): `complete`, `ring`, `torus2d`, `torus2d:RxC`,
/// `torus3d`, `torus3d:AxBxC`, `hypercube`, `regular:R` (or `regular` plus
/// [`with_degree`](Self::with_degree)), `erdos-renyi`, `erdos-renyi:P`, `star`, `exponential`,
/// `slimfly:Q`, `file:PATH`. [`Display`](fmt::Display) prints the same syntax back.
#[derive(Clone, Debug, PartialEq)]
pub enum TopologySpec {
    /// Complete graph `K_n` (limited to 10^8 edges).
    Complete,
    /// Cycle `C_n` (`n = 2`: one edge, `n = 1`: no edge).
    Ring,
    /// 2D torus `C_R x C_C`; `None` picks the most square factorization of `n` with both sides
    /// at least 2. A side of length 2 contributes a single edge, a side of 1 nothing.
    Torus2d {
        /// Explicit side lengths `[R, C]`.
        dims: Option<[usize; 2]>,
    },
    /// 3D torus `C_A x C_B x C_C`; `None` picks the most cubic factorization of `n`.
    Torus3d {
        /// Explicit side lengths `[A, B, C]`.
        dims: Option<[usize; 3]>,
    },
    /// Hypercube: node `i` is adjacent to `i xor 2^k`; requires `n` a power of two.
    Hypercube,
    /// Random simple connected `r`-regular graph; see [`TopologySpec::build`] for the method.
    Regular {
        /// The degree `r`; must be set (here or via [`with_degree`](Self::with_degree)).
        r: Option<usize>,
    },
    /// `G(n, p)` conditioned on connectivity (resampled up to 100 times).
    ErdosRenyi {
        /// Edge probability; `None` means `min(1, 2 ln n / n)`, twice the connectivity threshold.
        p: Option<f64>,
    },
    /// Star with centre 0.
    Star,
    /// The exponential graph used by SGP and BlueFog: node `i` sends to `i + 2^k mod n` for
    /// `k = 0, 1, ...` with `2^k < n`. That graph is directed; here it is made undirected by
    /// symmetrization (edge `{i, i + 2^k mod n}`, duplicates merged), so every node also hears
    /// from `i - 2^k`. For `n = 2^d` the degree is `2d - 1` (`+2^{d-1}` and `-2^{d-1}` coincide).
    Exponential,
    /// Slim Fly by the McKay-Miller-Siran construction for an odd prime `q = 4w + delta`
    /// (`delta = +1` for `q = 1 mod 4`, `-1` for `q = 3 mod 4`): `2 q^2` nodes of degree
    /// `(3q - delta) / 2` and diameter 2. Supported: every odd prime `q` (3, 5, 7, 11, 13, ...);
    /// prime powers and `delta = 0` (`q = 4w`) are not implemented.
    SlimFly {
        /// The prime field size `q`.
        q: usize,
    },
    /// An edge list file; see [`export::parse_edge_list`].
    File {
        /// Path of the file.
        path: PathBuf,
    },
}

impl TopologySpec {
    /// The family of this topology.
    pub fn kind(&self) -> Kind {
        match self {
            TopologySpec::Complete => Kind::Complete,
            TopologySpec::Ring => Kind::Ring,
            TopologySpec::Torus2d { .. } => Kind::Torus2d,
            TopologySpec::Torus3d { .. } => Kind::Torus3d,
            TopologySpec::Hypercube => Kind::Hypercube,
            TopologySpec::Regular { .. } => Kind::Regular,
            TopologySpec::ErdosRenyi { .. } => Kind::ErdosRenyi,
            TopologySpec::Star => Kind::Star,
            TopologySpec::Exponential => Kind::Exponential,
            TopologySpec::SlimFly { .. } => Kind::SlimFly,
            TopologySpec::File { .. } => Kind::File,
        }
    }

    /// Sets the degree of a `regular` spec (for a CLI `--degree R` flag).
    ///
    /// Errors with [`TopologyError::InvalidParameter`] naming `degree` for any other kind, or if
    /// a different degree was already given in the string (`regular:4` with degree 8).
    pub fn with_degree(self, degree: usize) -> Result<Self, TopologyError> {
        match self {
            TopologySpec::Regular { r: None } => Ok(TopologySpec::Regular { r: Some(degree) }),
            TopologySpec::Regular { r: Some(r) } if r == degree => Ok(self),
            TopologySpec::Regular { r: Some(r) } => Err(invalid(
                "degree",
                format!("degree {degree} conflicts with regular:{r}"),
            )),
            other => Err(invalid(
                "degree",
                format!("a degree applies only to `regular`, not `{}`", other.kind()),
            )),
        }
    }

    /// The node count fixed by the parameters, if any: `2 q^2` for Slim Fly, the product of
    /// explicit torus sides, the file's node count. `Ok(None)` when `n` is free.
    pub fn fixed_n(&self) -> Result<Option<usize>, TopologyError> {
        Ok(match self {
            TopologySpec::SlimFly { q } => Some(2 * q * q),
            TopologySpec::Torus2d { dims: Some(d) } => Some(d.iter().product()),
            TopologySpec::Torus3d { dims: Some(d) } => Some(d.iter().product()),
            TopologySpec::File { path } => Some(export::read_edge_list(path)?.n()),
            _ => None,
        })
    }

    /// Builds the graph on `n` nodes, deterministically for `seed` (deterministic generators
    /// ignore the seed).
    ///
    /// For kinds whose size is fixed by their parameters (Slim Fly, explicit torus sides, file),
    /// `n = 0` means "the natural size" and any other `n` must equal it. Otherwise `n >= 1`.
    ///
    /// Random `r`-regular graphs: a configuration-model pairing of `n r` stubs. For `r <= 3` the
    /// pairing is resampled until simple, which is exactly uniform over simple `r`-regular
    /// graphs; for larger `r` (where a simple pairing has probability about
    /// `exp(-(r^2 - 1)/4)`) the few defects (self-loops and multi-edges, `O(r^2)` in expectation
    /// independently of `n`) are removed by random double-edge switches with uniformly chosen
    /// edges that create no new defect. That is asymptotically uniform (the switches touch
    /// `O(r^2)` of the `n r / 2` edges) but not exactly uniform. `r = 2` is a uniformly random
    /// Hamiltonian cycle (the only connected 2-regular graphs). The result is resampled until
    /// connected (for `r >= 3` that almost never happens). Runs in `O(n r)`.
    ///
    /// Errors ([`TopologyError::InvalidParameter`] naming the parameter): `n < 1`, `r >= n`,
    /// odd `n r`, `r = 0` or `1` with a connected graph impossible, hypercube `n` not a power of
    /// two, `p` outside `[0, 1]`, `q` not an odd prime, `n` not `2 q^2`, torus sides not
    /// multiplying to `n`, complete graph with more than 10^8 edges.
    pub fn build(&self, n: usize, seed: u64) -> Result<Graph, TopologyError> {
        let n = match self.fixed_n()? {
            Some(natural) if n == 0 || n == natural => natural,
            Some(natural) => {
                return Err(invalid(
                    "n",
                    format!("`{self}` has exactly {natural} nodes, but n = {n} was requested"),
                ))
            }
            None => n,
        };
        if n < 1 {
            return Err(invalid("n", "need at least one node (n >= 1)"));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        match self {
            TopologySpec::Complete => complete(n),
            TopologySpec::Ring => Ok(torus(&[n])),
            TopologySpec::Torus2d { dims } => {
                let dims = match dims {
                    Some(d) => *d,
                    None => {
                        let d = best_factorization(n, 2).ok_or_else(|| {
                            invalid(
                                "n",
                                format!(
                                    "n = {n} is not R*C with R, C >= 2; give torus2d:RxC explicitly"
                                ),
                            )
                        })?;
                        [d[0], d[1]]
                    }
                };
                check_dims(&dims)?;
                Ok(torus(&dims))
            }
            TopologySpec::Torus3d { dims } => {
                let dims = match dims {
                    Some(d) => *d,
                    None => {
                        let d = best_factorization(n, 3).ok_or_else(|| {
                            invalid(
                                "n",
                                format!(
                                    "n = {n} is not A*B*C with A, B, C >= 2; give torus3d:AxBxC explicitly"
                                ),
                            )
                        })?;
                        [d[0], d[1], d[2]]
                    }
                };
                check_dims(&dims)?;
                Ok(torus(&dims))
            }
            TopologySpec::Hypercube => hypercube(n),
            TopologySpec::Regular { r } => {
                let r = r.ok_or_else(|| {
                    invalid(
                        "r",
                        "random regular graph needs a degree: regular:R or --degree R",
                    )
                })?;
                random_regular(n, r, &mut rng)
            }
            TopologySpec::ErdosRenyi { p } => {
                let p = p.unwrap_or_else(|| {
                    if n <= 2 {
                        1.0
                    } else {
                        (2.0 * (n as f64).ln() / n as f64).min(1.0)
                    }
                });
                erdos_renyi_connected(n, p, &mut rng)
            }
            TopologySpec::Star => Ok(Graph::from_edges_dedup(n, (1..n).map(|i| (0, i)))),
            TopologySpec::Exponential => Ok(exponential(n)),
            TopologySpec::SlimFly { q } => slim_fly(*q),
            TopologySpec::File { path } => export::read_edge_list(path),
        }
    }
}

impl fmt::Display for TopologySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologySpec::Torus2d { dims: Some([a, b]) } => write!(f, "torus2d:{a}x{b}"),
            TopologySpec::Torus3d {
                dims: Some([a, b, c]),
            } => write!(f, "torus3d:{a}x{b}x{c}"),
            TopologySpec::Regular { r: Some(r) } => write!(f, "regular:{r}"),
            TopologySpec::ErdosRenyi { p: Some(p) } => write!(f, "erdos-renyi:{p}"),
            TopologySpec::SlimFly { q } => write!(f, "slimfly:{q}"),
            TopologySpec::File { path } => write!(f, "file:{}", path.display()),
            other => f.write_str(other.kind().name()),
        }
    }
}

impl FromStr for TopologySpec {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, arg) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let kind: Kind = name.parse().map_err(|_| TopologyError::Parse {
            spec: s.to_string(),
            reason: format!(
                "unknown kind `{name}`; expected one of {}",
                Kind::ALL.map(|k| k.syntax()).join(", ")
            ),
        })?;
        let err = |reason: String| TopologyError::Parse {
            spec: s.to_string(),
            reason,
        };
        let no_arg = |spec: TopologySpec| match arg {
            None => Ok(spec),
            Some(a) => Err(err(format!("`{kind}` takes no parameter, got `:{a}`"))),
        };
        let parse_dims = |a: &str, k: usize| -> Result<Vec<usize>, TopologyError> {
            let d: Result<Vec<usize>, _> =
                a.split(['x', 'X', '*']).map(|t| t.trim().parse()).collect();
            match d {
                Ok(d) if d.len() == k => Ok(d),
                _ => Err(err(format!(
                    "expected {k} positive side lengths like {}, got `{a}`",
                    if k == 2 { "16x16" } else { "8x8x8" }
                ))),
            }
        };
        match kind {
            Kind::Complete => no_arg(TopologySpec::Complete),
            Kind::Ring => no_arg(TopologySpec::Ring),
            Kind::Hypercube => no_arg(TopologySpec::Hypercube),
            Kind::Star => no_arg(TopologySpec::Star),
            Kind::Exponential => no_arg(TopologySpec::Exponential),
            Kind::Torus2d => Ok(TopologySpec::Torus2d {
                dims: match arg {
                    None => None,
                    Some(a) => {
                        let d = parse_dims(a, 2)?;
                        Some([d[0], d[1]])
                    }
                },
            }),
            Kind::Torus3d => Ok(TopologySpec::Torus3d {
                dims: match arg {
                    None => None,
                    Some(a) => {
                        let d = parse_dims(a, 3)?;
                        Some([d[0], d[1], d[2]])
                    }
                },
            }),
            Kind::Regular => Ok(TopologySpec::Regular {
                r: match arg {
                    None => None,
                    Some(a) => Some(a.trim().parse().map_err(|_| {
                        err(format!(
                            "degree R in regular:R must be a non-negative integer, got `{a}`"
                        ))
                    })?),
                },
            }),
            Kind::ErdosRenyi => Ok(TopologySpec::ErdosRenyi {
                p: match arg {
                    None => None,
                    Some(a) => {
                        let p: f64 = a.trim().parse().map_err(|_| {
                            err(format!(
                                "probability P in erdos-renyi:P must be a number, got `{a}`"
                            ))
                        })?;
                        if !(0.0..=1.0).contains(&p) {
                            return Err(err(format!("probability P must be in [0, 1], got {p}")));
                        }
                        Some(p)
                    }
                },
            }),
            Kind::SlimFly => {
                let a = arg.ok_or_else(|| err("slimfly needs its prime: slimfly:Q".into()))?;
                let q = a
                    .trim()
                    .parse()
                    .map_err(|_| err(format!("Q in slimfly:Q must be an odd prime, got `{a}`")))?;
                Ok(TopologySpec::SlimFly { q })
            }
            Kind::File => {
                let a = arg
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| err("file needs a path: file:PATH".into()))?;
                Ok(TopologySpec::File { path: a.into() })
            }
        }
    }
}

fn check_dims(dims: &[usize]) -> Result<(), TopologyError> {
    if dims.contains(&0) {
        return Err(invalid(
            "dims",
            format!("torus side lengths must be >= 1, got {dims:?}"),
        ));
    }
    Ok(())
}

/// Most balanced factorization of `n` into `k` factors (2 or 3), each >= 2, ascending.
fn best_factorization(n: usize, k: usize) -> Option<Vec<usize>> {
    let mut best: Option<Vec<usize>> = None;
    let mut consider = |f: Vec<usize>| {
        let spread = f[f.len() - 1] - f[0];
        if best.as_ref().is_none_or(|b| spread < b[b.len() - 1] - b[0]) {
            best = Some(f);
        }
    };
    let mut a = 2;
    while a * a <= n {
        if n % a == 0 {
            let m = n / a;
            if k == 2 {
                consider(vec![a, m]);
            } else {
                let mut b = a;
                while b * b <= m {
                    if m % b == 0 {
                        consider(vec![a, b, m / b]);
                    }
                    b += 1;
                }
            }
        }
        a += 1;
    }
    best
}

fn complete(n: usize) -> Result<Graph, TopologyError> {
    let m = n as u128 * (n as u128 - 1) / 2;
    if m > 100_000_000 {
        return Err(invalid(
            "n",
            format!("complete graph on n = {n} nodes has {m} edges (limit 10^8)"),
        ));
    }
    let mut offsets = Vec::with_capacity(n + 1);
    let mut adj = Vec::with_capacity(n * (n - 1));
    offsets.push(0);
    for i in 0..n {
        adj.extend((0..n).filter(|&j| j != i));
        offsets.push(adj.len());
    }
    Ok(Graph::from_csr_unchecked(offsets, adj))
}

/// Cartesian product of cycles with the given side lengths (node index is mixed radix, the last
/// dimension varying fastest).
fn torus(dims: &[usize]) -> Graph {
    let n: usize = dims.iter().product();
    let mut strides = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    let edges = (0..n).flat_map(move |i| {
        let strides = strides.clone();
        dims.iter().enumerate().filter_map(move |(k, &s)| {
            if s < 2 {
                return None;
            }
            let coord = (i / strides[k]) % s;
            let next = (coord + 1) % s;
            let j = i - coord * strides[k] + next * strides[k];
            Some((i, j))
        })
    });
    Graph::from_edges_dedup(n, edges)
}

fn hypercube(n: usize) -> Result<Graph, TopologyError> {
    if !n.is_power_of_two() {
        return Err(invalid(
            "n",
            format!("hypercube needs n to be a power of two, got n = {n}"),
        ));
    }
    let d = n.trailing_zeros() as usize;
    let edges = (0..n).flat_map(move |i| {
        (0..d)
            .map(move |k| (i, i ^ (1 << k)))
            .filter(|&(a, b)| a < b)
    });
    Ok(Graph::from_edges_dedup(n, edges))
}

fn exponential(n: usize) -> Graph {
    let edges = (0..n).flat_map(move |i| {
        (0..usize::BITS)
            .map(|k| 1usize << k)
            .take_while(move |&s| s < n)
            .map(move |s| (i, (i + s) % n))
    });
    Graph::from_edges_dedup(n, edges)
}

/// `G(n, p)` by geometric skipping (Batagelj & Brandes 2005), resampled until connected.
fn erdos_renyi_connected<R: Rng>(n: usize, p: f64, rng: &mut R) -> Result<Graph, TopologyError> {
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return Err(invalid(
            "p",
            format!("edge probability must be in [0, 1], got {p}"),
        ));
    }
    if n > 1 && p == 0.0 {
        return Err(invalid(
            "p",
            format!("p = 0 gives no edges, so n = {n} nodes cannot be connected"),
        ));
    }
    const TRIES: usize = 100;
    for _ in 0..TRIES {
        let mut edges = Vec::new();
        if p >= 1.0 {
            return complete(n);
        }
        let lq = (1.0 - p).ln();
        let (mut v, mut w): (usize, i64) = (1, -1);
        while v < n {
            let u: f64 = rng.random();
            w += 1 + ((1.0 - u).ln() / lq).floor() as i64;
            while w >= v as i64 && v < n {
                w -= v as i64;
                v += 1;
            }
            if v < n {
                edges.push((v, w as usize));
            }
        }
        let g = Graph::from_edges_dedup(n, edges.iter().copied());
        if analysis::is_connected(&g) {
            return Ok(g);
        }
    }
    Err(TopologyError::Generation(format!(
        "erdos-renyi: G(n = {n}, p = {p}) was disconnected in {TRIES} samples; p is below or near \
         the connectivity threshold ln(n)/n = {:.3e}",
        (n as f64).ln() / n as f64
    )))
}

/// Random simple connected `r`-regular graph (see [`TopologySpec::build`]).
fn random_regular<R: Rng>(n: usize, r: usize, rng: &mut R) -> Result<Graph, TopologyError> {
    if r >= n {
        return Err(invalid("r", format!("degree r = {r} must be < n = {n}")));
    }
    if (n * r) % 2 == 1 {
        return Err(invalid(
            "r",
            format!("n * r must be even for an r-regular graph, got n = {n}, r = {r}"),
        ));
    }
    if r == 0 && n > 1 {
        return Err(invalid(
            "r",
            format!("a 0-regular graph on n = {n} > 1 nodes is disconnected"),
        ));
    }
    if r == 1 && n > 2 {
        return Err(invalid(
            "r",
            format!("a 1-regular graph on n = {n} > 2 nodes is disconnected"),
        ));
    }
    if r == n - 1 {
        return complete(n);
    }
    if r == 2 {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(rng);
        return Ok(Graph::from_edges_dedup(
            n,
            (0..n).map(|k| (perm[k], perm[(k + 1) % n])),
        ));
    }
    if (n as u128) * (r as u128) >= u32::MAX as u128 {
        return Err(invalid(
            "n",
            format!("n * r = {n} * {r} stubs exceeds 2^32"),
        ));
    }
    const TRIES: usize = 1000;
    for _ in 0..TRIES {
        let g = regular_pairing(n, r, rng);
        if analysis::is_connected(&g) {
            return Ok(g);
        }
    }
    Err(TopologyError::Generation(format!(
        "random {r}-regular graph on {n} nodes was disconnected in {TRIES} samples"
    )))
}

/// One simple `r`-regular graph (`r >= 3`, `n r` even, `r < n`), possibly disconnected.
fn regular_pairing<R: Rng>(n: usize, r: usize, rng: &mut R) -> Graph {
    let stubs = n * r;
    let mut partner = vec![0u32; stubs];
    let mut perm: Vec<u32> = (0..stubs as u32).collect();
    let mut defects = Vec::new();
    // Exact rejection sampling where a simple pairing is likely enough.
    let rejection_tries = if r <= 3 { 200 } else { 1 };
    for attempt in 0..rejection_tries {
        if attempt > 0 {
            for (k, p) in perm.iter_mut().enumerate() {
                *p = k as u32;
            }
        }
        perm.shuffle(rng);
        for c in perm.chunks_exact(2) {
            partner[c[0] as usize] = c[1];
            partner[c[1] as usize] = c[0];
        }
        defects.clear();
        find_defects(&partner, n, r, &mut defects);
        if defects.is_empty() {
            break;
        }
    }
    drop(perm);
    // Remove remaining defects with random double-edge switches.
    while !defects.is_empty() {
        for &s in &defects {
            fix_defect(&mut partner, r, s as usize, rng);
        }
        defects.clear();
        find_defects(&partner, n, r, &mut defects);
    }
    let offsets: Vec<usize> = (0..=n).map(|i| i * r).collect();
    let mut adj: Vec<usize> = partner.iter().map(|&t| t as usize / r).collect();
    for row in adj.chunks_exact_mut(r) {
        row.sort_unstable();
    }
    Graph::from_csr_unchecked(offsets, adj)
}

/// Collects one stub per defective edge: self-loops (the smaller stub) and every extra copy of
/// a multi-edge (recorded at the endpoint with the smaller node id).
fn find_defects(partner: &[u32], n: usize, r: usize, out: &mut Vec<u32>) {
    for u in 0..n {
        let base = u * r;
        for i in 0..r {
            let x = base + i;
            let t = partner[x] as usize;
            let v = t / r;
            if v == u {
                if t > x {
                    out.push(x as u32);
                }
                continue;
            }
            if v < u {
                continue;
            }
            if (0..i).any(|j| partner[base + j] as usize / r == v) {
                out.push(x as u32);
            }
        }
    }
}

/// Whether node `a` currently has `c` as a neighbour (any multiplicity).
fn adjacent(partner: &[u32], r: usize, a: usize, c: usize) -> bool {
    partner[a * r..a * r + r]
        .iter()
        .any(|&t| t as usize / r == c)
}

/// Re-pairs the defective edge at stub `s` with a uniformly random edge so that both new edges
/// are neither loops nor duplicates. No-op if the edge is no longer defective.
fn fix_defect<R: Rng>(partner: &mut [u32], r: usize, s: usize, rng: &mut R) {
    let t = partner[s] as usize;
    let (a, b) = (s / r, t / r);
    let multiplicity = partner[a * r..a * r + r]
        .iter()
        .filter(|&&x| x as usize / r == b)
        .count();
    if a != b && multiplicity < 2 {
        return;
    }
    let stubs = partner.len();
    loop {
        let x = rng.random_range(0..stubs);
        if x == s || x == t {
            continue;
        }
        let y = partner[x] as usize;
        let (c, d) = (x / r, y / r);
        if a == c || b == d || (a == b && c == d) || (a == d && b == c) {
            continue;
        }
        if adjacent(partner, r, a, c) || adjacent(partner, r, b, d) {
            continue;
        }
        partner[s] = x as u32;
        partner[x] = s as u32;
        partner[t] = y as u32;
        partner[y] = t as u32;
        return;
    }
}

/// Slim Fly (MMS) graph for an odd prime `q`.
fn slim_fly(q: usize) -> Result<Graph, TopologyError> {
    if q < 3 || !is_prime(q) {
        return Err(invalid(
            "q",
            format!("slimfly:Q needs an odd prime q (3, 5, 7, 11, 13, ...), got q = {q}"),
        ));
    }
    if q > 1000 {
        return Err(invalid("q", format!("q = {q} is too large (limit 1000)")));
    }
    let xi = primitive_root(q);
    let pow = |e: usize| -> usize {
        let mut v = 1;
        for _ in 0..e {
            v = v * xi % q;
        }
        v
    };
    let (x_set, xp_set): (Vec<usize>, Vec<usize>) = if q % 4 == 1 {
        // delta = +1: X = even powers, X' = odd powers of xi.
        (
            (0..q - 1).step_by(2).map(pow).collect(),
            (1..q - 1).step_by(2).map(pow).collect(),
        )
    } else {
        // delta = -1, q = 4w - 1.
        let w = (q + 1) / 4;
        let mut x: Vec<usize> = (0..=2 * w - 2).step_by(2).map(pow).collect();
        x.extend((2 * w - 1..=4 * w - 3).step_by(2).map(pow));
        let mut xp: Vec<usize> = (1..=2 * w - 1).step_by(2).map(pow).collect();
        xp.extend((2 * w..=4 * w - 2).step_by(2).map(pow));
        (x, xp)
    };
    let n = 2 * q * q;
    let id0 = |x: usize, y: usize| x * q + y;
    let id1 = |m: usize, c: usize| q * q + m * q + c;
    let mut edges = Vec::new();
    for a in 0..q {
        for y in 0..q {
            for &g in &x_set {
                let y2 = (y + g) % q;
                edges.push((id0(a, y), id0(a, y2)));
            }
            for &g in &xp_set {
                let c2 = (y + g) % q;
                edges.push((id1(a, y), id1(a, c2)));
            }
        }
    }
    for x in 0..q {
        for y in 0..q {
            for m in 0..q {
                let c = (y + q * q - m * x % q) % q;
                edges.push((id0(x, y), id1(m, c)));
            }
        }
    }
    Ok(Graph::from_edges_dedup(n, edges.iter().copied()))
}

fn is_prime(q: usize) -> bool {
    q >= 2 && (2..).take_while(|d| d * d <= q).all(|d| q % d != 0)
}

/// Smallest generator of the multiplicative group of the prime field `F_q`.
fn primitive_root(q: usize) -> usize {
    let phi = q - 1;
    let mut factors = Vec::new();
    let mut m = phi;
    let mut d = 2;
    while d * d <= m {
        if m % d == 0 {
            factors.push(d);
            while m % d == 0 {
                m /= d;
            }
        }
        d += 1;
    }
    if m > 1 {
        factors.push(m);
    }
    let pow_mod = |mut b: usize, mut e: usize| {
        let mut acc = 1;
        b %= q;
        while e > 0 {
            if e & 1 == 1 {
                acc = acc * b % q;
            }
            b = b * b % q;
            e >>= 1;
        }
        acc
    };
    (2..q)
        .find(|&g| factors.iter().all(|&f| pow_mod(g, phi / f) != 1))
        .unwrap_or(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip() {
        for s in [
            "complete",
            "ring",
            "torus2d",
            "torus2d:4x8",
            "torus3d:2x3x4",
            "hypercube",
            "regular:8",
            "regular",
            "erdos-renyi:0.25",
            "star",
            "exponential",
            "slimfly:5",
            "file:/tmp/g.txt",
        ] {
            let spec: TopologySpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert!("torus2d:4".parse::<TopologySpec>().is_err());
        assert!("ring:3".parse::<TopologySpec>().is_err());
        assert!("erdos-renyi:1.5".parse::<TopologySpec>().is_err());
        let e = "bogus".parse::<TopologySpec>().unwrap_err().to_string();
        assert!(e.contains("unknown kind `bogus`"), "{e}");
    }

    #[test]
    fn primitive_roots() {
        assert_eq!(primitive_root(5), 2);
        assert_eq!(primitive_root(7), 3);
        assert_eq!(primitive_root(13), 2);
    }

    #[test]
    fn factorizations() {
        assert_eq!(best_factorization(64, 2), Some(vec![8, 8]));
        assert_eq!(best_factorization(12, 2), Some(vec![3, 4]));
        assert_eq!(best_factorization(64, 3), Some(vec![4, 4, 4]));
        assert_eq!(best_factorization(7, 2), None);
    }
}
