//! The flat parameter layout (CONTRACT §2): one `f32` buffer, carved into
//! named row-major tensors in a fixed order. Gradients and both AdamW moments
//! use the same layout, so every optimiser loop is one flat loop.
//!
//! ```text
//! embed [v,c] | layer 0 | layer 1 | … | norm [c] | lm_head [v,c]
//! layer i: attn_norm [c] | q [h·d,c] | k [kv·d,c] | v [kv·d,c] | o [c,h·d]
//!        | mlp_norm [c] | router [e,c] | expert 0 (w1 [f,c] | w3 [f,c] | w2 [c,f]) | expert 1 …
//! ```
//! q, k and v are adjacent, so `[q;k;v]` is one `[(h+2kv)·d, c]` matrix (one GEMM),
//! and so are `w1`, `w3` of each expert (`[2f, c]`, one GEMM for gate and up).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use crate::config::Config;
use crate::error::{Error, Result};

/// One named tensor in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Hugging Face Mixtral name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Offset of element 0 in the flat buffer.
    pub offset: usize,
    /// Shape: `[n]` for norm weights, `[out, in]` for matrices.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The range of this tensor in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Ranges of one transformer block's tensors in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLayout {
    /// `input_layernorm.weight` `[c]`.
    pub attn_norm: Range<usize>,
    /// `q_proj`, `k_proj`, `v_proj` weights, adjacent: one `[(h+2kv)·d, c]` matrix.
    pub wqkv: Range<usize>,
    /// `o_proj.weight` `[c, h·d]`.
    pub wo: Range<usize>,
    /// `post_attention_layernorm.weight` `[c]`.
    pub mlp_norm: Range<usize>,
    /// `block_sparse_moe.gate.weight` `[e, c]`.
    pub router: Range<usize>,
    /// All experts, `[e, 3·f·c]`: expert `j` is [`Layout::expert`]`(l, j)`.
    pub experts: Range<usize>,
}

/// Ranges of one expert's weights (adjacent: `w13` then `w2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertRanges {
    /// `[w1; w3]`: `[2f, c]`.
    pub w13: Range<usize>,
    /// `w2`: `[c, f]`.
    pub w2: Range<usize>,
}

impl ExpertRanges {
    /// The whole expert, `w13.start .. w2.end` (`3·f·c` elements).
    pub fn all(&self) -> Range<usize> {
        self.w13.start..self.w2.end
    }
}

/// The whole table: ranges by role (for the hot path) and by name (for I/O).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `model.embed_tokens.weight` `[v, c]`.
    pub embed: Range<usize>,
    /// Per-layer ranges.
    pub layers: Vec<LayerLayout>,
    /// `model.norm.weight` `[c]`.
    pub final_norm: Range<usize>,
    /// `lm_head.weight` `[v, c]`.
    pub lm_head: Range<usize>,
    /// Elements of one expert (`3·f·c`): `w1` at +0, `w3` at +f·c, `w2` at +2·f·c.
    pub expert_stride: usize,
    /// Total number of parameters.
    pub total: usize,
    /// `f·c`: elements of `w1` (and of `w3`, and of `w2`).
    fc: usize,
    tensors: Vec<TensorInfo>,
}

impl Layout {
    /// Builds the layout of `cfg` (validated first).
    ///
    /// # Errors
    /// The config's validation error, or [`Error::Overflow`] if the buffer does not fit `usize`.
    pub fn new(cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let total =
            usize::try_from(cfg.param_counts_checked()?.total).map_err(|_| Error::Overflow {
                what: "parameter buffer length (usize)",
            })?;
        let (v, c, f) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size);
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let mut tensors = Vec::new();
        let mut off = 0usize;
        // `total` fits usize, and every partial sum below is <= total, so no overflow.
        let mut push = |name: String, shape: Vec<usize>| -> Range<usize> {
            let at = off;
            off += shape.iter().product::<usize>();
            tensors.push(TensorInfo {
                name,
                offset: at,
                shape,
            });
            at..off
        };
        let embed = push("model.embed_tokens.weight".into(), alloc::vec![v, c]);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}.");
            let attn_norm = push(format!("{p}input_layernorm.weight"), alloc::vec![c]);
            let wq = push(format!("{p}self_attn.q_proj.weight"), alloc::vec![h * d, c]);
            push(
                format!("{p}self_attn.k_proj.weight"),
                alloc::vec![kv * d, c],
            );
            let wv = push(
                format!("{p}self_attn.v_proj.weight"),
                alloc::vec![kv * d, c],
            );
            let wqkv = wq.start..wv.end;
            let wo = push(format!("{p}self_attn.o_proj.weight"), alloc::vec![c, h * d]);
            let mlp_norm = push(
                format!("{p}post_attention_layernorm.weight"),
                alloc::vec![c],
            );
            let router = push(
                format!("{p}block_sparse_moe.gate.weight"),
                alloc::vec![cfg.num_local_experts, c],
            );
            let mut experts = router.end..router.end;
            for j in 0..cfg.num_local_experts {
                let q = format!("{p}block_sparse_moe.experts.{j}.");
                push(format!("{q}w1.weight"), alloc::vec![f, c]);
                push(format!("{q}w3.weight"), alloc::vec![f, c]);
                experts.end = push(format!("{q}w2.weight"), alloc::vec![c, f]).end;
            }
            layers.push(LayerLayout {
                attn_norm,
                wqkv,
                wo,
                mlp_norm,
                router,
                experts,
            });
        }
        let final_norm = push("model.norm.weight".into(), alloc::vec![c]);
        let lm_head = push("lm_head.weight".into(), alloc::vec![v, c]);
        debug_assert_eq!(off, total);
        Ok(Layout {
            embed,
            layers,
            final_norm,
            lm_head,
            expert_stride: 3 * f * c,
            total,
            fc: f * c,
            tensors,
        })
    }

    /// The ranges of expert `j` of layer `l`.
    ///
    /// # Panics
    /// If `l >= num_hidden_layers` or `j >= num_local_experts` (one compare;
    /// the model only asks for experts of its own config).
    pub fn expert(&self, l: usize, j: usize) -> ExpertRanges {
        let layer = &self.layers[l];
        let base = j
            .checked_mul(self.expert_stride)
            .and_then(|o| o.checked_add(layer.experts.start))
            .filter(|b| b.saturating_add(self.expert_stride) <= layer.experts.end);
        let Some(base) = base else {
            panic!("Layout::expert: expert {j} out of range for layer {l}");
        };
        ExpertRanges {
            w13: base..base + 2 * self.fc,
            w2: base + 2 * self.fc..base + 3 * self.fc,
        }
    }

    /// All tensors in flat order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks a tensor up by its Hugging Face name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Whether the tensor at `index` (in [`Layout::tensors`] order) is a norm weight (1-D).
    pub fn is_norm(&self, index: usize) -> bool {
        self.tensors.get(index).is_some_and(|t| t.shape.len() == 1)
    }
}

/// A zero-filled `Vec<f32>` of `len` elements, allocation failure as an `Err`.
pub(crate) fn alloc_zeroed(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::AllocationFailed {
            bytes: len.saturating_mul(4),
        })?;
    v.resize(len, 0.0);
    Ok(v)
}
