//! Models whose parameters are views into one flat f32 tensor, in a fixed (by-name) order, so that
//! the averaging code sees the whole model as one `&mut [f32]` and every node has the same layout.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::data::{InputShape, Split};
use crate::flat::with_f32_slice_mut;
use crate::TrainError;

mod resnet;
mod staged;
mod torchscript;
mod transformer;

/// The architectures: built-in ones, and TorchScript modules saved from PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Input -> Linear(hidden) -> ReLU -> Linear(classes).
    Mlp {
        /// Width of the hidden layer.
        hidden: usize,
    },
    /// Conv5x5(16) -> ReLU -> MaxPool2 -> Conv5x5(32) -> ReLU -> MaxPool2 -> Linear(classes).
    Cnn,
    /// ResNet-20 for 32x32 images (He et al. 2016, section 4.2): 3 stages of 3 basic blocks
    /// (16, 32, 64 channels), parameter-free shortcuts, with GroupNorm instead of BatchNorm.
    ResNet20,
    /// A pre-norm Transformer encoder classifier over token sequences (or image rows).
    Transformer {
        /// Model width.
        width: usize,
        /// Encoder blocks.
        layers: usize,
        /// Attention heads (divide `width`).
        heads: usize,
    },
    /// A `torch.jit.script` module saved with `torch.jit.save`: `forward(x) -> logits`.
    TorchScript {
        /// Path of the `.pt` file (interned for the run).
        path: &'static str,
    },
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::Mlp { hidden } => write!(f, "mlp:{hidden}"),
            ModelKind::Cnn => f.write_str("cnn"),
            ModelKind::ResNet20 => f.write_str("resnet20"),
            ModelKind::Transformer {
                width,
                layers,
                heads,
            } => write!(f, "transformer:{width}:{layers}:{heads}"),
            ModelKind::TorchScript { path } => write!(f, "torchscript:{path}"),
        }
    }
}

const MODEL_KINDS: &str = "mlp, mlp:HIDDEN, cnn, resnet20, transformer, \
    transformer:WIDTH:LAYERS:HEADS, torchscript:PATH";

impl FromStr for ModelKind {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| TrainError::Config(format!("model '{s}' {why} (models: {MODEL_KINDS})"));
        match s {
            "mlp" => return Ok(ModelKind::Mlp { hidden: 256 }),
            "cnn" => return Ok(ModelKind::Cnn),
            "resnet20" => return Ok(ModelKind::ResNet20),
            "transformer" => {
                return Ok(ModelKind::Transformer {
                    width: 64,
                    layers: 2,
                    heads: 4,
                })
            }
            _ => {}
        }
        if let Some(h) = s.strip_prefix("mlp:") {
            return match h.parse::<usize>() {
                Ok(hidden) if hidden > 0 => Ok(ModelKind::Mlp { hidden }),
                _ => Err(bad("needs HIDDEN >= 1")),
            };
        }
        if let Some(rest) = s.strip_prefix("transformer:") {
            let v: Vec<usize> = rest
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| bad("is not transformer:WIDTH:LAYERS:HEADS"))?;
            return match v[..] {
                [width, layers, heads]
                    if width > 0 && layers > 0 && heads > 0 && width % heads == 0 =>
                {
                    Ok(ModelKind::Transformer {
                        width,
                        layers,
                        heads,
                    })
                }
                _ => Err(bad(
                    "needs WIDTH, LAYERS, HEADS >= 1 with HEADS dividing WIDTH",
                )),
            };
        }
        if let Some(path) = s.strip_prefix("torchscript:") {
            if path.is_empty() {
                return Err(bad("needs the path of a TorchScript file"));
            }
            // One small string per parsed configuration, alive for the run: keeps the kind `Copy`.
            let path: &'static str = Box::leak(path.to_string().into_boxed_str());
            return Ok(ModelKind::TorchScript { path });
        }
        Err(bad("is unknown"))
    }
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear and Conv.
    Uniform(usize),
    /// N(0, std^2).
    Normal(f32),
    /// Every value the same (norm weights 1, norm biases 0).
    Const(f32),
}

/// Name and shape of one parameter; a list of them, in flat-buffer order, is a model's layout
/// (as checkpoints record it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// PyTorch-style name, e.g. `fc1.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
}

impl ParamLayout {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Name, shape and place of one parameter inside the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// PyTorch-style name, e.g. `fc1.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Offset in the flat buffer, in elements.
    pub offset: usize,
    /// Number of elements.
    pub numel: usize,
    /// How it is initialised.
    init: Init,
}

/// A parameter before it has a place: name, shape, initialisation.
type RawParam = (String, Vec<usize>, Init);

/// A model: its layout, one flat parameter tensor, and one leaf tensor per parameter that shares
/// the flat tensor's storage (so gradients stay per parameter, with no backward pass through views).
pub struct FlatModel {
    kind: ModelKind,
    specs: Vec<ParamSpec>,
    flat: Tensor,
    leaves: Vec<Tensor>,
    dim: usize,
    input: InputShape,
    /// The TorchScript module whose parameters are the leaves (TorchScript models only).
    module: Option<std::cell::RefCell<tch::CModule>>,
    sgd: SgdConfig,
    /// Momentum buffer laid out like the parameters (empty while momentum is 0; a model on a
    /// device keeps it there instead).
    momentum: Vec<f32>,
    /// The device-side state of a model that is not on the host (None on the CPU).
    staged: Option<staged::Staged>,
}

/// The local optimizer: SGD with optional momentum, weight decay and gradient clipping, as
/// PyTorch's `torch.optim.SGD` (dampening 0, not Nesterov) after `clip_grad_norm_`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SgdConfig {
    /// Momentum factor (0 = plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient: `g + weight_decay * w`.
    pub weight_decay: f64,
    /// Rescale the gradient to this global L2 norm when it is larger.
    pub clip_grad_norm: Option<f64>,
}

fn layout(
    kind: ModelKind,
    input: InputShape,
    classes: usize,
) -> Result<Vec<ParamSpec>, TrainError> {
    let features = input.features();
    let tokens_need_transformer = || {
        TrainError::Config(format!(
            "model {kind} reads pixels or vectors, but the data are token sequences ({input}): \
             use --model transformer"
        ))
    };
    let u = |name: &str, shape: Vec<usize>, fan_in: usize| -> RawParam {
        (name.to_string(), shape, Init::Uniform(fan_in))
    };
    let mut raw: Vec<RawParam> = match kind {
        ModelKind::Mlp { hidden } => {
            if input.vocab.is_some() {
                return Err(tokens_need_transformer());
            }
            vec![
                u("fc1.weight", vec![hidden, features], features),
                u("fc1.bias", vec![hidden], features),
                u("fc2.weight", vec![classes, hidden], hidden),
                u("fc2.bias", vec![classes], hidden),
            ]
        }
        ModelKind::Cnn => {
            if input.vocab.is_some() {
                return Err(tokens_need_transformer());
            }
            let (h, w, c) = (input.height, input.width, input.channels);
            if h < 12 || w < 12 {
                return Err(TrainError::Config(format!(
                    "the cnn needs images of at least 12x12, the data has {h}x{w}"
                )));
            }
            let pooled = ((h - 4) / 2 - 4) / 2 * (((w - 4) / 2 - 4) / 2);
            vec![
                u("conv1.weight", vec![16, c, 5, 5], 25 * c),
                u("conv1.bias", vec![16], 25 * c),
                u("conv2.weight", vec![32, 16, 5, 5], 400),
                u("conv2.bias", vec![32], 400),
                u("fc.weight", vec![classes, 32 * pooled], 32 * pooled),
                u("fc.bias", vec![classes], 32 * pooled),
            ]
        }
        ModelKind::ResNet20 => {
            if input.vocab.is_some() {
                return Err(tokens_need_transformer());
            }
            resnet::layout(input, classes)?
        }
        ModelKind::Transformer {
            width,
            layers,
            heads: _,
        } => transformer::layout(input, classes, width, layers),
        ModelKind::TorchScript { .. } => {
            return Err(TrainError::Config(
                "a TorchScript model's layout comes from its file".into(),
            ))
        }
    };
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(place(raw))
}

/// Gives each parameter its offset, in the given order.
fn place(raw: Vec<RawParam>) -> Vec<ParamSpec> {
    let mut offset = 0;
    raw.into_iter()
        .map(|(name, shape, init)| {
            let numel: usize = shape.iter().product();
            let spec = ParamSpec {
                name,
                shape: shape.iter().map(|&s| s as i64).collect(),
                offset,
                numel,
                init,
            };
            offset += numel;
            spec
        })
        .collect()
}

impl FlatModel {
    /// A model for inputs of `input` shape and `classes` classes. Built-in models are initialised
    /// from `seed` like PyTorch's defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for linear and
    /// convolution layers; see each model for the rest); a TorchScript model starts from the
    /// values saved in its file.
    pub fn new(
        kind: ModelKind,
        input: InputShape,
        classes: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        Self::build(kind, input, classes, seed, None)
    }

    /// [`FlatModel::new`] on `device`: the same initial values, with the parameters, gradients
    /// and optimizer state on the device (model/staged.rs: how the exchange reaches them).
    pub fn new_on(
        kind: ModelKind,
        input: InputShape,
        classes: usize,
        seed: u64,
        device: Device,
    ) -> Result<Self, TrainError> {
        let resident = (device != Device::Cpu).then_some(device);
        Self::build(kind, input, classes, seed, resident)
    }

    /// `resident`: the device of a model that is not on the host (the tests also stage through
    /// the CPU).
    pub(crate) fn build(
        kind: ModelKind,
        input: InputShape,
        classes: usize,
        seed: u64,
        resident: Option<Device>,
    ) -> Result<Self, TrainError> {
        if let ModelKind::TorchScript { path } = kind {
            return torchscript::load(path, input, classes).map(|mut loaded| {
                if let Some(device) = resident {
                    // Buffers move with the module; the parameters then view the device buffer.
                    loaded.module.to(device, Kind::Float, false);
                }
                Self::assemble(
                    kind,
                    loaded.specs,
                    &loaded.init,
                    input,
                    resident,
                    |flat, spec, k| {
                        let view = flat
                            .narrow(0, spec.offset as i64, spec.numel as i64)
                            .view(spec.shape.as_slice());
                        // The module's own parameter now lives in the flat buffer.
                        let mut p = loaded.params[k].shallow_clone();
                        tch::no_grad(|| p.set_data(&view));
                        p
                    },
                )
                .with_module(loaded.module)
            });
        }
        let specs = layout(kind, input, classes)?;
        let dim = specs.iter().map(|s| s.numel).sum();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = vec![0.0f32; dim];
        for spec in &specs {
            let values = &mut init[spec.offset..spec.offset + spec.numel];
            match spec.init {
                Init::Uniform(fan_in) => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    for v in values {
                        *v = rng.random_range(-bound..bound);
                    }
                }
                Init::Normal(std) => {
                    let normal = rand_distr::Normal::new(0.0f32, std).map_err(|e| {
                        TrainError::Config(format!("initialising {}: {e}", spec.name))
                    })?;
                    for v in values {
                        *v = rand_distr::Distribution::sample(&normal, &mut rng);
                    }
                }
                Init::Const(c) => values.fill(c),
            }
        }
        Ok(Self::assemble(
            kind,
            specs,
            &init,
            input,
            resident,
            |flat, s, _| {
                flat.narrow(0, s.offset as i64, s.numel as i64)
                    .view(s.shape.as_slice())
                    .detach()
                    .set_requires_grad(true)
            },
        ))
    }

    /// The flat tensor holding `init`, and one leaf per parameter made by `leaf` from it.
    fn assemble(
        kind: ModelKind,
        specs: Vec<ParamSpec>,
        init: &[f32],
        input: InputShape,
        resident: Option<Device>,
        leaf: impl Fn(&Tensor, &ParamSpec, usize) -> Tensor,
    ) -> Self {
        let flat = match resident {
            Some(device) if device.is_cuda() => Tensor::from_slice(init).to_device(device),
            _ => Tensor::from_slice(init),
        };
        let leaves = specs
            .iter()
            .enumerate()
            .map(|(k, s)| leaf(&flat, s, k))
            .collect();
        FlatModel {
            kind,
            specs,
            flat,
            leaves,
            dim: init.len(),
            input,
            module: None,
            sgd: SgdConfig::default(),
            momentum: Vec::new(),
            staged: resident.map(|device| staged::Staged::new(device, init.len())),
        }
        .with_zero_grads()
    }

    fn with_module(mut self, module: tch::CModule) -> Self {
        self.module = Some(std::cell::RefCell::new(module));
        self
    }

    /// Gives every parameter a zero gradient. libtorch stores a parameter's first gradient as
    /// computed but adds later ones into the stored buffer, with different rounding for some
    /// kernels: with a gradient from the start, every step takes the same path, so a run resumed
    /// from a checkpoint reproduces the uninterrupted run bit for bit.
    fn with_zero_grads(self) -> Self {
        for leaf in &self.leaves {
            (leaf * 0.0).sum(Kind::Float).backward();
        }
        self
    }

    /// Where the parameters live and the model computes.
    pub fn device(&self) -> Device {
        self.staged.as_ref().map_or(Device::Cpu, |s| s.device())
    }

    /// Number of parameters.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The architecture.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The parameters' names, shapes and offsets.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Names and shapes of the parameters in flat order (for checkpoints).
    pub fn layout(&self) -> Vec<ParamLayout> {
        self.specs
            .iter()
            .map(|s| ParamLayout {
                name: s.name.clone(),
                shape: s.shape.iter().map(|&d| d as usize).collect(),
            })
            .collect()
    }

    fn by_name(&self, name: &str) -> &Tensor {
        let k = self.specs.iter().position(|s| s.name == name).unwrap_or(0);
        &self.leaves[k]
    }

    /// Logits for a batch `[b, features]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let p = |name: &str| self.by_name(name);
        match self.kind {
            ModelKind::Mlp { .. } => x
                .linear(p("fc1.weight"), Some(p("fc1.bias")))
                .relu()
                .linear(p("fc2.weight"), Some(p("fc2.bias"))),
            ModelKind::Cnn => {
                let i = self.input;
                let b = x.size()[0];
                x.view([b, i.channels as i64, i.height as i64, i.width as i64])
                    .conv2d(
                        p("conv1.weight"),
                        Some(p("conv1.bias")),
                        [1, 1],
                        [0, 0],
                        [1, 1],
                        1,
                    )
                    .relu()
                    .max_pool2d_default(2)
                    .conv2d(
                        p("conv2.weight"),
                        Some(p("conv2.bias")),
                        [1, 1],
                        [0, 0],
                        [1, 1],
                        1,
                    )
                    .relu()
                    .max_pool2d_default(2)
                    .flatten(1, -1)
                    .linear(p("fc.weight"), Some(p("fc.bias")))
            }
            ModelKind::ResNet20 => resnet::forward(&p, x, self.input),
            ModelKind::Transformer {
                width,
                layers,
                heads,
            } => transformer::forward(&p, x, self.input, width, layers, heads),
            ModelKind::TorchScript { .. } => match &self.module {
                Some(m) => torchscript::forward(&m.borrow(), x, self.input),
                None => Tensor::full([1], f64::NAN, (Kind::Float, tch::Device::Cpu)),
            },
        }
    }

    /// Computes the mean cross-entropy of a batch and leaves its gradient in the flat gradient.
    pub fn backward(&mut self, x: &Tensor, y: &Tensor) -> f64 {
        for p in &mut self.leaves {
            p.zero_grad();
        }
        let on_device = self.staged.as_ref().map(|s| (s.upload(x), s.upload(y)));
        let (x, y) = on_device.as_ref().map_or((x, y), |(x, y)| (x, y));
        let loss = self.forward(x).cross_entropy_for_logits(y);
        loss.backward();
        loss.double_value(&[])
    }

    /// Sets the local optimizer (momentum, weight decay, clipping).
    pub fn set_sgd(&mut self, sgd: SgdConfig) {
        self.sgd = sgd;
        if let Some(staged) = &mut self.staged {
            staged.set_momentum(sgd.momentum > 0.0, self.dim);
            return;
        }
        self.momentum = if sgd.momentum > 0.0 {
            vec![0.0; self.dim]
        } else {
            Vec::new()
        };
    }

    /// The optimizer state laid out like the parameters (the momentum buffer; empty without
    /// momentum), for checkpoints.
    pub fn optimizer_state(&self) -> Cow<'_, [f32]> {
        match &self.staged {
            Some(staged) => Cow::Owned(staged.momentum()),
            None => Cow::Borrowed(&self.momentum),
        }
    }

    /// Restores the optimizer state saved by [`FlatModel::optimizer_state`].
    pub fn load_optimizer_state(&mut self, state: &[f32]) -> Result<(), TrainError> {
        let has_momentum = match &self.staged {
            Some(staged) => staged.has_momentum(),
            None => !self.momentum.is_empty(),
        };
        match (state.is_empty(), !has_momentum) {
            (true, true) => Ok(()),
            // A checkpoint without momentum restarts the buffer from zero.
            (true, false) => {
                self.momentum.fill(0.0);
                if let Some(staged) = &mut self.staged {
                    staged.reset_momentum();
                }
                Ok(())
            }
            (false, true) => Err(TrainError::Config(
                "the checkpoint holds a momentum buffer but this run has no momentum: pass the \
                 same --momentum as the checkpointed run"
                    .into(),
            )),
            (false, false) if state.len() == self.dim => {
                match &mut self.staged {
                    Some(staged) => staged.load_momentum(state),
                    None => self.momentum.copy_from_slice(state),
                }
                Ok(())
            }
            (false, false) => Err(TrainError::Config(format!(
                "optimizer state of {} values does not fit a model of {} parameters",
                state.len(),
                self.dim
            ))),
        }
    }

    /// One optimizer step with learning rate `lr` from the gradient of the last
    /// [`FlatModel::backward`]: `g = clip(grad) + weight_decay * w`, `m = momentum * m + g`,
    /// `w -= lr * m` (plain `w -= lr * g` without momentum), one pass over each parameter.
    pub fn sgd_step(&mut self, lr: f64) {
        let lr = lr as f32;
        let sgd = self.sgd;
        let scale = match sgd.clip_grad_norm {
            Some(max) => {
                let norm = self.grad_norm();
                if norm > max && norm > 0.0 {
                    (max / norm) as f32
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        let wd = sgd.weight_decay as f32;
        let mu = sgd.momentum as f32;
        if let Some(staged) = &mut self.staged {
            staged.sgd_step(&self.specs, &self.leaves, (lr, scale, wd, mu));
            return;
        }
        let (specs, leaves, momentum) = (&self.specs, &self.leaves, &mut self.momentum);
        with_f32_slice_mut(&mut self.flat, self.dim, |params| {
            for (spec, leaf) in specs.iter().zip(leaves) {
                let mut grad = leaf.grad();
                if !grad.defined() {
                    continue;
                }
                let range = spec.offset..spec.offset + spec.numel;
                let p = &mut params[range.clone()];
                with_f32_slice_mut(&mut grad, spec.numel, |g| {
                    if momentum.is_empty() {
                        if scale == 1.0 && wd == 0.0 {
                            for (w, d) in p.iter_mut().zip(g.iter()) {
                                *w -= lr * *d;
                            }
                        } else {
                            for (w, d) in p.iter_mut().zip(g.iter()) {
                                *w -= lr * (scale * *d + wd * *w);
                            }
                        }
                    } else {
                        let m = &mut momentum[range];
                        for ((w, d), b) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()) {
                            *b = mu * *b + scale * *d + wd * *w;
                            *w -= lr * *b;
                        }
                    }
                });
            }
        });
    }

    /// Global L2 norm of the gradient of the last [`FlatModel::backward`].
    pub fn grad_norm(&self) -> f64 {
        let mut sum = 0.0f64;
        for leaf in &self.leaves {
            let g = leaf.grad();
            if g.defined() {
                sum += g.square().sum(Kind::Double).double_value(&[]);
            }
        }
        sum.sqrt()
    }

    /// Runs `f` on the parameters as one mutable slice (no copy on the CPU; a model on a device
    /// stages them through a host copy, see model/staged.rs).
    pub fn with_params_mut<R>(&mut self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        self.update_params(|p| (f(p), true))
    }

    /// Like [`FlatModel::with_params_mut`] for an `f` that returns whether it wrote the
    /// parameters: a model on a device copies them back only if it did. An `f` that writes and
    /// returns false loses its writes on a device (on the CPU the slice is the model itself).
    pub fn update_params<R>(&mut self, f: impl FnOnce(&mut [f32]) -> (R, bool)) -> R {
        match &mut self.staged {
            Some(staged) => staged.update_params(&mut self.flat, self.dim, f),
            None => with_f32_slice_mut(&mut self.flat, self.dim, f).0,
        }
    }

    /// Runs `f` on the gradient of the last [`FlatModel::backward`], laid out like the parameters,
    /// and stores what `f` leaves in the buffer back as the gradient.
    pub fn with_grad_mut<R>(
        &mut self,
        buf: &mut Vec<f32>,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Result<R, TrainError> {
        buf.resize(self.dim, 0.0);
        if let Some(staged) = &self.staged {
            if self.leaves.iter().any(|p| !p.grad().defined()) {
                return Err(TrainError::Node(
                    "no gradient: call backward before reducing gradients".into(),
                ));
            }
            return Ok(staged.with_grad_mut(&self.specs, &self.leaves, buf, f));
        }
        for (spec, p) in self.specs.iter().zip(&self.leaves) {
            let grad = p.grad();
            if !grad.defined() {
                return Err(TrainError::Node(
                    "no gradient: call backward before reducing gradients".into(),
                ));
            }
            grad.f_copy_data(&mut buf[spec.offset..spec.offset + spec.numel], spec.numel)
                .map_err(|e| TrainError::Node(format!("reading gradient {}: {e}", spec.name)))?;
        }
        let r = f(buf);
        for (spec, p) in self.specs.iter().zip(&self.leaves) {
            let mut grad = p.grad();
            with_f32_slice_mut(&mut grad, spec.numel, |g| {
                g.copy_from_slice(&buf[spec.offset..spec.offset + spec.numel])
            });
        }
        Ok(r)
    }

    /// A copy of the parameters.
    pub fn params(&mut self) -> Vec<f32> {
        self.with_params_mut(|p| p.to_vec())
    }

    /// A copy of the parameters, through a shared borrow.
    pub fn params_copy(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dim];
        // A contiguous f32 tensor of `dim` values (checked at every mutable access) copies; from a
        // device through a host copy.
        let _ = self.flat.f_copy_data(&mut out, self.dim);
        out
    }

    /// Overwrites the parameters.
    pub fn load(&mut self, params: &[f32]) -> Result<(), TrainError> {
        if params.len() != self.dim {
            return Err(TrainError::Config(format!(
                "cannot load {} values into a model of {} parameters",
                params.len(),
                self.dim
            )));
        }
        match &mut self.staged {
            Some(staged) => staged.load(&mut self.flat, params),
            None => self.with_params_mut(|p| p.copy_from_slice(params)),
        }
        Ok(())
    }

    /// Mean loss and accuracy on a split, in batches of 1000 examples (a TorchScript module in
    /// evaluation mode).
    pub fn evaluate(&self, split: &Split) -> (f64, f64) {
        if let Some(m) = &self.module {
            m.borrow_mut().set_eval();
        }
        let result = self.evaluate_batches(split);
        if let Some(m) = &self.module {
            m.borrow_mut().set_train();
        }
        result
    }

    fn evaluate_batches(&self, split: &Split) -> (f64, f64) {
        tch::no_grad(|| {
            let mut loss = 0.0;
            let mut correct = 0i64;
            for start in (0..split.len()).step_by(1000) {
                let end = (start + 1000).min(split.len());
                let x =
                    Tensor::from_slice(&split.images[start * split.features..end * split.features])
                        .view([(end - start) as i64, split.features as i64]);
                let labels: Vec<i64> = split.labels[start..end]
                    .iter()
                    .map(|&l| i64::from(l))
                    .collect();
                let y = Tensor::from_slice(&labels);
                let (x, y) = match &self.staged {
                    Some(staged) => (staged.upload(&x), staged.upload(&y)),
                    None => (x, y),
                };
                let logits = self.forward(&x);
                loss +=
                    logits.cross_entropy_for_logits(&y).double_value(&[]) * (end - start) as f64;
                correct += logits
                    .argmax(-1, false)
                    .eq_tensor(&y)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
            }
            let n = split.len().max(1) as f64;
            (loss / n, correct as f64 / n)
        })
    }

    /// The parameters as named tensors of their real shapes (for safetensors files).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.specs
            .iter()
            .zip(&self.leaves)
            .map(|(s, p)| (s.name.clone(), p.detach().copy().to_device(Device::Cpu)))
            .collect()
    }
}

/// A training batch built from example indices.
pub fn batch(split: &Split, indices: &[usize]) -> (Tensor, Tensor) {
    let mut pixels = Vec::with_capacity(indices.len() * split.features);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        pixels.extend_from_slice(split.image(i));
        labels.push(i64::from(split.labels[i]));
    }
    (
        Tensor::from_slice(&pixels).view([indices.len() as i64, split.features as i64]),
        Tensor::from_slice(&labels),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient of the last backward, as one flat vector.
    fn grad(m: &mut FlatModel) -> Vec<f32> {
        let mut buf = Vec::new();
        m.with_grad_mut(&mut buf, |g| g.to_vec()).unwrap()
    }

    #[test]
    fn sgd_step_is_torch_sgd_with_momentum_weight_decay_and_clipping() {
        let input = InputShape::image(1, 1, 3);
        let mut m = FlatModel::new(ModelKind::Mlp { hidden: 4 }, input, 2, 7).unwrap();
        let (mu, wd, clip, lr) = (0.9f32, 0.1f32, 0.05f64, 0.5f32);
        m.set_sgd(SgdConfig {
            momentum: f64::from(mu),
            weight_decay: f64::from(wd),
            clip_grad_norm: Some(clip),
        });
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5]).view([2, 3]);
        let y = Tensor::from_slice(&[1i64, 0]);
        let mut w = m.params();
        let mut buf = vec![0.0f32; w.len()];
        for _ in 0..3 {
            m.backward(&x, &y);
            let g = grad(&mut m);
            let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!(norm > clip, "the test must exercise clipping");
            let scale = (clip / norm) as f32;
            for k in 0..w.len() {
                buf[k] = mu * buf[k] + scale * g[k] + wd * w[k];
                w[k] -= lr * buf[k];
            }
            m.sgd_step(f64::from(lr));
            let got = m.params();
            for (a, b) in got.iter().zip(&w) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
            assert_eq!(m.optimizer_state().len(), w.len());
        }
        // Plain SGD keeps no state.
        m.set_sgd(SgdConfig::default());
        assert!(m.optimizer_state().is_empty());
        assert!(m.load_optimizer_state(&[1.0; 3]).is_err());
    }

    /// The same model on the host and staged through a separate buffer as a device model is
    /// (with the CPU standing in for the GPU): everything but the copies' direction.
    fn host_and_staged(kind: ModelKind, input: InputShape) -> (FlatModel, FlatModel) {
        let host = FlatModel::new(kind, input, 3, 11).unwrap();
        let staged = FlatModel::build(kind, input, 3, 11, Some(Device::Cpu)).unwrap();
        assert!(staged.staged.is_some() && host.staged.is_none());
        (host, staged)
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {k}: {x} vs {y}");
        }
    }

    #[test]
    fn a_staged_model_takes_the_host_model_s_sgd_steps() {
        let input = InputShape::image(1, 2, 3);
        let x = Tensor::from_slice(&[
            0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5, 1.0, 0.25, -2.0, 0.5, 1.0, 3.0,
        ])
        .view([2, 6]);
        let y = Tensor::from_slice(&[2i64, 0]);
        for sgd in [
            SgdConfig::default(),
            SgdConfig {
                momentum: 0.0,
                weight_decay: 0.05,
                clip_grad_norm: Some(0.1),
            },
            SgdConfig {
                momentum: 0.9,
                weight_decay: 0.1,
                clip_grad_norm: Some(0.05),
            },
        ] {
            let (mut host, mut staged) = host_and_staged(ModelKind::Mlp { hidden: 5 }, input);
            host.set_sgd(sgd);
            staged.set_sgd(sgd);
            for _ in 0..4 {
                let (a, b) = (host.backward(&x, &y), staged.backward(&x, &y));
                assert!((a - b).abs() < 1e-6, "{sgd:?}: loss {a} vs {b}");
                host.sgd_step(0.3);
                staged.sgd_step(0.3);
            }
            let moved = host.params();
            assert!(
                moved
                    .iter()
                    .zip(
                        FlatModel::new(ModelKind::Mlp { hidden: 5 }, input, 3, 11)
                            .unwrap()
                            .params()
                    )
                    .any(|(a, b)| a != &b),
                "the steps must move the model"
            );
            close(&staged.params(), &moved, 1e-6);
            close(&staged.optimizer_state(), &host.optimizer_state(), 1e-6);
            assert_eq!(
                staged.optimizer_state().len(),
                if sgd.momentum > 0.0 { moved.len() } else { 0 }
            );
        }
    }

    #[test]
    fn a_staged_model_s_slice_access_reaches_its_buffer_and_back() {
        let input = InputShape::image(1, 2, 3);
        let (mut host, mut staged) = host_and_staged(ModelKind::Mlp { hidden: 4 }, input);
        // What the exchange writes through the slice is what the model computes with.
        let halve = |p: &mut [f32]| p.iter_mut().for_each(|v| *v *= 0.5);
        host.with_params_mut(halve);
        staged.with_params_mut(halve);
        let seen = staged.with_params_mut(|p| p.to_vec());
        assert_eq!(seen, host.params());
        assert_eq!(staged.params_copy(), host.params_copy());
        let x = Tensor::from_slice(&[0.1f32; 12]).view([2, 6]);
        let (a, b) = (host.forward(&x), staged.forward(&x));
        assert_eq!(
            Vec::<f32>::try_from(&a.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap()
        );
        // Loading overwrites the device buffer; named tensors are host copies of it.
        let values: Vec<f32> = (0..staged.dim()).map(|k| k as f32 / 100.0).collect();
        staged.load(&values).unwrap();
        assert_eq!(staged.params(), values);
        let named = staged.named_tensors();
        assert!(named.iter().all(|(_, t)| t.device() == Device::Cpu));
        let first = Vec::<f32>::try_from(&named[0].1.flatten(0, -1)).unwrap();
        assert_eq!(first, values[..first.len()].to_vec());
        // A checkpoint's momentum loads into the device buffer.
        staged.set_sgd(SgdConfig {
            momentum: 0.5,
            ..SgdConfig::default()
        });
        staged.load_optimizer_state(&values).unwrap();
        assert_eq!(staged.optimizer_state().to_vec(), values);
        staged.load_optimizer_state(&[]).unwrap();
        assert!(staged.optimizer_state().iter().all(|&v| v == 0.0));
        assert!(staged.load_optimizer_state(&values[..3]).is_err());
    }

    #[test]
    fn a_staged_model_reduces_gradients_through_the_host_buffer() {
        let input = InputShape::image(1, 2, 3);
        let (mut host, mut staged) = host_and_staged(ModelKind::Mlp { hidden: 4 }, input);
        let x = Tensor::from_slice(&[0.3f32, -0.2, 1.0, 0.0, 0.5, -1.0]).view([1, 6]);
        let y = Tensor::from_slice(&[1i64]);
        host.backward(&x, &y);
        staged.backward(&x, &y);
        let (mut hb, mut sb) = (Vec::new(), Vec::new());
        // An all-reduce of 4 equal replicas: the sum, then the mean (what comes back is used).
        let g_host = host
            .with_grad_mut(&mut hb, |g| {
                g.iter_mut().for_each(|v| *v *= 4.0);
                g.to_vec()
            })
            .unwrap();
        let g_staged = staged
            .with_grad_mut(&mut sb, |g| {
                g.iter_mut().for_each(|v| *v *= 4.0);
                g.to_vec()
            })
            .unwrap();
        assert!(g_host.iter().any(|v| *v != 0.0));
        close(&g_staged, &g_host, 1e-6);
        host.sgd_step(0.1);
        staged.sgd_step(0.1);
        close(&staged.params(), &host.params(), 1e-6);
    }

    #[test]
    fn a_staged_model_evaluates_as_the_host_model() {
        let shape = InputShape::image(1, 16, 16);
        let (host, staged) = host_and_staged(ModelKind::Cnn, shape);
        let n = 5;
        let split = crate::data::Split {
            images: (0..n * 256).map(|k| ((k * 7) % 13) as f32 / 13.0).collect(),
            labels: (0..n).map(|k| (k % 3) as u8).collect(),
            features: 256,
            shape,
        };
        let (a, b) = (host.evaluate(&split), staged.evaluate(&split));
        assert!(
            a.0.is_finite() && (a.0 - b.0).abs() < 1e-9 && a.1 == b.1,
            "{a:?} vs {b:?}"
        );
    }
}
