//! Reductions over a bucket written with 8 fixed lanes so that they vectorize.

/// Pads a remainder with zeros (for sums).
#[inline(always)]
fn sum_lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in it.by_ref() {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a += f(*v);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Minimum, maximum, and whether every value is finite.
///
/// 16 lanes (4 SSE registers per reduction, so the 4-cycle min/max/add latencies overlap). NaN
/// and infinities are detected through a plain sum, which they poison; a sum that overflows
/// from finite values is rechecked exactly.
#[inline(always)]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32, bool) {
    if x.is_empty() {
        return (0.0, 0.0, true);
    }
    let mut init = [x[0]; 48];
    init[32..].fill(0.0);
    let mut acc = init;
    let mut it = x.chunks_exact(16);
    for c in it.by_ref() {
        if let Ok(c) = <&[f32; 16]>::try_from(c) {
            min_max_step(&mut acc, c);
        }
    }
    let r = it.remainder();
    if !r.is_empty() {
        // Pad with the first value of the remainder: neutral for min/max; the sum only serves
        // the finiteness test.
        let mut c = [r[0]; 16];
        c[..r.len()].copy_from_slice(r);
        min_max_step(&mut acc, &c);
    }
    let z = acc[32..].iter().sum::<f32>();
    let mut lo = acc[0];
    let mut hi = acc[16];
    for j in 1..16 {
        lo = if acc[j] < lo { acc[j] } else { lo };
        hi = if acc[16 + j] > hi { acc[16 + j] } else { hi };
    }
    let finite =
        lo.is_finite() && hi.is_finite() && (z.is_finite() || x.iter().all(|v| v.is_finite()));
    (lo, hi, finite)
}

/// One step of [`min_max`] over 16 lanes: minima, maxima and sums (a function, not a closure,
/// so that it is always inlined into the SIMD-dispatched caller).
#[inline(always)]
fn min_max_step(acc: &mut [f32; 48], c: &[f32; 16]) {
    for j in 0..16 {
        let v = c[j];
        acc[j] = if v < acc[j] { v } else { acc[j] };
        acc[16 + j] = if v > acc[16 + j] { v } else { acc[16 + j] };
        acc[32 + j] += v;
    }
}

/// Largest magnitude (0 for an empty slice); NaN if any value is NaN, infinity if any is
/// infinite (the maximum is taken on the magnitude's bit pattern, which orders NaN last).
#[inline(always)]
pub(crate) fn max_abs(x: &[f32]) -> f32 {
    let mut acc = [0u32; 8];
    let mut it = x.chunks_exact(8);
    for c in it.by_ref() {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = max_abs_bits(*a, *v);
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a = max_abs_bits(*a, *v);
    }
    f32::from_bits(acc.iter().fold(0, |m, &a| m.max(a)))
}

/// `max(acc, |v| as bits)` in a form that vectorizes with SSE2 (signed compare; both sides are
/// below 2^31).
#[inline(always)]
pub(crate) fn max_abs_bits(acc: u32, v: f32) -> u32 {
    let a = (v.to_bits() & 0x7fff_ffff) as i32;
    let m = acc as i32;
    (if a > m { a } else { m }) as u32
}

/// Sum of magnitudes.
#[inline(always)]
pub(crate) fn sum_abs(x: &[f32]) -> f32 {
    sum_lanes(x, |v| f32::from_bits(v.to_bits() & 0x7fff_ffff))
}

/// Sum of squares.
#[inline(always)]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    sum_lanes(x, |v| v * v)
}

/// 1.5 * 2^23: adding it to `|z| < 2^22` leaves `round(z)` (ties to even) in the low mantissa
/// bits, which is how every kernel rounds (no SSE4.1 `roundps` on the baseline target).
pub(crate) const MAGIC: f32 = 12_582_912.0;
/// Bit pattern of [`MAGIC`]; `(z + MAGIC).to_bits() - MAGIC_BITS` is `round(z)` as `i32`.
pub(crate) const MAGIC_BITS: u32 = 0x4B40_0000;

/// `round(z)` as an integer-valued float, for `|z| < 2^22`.
#[inline(always)]
pub(crate) fn round_f(z: f32) -> f32 {
    (z + MAGIC) - MAGIC
}

/// `round(z)` as `u32` bits (two's complement for negatives), for `|z| < 2^22`.
#[inline(always)]
pub(crate) fn round_i(z: f32) -> u32 {
    (z + MAGIC).to_bits().wrapping_sub(MAGIC_BITS)
}
