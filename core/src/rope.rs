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

use crate::config::{angle, check_angles, inv_freq, Config, Dims};
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
    ///
    /// # Errors
    /// [`Error::Overflow`]/[`Error::AllocationFailed`] for the table size, and
    /// [`Error::InvalidConfig`] (`rope_theta`) if an angle of the table is not
    /// finite (a config [`Config::validate`] rejects; checked here too because
    /// `Config`'s fields are public).
    pub fn new(cfg: &Config, max_seq: usize) -> Result<Self> {
        let half = cfg.head_dim / 2;
        check_angles(cfg, max_seq)?;
        let len = max_seq
            .checked_mul(half)
            .ok_or(Error::Overflow { what: "RoPE table" })?;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        cos.try_reserve_exact(len)
            .and_then(|_| sin.try_reserve_exact(len))
            .map_err(|_| Error::AllocationFailed { bytes: 8 * len })?;
        let theta = cfg.rope_theta() as f64;
        let mut inv: Vec<f32> = Vec::new();
        inv.try_reserve_exact(half)
            .map_err(|_| Error::AllocationFailed { bytes: 4 * half })?;
        for i in 0..half {
            inv.push(inv_freq(theta, i, cfg.head_dim));
        }
        for p in 0..max_seq {
            for &f in &inv {
                let a = angle(p, f) as f64;
                cos.push(libm::cos(a) as f32);
                sin.push(libm::sin(a) as f32);
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

    /// `Err` unless `x` is one head (`2·half` elements) and `pos < max_seq`.
    fn check(&self, x: &[f32], pos: usize) -> Result<()> {
        if x.len() != 2 * self.half {
            return Err(Error::ShapeMismatch {
                arg: "x (one head of d elements)",
                expected: 2 * self.half,
                actual: x.len(),
            });
        }
        if pos >= self.max_seq {
            return Err(Error::WorkspaceTooSmall {
                dim: "RoPE table position",
                requested: pos,
                planned: self.max_seq - 1,
            });
        }
        Ok(())
    }

    /// E9 — rotates one head vector `x: [d]` at position `pos` in place (forward):
    /// `x'ᵢ = xᵢ cos θᵢ − x_{i+d/2} sin θᵢ`, `x'_{i+d/2} = x_{i+d/2} cos θᵢ + xᵢ sin θᵢ`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] unless `x.len() == d`; [`Error::WorkspaceTooSmall`]
    /// if `pos >= max_seq` (`x` is then untouched).
    #[inline]
    pub fn rotate(&self, x: &mut [f32], pos: usize) -> Result<()> {
        self.check(x, pos)?;
        self.rotate_unchecked(x, pos);
        Ok(())
    }

    /// E27 (backward of E9) — backward of [`RopeTable::rotate`]: rotates a gradient
    /// `dy: [d]` by `−θ` in place: `dxᵢ = dyᵢ cos θᵢ + dy_{i+d/2} sin θᵢ`,
    /// `dx_{i+d/2} = dy_{i+d/2} cos θᵢ − dyᵢ sin θᵢ`.
    ///
    /// # Errors
    /// As [`RopeTable::rotate`].
    #[inline]
    pub fn rotate_back(&self, dy: &mut [f32], pos: usize) -> Result<()> {
        self.check(dy, pos)?;
        self.rotate_back_unchecked(dy, pos);
        Ok(())
    }

    /// [`RopeTable::rotate`] on a head and position the caller checked
    /// (`x.len() == d`, `pos < max_seq`).
    #[inline(always)]
    fn rotate_unchecked(&self, x: &mut [f32], pos: usize) {
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

    /// [`RopeTable::rotate_back`] on a checked head and position.
    #[inline(always)]
    fn rotate_back_unchecked(&self, dy: &mut [f32], pos: usize) {
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

    /// `Err` unless `qkv` holds whole rows of `(h+2kv)·d` with `d` this
    /// table's head dim, and positions `pos0 .. pos0 + t` are in the table.
    fn check_rows(&self, qkv: &[f32], pos0: usize, dm: &Dims) -> Result<()> {
        if dm.d != 2 * self.half {
            return Err(Error::ShapeMismatch {
                arg: "dims.d (the RoPE table's head dim)",
                expected: 2 * self.half,
                actual: dm.d,
            });
        }
        let q = (dm.h + 2 * dm.kv) * dm.d;
        if q == 0 || !qkv.len().is_multiple_of(q) {
            return Err(Error::ShapeMismatch {
                arg: "qkv (whole rows of (h+2kv)·d)",
                expected: q,
                actual: qkv.len(),
            });
        }
        if qkv.is_empty() {
            return Ok(());
        }
        if dm.t == 0 {
            return Err(Error::EmptyInput { arg: "dims.t" });
        }
        let end = pos0.saturating_add(dm.t.min(qkv.len() / q));
        if end > self.max_seq {
            return Err(Error::WorkspaceTooSmall {
                dim: "RoPE table positions (pos0 + t)",
                requested: end,
                planned: self.max_seq,
            });
        }
        Ok(())
    }
}

/// E9 forward over the fused projection `qkv: [n, (h+2kv)·d]`: rotates the `h`
/// query heads and `kv` key heads of every row (row `r` is at position
/// `pos0 + r % t`); values are left alone. Uses `t, h, kv, d` of `dm`.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `qkv` is not whole rows or `dm.d` is not the
/// table's head dim, [`Error::EmptyInput`] for `t = 0`, [`Error::WorkspaceTooSmall`]
/// if `pos0 + t` exceeds the table. Checked once per call, before any write.
pub fn forward(qkv: &mut [f32], rope: &RopeTable, pos0: usize, dm: &Dims) -> Result<()> {
    rope.check_rows(qkv, pos0, dm)?;
    let (t, h, kv, d) = (dm.t, dm.h, dm.kv, dm.d);
    let q = (h + 2 * kv) * d;
    crate::kernels::vectorized(
        #[inline(always)]
        || {
            for (r, row) in qkv.chunks_exact_mut(q).enumerate() {
                let pos = pos0 + r % t;
                for head in row[..(h + kv) * d].chunks_exact_mut(d) {
                    rope.rotate_unchecked(head, pos);
                }
            }
        },
    );
    Ok(())
}

/// E27 (backward of E9) — backward of [`forward`] on `dqkv: [n, (h+2kv)·d]`, in
/// place: each q and k head gradient is rotated by `−θ` ([`RopeTable::rotate_back`]).
/// Uses `t, h, kv, d` of `dm`.
///
/// # Errors
/// As [`forward`] with `pos0 = 0`.
pub fn backward(dqkv: &mut [f32], rope: &RopeTable, dm: &Dims) -> Result<()> {
    rope.check_rows(dqkv, 0, dm)?;
    let (t, h, kv, d) = (dm.t, dm.h, dm.kv, dm.d);
    let q = (h + 2 * kv) * d;
    crate::kernels::vectorized(
        #[inline(always)]
        || {
            for (r, row) in dqkv.chunks_exact_mut(q).enumerate() {
                let pos = r % t;
                for head in row[..(h + kv) * d].chunks_exact_mut(d) {
                    rope.rotate_back_unchecked(head, pos);
                }
            }
        },
    );
    Ok(())
}
