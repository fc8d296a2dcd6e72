//! Analytic floating-point operation counts (docs/flops.md is the prose
//! version of this file; keep them in sync — the tests pin the numbers the
//! doc quotes).
//!
//! Convention: a multiply-add is 2 FLOPs; a GEMM `[m,k]·[k,n]` is `2·m·n·k`.
//! Model scenarios count GEMM-like work only (projections, attention
//! products, router, experts, LM head); element-wise work (RMSNorm, RoPE,
//! softmax, SiLU, residual adds, AdamW) is `O(n·c)` and left out.

use moe_core::Config;

/// Forward FLOPs of one `[b, t]` step of `cfg`. With `n = b·t`,
/// `q = (h + 2·kv)·d`, per layer:
/// * fused QKV projection `2·n·c·q`;
/// * attention `QKᵀ` and `P·V` over the causal half actually computed
///   (`j ≤ i`: `t(t+1)/2` pairs per batch row and query head, `d` MACs each):
///   `2 · (2·d · b·h·t(t+1)/2) = 2·b·h·d·t(t+1)`;
/// * output projection `2·n·(h·d)·c`;
/// * router `2·n·c·e`;
/// * experts on the `n·k` routed rows: gate+up `2·(n·k)·c·2f`, down
///   `2·(n·k)·f·c`, together `6·n·k·c·f`;
///
/// plus the LM head `2·n·c·v` once.
pub fn forward(cfg: &Config, b: usize, t: usize) -> u64 {
    let u = |x: usize| x as u64;
    let (b, t) = (u(b), u(t));
    let n = b * t;
    let (c, h, kv, d) = (
        u(cfg.hidden_size),
        u(cfg.num_attention_heads),
        u(cfg.num_key_value_heads),
        u(cfg.head_dim),
    );
    let (f, e, k, v) = (
        u(cfg.intermediate_size),
        u(cfg.num_local_experts),
        u(cfg.num_experts_per_tok),
        u(cfg.vocab_size),
    );
    let q = (h + 2 * kv) * d;
    let qkv = 2 * n * c * q;
    let attention = 2 * b * h * d * t * (t + 1);
    let o_proj = 2 * n * h * d * c;
    let router = 2 * n * c * e;
    let experts = 6 * n * k * c * f;
    let per_layer = qkv + attention + o_proj + router + experts;
    u(cfg.num_hidden_layers) * per_layer + 2 * n * c * v
}

/// One training step: forward + backward, backward = 2× the forward GEMM
/// FLOPs (every linear needs `dX = dY·W` and `dW = dYᵀ·X`; attention needs
/// `dP`, `dV`, `dQ`, `dK`, four causal-half products for the forward's two).
/// The AdamW update (~10 FLOPs per parameter) is left out like the other
/// element-wise work.
pub fn train_step(cfg: &Config, b: usize, t: usize) -> u64 {
    3 * forward(cfg, b, t)
}

/// GEMM `C[m,n] = A[m,k]·B[k,n]`: `2·m·n·k`.
pub fn gemm(m: usize, n: usize, k: usize) -> u64 {
    2 * m as u64 * n as u64 * k as u64
}

/// Row softmax of `n` values as computed by `kernels::softmax::forward_inplace`:
/// `n` comparisons (max), `n` subtractions, `n` exponentials (1 FLOP each by
/// convention), `n` additions (sum), 1 division, `n` multiplications: `5n + 1`.
pub fn softmax(n: usize) -> u64 {
    5 * n as u64 + 1
}

/// RMSNorm of `rows × c` as computed by `rmsnorm::forward`: per row `c`
/// squares + `c` additions, mean, `+ eps`, `sqrt`, reciprocal (4), then
/// `x·r` and `·w` (`2c`): `rows · (4c + 4)`.
pub fn rmsnorm(rows: usize, c: usize) -> u64 {
    rows as u64 * (4 * c as u64 + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_quoted_in_docs_flops_md() {
        let tiny = Config::tiny();
        let s256 = Config::scale_256();
        assert_eq!(forward(&tiny, 2, 32), 36_585_472);
        assert_eq!(forward(&tiny, 1, 8), 4_524_032);
        assert_eq!(train_step(&tiny, 2, 8), 27_144_192);
        assert_eq!(forward(&s256, 2, 32), 479_789_056);
        assert_eq!(train_step(&s256, 2, 8), 358_662_144);
        for (b, want) in [(1, 18_292_736), (4, 73_170_944), (8, 146_341_888)] {
            assert_eq!(forward(&tiny, b, 32), want, "batch {b}");
        }
        for (t, want) in [(8, 9_048_064), (16, 18_161_664), (64, 74_219_520)] {
            assert_eq!(forward(&tiny, 2, t), want, "seq {t}");
        }
        assert_eq!(gemm(64, 64, 64), 524_288);
        assert_eq!(gemm(1024, 1024, 1024), 2_147_483_648);
        assert_eq!(softmax(1000), 5_001);
        assert_eq!(rmsnorm(64, 64), 16_640);
    }
}
