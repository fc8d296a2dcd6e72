//! The workspace: every activation buffer a forward (and, in training mode,
//! a backward) pass needs, planned from `(config, max_batch, max_seq, mode)`,
//! allocated once as one bumpalo chunk, and carved into named slices per step.
//!
//! Lifetimes make the arena discipline a compile-time fact: `Workspace::carve`
//! takes `&mut self`, resets the bump arena and hands out slices that borrow
//! the workspace, so no slice of step `s` can be alive when step `s+1` resets
//! the arena. The arena has an allocation limit equal to its one chunk, so a
//! request larger than the plan is an `Err`, never a reallocation.
//!
//! Buffers (elements; `n = b·t`, `q = (h+2kv)·d`, `s = n·k` routed slots;
//! "per layer" buffers exist once per layer in training mode and once in all
//! in inference mode, where layers reuse them):
//!
//! | buffer | shape | per layer | used by |
//! |---|---|---|---|
//! | `resid` | `[n, c]` | | residual stream |
//! | `x_in`, `x_mid` | `[n, c]` | yes | RMSNorm inputs (saved) |
//! | `rstd1`, `rstd2` | `[n]` | yes | RMSNorm `1/rms` (saved) |
//! | `xn1`, `xn2` | `[n, c]` | yes | normed inputs of attention / MoE |
//! | `qkv` | `[n, q]` | yes | q, k after RoPE, v |
//! | `probs` | `[b, h, t, t]` (train) / `[max_seq]` (infer: one score row) | yes | attention probabilities |
//! | `att` | `[n, h·d]` | yes | attention output before `o_proj` |
//! | `rprobs` | `[n, e]` | yes | router probabilities |
//! | `topk_idx`, `topk_w` | `[n, k]` | yes | chosen experts, renormalised weights |
//! | `counts`, `offsets` | `[e]`, `[e+1]` | yes | slots per expert (u32) |
//! | `slot_row`, `slot_of` | `[s]` | yes | row of each slot; slot of each (row, choice) (u32) |
//! | `xg`, `ye` | `[s, c]` | yes | gathered expert inputs / outputs |
//! | `h13` | `[s, 2f]` | yes | `[x·w1ᵀ, x·w3ᵀ]` pre-activations |
//! | `act` | `[s, f]` | yes | `silu(h1) ⊙ h3` |
//! | `xf`, `rstd_f` | `[n, c]`, `[n]` | | final norm output / `1/rms` |
//! | `logits` | `[n, v]` | | output |
//! | training only: `dlogits` `[n,v]`, `dresid`, `dxn` `[n,c]`, `dqkv` `[n,q]`, `datt` `[n,h·d]`, `dprobs` `[t,t]`, `drprobs` `[n,e]`, `dtopk_w` `[n,k]`, `dxg`, `dye` `[s,c]`, `dh13` `[s,2f]`, `dact` `[s,f]` | | | backward scratch, shared by all layers |
//!
//! Persistent (not reset per step): the RoPE `cos`/`sin` table `[max_seq, d/2]`.

use alloc::vec::Vec;
use bumpalo::Bump;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::rope::RopeTable;

/// What the workspace is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward only; layers share one set of activation buffers.
    Inference,
    /// Forward with every layer's activations saved, plus backward scratch.
    Training,
}

/// Element type of a planned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `f32`.
    F32,
    /// `u32` (routing indices and counts).
    U32,
}

/// One named buffer of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    /// Name, as in the module table.
    pub name: &'static str,
    /// Element type (both are 4 bytes).
    pub dtype: Dtype,
    /// Elements in one copy.
    pub elems: usize,
    /// Copies (number of layers for per-layer buffers in training mode, else 1).
    pub copies: usize,
}

impl PlanEntry {
    /// Bytes of all copies.
    pub fn bytes(&self) -> usize {
        self.elems * self.copies * 4
    }
}

/// Dimensions of one step, all derived from the config and `(b, t)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Batch `b`.
    pub b: usize,
    /// Sequence length `t`.
    pub t: usize,
    /// Rows `n = b·t`.
    pub n: usize,
    /// Hidden width `c`.
    pub c: usize,
    /// Query heads `h`.
    pub h: usize,
    /// KV heads `kv`.
    pub kv: usize,
    /// Head dim `d`.
    pub d: usize,
    /// Fused q/k/v width `(h+2kv)·d`.
    pub q: usize,
    /// Expert FFN width `f`.
    pub f: usize,
    /// Experts `e`.
    pub e: usize,
    /// Top-k `k`.
    pub k: usize,
    /// Vocabulary `v`.
    pub v: usize,
    /// Layers `L`.
    pub layers: usize,
}

impl Dims {
    /// The dimensions of a `(b, t)` step of `cfg`.
    pub fn new(cfg: &Config, b: usize, t: usize) -> Self {
        Dims {
            b,
            t,
            n: b * t,
            c: cfg.hidden_size,
            h: cfg.num_attention_heads,
            kv: cfg.num_key_value_heads,
            d: cfg.head_dim,
            q: cfg.qkv_dim(),
            f: cfg.intermediate_size,
            e: cfg.num_local_experts,
            k: cfg.num_experts_per_tok,
            v: cfg.vocab_size,
            layers: cfg.num_hidden_layers,
        }
    }
    /// Routed slots, `n·k`.
    pub fn s(&self) -> usize {
        self.n * self.k
    }
}

/// The named buffer sizes of a step of shape `(b, t)` in `mode`. The single
/// source of truth for both the plan and the carving.
/// `max_seq` sizes the inference-mode score row (a query attends to at most
/// `max_seq` keys, including KV-cached ones).
fn entries(dm: &Dims, mode: Mode, max_seq: usize) -> [PlanEntry; 39] {
    use Dtype::{F32, U32};
    let train = mode == Mode::Training;
    let lc = if train { dm.layers } else { 1 };
    let (n, c, s) = (dm.n, dm.c, dm.s());
    let probs = if train {
        dm.b * dm.h * dm.t * dm.t
    } else {
        max_seq
    };
    let g = |x: usize| if train { x } else { 0 };
    let e = |name, dtype, elems, copies| PlanEntry {
        name,
        dtype,
        elems,
        copies,
    };
    [
        e("resid", F32, n * c, 1),
        e("x_in", F32, n * c, lc),
        e("rstd1", F32, n, lc),
        e("xn1", F32, n * c, lc),
        e("qkv", F32, n * dm.q, lc),
        e("probs", F32, probs, lc),
        e("att", F32, n * dm.h * dm.d, lc),
        e("x_mid", F32, n * c, lc),
        e("rstd2", F32, n, lc),
        e("xn2", F32, n * c, lc),
        e("rprobs", F32, n * dm.e, lc),
        e("topk_idx", U32, n * dm.k, lc),
        e("topk_w", F32, n * dm.k, lc),
        e("counts", U32, dm.e, lc),
        e("offsets", U32, dm.e + 1, lc),
        e("slot_row", U32, s, lc),
        e("slot_of", U32, s, lc),
        e("xg", F32, s * c, lc),
        e("h13", F32, s * 2 * dm.f, lc),
        e("act", F32, s * dm.f, lc),
        e("ye", F32, s * c, lc),
        e("xf", F32, n * c, 1),
        e("rstd_f", F32, n, 1),
        e("logits", F32, n * dm.v, 1),
        e("dlogits", F32, g(n * dm.v), 1),
        e("dresid", F32, g(n * c), 1),
        e("dxn", F32, g(n * c), 1),
        e("dqkv", F32, g(n * dm.q), 1),
        e("datt", F32, g(n * dm.h * dm.d), 1),
        e("dprobs", F32, g(dm.t * dm.t), 1),
        e("drprobs", F32, g(n * dm.e), 1),
        e("dtopk_w", F32, g(n * dm.k), 1),
        e("dxg", F32, g(s * c), 1),
        e("dh13", F32, g(s * 2 * dm.f), 1),
        e("dact", F32, g(s * dm.f), 1),
        e("dye", F32, g(s * c), 1),
        e("ce_row", F32, g(n), 1),
        e("aux_f", F32, g(dm.e), 1),
        e("aux_p", F32, g(dm.e), 1),
    ]
}

/// Activations of one transformer block (see the module table for shapes).
#[allow(missing_docs)]
#[derive(Debug, Default)]
pub(crate) struct LayerActs<'a> {
    pub x_in: &'a mut [f32],
    pub rstd1: &'a mut [f32],
    pub xn1: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub probs: &'a mut [f32],
    pub att: &'a mut [f32],
    pub x_mid: &'a mut [f32],
    pub rstd2: &'a mut [f32],
    pub xn2: &'a mut [f32],
    pub rprobs: &'a mut [f32],
    pub topk_idx: &'a mut [u32],
    pub topk_w: &'a mut [f32],
    pub counts: &'a mut [u32],
    pub offsets: &'a mut [u32],
    pub slot_row: &'a mut [u32],
    pub slot_of: &'a mut [u32],
    pub xg: &'a mut [f32],
    pub h13: &'a mut [f32],
    pub act: &'a mut [f32],
    pub ye: &'a mut [f32],
}

/// Backward scratch, shared by all layers.
#[allow(missing_docs)]
#[derive(Debug)]
pub(crate) struct GradActs<'a> {
    pub dlogits: &'a mut [f32],
    pub dresid: &'a mut [f32],
    pub dxn: &'a mut [f32],
    pub dqkv: &'a mut [f32],
    pub datt: &'a mut [f32],
    pub dprobs: &'a mut [f32],
    pub drprobs: &'a mut [f32],
    pub dtopk_w: &'a mut [f32],
    pub dxg: &'a mut [f32],
    pub dh13: &'a mut [f32],
    pub dact: &'a mut [f32],
    pub dye: &'a mut [f32],
    pub ce_row: &'a mut [f32],
    pub aux_f: &'a mut [f32],
    pub aux_p: &'a mut [f32],
}

/// Everything carved for one step.
#[derive(Debug)]
pub(crate) struct Acts<'a> {
    pub dims: Dims,
    pub resid: &'a mut [f32],
    pub layers: &'a mut [LayerActs<'a>],
    pub xf: &'a mut [f32],
    pub rstd_f: &'a mut [f32],
    pub logits: &'a mut [f32],
    /// `Some` in training mode.
    pub grads: Option<GradActs<'a>>,
    pub rope: &'a RopeTable,
}

/// Slack for the alignment of the per-layer table inside the arena.
const TABLE_ALIGN_SLACK: usize = 16;

/// Planned activation memory for one model shape; see the module docs.
#[derive(Debug)]
pub struct Workspace {
    cfg: Config,
    mode: Mode,
    max_batch: usize,
    max_seq: usize,
    plan_bytes: usize,
    bump: Bump,
    rope: RopeTable,
}

impl Workspace {
    /// Plans and allocates the workspace for steps of up to `max_batch × max_seq` tokens.
    ///
    /// # Errors
    /// Invalid config, `max_batch == 0` / `max_seq == 0` ([`Error::EmptyInput`]),
    /// `max_seq > max_position_embeddings` ([`Error::SeqTooLong`]), size overflow,
    /// or a failed allocation.
    pub fn new(cfg: &Config, max_batch: usize, max_seq: usize, mode: Mode) -> Result<Self> {
        cfg.validate()?;
        if max_batch == 0 {
            return Err(Error::EmptyInput { arg: "max_batch" });
        }
        if max_seq == 0 {
            return Err(Error::EmptyInput { arg: "max_seq" });
        }
        if max_seq > cfg.max_position_embeddings {
            return Err(Error::SeqTooLong {
                seq: max_seq,
                max: cfg.max_position_embeddings,
            });
        }
        let plan_bytes = Self::plan_bytes(cfg, max_batch, max_seq, mode)?;
        let capacity = plan_bytes + Self::table_bytes(cfg, mode) + TABLE_ALIGN_SLACK;
        let bump = Bump::try_with_capacity(capacity)
            .map_err(|_| Error::AllocationFailed { bytes: capacity })?;
        // One chunk, never another: a request beyond the plan fails instead of growing.
        bump.set_allocation_limit(Some(bump.allocated_bytes()));
        let rope = RopeTable::new(cfg, max_seq)?;
        Ok(Workspace {
            cfg: *cfg,
            mode,
            max_batch,
            max_seq,
            plan_bytes,
            bump,
            rope,
        })
    }

    /// The named buffers of a step at the planned maximum shape.
    pub fn plan(&self) -> Vec<PlanEntry> {
        entries(
            &Dims::new(&self.cfg, self.max_batch, self.max_seq),
            self.mode,
            self.max_seq,
        )
        .to_vec()
    }

    /// Activation bytes of the plan at the maximum shape, checked for overflow.
    fn plan_bytes(cfg: &Config, max_batch: usize, max_seq: usize, mode: Mode) -> Result<usize> {
        let of = Error::Overflow {
            what: "workspace plan bytes",
        };
        // Check the largest products before `entries` computes them unchecked.
        let n = max_batch.checked_mul(max_seq).ok_or(of.clone())?;
        let s = n.checked_mul(cfg.num_experts_per_tok).ok_or(of.clone())?;
        let wide = [
            s.checked_mul(2 * cfg.intermediate_size),
            n.checked_mul(cfg.vocab_size),
            n.checked_mul(cfg.qkv_dim()),
            max_batch
                .checked_mul(cfg.num_attention_heads)
                .and_then(|x| x.checked_mul(max_seq))
                .and_then(|x| x.checked_mul(max_seq)),
            s.checked_mul(cfg.hidden_size),
        ];
        for w in wide {
            w.and_then(|x| x.checked_mul(4 * cfg.num_hidden_layers.max(1)))
                .ok_or(of.clone())?;
        }
        let dm = Dims::new(cfg, max_batch, max_seq);
        entries(&dm, mode, max_seq)
            .iter()
            .try_fold(0usize, |acc, e| acc.checked_add(e.bytes()))
            .ok_or(of)
    }

    fn table_bytes(cfg: &Config, mode: Mode) -> usize {
        let copies = if mode == Mode::Training {
            cfg.num_hidden_layers
        } else {
            1
        };
        copies * core::mem::size_of::<LayerActs<'static>>()
    }

    /// Bytes of the plan: activation buffers at the maximum shape plus the
    /// per-layer slice table and the RoPE table. This is what `arena_bytes`
    /// reports in the benchmark.
    pub fn bytes(&self) -> usize {
        self.plan_bytes + Self::table_bytes(&self.cfg, self.mode) + self.rope.bytes()
    }

    /// The mode it was planned for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Planned maximum batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Planned maximum sequence length.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// The config it was planned for.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Checks that a step of `(batch, seq)` for `cfg` fits this workspace.
    pub(crate) fn check(&self, cfg: &Config, batch: usize, seq: usize) -> Result<()> {
        if *cfg != self.cfg {
            return Err(Error::WorkspaceMismatch {
                what: "the workspace was planned for a different Config",
            });
        }
        if batch == 0 {
            return Err(Error::EmptyInput { arg: "batch" });
        }
        if seq == 0 {
            return Err(Error::EmptyInput { arg: "seq" });
        }
        if seq > cfg.max_position_embeddings {
            return Err(Error::SeqTooLong {
                seq,
                max: cfg.max_position_embeddings,
            });
        }
        if batch > self.max_batch {
            return Err(Error::WorkspaceTooSmall {
                dim: "batch",
                requested: batch,
                planned: self.max_batch,
            });
        }
        if seq > self.max_seq {
            return Err(Error::WorkspaceTooSmall {
                dim: "seq",
                requested: seq,
                planned: self.max_seq,
            });
        }
        Ok(())
    }

    /// Resets the arena and carves every buffer for a step of `(batch, seq)`
    /// (call [`Workspace::check`] first). Buffers are zero-filled.
    pub(crate) fn carve(&mut self, batch: usize, seq: usize) -> Result<Acts<'_>> {
        let dm = Dims::new(&self.cfg, batch, seq);
        let train = self.mode == Mode::Training;
        self.bump.reset();
        let bump = &self.bump;
        let sizes = entries(&dm, self.mode, self.max_seq);
        let fail = |bytes: usize| Error::AllocationFailed { bytes };
        let f32s = |i: usize| -> Result<&mut [f32]> {
            let n = sizes[i].elems;
            bump.try_alloc_slice_fill_copy(n, 0.0f32)
                .map_err(|_| fail(n * 4))
        };
        let u32s = |i: usize| -> Result<&mut [u32]> {
            let n = sizes[i].elems;
            bump.try_alloc_slice_fill_copy(n, 0u32)
                .map_err(|_| fail(n * 4))
        };
        let copies = sizes[1].copies;
        let layers = bump
            .try_alloc_slice_fill_with(copies, |_| LayerActs::default())
            .map_err(|_| fail(copies * core::mem::size_of::<LayerActs<'static>>()))?;
        for l in layers.iter_mut() {
            *l = LayerActs {
                x_in: f32s(1)?,
                rstd1: f32s(2)?,
                xn1: f32s(3)?,
                qkv: f32s(4)?,
                probs: f32s(5)?,
                att: f32s(6)?,
                x_mid: f32s(7)?,
                rstd2: f32s(8)?,
                xn2: f32s(9)?,
                rprobs: f32s(10)?,
                topk_idx: u32s(11)?,
                topk_w: f32s(12)?,
                counts: u32s(13)?,
                offsets: u32s(14)?,
                slot_row: u32s(15)?,
                slot_of: u32s(16)?,
                xg: f32s(17)?,
                h13: f32s(18)?,
                act: f32s(19)?,
                ye: f32s(20)?,
            };
        }
        let resid = f32s(0)?;
        let xf = f32s(21)?;
        let rstd_f = f32s(22)?;
        let logits = f32s(23)?;
        let grads = if train {
            Some(GradActs {
                dlogits: f32s(24)?,
                dresid: f32s(25)?,
                dxn: f32s(26)?,
                dqkv: f32s(27)?,
                datt: f32s(28)?,
                dprobs: f32s(29)?,
                drprobs: f32s(30)?,
                dtopk_w: f32s(31)?,
                dxg: f32s(32)?,
                dh13: f32s(33)?,
                dact: f32s(34)?,
                dye: f32s(35)?,
                ce_row: f32s(36)?,
                aux_f: f32s(37)?,
                aux_p: f32s(38)?,
            })
        } else {
            None
        };
        Ok(Acts {
            dims: dm,
            resid,
            layers,
            xf,
            rstd_f,
            logits,
            grads,
            rope: &self.rope,
        })
    }
}
