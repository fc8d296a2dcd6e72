//! Model hyper-parameters (CONTRACT §1), with Hugging Face Mixtral field names;
//! the per-step dimensions [`Dims`] every unit takes; [`TokenId`]; and
//! [`check_param`], the one domain check of a scalar parameter.

use crate::error::{Error, Result};

/// A token id (`< vocab_size`).
pub type TokenId = u32;

/// The domain a scalar hyper-parameter must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// Finite and `> 0`.
    Positive,
    /// Finite and `>= 0`.
    NonNegative,
}

impl Domain {
    /// Whether `x` lies in the domain (NaN never does).
    pub(crate) fn holds(self, x: f32) -> bool {
        match self {
            Domain::Positive => x.is_finite() && x > 0.0,
            Domain::NonNegative => x.is_finite() && x >= 0.0,
        }
    }

    /// The domain as the `expected` text of an error.
    pub(crate) const fn expected(self) -> &'static str {
        match self {
            Domain::Positive => "finite and > 0",
            Domain::NonNegative => "finite and >= 0",
        }
    }
}

/// `Ok(())` if `x` lies in `domain`, else [`Error::InvalidParameter`] naming `param`.
pub(crate) fn check_param(param: &'static str, x: f32, domain: Domain) -> Result<()> {
    if domain.holds(x) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            param,
            expected: domain.expected(),
            actual: x as f64,
        })
    }
}

/// `inv_freq_i = 1 / θ_base^(2i/d)` as PyTorch forms it in float32 (the power in
/// f64, rounded once, then the reciprocal in f32), for `i < d/2`.
/// Shared by `RopeTable::new` (E9) and [`Config::validate`], so that what the
/// validation accepts is exactly what the table computes.
pub(crate) fn inv_freq(theta: f64, i: usize, d: usize) -> f32 {
    let expo = (2 * i) as f32 / d as f32;
    let pow = libm::pow(theta, expo as f64) as f32;
    1.0f32 / pow
}

/// The RoPE angle `θ = p · inv_freq` in f32, as the table forms it.
#[inline]
pub(crate) fn angle(p: usize, inv_freq: f32) -> f32 {
    p as f32 * inv_freq
}

/// `Ok` if every angle `p · inv_freq_i` of a table of `max_seq` positions is
/// finite in f32 (then `cos`/`sin` of it are finite too: libm reduces any
/// finite argument). `p · f` grows with `p` (f32 rounding is monotone), so the
/// last position bounds them all; `inv_freq_i` itself overflows to `+∞` for a
/// tiny `θ_base` (e.g. `1e-45`: `θ^(−(d−2)/d)` exceeds `f32::MAX`), and then
/// `0 · ∞ = NaN` at position 0.
pub(crate) fn check_angles(cfg: &Config, max_seq: usize) -> Result<()> {
    let theta = cfg.rope_theta() as f64;
    let d = cfg.head_dim;
    let last = max_seq.saturating_sub(1);
    for i in 0..d / 2 {
        let f = inv_freq(theta, i, d);
        if !f.is_finite() || !angle(last, f).is_finite() {
            return Err(Error::InvalidConfig {
                field: "rope_base",
                expected: "such that every RoPE angle p·θ^(−2i/d) (θ = rope_theta(), p < max_position_embeddings) is finite in f32",
                actual: cfg.rope_base as f64,
            });
        }
    }
    Ok(())
}

/// The hyper-parameters of a [`crate::MoETransformer`].
///
/// Field names follow Hugging Face's `MixtralConfig` so that a checkpoint's
/// `config.json` maps one to one. Build one with [`Config::tiny`],
/// [`Config::scale_256`] or [`Config::full`] and check it with
/// [`Config::validate`] (every constructor of the crate does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Vocabulary size `v`.
    pub vocab_size: usize,
    /// Hidden (model) width `c`.
    pub hidden_size: usize,
    /// Number of transformer blocks `L`.
    pub num_hidden_layers: usize,
    /// Query heads `h`.
    pub num_attention_heads: usize,
    /// Key/value heads `kv` (`h % kv == 0`; `kv == 1` is MQA).
    pub num_key_value_heads: usize,
    /// Head dimension `d` (even, for RoPE).
    pub head_dim: usize,
    /// Expert FFN width `f`.
    pub intermediate_size: usize,
    /// Experts per MoE layer `e`.
    pub num_local_experts: usize,
    /// Experts each token is routed to, `k <= e`.
    pub num_experts_per_tok: usize,
    /// Longest sequence a forward pass or a KV cache may hold.
    pub max_position_embeddings: usize,
    /// RoPE base before NTK scaling (10,000 in every profile).
    pub rope_base: f32,
    /// RoPE NTK alpha; `> 1` scales the base (`base' = base · alpha^(d/(d−2))`).
    pub rope_alpha: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Sliding-window attention width `W` (HF `sliding_window`): query
    /// position `i` sees key positions `j` with `i − W < j ≤ i` (E10).
    /// `None`: full causal attention. `Some(0)` is invalid.
    pub sliding_window: Option<usize>,
}

/// Parameter counts of a configuration, in `u64` so that the full profile
/// cannot overflow on any target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// All parameters.
    pub total: u64,
    /// Parameters touched per token (all but the `e − k` unused experts of each layer).
    pub active: u64,
}

impl Config {
    /// The benchmark profile: c = 64, 2 layers, 4/1 heads of 16, 4 experts top-2, f = 256.
    pub const fn tiny() -> Self {
        Config {
            vocab_size: 1000,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            head_dim: 16,
            intermediate_size: 256,
            num_local_experts: 4,
            num_experts_per_tok: 2,
            max_position_embeddings: 512,
            rope_base: 10_000.0,
            rope_alpha: 1.0,
            rms_norm_eps: 1e-5,
            sliding_window: None,
        }
    }

    /// The scale axis profile: c = 256, head dim 64, f = 1024 (7,134,464 parameters).
    pub const fn scale_256() -> Self {
        Config {
            hidden_size: 256,
            head_dim: 64,
            intermediate_size: 1024,
            ..Self::tiny()
        }
    }

    /// The reference architecture: 30 layers of c = 768, 16 experts top-4,
    /// 6.88 B parameters (1.79 B active). Never benchmarked; its sizes must
    /// still plan without overflow.
    pub const fn full() -> Self {
        Config {
            vocab_size: 32_000,
            hidden_size: 768,
            num_hidden_layers: 30,
            num_attention_heads: 12,
            num_key_value_heads: 1,
            head_dim: 64,
            intermediate_size: 6144,
            num_local_experts: 16,
            num_experts_per_tok: 4,
            max_position_embeddings: 32_768,
            rope_base: 10_000.0,
            rope_alpha: 8.0,
            rms_norm_eps: 1e-5,
            sliding_window: None,
        }
    }

    /// Checks every field; the first violation is returned as
    /// [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        fn positive(field: &'static str, v: usize) -> Result<()> {
            if v == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    expected: "> 0",
                    actual: 0.0,
                });
            }
            Ok(())
        }
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("num_key_value_heads", self.num_key_value_heads)?;
        positive("head_dim", self.head_dim)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_local_experts", self.num_local_experts)?;
        positive("num_experts_per_tok", self.num_experts_per_tok)?;
        positive("max_position_embeddings", self.max_position_embeddings)?;
        if self.sliding_window == Some(0) {
            return Err(Error::InvalidConfig {
                field: "sliding_window",
                expected: "None or >= 1 (a window of 0 keys masks every row)",
                actual: 0.0,
            });
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::InvalidConfig {
                field: "num_key_value_heads",
                expected: "a divisor of num_attention_heads",
                actual: self.num_key_value_heads as f64,
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::InvalidConfig {
                field: "head_dim",
                expected: "even (RoPE rotates pairs)",
                actual: self.head_dim as f64,
            });
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(Error::InvalidConfig {
                field: "num_experts_per_tok",
                expected: "<= num_local_experts",
                actual: self.num_experts_per_tok as f64,
            });
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::InvalidConfig {
                field: "vocab_size",
                expected: "<= u32::MAX (token ids are u32)",
                actual: self.vocab_size as f64,
            });
        }
        let finite_pos = |field, x: f32| {
            if Domain::Positive.holds(x) {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    field,
                    expected: Domain::Positive.expected(),
                    actual: x as f64,
                })
            }
        };
        finite_pos("rope_base", self.rope_base)?;
        finite_pos("rope_alpha", self.rope_alpha)?;
        finite_pos("rms_norm_eps", self.rms_norm_eps)?;
        if self.rope_alpha > 1.0 && self.head_dim <= 2 {
            return Err(Error::InvalidConfig {
                field: "head_dim",
                expected: "> 2 when rope_alpha > 1 (NTK scaling divides by d − 2)",
                actual: self.head_dim as f64,
            });
        }
        if !self.rope_theta().is_finite() {
            return Err(Error::InvalidConfig {
                field: "rope_base",
                expected: "such that rope_base · rope_alpha^(d/(d−2)) is finite in f32",
                actual: self.rope_base as f64,
            });
        }
        // The RoPE table (E9) of every position must be finite: a base so
        // small that θ^(−2i/d) overflows f32 (e.g. 1e-45) passes the checks
        // above but would poison q and k with NaN.
        check_angles(self, self.max_position_embeddings)?;
        // Every size the crate derives from the config must fit in usize.
        self.param_counts_checked()?;
        Ok(())
    }

    /// Width of the fused q/k/v projection output, `(h + 2·kv)·d`.
    ///
    /// # Panics
    /// In debug builds, on arithmetic overflow for a config that
    /// [`Config::validate`] would reject (its parameter count must fit in `u64`).
    pub const fn qkv_dim(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    /// The RoPE base actually used (CONTRACT §3): `base · alpha^(d/(d−2))` when
    /// `alpha > 1` (NTK-aware scaling), else `base`. Exported as `rope_theta`.
    pub fn rope_theta(&self) -> f32 {
        if self.rope_alpha > 1.0 {
            let d = self.head_dim as f64;
            (self.rope_base as f64 * libm::pow(self.rope_alpha as f64, d / (d - 2.0))) as f32
        } else {
            self.rope_base
        }
    }

    /// Parameter counts (total and active per token) in `u64`.
    ///
    /// # Errors
    /// [`Error::Overflow`] if a count does not fit in `u64`.
    pub fn param_counts_checked(&self) -> Result<ParamCounts> {
        let of = |what| Error::Overflow { what };
        let m = |a: u64, b: u64| a.checked_mul(b).ok_or(of("parameter count"));
        let a = |x: u64, y: u64| x.checked_add(y).ok_or(of("parameter count"));
        let (v, c) = (self.vocab_size as u64, self.hidden_size as u64);
        let (h, kv, d) = (
            self.num_attention_heads as u64,
            self.num_key_value_heads as u64,
            self.head_dim as u64,
        );
        let (f, e, k) = (
            self.intermediate_size as u64,
            self.num_local_experts as u64,
            self.num_experts_per_tok as u64,
        );
        let layers = self.num_hidden_layers as u64;
        let expert = m(m(3, f)?, c)?;
        let attn = a(m(m(m(2, h)?, d)?, c)?, m(m(m(2, kv)?, d)?, c)?)?;
        let shared = a(a(m(2, c)?, attn)?, m(e, c)?)?;
        let layer_total = a(shared, m(e, expert)?)?;
        let layer_active = a(shared, m(k, expert)?)?;
        let outer = a(m(m(2, v)?, c)?, c)?;
        Ok(ParamCounts {
            total: a(outer, m(layers, layer_total)?)?,
            active: a(outer, m(layers, layer_active)?)?,
        })
    }

    /// Parameter counts; see [`Config::param_counts_checked`]. Saturates instead of
    /// overflowing (only reachable with absurd configs, which `validate` rejects).
    pub fn param_counts(&self) -> ParamCounts {
        self.param_counts_checked().unwrap_or(ParamCounts {
            total: u64::MAX,
            active: u64::MAX,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::tiny()
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
    /// Sliding-window width `W` (`None`: full causal attention).
    pub window: Option<usize>,
}

impl Dims {
    /// The dimensions of a `(b, t)` step of `cfg`.
    pub fn new(cfg: &Config, b: usize, t: usize) -> Self {
        Dims {
            b,
            t,
            n: b.saturating_mul(t),
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
            window: cfg.sliding_window,
        }
    }
    /// E10 — first key position visible from query position `pos`:
    /// `j0(pos) = max(0, pos + 1 − W)` with a window `W`, else 0; the query
    /// sees keys `j0(pos) ..= pos` (`i − W < j ≤ i`, HF's sliding mask).
    #[inline]
    pub fn first_key(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }

    /// Routed slots, `n·k`.
    pub fn s(&self) -> usize {
        self.n.saturating_mul(self.k)
    }
}
