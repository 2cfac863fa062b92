//! The one place where a libtorch tensor's memory is seen as a Rust slice.
//!
//! SwarmSGD averages whole models many times per second; copying the parameters out of and back
//! into libtorch at every interaction would cost two extra passes over the model (tch's safe
//! `copy_data` / `from_slice` are copies). libtorch offers no safe borrow of a tensor's storage,
//! so this module builds the slice from the data pointer, for the duration of a closure only.
//!
//! The storage is shared: every parameter of a [`FlatModel`](crate::model::FlatModel) (each a
//! *leaf* tensor, `narrow` + `view` + `detach` of the flat tensor, or a TorchScript parameter
//! whose data was `set_data` to such a view) points into the flat tensor. The exclusive borrow of
//! the flat tensor's handle therefore does not, by itself, keep libtorch away from those bytes:
//! what does is how the slice is used (see the `SAFETY` comment), and what checks it is the
//! version counter below.
#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

/// Runs `f` on the elements of `t`, a contiguous f32 CPU tensor of `numel` elements.
///
/// Panics (a programming error, not an input error) if `t` is not such a tensor, or if an
/// in-place libtorch operation wrote to `t` or to any view of it (a model's leaf parameters)
/// while `f` ran: libtorch bumps the version counter that a tensor shares with its views on
/// every in-place write, and this function compares it before and after `f`.
pub(crate) fn with_f32_slice_mut<R>(
    t: &mut Tensor,
    numel: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    assert_eq!(t.kind(), Kind::Float, "flat tensors are f32");
    assert_eq!(t.device(), Device::Cpu, "flat tensors live on the CPU");
    assert!(t.is_contiguous(), "flat tensors are contiguous");
    assert_eq!(t.numel(), numel, "flat tensor has the wrong length");
    let version = t.internal_version();
    let ptr = t.data_ptr() as *mut f32;
    // SAFETY: `t` is a contiguous CPU tensor of `numel` f32 values (checked above), so `ptr` points
    // to `numel` initialised, aligned f32s that stay allocated while `t` is alive, and `t` is
    // exclusively borrowed for the whole call, so nothing drops or resizes it through this handle.
    // Other handles share these bytes: the model's leaf parameters are views of the flat tensor,
    // and a gradient tensor is also held by its leaf's `.grad`. No libtorch operation reads or
    // writes them while the slice lives, because:
    // - every caller (`FlatModel::sgd_step`, `with_params_mut`, `with_grad_mut`, in
    //   `model/mod.rs`) holds `&mut FlatModel`, so neither the leaves nor the TorchScript module
    //   can be reached from inside `f` through the model; its closures only do arithmetic on
    //   slices and `leaf.grad()` (which reads the leaf's grad field, not its data);
    // - the model never hands out a handle that aliases the flat storage (`named_tensors` returns
    //   copies; the flat tensor and its leaves are private fields);
    // - a model and its tensors belong to one thread (tch's `Tensor` is `Send` but the trainer
    //   never moves a model's tensors to another thread while it uses the model), and no
    //   autograd runs in the background: gradients are written only inside `backward`, which
    //   needs `&mut FlatModel`.
    // The version check after `f` catches an in-place write through any view that breaks this
    // (the test `a_leaf_written_while_the_slice_lives_is_caught` shows it does).
    let slice = unsafe { std::slice::from_raw_parts_mut(ptr, numel) };
    let r = f(slice);
    assert_eq!(
        t.internal_version(),
        version,
        "libtorch wrote to the tensor (or a view of it, e.g. a leaf parameter) while its \
         storage was borrowed as a slice"
    );
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::data::InputShape;
    use crate::model::{FlatModel, ModelKind};

    /// A flat tensor and one leaf parameter viewing elements 2..5, built as `FlatModel` builds
    /// its leaves.
    fn flat_and_leaf() -> (Tensor, Tensor) {
        let flat = Tensor::from_slice(&[0.0f32; 8]);
        let leaf = flat
            .narrow(0, 2, 3)
            .view([3])
            .detach()
            .set_requires_grad(true);
        (flat, leaf)
    }

    #[test]
    fn writes_through_the_slice_reach_the_leaves() {
        let (mut flat, leaf) = flat_and_leaf();
        with_f32_slice_mut(&mut flat, 8, |s| {
            for (k, v) in s.iter_mut().enumerate() {
                *v = k as f32;
            }
        });
        assert_eq!(Vec::<f32>::try_from(&leaf).unwrap(), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "while its storage was borrowed as a slice")]
    fn a_leaf_written_while_the_slice_lives_is_caught() {
        let (mut flat, leaf) = flat_and_leaf();
        with_f32_slice_mut(&mut flat, 8, |s| {
            s[0] = 1.0;
            // The violation: an in-place libtorch write to a leaf while the slice is alive.
            tch::no_grad(|| {
                let _ = leaf.shallow_clone().fill_(5.0);
            });
        });
    }

    #[test]
    fn a_model_s_parameters_are_views_of_its_flat_slice() {
        let input = InputShape::image(1, 2, 3);
        let mut m = FlatModel::new(ModelKind::Mlp { hidden: 4 }, input, 3, 1).unwrap();
        let dim = m.dim();
        m.with_params_mut(|p| {
            for (k, v) in p.iter_mut().enumerate() {
                *v = k as f32;
            }
        });
        // Each leaf shows the values written through the slice at its offset: the leaves still
        // alias the flat storage, so no copy went stale and no second buffer exists.
        let mut seen = 0;
        for ((name, t), spec) in m.named_tensors().iter().zip(m.specs()) {
            let values = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
            let expected: Vec<f32> = (spec.offset..spec.offset + spec.numel)
                .map(|k| k as f32)
                .collect();
            assert_eq!(values, expected, "{name}");
            seen += spec.numel;
        }
        assert_eq!(seen, dim);
        // A training step goes through the same slices and passes the version check.
        let x = Tensor::from_slice(&[0.5f32; 12]).view([2, 6]);
        let y = Tensor::from_slice(&[1i64, 0]);
        m.backward(&x, &y);
        m.sgd_step(0.1);
    }
}
