//! Property tests: random regular graphs and edge-list round trips for arbitrary parameters.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};
use swarmsgd_topology::{analysis, export, TopologySpec};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_regular_is_simple_regular_connected(n in 4usize..300, r in 3usize..12, seed: u64) {
        prop_assume!(r < n && (n * r) % 2 == 0);
        let g = TopologySpec::Regular { r: Some(r) }.build(n, seed).unwrap();
        prop_assert_eq!(g.is_regular(), Some(r));
        prop_assert!(analysis::is_connected(&g));
        for i in 0..n {
            let nb = g.neighbours(i);
            prop_assert!(nb.windows(2).all(|w| w[0] < w[1]) && !nb.contains(&i));
        }
        // Round trip through the edge list and JSON.
        prop_assert_eq!(&export::parse_edge_list(&export::to_edge_list(&g), "p").unwrap(), &g);
        prop_assert_eq!(&export::from_json(&export::to_json(&g)).unwrap(), &g);
        let mut rng = StdRng::seed_from_u64(seed);
        let (u, v) = g.sample_edge(&mut rng).unwrap();
        prop_assert!(g.has_edge(u, v));
    }

    #[test]
    fn erdos_renyi_is_connected_and_simple(n in 2usize..200, seed: u64) {
        let g = TopologySpec::ErdosRenyi { p: None }.build(n, seed).unwrap();
        prop_assert!(analysis::is_connected(&g));
        prop_assert_eq!(g.edges().count(), g.num_edges());
    }
}
