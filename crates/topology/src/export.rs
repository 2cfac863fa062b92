//! Export to edge list, DOT and JSON, and edge-list parsing.
//!
//! Edge-list format (read and written): one edge `u v` per line (node ids are non-negative
//! integers, separated by whitespace or a comma); `#` starts a comment; blank lines are ignored.
//! A comment of the form `# n=N` fixes the node count (so isolated nodes survive a round trip);
//! otherwise it is the largest id plus one.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::graph::Graph;
use crate::TopologyError;

/// Output formats for [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `u v` lines with a `# n=N` header.
    Edges,
    /// Graphviz `graph { ... }`.
    Dot,
    /// `{"n": N, "edges": [[u, v], ...]}`.
    Json,
}

impl FromStr for Format {
    type Err = TopologyError;

    /// Parses `edges` (or `edgelist`, `txt`), `dot`, `json`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "edges" | "edgelist" | "edge-list" | "txt" => Ok(Format::Edges),
            "dot" | "graphviz" => Ok(Format::Dot),
            "json" => Ok(Format::Json),
            _ => Err(TopologyError::Parse {
                spec: s.to_string(),
                reason: "unknown format; expected edges, dot or json".into(),
            }),
        }
    }
}

/// Renders the graph in the given format.
pub fn render(g: &Graph, format: Format) -> String {
    match format {
        Format::Edges => to_edge_list(g),
        Format::Dot => to_dot(g),
        Format::Json => to_json(g),
    }
}

/// Edge list: a `# n=N m=M` header then `u v` per edge with `u < v`.
pub fn to_edge_list(g: &Graph) -> String {
    let mut s = String::with_capacity(12 * g.num_edges() + 32);
    let _ = writeln!(s, "# n={} m={}", g.n(), g.num_edges());
    for (u, v) in g.edges() {
        let _ = writeln!(s, "{u} {v}");
    }
    s
}

/// Graphviz DOT (undirected); every node is declared so isolated nodes appear.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::with_capacity(12 * g.num_edges() + 8 * g.n() + 32);
    s.push_str("graph topology {\n");
    for i in 0..g.n() {
        let _ = writeln!(s, "  {i};");
    }
    for (u, v) in g.edges() {
        let _ = writeln!(s, "  {u} -- {v};");
    }
    s.push_str("}\n");
    s
}

/// Serializable form of a graph: node count and edges `[u, v]` with `u < v`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphJson {
    /// Number of nodes.
    pub n: usize,
    /// Undirected edges.
    pub edges: Vec<[usize; 2]>,
}

impl From<&Graph> for GraphJson {
    fn from(g: &Graph) -> Self {
        GraphJson {
            n: g.n(),
            edges: g.edges().map(|(u, v)| [u, v]).collect(),
        }
    }
}

/// JSON `{"n": N, "edges": [[u, v], ...]}`.
pub fn to_json(g: &Graph) -> String {
    // Serializing plain integers and vectors cannot fail.
    serde_json::to_string(&GraphJson::from(g)).unwrap_or_default()
}

/// Parses the JSON produced by [`to_json`] (the edges must form a simple graph).
pub fn from_json(text: &str) -> Result<Graph, TopologyError> {
    let j: GraphJson = serde_json::from_str(text)?;
    let edges: Vec<(usize, usize)> = j.edges.iter().map(|e| (e[0], e[1])).collect();
    Graph::from_edges(j.n, &edges)
}

/// Reads an edge-list file (format in the [module docs](self)).
pub fn read_edge_list(path: &Path) -> Result<Graph, TopologyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_edge_list(&text, &path.display().to_string())
}

/// Parses edge-list text; `name` labels error messages (`name:line: reason`).
///
/// Errors name the 1-based line for: a line without exactly two ids, an id that is not a
/// non-negative integer, a self-loop, a duplicate edge (naming the first occurrence), an id
/// `>= N` when `# n=N` is given, and a malformed `# n=` header.
pub fn parse_edge_list(text: &str, name: &str) -> Result<Graph, TopologyError> {
    let err = |line: usize, reason: String| TopologyError::EdgeList {
        path: name.to_string(),
        line,
        reason,
    };
    let mut declared_n: Option<(usize, usize)> = None;
    let mut edges: Vec<(usize, usize, usize)> = Vec::new(); // (min, max, line)
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let (content, comment) = match raw.split_once('#') {
            Some((a, b)) => (a, Some(b)),
            None => (raw, None),
        };
        if let Some(c) = comment {
            if let Some(rest) = c.trim().strip_prefix("n=") {
                let val = rest.split_whitespace().next().unwrap_or("");
                let n: usize = val.parse().map_err(|_| {
                    err(
                        line_no,
                        format!("`# n=` header needs a node count, got `{val}`"),
                    )
                })?;
                declared_n = Some((n, line_no));
            }
        }
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        let tokens: Vec<&str> = content
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.len() != 2 {
            return Err(err(
                line_no,
                format!("expected an edge `u v` (two node ids), got `{content}`"),
            ));
        }
        let mut ids = [0usize; 2];
        for (slot, tok) in ids.iter_mut().zip(&tokens) {
            *slot = tok.parse().map_err(|_| {
                err(
                    line_no,
                    format!("node id `{tok}` is not a non-negative integer"),
                )
            })?;
        }
        let [u, v] = ids;
        if u == v {
            return Err(err(
                line_no,
                format!("self-loop {u}-{v} (graphs must be simple)"),
            ));
        }
        edges.push((u.min(v), u.max(v), line_no));
    }
    let max_id = edges.iter().map(|e| e.1).max();
    let n = match declared_n {
        Some((n, _)) => {
            if let Some(e) = edges.iter().find(|e| e.1 >= n) {
                return Err(err(
                    e.2,
                    format!("node id {} is out of range for `# n={n}`", e.1),
                ));
            }
            n
        }
        None => max_id.map_or(0, |m| m + 1),
    };
    let mut sorted = edges.clone();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 == w[1].1 {
            let (first, second) = (w[0].2.min(w[1].2), w[0].2.max(w[1].2));
            return Err(err(
                second,
                format!(
                    "duplicate edge {}-{} (first given on line {first})",
                    w[0].0, w[0].1
                ),
            ));
        }
    }
    if n == 0 {
        return Err(err(
            text.lines().count().max(1),
            "no edges and no `# n=N` header: the graph would have no nodes".into(),
        ));
    }
    let pairs: Vec<(usize, usize)> = edges.iter().map(|e| (e.0, e.1)).collect();
    Graph::from_edges(n, &pairs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let g = Graph::from_edges(5, &[(0, 1), (1, 2), (3, 1)]).unwrap();
        let back = parse_edge_list(&to_edge_list(&g), "x").unwrap();
        assert_eq!(back, g);
        assert_eq!(from_json(&to_json(&g)).unwrap(), g);
        let dot = to_dot(&g);
        assert!(dot.starts_with("graph topology {"));
        assert!(dot.contains("  1 -- 3;"));
        assert!(dot.contains("  4;"));
    }

    #[test]
    fn comments_commas_and_header() {
        let g = parse_edge_list("# a comment\n0,1\n\n1 2 # trailing\n# n=4\n", "f").unwrap();
        assert_eq!(g.n(), 4);
        assert_eq!(g.num_edges(), 2);
    }
}
