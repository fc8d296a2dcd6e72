//! E9 — rotary position embedding, rotate-half convention (HF Llama/Mixtral).
//!
//! For position `p` and `i < d/2`: `θᵢ = p · θ_base^(−2i/d)`,
//! ```text
//! x'ᵢ       = xᵢ·cos θᵢ − x_{i+d/2}·sin θᵢ
//! x'_{i+d/2} = x_{i+d/2}·cos θᵢ + xᵢ·sin θᵢ
//! ```
//! Backward is the rotation by `−θ` (the map is orthogonal):
//! `dxᵢ = dyᵢ·cos θᵢ + dy_{i+d/2}·sin θᵢ`, `dx_{i+d/2} = dy_{i+d/2}·cos θᵢ − dyᵢ·sin θᵢ`.
//!
//! Angles are formed as PyTorch forms them in float32 (`inv_freq = 1/θ_base^(2i/d)`
//! in f32, `θ = p·inv_freq` in f32), then `cos`/`sin` are evaluated in f64 and
//! rounded once, which matches HF's float32 table to within an ulp.

use alloc::vec::Vec;

use crate::config::{Config, Dims};
use crate::error::{Error, Result};

/// `cos θ` and `sin θ` for every position `< max_seq` and frequency `< d/2`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    max_seq: usize,
}

impl RopeTable {
    /// Builds the table `[max_seq, d/2]` with `θ_base = cfg.rope_theta()`.
    pub fn new(cfg: &Config, max_seq: usize) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let len = max_seq
            .checked_mul(half)
            .ok_or(Error::Overflow { what: "RoPE table" })?;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        cos.try_reserve_exact(len)
            .and_then(|_| sin.try_reserve_exact(len))
            .map_err(|_| Error::AllocationFailed { bytes: 8 * len })?;
        let theta = cfg.rope_theta() as f64;
        let d = cfg.head_dim as f32;
        let mut inv_freq: Vec<f32> = Vec::new();
        inv_freq
            .try_reserve_exact(half)
            .map_err(|_| Error::AllocationFailed { bytes: 4 * half })?;
        for i in 0..half {
            let expo = (2 * i) as f32 / d;
            let pow = libm::pow(theta, expo as f64) as f32;
            inv_freq.push(1.0f32 / pow);
        }
        for p in 0..max_seq {
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(libm::cos(angle) as f32);
                sin.push(libm::sin(angle) as f32);
            }
        }
        Ok(RopeTable {
            cos,
            sin,
            half,
            max_seq,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.cos.len() + self.sin.len()) * 4
    }

    /// Positions covered.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// E9 — rotates one head vector `x: [d]` at position `pos` in place (forward):
    /// `x'ᵢ = xᵢ cos θᵢ − x_{i+d/2} sin θᵢ`, `x'_{i+d/2} = x_{i+d/2} cos θᵢ + xᵢ sin θᵢ`.
    #[inline(always)]
    pub fn rotate(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (cos, sin) = (
            &self.cos[pos * h..pos * h + h],
            &self.sin[pos * h..pos * h + h],
        );
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }

    /// E27 (backward of E9) — backward of [`RopeTable::rotate`]: rotates a gradient
    /// `dy: [d]` by `−θ` in place: `dxᵢ = dyᵢ cos θᵢ + dy_{i+d/2} sin θᵢ`,
    /// `dx_{i+d/2} = dy_{i+d/2} cos θᵢ − dyᵢ sin θᵢ`.
    #[inline(always)]
    pub fn rotate_back(&self, dy: &mut [f32], pos: usize) {
        let h = self.half;
        let (cos, sin) = (
            &self.cos[pos * h..pos * h + h],
            &self.sin[pos * h..pos * h + h],
        );
        let (a, b) = dy.split_at_mut(h);
        for i in 0..h {
            let (g1, g2) = (a[i], b[i]);
            a[i] = g1 * cos[i] + g2 * sin[i];
            b[i] = g2 * cos[i] - g1 * sin[i];
        }
    }
}

/// E9 forward over the fused projection `qkv: [n, (h+2kv)·d]`: rotates the `h`
/// query heads and `kv` key heads of every row (row `r` is at position
/// `pos0 + r % t`); values are left alone. Uses `t, h, kv, d` of `dm`.
pub fn forward(qkv: &mut [f32], rope: &RopeTable, pos0: usize, dm: &Dims) {
    let (t, h, kv, d) = (dm.t, dm.h, dm.kv, dm.d);
    let q = (h + 2 * kv) * d;
    crate::kernels::vectorized(|| {
        for (r, row) in qkv.chunks_exact_mut(q).enumerate() {
            let pos = pos0 + r % t;
            for head in row[..(h + kv) * d].chunks_exact_mut(d) {
                rope.rotate(head, pos);
            }
        }
    })
}

/// E27 (backward of E9) — backward of [`forward`] on `dqkv: [n, (h+2kv)·d]`, in
/// place: each q and k head gradient is rotated by `−θ` ([`RopeTable::rotate_back`]).
/// Uses `t, h, kv, d` of `dm`.
pub fn backward(dqkv: &mut [f32], rope: &RopeTable, dm: &Dims) {
    let (t, h, kv, d) = (dm.t, dm.h, dm.kv, dm.d);
    let q = (h + 2 * kv) * d;
    crate::kernels::vectorized(|| {
        for (r, row) in dqkv.chunks_exact_mut(q).enumerate() {
            let pos = r % t;
            for head in row[..(h + kv) * d].chunks_exact_mut(d) {
                rope.rotate_back(head, pos);
            }
        }
    })
}
