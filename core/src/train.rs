//! The training step (FR-05): forward → loss → backward → (clip, hook) → AdamW,
//! data-parallel over fixed micro-batches.
//!
//! A step's batch of `b` sequences is split into `M = min(micro_batches, b)`
//! contiguous micro-batches ([`crate::model::split_range`]); `M` is a
//! setting of the trainer ([`DEFAULT_MICRO_BATCHES`]), never the thread
//! count. Each micro-batch has its own planned workspace and gradient buffer.
//! One step is five phases, each a region of the trainer's [`Pool`]:
//! ```text
//! A  per micro-batch m: forward, CE head (dlogits / m_total)           parallel over m
//! B  pool CE (Σ ce_row / m_total) and the aux statistics, L·n rows      caller, fixed order
//! C  per micro-batch m: backward into g_m                              parallel over m
//! D  per parameter range: g_0 += g_1, g_2 += g_3, g_0 += g_2 (a fixed   parallel over ranges
//!    tree over m; each g_m, m ≥ 1, is zeroed as it is read), Σ g² in f64
//!    (the step's one finiteness test of its gradients)
//! E  AdamW + clipping scale + g_0 ← 0, one pass per parameter range     parallel over ranges
//! ```
//!
//! Gradient zeroing (the contract's "zeroed once per step"): every gradient
//! buffer is zero when a step starts. The fused passes keep it so — phase D
//! writes `g_m ← 0` behind its read of `g_m` (m ≥ 1) and phase E writes
//! `g_0 ← 0` behind its read of `g_0` ([`AdamW::update_scaled_zeroing_with`]),
//! so no separate sweep re-walks the buffers. A step that did not end in that
//! pass (an error, or [`Trainer::compute_gradients`], which leaves `g_0`
//! readable) marks the buffers dirty, and the next step's phase A zeroes
//! them first, as before.
//! Every phase's results depend only on `M` and the fixed parameter ranges,
//! so parameters are bit-identical for every thread count. The CE value and
//! the aux loss are those of a single pass over the whole batch up to the
//! order of the aux sums (each micro-batch's forward pools its layers; the
//! micro-batch sums are added in order); the gradients differ from a single
//! pass only by the order of the sums over rows (each micro-batch's GEMMs,
//! then the tree), within the golden tolerance.

use alloc::vec::Vec;

use crate::arena::{Acts, AttnMemory, Memory, Mode, Recompute};
use crate::config::{check_param, Domain, TokenId};
use crate::error::{Error, Result};
use crate::layout::{alloc_zeroed, Layout};
use crate::model::{check_targets, check_tokens, split_range, Losses, MoETransformer, Precision};
use crate::optim::{
    add_zero_sum_sq, clip_coef, range_len, sum_sq, AdamW, AdamWConfig, LrSchedule, PARAM_RANGES,
};
use crate::parallel::Pool;
use crate::rope::RopeTable;
use crate::workspace::Workspace;

/// Micro-batches a step is split into by default (at most the batch):
/// four, so that 1, 2 and 4 threads divide the work evenly.
pub const DEFAULT_MICRO_BATCHES: usize = 4;

/// The most micro-batches a trainer accepts.
pub const MAX_MICRO_BATCHES: usize = 16;

/// `sqrt(f32::MAX)`, the largest gradient magnitude whose square is finite.
const MAX_SAFE_GRAD: f64 = 1.844_674_3e19;

/// A caller's function over the flat gradients and their layout.
type GradHook<'a> = dyn FnMut(&mut [f32], &Layout) + 'a;

/// Training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// AdamW hyper-parameters.
    pub adamw: AdamWConfig,
    /// Global-norm clip threshold (`None`: no clipping).
    pub clip_grad_norm: Option<f32>,
    /// Weight of the aux load-balancing loss (`alpha`, default 0.01; 0 gives exactly CE).
    pub aux_alpha: f32,
    /// [`Precision::F32`] (default): every buffer f32. [`Precision::Bf16`]:
    /// **mixed precision** — f32 master weights, gradients and AdamW state;
    /// the forward and backward read a bf16 copy of the weights (refreshed
    /// by the AdamW pass itself), and the attention probabilities are saved
    /// as bf16 ([`AttnMemory::SavedBf16`]). Weight gradients stay f32.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            schedule: LrSchedule::constant(1e-3),
            adamw: AdamWConfig::default(),
            clip_grad_norm: Some(1.0),
            aux_alpha: 0.01,
            precision: Precision::F32,
        }
    }
}

/// The training workspace's memory options for `precision`: the default,
/// or (mixed precision) the probabilities saved as bf16.
pub fn training_memory(precision: Precision) -> Memory {
    match precision {
        Precision::F32 => Memory::DEFAULT,
        Precision::Bf16 => Memory {
            recompute: Recompute::None,
            attention: AttnMemory::SavedBf16,
        },
    }
}

impl TrainConfig {
    /// Checks every field's domain.
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        self.adamw.validate()?;
        if let Some(c) = self.clip_grad_norm {
            check_param("clip_grad_norm", c, Domain::Positive)?;
        }
        check_param("aux_alpha", self.aux_alpha, Domain::NonNegative)
    }
}

/// What one `train_step` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// `ce + alpha·aux` at the weights before the update.
    pub loss: f32,
    /// Cross-entropy part.
    pub ce_loss: f32,
    /// Aux load-balancing loss (before `alpha`).
    pub aux_loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used for this update.
    pub lr: f32,
    /// Step number after this update (1 after the first step).
    pub step: u64,
}

/// Owns everything a training loop touches: model, gradients, optimiser
/// state and the training workspace. After construction a step allocates nothing.
///
/// Mixed precision ([`TrainConfig::precision`] = [`Precision::Bf16`]): the
/// trainer also holds `shadow`, the same model in bf16 (all parameters
/// rounded to nearest even; [`MoETransformer::to_precision`]), on which every
/// forward and backward runs; [`Trainer::model`] stays the f32 master. The
/// AdamW pass writes the rounded updated weights into the shadow in the same
/// sweep ([`AdamW::update_scaled_zeroing_bf16_with`]).
#[derive(Debug)]
pub struct Trainer {
    /// The f32 (master) model.
    model: MoETransformer,
    /// Mixed precision: the bf16 copy the steps compute with.
    shadow: Option<MoETransformer>,
    /// The master was changed outside a step ([`Trainer::params_mut`]): the
    /// next step re-rounds the shadow first.
    shadow_stale: bool,
    /// Micro-batch 0's gradients, and the reduced sum after a step.
    grads: Vec<f32>,
    opt: AdamW,
    /// Micro-batch 0's workspace.
    ws: Workspace,
    config: TrainConfig,
    /// Micro-batches 1.. (workspace and gradient buffer each).
    micro: Vec<Micro>,
    pool: Pool,
    max_batch: usize,
    /// Every gradient buffer is known to be zero (the last step ended in the
    /// zeroing AdamW pass, or none has run yet).
    grads_zero: bool,
}

/// A micro-batch's own memory.
#[derive(Debug)]
struct Micro {
    ws: Workspace,
    grads: Vec<f32>,
}

/// One micro-batch while a step runs.
struct Slot<'a> {
    ws: Option<&'a mut Workspace>,
    grads: &'a mut [f32],
    acts: Option<(Acts<'a>, &'a RopeTable)>,
    tokens: &'a [TokenId],
    targets: &'a [TokenId],
    batch: usize,
    /// The whole batch's counted targets `m` (the CE is a mean over them).
    counted: usize,
    logits: Option<&'a mut [f32]>,
    /// The gradients must be zeroed before the forward (they are not known to be zero).
    zero: bool,
    err: Option<Error>,
}

impl Slot<'_> {
    /// Phase A: zero the gradients if they are not known to be zero, forward, CE head.
    fn forward(&mut self, model: &MoETransformer, seq: usize) {
        if self.zero {
            self.grads.fill(0.0);
        }
        let Some(ws) = self.ws.take() else { return };
        let out = self.logits.take();
        match model.micro_forward(
            ws,
            self.tokens,
            self.targets,
            self.batch,
            seq,
            self.counted,
            out,
        ) {
            Ok((acts, rope)) => self.acts = Some((acts, rope)),
            Err(e) => self.err = Some(e),
        }
    }

    /// Phase C: backward into this micro-batch's gradients.
    fn backward(&mut self, model: &MoETransformer) {
        if let Some((acts, rope)) = self.acts.take() {
            if let Err(e) = model.backward_pass(acts, rope, self.grads, self.tokens) {
                self.err = Some(e);
            }
        }
    }
}

/// One parameter range of phase D.
#[derive(Default)]
struct RangeSum<'a> {
    bufs: [Option<&'a mut [f32]>; MAX_MICRO_BATCHES],
    sum_sq: f64,
}

impl RangeSum<'_> {
    /// `g_i += g_{i+s}`, then `g_{i+s} ← 0`, for `s = 1, 2, 4, …` (a fixed
    /// tree over the `parts` micro-batches: each `g_m`, m ≥ 1, is read once
    /// and zeroed behind the read, ready for the next step), then `Σ g_0²` of
    /// the range.
    fn reduce(&mut self, parts: usize) {
        let mut s = 1;
        let mut summed = false;
        while s < parts {
            let mut i = 0;
            // The last level adds into g_0 alone (2s ≥ parts): its sweep also
            // sums the squares, bit-identical to a separate `sum_sq` after it.
            let last = 2 * s >= parts;
            while i + s < parts {
                let (lo, hi) = self.bufs.split_at_mut(i + s);
                if let (Some(a), Some(b)) = (&mut lo[i], &mut hi[0]) {
                    if last && i == 0 {
                        self.sum_sq = add_zero_sum_sq(a, b);
                        summed = true;
                    } else {
                        crate::kernels::vectorized(
                            #[inline(always)]
                            || {
                                a.iter_mut().zip(b.iter_mut()).for_each(|(x, y)| {
                                    *x += *y;
                                    *y = 0.0;
                                })
                            },
                        );
                    }
                }
                i += 2 * s;
            }
            s *= 2;
        }
        if !summed {
            self.sum_sq = self.bufs[0].as_deref().map_or(0.0, sum_sq);
        }
    }
}

impl Trainer {
    /// A trainer for steps of up to `max_batch × max_seq` tokens.
    ///
    /// Single-threaded, with [`DEFAULT_MICRO_BATCHES`]: the same parameters,
    /// bit for bit, as [`Trainer::with_threads`] for any thread count.
    pub fn new(
        model: MoETransformer,
        config: TrainConfig,
        max_batch: usize,
        max_seq: usize,
    ) -> Result<Self> {
        Self::with_pool(
            model,
            config,
            max_batch,
            max_seq,
            Pool::single(),
            DEFAULT_MICRO_BATCHES,
        )
    }

    /// [`Trainer::new`] running each step on `threads` threads (a new
    /// [`Pool`]; `threads` is the total, the caller included).
    ///
    /// # Errors
    /// As [`Trainer::new`]; [`Error::InvalidParameter`] (`"threads"`) for 0.
    pub fn with_threads(
        model: MoETransformer,
        config: TrainConfig,
        max_batch: usize,
        max_seq: usize,
        threads: usize,
    ) -> Result<Self> {
        let pool = Pool::new(threads)?;
        Self::with_pool(
            model,
            config,
            max_batch,
            max_seq,
            pool,
            DEFAULT_MICRO_BATCHES,
        )
    }

    /// A trainer splitting each step into `min(micro_batches, batch)`
    /// micro-batches, run on `pool`. Memory: `min(micro_batches, max_batch)`
    /// training workspaces planned for `⌈max_batch/M⌉ × max_seq` tokens and as
    /// many gradient buffers `[P]`. `micro_batches = 1` is the single pass
    /// over the whole batch.
    ///
    /// # Errors
    /// As [`Trainer::new`]; [`Error::InvalidParameter`] (`"micro_batches"`)
    /// outside `1..=MAX_MICRO_BATCHES`.
    pub fn with_pool(
        model: MoETransformer,
        config: TrainConfig,
        max_batch: usize,
        max_seq: usize,
        pool: Pool,
        micro_batches: usize,
    ) -> Result<Self> {
        model.require_f32("training (Trainer)")?;
        config.validate()?;
        if !(1..=MAX_MICRO_BATCHES).contains(&micro_batches) {
            return Err(Error::InvalidParameter {
                param: "micro_batches",
                expected: "in 1..=16",
                actual: micro_batches as f64,
            });
        }
        let parts = micro_batches.min(max_batch.max(1));
        let per = max_batch.div_ceil(parts);
        let mem = training_memory(config.precision);
        let ws = model.workspace_with(per, max_seq, Mode::Training, mem)?;
        let shadow = match config.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(model.to_precision(Precision::Bf16)?),
        };
        let len = model.layout().total;
        let mut micro = Vec::new();
        micro
            .try_reserve_exact(parts - 1)
            .map_err(|_| Error::AllocationFailed { bytes: parts })?;
        for _ in 1..parts {
            micro.push(Micro {
                ws: model.workspace_with(per, max_seq, Mode::Training, mem)?,
                grads: alloc_zeroed(len)?,
            });
        }
        Ok(Trainer {
            grads: alloc_zeroed(len)?,
            opt: AdamW::new(config.adamw, len)?,
            model,
            shadow,
            shadow_stale: false,
            ws,
            config,
            micro,
            pool,
            max_batch,
            grads_zero: true,
        })
    }

    /// Micro-batches of a full batch (`min(micro_batches, max_batch)`).
    pub fn micro_batches(&self) -> usize {
        1 + self.micro.len()
    }

    /// Threads a step runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The pool a step runs on.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs the following steps on `pool`. The micro-batches stay as they
    /// are, so the results do not change (e.g. after loading a checkpoint).
    pub fn set_pool(&mut self, pool: Pool) {
        self.pool = pool;
    }

    /// The model (the f32 master weights, also in mixed precision).
    pub fn model(&self) -> &MoETransformer {
        &self.model
    }

    /// The model the steps compute with: [`Trainer::model`], or in mixed
    /// precision its bf16 copy (as of the last step; after
    /// [`Trainer::params_mut`], refreshed by the next step).
    pub fn compute_model(&self) -> &MoETransformer {
        self.shadow.as_ref().unwrap_or(&self.model)
    }

    /// The training precision ([`TrainConfig::precision`]).
    pub fn precision(&self) -> Precision {
        self.config.precision
    }

    /// Bytes of the mixed-precision bf16 copy (0 in f32).
    pub fn shadow_bytes(&self) -> usize {
        self.shadow.as_ref().map_or(0, MoETransformer::param_bytes)
    }

    /// Consumes the trainer, returning the model.
    pub fn into_model(self) -> MoETransformer {
        self.model
    }

    /// The reduced gradients of the last [`Trainer::compute_gradients`].
    ///
    /// After a successful [`Trainer::train_step`] /
    /// [`Trainer::train_step_with_hook`] they are all zero: the AdamW pass
    /// zeroes each gradient behind its read, for the next step (see the module
    /// docs). To see a step's gradients, read them in the hook of
    /// [`Trainer::train_step_with_hook`] (clipped, before the update).
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// Optimiser state.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Optimiser state, mutably (to restore a training checkpoint through its
    /// validating setters [`AdamW::set_moments`] and [`AdamW::set_step`]).
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// Model parameters, mutably (to restore a checkpoint). In mixed
    /// precision these are the master weights; the next step rounds them
    /// into the bf16 copy before it computes.
    pub fn params_mut(&mut self) -> &mut [f32] {
        self.shadow_stale = self.shadow.is_some();
        // A trainer holds an f32 model (the constructors refuse bf16), so
        // the `Err` arm is unreachable; an empty slice, never a panic.
        self.model.params_mut().unwrap_or(&mut [])
    }

    /// Re-rounds the bf16 copy from the master weights if
    /// [`Trainer::params_mut`] may have changed them.
    fn refresh_shadow(&mut self) -> Result<()> {
        if !self.shadow_stale {
            return Ok(());
        }
        if let Some(shadow) = &mut self.shadow {
            let master = self.model.params()?;
            let mut copy = shadow.params_bf16_mut()?;
            crate::kernels::bf16::round_slice(&mut copy, master);
            if let Some(index) = crate::kernels::bf16::first_non_finite(&copy) {
                return Err(Error::NonFinite {
                    what: "params rounded to bf16 (beyond bf16's range)",
                    index,
                });
            }
        }
        self.shadow_stale = false;
        Ok(())
    }

    /// The training config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Chooses how the training workspace provides each step's buffers
    /// (feature `heap-per-step`; see [`crate::Workspace::set_alloc_policy`]).
    #[cfg(feature = "heap-per-step")]
    pub fn set_alloc_policy(&mut self, policy: crate::AllocPolicy) {
        self.ws.set_alloc_policy(policy);
        self.micro
            .iter_mut()
            .for_each(|m| m.ws.set_alloc_policy(policy));
    }

    /// Bytes of the workspace plans (all micro-batches).
    pub fn workspace_bytes(&self) -> usize {
        self.ws.bytes() + self.micro.iter().map(|m| m.ws.bytes()).sum::<usize>()
    }

    /// Bytes of the gradient buffers (one `[P]` per micro-batch).
    pub fn grad_bytes(&self) -> usize {
        4 * self.grads.len() * self.micro_batches()
    }

    /// Forward + loss + backward only: fills [`Trainer::grads`] (the sum over
    /// the micro-batches) and optionally copies out the logits; no optimiser step.
    ///
    /// # Errors
    /// As [`MoETransformer::loss_and_grad`] (`batch` is checked against the
    /// trainer's `max_batch`).
    pub fn compute_gradients(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        logits_out: Option<&mut [f32]>,
    ) -> Result<Losses> {
        self.gradients(tokens, targets, batch, seq, logits_out)
            .map(|(losses, _)| losses)
    }

    /// Phases A–D of the module docs: the losses and `Σ g²` of the reduced gradients.
    fn gradients(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        logits_out: Option<&mut [f32]>,
    ) -> Result<(Losses, f64)> {
        let cfg = *self.model.config();
        let alpha = self.config.aux_alpha;
        // The whole batch against the trainer's plan; each micro-batch's
        // workspace holds ⌈b/M⌉ sequences (checked for `seq` here).
        crate::arena::check_shape(&cfg, batch, seq, self.max_batch, usize::MAX)?;
        self.ws.check(&cfg, 1, seq)?;
        let (n, v) = (batch * seq, cfg.vocab_size);
        check_tokens("tokens", tokens, n, v)?;
        check_targets(targets, n, v)?;
        // The CE averages over the counted (not ignored) targets of the whole batch.
        let counted = crate::loss::counted_targets(targets);
        if counted == 0 {
            return Err(Error::EmptyInput {
                arg: "non-ignored targets",
            });
        }
        check_param("aux_alpha", alpha, Domain::NonNegative)?;
        if let Some(out) = &logits_out {
            if out.len() != n * v {
                return Err(Error::ShapeMismatch {
                    arg: "logits_out",
                    expected: n * v,
                    actual: out.len(),
                });
            }
        }
        self.refresh_shadow()?;
        let parts = self.micro_batches().min(batch);
        // Zero in phase A unless the last step's fused passes left zeros;
        // until this step ends in the zeroing AdamW pass, the buffers are dirty.
        let zero = !core::mem::replace(&mut self.grads_zero, false);
        let Trainer {
            model,
            shadow,
            grads,
            ws,
            micro,
            pool,
            ..
        } = self;
        // Mixed precision computes on the bf16 copy.
        let model = shadow.as_ref().unwrap_or(&*model);
        if zero {
            // The micro-batches this batch leaves unused are zeroed too (an
            // earlier failed step may have left them dirty, and the next full
            // batch will not zero them).
            micro
                .iter_mut()
                .skip(parts - 1)
                .for_each(|m| m.grads.fill(0.0));
        }
        let losses = {
            let mut slots: [Option<Slot>; MAX_MICRO_BATCHES] = core::array::from_fn(|_| None);
            let mut out = logits_out;
            let bufs = core::iter::once((ws, &mut grads[..]))
                .chain(micro.iter_mut().map(|m| (&mut m.ws, &mut m.grads[..])));
            for (i, (w, g)) in bufs.take(parts).enumerate() {
                let (lo, hi) = split_range(batch, parts, i);
                let (r0, r1) = (lo * seq, hi * seq);
                let logits = out.take().map(|o| {
                    let (mine, rest) = o.split_at_mut((r1 - r0) * v);
                    out = Some(rest);
                    mine
                });
                slots[i] = Some(Slot {
                    ws: Some(w),
                    grads: g,
                    acts: None,
                    tokens: &tokens[r0..r1],
                    targets: &targets[r0..r1],
                    batch: hi - lo,
                    counted,
                    logits,
                    zero,
                    err: None,
                });
            }
            let slots = &mut slots[..parts];
            // A: forward + CE head per micro-batch.
            pool.for_each_mut(slots, |_, s| {
                if let Some(s) = s {
                    s.forward(model, seq);
                }
            });
            first_err(slots)?;
            // B: the whole batch's CE and aux loss, in a single pass's order.
            let losses = pool_losses(slots, cfg.num_hidden_layers, n, counted, alpha)?;
            // C: backward per micro-batch.
            pool.for_each_mut(slots, |_, s| {
                if let Some(s) = s {
                    s.backward(model);
                }
            });
            first_err(slots)?;
            losses
        };
        // D: the fixed tree over micro-batches, per parameter range.
        let len = grads.len();
        let chunk = range_len(len);
        let mut ranges: [RangeSum; PARAM_RANGES] = core::array::from_fn(|_| RangeSum::default());
        let bufs =
            core::iter::once(&mut grads[..]).chain(micro.iter_mut().map(|m| &mut m.grads[..]));
        for (b, buf) in bufs.take(parts).enumerate() {
            for (r, c) in buf.chunks_mut(chunk).enumerate() {
                ranges[r].bufs[b] = Some(c);
            }
        }
        pool.for_each_mut(&mut ranges, |_, r| r.reduce(parts));
        let sq = ranges.iter().fold(0.0f64, |acc, r| acc + r.sum_sq);
        // The only finiteness test of this step's gradients (the backward
        // does not scan its micro-batch's buffer): a sum of f32 squares in f64
        // is finite iff every reduced g is, and a reduced g is finite only if
        // every g_m added into it is (an Inf or NaN term stays non-finite).
        if !sq.is_finite() {
            if let Some(index) = crate::kernels::first_non_finite(grads) {
                return Err(Error::NonFinite {
                    what: "gradients",
                    index,
                });
            }
        }
        Ok((losses, sq))
    }

    /// One step: forward, loss, backward, clipping, AdamW. Clipping is fused
    /// into the AdamW pass (the gradient buffer keeps the unclipped values);
    /// the result is bit-identical to [`Trainer::train_step_with_hook`] with a
    /// hook that does nothing.
    ///
    /// # Errors
    /// As [`Trainer::train_step_with_hook`].
    pub fn train_step(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
    ) -> Result<StepStats> {
        self.step(tokens, targets, batch, seq, None)
    }

    /// [`Trainer::train_step`] with a hook that sees (and may change) the
    /// flat gradients, with their layout, after clipping (applied to the
    /// buffer in place) and before the update.
    ///
    /// # Errors
    /// Any input error of [`MoETransformer::loss_and_grad`]; [`Error::NonFinite`]
    /// if the loss or the gradient norm is not finite (the weights are then left
    /// untouched); the errors of [`AdamW::update_scaled`] (e.g. a hook that
    /// leaves a NaN gradient: refused before any state changes).
    pub fn train_step_with_hook<F: FnMut(&mut [f32], &Layout)>(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        mut hook: F,
    ) -> Result<StepStats> {
        self.step(tokens, targets, batch, seq, Some(&mut hook))
    }

    fn step(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        hook: Option<&mut GradHook<'_>>,
    ) -> Result<StepStats> {
        let (losses, sq) = self.gradients(tokens, targets, batch, seq, None)?;
        let grad_norm = libm::sqrt(sq) as f32;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                what: "gradient norm",
                index: 0,
            });
        }
        let coef = match self.config.clip_grad_norm {
            Some(max) => clip_coef(grad_norm, max),
            None => 1.0,
        };
        // Every |g_i| ≤ ‖g‖, so below this bound no g² can overflow f32 in the
        // second moment; above it AdamW would silently store Inf (found by the
        // stability stress). Refuse before touching any state.
        if grad_norm as f64 * coef as f64 >= MAX_SAFE_GRAD {
            return Err(Error::NonFinite {
                what: "AdamW second moment (gradient norm beyond sqrt(f32::MAX))",
                index: 0,
            });
        }
        let lr = self.config.schedule.at(self.opt.step());
        // Without a hook the update sees the very gradients `sq` was summed
        // over, and the checks above already prove them finite and bounded:
        // AdamW skips its own pass over them. A hook may change them.
        let (scale, norm_sq) = match hook {
            None => (coef, Some(sq)),
            Some(hook) => {
                if coef < 1.0 {
                    self.grads.iter_mut().for_each(|g| *g *= coef);
                }
                hook(&mut self.grads, self.model.layout());
                (1.0, None)
            }
        };
        // E: AdamW, the clipping scale and g_0 ← 0 in one pass (mixed
        // precision: and the refreshed bf16 copy).
        let params = self.model.params_mut()?;
        match &mut self.shadow {
            None => self.opt.update_zeroing_normed(
                &self.pool,
                params,
                &mut self.grads,
                None,
                lr,
                scale,
                norm_sq,
            )?,
            Some(shadow) => {
                let mut copy = shadow.params_bf16_mut()?;
                self.opt.update_zeroing_normed(
                    &self.pool,
                    params,
                    &mut self.grads,
                    Some(&mut copy),
                    lr,
                    scale,
                    norm_sq,
                )?;
            }
        }
        self.grads_zero = true;
        Ok(StepStats {
            loss: losses.loss,
            ce_loss: losses.ce,
            aux_loss: losses.aux,
            grad_norm,
            lr,
            step: self.opt.step(),
        })
    }
}

/// The first micro-batch error, in micro-batch order.
fn first_err(slots: &mut [Option<Slot>]) -> Result<()> {
    match slots.iter_mut().flatten().find_map(|s| s.err.take()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Phase B: `CE = Σ ce_row / m` (`m` counted targets) over all micro-batches' rows in order (the
/// f64 sum of a single pass); the aux statistics, which each micro-batch's
/// forward pooled over its layers, summed in micro-batch order into
/// micro-batch 0's `aux_f`/`aux_p` (a fixed order for every thread count); `aux`, the total, and the E31
/// coefficients copied into every micro-batch's `aux_f`.
fn pool_losses(
    slots: &mut [Option<Slot>],
    layers: usize,
    n: usize,
    counted: usize,
    alpha: f32,
) -> Result<Losses> {
    let mismatch = Error::WorkspaceMismatch {
        what: "a training micro-batch needs a Mode::Training workspace",
    };
    let mut ce_sum = 0.0f64;
    for s in slots.iter().flatten() {
        let Some((Acts { grads: Some(g), .. }, _)) = &s.acts else {
            return Err(mismatch);
        };
        for &x in g.ce_row.iter() {
            ce_sum += x as f64;
        }
    }
    let ce = (ce_sum / counted as f64) as f32;
    let (first, rest) = slots.split_at_mut(1);
    let Some(Slot {
        acts: Some((a0, _)),
        ..
    }) = &mut first[0]
    else {
        return Err(mismatch);
    };
    let Acts {
        grads: Some(g0), ..
    } = a0
    else {
        return Err(mismatch);
    };
    // Each micro-batch's forward pooled its own layers (in layer order);
    // the micro-batch sums add up in micro-batch order.
    for s in rest.iter().flatten() {
        if let Some((Acts { grads: Some(g), .. }, _)) = &s.acts {
            for (d, &x) in g0.aux_f.iter_mut().zip(g.aux_f.iter()) {
                *d += x;
            }
            for (d, &x) in g0.aux_p.iter_mut().zip(g.aux_p.iter()) {
                *d += x;
            }
        }
    }
    let rows = layers * n;
    let aux = crate::loss::aux_finish(g0.aux_f, g0.aux_p, rows);
    let total = ce + alpha * aux;
    if !total.is_finite() {
        return Err(Error::NonFinite {
            what: "loss",
            index: 0,
        });
    }
    crate::loss::aux_grad_coef(g0.aux_f, alpha, rows);
    for s in rest.iter_mut().flatten() {
        if let Some((Acts { grads: Some(g), .. }, _)) = &mut s.acts {
            g.aux_f.copy_from_slice(g0.aux_f);
        }
    }
    Ok(Losses {
        loss: total,
        ce,
        aux,
    })
}
