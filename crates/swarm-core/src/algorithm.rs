//! The arithmetic and scheduling of SwarmSGD, free of any I/O.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{NodeId, SwarmError};

/// How many local SGD steps a node takes between two interactions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalSteps {
    /// Exactly `H` steps every time (`H >= 1`).
    Fixed(u32),
    /// A fresh draw from the geometric distribution on {1, 2, ...} with mean `H` (`H >= 1`) before
    /// each interaction, as in the paper's analysis.
    Geometric(f64),
}

impl LocalSteps {
    /// The mean number of local steps between interactions.
    pub fn mean(&self) -> f64 {
        match *self {
            LocalSteps::Fixed(h) => f64::from(h),
            LocalSteps::Geometric(h) => h,
        }
    }

    /// Checks that the mean is at least one step.
    pub fn validate(&self) -> Result<(), SwarmError> {
        let ok = match *self {
            LocalSteps::Fixed(h) => h >= 1,
            LocalSteps::Geometric(h) => h.is_finite() && h >= 1.0,
        };
        if ok {
            Ok(())
        } else {
            Err(SwarmError::Config(format!(
                "local steps must be at least 1 between interactions, got {self}"
            )))
        }
    }

    fn draw(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            LocalSteps::Fixed(h) => u64::from(h.max(1)),
            LocalSteps::Geometric(mean) => {
                if mean <= 1.0 {
                    return 1;
                }
                // Inverse CDF of the geometric law with success probability 1/mean on {1, 2, ...}.
                let p = 1.0 / mean;
                let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                (u.ln() / (1.0 - p).ln()).floor() as u64 + 1
            }
        }
    }
}

impl fmt::Display for LocalSteps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalSteps::Fixed(h) => write!(f, "{h}"),
            LocalSteps::Geometric(h) => write!(f, "geometric:{h}"),
        }
    }
}

impl FromStr for LocalSteps {
    type Err = SwarmError;

    /// `H` for a fixed count, `geometric:H` (or `geo:H`) for geometric with mean `H`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SwarmError::Config(format!(
                "local steps '{s}' is neither an integer H >= 1 nor 'geometric:H' with H >= 1"
            ))
        };
        let parsed = if let Some(mean) = s.strip_prefix("geometric:").or(s.strip_prefix("geo:")) {
            LocalSteps::Geometric(mean.trim().parse().map_err(|_| bad())?)
        } else {
            LocalSteps::Fixed(s.trim().parse().map_err(|_| bad())?)
        };
        parsed.validate().map_err(|_| bad())?;
        Ok(parsed)
    }
}

/// How two nodes average their models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    /// Node i reads j's published model y_j and sets x_i <- (x_i + Q(y_j)) / 2; j is not involved.
    Pull,
    /// Like `Pull`, and i deposits the correction (x_i_old - Q(y_j)) / 2 into j's inbox, which j
    /// folds in at its next step boundary: the sum of all models is conserved.
    Pairwise,
    /// Both nodes stop and both set their model to the average (the analysis' reference semantics).
    Blocking,
}

impl fmt::Display for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interaction::Pull => "pull",
            Interaction::Pairwise => "pairwise",
            Interaction::Blocking => "blocking",
        })
    }
}

impl FromStr for Interaction {
    type Err = SwarmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pull" => Ok(Interaction::Pull),
            "pairwise" => Ok(Interaction::Pairwise),
            "blocking" => Ok(Interaction::Blocking),
            other => Err(SwarmError::Config(format!(
                "unknown interaction '{other}': use pull, pairwise or blocking"
            ))),
        }
    }
}

/// When a node interacts, and with whom: local-step countdown plus uniform neighbour choice.
#[derive(Debug, Clone)]
pub struct Schedule {
    local_steps: LocalSteps,
    until_interaction: u64,
}

impl Schedule {
    /// A schedule whose first countdown is drawn from `rng`.
    pub fn new(local_steps: LocalSteps, rng: &mut impl Rng) -> Result<Self, SwarmError> {
        local_steps.validate()?;
        let until_interaction = local_steps.draw(rng);
        Ok(Schedule {
            local_steps,
            until_interaction,
        })
    }

    /// Records one local step. Returns true when the node should now interact; the next countdown
    /// is then drawn.
    pub fn on_local_step(&mut self, rng: &mut impl Rng) -> bool {
        self.until_interaction = self.until_interaction.saturating_sub(1);
        if self.until_interaction == 0 {
            self.until_interaction = self.local_steps.draw(rng);
            true
        } else {
            false
        }
    }

    /// A neighbour drawn uniformly at random, or `None` for an isolated node.
    pub fn pick_neighbour(neighbours: &[NodeId], rng: &mut impl Rng) -> Option<NodeId> {
        if neighbours.is_empty() {
            None
        } else {
            Some(neighbours[rng.random_range(0..neighbours.len())])
        }
    }
}

/// `x <- (x + y) / 2`.
pub fn average_into(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "averaging vectors of different lengths");
    average_with(x, y.iter().copied());
}

/// [`average_into`] with `y` given as little-endian f32 bytes (a raw model as read from a window).
pub fn average_into_le(x: &mut [f32], y: &[u8]) {
    assert_eq!(
        4 * x.len(),
        y.len(),
        "averaging vectors of different lengths"
    );
    average_with(x, le_values(y));
}

fn average_with(x: &mut [f32], y: impl Iterator<Item = f32>) {
    for (a, b) in x.iter_mut().zip(y) {
        *a = 0.5 * (*a + b);
    }
}

/// The pairwise step for the initiator: `correction <- (x - y) / 2` (what the partner must add to
/// reach the average), then `x <- (x + y) / 2`. Since `x_new = x_old - (x_old - y) / 2`, the sum of
/// the two models is unchanged once the partner adds the correction.
pub fn pairwise_average(x: &mut [f32], y: &[f32], correction: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "averaging vectors of different lengths");
    pairwise_with(x, y.iter().copied(), correction);
}

/// [`pairwise_average`] with `y` given as little-endian f32 bytes.
pub fn pairwise_average_le(x: &mut [f32], y: &[u8], correction: &mut [f32]) {
    assert_eq!(
        4 * x.len(),
        y.len(),
        "averaging vectors of different lengths"
    );
    pairwise_with(x, le_values(y), correction);
}

fn pairwise_with(x: &mut [f32], y: impl Iterator<Item = f32>, correction: &mut [f32]) {
    assert_eq!(
        x.len(),
        correction.len(),
        "correction of a different length"
    );
    for ((a, b), c) in x.iter_mut().zip(y).zip(correction.iter_mut()) {
        let half_gap = 0.5 * (*a - b);
        *c = half_gap;
        *a -= half_gap;
    }
}

/// Why a peer's copy was not averaged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// It holds a NaN or an infinity.
    NonFinite,
    /// A coordinate lies further than the limit from this node's model.
    TooFar,
}

/// Checks that every value of `y` (little-endian f32 bytes) is finite and within `limit` of `x`
/// in every coordinate. Without a limit (`f32::INFINITY`) only `y` is read.
pub fn check_copy_le(x: &[f32], y: &[u8], limit: f32) -> Result<(), Rejected> {
    assert_eq!(
        4 * x.len(),
        y.len(),
        "averaging vectors of different lengths"
    );
    if limit == f32::INFINITY {
        return finite_verdict(all_finite_le(y));
    }
    if let Some(ys) = f32_view(y) {
        let mut scan = GapScan::default();
        let (xs, yc) = (x.chunks_exact(8), ys.chunks_exact(8));
        for (a, &b) in xs.remainder().iter().zip(yc.remainder()) {
            scan.note(0, a - b);
        }
        for (a, b) in xs.zip(yc) {
            for k in 0..8 {
                scan.note(k, a[k] - b[k]);
            }
        }
        if scan.within(limit) {
            return Ok(());
        }
    }
    exact_verdict(x.iter().zip(le_values(y)).map(|(a, b)| (b, a - b)), limit)
}

/// Checks that every value of `y` (little-endian f32 bytes) is finite and at most `limit` in
/// magnitude, in one pass (a correction before it is folded). Without a limit (`f32::INFINITY`)
/// only finiteness is checked.
pub fn check_values_le(y: &[u8], limit: f32) -> Result<(), Rejected> {
    if limit == f32::INFINITY {
        return finite_verdict(all_finite_le(y));
    }
    if let Some(ys) = f32_view(y) {
        let mut scan = GapScan::default();
        let chunks = ys.chunks_exact(8);
        for &v in chunks.remainder() {
            scan.note(0, v);
        }
        for chunk in chunks {
            for (k, &v) in chunk.iter().enumerate() {
                scan.note(k, v);
            }
        }
        if scan.within(limit) {
            return Ok(());
        }
    }
    exact_verdict(le_values(y).map(|v| (v, v)), limit)
}

fn finite_verdict(finite: bool) -> Result<(), Rejected> {
    if finite {
        Ok(())
    } else {
        Err(Rejected::NonFinite)
    }
}

/// The verdict value by value, from `(value, gap)` pairs: a non-finite value first, then a gap
/// over the limit. The checks' slow path: for copies a fast scan did not pass, and for buffers
/// that cannot be seen as f32.
fn exact_verdict(pairs: impl Iterator<Item = (f32, f32)>, limit: f32) -> Result<(), Rejected> {
    let mut far = false;
    for (value, gap) in pairs {
        if !value.is_finite() {
            return Err(Rejected::NonFinite);
        }
        // A NaN gap (a non-finite model value) is too far as well.
        far |= !matches!(
            gap.abs().partial_cmp(&limit),
            Some(Ordering::Less | Ordering::Equal)
        );
    }
    if far {
        Err(Rejected::TooFar)
    } else {
        Ok(())
    }
}

/// `bytes` seen as f32 values where that needs no copy: a little-endian machine and a 4-aligned
/// buffer (as allocations and windows are).
fn f32_view(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// A fast scan of gaps, lane by lane in plain f32 arithmetic so that the compiler vectorizes it
/// (per-lane boolean flags compiled to scalar loads, 6x slower than a memcpy of the same bytes).
/// `poison` turns NaN at a gap that is not finite (which a non-finite value makes it); `worst` is
/// the largest finite gap.
#[derive(Default)]
struct GapScan {
    poison: [f32; 8],
    worst: [f32; 8],
}

impl GapScan {
    #[inline(always)]
    fn note(&mut self, lane: usize, gap: f32) {
        let gap = gap.abs();
        self.poison[lane] += gap * 0.0;
        self.worst[lane] = if gap > self.worst[lane] {
            gap
        } else {
            self.worst[lane]
        };
    }

    /// Every gap finite and at most `limit` (so every value was finite).
    fn within(&self, limit: f32) -> bool {
        self.poison.iter().all(|&p| p == 0.0) && self.worst.iter().all(|&w| w <= limit)
    }
}

/// [`average_into_le`] of a copy that passes [`check_copy_le`]; a rejected copy leaves `x`
/// untouched.
pub fn average_checked_le(x: &mut [f32], y: &[u8], limit: f32) -> Result<(), Rejected> {
    check_copy_le(x, y, limit)?;
    average_into_le(x, y);
    Ok(())
}

/// [`pairwise_average_le`] of a copy that passes [`check_copy_le`]; a rejected copy leaves `x`
/// and `correction` untouched.
pub fn pairwise_checked_le(
    x: &mut [f32],
    y: &[u8],
    correction: &mut [f32],
    limit: f32,
) -> Result<(), Rejected> {
    check_copy_le(x, y, limit)?;
    pairwise_average_le(x, y, correction);
    Ok(())
}

/// One chunk of a fused average and publish: `x <- (x + y) / 2` as [`average_into_le`] computes
/// it, or with `correction` the pairwise step as [`pairwise_average_le`] computes it, and the new
/// `x` written to `out` as little-endian bytes (the node's window), in the same pass.
pub fn average_publish_le(x: &mut [f32], y: &[u8], out: &mut [u8], correction: Option<&mut [f32]>) {
    assert_eq!(
        4 * x.len(),
        y.len(),
        "averaging vectors of different lengths"
    );
    assert_eq!(
        y.len(),
        out.len(),
        "publishing into a chunk of a different length"
    );
    let pairs = x.iter_mut().zip(le_values(y)).zip(out.chunks_exact_mut(4));
    match correction {
        None => {
            for ((a, b), o) in pairs {
                *a = 0.5 * (*a + b);
                o.copy_from_slice(&a.to_le_bytes());
            }
        }
        Some(correction) => {
            assert_eq!(
                correction.len(),
                y.len() / 4,
                "correction of a different length"
            );
            for (((a, b), o), c) in pairs.zip(correction.iter_mut()) {
                let half_gap = 0.5 * (*a - b);
                *c = half_gap;
                *a -= half_gap;
                o.copy_from_slice(&a.to_le_bytes());
            }
        }
    }
}

/// `x <- x + correction`.
pub fn fold_correction(x: &mut [f32], correction: &[f32]) {
    assert_eq!(
        x.len(),
        correction.len(),
        "correction of a different length"
    );
    fold_with(x, correction.iter().copied());
}

/// [`fold_correction`] with the correction given as little-endian f32 bytes.
pub fn fold_correction_le(x: &mut [f32], correction: &[u8]) {
    assert_eq!(
        4 * x.len(),
        correction.len(),
        "correction of a different length"
    );
    fold_with(x, le_values(correction));
}

fn fold_with(x: &mut [f32], correction: impl Iterator<Item = f32>) {
    for (a, c) in x.iter_mut().zip(correction) {
        *a += c;
    }
}

/// The f32 values of little-endian bytes (a trailing partial value is ignored).
pub fn le_values(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Whether every little-endian f32 in `bytes` is finite (neither NaN nor infinite).
pub fn all_finite_le(bytes: &[u8]) -> bool {
    // Lane-wise so the compiler vectorizes; a short-circuiting `all` would stay scalar.
    let mut lanes = [true; 8];
    let chunks = bytes.chunks_exact(32);
    let tail = le_values(chunks.remainder()).all(f32::is_finite);
    for chunk in chunks {
        for (k, v) in le_values(chunk).enumerate() {
            lanes[k] &= v.is_finite();
        }
    }
    tail && lanes.iter().all(|&ok| ok)
}

/// `x` as little-endian f32 bytes, borrowed without a copy where the machine is little-endian.
pub fn le_bytes(x: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(x))
    } else {
        std::borrow::Cow::Owned(x.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// `max_k |x_k - y_k|`.
pub fn linf_distance(x: &[f32], y: &[f32]) -> f32 {
    // Eight independent lanes let the compiler vectorize the max; a single fold stays serial.
    let mut lanes = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            lanes[k] = lanes[k].max((a[k] - b[k]).abs());
        }
    }
    let tail = xr
        .iter()
        .zip(yr)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    lanes.iter().fold(tail, |m, v| m.max(*v))
}

/// The coordinate-wise mean of several vectors of equal length.
pub fn mean_of<'a>(models: impl IntoIterator<Item = &'a [f32]>) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut count = 0usize;
    for m in models {
        if sum.is_empty() {
            sum = vec![0.0; m.len()];
        }
        for (s, v) in sum.iter_mut().zip(m) {
            *s += f64::from(*v);
        }
        count += 1;
    }
    if count > 0 {
        for s in &mut sum {
            *s /= count as f64;
        }
    }
    sum
}

/// The spread of a set of models: the sum over models of the squared distance to their mean.
pub fn spread<'a>(models: impl IntoIterator<Item = &'a [f32]> + Clone) -> f64 {
    let mean = mean_of(models.clone());
    models
        .into_iter()
        .map(|m| {
            m.iter()
                .zip(&mean)
                .map(|(v, mu)| (f64::from(*v) - mu).powi(2))
                .sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// Values that exercise rounding: mixed signs, magnitudes far apart, subnormals.
    fn awkward(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|k| {
                let v: f32 = rng.random_range(-1.0..1.0);
                match k % 5 {
                    0 => v * 1e-3,
                    1 => v * 1e3,
                    2 => v * f32::MIN_POSITIVE,
                    _ => v,
                }
            })
            .collect()
    }

    #[test]
    fn the_fused_average_gives_the_separate_passes_bits_in_any_chunking() {
        let n = 1001;
        let (x0, y) = (awkward(n, 1), awkward(n, 2));
        let y_le: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        for pairwise in [false, true] {
            let mut expected = x0.clone();
            let mut expected_correction = vec![0.0f32; n];
            if pairwise {
                pairwise_average_le(&mut expected, &y_le, &mut expected_correction);
            } else {
                average_into_le(&mut expected, &y_le);
            }
            for chunk in [1, 16, 64, 1001] {
                let mut x = x0.clone();
                let mut correction = vec![0.0f32; n];
                let mut out = vec![0u8; 4 * n];
                for (k, ((xs, ys), os)) in x
                    .chunks_mut(chunk)
                    .zip(y_le.chunks(4 * chunk))
                    .zip(out.chunks_mut(4 * chunk))
                    .enumerate()
                {
                    let c = &mut correction[k * chunk..k * chunk + xs.len()];
                    average_publish_le(xs, ys, os, pairwise.then_some(c));
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&x),
                    bits(&expected),
                    "pairwise {pairwise}, chunk {chunk}"
                );
                let published: Vec<f32> = le_values(&out).collect();
                assert_eq!(bits(&published), bits(&expected));
                if pairwise {
                    assert_eq!(bits(&correction), bits(&expected_correction));
                }
            }
        }
    }

    #[test]
    fn the_check_without_a_limit_still_rejects_every_non_finite_value() {
        let x = vec![0.0f32; 19];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 7, 8, 18] {
                let mut y = [1e30f32; 19];
                y[at] = bad;
                let y_le: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
                assert_eq!(
                    check_copy_le(&x, &y_le, f32::INFINITY),
                    Err(Rejected::NonFinite)
                );
                assert_eq!(check_copy_le(&x, &y_le, 1.0), Err(Rejected::NonFinite));
            }
        }
        let far: Vec<u8> = [1e30f32; 19].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(check_copy_le(&x, &far, f32::INFINITY), Ok(()));
        assert_eq!(check_copy_le(&x, &far, 1.0), Err(Rejected::TooFar));
    }

    /// Both checks on `y` as given (4-aligned: read as f32 lanes) and shifted by one byte (read
    /// value by value): the two must agree; returns the verdict.
    fn check_both_ways(x: Option<&[f32]>, y: &[u8], limit: f32) -> Result<(), Rejected> {
        let mut shifted = vec![0u8; y.len() + 1];
        shifted[1..].copy_from_slice(y);
        let check = |y: &[u8]| match x {
            Some(x) => check_copy_le(x, y, limit),
            None => check_values_le(y, limit),
        };
        assert!(
            y.is_empty() || f32_view(y).is_some(),
            "the test copy is not aligned"
        );
        assert!(y.is_empty() || f32_view(&shifted[1..]).is_none());
        let verdict = check(y);
        assert_eq!(
            check(&shifted[1..]),
            verdict,
            "aligned and unaligned checks disagree"
        );
        verdict
    }

    #[test]
    fn a_copy_is_checked_against_the_model_aligned_or_not() {
        let x: Vec<f32> = (0..19).map(|k| k as f32).collect();
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        for at in [0, 5, 8, 15, 16, 18] {
            let mut y = x.clone();
            y[at] += 1.5;
            assert_eq!(check_both_ways(Some(&x), &le(&y), 1.5), Ok(()));
            assert_eq!(
                check_both_ways(Some(&x), &le(&y), 1.0),
                Err(Rejected::TooFar)
            );
            y[(at + 3) % 19] = f32::NAN;
            assert_eq!(
                check_both_ways(Some(&x), &le(&y), 1.0),
                Err(Rejected::NonFinite)
            );
            // A gap that overflows to infinity is too far, not non-finite: the copy is finite.
            let (mut huge, mut opposite) = (x.clone(), x.clone());
            huge[at] = 3e38;
            opposite[at] = -3e38;
            assert_eq!(
                check_both_ways(Some(&huge), &le(&opposite), 1e38),
                Err(Rejected::TooFar)
            );
            // A non-finite value in the model itself puts every copy too far from it.
            let mut broken = x.clone();
            broken[at] = f32::NAN;
            assert_eq!(
                check_both_ways(Some(&broken), &le(&x), 1e30),
                Err(Rejected::TooFar)
            );
        }
    }

    #[test]
    fn a_correction_is_checked_for_finiteness_and_magnitude_in_every_position() {
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let check_values_le = |y: &[u8], limit| check_both_ways(None, y, limit);
        // 19 values: two full lanes of 8 and a tail of 3, so every branch of the scan is reached.
        for at in [0, 5, 8, 15, 16, 18] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut c = [0.25f32; 19];
                c[at] = bad;
                assert_eq!(check_values_le(&le(&c), 1.0), Err(Rejected::NonFinite));
                assert_eq!(
                    check_values_le(&le(&c), f32::INFINITY),
                    Err(Rejected::NonFinite)
                );
                // A value too large elsewhere does not hide the non-finite one.
                c[(at + 1) % 19] = -5.0;
                assert_eq!(check_values_le(&le(&c), 1.0), Err(Rejected::NonFinite));
            }
            for far in [1.0001f32, -1.0001, 3e38] {
                let mut c = [-0.5f32; 19];
                c[at] = far;
                assert_eq!(check_values_le(&le(&c), 1.0), Err(Rejected::TooFar));
                assert_eq!(check_values_le(&le(&c), f32::INFINITY), Ok(()));
            }
        }
        // The limit itself is accepted, in either sign.
        let edge: Vec<f32> = (0..19)
            .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(check_values_le(&le(&edge), 1.0), Ok(()));
        assert_eq!(check_values_le(&[], 1.0), Ok(()));
    }

    #[test]
    fn geometric_local_steps_have_the_requested_mean() {
        let mut rng = StdRng::seed_from_u64(3);
        let steps = LocalSteps::Geometric(4.0);
        let n = 200_000;
        let total: u64 = (0..n).map(|_| steps.draw(&mut rng)).sum();
        let mean = total as f64 / n as f64;
        // Geometric(1/4) has variance (1-p)/p^2 = 12; the standard error over 2e5 draws is 0.0077.
        assert!((mean - 4.0).abs() < 0.04, "mean {mean}");
    }

    #[test]
    fn pairwise_average_conserves_the_sum() {
        let mut x = vec![1.0, -2.0, 5.0];
        let y = vec![3.0, 2.0, -1.0];
        let mut c = vec![9.0; 3]; // overwritten, not accumulated
        pairwise_average(&mut x, &y, &mut c);
        assert_eq!(x, vec![2.0, 0.0, 2.0]);
        let mut partner = y.clone();
        fold_correction(&mut partner, &c);
        assert_eq!(partner, x);
    }

    #[test]
    fn parses_flags_and_rejects_nonsense() {
        assert_eq!("4".parse::<LocalSteps>().unwrap(), LocalSteps::Fixed(4));
        assert_eq!(
            "geometric:2.5".parse::<LocalSteps>().unwrap(),
            LocalSteps::Geometric(2.5)
        );
        assert!("0".parse::<LocalSteps>().is_err());
        assert!("geometric:0.5".parse::<LocalSteps>().is_err());
        assert!("pushpull".parse::<Interaction>().is_err());
    }
}
