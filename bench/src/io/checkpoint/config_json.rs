//! `config.json`: the Hugging Face Mixtral fields, written by [`config_json`]
//! and read by [`parse_config`] into a serde-derived [`HfConfig`] whose
//! [`HfConfig::into_config`] makes the checks.

use std::path::Path;

use moe_core::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DEFAULT_ROUTER_AUX_LOSS_COEF;
use super::{CheckpointError, CheckpointErrorKind, Result, CONFIG_FILE, FORMAT_VERSION};
use crate::io::read::{read_to_string_bounded, MAX_JSON_BYTES};

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Options of [`save_with`](super::save_with).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaveOptions {
    /// Written as `router_aux_loss_coef` (default 0.01).
    pub router_aux_loss_coef: f32,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            router_aux_loss_coef: DEFAULT_ROUTER_AUX_LOSS_COEF,
        }
    }
}

/// What `config.json` holds besides the model [`Config`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointConfig {
    /// The model config.
    pub config: Config,
    /// `router_aux_loss_coef`, if present.
    pub router_aux_loss_coef: Option<f32>,
    /// `moe_rs.format_version`, if present (absent for configs written by others).
    pub format_version: Option<u64>,
}

#[derive(Serialize)]
struct MoeRsOut {
    format_version: u64,
    rope_base: f32,
    rope_alpha: f32,
}

/// `config.json` as written; field order as in CONTRACT §8.
#[derive(Serialize)]
struct HfConfigOut {
    architectures: [&'static str; 1],
    model_type: &'static str,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    num_local_experts: usize,
    num_experts_per_tok: usize,
    rms_norm_eps: f32,
    rope_theta: f32,
    max_position_embeddings: usize,
    tie_word_embeddings: bool,
    router_aux_loss_coef: f32,
    torch_dtype: &'static str,
    /// transformers 5.x's name for `torch_dtype` (it writes both as one).
    dtype: &'static str,
    // Explicit Hugging Face defaults we rely on.
    hidden_act: &'static str,
    sliding_window: Option<usize>,
    attention_dropout: f32,
    router_jitter_noise: f32,
    moe_rs: MoeRsOut,
}

/// The `config.json` text for `cfg` (pretty-printed, newline-terminated).
/// f32 values are written in their shortest round-trip form (`1e-5`, `10000.0`).
pub fn config_json(cfg: &Config, opts: &SaveOptions) -> String {
    config_json_dtype(cfg, opts, "float32")
}

/// [`config_json`] declaring the tensors' dtype as `dtype` (`"float32"`,
/// `"bfloat16"`, `"float16"`) in `torch_dtype` and `dtype`.
pub(super) fn config_json_dtype(cfg: &Config, opts: &SaveOptions, dtype: &'static str) -> String {
    let out = HfConfigOut {
        architectures: ["MixtralForCausalLM"],
        model_type: "mixtral",
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        num_local_experts: cfg.num_local_experts,
        num_experts_per_tok: cfg.num_experts_per_tok,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta(),
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: false,
        router_aux_loss_coef: opts.router_aux_loss_coef,
        torch_dtype: dtype,
        dtype,
        hidden_act: "silu",
        sliding_window: cfg.sliding_window,
        attention_dropout: 0.0,
        router_jitter_noise: 0.0,
        moe_rs: MoeRsOut {
            format_version: FORMAT_VERSION,
            rope_base: cfg.rope_base,
            rope_alpha: cfg.rope_alpha,
        },
    };
    // Serialising plain numbers, strings and bools cannot fail.
    let mut s = serde_json::to_string_pretty(&out).unwrap_or_default();
    s.push('\n');
    s
}

/// The one check of `router_aux_loss_coef`, on save ([`super::save_with`])
/// and on load ([`parse_config`]): finite and `>= 0`.
///
/// # Errors
/// [`moe_core::Error::InvalidParameter`] naming `router_aux_loss_coef`.
pub fn check_router_aux_loss_coef(x: f32) -> std::result::Result<(), moe_core::Error> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(moe_core::Error::InvalidParameter {
            param: "router_aux_loss_coef",
            expected: "finite and >= 0",
            actual: f64::from(x),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// `config.json` as read: every field the checks look at, `None` when absent
/// or `null`, every other field ignored.
///
/// The values stay JSON values rather than typed fields on purpose: a wrong
/// type must be reported as `field `X` must be …, found …` naming the field,
/// with the first problem in the order of [`HfConfig::into_config`]'s checks
/// winning (`docs/errors.md` lists these messages); serde's own "invalid type"
/// errors would neither name the field that way nor keep that order.
#[derive(Debug, Default, Deserialize)]
pub struct HfConfig {
    model_type: Option<Value>,
    architectures: Option<Value>,
    torch_dtype: Option<Value>,
    dtype: Option<Value>,
    hidden_act: Option<Value>,
    tie_word_embeddings: Option<Value>,
    vocab_size: Option<Value>,
    hidden_size: Option<Value>,
    intermediate_size: Option<Value>,
    num_hidden_layers: Option<Value>,
    num_attention_heads: Option<Value>,
    num_key_value_heads: Option<Value>,
    num_local_experts: Option<Value>,
    num_experts_per_tok: Option<Value>,
    max_position_embeddings: Option<Value>,
    head_dim: Option<Value>,
    rms_norm_eps: Option<Value>,
    sliding_window: Option<Value>,
    /// HF 5.x: `{"rope_type": …, "rope_theta": …}`.
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    rope_theta: Option<Value>,
    router_aux_loss_coef: Option<Value>,
    /// Must be 0 (or absent): training-time router jitter is not implemented.
    router_jitter_noise: Option<Value>,
    /// Must be 0 (or absent): attention dropout is not implemented.
    attention_dropout: Option<Value>,
    /// Our own keys.
    moe_rs: Option<Value>,
}

/// `rope_parameters` (HF 5.x).
#[derive(Debug, Default, Deserialize)]
struct RopeParameters {
    rope_type: Option<Value>,
    rope_theta: Option<Value>,
}

/// Our `moe_rs` object.
#[derive(Debug, Default, Deserialize)]
struct MoeRsIn {
    format_version: Option<Value>,
    rope_base: Option<Value>,
    rope_alpha: Option<Value>,
}

/// `v` as `T` if it is a JSON object (always succeeds then: every field of `T`
/// is an optional JSON value).
fn object<T: for<'de> Deserialize<'de>>(v: &Value) -> Option<T> {
    v.as_object()?;
    T::deserialize(v).ok()
}

fn json_repr(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Error constructors and value conversions naming `path` and the field.
#[derive(Clone, Copy)]
struct Fields<'a> {
    path: &'a Path,
}

impl Fields<'_> {
    fn invalid(self, field: &str, expected: &str, found: &Value) -> CheckpointError {
        let kind = CheckpointErrorKind::InvalidField {
            field: field.to_owned(),
            expected: expected.to_owned(),
            found: json_repr(found),
        };
        CheckpointError::new(self.path, kind)
    }

    fn missing(self, field: &'static str) -> CheckpointError {
        CheckpointError::new(self.path, CheckpointErrorKind::MissingField { field })
    }

    fn req<'v>(self, field: &'static str, v: &'v Option<Value>) -> Result<&'v Value> {
        v.as_ref().ok_or_else(|| self.missing(field))
    }

    fn as_usize(self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.invalid(field, "a non-negative integer", v))
    }

    fn as_f32(self, field: &str, v: &Value) -> Result<f32> {
        match v.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(x as f32),
            _ => Err(self.invalid(field, "a finite number", v)),
        }
    }

    fn usize(self, field: &'static str, v: &Option<Value>) -> Result<usize> {
        self.as_usize(field, self.req(field, v)?)
    }

    fn f32(self, field: &'static str, v: &Option<Value>) -> Result<f32> {
        self.as_f32(field, self.req(field, v)?)
    }

    /// An optional string field that, if present, must be one of `allowed`.
    fn str_in(self, field: &str, v: &Option<Value>, allowed: &[&str]) -> Result<()> {
        let Some(v) = v else { return Ok(()) };
        match v.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => {
                let exp = allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" or ");
                Err(self.invalid(field, &exp, v))
            }
        }
    }
}

/// `moe_rs`'s values: format version, RoPE base and alpha.
struct MoeRs {
    format_version: Option<u64>,
    rope_base: f32,
    rope_alpha: f32,
}

impl HfConfig {
    /// Which model this is: `model_type`, `architectures`, dtype, activation, tying.
    fn check_model(&self, r: Fields<'_>) -> Result<()> {
        let mt = r.req("model_type", &self.model_type)?;
        if mt.as_str() != Some("mixtral") {
            return Err(r.invalid("model_type", "\"mixtral\"", mt));
        }
        if let Some(a) = &self.architectures {
            let ok = a
                .as_array()
                .is_some_and(|xs| xs.iter().any(|x| x.as_str() == Some("MixtralForCausalLM")));
            if !ok {
                let exp = "a list containing \"MixtralForCausalLM\"";
                return Err(r.invalid("architectures", exp, a));
            }
        }
        // The declared dtype is informative: each tensor's own safetensors
        // dtype (F32, BF16 or F16) decides how it is converted to f32.
        const DTYPES: [&str; 3] = ["float32", "bfloat16", "float16"];
        r.str_in("torch_dtype", &self.torch_dtype, &DTYPES)?;
        r.str_in("dtype", &self.dtype, &DTYPES)?;
        r.str_in("hidden_act", &self.hidden_act, &["silu"])?;
        if let Some(v) = &self.tie_word_embeddings {
            if v.as_bool() != Some(false) {
                let exp = "false (embedding and lm_head are separate)";
                return Err(r.invalid("tie_word_embeddings", exp, v));
            }
        }
        Ok(())
    }

    /// The sizes and `rms_norm_eps`, in a [`Config`] whose RoPE fields are
    /// still to be set; checks `sliding_window` against the context length.
    fn sizes(&self, r: Fields<'_>) -> Result<Config> {
        let mut c = Config {
            vocab_size: r.usize("vocab_size", &self.vocab_size)?,
            hidden_size: r.usize("hidden_size", &self.hidden_size)?,
            intermediate_size: r.usize("intermediate_size", &self.intermediate_size)?,
            num_hidden_layers: r.usize("num_hidden_layers", &self.num_hidden_layers)?,
            num_attention_heads: r.usize("num_attention_heads", &self.num_attention_heads)?,
            num_key_value_heads: r.usize("num_key_value_heads", &self.num_key_value_heads)?,
            num_local_experts: r.usize("num_local_experts", &self.num_local_experts)?,
            num_experts_per_tok: r.usize("num_experts_per_tok", &self.num_experts_per_tok)?,
            max_position_embeddings: r
                .usize("max_position_embeddings", &self.max_position_embeddings)?,
            // Set below, and by `into_config` from `rope_theta` / `moe_rs`.
            head_dim: 0,
            rms_norm_eps: 0.0,
            rope_base: 0.0,
            rope_alpha: 1.0,
            sliding_window: None,
        };
        c.head_dim = match &self.head_dim {
            Some(v) => r.as_usize("head_dim", v)?,
            // transformers: `hidden_size // num_attention_heads`.
            None => c
                .hidden_size
                .checked_div(c.num_attention_heads)
                .unwrap_or(0),
        };
        c.rms_norm_eps = r.f32("rms_norm_eps", &self.rms_norm_eps)?;
        if let Some(v) = &self.sliding_window {
            let w = r.as_usize("sliding_window", v)?;
            if w == 0 {
                let exp = "null or a positive integer (the window's width in positions)";
                return Err(r.invalid("sliding_window", exp, v));
            }
            // A window at least as long as any sequence masks nothing.
            c.sliding_window = (w < c.max_position_embeddings).then_some(w);
        }
        Ok(c)
    }

    /// `rope_theta`: top-level (CONTRACT §8) or HF 5.x `rope_parameters`;
    /// default RoPE only (no scaling).
    fn rope_theta(&self, r: Fields<'_>) -> Result<f32> {
        let mut params = RopeParameters::default();
        if let Some(rp) = &self.rope_parameters {
            params = object(rp).ok_or_else(|| r.invalid("rope_parameters", "an object", rp))?;
            if let Some(t) = &params.rope_type {
                if t.as_str() != Some("default") {
                    let exp = "\"default\" (no RoPE scaling)";
                    return Err(r.invalid("rope_parameters.rope_type", exp, t));
                }
            }
        }
        if let Some(rs) = &self.rope_scaling {
            let ty = rs
                .get("rope_type")
                .or_else(|| rs.get("type"))
                .and_then(Value::as_str);
            if ty != Some("default") {
                let exp = "null or {\"rope_type\": \"default\"}";
                return Err(r.invalid("rope_scaling", exp, rs));
            }
        }
        match (&self.rope_theta, &params.rope_theta) {
            (Some(v), Some(p)) => {
                let (top, nested) = (
                    r.as_f32("rope_theta", v)?,
                    r.as_f32("rope_parameters.rope_theta", p)?,
                );
                if top != nested {
                    let exp = format!("equal to the top-level rope_theta = {top} (or absent)");
                    return Err(r.invalid("rope_parameters.rope_theta", &exp, p));
                }
                Ok(top)
            }
            (Some(v), None) => r.as_f32("rope_theta", v),
            (None, Some(v)) => r.as_f32("rope_parameters.rope_theta", v),
            (None, None) => Err(r.missing("rope_theta")),
        }
    }

    /// Our `moe_rs` keys; without them the base is `rope_theta` and alpha 1.
    fn moe_rs(&self, r: Fields<'_>, rope_theta: f32) -> Result<MoeRs> {
        let mut out = MoeRs {
            format_version: None,
            rope_base: rope_theta,
            rope_alpha: 1.0,
        };
        let Some(m) = &self.moe_rs else {
            return Ok(out);
        };
        let mr: MoeRsIn = object(m).ok_or_else(|| r.invalid("moe_rs", "an object", m))?;
        if let Some(v) = &mr.format_version {
            let fv = v.as_u64().filter(|&x| x <= FORMAT_VERSION).ok_or_else(|| {
                let exp = format!("an integer <= {FORMAT_VERSION} (this build's format)");
                r.invalid("moe_rs.format_version", &exp, v)
            })?;
            out.format_version = Some(fv);
        }
        match (&mr.rope_base, &mr.rope_alpha) {
            (None, None) => {}
            (Some(b), Some(a)) => {
                out.rope_base = r.as_f32("moe_rs.rope_base", b)?;
                out.rope_alpha = r.as_f32("moe_rs.rope_alpha", a)?;
            }
            (Some(_), None) => return Err(r.missing("moe_rs.rope_alpha")),
            (None, Some(_)) => return Err(r.missing("moe_rs.rope_base")),
        }
        Ok(out)
    }

    /// The checked [`CheckpointConfig`]; `path` is only used in error messages.
    /// The first problem in field order wins (see [`parse_config`]).
    ///
    /// # Errors
    /// [`CheckpointErrorKind::MissingField`], [`CheckpointErrorKind::InvalidField`],
    /// [`CheckpointErrorKind::InvalidConfig`].
    pub fn into_config(self, path: &Path) -> Result<CheckpointConfig> {
        let r = Fields { path };
        self.check_model(r)?;
        let mut config = self.sizes(r)?;
        let rope_theta = self.rope_theta(r)?;
        let router_aux_loss_coef = match &self.router_aux_loss_coef {
            Some(v) => {
                let x = r.as_f32("router_aux_loss_coef", v)?;
                // The one validation of save and load.
                check_router_aux_loss_coef(x).map_err(|source| {
                    CheckpointError::new(path, CheckpointErrorKind::InvalidConfig { source })
                })?;
                Some(x)
            }
            None => None,
        };
        for (field, v, what) in [
            (
                "router_jitter_noise",
                &self.router_jitter_noise,
                "training-time router jitter noise",
            ),
            (
                "attention_dropout",
                &self.attention_dropout,
                "attention dropout",
            ),
        ] {
            if let Some(v) = v {
                if r.as_f32(field, v)? != 0.0 {
                    let exp = format!("0 ({what} is not implemented by moe-rs)");
                    return Err(r.invalid(field, &exp, v));
                }
            }
        }
        let moe_rs = self.moe_rs(r, rope_theta)?;
        (config.rope_base, config.rope_alpha) = (moe_rs.rope_base, moe_rs.rope_alpha);
        config.validate().map_err(|source| {
            CheckpointError::new(path, CheckpointErrorKind::InvalidConfig { source })
        })?;
        // `rope_theta` is what transformers uses; it must agree with base and alpha.
        let derived = config.rope_theta();
        if (derived as f64 - rope_theta as f64).abs() > 1e-6 * (rope_theta as f64).abs() {
            let (rope_base, rope_alpha) = (moe_rs.rope_base, moe_rs.rope_alpha);
            let kind = CheckpointErrorKind::InvalidField {
                field: "rope_theta".into(),
                expected: format!(
                    "{derived} (= moe_rs.rope_base {rope_base} scaled by rope_alpha {rope_alpha})"
                ),
                found: rope_theta.to_string(),
            };
            return Err(CheckpointError::new(path, kind));
        }
        Ok(CheckpointConfig {
            config,
            router_aux_loss_coef,
            format_version: moe_rs.format_version,
        })
    }
}

/// Parses the text of a `config.json`; `path` is only used in error messages.
///
/// Required: `model_type: "mixtral"`, `vocab_size`, `hidden_size`,
/// `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
/// `num_key_value_heads`, `num_local_experts`, `num_experts_per_tok`,
/// `max_position_embeddings`, `rms_norm_eps` and the RoPE base, as `rope_theta`
/// or `rope_parameters.rope_theta`. Optional, checked when present:
/// `architectures` (must list `MixtralForCausalLM`), `head_dim` (default
/// `hidden_size / num_attention_heads` as in `transformers`), `torch_dtype` /
/// `dtype` (`"float32"`, `"bfloat16"` or `"float16"`; informative, each
/// tensor's safetensors dtype decides), `tie_word_embeddings` (`false`), `hidden_act`
/// (`"silu"`), `sliding_window` (`null` or a positive width `W`: E10's
/// `i − W < j ≤ i`; `W >= max_position_embeddings` is the same as `null`),
/// `rope_parameters.rope_type` / `rope_scaling` (default RoPE only),
/// `router_aux_loss_coef`, and our `moe_rs` object (`format_version`,
/// `rope_base`, `rope_alpha`; without them the base is `rope_theta` and alpha 1).
///
/// # Errors
/// [`CheckpointErrorKind::ConfigJson`], [`CheckpointErrorKind::MissingField`],
/// [`CheckpointErrorKind::InvalidField`], [`CheckpointErrorKind::InvalidConfig`].
pub fn parse_config(text: &str, path: &Path) -> Result<CheckpointConfig> {
    let json_err = |source| CheckpointError::new(path, CheckpointErrorKind::ConfigJson { source });
    let root: Value = serde_json::from_str(text).map_err(json_err)?;
    if !root.is_object() {
        let kind = CheckpointErrorKind::InvalidField {
            field: "(root)".into(),
            expected: "a JSON object".into(),
            found: json_repr(&root),
        };
        return Err(CheckpointError::new(path, kind));
    }
    // Cannot fail on an object: every field is an optional JSON value.
    HfConfig::deserialize(&root)
        .map_err(json_err)?
        .into_config(path)
}

/// Reads and parses `dir/config.json` (see [`parse_config`]).
///
/// # Errors
/// [`CheckpointErrorKind::Io`] and the errors of [`parse_config`].
pub fn read_config(dir: impl AsRef<Path>) -> Result<CheckpointConfig> {
    let path = dir.as_ref().join(CONFIG_FILE);
    let text = read_to_string_bounded(&path, MAX_JSON_BYTES)?;
    parse_config(&text, &path)
}
