//! The one place where a libtorch tensor's memory is seen as a Rust slice.
//!
//! SwarmSGD averages whole models many times per second; copying the parameters out of and back
//! into libtorch at every interaction would cost two extra passes over the model. libtorch offers
//! no safe borrow of a tensor's storage, so this module builds the slice from the data pointer,
//! for the duration of a closure only.
#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

/// Runs `f` on the elements of `t`, a contiguous f32 CPU tensor of `numel` elements.
///
/// Panics (a programming error, not an input error) if `t` is not such a tensor.
pub(crate) fn with_f32_slice_mut<R>(
    t: &mut Tensor,
    numel: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    assert_eq!(t.kind(), Kind::Float, "flat tensors are f32");
    assert_eq!(t.device(), Device::Cpu, "flat tensors live on the CPU");
    assert!(t.is_contiguous(), "flat tensors are contiguous");
    assert_eq!(t.numel(), numel, "flat tensor has the wrong length");
    let ptr = t.data_ptr() as *mut f32;
    // SAFETY: `t` is a contiguous CPU tensor of `numel` f32 values (checked above), so `ptr` points
    // to `numel` initialised, aligned f32s that stay allocated while `t` is alive. The exclusive
    // borrow of `t` for the closure's whole duration means no libtorch operation on this tensor
    // (or through this handle) runs while the slice exists; the slice does not outlive the call.
    // The flat parameter and gradient tensors are never shared with other threads.
    let slice = unsafe { std::slice::from_raw_parts_mut(ptr, numel) };
    f(slice)
}
