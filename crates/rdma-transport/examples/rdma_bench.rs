//! The `swarm bench rdma` measurement as a standalone binary (no libtorch; needs the `cli` feature), used by the soft-RoCE
//! VM stage: `rdma_bench --device rxe0 --sizes 65536,4194304`.

use clap::Parser;
use swarmsgd_rdma::bench::{run, BenchArgs};

#[derive(Parser)]
#[command(about = "RDMA READ/WRITE bandwidth and 8-byte READ latency through swarmsgd-rdma")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli.args) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("rdma bench: {e}");
            std::process::exit(1);
        }
    }
}
