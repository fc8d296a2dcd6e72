//! E16 — AdamW (as `torch.optim.AdamW`), E17 — global-norm gradient clipping
//! (as `torch.nn.utils.clip_grad_norm_`), E18 — warmup + cosine LR schedule.
//!
//! AdamW, step `t ≥ 1`, over the flat buffers (`m`, `v` share the parameter layout):
//! ```text
//! w ← w − lr·wd·w
//! m ← β1·m + (1−β1)·g          (computed as torch does: m + (1−β1)·(g − m))
//! v ← β2·v + (1−β2)·g²
//! w ← w − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
//! ```

use alloc::vec::Vec;

use crate::config::{check_param, Domain};
use crate::error::{Error, Result};
use crate::kernels::adamw::{adamw_pass, adamw_pass_zeroing, adamw_pass_zeroing_bf16, AdamWStep};
use crate::kernels::first_non_finite;
use crate::layout::alloc_zeroed;
use crate::parallel::Pool;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1 (0.9).
    pub beta1: f32,
    /// β2 (0.999).
    pub beta2: f32,
    /// eps (1e-8).
    pub eps: f32,
    /// Decoupled weight decay (0.01), applied to all parameters.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks every field's domain.
    pub fn validate(&self) -> Result<()> {
        let unit = |param, x: f32| {
            if (0.0..1.0).contains(&x) {
                Ok(())
            } else {
                Err(Error::InvalidParameter {
                    param,
                    expected: "in [0, 1)",
                    actual: x as f64,
                })
            }
        };
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        check_param("eps", self.eps, Domain::Positive)?;
        check_param("weight_decay", self.weight_decay, Domain::NonNegative)
    }
}

/// The largest step count an [`AdamW`] state may hold: `2⁵³`.
///
/// The bias corrections `1 − β1ᵗ`, `1 − β2ᵗ` are computed in f64 from the
/// `u64` step `t` (as Python computes them from its int step). Every integer
/// `t ≤ 2⁵³` converts to f64 exactly, so up to this bound the correction is
/// that of step `t` itself and consecutive steps stay distinct; above it `t`
/// would be rounded. (For β ∈ [0, 1) both corrections are already exactly 1
/// long before: `0.999ᵗ < 2⁻¹⁰⁷⁴` once `t > 7.5·10⁵`.) No run reaches it —
/// 2⁵³ steps at one per nanosecond take 104 days — so a larger step, e.g.
/// `u64::MAX` read from a corrupt checkpoint, is refused by [`AdamW::set_step`],
/// and [`AdamW::update`] refuses to step past it ([`Error::Overflow`]) instead
/// of wrapping.
pub const MAX_STEP: u64 = 1 << 53;

/// AdamW state: both moments and the step count.
///
/// The fields are private so that no state the update cannot use is ever
/// stored: the hyper-parameters are validated by [`AdamW::new`] /
/// [`AdamW::set_config`], the moments keep the length they were made with and
/// are finite with `v ≥ 0` ([`AdamW::set_moments`]), and the step is at most
/// [`MAX_STEP`] ([`AdamW::set_step`]). A checkpoint loader restores a state
/// through these setters, each of which leaves the state untouched on error.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
}

impl AdamW {
    /// Zero moments for `len` parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a config outside its domain
    /// ([`AdamWConfig::validate`]), [`Error::AllocationFailed`].
    pub fn new(config: AdamWConfig, len: usize) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            m: alloc_zeroed(len)?,
            v: alloc_zeroed(len)?,
            step: 0,
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Replaces the hyper-parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] as [`AdamWConfig::validate`] (NaN β, `eps ≤ 0`, …);
    /// the state is then unchanged.
    pub fn set_config(&mut self, config: AdamWConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// First moment, parameter layout.
    pub fn m(&self) -> &[f32] {
        &self.m
    }

    /// Second moment, parameter layout.
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    /// Number of parameters the state covers.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether the state covers no parameter.
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Steps taken so far (the next step is `step + 1`).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Sets the step count, e.g. to the `step` read from a checkpoint. This is
    /// the validation a checkpoint loader calls on a loaded step.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`"step"`) if `step > MAX_STEP` (2⁵³; see
    /// [`MAX_STEP`] for why that bound); the state is then unchanged.
    pub fn set_step(&mut self, step: u64) -> Result<()> {
        if step > MAX_STEP {
            return Err(Error::InvalidParameter {
                param: "step",
                expected: "<= 2^53 (AdamW's bias correction takes the step exactly in f64)",
                actual: step as f64,
            });
        }
        self.step = step;
        Ok(())
    }

    /// Copies both moments in (e.g. from a checkpoint).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] unless both have [`AdamW::len`] elements,
    /// [`Error::NonFinite`] (`"m"`/`"v"`) for a NaN/Inf entry,
    /// [`Error::InvalidParameter`] (`"v"`) for a negative second moment (its
    /// square root would be NaN). Everything is checked before anything is
    /// copied: on error the state is unchanged.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        for (arg, x) in [("m", m), ("v", v)] {
            if x.len() != self.m.len() {
                return Err(Error::ShapeMismatch {
                    arg,
                    expected: self.m.len(),
                    actual: x.len(),
                });
            }
            if let Some(index) = first_non_finite(x) {
                return Err(Error::NonFinite { what: arg, index });
            }
        }
        if let Some(&neg) = v.iter().find(|&&x| x < 0.0) {
            return Err(Error::InvalidParameter {
                param: "v",
                expected: ">= 0 (a second moment)",
                actual: neg as f64,
            });
        }
        self.m.copy_from_slice(m);
        self.v.copy_from_slice(v);
        Ok(())
    }

    /// E16 — one AdamW update of `params` with `grads` (both `[P]`, the flat layout)
    /// at learning rate `lr`: `w ← w(1 − lr·wd)`, `m ← β1 m + (1−β1) g`,
    /// `v ← β2 v + (1−β2) g²`, `w ← w − lr · m̂ / (√v̂ + eps)`.
    ///
    /// # Errors
    /// As [`AdamW::update_scaled`].
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) -> Result<()> {
        self.update_scaled(params, grads, lr, 1.0)
    }

    /// E16 (with E17's coefficient fused) — [`AdamW::update`] with every gradient multiplied by `grad_scale` first
    /// (`g ← grad_scale·g`, the clipping coefficient), fused into the same pass
    /// so that clipping costs no extra sweep over the gradients. With
    /// `grad_scale = 1` the multiplication is skipped, so both paths give
    /// bit-identical results to scaling the buffer in place.
    ///
    /// # Errors
    /// Checked before any state changes: [`Error::ShapeMismatch`] unless
    /// `params` and `grads` have [`AdamW::len`] elements;
    /// [`Error::InvalidParameter`] for `lr` or `grad_scale` not finite and
    /// `>= 0`; [`Error::Overflow`] if the step count is already [`MAX_STEP`];
    /// [`Error::NonFinite`] for a NaN/Inf gradient, or a scaled gradient so
    /// large (`|g| ≥ √f32::MAX`) that `g²` would make the second moment
    /// infinite. After the update, [`Error::NonFinite`] (`"parameters"`) if a
    /// parameter became NaN/Inf (e.g. an `lr` so large that `w` overflows): the
    /// step is then taken and the state must be discarded.
    pub fn update_scaled(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        self.precheck(params.len(), grads.len(), lr, grad_scale)?;
        check_grads(grads, grad_scale)?;
        let s = self.advance(lr, grad_scale);
        adamw_pass(params, grads, &mut self.m, &mut self.v, s);
        if let Some(index) = first_non_finite(params) {
            return Err(Error::NonFinite {
                what: "parameters after the AdamW update",
                index,
            });
        }
        Ok(())
    }

    /// [`AdamW::update_scaled`] with its passes split over fixed parameter
    /// ranges run on `pool`: the gradient check, then the update. The update
    /// is elementwise, so the result is bit-identical to [`AdamW::update_scaled`]
    /// for every thread count; so are the errors (the first bad index).
    ///
    /// # Errors
    /// As [`AdamW::update_scaled`].
    pub fn update_scaled_with(
        &mut self,
        pool: &Pool,
        params: &mut [f32],
        grads: &[f32],
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        self.ranged(pool, params, Grads::Read(grads), None, lr, grad_scale, None)
    }

    /// [`AdamW::update_scaled_with`] that also zeroes the gradients in the
    /// same pass ([`adamw_pass_zeroing`]: each block of `g` is written to 0
    /// right after it is read), so that the buffer is ready for the next
    /// step's accumulation without a separate sweep. `params` and the moments
    /// get exactly [`AdamW::update_scaled_with`]'s bits.
    ///
    /// # Errors
    /// As [`AdamW::update_scaled`]. An error found before the update (shape,
    /// `lr`, a non-finite gradient, …) leaves everything untouched, `grads`
    /// included; after the update (`"parameters after the AdamW update"`),
    /// `grads` is zero like the rest of the taken step.
    pub fn update_scaled_zeroing_with(
        &mut self,
        pool: &Pool,
        params: &mut [f32],
        grads: &mut [f32],
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        self.ranged(pool, params, Grads::Zero(grads), None, lr, grad_scale, None)
    }

    /// [`AdamW::update_scaled_zeroing_with`] that also refreshes `copy`, the
    /// bf16 copy of the parameters that a mixed-precision model's GEMMs read,
    /// in the same pass ([`adamw_pass_zeroing_bf16`]: `copy[i] ←
    /// round_bf16(w[i])` behind each block's update). One sweep reads `w, g,
    /// m, v` and writes `w, m, v, g = 0` and the copy: `4·(4 + 4) + 2` bytes
    /// per parameter.
    ///
    /// # Errors
    /// As [`AdamW::update_scaled_zeroing_with`]; [`Error::ShapeMismatch`]
    /// (`"bf16 copy"`) unless `copy` has [`AdamW::len`] elements. After the
    /// update, [`Error::NonFinite`] (`"parameters after the AdamW update"`) as
    /// there (a finite `w` always rounds to a finite bf16 below `bf16::MAX`'s
    /// rounding edge, `3.3961e38`; beyond it the copy holds ±∞ and the f32
    /// check cannot see it, so the copy is checked too:
    /// `"bf16 copy after the AdamW update"`).
    #[allow(clippy::too_many_arguments)] // reason: pool, the four buffers of the sweep, the copy, lr, the clipping scale
    pub fn update_scaled_zeroing_bf16_with(
        &mut self,
        pool: &Pool,
        params: &mut [f32],
        grads: &mut [f32],
        copy: &mut [u16],
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        self.update_zeroing_normed(pool, params, grads, Some(copy), lr, grad_scale, None)
    }

    /// The trainer's update: [`AdamW::update_scaled_zeroing_with`] (`copy:
    /// None`) or [`AdamW::update_scaled_zeroing_bf16_with`] (`Some`), told
    /// `norm_sq`, the f64 `Σ g²` of exactly these gradients (the trainer's own
    /// reduction, before any hook could change them). Every `|g_i| ≤ √Σ g²`,
    /// so a finite `norm_sq` with `√norm_sq · grad_scale` well below
    /// `√f32::MAX` proves what the gradient pass would check, and that
    /// sweep over the gradients is skipped; `None` (or a larger one) runs it.
    #[allow(clippy::too_many_arguments)] // reason: the update's buffers and scalars, plus the caller's Σg²
    pub(crate) fn update_zeroing_normed(
        &mut self,
        pool: &Pool,
        params: &mut [f32],
        grads: &mut [f32],
        copy: Option<&mut [u16]>,
        lr: f32,
        grad_scale: f32,
        norm_sq: Option<f64>,
    ) -> Result<()> {
        if let Some(copy) = &copy {
            if copy.len() != self.m.len() {
                return Err(Error::ShapeMismatch {
                    arg: "bf16 copy",
                    expected: self.m.len(),
                    actual: copy.len(),
                });
            }
        }
        self.ranged(
            pool,
            params,
            Grads::Zero(grads),
            copy,
            lr,
            grad_scale,
            norm_sq,
        )
    }

    /// The pooled update of [`AdamW::update_scaled_with`] and
    /// [`AdamW::update_scaled_zeroing_with`]; `norm_sq` as in
    /// [`AdamW::update_zeroing_normed`].
    #[allow(clippy::too_many_arguments)] // reason: the update's buffers and scalars, plus the caller's Σg²
    fn ranged(
        &mut self,
        pool: &Pool,
        params: &mut [f32],
        grads: Grads<'_>,
        copy: Option<&mut [u16]>,
        lr: f32,
        grad_scale: f32,
        norm_sq: Option<f64>,
    ) -> Result<()> {
        let len = grads.read().len();
        self.precheck(params.len(), len, lr, grad_scale)?;
        let chunk = range_len(len);
        // Half the bound: the f64 sum may round below the largest g² by a
        // relative n·2⁻⁵³, far inside the margin.
        let proven = norm_sq.is_some_and(|sq| {
            sq.is_finite()
                && libm::sqrt(sq) * f64::from(grad_scale) < 0.5 * f64::from(MAX_SAFE_GRAD)
        });
        // Check: per range (any non-finite, max |g|), then in range order.
        let mut checks = [(false, 0.0f32); PARAM_RANGES];
        if !proven {
            let g = grads.read();
            pool.for_each_mut(&mut checks, |r, out| {
                let lo = (r * chunk).min(len);
                let hi = ((r + 1) * chunk).min(len);
                *out = grad_stats(&g[lo..hi]);
            });
        }
        if checks
            .iter()
            .any(|c| c.0 || c.1 * grad_scale >= MAX_SAFE_GRAD)
        {
            return check_grads(grads.read(), grad_scale);
        }
        let s = self.advance(lr, grad_scale);
        let mut gc = grads.chunks(chunk);
        let (mut pc, mut mc, mut vc) = (
            params.chunks_mut(chunk),
            self.m.chunks_mut(chunk),
            self.v.chunks_mut(chunk),
        );
        let has_copy = copy.is_some();
        let mut cc = copy.map(|c| c.chunks_mut(chunk));
        let mut parts: [Option<AdamChunk>; PARAM_RANGES] = core::array::from_fn(|_| {
            Some(AdamChunk {
                w: pc.next()?,
                g: gc.next()?,
                m: mc.next()?,
                v: vc.next()?,
                copy: cc.as_mut().and_then(Iterator::next),
                bad: true,
            })
        });
        pool.for_each_mut(&mut parts, |_, c| {
            if let Some(c) = c {
                c.bad = match (&mut c.g, &mut c.copy) {
                    (Grads::Read(g), _) => {
                        adamw_pass(c.w, g, c.m, c.v, s);
                        true // not checked in the pass: scanned below
                    }
                    (Grads::Zero(g), None) => adamw_pass_zeroing(c.w, g, c.m, c.v, s),
                    (Grads::Zero(g), Some(b)) => adamw_pass_zeroing_bf16(c.w, g, c.m, c.v, b, s),
                };
            }
        });
        // The zeroing passes checked their output block by block; only a
        // flagged range (or a pass that does not check) needs the scans below,
        // which locate the first bad index.
        if !parts.iter().flatten().any(|c| c.bad) {
            return Ok(());
        }
        // A finite w beyond bf16's rounding edge (≈ 3.3961e38) rounds to ±∞:
        // the f32 check cannot see it, so the copy is checked too.
        let copy_err = has_copy
            .then(|| {
                parts.iter().enumerate().find_map(|(r, p)| match p {
                    Some(AdamChunk { copy: Some(b), .. }) => {
                        crate::kernels::bf16::first_non_finite(b).map(|i| r * chunk + i)
                    }
                    _ => None,
                })
            })
            .flatten();
        if let Some(index) = first_non_finite(params) {
            return Err(Error::NonFinite {
                what: "parameters after the AdamW update",
                index,
            });
        }
        if let Some(index) = copy_err {
            return Err(Error::NonFinite {
                what: "bf16 copy after the AdamW update",
                index,
            });
        }
        Ok(())
    }

    /// The checks of an update that need no pass over the gradients.
    fn precheck(&self, params: usize, grads: usize, lr: f32, grad_scale: f32) -> Result<()> {
        for (arg, len) in [("params", params), ("grads", grads)] {
            if len != self.m.len() {
                return Err(Error::ShapeMismatch {
                    arg,
                    expected: self.m.len(),
                    actual: len,
                });
            }
        }
        check_param("lr", lr, Domain::NonNegative)?;
        check_param("grad_scale", grad_scale, Domain::NonNegative)?;
        if self.step >= MAX_STEP {
            return Err(Error::Overflow {
                what: "AdamW step count (at most 2^53)",
            });
        }
        Ok(())
    }

    /// Increments the step and returns its scalars.
    fn advance(&mut self, lr: f32, grad_scale: f32) -> AdamWStep {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        // t ≤ 2⁵³ converts to f64 exactly (see MAX_STEP); no truncation.
        let t = self.step as f64;
        // Scalars in f64 as Python computes them, rounded once.
        let bc1 = 1.0 - libm::pow(beta1 as f64, t);
        let bc2 = 1.0 - libm::pow(beta2 as f64, t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = libm::sqrt(bc2) as f32;
        let decay = 1.0 - lr * weight_decay;
        let (w1, w2) = (1.0 - beta1, 1.0 - beta2);
        AdamWStep {
            decay,
            grad_scale,
            w1,
            beta2,
            w2,
            bc2_sqrt,
            eps,
            step_size,
        }
    }
}

/// Fixed number of parameter ranges of the pooled passes (AdamW, the
/// gradient reduction and norm of data-parallel training).
pub const PARAM_RANGES: usize = 32;

/// Elements per range for `len` parameters: `⌈len/PARAM_RANGES⌉` rounded up
/// to 64 (whole vectors; at most `PARAM_RANGES` ranges).
pub fn range_len(len: usize) -> usize {
    len.div_ceil(PARAM_RANGES).next_multiple_of(64).max(64)
}

/// One range of an AdamW update.
struct AdamChunk<'a> {
    w: &'a mut [f32],
    g: Grads<'a>,
    m: &'a mut [f32],
    v: &'a mut [f32],
    /// The range of the bf16 copy to refresh (mixed precision).
    copy: Option<&'a mut [u16]>,
    /// Set by the pass: the range may hold a non-finite result (a pass that
    /// does not check its output leaves it `true`).
    bad: bool,
}

/// The gradients of an update: only read, or read and zeroed.
enum Grads<'a> {
    Read(&'a [f32]),
    Zero(&'a mut [f32]),
}

impl<'a> Grads<'a> {
    fn read(&self) -> &[f32] {
        match self {
            Grads::Read(g) => g,
            Grads::Zero(g) => g,
        }
    }

    /// Consecutive ranges of `chunk` elements, of the same kind.
    fn chunks(self, chunk: usize) -> impl Iterator<Item = Grads<'a>> {
        let (mut r, mut z) = match self {
            Grads::Read(g) => (Some(g.chunks(chunk)), None),
            Grads::Zero(g) => (None, Some(g.chunks_mut(chunk))),
        };
        core::iter::from_fn(move || match (&mut r, &mut z) {
            (Some(r), _) => r.next().map(Grads::Read),
            (_, Some(z)) => z.next().map(Grads::Zero),
            _ => None,
        })
    }
}

/// (any NaN/Inf, max |g|) of `grads`, one vectorisable pass.
pub(crate) fn grad_stats(grads: &[f32]) -> (bool, f32) {
    let (mut bad, mut max) = (false, 0.0f32);
    for &g in grads {
        bad |= !g.is_finite();
        let a = g.abs();
        max = if a > max { a } else { max };
    }
    (bad, max)
}

/// E17 — `Σ g²` of `grads` in f64: 16 interleaved partial sums folded by
/// halving (`kernels::rows::sum_sq_f64`; a fixed order, so deterministic).
/// [`global_norm`] is its square root.
pub(crate) fn sum_sq(grads: &[f32]) -> f64 {
    crate::kernels::rows::sum_sq_f64(grads)
}

/// `a ← a + b`, `b ← 0`, returning [`sum_sq`]`(a)` of the sums — the last
/// level of the trainer's gradient reduce and the range's `Σ g²` in one
/// sweep, bit-identical to the add, the zeroing and then [`sum_sq`] (the same
/// values summed in the same lanes and order).
pub(crate) fn add_zero_sum_sq(a: &mut [f32], b: &mut [f32]) -> f64 {
    crate::kernels::rows::add_zero_sum_sq_f64(a, b)
}

/// `sqrt(f32::MAX)`: a gradient at least this large (after scaling) would
/// square to `+∞` in the second moment.
const MAX_SAFE_GRAD: f32 = 1.844_674_3e19;

/// `Err(NonFinite)` if a gradient is NaN/Inf, or `|grad_scale·g| ≥ √f32::MAX`.
/// One branch-free pass (the max of `|g|` vectorises; NaN is caught by the
/// finiteness fold), located only on a hit.
fn check_grads(grads: &[f32], grad_scale: f32) -> Result<()> {
    let (bad, max) = grad_stats(grads);
    if bad {
        let index = first_non_finite(grads).unwrap_or(0);
        return Err(Error::NonFinite {
            what: "gradients",
            index,
        });
    }
    if max * grad_scale >= MAX_SAFE_GRAD {
        let index = grads
            .iter()
            .position(|g| g.abs() * grad_scale >= MAX_SAFE_GRAD)
            .unwrap_or(0);
        return Err(Error::NonFinite {
            what: "AdamW second moment (gradient beyond sqrt(f32::MAX))",
            index,
        });
    }
    Ok(())
}

/// Warmup + cosine schedule (E18), 0-based step `s`:
/// `lr·(s+1)/warmup` for `s < warmup`; then
/// `min_lr + ½(lr − min_lr)(1 + cos(π·(s − warmup)/(total − warmup)))` for `s < total`;
/// `min_lr` after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate.
    pub min_lr: f32,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps (warmup included).
    pub total: u64,
}

impl LrSchedule {
    /// A constant learning rate.
    pub const fn constant(lr: f32) -> Self {
        LrSchedule {
            lr,
            min_lr: lr,
            warmup: 0,
            total: 0,
        }
    }

    /// Checks the schedule's domain.
    pub fn validate(&self) -> Result<()> {
        for (param, x) in [("lr", self.lr), ("min_lr", self.min_lr)] {
            check_param(param, x, Domain::NonNegative)?;
        }
        if self.warmup > self.total && self.total > 0 {
            return Err(Error::InvalidParameter {
                param: "warmup",
                expected: "<= total",
                actual: self.warmup as f64,
            });
        }
        Ok(())
    }

    /// E18 — the learning rate at 0-based step `s` (warmup, then cosine to `min_lr`).
    pub fn at(&self, s: u64) -> f32 {
        if s < self.warmup {
            return (self.lr as f64 * (s + 1) as f64 / self.warmup as f64) as f32;
        }
        if s >= self.total {
            return self.min_lr;
        }
        let progress = (s - self.warmup) as f64 / (self.total - self.warmup) as f64;
        let (lr, min) = (self.lr as f64, self.min_lr as f64);
        (min + 0.5 * (lr - min) * (1.0 + libm::cos(core::f64::consts::PI * progress))) as f32
    }
}

/// E17 — global L2 norm of `grads` (accumulated in f64).
pub fn global_norm(grads: &[f32]) -> f32 {
    // 16 interleaved f64 partial sums (a fixed order, so deterministic).
    libm::sqrt(sum_sq(grads)) as f32
}

/// E17 — the clipping coefficient of `clip_grad_norm_` for a gradient of
/// global norm `norm`: `max_norm / (norm + 1e-6)` when that is `< 1`, else 1.
pub fn clip_coef(norm: f32, max_norm: f32) -> f32 {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        coef
    } else {
        1.0
    }
}

/// E17 — clips `grads` in place to global norm `max_norm` as
/// `clip_grad_norm_` does: `coef = max_norm / (norm + 1e-6)`, applied when
/// `coef < 1`. Returns the pre-clip norm.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = global_norm(grads);
    let coef = clip_coef(norm, max_norm);
    if coef < 1.0 {
        grads.iter_mut().for_each(|g| *g *= coef);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Deterministic values with a wide spread of magnitudes and signs.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let m = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                m * [1e-3f32, 1.0, 3e4][(s % 3) as usize]
            })
            .collect()
    }

    /// The documented order, written out plainly: lane `i mod 16`, then
    /// halving 8, 4, 2, 1.
    fn oracle(g: &[f32]) -> f64 {
        let mut lanes = [0.0f64; 16];
        for (i, &x) in g.iter().enumerate() {
            lanes[i % 16] += (x as f64) * (x as f64);
        }
        for w in [8, 4, 2, 1] {
            for l in 0..w {
                lanes[l] += lanes[l + w];
            }
        }
        lanes[0]
    }

    #[test]
    fn sum_sq_is_the_documented_lane_order_bit_for_bit() {
        for n in (0..100).chain([1000, 4099]) {
            let g = values(n, n as u32);
            assert_eq!(sum_sq(&g).to_bits(), oracle(&g).to_bits(), "n {n}");
            #[cfg(feature = "std")]
            {
                let portable = crate::kernels::cpu::with_portable_elementwise(|| sum_sq(&g));
                assert_eq!(portable.to_bits(), oracle(&g).to_bits(), "portable n {n}");
            }
        }
        // Exact on small integers: Σ_{i<n} (i mod 7)² in closed form.
        let g: Vec<f32> = (0..7000).map(|i| (i % 7) as f32).collect();
        assert_eq!(sum_sq(&g), 1000.0 * 91.0);
    }

    #[test]
    fn add_zero_sum_sq_is_the_add_then_sum_sq() {
        for n in (0..70).chain([1000, 4099]) {
            let (mut a, mut b) = (values(n, 3 * n as u32), values(n, 7 * n as u32 + 1));
            let sums: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let (mut a2, mut b2) = (a.clone(), b.clone());
            let sq = add_zero_sum_sq(&mut a, &mut b);
            assert_eq!(sq.to_bits(), oracle(&sums).to_bits(), "n {n}");
            assert!(a.iter().zip(&sums).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(b.iter().all(|&y| y.to_bits() == 0));
            #[cfg(feature = "std")]
            {
                let sq2 = crate::kernels::cpu::with_portable_elementwise(|| {
                    add_zero_sum_sq(&mut a2, &mut b2)
                });
                assert_eq!(sq2.to_bits(), sq.to_bits(), "portable n {n}");
                assert_eq!(a2, a);
                assert!(b2.iter().all(|&y| y.to_bits() == 0));
            }
        }
    }
}
