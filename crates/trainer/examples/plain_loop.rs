//! The reference of `tools/gpu-check.sh`: one model trained by a plain loop (minibatch, forward,
//! backward, SGD step), with no nodes and no exchange, on the same device, model and data as a
//! `swarm train` run. Prints `plain-loop: IMAGES images/s (STEPS steps of BATCH on DEVICE)`.
//!
//! `cargo run --release --example plain_loop -- DATA_DIR MODEL DEVICE BATCH STEPS`

use std::time::Instant;

use trainer::data::load_dir;
use trainer::model::{batch, FlatModel};

fn main() {
    if let Err(e) = run() {
        eprintln!("plain-loop: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, model, device, batch_size, steps] = args.as_slice() else {
        return Err("usage: plain_loop DATA_DIR MODEL DEVICE BATCH STEPS".into());
    };
    let number = |s: &str, what: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{what} must be a positive integer, got {s:?}"))
    };
    let (batch_size, steps) = (number(batch_size, "BATCH")?, number(steps, "STEPS")?);
    let data = load_dir(std::path::Path::new(data)).map_err(|e| e.to_string())?;
    let kind = model
        .parse()
        .map_err(|e: trainer::TrainError| e.to_string())?;
    let device = trainer::device::this_run_devices(device, 1).map_err(|e| e.to_string())?[0];
    let classes = data.train.classes().max(data.test.classes());
    let mut model =
        FlatModel::new_on(kind, data.train.shape, classes, 1, device).map_err(|e| e.to_string())?;
    let n = data.train.len();
    let indices = |step: usize| -> Vec<usize> {
        (0..batch_size)
            .map(|k| (step * batch_size + k) % n)
            .collect()
    };
    // Warm-up (kernel selection, allocator), not timed.
    for step in 0..5 {
        let (x, y) = batch(&data.train, &indices(step));
        model.backward(&x, &y);
        model.sgd_step(0.01);
    }
    let started = Instant::now();
    let mut loss = 0.0;
    for step in 0..steps {
        let (x, y) = batch(&data.train, &indices(step));
        // Reading the loss waits for the device, as every swarm node's step does.
        loss = model.backward(&x, &y);
        model.sgd_step(0.01);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "plain-loop: {:.0} images/s ({steps} steps of {batch_size} on {}, {seconds:.2} s, last loss {loss:.3})",
        (steps * batch_size) as f64 / seconds,
        trainer::device::name(device)
    );
    Ok(())
}
