//! What `swarm topo` does, without the trainer:
//!
//! ```text
//! cargo run -p swarmsgd-topology --example topo -- gen regular:8 1000 [SEED] [stats|edges|dot|json]
//! cargo run -p swarmsgd-topology --features hwloc --example topo -- hw
//! ```

use swarmsgd_topology::export::{self, Format};
use swarmsgd_topology::{Stats, TopologyError, TopologySpec};

fn main() -> Result<(), TopologyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hw") => print!("{}", swarmsgd_topology::hw::report()?),
        Some("gen") if args.len() >= 3 => {
            let spec: TopologySpec = args[1].parse()?;
            let n: usize = args[2].parse().map_err(|_| topology_error("n", &args[2]))?;
            let seed: u64 = match args.get(3) {
                Some(s) => s.parse().map_err(|_| topology_error("seed", s))?,
                None => 0,
            };
            let g = spec.build(n, seed)?;
            match args.get(4).map(String::as_str).unwrap_or("stats") {
                "stats" => print!("{}", Stats::compute(&g)),
                f => print!("{}", export::render(&g, f.parse::<Format>()?)),
            }
        }
        _ => eprintln!("usage: topo gen SPEC N [SEED] [stats|edges|dot|json] | topo hw"),
    }
    Ok(())
}

fn topology_error(param: &'static str, value: &str) -> TopologyError {
    TopologyError::InvalidParameter {
        param,
        reason: format!("not a non-negative integer: `{value}`"),
    }
}
