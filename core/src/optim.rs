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
use crate::kernels::sqrt;
use crate::layout::alloc_zeroed;

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

/// AdamW state: both moments and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// First moment, parameter layout.
    pub m: Vec<f32>,
    /// Second moment, parameter layout.
    pub v: Vec<f32>,
    /// Steps taken so far (the next step is `step + 1`).
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `len` parameters.
    pub fn new(config: AdamWConfig, len: usize) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            m: alloc_zeroed(len)?,
            v: alloc_zeroed(len)?,
            step: 0,
        })
    }

    /// E16 — one AdamW update of `params` with `grads` (both `[P]`, the flat layout)
    /// at learning rate `lr`: `w ← w(1 − lr·wd)`, `m ← β1 m + (1−β1) g`,
    /// `v ← β2 v + (1−β2) g²`, `w ← w − lr · m̂ / (√v̂ + eps)`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.update_scaled(params, grads, lr, 1.0);
    }

    /// E16 (with E17's coefficient fused) — [`AdamW::update`] with every gradient multiplied by `grad_scale` first
    /// (`g ← grad_scale·g`, the clipping coefficient), fused into the same pass
    /// so that clipping costs no extra sweep over the gradients. With
    /// `grad_scale = 1` the multiplication is skipped, so both paths give
    /// bit-identical results to scaling the buffer in place.
    pub fn update_scaled(&mut self, params: &mut [f32], grads: &[f32], lr: f32, grad_scale: f32) {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let t = self.step as i32;
        // Scalars in f64 as Python computes them, rounded once.
        let bc1 = 1.0 - libm::pow(beta1 as f64, t as f64);
        let bc2 = 1.0 - libm::pow(beta2 as f64, t as f64);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = libm::sqrt(bc2) as f32;
        let decay = 1.0 - lr * weight_decay;
        let (w1, w2) = (1.0 - beta1, 1.0 - beta2);
        for (((w, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *w *= decay;
            let g = if grad_scale == 1.0 { g } else { g * grad_scale };
            *m += w1 * (g - *m);
            *v = *v * beta2 + w2 * g * g;
            let denom = sqrt(*v) / bc2_sqrt + eps;
            *w -= step_size * (*m / denom);
        }
    }
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
    // Four interleaved f64 partial sums (vectorises; a fixed order, so deterministic).
    let mut acc = [0.0f64; 4];
    let chunks = grads.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            acc[l] += (c[l] as f64) * (c[l] as f64);
        }
    }
    for (l, &g) in rest.iter().enumerate() {
        acc[l] += (g as f64) * (g as f64);
    }
    libm::sqrt((acc[0] + acc[2]) + (acc[1] + acc[3])) as f32
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
