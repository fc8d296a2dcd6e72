//! `MoETransformer`: the parameters (one flat buffer + layout), the forward
//! pass, and the backward pass in exact reverse order.
//!
//! ```text
//! tokens ─ embed ─┬─ [ x += Attn(RMSNorm(x)) ; x += MoE(RMSNorm(x)) ] × L ─ RMSNorm ─ lm_head ─ logits
//! ```

use alloc::vec::Vec;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::arena::{Acts, AttnMemory, LayerActs, Memory, Mode, Recompute};
use crate::attention::flash;
pub use crate::config::TokenId;
use crate::config::{check_param, Config, Dims, Domain};
use crate::error::{Error, Result};
use crate::kernels::{bf16, first_non_finite};
use crate::kv_cache::KvCache;
use crate::layout::{alloc_zeroed, Layout};
use crate::linear::{Accum, Weight};
use crate::loss;
use crate::moe::{self, MoeGrads};
use crate::rope::RopeTable;
use crate::workspace::Workspace;
use crate::{attention, embedding, linear, rmsnorm, rope};

/// The model: config, layout and the flat parameter buffer (in `f32` or
/// bf16, see [`Precision`]).
#[derive(Debug, Clone)]
pub struct MoETransformer {
    config: Config,
    layout: Layout,
    store: Store,
    /// The inference forward's pre-packed weights ([`MoETransformer::prepack`]),
    /// or `None`. Never stale: every path that can change the `f32`
    /// parameters ([`MoETransformer::params_mut`]; the constructors and
    /// [`MoETransformer::to_precision`] build new models) drops it.
    packed: Option<Prepacked>,
}

/// Copies of the forward GEMMs' weights in the micro-kernel's panel layout
/// (`B = Wᵀ`, [`linear::pack_weight`]), one buffer for the whole model.
/// `table[i]` is the range of tensor `i` in `buf`, in the order per layer
/// `wqkv, wo, w13₀, w2₀, …, w13ₑ₋₁, w2ₑ₋₁` (stride `2 + 2e`), then `lm_head`.
#[derive(Debug, Clone)]
pub(crate) struct Prepacked {
    buf: Vec<f32>,
    table: Vec<core::ops::Range<usize>>,
    experts: usize,
}

impl Prepacked {
    #[inline]
    fn at(&self, i: usize) -> &[f32] {
        &self.buf[self.table[i].clone()]
    }

    /// Layer `l`'s packed `wqkv`.
    #[inline]
    pub(crate) fn wqkv(&self, l: usize) -> &[f32] {
        self.at(l * (2 + 2 * self.experts))
    }

    /// Layer `l`'s packed `wo`.
    #[inline]
    pub(crate) fn wo(&self, l: usize) -> &[f32] {
        self.at(l * (2 + 2 * self.experts) + 1)
    }

    /// Layer `l`'s expert `ex`, packed `(w13, w2)`.
    #[inline]
    pub(crate) fn expert(&self, l: usize, ex: usize) -> (&[f32], &[f32]) {
        let i = l * (2 + 2 * self.experts) + 2 + 2 * ex;
        (self.at(i), self.at(i + 1))
    }

    /// The packed LM head.
    #[inline]
    fn lm_head(&self) -> &[f32] {
        self.at(self.table.len() - 1)
    }
}

/// The weights [`MoETransformer::prepack`] packs, in [`Prepacked`]'s table
/// order: `(range in the flat parameters, din, dout)` of each `W[dout, din]`.
fn packed_tensors(
    layout: &Layout,
) -> impl Iterator<Item = (core::ops::Range<usize>, usize, usize)> + '_ {
    let c = layout.final_norm.len();
    let experts = layout
        .layers
        .first()
        .map_or(0, |ll| ll.experts.len() / layout.expert_stride.max(1));
    layout
        .layers
        .iter()
        .enumerate()
        .flat_map(move |(l, ll)| {
            let attn = [
                (ll.wqkv.clone(), c, ll.wqkv.len() / c),
                (ll.wo.clone(), ll.wo.len() / c, c),
            ];
            let ffn = (0..experts).flat_map(move |ex| {
                let r = layout.expert(l, ex);
                let f = r.w2.len() / c;
                [(r.w13, c, 2 * f), (r.w2, f, c)]
            });
            attn.into_iter().chain(ffn)
        })
        .chain(core::iter::once((
            layout.lm_head.clone(),
            c,
            layout.lm_head.len() / c,
        )))
}

/// The storage precision of a model's parameters. Compute and accumulation
/// are `f32` in both; bf16 weights are widened inside the GEMM packing and
/// the decoding GEMV ([`crate::kernels::bf16`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// One flat `f32` buffer (4 bytes per parameter).
    #[default]
    F32,
    /// One flat bf16 buffer (2 bytes per parameter), round-to-nearest-even
    /// from `f32` exactly as `torch.Tensor.to(torch.bfloat16)`. Inference
    /// and gradients ([`MoETransformer::loss_and_grad`]); a [`crate::Trainer`]
    /// refuses it ([`Error::PrecisionMismatch`]: training needs f32 weights).
    Bf16,
}

impl Precision {
    /// Bytes per stored parameter.
    pub const fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }

    /// `"f32"` or `"bf16"` (the CLI's spelling).
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The parameter buffer in its precision.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    /// `w`: all parameters as bf16, in the layout; `norms`: the RMSNorm
    /// weights widened back to `f32` (`[2L + 1, c]`: layer `l`'s attention
    /// norm at row `2l`, its MoE norm at `2l + 1`, the final norm at `2L`),
    /// a small table so the norm kernels keep their `f32` signature. It always
    /// equals the widened bf16 values (rebuilt after every mutable access).
    Bf16 {
        w: Vec<u16>,
        norms: Vec<f32>,
    },
}

/// Mutable access to a bf16 model's parameters ([`MoETransformer::params_bf16_mut`]);
/// dereferences to the flat `[u16]` buffer and re-derives the model's `f32`
/// norm table when dropped.
#[derive(Debug)]
pub struct Bf16ParamsMut<'m> {
    w: &'m mut Vec<u16>,
    norms: &'m mut Vec<f32>,
    layout: &'m Layout,
}

impl core::ops::Deref for Bf16ParamsMut<'_> {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        self.w
    }
}

impl core::ops::DerefMut for Bf16ParamsMut<'_> {
    fn deref_mut(&mut self) -> &mut [u16] {
        self.w
    }
}

impl Drop for Bf16ParamsMut<'_> {
    fn drop(&mut self) {
        fill_norms(self.layout, self.w, self.norms);
    }
}

/// Rows of the bf16 norm table: two per layer and the final norm.
fn norm_rows(layout: &Layout) -> usize {
    2 * layout.layers.len() + 1
}

/// The norm ranges of `layout` in norm-table row order.
fn norm_ranges(layout: &Layout) -> impl Iterator<Item = core::ops::Range<usize>> + '_ {
    layout
        .layers
        .iter()
        .flat_map(|ll| [ll.attn_norm.clone(), ll.mlp_norm.clone()])
        .chain(core::iter::once(layout.final_norm.clone()))
}

/// Widens the norm weights of the bf16 buffer `w` into `norms` (`[2L + 1, c]`).
fn fill_norms(layout: &Layout, w: &[u16], norms: &mut [f32]) {
    let mut at = 0;
    for r in norm_ranges(layout) {
        let len = r.len();
        bf16::widen_slice(&mut norms[at..at + len], &w[r]);
        at += len;
    }
}

/// Losses of one forward + backward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// `ce + alpha · aux`.
    pub loss: f32,
    /// Mean cross-entropy.
    pub ce: f32,
    /// Load-balancing aux loss (before `alpha`).
    pub aux: f32,
}

/// Checks `tokens` (`arg`) has `b·t` ids, each `< vocab`.
pub(crate) fn check_tokens(
    arg: &'static str,
    tokens: &[TokenId],
    n: usize,
    vocab: usize,
) -> Result<()> {
    if tokens.len() != n {
        return Err(Error::ShapeMismatch {
            arg,
            expected: n,
            actual: tokens.len(),
        });
    }
    if let Some(index) = tokens.iter().position(|&t| t as usize >= vocab) {
        return Err(Error::TokenOutOfRange {
            arg,
            index,
            token: tokens[index],
            vocab,
        });
    }
    Ok(())
}

/// Checks `targets` has `n` ids, each `< vocab` or [`crate::IGNORE_INDEX`]
/// (targets only: input tokens go through [`check_tokens`]). That not every
/// target is ignored is checked by the CE ([`crate::loss::cross_entropy`]).
pub(crate) fn check_targets(targets: &[TokenId], n: usize, vocab: usize) -> Result<()> {
    if targets.len() != n {
        return Err(Error::ShapeMismatch {
            arg: "targets",
            expected: n,
            actual: targets.len(),
        });
    }
    if let Some(index) = targets
        .iter()
        .position(|&t| t != crate::IGNORE_INDEX && t as usize >= vocab)
    {
        return Err(Error::TokenOutOfRange {
            arg: "targets",
            index,
            token: targets[index],
            vocab,
        });
    }
    if targets.iter().all(|&t| t == crate::IGNORE_INDEX) {
        return Err(Error::EmptyInput {
            arg: "non-ignored targets",
        });
    }
    Ok(())
}

impl MoETransformer {
    /// Builds a model with parameters drawn from `seed` (see [`MoETransformer::init`]).
    ///
    /// # Errors
    /// Invalid config, overflow, or allocation failure.
    pub fn new(config: &Config, seed: u64) -> Result<Self> {
        Self::new_with(config, seed, Precision::F32)
    }

    /// [`MoETransformer::new`] in `precision`. A bf16 model from seed `S`
    /// holds exactly the f32 model's values from `S` rounded to bf16, drawn
    /// straight into bf16 (no f32 buffer; [`MoETransformer::init_bf16`]).
    ///
    /// # Errors
    /// As [`MoETransformer::new`].
    pub fn new_with(config: &Config, seed: u64, precision: Precision) -> Result<Self> {
        let layout = Layout::new(config)?;
        let store = match precision {
            Precision::F32 => {
                let mut params = alloc_zeroed(layout.total)?;
                Self::init(&layout, &mut params, seed);
                Store::F32(params)
            }
            Precision::Bf16 => {
                let mut w = alloc_zeroed_u16(layout.total)?;
                Self::init_bf16(&layout, &mut w, seed, &crate::parallel::Pool::single());
                Self::bf16_store(&layout, w)?
            }
        };
        Ok(MoETransformer {
            config: *config,
            layout,
            store,
            packed: None,
        })
    }

    /// [`MoETransformer::new_with`]`(config, seed, Precision::Bf16)` with the
    /// initialisation split over `pool`'s threads (the same bits for every
    /// thread count): how the 6.88 B Full profile is built in ≈ 13.8 GB.
    ///
    /// # Errors
    /// As [`MoETransformer::new`].
    pub fn new_bf16_on(config: &Config, seed: u64, pool: &crate::parallel::Pool) -> Result<Self> {
        let layout = Layout::new(config)?;
        let mut w = alloc_zeroed_u16(layout.total)?;
        Self::init_bf16(&layout, &mut w, seed, pool);
        let store = Self::bf16_store(&layout, w)?;
        Ok(MoETransformer {
            config: *config,
            layout,
            store,
            packed: None,
        })
    }

    /// The bf16 store of `w` with its norm table.
    fn bf16_store(layout: &Layout, w: Vec<u16>) -> Result<Store> {
        let c = layout.final_norm.len();
        let mut norms = alloc_zeroed(norm_rows(layout) * c)?;
        fill_norms(layout, &w, &mut norms);
        Ok(Store::Bf16 { w, norms })
    }

    /// Wraps an existing flat bf16 parameter buffer (bit patterns, e.g. the
    /// tensor bytes of a BF16 checkpoint) as a [`Precision::Bf16`] model.
    ///
    /// # Errors
    /// Invalid config, [`Error::ShapeMismatch`] if `params` has the wrong
    /// length, [`Error::NonFinite`] if a value is NaN or infinite.
    pub fn from_params_bf16(config: &Config, params: Vec<u16>) -> Result<Self> {
        let layout = Layout::new(config)?;
        if params.len() != layout.total {
            return Err(Error::ShapeMismatch {
                arg: "params",
                expected: layout.total,
                actual: params.len(),
            });
        }
        if let Some(index) = bf16::first_non_finite(&params) {
            return Err(Error::NonFinite {
                what: "params",
                index,
            });
        }
        let store = Self::bf16_store(&layout, params)?;
        Ok(MoETransformer {
            config: *config,
            layout,
            store,
            packed: None,
        })
    }

    /// This model in `precision`: f32 → bf16 rounds every value to nearest
    /// even (values beyond bf16's range would become ±∞:
    /// [`Error::NonFinite`]); bf16 → f32 widens exactly; the same precision clones.
    ///
    /// # Errors
    /// [`Error::AllocationFailed`], [`Error::NonFinite`].
    pub fn to_precision(&self, precision: Precision) -> Result<Self> {
        let store = match (&self.store, precision) {
            (Store::F32(p), Precision::Bf16) => {
                let mut w = alloc_zeroed_u16(p.len())?;
                bf16::round_slice(&mut w, p);
                if let Some(index) = bf16::first_non_finite(&w) {
                    return Err(Error::NonFinite {
                        what: "params rounded to bf16",
                        index,
                    });
                }
                Self::bf16_store(&self.layout, w)?
            }
            (Store::Bf16 { w, .. }, Precision::F32) => {
                let mut p = alloc_zeroed(w.len())?;
                bf16::widen_slice(&mut p, w);
                Store::F32(p)
            }
            (store, _) => store.clone(),
        };
        Ok(MoETransformer {
            config: self.config,
            layout: self.layout.clone(),
            store,
            packed: None,
        })
    }

    /// Wraps an existing flat parameter buffer (e.g. loaded from a checkpoint).
    ///
    /// # Errors
    /// Invalid config, [`Error::ShapeMismatch`] if `params` has the wrong length,
    /// [`Error::NonFinite`] if a parameter is NaN or infinite.
    pub fn from_params(config: &Config, params: Vec<f32>) -> Result<Self> {
        let layout = Layout::new(config)?;
        if params.len() != layout.total {
            return Err(Error::ShapeMismatch {
                arg: "params",
                expected: layout.total,
                actual: params.len(),
            });
        }
        if let Some(index) = first_non_finite(&params) {
            return Err(Error::NonFinite {
                what: "params",
                index,
            });
        }
        Ok(MoETransformer {
            config: *config,
            layout,
            store: Store::F32(params),
            packed: None,
        })
    }

    /// Deterministic initialisation from `seed`, drawn in layout order from
    /// `ChaCha8Rng::seed_from_u64(seed)`: each value takes the next 32-bit
    /// little-endian word `x` of the keystream (`fill_bytes`),
    /// `u = (x >> 8) · 2⁻²⁴ ∈ [0, 1)`, and a matrix `[out, in]` gets
    /// `(2u − 1)/√in` (PyTorch's `nn.Linear` default bound), the embedding
    /// `(2u − 1)·√3` (unit variance, like `nn.Embedding`'s N(0, 1)); norm
    /// weights are 1.0 and draw nothing.
    ///
    /// # Panics
    /// If `params` is shorter than `layout.total` ([`MoETransformer::new`]
    /// allocates it from the layout).
    pub fn init(layout: &Layout, params: &mut [f32], seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        const TO_UNIT: f32 = 1.0 / (1u32 << 24) as f32;
        // Keystream words are drawn in blocks (the same sequence as one
        // `next_u32()` per value, without the per-call bookkeeping).
        const BLOCK: usize = 256;
        let mut words = [0u8; 4 * BLOCK];
        for t in layout.tensors() {
            let out = &mut params[t.range()];
            if t.shape.len() == 1 {
                out.iter_mut().for_each(|x| *x = 1.0);
                continue;
            }
            let bound = if t.offset == layout.embed.start {
                libm::sqrtf(3.0)
            } else {
                1.0 / libm::sqrtf(t.shape[1] as f32)
            };
            for chunk in out.chunks_mut(BLOCK) {
                let bytes = &mut words[..4 * chunk.len()];
                rng.fill_bytes(bytes);
                for (x, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                    let u = (u32::from_le_bytes([w[0], w[1], w[2], w[3]]) >> 8) as f32 * TO_UNIT;
                    *x = (2.0 * u - 1.0) * bound;
                }
            }
        }
    }

    /// [`MoETransformer::init`] straight into bf16: `w[i] = round(init[i])`
    /// bit for bit, without an f32 buffer, split over `pool`'s threads.
    ///
    /// `init` draws one keystream word per matrix element in layout order and
    /// nothing for norms, so element `i` of matrix `t` uses word
    /// `t.offset − (norm elements before t) + i`. The buffer is cut into
    /// fixed chunks ([`INIT_CHUNK`] values, a pure function of the layout);
    /// each chunk seeks its own copy of the stream
    /// (`ChaCha8Rng::set_word_pos`) and converts `f32 → bf16` as it draws, so
    /// the result is the same for every thread count.
    ///
    /// # Panics
    /// If `w` is shorter than `layout.total`.
    pub fn init_bf16(layout: &Layout, w: &mut [u16], seed: u64, pool: &crate::parallel::Pool) {
        let w = &mut w[..layout.total];
        let chunks = layout.total.div_ceil(INIT_CHUNK);
        // Tasks: contiguous runs of chunks, `TASKS_PER_THREAD` per thread.
        let tasks = (pool.threads() * 4).clamp(1, chunks.max(1));
        let per = chunks.div_ceil(tasks);
        let mut parts: Vec<(usize, &mut [u16])> = Vec::new();
        if parts.try_reserve_exact(tasks).is_err() {
            // Cannot even hold the task list: do it on this thread.
            return init_bf16_range(layout, w, 0, seed);
        }
        let mut rest = w;
        let mut start = 0;
        while !rest.is_empty() {
            let len = (per * INIT_CHUNK).min(rest.len());
            let (mine, tail) = core::mem::take(&mut rest).split_at_mut(len);
            parts.push((start, mine));
            start += len;
            rest = tail;
        }
        pool.for_each_mut(&mut parts, |_, (s, out)| {
            for (i, chunk) in out.chunks_mut(INIT_CHUNK).enumerate() {
                init_bf16_range(layout, chunk, *s + i * INIT_CHUNK, seed);
            }
        });
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The parameter layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The storage precision of the parameters.
    pub fn precision(&self) -> Precision {
        match self.store {
            Store::F32(_) => Precision::F32,
            Store::Bf16 { .. } => Precision::Bf16,
        }
    }

    /// Bytes of the parameter buffer (4 or 2 per parameter, plus a bf16
    /// model's `f32` norm table).
    pub fn param_bytes(&self) -> usize {
        match &self.store {
            Store::F32(p) => 4 * p.len(),
            Store::Bf16 { w, norms } => 2 * w.len() + 4 * norms.len(),
        }
    }

    /// All parameters as a [`Weight`] view in their storage precision.
    pub fn weights(&self) -> Weight<'_> {
        match &self.store {
            Store::F32(p) => Weight::F32(p),
            Store::Bf16 { w, .. } => Weight::Bf16(w),
        }
    }

    /// The flat `f32` parameters of a [`Precision::F32`] model.
    ///
    /// # Errors
    /// [`Error::PrecisionMismatch`] for a bf16 model (it holds no `f32` buffer; use
    /// [`MoETransformer::params_bf16`], [`MoETransformer::weights`] or
    /// [`MoETransformer::to_precision`]).
    pub fn params(&self) -> Result<&[f32]> {
        match &self.store {
            Store::F32(p) => Ok(p),
            Store::Bf16 { .. } => Err(Error::PrecisionMismatch {
                what: "params() (a bf16 model has no f32 buffer: params_bf16(), weights() or to_precision(Precision::F32))",
                expected: "f32",
                actual: "bf16",
            }),
        }
    }

    /// The flat `f32` parameters, mutably (e.g. to load a checkpoint in place).
    /// Drops the pre-packed copy, if any ([`MoETransformer::prepack`] again
    /// after changing the weights), also when it returns an error.
    ///
    /// # Errors
    /// As [`MoETransformer::params`].
    pub fn params_mut(&mut self) -> Result<&mut [f32]> {
        // The caller may change any weight: a packed copy would go stale.
        self.packed = None;
        match &mut self.store {
            Store::F32(p) => Ok(p),
            Store::Bf16 { .. } => Err(Error::PrecisionMismatch {
                what: "params_mut() (a bf16 model has no f32 buffer: params_bf16_mut())",
                expected: "f32",
                actual: "bf16",
            }),
        }
    }

    /// The flat bf16 parameters (bit patterns) of a [`Precision::Bf16`] model.
    ///
    /// # Errors
    /// [`Error::PrecisionMismatch`] for an f32 model.
    pub fn params_bf16(&self) -> Result<&[u16]> {
        match &self.store {
            Store::Bf16 { w, .. } => Ok(w),
            Store::F32(_) => Err(Error::PrecisionMismatch {
                what: "params_bf16()",
                expected: "bf16",
                actual: "f32",
            }),
        }
    }

    /// The flat bf16 parameters, mutably: a guard that dereferences to
    /// `[u16]` and refreshes the model's `f32` norm table when dropped.
    ///
    /// # Errors
    /// [`Error::PrecisionMismatch`] for an f32 model.
    pub fn params_bf16_mut(&mut self) -> Result<Bf16ParamsMut<'_>> {
        match &mut self.store {
            Store::Bf16 { w, norms } => Ok(Bf16ParamsMut {
                w,
                norms,
                layout: &self.layout,
            }),
            Store::F32(_) => Err(Error::PrecisionMismatch {
                what: "params_bf16_mut()",
                expected: "bf16",
                actual: "f32",
            }),
        }
    }

    /// Floats of the buffer [`MoETransformer::prepack`] allocates for a model
    /// of `layout`: `Σ din·⌈dout/16⌉·16` over the forward GEMMs' weights
    /// (per layer `wqkv`, `wo`, every expert's `w13`, `w2`; the LM head).
    ///
    /// # Errors
    /// [`Error::Overflow`] if the sum does not fit `usize`.
    pub fn prepacked_len(layout: &Layout) -> Result<usize> {
        packed_tensors(layout).try_fold(0usize, |acc, (_, din, dout)| {
            din.checked_mul(dout.div_ceil(16) * 16)
                .and_then(|n| acc.checked_add(n))
                .ok_or(Error::Overflow {
                    what: "pre-packed weight buffer length",
                })
        })
    }

    /// Packs every weight of the inference forward's GEMMs (per layer `wqkv`,
    /// `wo`; per expert `w13`, `w2`; the LM head) into the micro-kernel's
    /// panel layout (`B = Wᵀ`, [`linear::pack_weight`]) in one model-owned
    /// buffer of [`MoETransformer::prepacked_len`] floats, so that
    /// [`MoETransformer::forward`], [`MoETransformer::forward_cached`],
    /// [`MoETransformer::forward_split`] and generation never pack a weight.
    /// The logits are bit-identical to the unpacked model's
    /// ([`linear::forward_packed`]); training (loss, gradients, the
    /// [`crate::Trainer`]) never reads the packed copy. Calling it again
    /// repacks in place. [`MoETransformer::params_mut`] drops the copy
    /// (call `prepack` again after changing weights).
    ///
    /// # Errors
    /// [`Error::PrecisionMismatch`] for a bf16 model (it keeps its `u16`
    /// weights, widened inside the GEMM's own packing);
    /// [`Error::Overflow`] / [`Error::AllocationFailed`] for the buffer (the
    /// model is then left without a packed copy).
    pub fn prepack(&mut self) -> Result<()> {
        let p = match &self.store {
            Store::F32(p) => p,
            Store::Bf16 { .. } => {
                return Err(Error::PrecisionMismatch {
                    what: "prepack() (a bf16 model keeps its u16 weights; prepack an f32 model)",
                    expected: "f32",
                    actual: "bf16",
                })
            }
        };
        let len = Self::prepacked_len(&self.layout)?;
        let count = packed_tensors(&self.layout).count();
        // A repack (same model, so the same sizes) reuses both buffers.
        let (mut buf, mut table) = match self.packed.take() {
            Some(Prepacked { buf, mut table, .. }) if buf.len() == len => {
                table.clear();
                (buf, table)
            }
            _ => {
                let buf = alloc_zeroed(len)?;
                let mut table = Vec::new();
                table
                    .try_reserve_exact(count)
                    .map_err(|_| Error::AllocationFailed {
                        bytes: count
                            .saturating_mul(core::mem::size_of::<core::ops::Range<usize>>()),
                    })?;
                (buf, table)
            }
        };
        let mut at = 0;
        for (src, din, dout) in packed_tensors(&self.layout) {
            let n = linear::packed_len(din, dout);
            linear::pack_weight(&mut buf[at..at + n], &p[src], din, dout);
            table.push(at..at + n);
            at += n;
        }
        let experts = self.config.num_local_experts;
        self.packed = Some(Prepacked {
            buf,
            table,
            experts,
        });
        Ok(())
    }

    /// Whether the model holds a pre-packed copy of its weights
    /// ([`MoETransformer::prepack`]).
    pub fn is_prepacked(&self) -> bool {
        self.packed.is_some()
    }

    /// Bytes of the pre-packed copy (0 without one).
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |pk| 4 * pk.buf.len())
    }

    /// Drops the pre-packed copy (frees its buffer); the forward then packs
    /// per call again, with the same bits.
    pub fn drop_prepacked(&mut self) {
        self.packed = None;
    }

    /// `Ok` for an f32 model; [`Error::PrecisionMismatch`] (`what`) for bf16.
    pub(crate) fn require_f32(&self, what: &'static str) -> Result<()> {
        match self.store {
            Store::F32(_) => Ok(()),
            Store::Bf16 { .. } => Err(Error::PrecisionMismatch {
                what,
                expected: "f32",
                actual: "bf16",
            }),
        }
    }

    /// The `f32` weights of the norm at `range` (table row `row`, see [`Store`]).
    #[inline]
    fn norm(&self, range: &core::ops::Range<usize>, row: usize) -> &[f32] {
        match &self.store {
            Store::F32(p) => &p[range.clone()],
            Store::Bf16 { norms, .. } => {
                let c = range.len();
                &norms[row * c..(row + 1) * c]
            }
        }
    }

    /// A workspace planned for this model.
    pub fn workspace(&self, max_batch: usize, max_seq: usize, mode: Mode) -> Result<Workspace> {
        Workspace::new(&self.config, max_batch, max_seq, mode)
    }

    /// A workspace planned for this model with the training memory options
    /// `mem` (see [`Memory`]; e.g. [`Memory::LOW`]). Same results, smaller plan.
    ///
    /// # Errors
    /// As [`MoETransformer::workspace`].
    pub fn workspace_with(
        &self,
        max_batch: usize,
        max_seq: usize,
        mode: Mode,
        mem: Memory,
    ) -> Result<Workspace> {
        Workspace::with_memory(&self.config, max_batch, max_seq, mode, mem)
    }

    /// Forward pass over `tokens: [batch, seq]` (row-major). Returns the logits
    /// `[batch, seq, vocab]`, a slice of the workspace valid until its next use.
    ///
    /// # Errors
    /// [`Error::EmptyInput`], [`Error::SeqTooLong`], [`Error::ShapeMismatch`],
    /// [`Error::TokenOutOfRange`], [`Error::WorkspaceTooSmall`]/[`Error::WorkspaceMismatch`],
    /// and [`Error::NonFinite`] if a row of attention scores (`"attention scores"`)
    /// or the logits contain NaN/Inf.
    pub fn forward<'w>(
        &self,
        ws: &'w mut Workspace,
        tokens: &[TokenId],
        batch: usize,
        seq: usize,
    ) -> Result<&'w [f32]> {
        ws.check(&self.config, batch, seq)?;
        check_tokens("tokens", tokens, batch * seq, self.config.vocab_size)?;
        let (acts, rope) = ws.carve(batch, seq)?;
        let Acts { logits, .. } = self.forward_acts(acts, rope, tokens, None)?;
        Ok(logits)
    }

    /// Forward over `tokens: [seq]` (batch 1) appended after the `cache.len()`
    /// positions already in `cache`; returns the logits `[seq, vocab]` of the
    /// new positions. RoPE uses the absolute positions. The workspace must be
    /// planned for batch 1 and `max_seq >= cache.capacity()`.
    ///
    /// # Errors
    /// As [`MoETransformer::forward`], plus [`Error::WorkspaceTooSmall`] (`dim`
    /// `"kv_cache positions"`) when the cache
    /// would exceed its capacity, and [`Error::WorkspaceMismatch`] for a cache of
    /// another config or a workspace too short for the cache.
    pub fn forward_cached<'w>(
        &self,
        ws: &'w mut Workspace,
        tokens: &[TokenId],
        cache: &mut KvCache,
    ) -> Result<&'w [f32]> {
        let seq = tokens.len();
        if seq == 0 {
            return Err(Error::EmptyInput { arg: "tokens" });
        }
        ws.check(&self.config, 1, seq)?;
        cache.check(&self.config)?;
        if ws.max_seq() < cache.capacity() {
            return Err(Error::WorkspaceMismatch {
                what: "the workspace's max_seq is smaller than the KV cache capacity",
            });
        }
        let total = cache.len() + seq;
        if total > cache.capacity() {
            return Err(Error::WorkspaceTooSmall {
                dim: "kv_cache positions",
                requested: total,
                planned: cache.capacity(),
            });
        }
        check_tokens("tokens", tokens, seq, self.config.vocab_size)?;
        let (acts, rope) = ws.carve(1, seq)?;
        let Acts { logits, .. } = self.forward_acts(acts, rope, tokens, Some(cache))?;
        Ok(logits)
    }

    /// The forward pass proper, on already-validated inputs; `rope` is the
    /// workspace's table.
    ///
    /// With a KV cache (`b = 1`), the `t` tokens sit at absolute positions
    /// `cache.len() ..`, their keys/values are appended to the cache, and
    /// attention reads all cached positions.
    pub(crate) fn forward_acts<'a>(
        &self,
        mut acts: Acts<'a>,
        rope: &RopeTable,
        tokens: &[TokenId],
        mut cache: Option<&mut KvCache>,
    ) -> Result<Acts<'a>> {
        let dm = acts.dims;
        let (n, c, v) = (dm.n, dm.c, dm.v);
        let p = self.weights();
        let lay = &self.layout;
        let eps = self.config.rms_norm_eps;
        let train = acts.grads.is_some();
        let save = train.then_some(acts.memory.attention);
        let recompute = train && acts.memory.recompute == Recompute::Layers;
        // Inference reads the pre-packed weights (same bits); training never
        // does (it would have to repack after every update).
        let pk = if train { None } else { self.packed.as_ref() };
        embedding::forward_w(acts.resid, tokens, p.get(lay.embed.clone()), c)?;
        for l in 0..lay.layers.len() {
            if recompute && l + 1 < lay.layers.len() {
                // Checkpoint: the layer's input, all the backward keeps of it
                // (the last layer's activations stay in the buffers).
                acts.ckpt[l * n * c..(l + 1) * n * c].copy_from_slice(acts.resid);
            }
            let la = &mut acts.layers[if train && !recompute { l } else { 0 }];
            self.layer_forward(l, la, acts.resid, rope, cache.as_deref_mut(), save, pk, &dm)?;
            if let Some(g) = acts.grads.as_mut() {
                // E13's routing statistics pool all layers, in layer order.
                loss::aux_accumulate(g.aux_f, g.aux_p, la.counts, la.rprobs);
            }
        }
        if let Some(kc) = cache {
            kc.advance(dm.t);
        }
        let w_norm = self.norm(&lay.final_norm, 2 * lay.layers.len());
        rmsnorm::forward(acts.xf, acts.rstd_f, acts.resid, w_norm, eps);
        let w_lm = p.get(lay.lm_head.clone());
        let p_lm = pk.map(Prepacked::lm_head);
        linear::forward_packed(acts.logits, acts.xf, w_lm, p_lm, n, c, v, Accum::Set);
        if let Some(index) = first_non_finite(acts.logits) {
            return Err(Error::NonFinite {
                what: "logits",
                index,
            });
        }
        Ok(acts)
    }

    /// One block, `x_mid = x + Attn(RMSNorm(x))`, `x_out = x_mid + MoE(RMSNorm(x_mid))`
    /// (E5, E6, E9, E10, E11): reads `resid: [n, c]` = `x`, writes layer `l`'s
    /// activations into `la` and leaves `resid` = `x_out`. The one body of both
    /// the forward and the backward's recompute ([`Recompute::Layers`]), so a
    /// recomputed layer holds the same bits as the forward's.
    ///
    /// `save`: `None` in inference (one score row), else what training keeps
    /// of attention. With a KV cache (`b = 1`), keys/values are appended to it.
    /// `pk`: the pre-packed weights (inference only; the same bits).
    #[allow(clippy::too_many_arguments)] // reason: layer index, its buffers, the stream, RoPE table, optional cache, attention mode, packed weights, dims
    fn layer_forward(
        &self,
        l: usize,
        la: &mut LayerActs,
        resid: &mut [f32],
        rope: &RopeTable,
        cache: Option<&mut KvCache>,
        save: Option<AttnMemory>,
        pk: Option<&Prepacked>,
        dm: &Dims,
    ) -> Result<()> {
        let (n, c) = (dm.n, dm.c);
        let hd = dm.h * dm.d;
        let p = self.weights();
        let lay = &self.layout;
        let ll = &lay.layers[l];
        let eps = self.config.rms_norm_eps;
        // x = x + Attn(RMSNorm(x))
        la.x_in.copy_from_slice(resid);
        let w_norm = self.norm(&ll.attn_norm, 2 * l);
        rmsnorm::forward(la.xn1, la.rstd1, la.x_in, w_norm, eps);
        let w_qkv = p.get(ll.wqkv.clone());
        let p_qkv = pk.map(|pk| pk.wqkv(l));
        linear::forward_packed(la.qkv, la.xn1, w_qkv, p_qkv, n, c, dm.q, Accum::Set);
        match (cache, save) {
            (Some(kc), _) => {
                let pos0 = kc.len();
                rope::forward(la.qkv, rope, pos0, dm)?;
                let kvs = kc.append(l, la.qkv, dm);
                attention::attend(la.att, la.probs, false, la.qkv, kvs, pos0, dm)?;
            }
            (None, Some(AttnMemory::SavedBf16)) => {
                rope::forward(la.qkv, rope, 0, dm)?;
                attention::forward_bf16(la.att, la.probs, la.probs16, la.qkv, dm)?;
            }
            (None, Some(AttnMemory::Lse)) => {
                rope::forward(la.qkv, rope, 0, dm)?;
                flash::forward(la.att, la.probs, la.row_max, la.row_inv, la.qkv, dm)?;
            }
            (None, save) => {
                rope::forward(la.qkv, rope, 0, dm)?;
                attention::forward(la.att, la.probs, la.qkv, dm, save.is_some())?;
            }
        }
        let w_o = p.get(ll.wo.clone());
        let p_o = pk.map(|pk| pk.wo(l));
        linear::forward_packed(resid, la.att, w_o, p_o, n, hd, c, Accum::Add);
        // x = x + MoE(RMSNorm(x))
        la.x_mid.copy_from_slice(resid);
        let w_norm = self.norm(&ll.mlp_norm, 2 * l + 1);
        rmsnorm::forward(la.xn2, la.rstd2, la.x_mid, w_norm, eps);
        moe::forward(la, resid, p, pk, lay, l, dm);
        Ok(())
    }

    /// Losses and gradients for one batch: forward, CE + `alpha`·aux, and the
    /// backward pass, accumulating into `grads` (same layout as the parameters;
    /// the caller zeroes it). Optionally copies the logits out. On a
    /// [`Precision::Bf16`] model the gradients are those with respect to the
    /// (widened) bf16 weights, in `f32` (updating them is training:
    /// [`crate::Trainer`] refuses a bf16 model).
    ///
    /// # Errors
    /// As [`MoETransformer::forward`], plus [`Error::WorkspaceMismatch`] if `ws` is
    /// not a training workspace, [`Error::ShapeMismatch`] for `targets`/`grads`,
    /// [`Error::InvalidParameter`] for a non-finite or negative `alpha`, and
    /// [`Error::NonFinite`] for non-finite attention scores or logits (forward),
    /// a non-finite loss, or any non-finite gradient (`"gradients"`, the flat
    /// index of the first one; `grads` then holds partial sums and must be
    /// zeroed before reuse).
    #[allow(clippy::too_many_arguments)] // reason: public API since v0.1 (grads, tokens, targets, shape, alpha, optional logits copy); callers depend on it
    pub fn loss_and_grad(
        &self,
        ws: &mut Workspace,
        grads: &mut [f32],
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        alpha: f32,
        logits_out: Option<&mut [f32]>,
    ) -> Result<Losses> {
        if ws.mode() != Mode::Training {
            return Err(Error::WorkspaceMismatch {
                what: "loss_and_grad needs a Mode::Training workspace",
            });
        }
        ws.check(&self.config, batch, seq)?;
        let n = batch * seq;
        check_tokens("tokens", tokens, n, self.config.vocab_size)?;
        check_targets(targets, n, self.config.vocab_size)?;
        if grads.len() != self.layout.total {
            return Err(Error::ShapeMismatch {
                arg: "grads",
                expected: self.layout.total,
                actual: grads.len(),
            });
        }
        check_param("aux_alpha", alpha, Domain::NonNegative)?;
        if let Some(out) = &logits_out {
            if out.len() != n * self.config.vocab_size {
                return Err(Error::ShapeMismatch {
                    arg: "logits_out",
                    expected: n * self.config.vocab_size,
                    actual: out.len(),
                });
            }
        }
        let (acts, rope) = ws.carve(batch, seq)?;
        let acts = self.forward_acts(acts, rope, tokens, None)?;
        if let Some(out) = logits_out {
            out.copy_from_slice(acts.logits);
        }
        self.backward(acts, rope, grads, tokens, targets, alpha)
    }

    /// E32 — loss `CE + α·aux` (E14, E13), then the backward pass in exact reverse
    /// order of `forward_acts`; a residual `x_out = x + F(x)` passes `dx_out` through
    /// unchanged and adds `F`'s input gradient. Accumulates into `grads: [P]`.
    fn backward(
        &self,
        mut acts: Acts,
        rope_table: &RopeTable,
        grads: &mut [f32],
        tokens: &[TokenId],
        targets: &[TokenId],
        alpha: f32,
    ) -> Result<Losses> {
        let dm = acts.dims;
        let Some(g) = acts.grads.as_mut() else {
            return Err(Error::WorkspaceMismatch {
                what: "backward needs a Mode::Training workspace",
            });
        };
        // Loss: CE + α·aux. The CE gradient overwrites the logits (E15 in
        // place); the aux statistics were pooled over all layers by the forward.
        let ce = loss::cross_entropy_inplace(acts.logits, g.ce_row, targets, dm.v)?;
        let rows = dm.layers * dm.n;
        let aux = loss::aux_finish(g.aux_f, g.aux_p, rows);
        let total = ce + alpha * aux;
        if !total.is_finite() {
            return Err(Error::NonFinite {
                what: "loss",
                index: 0,
            });
        }
        loss::aux_grad_coef(g.aux_f, alpha, rows);
        self.backward_pass(acts, rope_table, grads, tokens)?;
        // Finite logits and loss do not imply finite gradients (e.g. a weight
        // near f32::MAX overflows only in backward): one vectorised scan of
        // the whole buffer, once per call, so that Ok never carries NaN/Inf.
        // (The trainer checks its reduced sum instead: phase D's `Σ g²`.)
        if let Some(index) = first_non_finite(grads) {
            return Err(Error::NonFinite {
                what: "gradients",
                index,
            });
        }
        Ok(Losses {
            loss: total,
            ce,
            aux,
        })
    }

    /// E32 after the loss head — the backward pass proper, in exact reverse
    /// order of `forward_acts`, from `dlogits` (E15, written over the
    /// logits) and the E31 coefficients `α·e·f_e/R` (already in `aux_f`).
    /// Accumulates into `grads: [P]`. It does not scan `grads`: every caller
    /// must (`loss_and_grad` scans them; the trainer's phase D tests the
    /// `Σ g²` of the reduced sum, which is finite iff every `g_m` and every
    /// sum is).
    pub(crate) fn backward_pass(
        &self,
        acts: Acts,
        rope_table: &RopeTable,
        grads: &mut [f32],
        tokens: &[TokenId],
    ) -> Result<()> {
        let Acts {
            dims: dm,
            memory: mem,
            resid,
            ckpt,
            layers,
            xf,
            rstd_f,
            logits: dlogits,
            grads: g,
        } = acts;
        let dlogits: &[f32] = dlogits;
        let Some(g) = g else {
            return Err(Error::WorkspaceMismatch {
                what: "backward needs a Mode::Training workspace",
            });
        };
        let (n, c, v) = (dm.n, dm.c, dm.v);
        let hd = dm.h * dm.d;
        let p = self.weights();
        let lay = &self.layout;
        let nl = lay.layers.len();
        let aux_coef: &[f32] = g.aux_f;

        // forward: logits = xf·W_lmᵀ
        let wl = lay.lm_head.clone();
        linear::backward_input_w(g.dxn, dlogits, p.get(wl.clone()), n, c, v, Accum::Set);
        linear::backward_weight(&mut grads[wl], dlogits, xf, n, c, v);
        // forward: xf = RMSNorm(resid)
        let wn = lay.final_norm.clone();
        g.dresid.iter_mut().for_each(|x| *x = 0.0);
        rmsnorm::backward(
            g.dresid,
            &mut grads[wn.clone()],
            g.dxn,
            resid,
            rstd_f,
            self.norm(&wn, 2 * nl),
        );

        let recompute = mem.recompute == Recompute::Layers;
        for (l, ll) in lay.layers.iter().enumerate().rev() {
            let la = &mut layers[if recompute { 0 } else { l }];
            // The last layer's activations are still in the buffers the forward
            // left them in; every other layer is recomputed from its checkpoint
            // into that one set (`resid` is free once the final norm's backward read it).
            if recompute && l + 1 < lay.layers.len() {
                resid.copy_from_slice(&ckpt[l * n * c..(l + 1) * n * c]);
                self.layer_forward(
                    l,
                    la,
                    resid,
                    rope_table,
                    None,
                    Some(mem.attention),
                    None,
                    &dm,
                )?;
            }
            // forward: x_out = x_mid + MoE(RMSNorm(x_mid))
            let mg = MoeGrads {
                dxn: g.dxn,
                dparams: grads,
                dtopk_w: g.dtopk_w,
                drprobs: g.drprobs,
            };
            moe::backward(mg, g.dresid, la, aux_coef, p, lay, l, &dm);
            let wn = ll.mlp_norm.clone();
            rmsnorm::backward(
                g.dresid,
                &mut grads[wn.clone()],
                g.dxn,
                la.x_mid,
                la.rstd2,
                self.norm(&wn, 2 * l + 1),
            );
            // forward: x_mid = x_in + att·W_oᵀ
            let wo = ll.wo.clone();
            linear::backward_input_w(g.datt, g.dresid, p.get(wo.clone()), n, hd, c, Accum::Set);
            linear::backward_weight(&mut grads[wo], g.dresid, la.att, n, hd, c);
            match mem.attention {
                AttnMemory::Saved => {
                    attention::backward(g.dqkv, g.dprobs, g.datt, la.probs, la.qkv, &dm);
                }
                AttnMemory::Lse => flash::backward(
                    g.dqkv, la.probs, g.dprobs, g.datt, la.row_max, la.row_inv, la.qkv, &dm,
                ),
                AttnMemory::SavedBf16 => attention::backward_bf16(
                    g.dqkv, g.dprobs, g.datt, la.probs16, la.probs, la.qkv, &dm,
                ),
            }
            rope::backward(g.dqkv, rope_table, &dm)?;
            // forward: qkv = xn1·W_qkvᵀ
            let wq = ll.wqkv.clone();
            linear::backward_input_w(g.dxn, g.dqkv, p.get(wq.clone()), n, c, dm.q, Accum::Set);
            linear::backward_weight(&mut grads[wq], g.dqkv, la.xn1, n, c, dm.q);
            let wn = ll.attn_norm.clone();
            rmsnorm::backward(
                g.dresid,
                &mut grads[wn.clone()],
                g.dxn,
                la.x_in,
                la.rstd1,
                self.norm(&wn, 2 * l),
            );
        }
        // forward: x = E[tokens]
        embedding::backward(&mut grads[lay.embed.clone()], g.dresid, tokens, c)?;
        Ok(())
    }
}

/// Sequences `[lo, hi)` of part `i` of a batch of `batch` sequences split
/// into `parts` contiguous groups whose sizes differ by at most one (a pure
/// function of `(batch, parts, i)`, never of the thread count).
pub(crate) fn split_range(batch: usize, parts: usize, i: usize) -> (usize, usize) {
    (i * batch / parts, (i + 1) * batch / parts)
}

/// Default number of sequence groups of a [`SplitWorkspace`] forward.
pub const FORWARD_SPLITS: usize = 4;

/// Workspaces for a batched forward split over fixed groups of sequences
/// ([`MoETransformer::forward_split`]): one inference workspace per group and
/// the logits `[max_batch, max_seq, v]` they are gathered into.
#[derive(Debug)]
pub struct SplitWorkspace {
    parts: Vec<Workspace>,
    logits: Vec<f32>,
    max_batch: usize,
}

impl SplitWorkspace {
    /// Number of sequence groups.
    pub fn splits(&self) -> usize {
        self.parts.len()
    }

    /// Bytes of all group workspaces plus the gathered logits.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Workspace::bytes).sum::<usize>() + 4 * self.logits.len()
    }
}

/// One group of a split forward while it runs.
struct FwdPart<'a> {
    ws: &'a mut Workspace,
    tokens: &'a [TokenId],
    batch: usize,
    out: &'a mut [f32],
    err: Option<Error>,
}

impl MoETransformer {
    /// Workspaces for [`MoETransformer::forward_split`]: `min(splits, max_batch, 16)`
    /// groups, each planned for `⌈max_batch/groups⌉` sequences of `max_seq`.
    ///
    /// # Errors
    /// As [`MoETransformer::workspace`]; [`Error::InvalidParameter`] for `splits == 0`.
    pub fn split_workspace(
        &self,
        max_batch: usize,
        max_seq: usize,
        splits: usize,
    ) -> Result<SplitWorkspace> {
        if splits == 0 {
            return Err(Error::InvalidParameter {
                param: "splits",
                expected: ">= 1",
                actual: 0.0,
            });
        }
        let groups = splits.min(max_batch.max(1)).min(FORWARD_SPLITS_MAX);
        let per = max_batch.div_ceil(groups);
        let mut parts = Vec::new();
        parts
            .try_reserve_exact(groups)
            .map_err(|_| Error::AllocationFailed { bytes: groups })?;
        for _ in 0..groups {
            parts.push(self.workspace(per, max_seq, Mode::Inference)?);
        }
        let n = max_batch
            .checked_mul(max_seq)
            .and_then(|x| x.checked_mul(self.config.vocab_size))
            .ok_or(Error::Overflow {
                what: "split forward logits",
            })?;
        Ok(SplitWorkspace {
            parts,
            logits: alloc_zeroed(n)?,
            max_batch,
        })
    }

    /// [`MoETransformer::forward`] with the batch split into the fixed
    /// sequence groups of `ws` (`min(splits, batch)` of them, by
    /// [`split_range`]), each group's forward run as one task of `pool`.
    /// Each group's logits depend only on its sequences, so the result
    /// `[batch, seq, vocab]` is bit-identical for every thread count.
    ///
    /// # Errors
    /// As [`MoETransformer::forward`] (the first failing group's error).
    pub fn forward_split<'w>(
        &self,
        pool: &crate::parallel::Pool,
        ws: &'w mut SplitWorkspace,
        tokens: &[TokenId],
        batch: usize,
        seq: usize,
    ) -> Result<&'w [f32]> {
        if batch > ws.max_batch {
            return Err(Error::WorkspaceTooSmall {
                dim: "batch",
                requested: batch,
                planned: ws.max_batch,
            });
        }
        let Some(first) = ws.parts.first() else {
            return Err(Error::EmptyInput { arg: "splits" });
        };
        if batch == 0 {
            return Err(Error::EmptyInput { arg: "batch" });
        }
        first.check(&self.config, 1, seq)?;
        let v = self.config.vocab_size;
        check_tokens("tokens", tokens, batch * seq, v)?;
        let groups = ws.parts.len().min(batch);
        let mut out = &mut ws.logits[..batch * seq * v];
        let mut parts: [Option<FwdPart>; FORWARD_SPLITS_MAX] = core::array::from_fn(|_| None);
        for (i, w) in ws.parts.iter_mut().take(groups).enumerate() {
            let (lo, hi) = split_range(batch, groups, i);
            let (mine, rest) = core::mem::take(&mut out).split_at_mut((hi - lo) * seq * v);
            out = rest;
            parts[i] = Some(FwdPart {
                ws: w,
                tokens: &tokens[lo * seq..hi * seq],
                batch: hi - lo,
                out: mine,
                err: None,
            });
        }
        pool.for_each_mut(&mut parts[..groups], |_, p| {
            if let Some(p) = p {
                match self.forward(p.ws, p.tokens, p.batch, seq) {
                    Ok(l) => p.out.copy_from_slice(l),
                    Err(e) => p.err = Some(e),
                }
            }
        });
        if let Some(e) = parts.iter_mut().flatten().find_map(|p| p.err.take()) {
            return Err(e);
        }
        Ok(&ws.logits[..batch * seq * v])
    }

    /// A data-parallel micro-batch's forward and CE head: carves `ws`, runs
    /// `forward_acts`, copies the logits to `logits_out` if given, writes
    /// E15's `dlogits` over the logits for its own rows with the whole
    /// batch's scale `1/counted` (the gradient of the batch's mean CE, each
    /// row bit-identical to a single pass).
    /// Inputs are validated by the caller.
    #[allow(clippy::too_many_arguments)] // reason: crate-internal; one micro-batch's inputs, its CE share and its optional logits copy
    pub(crate) fn micro_forward<'a>(
        &self,
        ws: &'a mut Workspace,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        counted: usize,
        logits_out: Option<&mut [f32]>,
    ) -> Result<(Acts<'a>, &'a RopeTable)> {
        ws.check(&self.config, batch, seq)?;
        let (acts, rope) = ws.carve(batch, seq)?;
        let mut acts = self.forward_acts(acts, rope, tokens, None)?;
        let Some(g) = acts.grads.as_mut() else {
            return Err(Error::WorkspaceMismatch {
                what: "a training micro-batch needs a Mode::Training workspace",
            });
        };
        if let Some(out) = logits_out {
            out.copy_from_slice(acts.logits);
        }
        loss::cross_entropy_inplace_part(acts.logits, g.ce_row, targets, acts.dims.v, counted)?;
        Ok((acts, rope))
    }
}

/// The most sequence groups a [`SplitWorkspace`] forward uses at once.
const FORWARD_SPLITS_MAX: usize = 16;

/// Values per chunk of the parallel bf16 initialisation: a pure function of
/// nothing (the chunking never depends on the thread count).
pub const INIT_CHUNK: usize = 1 << 16;

/// `init_bf16` of the values `start .. start + out.len()` of the flat buffer
/// (any range): seeks the keystream to the first matrix element's word and
/// draws exactly as [`MoETransformer::init`], rounding each value to bf16.
fn init_bf16_range(layout: &Layout, out: &mut [u16], start: usize, seed: u64) {
    const TO_UNIT: f32 = 1.0 / (1u32 << 24) as f32;
    let end = start + out.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Keystream words consumed before tensor t: its offset minus the norm
    // elements before it (norms draw nothing).
    let mut norms_before = 0usize;
    let mut words = [0u32; 256];
    for t in layout.tensors() {
        let r = t.range();
        if r.end <= start {
            if t.shape.len() == 1 {
                norms_before += r.len();
            }
            continue;
        }
        if r.start >= end {
            break;
        }
        let (lo, hi) = (r.start.max(start), r.end.min(end));
        let dst = &mut out[lo - start..hi - start];
        if t.shape.len() == 1 {
            dst.iter_mut().for_each(|x| *x = bf16::round(1.0));
            norms_before += r.len();
            continue;
        }
        let bound = if t.offset == layout.embed.start {
            libm::sqrtf(3.0)
        } else {
            1.0 / libm::sqrtf(t.shape[1] as f32)
        };
        rng.set_word_pos((lo - norms_before) as u128);
        for chunk in dst.chunks_mut(words.len()) {
            let ws = &mut words[..chunk.len()];
            ws.iter_mut().for_each(|x| *x = rng.next_u32());
            for (x, &wd) in chunk.iter_mut().zip(ws.iter()) {
                let u = (wd >> 8) as f32 * TO_UNIT;
                *x = bf16::round((2.0 * u - 1.0) * bound);
            }
        }
    }
}

/// A zeroed `u16` buffer of `len` values, or [`Error::AllocationFailed`].
///
/// The reservation is tried first (an impossible size is a typed error), then
/// the buffer comes from the zeroing allocator (`vec![0; len]`: fresh pages
/// from the OS, faulted in by whoever writes them first) — so the parallel
/// bf16 init touches the 13.8 GB of the Full profile on all its threads
/// instead of one thread zeroing it beforehand.
fn alloc_zeroed_u16(len: usize) -> Result<Vec<u16>> {
    let mut probe: Vec<u16> = Vec::new();
    probe
        .try_reserve_exact(len)
        .map_err(|_| Error::AllocationFailed {
            bytes: len.saturating_mul(2),
        })?;
    drop(probe);
    Ok(alloc::vec![0u16; len])
}

#[cfg(test)]
mod prepack_tests {
    use super::*;

    /// The inference forward reads the packed copy and training does not:
    /// with the copy replaced by another model's packed weights, the forward's
    /// logits change, `loss_and_grad`'s stay this model's.
    #[test]
    fn the_forward_reads_the_packed_copy_and_training_does_not() -> Result<()> {
        let cfg = Config::tiny();
        let mut a = MoETransformer::new(&cfg, 1)?;
        let mut b = MoETransformer::new(&cfg, 2)?;
        let (bt, t) = (2, 16);
        let x: Vec<TokenId> = (0..(bt * t) as u32).map(|i| (i * 37) % 1000).collect();
        let mut ws = a.workspace(bt, t, Mode::Inference)?;
        let want_a = a.forward(&mut ws, &x, bt, t)?.to_vec();
        let want_b = b.forward(&mut ws, &x, bt, t)?.to_vec();
        assert!(want_a != want_b);
        b.prepack()?;
        a.prepack()?;
        a.packed = b.packed.take();
        let got = a.forward(&mut ws, &x, bt, t)?.to_vec();
        // Embedding, norms and routers are still `a`'s: not `b`'s logits, but
        // no longer `a`'s.
        assert!(
            got != want_a,
            "the prepacked forward must read the packed copy"
        );
        // Training reads the row-major weights.
        let mut wt = a.workspace(bt, t, Mode::Training)?;
        let mut grads = alloc::vec![0.0; a.layout().total];
        let mut logits = alloc::vec![0.0; bt * t * cfg.vocab_size];
        a.loss_and_grad(&mut wt, &mut grads, &x, &x, bt, t, 0.01, Some(&mut logits))?;
        assert!(logits == want_a, "training must not read the packed copy");
        Ok(())
    }
}
