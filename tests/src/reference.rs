//! A naive `f64` reference of the moe-rs model, written from CONTRACT.md §3–§4
//! and independent of moe-core's kernels: plain index loops, one function per
//! equation, no caching, no dispatch. Only `Config` (dimensions, `rope_theta`)
//! and `Layout` (tensor offsets by Hugging Face name) are taken from moe-core.
//!
//! Conventions: row-major; activations `[n, c]` with row `r = bi·t + i`
//! (batch `bi`, position `i`); linear weights `[out, in]`, `y = x·Wᵀ`.

use moe_core::{Config, Layout};

/// `y = x·Wᵀ`: `x: [n, din]`, `w: [dout, din]` → `y: [n, dout]`.
pub fn linear(x: &[f64], w: &[f64], n: usize, din: usize, dout: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * din, "linear: x");
    assert_eq!(w.len(), dout * din, "linear: w");
    let mut y = vec![0.0; n * dout];
    for r in 0..n {
        for o in 0..dout {
            let mut s = 0.0;
            for i in 0..din {
                s += x[r * din + i] * w[o * din + i];
            }
            y[r * dout + o] = s;
        }
    }
    y
}

/// `C = A·B`: `a: [m, k]`, `b: [k, n]` → `[m, n]`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "matmul: a");
    assert_eq!(b.len(), k * n, "matmul: b");
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// E1 — `p_i = exp(x_i − max x) / Σ_j exp(x_j − max x)` (one row, finite input).
pub fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|&v| v / sum).collect()
}

/// E2 — `silu(z) = z · σ(z)`.
pub fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

/// E4 — `x[r] = E[token[r]]`: `table: [v, c]` → `[n, c]`.
pub fn embedding(tokens: &[u32], table: &[f64], c: usize) -> Vec<f64> {
    let mut x = Vec::with_capacity(tokens.len() * c);
    for &tok in tokens {
        let t = tok as usize;
        x.extend_from_slice(&table[t * c..(t + 1) * c]);
    }
    x
}

/// E5 — RMSNorm per row: `y = x / sqrt(mean(x²) + eps) · w`, `x: [n, c]`, `w: [c]`.
pub fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let c = w.len();
    assert_eq!(x.len() % c, 0, "rmsnorm: x");
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / c {
        let row = &x[r * c..(r + 1) * c];
        let mean_sq = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for i in 0..c {
            y[r * c + i] = row[i] * inv * w[i];
        }
    }
    y
}

/// E9 — RoPE angle `θ_i = p · theta^(−2i/d)`.
pub fn rope_angle(pos: usize, i: usize, d: usize, theta: f64) -> f64 {
    pos as f64 * theta.powf(-((2 * i) as f64) / d as f64)
}

/// E9 — rotate-half RoPE of one head vector `x: [d]` at position `pos`:
/// `x'_i = x_i cos θ_i − x_{i+d/2} sin θ_i`, `x'_{i+d/2} = x_{i+d/2} cos θ_i + x_i sin θ_i`.
pub fn rope(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let d = x.len();
    let half = d / 2;
    let mut y = vec![0.0; d];
    for i in 0..half {
        let a = rope_angle(pos, i, d, theta);
        let (x1, x2) = (x[i], x[i + half]);
        y[i] = x1 * a.cos() - x2 * a.sin();
        y[i + half] = x2 * a.cos() + x1 * a.sin();
    }
    y
}

/// RoPE on every head of `x: [b·t, heads·d]`; row `r` is at position `r % t`.
pub fn rope_heads(x: &[f64], t: usize, heads: usize, d: usize, theta: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / (heads * d) {
        for hh in 0..heads {
            let at = r * heads * d + hh * d;
            y[at..at + d].copy_from_slice(&rope(&x[at..at + d], r % t, theta));
        }
    }
    y
}

/// E10 — causal MQA/GQA: `q: [b·t, h·d]`, `k, v: [b·t, kv·d]` (q, k already
/// rotated); query head `j` uses KV head `j / (h/kv)`;
/// `o_i = Σ_{l ≤ i} softmax_l(q_i·k_l / √d) v_l` → `[b·t, h·d]`.
#[allow(clippy::too_many_arguments)] // reason: an f64 reference independent of moe-core, so it takes loose dims instead of `moe_core::Dims`
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    t: usize,
    h: usize,
    kv: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; b * t * h * d];
    let scale = 1.0 / (d as f64).sqrt();
    for bi in 0..b {
        for j in 0..h {
            let g = j / (h / kv);
            for i in 0..t {
                let qi = &q[(bi * t + i) * h * d + j * d..][..d];
                let scores: Vec<f64> = (0..=i)
                    .map(|l| {
                        let kl = &k[(bi * t + l) * kv * d + g * d..][..d];
                        (0..d).map(|x| qi[x] * kl[x]).sum::<f64>() * scale
                    })
                    .collect();
                let p = softmax(&scores);
                for l in 0..=i {
                    let vl = &v[(bi * t + l) * kv * d + g * d..][..d];
                    for x in 0..d {
                        out[(bi * t + i) * h * d + j * d + x] += p[l] * vl[x];
                    }
                }
            }
        }
    }
    out
}

/// The `k` largest entries of `p`, descending, ties to the lower index.
pub fn topk(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    // Stable sort on descending value keeps equal values in index order.
    idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).expect("NaN router probability"));
    idx.truncate(k);
    idx
}

/// Routing decisions of one MoE layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Router probabilities over all experts, `[n, e]`.
    pub probs: Vec<f64>,
    /// Chosen experts per row, `[n, k]` (descending probability).
    pub topk: Vec<usize>,
    /// Renormalised weights of the chosen experts, `[n, k]`.
    pub weights: Vec<f64>,
}

impl Routing {
    /// The chosen expert sets per row, sorted (order-free, for comparing decisions).
    pub fn sets(&self, k: usize) -> Vec<Vec<usize>> {
        self.topk
            .chunks(k)
            .map(|s| {
                let mut s = s.to_vec();
                s.sort_unstable();
                s
            })
            .collect()
    }
}

/// E12 — router: `p = softmax(x·W_gateᵀ)`, top-k by probability, `w_j = p_j / Σ_topk p`.
/// `x: [n, c]`, `wg: [e, c]`.
pub fn router(x: &[f64], wg: &[f64], n: usize, c: usize, e: usize, k: usize) -> Routing {
    let logits = linear(x, wg, n, c, e);
    let mut r = Routing {
        probs: Vec::new(),
        topk: Vec::new(),
        weights: Vec::new(),
    };
    for row in logits.chunks(e) {
        let p = softmax(row);
        let top = topk(&p, k);
        let sum: f64 = top.iter().map(|&j| p[j]).sum();
        r.weights.extend(top.iter().map(|&j| p[j] / sum));
        r.topk.extend(top);
        r.probs.extend(p);
    }
    r
}

/// E8 — SwiGLU expert `w2(silu(x·w1ᵀ) ⊙ x·w3ᵀ)`: `x: [m, c]`, `w1, w3: [f, c]`,
/// `w2: [c, f]` → `[m, c]`.
pub fn swiglu(
    x: &[f64],
    w1: &[f64],
    w3: &[f64],
    w2: &[f64],
    m: usize,
    c: usize,
    f: usize,
) -> Vec<f64> {
    let h1 = linear(x, w1, m, c, f);
    let h3 = linear(x, w3, m, c, f);
    let act: Vec<f64> = h1.iter().zip(&h3).map(|(&a, &b)| silu(a) * b).collect();
    linear(&act, w2, m, f, c)
}

/// Weights of one expert.
#[derive(Debug, Clone, Copy)]
pub struct Expert<'a> {
    /// `w1` (gate) `[f, c]`.
    pub w1: &'a [f64],
    /// `w3` (up) `[f, c]`.
    pub w3: &'a [f64],
    /// `w2` (down) `[c, f]`.
    pub w2: &'a [f64],
}

/// E11 — sparse MoE: `y_r = Σ_{j ∈ topk_r} w_rj · Expert_j(x_r)`, token by token.
/// `x: [n, c]`, `wg: [e, c]`. Returns `y: [n, c]` and the routing.
pub fn moe(
    x: &[f64],
    wg: &[f64],
    experts: &[Expert],
    n: usize,
    c: usize,
    f: usize,
    k: usize,
) -> (Vec<f64>, Routing) {
    let e = experts.len();
    let routing = router(x, wg, n, c, e, k);
    let mut y = vec![0.0; n * c];
    for r in 0..n {
        let xr = &x[r * c..(r + 1) * c];
        for j in 0..k {
            let ex = &experts[routing.topk[r * k + j]];
            let w = routing.weights[r * k + j];
            let out = swiglu(xr, ex.w1, ex.w3, ex.w2, 1, c, f);
            for i in 0..c {
                y[r * c + i] += w * out[i];
            }
        }
    }
    (y, routing)
}

/// E14 — cross-entropy, mean over rows of `log Σ_j exp(z_j) − z_target`
/// (unshifted targets). `logits: [n, v]`.
pub fn cross_entropy(logits: &[f64], targets: &[u32], v: usize) -> f64 {
    let n = targets.len();
    let mut total = 0.0;
    for (r, &tgt) in targets.iter().enumerate() {
        let z = &logits[r * v..(r + 1) * v];
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
        total += lse - z[tgt as usize];
    }
    total / n as f64
}

/// E13 — pooled load-balancing loss over the rows of every layer:
/// `P_e` = mean router probability, `f_e` = fraction of rows whose top-k
/// contains `e`, `aux = e · Σ_e f_e · P_e`.
pub fn aux_loss(layers: &[Routing], e: usize, k: usize) -> f64 {
    let mut p = vec![0.0; e];
    let mut f = vec![0.0; e];
    let mut rows = 0usize;
    for routing in layers {
        for (probs, top) in routing.probs.chunks(e).zip(routing.topk.chunks(k)) {
            rows += 1;
            for ex in 0..e {
                p[ex] += probs[ex];
                if top.contains(&ex) {
                    f[ex] += 1.0;
                }
            }
        }
    }
    let rows = rows as f64;
    e as f64
        * (0..e)
            .map(|ex| (f[ex] / rows) * (p[ex] / rows))
            .sum::<f64>()
}

/// The tensor called `name` (CONTRACT §2) in the flat buffer.
pub fn tensor<'a>(layout: &Layout, params: &'a [f64], name: &str) -> &'a [f64] {
    let info = layout
        .get(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    &params[info.range()]
}

/// Whole-model forward: embedding → L × (attention block, MoE block) → final
/// RMSNorm → LM head. `tokens: [b, t]`; returns logits `[b·t, v]` and each
/// layer's routing.
pub fn forward_with_routing(
    cfg: &Config,
    params: &[f64],
    tokens: &[u32],
    b: usize,
    t: usize,
) -> (Vec<f64>, Vec<Routing>) {
    let layout = Layout::new(cfg).expect("valid config");
    assert_eq!(params.len(), layout.total, "params");
    assert_eq!(tokens.len(), b * t, "tokens");
    let p = |name: &str| tensor(&layout, params, name);
    let (v, c, f) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size);
    let (h, kv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (e, k) = (cfg.num_local_experts, cfg.num_experts_per_tok);
    let (n, eps, theta) = (b * t, cfg.rms_norm_eps as f64, cfg.rope_theta() as f64);

    let mut x = embedding(tokens, p("model.embed_tokens.weight"), c);
    let mut routings = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("model.layers.{l}.");
        // x = x + Attn(RMSNorm(x))
        let xn = rmsnorm(&x, p(&format!("{pre}input_layernorm.weight")), eps);
        let q = linear(
            &xn,
            p(&format!("{pre}self_attn.q_proj.weight")),
            n,
            c,
            h * d,
        );
        let kk = linear(
            &xn,
            p(&format!("{pre}self_attn.k_proj.weight")),
            n,
            c,
            kv * d,
        );
        let vv = linear(
            &xn,
            p(&format!("{pre}self_attn.v_proj.weight")),
            n,
            c,
            kv * d,
        );
        let q = rope_heads(&q, t, h, d, theta);
        let kk = rope_heads(&kk, t, kv, d, theta);
        let att = attention(&q, &kk, &vv, b, t, h, kv, d);
        let o = linear(
            &att,
            p(&format!("{pre}self_attn.o_proj.weight")),
            n,
            h * d,
            c,
        );
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        // x = x + MoE(RMSNorm(x))
        let xn = rmsnorm(&x, p(&format!("{pre}post_attention_layernorm.weight")), eps);
        let names: Vec<[String; 3]> = (0..e)
            .map(|j| {
                ["w1", "w3", "w2"].map(|w| format!("{pre}block_sparse_moe.experts.{j}.{w}.weight"))
            })
            .collect();
        let experts: Vec<Expert> = names
            .iter()
            .map(|[w1, w3, w2]| Expert {
                w1: p(w1),
                w3: p(w3),
                w2: p(w2),
            })
            .collect();
        let (y, routing) = moe(
            &xn,
            p(&format!("{pre}block_sparse_moe.gate.weight")),
            &experts,
            n,
            c,
            f,
            k,
        );
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        routings.push(routing);
    }
    let xf = rmsnorm(&x, p("model.norm.weight"), eps);
    (linear(&xf, p("lm_head.weight"), n, c, v), routings)
}

/// Whole-model logits `[b·t, v]`.
pub fn forward(cfg: &Config, params: &[f64], tokens: &[u32], b: usize, t: usize) -> Vec<f64> {
    forward_with_routing(cfg, params, tokens, b, t).0
}

/// Losses of the reference model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// `ce + alpha · aux`.
    pub total: f64,
    /// Mean cross-entropy.
    pub ce: f64,
    /// Pooled load-balancing loss.
    pub aux: f64,
}

/// Losses plus every layer's routing (to detect routing flips in finite differences).
pub fn loss_with_routing(
    cfg: &Config,
    params: &[f64],
    tokens: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
    alpha: f64,
) -> (Losses, Vec<Routing>) {
    let (logits, routings) = forward_with_routing(cfg, params, tokens, b, t);
    let ce = cross_entropy(&logits, targets, cfg.vocab_size);
    let aux = aux_loss(&routings, cfg.num_local_experts, cfg.num_experts_per_tok);
    (
        Losses {
            total: ce + alpha * aux,
            ce,
            aux,
        },
        routings,
    )
}

/// `(total, ce, aux)` with `total = ce + alpha · aux` (CONTRACT §4).
pub fn loss(
    cfg: &Config,
    params: &[f64],
    tokens: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
    alpha: f64,
) -> (f64, f64, f64) {
    let (l, _) = loss_with_routing(cfg, params, tokens, targets, b, t, alpha);
    (l.total, l.ce, l.aux)
}

/// Widens an `f32` slice.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
