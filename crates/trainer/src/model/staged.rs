//! A model resident on a device (a CUDA GPU): its flat parameter buffer, the leaves that view it,
//! their gradients and the momentum buffer live there, and the optimizer step runs there as
//! libtorch operations.
//!
//! The exchange stays in host memory (the node runtime, the windows and the codecs work on
//! `&mut [f32]`), so every access to the parameters as a slice is staged through a host copy of
//! the flat buffer: device-to-host before the access unless the host copy is still current (no
//! step since), host-to-device after it only if the access wrote (an averaged copy, a folded
//! correction): a SwarmSGD step that only publishes costs one device-to-host copy, which
//! publishing needs anyway. Averaging on the host rather than on the device moves no more bytes:
//! the averaged model has to reach the host window either way. On CUDA the host copy is
//! page-locked, so the host-to-device copy is asynchronous: it is queued on the device's stream
//! ahead of the next step's kernels, and the next device-to-host copy (queued behind it, and
//! waited for) keeps the host from overwriting the copy's source while it is being read.
//!
//! The same code runs with the CPU as the "device" (only the tests build such a model), so
//! everything but the copies' direction is checked on a machine without a GPU.

use tch::{Device, Kind, Tensor};

use super::ParamSpec;
use crate::flat::with_f32_slice_mut;

/// The device-side state of a [`FlatModel`](super::FlatModel) that is not on the host.
pub(super) struct Staged {
    device: Device,
    /// Host copy of the flat buffer, page-locked on CUDA.
    host: Tensor,
    /// Whether `host` holds what the device buffer holds (no device-side write since the last
    /// copy either way), so that the next access can skip the device-to-host copy.
    host_current: bool,
    /// Momentum buffer, laid out like the flat buffer, on the device (None without momentum).
    momentum: Option<Tensor>,
}

impl Staged {
    pub(super) fn new(device: Device, dim: usize) -> Self {
        let host = Tensor::zeros([dim as i64], (Kind::Float, Device::Cpu));
        let host = if device.is_cuda() {
            host.pin_memory(device)
        } else {
            host
        };
        Staged {
            device,
            host,
            host_current: false,
            momentum: None,
        }
    }

    pub(super) fn device(&self) -> Device {
        self.device
    }

    /// `t` (a host tensor) on the device: on CUDA, a non-blocking copy from page-locked memory
    /// (libtorch keeps the page-locked block alive until the copy has read it).
    pub(super) fn upload(&self, t: &Tensor) -> Tensor {
        if self.device.is_cuda() {
            t.pin_memory(self.device)
                .to_device_(self.device, t.kind(), true, false)
        } else {
            t.shallow_clone()
        }
    }

    /// Runs `f` on the parameters as one host slice; if `f` says it wrote them, writes the slice
    /// back to the device buffer `flat`. The device-to-host copy is skipped when the host copy is
    /// current; the host-to-device copy when `f` wrote nothing (the usual case: the node
    /// publishes after every step but averages once every few).
    pub(super) fn update_params<R>(
        &mut self,
        flat: &mut Tensor,
        dim: usize,
        f: impl FnOnce(&mut [f32]) -> (R, bool),
    ) -> R {
        if !self.host_current {
            // Device to host; waits for the step's kernels and for the last host-to-device copy.
            self.host.copy_(flat);
            self.host_current = true;
        }
        let (r, wrote) = with_f32_slice_mut(&mut self.host, dim, f);
        if wrote {
            self.upload_host(flat);
            // On CUDA the copy may still be reading the host buffer: the next access copies
            // device-to-host first, which waits for it, before anything writes the host buffer.
            self.host_current = false;
        }
        r
    }

    /// Copies the host buffer to the device buffer `flat`.
    fn upload_host(&self, flat: &mut Tensor) {
        tch::no_grad(|| {
            if self.device.is_cuda() {
                // Host to device without blocking (libtorch has no non-blocking `copy_`), then a
                // device-side copy into the buffer the leaves view.
                flat.copy_(&self.host.to_device_(self.device, Kind::Float, true, false));
            } else {
                flat.copy_(&self.host);
            }
        });
    }

    /// Overwrites the device buffer `flat` with `values`.
    pub(super) fn load(&mut self, flat: &mut Tensor, values: &[f32]) {
        self.host_current = false;
        tch::no_grad(|| flat.copy_(&Tensor::from_slice(values)));
    }

    /// Starts (`true`) or drops the momentum buffer for a model of `dim` parameters.
    pub(super) fn set_momentum(&mut self, on: bool, dim: usize) {
        self.momentum = on.then(|| Tensor::zeros([dim as i64], (Kind::Float, self.device)));
    }

    /// The momentum buffer on the host (empty without momentum).
    pub(super) fn momentum(&self) -> Vec<f32> {
        self.momentum.as_ref().map_or_else(Vec::new, |m| {
            let numel = m.numel();
            let mut out = vec![0.0f32; numel];
            m.copy_data(&mut out, numel);
            out
        })
    }

    /// Whether the model keeps a momentum buffer.
    pub(super) fn has_momentum(&self) -> bool {
        self.momentum.is_some()
    }

    /// Overwrites the momentum buffer (which exists and has `state.len()` values).
    pub(super) fn load_momentum(&mut self, state: &[f32]) {
        if let Some(m) = &mut self.momentum {
            tch::no_grad(|| m.copy_(&Tensor::from_slice(state)));
        }
    }

    /// Zeroes the momentum buffer.
    pub(super) fn reset_momentum(&mut self) {
        if let Some(m) = &mut self.momentum {
            tch::no_grad(|| {
                let _ = m.zero_();
            });
        }
    }

    /// The SGD step of [`FlatModel::sgd_step`](super::FlatModel::sgd_step) as libtorch operations
    /// on the device, in the same order of floating-point operations as the host loop.
    pub(super) fn sgd_step(
        &mut self,
        specs: &[ParamSpec],
        leaves: &[Tensor],
        (lr, scale, wd, mu): (f32, f32, f32, f32),
    ) {
        let (lr, scale, wd, mu) = (
            f64::from(lr),
            f64::from(scale),
            f64::from(wd),
            f64::from(mu),
        );
        self.host_current = false;
        tch::no_grad(|| {
            for (spec, leaf) in specs.iter().zip(leaves) {
                let g = leaf.grad();
                if !g.defined() {
                    continue;
                }
                // The leaf views the flat buffer: writing it in place updates the model.
                let mut w = leaf.shallow_clone();
                match &self.momentum {
                    None if scale == 1.0 && wd == 0.0 => {
                        let _ = w.g_sub_(&(&g * lr));
                    }
                    None => {
                        let _ = w.g_sub_(&((&g * scale + &w * wd) * lr));
                    }
                    Some(m) => {
                        let mut b = m
                            .narrow(0, spec.offset as i64, spec.numel as i64)
                            .view(spec.shape.as_slice());
                        let _ = b.g_mul_scalar_(mu);
                        let _ = b.g_add_(&(&g * scale));
                        if wd != 0.0 {
                            let _ = b.g_add_(&(&w * wd));
                        }
                        let _ = w.g_sub_(&(&b * lr));
                    }
                }
            }
        });
    }

    /// The gradients of `leaves` copied into `buf` (laid out like the parameters), `f` run on it,
    /// and what `f` left copied back into the gradients.
    pub(super) fn with_grad_mut<R>(
        &self,
        specs: &[ParamSpec],
        leaves: &[Tensor],
        buf: &mut [f32],
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> R {
        let grads: Vec<Tensor> = leaves.iter().map(|l| l.grad().flatten(0, -1)).collect();
        Tensor::cat(&grads, 0).copy_data(buf, buf.len());
        let r = f(buf);
        let back = self.upload(&Tensor::from_slice(buf));
        tch::no_grad(|| {
            for (spec, leaf) in specs.iter().zip(leaves) {
                let mut g = leaf.grad();
                g.copy_(
                    &back
                        .narrow(0, spec.offset as i64, spec.numel as i64)
                        .view(spec.shape.as_slice()),
                );
            }
        });
        r
    }
}
