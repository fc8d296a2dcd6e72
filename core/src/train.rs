//! The training step (FR-05): forward → loss → backward → (clip, hook) → AdamW.

use alloc::vec::Vec;

use crate::arena::Mode;
use crate::config::{check_param, Domain, TokenId};
use crate::error::{Error, Result};
use crate::layout::{alloc_zeroed, Layout};
use crate::model::{Losses, MoETransformer};
use crate::optim::{clip_coef, global_norm, AdamW, AdamWConfig, LrSchedule};
use crate::workspace::Workspace;

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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            schedule: LrSchedule::constant(1e-3),
            adamw: AdamWConfig::default(),
            clip_grad_norm: Some(1.0),
            aux_alpha: 0.01,
        }
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
#[derive(Debug)]
pub struct Trainer {
    model: MoETransformer,
    grads: Vec<f32>,
    opt: AdamW,
    ws: Workspace,
    config: TrainConfig,
}

impl Trainer {
    /// A trainer for steps of up to `max_batch × max_seq` tokens.
    pub fn new(
        model: MoETransformer,
        config: TrainConfig,
        max_batch: usize,
        max_seq: usize,
    ) -> Result<Self> {
        config.validate()?;
        let ws = model.workspace(max_batch, max_seq, Mode::Training)?;
        let len = model.layout().total;
        Ok(Trainer {
            grads: alloc_zeroed(len)?,
            opt: AdamW::new(config.adamw, len)?,
            model,
            ws,
            config,
        })
    }

    /// The model.
    pub fn model(&self) -> &MoETransformer {
        &self.model
    }

    /// Consumes the trainer, returning the model.
    pub fn into_model(self) -> MoETransformer {
        self.model
    }

    /// Gradients of the last step: unclipped after [`Trainer::train_step`]
    /// (clipping is fused into the update), clipped and as the hook left them
    /// after [`Trainer::train_step_with_hook`].
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

    /// Model parameters, mutably (to restore a checkpoint).
    pub fn params_mut(&mut self) -> &mut [f32] {
        self.model.params_mut()
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
    }

    /// Bytes of the workspace plan.
    pub fn workspace_bytes(&self) -> usize {
        self.ws.bytes()
    }

    /// Forward + loss + backward only: fills [`Trainer::grads`] (zeroed first)
    /// and optionally copies out the logits; no optimiser step.
    pub fn compute_gradients(
        &mut self,
        tokens: &[TokenId],
        targets: &[TokenId],
        batch: usize,
        seq: usize,
        logits_out: Option<&mut [f32]>,
    ) -> Result<Losses> {
        // The one place gradients are zeroed.
        self.grads.iter_mut().for_each(|g| *g = 0.0);
        self.model.loss_and_grad(
            &mut self.ws,
            &mut self.grads,
            tokens,
            targets,
            batch,
            seq,
            self.config.aux_alpha,
            logits_out,
        )
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
        let losses = self.compute_gradients(tokens, targets, batch, seq, None)?;
        let grad_norm = global_norm(&self.grads);
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
        let scale = match hook {
            None => coef,
            Some(hook) => {
                if coef < 1.0 {
                    self.grads.iter_mut().for_each(|g| *g *= coef);
                }
                hook(&mut self.grads, self.model.layout());
                1.0
            }
        };
        self.opt
            .update_scaled(self.model.params_mut(), &self.grads, lr, scale)?;
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
