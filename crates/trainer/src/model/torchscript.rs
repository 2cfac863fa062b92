//! TorchScript models: a module saved from PyTorch with `torch.jit.save(torch.jit.script(m))`
//! (see `tools/export_torchscript.py`) trains like a built-in model.
//!
//! The module's trainable parameters (`named_parameters()` with `requires_grad`) are copied, in
//! name order, into the flat buffer, and each module parameter is then re-pointed at its slice of
//! that buffer (`param.data = view`, as PyTorch itself does), so the module computes with the
//! flat buffer and its gradients land on the same parameter tensors as a built-in model's.
//!
//! Buffers (BatchNorm running mean and variance, counters) are not parameters: they are not in
//! the flat buffer, are not averaged between nodes, and are not in checkpoints. Each node's module
//! updates its own in training mode, and the evaluation of the averaged model runs a separate
//! module whose buffers are still the ones saved in the file. Use LayerNorm or GroupNorm, or
//! BatchNorm with `track_running_stats=False` (what `tools/export_torchscript.py
//! --no-running-stats` sets), so that evaluation does not depend on buffers.
//!
//! The module's `forward` gets one float tensor shaped like an example batch: `[B, C, H, W]` for
//! images, `[B, D]` for vectors (`1 x 1 x D` inputs), `[B, T]` int64 token ids for sequences; it
//! must return logits `[B, classes]`.

use tch::{Device, Kind, Tensor};

use super::{Init, ParamSpec};
use crate::data::InputShape;
use crate::TrainError;

/// A module, its trainable parameters (by name) and their layout and values.
pub(super) struct Loaded {
    pub(super) module: tch::CModule,
    pub(super) params: Vec<Tensor>,
    pub(super) specs: Vec<ParamSpec>,
    pub(super) init: Vec<f32>,
}

/// The batch tensor the module sees for `x` `[b, features]`.
fn shaped(x: &Tensor, input: InputShape) -> Tensor {
    let b = x.size()[0];
    if input.vocab.is_some() {
        x.to_kind(Kind::Int64).view([b, input.width as i64])
    } else if input.channels == 1 && input.height == 1 {
        x.view([b, input.width as i64])
    } else {
        x.view([
            b,
            input.channels as i64,
            input.height as i64,
            input.width as i64,
        ])
    }
}

pub(super) fn forward(module: &tch::CModule, x: &Tensor, input: InputShape) -> Tensor {
    // `load` ran the module on a batch of this shape, so a failure here is not expected; a NaN
    // loss stops the run with a message rather than a panic.
    module
        .forward_ts(&[shaped(x, input)])
        .unwrap_or_else(|_| Tensor::full([1], f64::NAN, (Kind::Float, Device::Cpu)))
}

pub(super) fn load(path: &str, input: InputShape, classes: usize) -> Result<Loaded, TrainError> {
    let err = |why: String| TrainError::Config(format!("TorchScript model {path}: {why}"));
    if !std::path::Path::new(path).is_file() {
        return Err(err(
            "no such file (export one with tools/export_torchscript.py)".into(),
        ));
    }
    let mut module = tch::CModule::load(path).map_err(|e| {
        err(format!(
            "cannot be loaded as TorchScript (save it with torch.jit.save(torch.jit.script(model))): {}",
            first_line(&e.to_string())
        ))
    })?;
    module.set_train();
    let mut named: Vec<(String, Tensor)> = module
        .named_parameters()
        .map_err(|e| err(format!("cannot list its parameters: {e}")))?
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    if named.is_empty() {
        return Err(err("has no trainable parameters".into()));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut specs = Vec::with_capacity(named.len());
    let mut init = Vec::new();
    for (name, t) in &named {
        if t.kind() != Kind::Float || t.device() != Device::Cpu {
            return Err(err(format!(
                "parameter {name} is {:?} on {:?}; export a float32 CPU module",
                t.kind(),
                t.device()
            )));
        }
        let numel = t.numel();
        let start = init.len();
        init.resize(start + numel, 0.0);
        t.contiguous()
            .f_copy_data(&mut init[start..], numel)
            .map_err(|e| err(format!("cannot read parameter {name}: {e}")))?;
        specs.push(ParamSpec {
            name: name.clone(),
            shape: t.size(),
            offset: start,
            numel,
            init: Init::Const(0.0),
        });
    }
    // Run it once on a batch shaped like the data: a mismatch is an error now, not mid-run.
    let probe = Tensor::zeros([2, input.features() as i64], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| module.forward_ts(&[shaped(&probe, input)])).map_err(|e| {
        err(format!(
            "forward fails on a batch of the data's shape ({input}): {}",
            first_line(&e.to_string())
        ))
    })?;
    if out.size() != [2, classes as i64] {
        return Err(err(format!(
            "forward returns shape {:?} for 2 examples; expected [2, {classes}] logits",
            out.size()
        )));
    }
    Ok(Loaded {
        module,
        params: named.into_iter().map(|(_, t)| t).collect(),
        specs,
        init,
    })
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s)
}
