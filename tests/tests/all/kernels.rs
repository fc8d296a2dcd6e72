//! Forward of every moe-core unit against the naive `f64` reference
//! (`moe_tests::reference`) on seeded random inputs, plus the exact
//! properties each unit promises (softmax/router rows sum to 1, top-k
//! distinct with ties to the lower index, causality, dispatch bookkeeping).
//!
//! Tolerances are relative to the magnitude of the terms summed
//! (`Σ|a·b|` for a dot product), so that a rounding-level f32 difference
//! passes and any real mistake fails.

use moe_core::kernels::gemm::{gemm_with, Backend, Mat};
use moe_core::kernels::softmax;
use moe_core::linear::Accum;
use moe_core::rope::{self, RopeTable};
use moe_core::swiglu::SwiGLU;
use moe_core::Dims;
use moe_core::{attention, embedding, linear, loss, moe, rmsnorm, router, Config};
use moe_tests::reference as r;
use moe_tests::reference::to_f64;
use moe_tests::router_dims;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Uniform in `[-scale, scale)`.
fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Asserts `|got − want| <= atol + rtol·|want|` elementwise; returns the max abs error.
fn assert_close(label: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut max = 0.0f64;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let err = (a as f64 - b).abs();
        assert!(
            err <= atol + rtol * b.abs(),
            "{label}[{i}]: got {a}, want {b} (|diff| {err:e})"
        );
        max = max.max(err);
    }
    max
}

/// A config with small attention / expert dims for unit tests.
fn small_cfg(h: usize, kv: usize, d: usize) -> Config {
    Config {
        vocab_size: 40,
        hidden_size: 16,
        num_attention_heads: h,
        num_key_value_heads: kv,
        head_dim: d,
        intermediate_size: 12,
        max_position_embeddings: 64,
        ..Config::tiny()
    }
}

// ---------------------------------------------------------------- E3 GEMM

/// The stored matrix behind `op(X)` of logical shape `[rows, cols]`, with a row
/// stride 3 larger than needed (padding filled with random values).
struct Stored {
    data: Vec<f32>,
    ld: usize,
    trans: bool,
}

impl Stored {
    fn new(rng: &mut ChaCha8Rng, rows: usize, cols: usize, trans: bool) -> Self {
        let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
        let ld = sc + 3;
        Stored {
            data: rand_vec(rng, sr * ld, 1.0),
            ld,
            trans,
        }
    }
    fn mat(&self) -> Mat<'_> {
        if self.trans {
            Mat::t(&self.data, self.ld)
        } else {
            Mat::n(&self.data, self.ld)
        }
    }
    /// `op(X)[i, j]`.
    fn at(&self, i: usize, j: usize) -> f64 {
        let x = if self.trans {
            self.data[j * self.ld + i]
        } else {
            self.data[i * self.ld + j]
        };
        x as f64
    }
    /// `op(X)` densely, in f64.
    fn dense(&self, rows: usize, cols: usize) -> Vec<f64> {
        (0..rows * cols)
            .map(|x| self.at(x / cols, x % cols))
            .collect()
    }
}

fn check_gemm(backend: Backend, seed: u64) {
    let mut g = rng(seed);
    let shapes = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 13, 9),
        (33, 1, 65),
        (1, 19, 4),
        (8, 8, 0),
        (31, 29, 37),
    ];
    let mut worst = 0.0f64;
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for &(m, n, k) in &shapes {
            for (alpha, beta) in [(1.0f32, 0.0f32), (1.0, 1.0), (-0.75, 1.0), (0.5, 0.0)] {
                let a = Stored::new(&mut g, m, k, ta);
                let b = Stored::new(&mut g, k, n, tb);
                let ldc = n + 2;
                let c0 = rand_vec(&mut g, m * ldc, 1.0);
                let mut c = c0.clone();
                if beta == 0.0 {
                    // β = 0 must never read C: poison the body.
                    for i in 0..m {
                        c[i * ldc..i * ldc + n]
                            .iter_mut()
                            .for_each(|x| *x = f32::NAN);
                    }
                }
                gemm_with(backend, m, n, k, alpha, a.mat(), b.mat(), beta, &mut c, ldc);
                let ab = r::matmul(&a.dense(m, k), &b.dense(k, n), m, k, n);
                let label = format!(
                    "gemm {backend:?} {}{} m{m} n{n} k{k} α{alpha} β{beta}",
                    if ta { 'T' } else { 'N' },
                    if tb { 'T' } else { 'N' }
                );
                for i in 0..m {
                    for j in 0..n {
                        let mag: f64 = (0..k).map(|p| (a.at(i, p) * b.at(p, j)).abs()).sum::<f64>()
                            * alpha.abs() as f64
                            + (beta * c0[i * ldc + j]).abs() as f64;
                        let want =
                            alpha as f64 * ab[i * n + j] + beta as f64 * c0[i * ldc + j] as f64;
                        let got = c[i * ldc + j];
                        let err = (got as f64 - want).abs();
                        assert!(
                            err <= 1e-6 + 1e-5 * mag,
                            "{label} C[{i},{j}]: got {got}, want {want}"
                        );
                        worst = worst.max(err);
                    }
                    // The padding between rows of C is never touched (exact).
                    for j in n..ldc {
                        assert_eq!(
                            c[i * ldc + j].to_bits(),
                            c0[i * ldc + j].to_bits(),
                            "{label}: padding C[{i},{j}] written"
                        );
                    }
                }
            }
        }
    }
    println!("gemm {backend:?}: max abs error {worst:e}");
}

/// The model's medium shapes around `panel_wins`'s boundaries (16–64 token
/// rows against a ≥ 128-row weight, the padding rule, `k` = 64 / 256 / 300 /
/// 1024): whichever kernel the dispatcher picks matches the f64 reference in
/// the forward (`x·Wᵀ`) and backward-input (`dy·W`) layouts, and for
/// `k ≤ 256` gives the same bits as the BLIS driver (both run one FMA chain
/// per output in depth order), so the routing never changes results there.
#[test]
fn gemm_routing_boundaries_match_reference_and_blis_bits() {
    use moe_core::kernels::gemm::portable;
    let mut g = rng(77);
    for &m in &[9usize, 16, 24, 25, 28, 32, 36, 45, 64] {
        for &(n, k) in &[(128usize, 64usize), (300, 256), (130, 300), (128, 1024)] {
            for tb in [true, false] {
                let a = Stored::new(&mut g, m, k, false);
                let b = Stored::new(&mut g, k, n, tb);
                let mut c = vec![f32::NAN; m * n];
                gemm_with(
                    Backend::Portable,
                    m,
                    n,
                    k,
                    1.0,
                    a.mat(),
                    b.mat(),
                    0.0,
                    &mut c,
                    n,
                );
                let ab = r::matmul(&a.dense(m, k), &b.dense(k, n), m, k, n);
                for i in 0..m {
                    for j in 0..n {
                        let mag: f64 = (0..k).map(|p| (a.at(i, p) * b.at(p, j)).abs()).sum();
                        let err = (c[i * n + j] as f64 - ab[i * n + j]).abs();
                        assert!(
                            err <= 1e-6 + 1e-5 * mag,
                            "m{m} n{n} k{k} tb{tb} C[{i},{j}]: {} vs {}",
                            c[i * n + j],
                            ab[i * n + j]
                        );
                    }
                }
                if k <= 256 {
                    let (am, bm) = (a.mat(), b.mat());
                    let mut c2 = vec![f32::NAN; m * n];
                    portable::gemm(
                        m, n, k, 1.0, am.data, am.rs, am.cs, bm.data, bm.rs, bm.cs, 0.0, &mut c2,
                        n, 1,
                    );
                    assert!(
                        c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "m{m} n{n} k{k} tb{tb}: routed result differs in bits from the BLIS driver"
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_portable_matches_reference_all_transpositions() {
    check_gemm(Backend::Portable, 1);
    // moe-tests has no `blas` feature: when moe-core is built with `blas`
    // (e.g. through moe-bench's `openblas`), the same check applies to
    // `Backend::Blas`; add a `blas = ["moe-core/blas"]` feature here to run it.
}

#[test]
fn linear_forward_matches_reference() {
    let mut g = rng(2);
    let (n, din, dout) = (5, 11, 7);
    let x = rand_vec(&mut g, n * din, 1.0);
    let w = rand_vec(&mut g, dout * din, 1.0);
    let want = r::linear(&to_f64(&x), &to_f64(&w), n, din, dout);
    let mut y = vec![f32::NAN; n * dout];
    linear::forward(&mut y, &x, &w, n, din, dout, Accum::Set);
    assert_close("linear β=0", &y, &want, 1e-5, 1e-5);
    let mut y = vec![0.5f32; n * dout];
    linear::forward(&mut y, &x, &w, n, din, dout, Accum::Add);
    let want1: Vec<f64> = want.iter().map(|v| v + 0.5).collect();
    assert_close("linear β=1", &y, &want1, 1e-5, 1e-5);
}

// ---------------------------------------------------------------- E1 softmax

#[test]
fn softmax_matches_reference_and_sums_to_one() {
    let mut g = rng(3);
    for len in [1, 2, 5, 17, 64] {
        let x = rand_vec(&mut g, len, 8.0);
        let mut p = x.clone();
        softmax::forward_inplace(&mut p);
        assert_close(
            &format!("softmax len {len}"),
            &p,
            &r::softmax(&to_f64(&x)),
            1e-7,
            1e-5,
        );
        let sum: f64 = p.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-6, "softmax len {len}: sum {sum}");
    }
}

#[test]
fn softmax_is_stable_for_huge_values_and_masked_rows() {
    // Huge logits: naive exp overflows; the max-shifted form does not.
    let x = [3.0e38f32, -3.0e38, 3.0e38, 1.0e30, 88.0];
    let mut p = x;
    softmax::forward_inplace(&mut p);
    assert!(p.iter().all(|v| v.is_finite()), "huge row: {p:?}");
    assert_close("softmax huge", &p, &[0.5, 0.0, 0.5, 0.0, 0.0], 1e-7, 0.0);
    let x = [1000.0f32, 1001.0, 999.0];
    let mut p = x;
    softmax::forward_inplace(&mut p);
    assert_close("softmax 1e3", &p, &r::softmax(&to_f64(&x)), 1e-7, 1e-5);
    // Partly masked row: −∞ entries get probability 0 exactly.
    let mut p = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
    softmax::forward_inplace(&mut p);
    assert_eq!(p, [0.0, 0.5, 0.0, 0.5]);
    // Fully masked row: all zeros, not NaN (documented behaviour of moe-core).
    let mut p = [f32::NEG_INFINITY; 6];
    softmax::forward_inplace(&mut p);
    assert!(p.iter().all(|&v| v == 0.0), "fully masked row: {p:?}");
}

// ---------------------------------------------------------------- E5 RMSNorm

#[test]
fn rmsnorm_forward_matches_reference() {
    let mut g = rng(4);
    let (n, c, eps) = (6, 19, 1e-5f32);
    let mut x = rand_vec(&mut g, n * c, 2.0);
    // One row of tiny values, where eps matters.
    x[..c].iter_mut().for_each(|v| *v *= 1e-3);
    let w = rand_vec(&mut g, c, 1.5);
    let mut y = vec![f32::NAN; n * c];
    let mut rstd = vec![f32::NAN; n];
    rmsnorm::forward(&mut y, &mut rstd, &x, &w, eps);
    let xd = to_f64(&x);
    assert_close(
        "rmsnorm y",
        &y,
        &r::rmsnorm(&xd, &to_f64(&w), eps as f64),
        1e-6,
        1e-5,
    );
    let want: Vec<f64> = xd
        .chunks(c)
        .map(|row| 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps as f64).sqrt())
        .collect();
    assert_close("rmsnorm rstd", &rstd, &want, 0.0, 1e-5);
}

// ---------------------------------------------------------------- E9 RoPE

#[test]
fn rope_theta_follows_the_contract() {
    for cfg in [Config::tiny(), Config::scale_256(), Config::full()] {
        let (base, alpha, d) = (
            cfg.rope_base as f64,
            cfg.rope_alpha as f64,
            cfg.head_dim as f64,
        );
        let want = if alpha > 1.0 {
            base * alpha.powf(d / (d - 2.0))
        } else {
            base
        };
        let got = cfg.rope_theta() as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "rope_theta {got} vs {want}"
        );
    }
}

#[test]
fn rope_rotate_matches_reference_and_preserves_norm() {
    let mut g = rng(5);
    for cfg in [small_cfg(2, 1, 8), Config::full()] {
        let d = cfg.head_dim;
        let max_seq = 48;
        let table = RopeTable::new(&cfg, max_seq).unwrap();
        let theta = cfg.rope_theta() as f64;
        let mut worst = 0.0f64;
        for pos in 0..max_seq {
            let x = rand_vec(&mut g, d, 1.0);
            let mut y = x.clone();
            table.rotate(&mut y, pos).unwrap();
            let want = r::rope(&to_f64(&x), pos, theta);
            // f32 angles (PyTorch-style) drift by ~pos·ulp from the f64 ones.
            worst = worst.max(assert_close(
                &format!("rope d{d} pos {pos}"),
                &y,
                &want,
                2e-5,
                0.0,
            ));
            let n0: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let n1: f64 = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (n0 - n1).abs() <= 1e-5 * n0,
                "rope d{d} pos {pos}: norm {n0} → {n1}"
            );
            // Position 0 is the identity.
            if pos == 0 {
                assert_close("rope pos 0", &y, &to_f64(&x), 0.0, 0.0);
            }
        }
        println!("rope d{d}: max abs error {worst:e}");
    }
}

#[test]
fn rope_forward_on_qkv_rotates_q_and_k_only() {
    let mut g = rng(6);
    let cfg = small_cfg(4, 2, 6);
    let (b, t, h, kv, d) = (2, 5, 4, 2, 6);
    let q = (h + 2 * kv) * d;
    let theta = cfg.rope_theta() as f64;
    let table = RopeTable::new(&cfg, 16).unwrap();
    for pos0 in [0, 7] {
        let x = rand_vec(&mut g, b * t * q, 1.0);
        let mut y = x.clone();
        rope::forward(&mut y, &table, pos0, &Dims::new(&cfg, b, t)).unwrap();
        for row in 0..b * t {
            for head in 0..h + 2 * kv {
                let at = row * q + head * d;
                let label = format!("rope::forward pos0 {pos0} row {row} head {head}");
                if head < h + kv {
                    let want = r::rope(&to_f64(&x[at..at + d]), pos0 + row % t, theta);
                    assert_close(&label, &y[at..at + d], &want, 2e-5, 0.0);
                } else {
                    assert_eq!(
                        &y[at..at + d],
                        &x[at..at + d],
                        "{label}: values must not rotate"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- E10 attention

/// Splits a fused `[n, (h+2kv)·d]` buffer into f64 q `[n, h·d]`, k and v `[n, kv·d]`.
fn split_qkv(
    qkv: &[f32],
    n: usize,
    h: usize,
    kv: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let q = (h + 2 * kv) * d;
    let part = |lo: usize, w: usize| -> Vec<f64> {
        (0..n)
            .flat_map(|r| to_f64(&qkv[r * q + lo..r * q + lo + w]))
            .collect()
    };
    (
        part(0, h * d),
        part(h * d, kv * d),
        part((h + kv) * d, kv * d),
    )
}

#[test]
fn attention_matches_reference_mqa_and_gqa_and_is_causal() {
    let mut g = rng(7);
    for kv in [1, 2, 4] {
        let cfg = small_cfg(4, kv, 8);
        let (b, t) = (2, 7);
        let dm = Dims::new(&cfg, b, t);
        let (n, h, d) = (dm.n, dm.h, dm.d);
        let qkv = rand_vec(&mut g, n * dm.q, 1.5);
        let mut att = vec![f32::NAN; n * h * d];
        let mut probs = vec![f32::NAN; b * h * t * t];
        attention::forward(&mut att, &mut probs, &qkv, &dm, true).unwrap();
        let (q, k, v) = split_qkv(&qkv, n, h, kv, d);
        let want = r::attention(&q, &k, &v, b, t, h, kv, d);
        let err = assert_close(&format!("attention kv {kv}"), &att, &want, 1e-6, 1e-5);
        println!("attention h4 kv{kv}: max abs error {err:e}");
        // Saved probabilities: rows sum to 1, zero above the diagonal.
        for (blk, p) in probs.chunks(t * t).enumerate() {
            for i in 0..t {
                let s: f32 = p[i * t..i * t + i + 1].iter().sum();
                assert!(
                    (s - 1.0).abs() < 1e-5,
                    "probs block {blk} row {i} sums to {s}"
                );
                assert!(
                    p[i * t + i + 1..(i + 1) * t].iter().all(|&x| x == 0.0),
                    "probs block {blk} row {i}: non-zero above the diagonal"
                );
            }
        }
        // Inference mode (t×t scratch) gives the same outputs.
        let mut att2 = vec![f32::NAN; n * h * d];
        let mut scratch = vec![f32::NAN; t * t];
        attention::forward(&mut att2, &mut scratch, &qkv, &dm, false).unwrap();
        assert_close("attention inference", &att2, &to_f64(&att), 0.0, 1e-6);
        // Causality: changing k, v of position `j` of batch row 0 leaves every
        // earlier position (and the other batch row) exactly unchanged.
        let j = 4;
        let mut qkv2 = qkv.clone();
        for x in &mut qkv2[j * dm.q + h * d..(j + 1) * dm.q] {
            *x += 0.5;
        }
        let mut att3 = vec![f32::NAN; n * h * d];
        attention::forward(&mut att3, &mut probs, &qkv2, &dm, true).unwrap();
        for row in 0..n {
            let same = att3[row * h * d..(row + 1) * h * d] == att[row * h * d..(row + 1) * h * d];
            let must_stay = row < j || row >= t;
            assert_eq!(
                same, must_stay,
                "attention kv {kv}: row {row} changed = {}",
                !same
            );
        }
    }
}

// ---------------------------------------------------------------- E12 router

/// Runs `router::forward` on `n` rows; returns `(probs, idx, w)`.
fn run_router(
    x: &[f32],
    wg: &[f32],
    n: usize,
    c: usize,
    e: usize,
    k: usize,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut p = vec![f32::NAN; n * e];
    let mut idx = vec![u32::MAX; n * k];
    let mut w = vec![f32::NAN; n * k];
    router::forward(&mut p, &mut idx, &mut w, x, wg, &router_dims(n, c, e, k));
    (p, idx, w)
}

#[test]
fn router_matches_reference_topk_and_renormalises() {
    let mut g = rng(8);
    for (e, k) in [(6, 3), (4, 2), (5, 1), (3, 3)] {
        let (n, c) = (9, 10);
        let x = rand_vec(&mut g, n * c, 1.0);
        let wg = rand_vec(&mut g, e * c, 1.0);
        let (p, idx, w) = run_router(&x, &wg, n, c, e, k);
        let want = r::router(&to_f64(&x), &to_f64(&wg), n, c, e, k);
        assert_close(&format!("router probs e{e}"), &p, &want.probs, 1e-7, 1e-5);
        let want_idx: Vec<u32> = want.topk.iter().map(|&j| j as u32).collect();
        assert_eq!(idx, want_idx, "router e{e} k{k}: top-k indices");
        assert_close(
            &format!("router weights e{e}"),
            &w,
            &want.weights,
            1e-7,
            1e-5,
        );
        for row in 0..n {
            let ps: f32 = p[row * e..(row + 1) * e].iter().sum();
            let ws: f32 = w[row * k..(row + 1) * k].iter().sum();
            assert!((ps - 1.0).abs() < 1e-5, "probs row {row} sums to {ps}");
            assert!((ws - 1.0).abs() < 1e-5, "weights row {row} sum to {ws}");
            let ids = &idx[row * k..(row + 1) * k];
            for a in 0..k {
                assert!((ids[a] as usize) < e);
                assert!(
                    !ids[a + 1..].contains(&ids[a]),
                    "row {row}: repeated expert in {ids:?}"
                );
            }
            // Every chosen probability is >= every unchosen one.
            let chosen_min = ids
                .iter()
                .map(|&j| p[row * e + j as usize])
                .fold(f32::INFINITY, f32::min);
            for j in 0..e as u32 {
                if !ids.contains(&j) {
                    assert!(
                        p[row * e + j as usize] <= chosen_min,
                        "row {row}: expert {j} beats a chosen one"
                    );
                }
            }
        }
    }
}

#[test]
fn router_ties_go_to_the_lower_index() {
    let (n, c, e, k) = (3, 5, 5, 3);
    let mut g = rng(9);
    let x = rand_vec(&mut g, n * c, 1.0);
    // All-zero gate: uniform probabilities, top-k = 0, 1, …, k−1 with weights 1/k.
    let (p, idx, w) = run_router(&x, &vec![0.0; e * c], n, c, e, k);
    assert_close("uniform probs", &p, &vec![1.0 / e as f64; n * e], 1e-7, 0.0);
    assert_eq!(idx, [0, 1, 2].repeat(n), "uniform routing");
    assert_close(
        "uniform weights",
        &w,
        &vec![1.0 / k as f64; n * k],
        1e-7,
        0.0,
    );
    // Experts 3 and 1 have identical (dominant) gate rows: 1 must come first.
    let xpos: Vec<f32> = x.iter().map(|v| v.abs() + 0.1).collect();
    let mut wg = rand_vec(&mut g, e * c, 0.01);
    for j in [1, 3] {
        wg[j * c..(j + 1) * c].iter_mut().for_each(|v| *v = 1.0);
    }
    let (_, idx, _) = run_router(&xpos, &wg, n, c, e, k);
    for row in 0..n {
        assert_eq!(&idx[row * k..row * k + 2], &[1, 3], "row {row}: tie order");
    }
    // select_topk directly.
    let mut ids = [0u32; 4];
    let mut vals = [0.0f32; 4];
    router::select_topk(&mut ids, &mut vals, &[0.1, 0.3, 0.2, 0.3, 0.1]);
    assert_eq!(ids, [1, 3, 2, 0]);
    assert_eq!(vals, [0.3, 0.3, 0.2, 0.1]);
}

// ---------------------------------------------------------------- E8 SwiGLU

#[test]
fn swiglu_matches_reference() {
    let mut g = rng(10);
    let (m, c, f) = (5, 6, 7);
    let x = rand_vec(&mut g, m * c, 1.5);
    let w13 = rand_vec(&mut g, 2 * f * c, 1.0);
    let w2 = rand_vec(&mut g, c * f, 1.0);
    let ex = SwiGLU {
        w13: moe_core::Weight::F32(&w13),
        w2: moe_core::Weight::F32(&w2),
        c,
        f,
    };
    let (mut y, mut h13, mut act) = (
        vec![f32::NAN; m * c],
        vec![f32::NAN; m * 2 * f],
        vec![f32::NAN; m * f],
    );
    ex.forward(&mut y, &mut h13, &mut act, &x, m);
    let (xd, w13d) = (to_f64(&x), to_f64(&w13));
    let (w1, w3) = w13d.split_at(f * c);
    let want = r::swiglu(&xd, w1, w3, &to_f64(&w2), m, c, f);
    let err = assert_close("swiglu y", &y, &want, 1e-5, 1e-5);
    println!("swiglu: max abs error {err:e}");
    // Saved activations: h13 rows are [x·w1ᵀ | x·w3ᵀ], act = silu(h1)·h3.
    let h1 = r::linear(&xd, w1, m, c, f);
    let h3 = r::linear(&xd, w3, m, c, f);
    let want_h13: Vec<f64> = (0..m)
        .flat_map(|i| {
            h1[i * f..(i + 1) * f]
                .iter()
                .chain(&h3[i * f..(i + 1) * f])
                .copied()
        })
        .collect();
    assert_close("swiglu h13", &h13, &want_h13, 1e-6, 1e-5);
    let want_act: Vec<f64> = h1.iter().zip(&h3).map(|(&a, &b)| r::silu(a) * b).collect();
    assert_close("swiglu act", &act, &want_act, 1e-6, 1e-5);
}

// ---------------------------------------------------------------- E11 dispatch

#[test]
fn dispatch_bookkeeping_is_consistent() {
    let mut g = rng(11);
    let (n, c, e, k) = (13, 8, 6, 2);
    let x = rand_vec(&mut g, n * c, 1.0);
    let mut wg = rand_vec(&mut g, e * c, 1.0);
    // Expert 4 never wins (x ≥ 0, its gate row is very negative): an empty expert.
    let xpos: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    wg[4 * c..5 * c].iter_mut().for_each(|v| *v = -10.0);
    let (_, idx, _) = run_router(&xpos, &wg, n, c, e, k);
    let mut counts = vec![99u32; e];
    let mut offsets = vec![99u32; e + 1];
    let mut slot_row = vec![u32::MAX; n * k];
    let mut slot_of = vec![u32::MAX; n * k];
    moe::dispatch(
        &mut counts,
        &mut offsets,
        &mut slot_row,
        &mut slot_of,
        &idx,
        k,
    );
    for ex in 0..e {
        let want = idx.iter().filter(|&&j| j as usize == ex).count() as u32;
        assert_eq!(counts[ex], want, "counts[{ex}]");
        assert_eq!(offsets[ex + 1] - offsets[ex], counts[ex], "offsets[{ex}]");
    }
    assert_eq!(counts[4], 0, "expert 4 should be empty");
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[e] as usize, n * k);
    let mut seen = vec![false; n * k];
    for row in 0..n {
        for j in 0..k {
            let s = slot_of[row * k + j] as usize;
            assert!(
                s < n * k && !seen[s],
                "slot_of[{row},{j}] = {s} out of range or repeated"
            );
            seen[s] = true;
            assert_eq!(slot_row[s] as usize, row, "slot_row[slot_of[{row},{j}]]");
            let ex = idx[row * k + j] as usize;
            assert!(
                (offsets[ex]..offsets[ex + 1]).contains(&(s as u32)),
                "slot {s} outside expert {ex}'s range"
            );
        }
    }
    // An expert's slots are in row order.
    for ex in 0..e {
        let rows = &slot_row[offsets[ex] as usize..offsets[ex + 1] as usize];
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "expert {ex}: rows {rows:?} not increasing"
        );
    }
}

// ---------------------------------------------------------------- E14 / E4

#[test]
fn cross_entropy_matches_reference() {
    let mut g = rng(12);
    let (n, v) = (6, 11);
    let mut logits = rand_vec(&mut g, n * v, 3.0);
    // A row of large logits (naive exp would overflow f32).
    logits[v..2 * v].iter_mut().for_each(|x| *x += 200.0);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % v as u32).collect();
    let mut dlogits = vec![f32::NAN; n * v];
    let mut ce_row = vec![f32::NAN; n];
    let ce = loss::cross_entropy(&mut dlogits, &mut ce_row, &logits, &targets, v).unwrap();
    let ld = to_f64(&logits);
    let want = r::cross_entropy(&ld, &targets, v);
    assert_close("cross-entropy", &[ce], &[want], 1e-6, 1e-6);
    for row in 0..n {
        let w = r::cross_entropy(&ld[row * v..(row + 1) * v], &targets[row..row + 1], v);
        assert_close(
            &format!("ce_row[{row}]"),
            &ce_row[row..row + 1],
            &[w],
            1e-5,
            1e-5,
        );
        let s: f32 = dlogits[row * v..(row + 1) * v].iter().sum();
        assert!(s.abs() < 1e-6, "dlogits row {row} sums to {s}");
    }
}

#[test]
fn embedding_forward_copies_rows() {
    let mut g = rng(13);
    let (v, c) = (9, 5);
    let table = rand_vec(&mut g, v * c, 1.0);
    let tokens = [3u32, 0, 8, 3, 5];
    let mut x = vec![f32::NAN; tokens.len() * c];
    embedding::forward(&mut x, &tokens, &table, c).unwrap();
    let want = r::embedding(&tokens, &to_f64(&table), c);
    assert_close("embedding", &x, &want, 0.0, 0.0);
}

/// With `--features openblas`, the CBLAS backend agrees with the portable one.
#[cfg(feature = "openblas")]
#[test]
fn blas_backend_matches_portable() {
    use moe_core::kernels::gemm::{gemm_with, Backend, Mat};
    let (m, n, k) = (37, 53, 29);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0)
        .collect();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let ma = if ta { Mat::t(&a, m) } else { Mat::n(&a, k) };
        let mb = if tb { Mat::t(&b, k) } else { Mat::n(&b, n) };
        let mut c1 = vec![0.5f32; m * n];
        let mut c2 = c1.clone();
        gemm_with(Backend::Portable, m, n, k, 0.7, ma, mb, 1.0, &mut c1, n);
        gemm_with(Backend::Blas, m, n, k, 0.7, ma, mb, 1.0, &mut c2, n);
        for (x, y) in c1.iter().zip(&c2) {
            assert!(
                (x - y).abs() <= 1e-5 + 1e-5 * y.abs(),
                "ta {ta} tb {tb}: {x} vs {y}"
            );
        }
    }
    assert_eq!(Backend::DEFAULT, Backend::Blas);
}

// ------------------------------------------- E3 GEMM: the BLIS-style backend
//
// `kernels::gemm::portable` directly, on every kernel path (`Path::Auto` is
// AVX-512F or AVX2+FMA, whichever is best on this CPU, `Path::Avx512Wide` /
// `Path::Avx512Narrow` the AVX-512 kernels with the 6 × 32 or the 6 × 16
// tiles whatever the core, `Path::Avx2` the AVX2 kernels even on an AVX-512
// CPU, `Path::Portable` the plain-Rust fallback),
// with every stride layout of A, B and C, pre-packed B, the block boundaries
// (KC = 256, MC = 144, NC = 512), the small-m and depth-16 special paths.
// Tolerance: `1e-5·(k+1)·Σ|α·a·b| + |β·c|` against an f64 reference.

mod blis {
    use moe_core::kernels::gemm::portable::{
        gemm, gemm_on, gemm_packed_b_on, pack_b, packed_len, Path,
    };

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f()).collect()
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// One random product: a shape from the lists, the orientations of
        /// A and B, and β ∈ {0, 1, 0.5} (drawn in that order).
        fn case(
            &mut self,
            ms: &[usize],
            ns: &[usize],
            ks: &[usize],
        ) -> ((usize, usize, usize), (bool, bool), f32) {
            let (m, n, k) = (
                ms[self.below(ms.len())],
                ns[self.below(ns.len())],
                ks[self.below(ks.len())],
            );
            let (ta, tb) = (self.below(2) == 1, self.below(2) == 1);
            let beta = [0.0f32, 1.0, 0.5][self.below(3)];
            ((m, n, k), (ta, tb), beta)
        }
    }

    /// Storage for an `op()` of shape `[r, c]` with `pad` extra floats per
    /// stored row: `(data, rs, cs)`.
    fn operand(
        rng: &mut Rng,
        r: usize,
        c: usize,
        trans: bool,
        pad: usize,
    ) -> (Vec<f32>, usize, usize) {
        if trans {
            let ld = r + pad;
            (rng.vec(c.max(1) * ld), 1, ld)
        } else {
            let ld = c + pad;
            (rng.vec(r.max(1) * ld), ld, 1)
        }
    }

    /// One random case: `C = α·op(A)·op(B) + β·C` on `path`; C layout 0
    /// row-major dense, 1 row-major padded, 2 column-major, 3 fully strided.
    #[allow(clippy::too_many_arguments)]
    fn run_case(
        path: Path,
        seed: u64,
        (m, n, k): (usize, usize, usize),
        (ta, tb): (bool, bool),
        alpha: f32,
        beta: f32,
        c_layout: u8,
        packed: bool,
    ) {
        let mut rng = Rng(seed | 1);
        let rng = &mut rng;
        let (pa, pb) = (rng.below(3), rng.below(3));
        let (a, rsa, csa) = operand(rng, m, k, ta, pa);
        let (b, rsb, csb) = operand(rng, k, n, tb, pb);
        let (rsc, csc, clen) = match c_layout {
            0 => (n, 1, m * n),
            1 => (n + 5, 1, m * (n + 5)),
            2 => (1, m + 3, n * (m + 3)),
            _ => (2 * n + 1, 2, m * (2 * n + 1)),
        };
        let mut c = rng.vec(clen.max(1));
        if beta == 0.0 {
            c.iter_mut().for_each(|x| *x = f32::NAN); // β = 0 never reads C
        }
        let c0 = c.clone();
        if packed {
            let mut pk = vec![f32::NAN; packed_len(k, n)];
            pack_b(k, n, &b, rsb, csb, &mut pk);
            gemm_packed_b_on(
                path, m, n, k, alpha, &a, rsa, csa, &pk, beta, &mut c, rsc, csc,
            );
        } else {
            gemm_on(
                path, m, n, k, alpha, &a, rsa, csa, &b, rsb, csb, beta, &mut c, rsc, csc,
            );
        }
        let mut touched = vec![false; c.len()];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut sa) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                    s += x;
                    sa += x.abs();
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c0[i * rsc + j * csc] as f64
                };
                let want = alpha as f64 * s + old;
                let mag = (alpha as f64).abs() * sa + old.abs();
                let got = c[i * rsc + j * csc] as f64;
                touched[i * rsc + j * csc] = true;
                let tol = 1e-5 * (k as f64 + 1.0) * mag.max(1e-30) + 1e-30;
                assert!(
                    (got - want).abs() <= tol,
                    "{path:?} m{m} n{n} k{k} ta{ta} tb{tb} α{alpha} β{beta} L{c_layout} P{packed}: \
                     C[{i},{j}] = {got}, want {want} (tol {tol})"
                );
            }
        }
        for (idx, t) in touched.iter().enumerate() {
            assert!(
                *t || c[idx].to_bits() == c0[idx].to_bits(),
                "{path:?} m{m} n{n} k{k}: element {idx} outside C was modified"
            );
        }
    }

    const PATHS: [Path; 5] = [
        Path::Auto,
        Path::Avx512Wide,
        Path::Avx512Narrow,
        Path::Avx2,
        Path::Portable,
    ];

    #[test]
    fn gemm_small_shapes_all_layouts_both_paths() {
        let dims = [0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 23, 33];
        for path in PATHS {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            for &m in &dims {
                for &n in &dims {
                    for &k in &[0usize, 1, 2, 7, 8, 9, 16, 17] {
                        let t = (rng.below(2) == 1, rng.below(2) == 1);
                        let beta = [0.0f32, 1.0, -0.7][rng.below(3)];
                        let alpha = [1.0f32, 0.5, -1.3][rng.below(3)];
                        let (s, l, p) = (rng.next(), rng.below(4) as u8, rng.below(3) == 0);
                        run_case(path, s, (m, n, k), t, alpha, beta, l, p);
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_medium_every_combination_both_paths() {
        // Decoding (m ≤ 4), x·Wᵀ with 4 < m ≤ 16, depth-16 weight gradients.
        let shapes = [
            (37, 29, 41),
            (5, 70, 33),
            (70, 5, 19),
            (1, 100, 64),
            (2, 65, 9),
            (3, 33, 300),
            (4, 200, 17),
            (12, 100, 64),
            (49, 50, 16),
        ];
        for path in PATHS {
            let mut rng = Rng(12345);
            for &shape in &shapes {
                for t in [(false, false), (false, true), (true, false), (true, true)] {
                    for beta in [0.0f32, 1.0, 0.3] {
                        let (l, p) = (rng.below(4) as u8, rng.below(2) == 0);
                        run_case(path, rng.next(), shape, t, 1.7, beta, l, p);
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_block_boundaries_both_paths() {
        // Crosses KC = 256, MC = 144, NC = 512 and the stack-buffer tiers.
        let shapes = [
            (145, 513, 257),
            (300, 40, 260),
            (7, 1000, 64),
            (16, 1000, 256),
            (289, 17, 300),
            (4, 70, 600),
            (1, 33, 1000),
        ];
        for path in PATHS {
            let mut rng = Rng(777);
            for &shape in &shapes {
                for t in [(false, false), (false, true), (true, false), (true, true)] {
                    let beta = [0.0f32, 1.0, 2.0][rng.below(3)];
                    let (l, p) = (rng.below(4) as u8, rng.below(2) == 0);
                    run_case(path, rng.next(), shape, t, -0.9, beta, l, p);
                }
            }
            run_case(
                path,
                rng.next(),
                (300, 530, 520),
                (false, false),
                1.0,
                0.0,
                0,
                false,
            );
            run_case(
                path,
                rng.next(),
                (290, 600, 300),
                (true, true),
                1.0,
                1.0,
                0,
                true,
            );
        }
    }

    #[test]
    fn gemm_random_shapes_both_paths() {
        for path in PATHS {
            let mut rng = Rng(4242);
            for _ in 0..150 {
                let shape = (rng.below(80), rng.below(80), rng.below(90));
                let t = (rng.below(2) == 1, rng.below(2) == 1);
                let alpha = [1.0f32, 0.25][rng.below(2)];
                let beta = [0.0f32, 1.0, -2.0][rng.below(3)];
                let (l, p) = (rng.below(4) as u8, rng.below(2) == 1);
                run_case(path, rng.next(), shape, t, alpha, beta, l, p);
            }
        }
    }

    #[test]
    fn gemm_is_deterministic_and_packed_b_gives_the_same_bits() {
        let mut rng = Rng(99);
        for &(m, n, k) in &[
            (64, 64, 64),
            (1, 1000, 64),
            (16, 256, 64),
            (300, 200, 300),
            (3, 50, 17),
        ] {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let c0 = rng.vec(m * n);
            for path in PATHS {
                let mut r1 = c0.clone();
                let mut r2 = c0.clone();
                gemm_on(path, m, n, k, 1.0, &a, k, 1, &b, 1, k, 1.0, &mut r1, n, 1);
                gemm_on(path, m, n, k, 1.0, &a, k, 1, &b, 1, k, 1.0, &mut r2, n, 1);
                assert!(r1.iter().zip(&r2).all(|(x, y)| x.to_bits() == y.to_bits()));
                let mut pk = vec![0.0; packed_len(k, n)];
                pack_b(k, n, &b, 1, k, &mut pk);
                let mut r3 = c0.clone();
                gemm_packed_b_on(path, m, n, k, 1.0, &a, k, 1, &pk, 1.0, &mut r3, n, 1);
                // m ≤ 4 unpacked takes the GEMV path (another summation order).
                if m > 4 {
                    assert!(
                        r1.iter().zip(&r3).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{path:?}: packed != unpacked at {m}x{n}x{k}"
                    );
                }
            }
        }
    }

    /// The FMA paths (`Auto`, `Avx512Wide`, `Avx512Narrow`, `Avx2`) give the
    /// same bits for every shape, the small-`m` one (1–4 rows, whose wide
    /// tiles span up to 128 columns) included: each chooses other tile
    /// shapes (6 × 32 bands, 1 × 128 … 5 × 32 edges on a full-width AVX-512
    /// core) but computes each element as the same FMA chain. On a CPU
    /// without AVX-512F the AVX-512 paths run the AVX2 kernels (the test
    /// still checks `Auto` against them).
    #[test]
    fn gemm_fma_paths_are_bit_identical_wide_tiles_included() {
        #[cfg(target_arch = "x86_64")]
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let ms = [1usize, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 16, 25];
        let ns = [17usize, 32, 48, 64, 100, 128, 130, 144, 256, 300];
        let ks = [1usize, 4, 13, 16, 64, 256, 300];
        let mut rng = Rng(0x005E_ED0F_7113);
        let mut cases = 0;
        for _ in 0..600 {
            let ((m, n, k), (ta, tb), beta) = rng.case(&ms, &ns, &ks);
            let packed = rng.below(2) == 0;
            let (a, rsa, csa) = operand(&mut rng, m, k, ta, 0);
            let (b, rsb, csb) = operand(&mut rng, k, n, tb, 0);
            let c0 = rng.vec(m * n);
            let mut pk = vec![f32::NAN; packed_len(k, n)];
            pack_b(k, n, &b, rsb, csb, &mut pk);
            let run = |path: Path| {
                let mut c = c0.clone();
                if packed {
                    gemm_packed_b_on(path, m, n, k, 1.0, &a, rsa, csa, &pk, beta, &mut c, n, 1);
                } else {
                    gemm_on(
                        path, m, n, k, 1.0, &a, rsa, csa, &b, rsb, csb, beta, &mut c, n, 1,
                    );
                }
                c
            };
            let want = run(Path::Avx2);
            for path in [Path::Auto, Path::Avx512Wide, Path::Avx512Narrow] {
                let got = run(path);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits(),
                        "{path:?} vs Avx2: m{m} n{n} k{k} ta{ta} tb{tb} β{beta} packed {packed}: \
                         C[{}, {}] = {g} vs {w}",
                        i / n,
                        i % n
                    );
                }
            }
            cases += 1;
        }
        assert_eq!(cases, 600);
    }

    /// The bits of every blocked-driver product (`m ≥ 5`, each orientation,
    /// packed or not) against an independent oracle: each C element is one
    /// chain over the depth, in order, per `KC = 256` block — `acc =
    /// fma(a, b, acc)` on the AVX2 path, `acc = acc + a·b` on the portable one
    /// — and the blocks combine as `y = β·c + acc₀` (`fma` / mul-add), then
    /// `y = y + acc_b`. This is what keeps a pre-packed forward, the `x·Wᵀ`
    /// route, the wide edge-band tiles and the AVX2 and AVX-512 kernels
    /// bit-identical to each other.
    #[test]
    fn gemm_blocked_bits_are_one_depth_ordered_chain_per_element() {
        let fused = {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        let ms = [5usize, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 19, 20, 25, 37];
        let ns = [5usize, 7, 8, 15, 16, 17, 31, 33, 40, 64, 65, 100, 130, 256];
        let ks = [1usize, 3, 4, 8, 13, 16, 17, 64, 256, 300];
        let mut rng = Rng(2026);
        let mut cases = 0;
        for _ in 0..1500 {
            let ((m, n, k), (ta, tb), beta) = rng.case(&ms, &ns, &ks);
            let packed = rng.below(3) == 0;
            let colmajor = rng.below(4) == 0;
            let (pa, pb) = (rng.below(2), rng.below(2));
            let (a, rsa, csa) = operand(&mut rng, m, k, ta, pa);
            let (b, rsb, csb) = operand(&mut rng, k, n, tb, pb);
            let (rsc, csc) = if colmajor { (1, m) } else { (n, 1) };
            let c0 = rng.vec(m * n);
            for (path, fma) in [
                (Path::Auto, fused),
                (Path::Avx512Wide, fused),
                (Path::Avx512Narrow, fused),
                (Path::Avx2, fused),
                (Path::Portable, false),
            ] {
                let mut c = c0.clone();
                if packed {
                    let mut pk = vec![f32::NAN; packed_len(k, n)];
                    pack_b(k, n, &b, rsb, csb, &mut pk);
                    gemm_packed_b_on(
                        path, m, n, k, 1.0, &a, rsa, csa, &pk, beta, &mut c, rsc, csc,
                    );
                } else {
                    gemm_on(
                        path, m, n, k, 1.0, &a, rsa, csa, &b, rsb, csb, beta, &mut c, rsc, csc,
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let mut y = c0[i * rsc + j * csc];
                        for (blk, p0) in (0..k).step_by(256).enumerate() {
                            let mut acc = 0.0f32;
                            for p in p0..k.min(p0 + 256) {
                                let (x, w) = (a[i * rsa + p * csa], b[p * rsb + j * csb]);
                                acc = if fma { x.mul_add(w, acc) } else { acc + x * w };
                            }
                            y = match (blk, beta == 0.0) {
                                (0, true) => acc,
                                (0, false) if fma => beta.mul_add(y, acc),
                                (0, false) => acc + beta * y,
                                _ => y + acc,
                            };
                        }
                        let got = c[i * rsc + j * csc];
                        assert_eq!(
                            got.to_bits(),
                            y.to_bits(),
                            "{path:?} m{m} n{n} k{k} ta{ta} tb{tb} β{beta} packed{packed} \
                             colmajor{colmajor}: C[{i},{j}] = {got}, chain {y}"
                        );
                    }
                }
                cases += 1;
            }
        }
        assert_eq!(cases, 7500);
    }

    #[test]
    fn gemm_beta_zero_ignores_nan_and_k_zero_scales() {
        let mut rng = Rng(5);
        for &(m, n, k) in &[
            (1, 10, 5),
            (4, 17, 64),
            (6, 16, 16),
            (33, 70, 300),
            (200, 600, 40),
        ] {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            for path in PATHS {
                let mut c = vec![f32::NAN; m * n];
                gemm_on(path, m, n, k, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut c, n, 1);
                assert!(c.iter().all(|x| x.is_finite()), "{path:?} {m}x{n}x{k}");
            }
            let mut c = vec![f32::INFINITY; m * n];
            gemm(m, n, 0, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut c, n, 1);
            assert!(c.iter().all(|&x| x == 0.0));
        }
    }
}

// ------------------------------- elementwise kernels: both dispatch paths
//
// Every elementwise kernel runs the same scalar Rust on the AVX2+FMA clone
// and on the baseline-ISA instance (no FMA contraction, no reassociation),
// so the two paths must agree bit for bit.

mod dispatch_paths {
    use super::{rand_vec, rng, small_cfg};
    use moe_core::kernels::cpu::with_portable_elementwise;
    use moe_core::kernels::{axpy, dot, first_non_finite, softmax};
    use moe_core::rope::{self, RopeTable};
    use moe_core::swiglu::SwiGLU;
    use moe_core::{loss, rmsnorm};

    /// The bits of `x`, every NaN as the one canonical quiet NaN: Rust leaves
    /// the sign and payload of a NaN computed from NaN inputs unspecified
    /// (RFC 3514; LLVM may commute `a·b`, and x86 returns the first
    /// operand's NaN), so two instances of the same operations agree on
    /// every other value bit for bit and on *where* the NaNs are, not on
    /// their payloads.
    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter()
            .map(|v| {
                if v.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    v.to_bits()
                }
            })
            .collect()
    }

    /// Runs `f` on the auto-selected path and on the forced portable path and
    /// asserts identical bits of everything it returns.
    fn same_bits(label: &str, f: impl Fn() -> Vec<f32>) {
        let auto = f();
        let portable = with_portable_elementwise(&f);
        assert_eq!(bits(&auto), bits(&portable), "{label}: paths differ");
    }

    #[test]
    fn elementwise_kernels_are_bit_identical_across_paths() {
        let mut g = rng(77);
        for &n in &[1usize, 7, 8, 31, 64, 1000, 1027] {
            let a = rand_vec(&mut g, n, 4.0);
            let b = rand_vec(&mut g, n, 4.0);
            same_bits("dot", || vec![dot(&a, &b)]);
            same_bits("axpy", || {
                let mut y = b.clone();
                axpy(&mut y, 0.37, &a);
                y
            });
            same_bits("softmax", || {
                let mut x = a.clone();
                softmax::forward_inplace(&mut x);
                let mut dx = vec![0.0; n];
                softmax::backward(&mut dx, &x, &b);
                let mut g2 = b.clone();
                softmax::backward_inplace(&mut g2, &x);
                [x, dx, g2].concat()
            });
            // Edge rows (all −∞ = masked, one NaN, one +∞): same bits on both paths.
            for edge in [f32::NEG_INFINITY, f32::NAN, f32::INFINITY] {
                same_bits("softmax edge row", || {
                    let mut x = if edge == f32::NEG_INFINITY {
                        vec![edge; n]
                    } else {
                        a.clone()
                    };
                    x[n / 2] = edge;
                    let ok = softmax::forward_inplace(&mut x);
                    assert!(!ok, "n = {n}, edge {edge}: not a distribution");
                    x
                });
            }
            let mut bad = a.clone();
            bad[n / 2] = f32::NAN;
            assert_eq!(
                with_portable_elementwise(|| first_non_finite(&bad)),
                first_non_finite(&bad)
            );
        }
        // RMSNorm forward over row counts around the 8-row blocks and widths
        // around the 8-lane chunks; rstd checked against the documented
        // order (lane l sums x[8j + l]², folded ((a0+a4)+(a2+a6)) +
        // ((a1+a5)+(a3+a7)), then 1/√(Σ/c + eps)), written out here.
        for &rows in &[1usize, 7, 8, 9, 16, 17, 64, 65] {
            for &c in &[1usize, 3, 8, 13, 64, 100] {
                let mut x = rand_vec(&mut g, rows * c, 3.0);
                if rows > 8 {
                    x[8 * c + c / 2] = f32::NAN;
                    x[c - 1] = f32::INFINITY;
                }
                let w = rand_vec(&mut g, c, 1.0);
                let eps = 1e-6f32;
                let want: Vec<f32> = x
                    .chunks_exact(c)
                    .map(|xr| {
                        let mut a = [0.0f32; 8];
                        for (i, &v) in xr.iter().enumerate() {
                            a[i % 8] += v * v;
                        }
                        let ss = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
                        1.0 / (ss / c as f32 + eps).sqrt()
                    })
                    .collect();
                let run = || {
                    let (mut y, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows]);
                    rmsnorm::forward(&mut y, &mut rstd, &x, &w, eps);
                    [rstd, y].concat()
                };
                assert_eq!(
                    bits(&run()[..rows]),
                    bits(&want),
                    "rmsnorm rstd, rows {rows}, c {c}"
                );
                same_bits(&format!("rmsnorm rows {rows} c {c}"), run);
            }
        }
        // RMSNorm forward/backward, SwiGLU forward/backward, CE row, RoPE.
        let (rows, c, f, v) = (6usize, 64usize, 96usize, 1000usize);
        let x = rand_vec(&mut g, rows * c, 2.0);
        let w = rand_vec(&mut g, c, 1.0);
        let dy = rand_vec(&mut g, rows * c, 1.0);
        same_bits("rmsnorm", || {
            let (mut y, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows]);
            rmsnorm::forward(&mut y, &mut rstd, &x, &w, 1e-6);
            let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c]);
            rmsnorm::backward(&mut dx, &mut dw, &dy, &x, &rstd, &w);
            [y, rstd, dx, dw].concat()
        });
        let w13 = rand_vec(&mut g, 2 * f * c, 0.2);
        let w2 = rand_vec(&mut g, c * f, 0.2);
        same_bits("swiglu", || {
            let e = SwiGLU {
                w13: moe_core::Weight::F32(&w13),
                w2: moe_core::Weight::F32(&w2),
                c,
                f,
            };
            let (mut y, mut h13, mut act) = (
                vec![0.0; rows * c],
                vec![0.0; rows * 2 * f],
                vec![0.0; rows * f],
            );
            e.forward(&mut y, &mut h13, &mut act, &x, rows);
            let (mut dxg, mut dw13, mut dw2) =
                (vec![0.0; rows * c], vec![0.0; 2 * f * c], vec![0.0; c * f]);
            let (mut dh13, mut dact) = (vec![0.0; rows * 2 * f], vec![0.0; rows * f]);
            e.backward(
                &mut dxg, &mut dw13, &mut dw2, &mut dh13, &mut dact, &dy, &x, &h13, &act, rows,
            );
            [y, h13, act, dxg, dw13, dw2].concat()
        });
        let logits = rand_vec(&mut g, rows * v, 8.0);
        let targets: Vec<u32> = (0..rows as u32).map(|r| r * 131 % v as u32).collect();
        same_bits("cross_entropy", || {
            let (mut dz, mut ce) = (vec![0.0; rows * v], vec![0.0; rows]);
            let l = loss::cross_entropy(&mut dz, &mut ce, &logits, &targets, v).unwrap();
            [dz, ce, vec![l]].concat()
        });
        let cfg = small_cfg(4, 2, 16);
        let dm = moe_core::Dims::new(&cfg, 2, 8);
        let table = RopeTable::new(&cfg, 8).unwrap();
        let qkv = rand_vec(&mut g, 2 * 8 * (4 + 2 * 2) * 16, 1.0);
        same_bits("rope", || {
            let mut q = qkv.clone();
            rope::forward(&mut q, &table, 0, &dm).unwrap();
            let mut dq = qkv.clone();
            rope::backward(&mut dq, &table, &dm).unwrap();
            [q, dq].concat()
        });
    }

    /// SwiGLU's gate `silu(h1) ⊙ h3` (four registers per step on AVX2, the
    /// rest one register, the tail masked) on widths that reach each part:
    /// the same bits on both paths, and `silu(±0) ⊙ h3`, `±∞`, NaN included.
    #[test]
    fn swiglu_gate_is_bit_identical_across_paths() {
        let mut g = rng(82);
        for &f in &[1usize, 5, 8, 13, 32, 45, 72, 256] {
            let (rows, c) = (3usize, 8usize);
            let e_w13 = rand_vec(&mut g, 2 * f * c, 2.0);
            let e_w2 = rand_vec(&mut g, c * f, 0.5);
            let mut x = rand_vec(&mut g, rows * c, 3.0);
            x[0] = 0.0;
            let e = SwiGLU {
                w13: moe_core::Weight::F32(&e_w13),
                w2: moe_core::Weight::F32(&e_w2),
                c,
                f,
            };
            same_bits("swiglu gate", || {
                let (mut y, mut h13, mut act) = (
                    vec![0.0; rows * c],
                    vec![0.0; rows * 2 * f],
                    vec![0.0; rows * f],
                );
                e.forward(&mut y, &mut h13, &mut act, &x, rows);
                [y, h13, act].concat()
            });
        }
        // Extreme gate inputs straight through the gate (via a 1-wide identity expert).
        let specials = [
            0.0f32,
            -0.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            100.0,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            3.5,
        ];
        let f = specials.len();
        let mut w13 = vec![0.0f32; 2 * f];
        w13[..f]
            .iter_mut()
            .zip(&specials)
            .for_each(|(w, &s)| *w = s);
        w13[f..].iter_mut().for_each(|w| *w = 1.0);
        let w2 = vec![0.0f32; f];
        let e = SwiGLU {
            w13: moe_core::Weight::F32(&w13),
            w2: moe_core::Weight::F32(&w2),
            c: 1,
            f,
        };
        same_bits("swiglu gate specials", || {
            let (mut y, mut h13, mut act) = (vec![0.0; 1], vec![0.0; 2 * f], vec![0.0; f]);
            e.forward(&mut y, &mut h13, &mut act, &[1.0], 1);
            act
        });
    }

    /// Attention forward (saved `P`, inference scratch, bf16-saved, the LSE
    /// forward, and `attend` over a separate KV store with `pos0 > 0`) gives
    /// the same bits on the AVX2 row kernels and on the portable loops, on
    /// shapes that reach every edge: `d` not a multiple of 8 (and < 8), key
    /// counts not a multiple of 8, a sliding window, `t = 1` decoding, MQA and
    /// GQA; and a non-finite score row is reported at the same index.
    #[test]
    fn attention_is_bit_identical_across_paths() {
        use moe_core::attention::{self, flash};
        use moe_core::kv_cache::KvSource;
        let mut g = rng(81);
        let mut cases = 0;
        for &(h, kv, d) in &[
            (4usize, 1usize, 16usize),
            (4, 2, 13),
            (2, 1, 5),
            (2, 2, 24),
            (2, 1, 64),
        ] {
            for &t in &[1usize, 7, 9, 17, 33] {
                for window in [None, Some(3), Some(10)] {
                    let cfg = moe_core::Config {
                        sliding_window: window,
                        ..small_cfg(h, kv, d)
                    };
                    let b = 2;
                    let dm = moe_core::Dims::new(&cfg, b, t);
                    let qkv = rand_vec(&mut g, dm.n * dm.q, 2.0);
                    let hd = h * d;
                    same_bits("attention forward (saved P)", || {
                        let mut att = vec![f32::NAN; dm.n * hd];
                        let mut probs = vec![f32::NAN; b * h * t * t];
                        attention::forward(&mut att, &mut probs, &qkv, &dm, true).unwrap();
                        [att, probs].concat()
                    });
                    same_bits("attention forward (inference)", || {
                        let mut att = vec![f32::NAN; dm.n * hd];
                        let mut row = vec![f32::NAN; t];
                        attention::forward(&mut att, &mut row, &qkv, &dm, false).unwrap();
                        att
                    });
                    same_bits("attention forward (bf16 P)", || {
                        let mut att = vec![f32::NAN; dm.n * hd];
                        let mut scratch = vec![f32::NAN; h * t * t];
                        let mut p16 = vec![0u16; b * h * t * t];
                        attention::forward_bf16(&mut att, &mut scratch, &mut p16, &qkv, &dm)
                            .unwrap();
                        let p16: Vec<f32> = p16.iter().map(|&x| f32::from(x)).collect();
                        [att, p16].concat()
                    });
                    same_bits("attention forward (LSE)", || {
                        let mut att = vec![f32::NAN; dm.n * hd];
                        let mut row = vec![f32::NAN; t];
                        let (mut m, mut u) = (vec![f32::NAN; b * h * t], vec![f32::NAN; b * h * t]);
                        flash::forward(&mut att, &mut row, &mut m, &mut u, &qkv, &dm).unwrap();
                        [att, m, u].concat()
                    });
                    // `attend` on t new rows at positions pos0.. over a KV store
                    // [pos0 + t, kv·d] (a decoding step when t = 1).
                    for pos0 in [0usize, 5, 12] {
                        let n_keys = pos0 + t;
                        let kc = rand_vec(&mut g, n_keys * kv * d, 2.0);
                        let vc = rand_vec(&mut g, n_keys * kv * d, 2.0);
                        let rows = rand_vec(&mut g, t * dm.q, 2.0);
                        let dm1 = moe_core::Dims::new(&cfg, 1, t);
                        same_bits("attend with a KV store", || {
                            let kvs = KvSource {
                                k: &kc,
                                v: &vc,
                                stride: kv * d,
                                k_off: 0,
                                v_off: 0,
                            };
                            let mut att = vec![f32::NAN; t * hd];
                            let mut row = vec![f32::NAN; n_keys];
                            attention::attend(&mut att, &mut row, false, &rows, kvs, pos0, &dm1)
                                .unwrap();
                            att
                        });
                        cases += 1;
                    }
                    // A NaN (or ±∞) in one query: the same error, at the same row.
                    if t > 2 {
                        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                            let mut q2 = qkv.clone();
                            let at = (t + t / 2) * dm.q + (h - 1) * d + d / 2;
                            q2[at] = bad;
                            let run = || {
                                let mut att = vec![0.0; dm.n * hd];
                                let mut probs = vec![0.0; b * h * t * t];
                                let e1 = attention::forward(&mut att, &mut probs, &q2, &dm, true);
                                let mut row = vec![0.0; t];
                                let (mut m, mut u) = (vec![0.0; b * h * t], vec![0.0; b * h * t]);
                                let e2 =
                                    flash::forward(&mut att, &mut row, &mut m, &mut u, &q2, &dm);
                                (format!("{e1:?}"), format!("{e2:?}"))
                            };
                            let (auto, portable) = (run(), with_portable_elementwise(run));
                            assert_eq!(auto, portable, "non-finite row ({bad})");
                            assert!(auto.0.contains("NonFinite"), "{bad}: {}", auto.0);
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 5 * 3 * 3);
    }

    #[test]
    fn adamw_zeroing_pass_equals_adamw_pass_then_zeroing() {
        use moe_core::kernels::adamw::{adamw_pass, adamw_pass_zeroing, AdamWStep};
        let mut g = rng(79);
        for &n in &[1usize, 7, 63, 64, 65, 1000, 1027] {
            let w0 = rand_vec(&mut g, n, 1.0);
            let gr = rand_vec(&mut g, n, 2.0);
            let m0 = rand_vec(&mut g, n, 0.1);
            let v0: Vec<f32> = rand_vec(&mut g, n, 0.1).iter().map(|x| x * x).collect();
            for grad_scale in [1.0f32, 0.37] {
                let step = AdamWStep {
                    decay: 1.0 - 1e-2 * 0.01,
                    grad_scale,
                    w1: 0.1,
                    beta2: 0.999,
                    w2: 1e-3,
                    bc2_sqrt: (1.0f32 - 0.999 * 0.999).sqrt(),
                    eps: 1e-8,
                    step_size: 1e-2 / (1.0 - 0.81),
                };
                let plain = || {
                    let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
                    adamw_pass(&mut w, &gr, &mut m, &mut v, step);
                    [w, m, v].concat()
                };
                let zeroing = || {
                    let (mut w, mut m, mut v, mut gz) =
                        (w0.clone(), m0.clone(), v0.clone(), gr.clone());
                    adamw_pass_zeroing(&mut w, &mut gz, &mut m, &mut v, step);
                    assert!(
                        gz.iter().all(|&x| x.to_bits() == 0),
                        "n = {n}: grads not zeroed"
                    );
                    [w, m, v].concat()
                };
                let want = plain();
                assert_eq!(bits(&zeroing()), bits(&want), "n = {n}, scale {grad_scale}");
                // and the changed state really moved (the test can fail)
                assert_ne!(bits(&want[..n]), bits(&w0), "n = {n}");
                same_bits("adamw_zeroing", zeroing);
            }
        }
    }

    #[test]
    fn adamw_is_bit_identical_across_paths() {
        use moe_core::optim::{AdamW, AdamWConfig};
        let mut g = rng(78);
        for &n in &[1usize, 7, 8, 31, 1000, 1027] {
            let w0 = rand_vec(&mut g, n, 1.0);
            let grads: Vec<Vec<f32>> = (0..4).map(|_| rand_vec(&mut g, n, 2.0)).collect();
            for scale in [1.0f32, 0.37] {
                same_bits("adamw", || {
                    let mut opt = AdamW::new(AdamWConfig::default(), n).unwrap();
                    let mut w = w0.clone();
                    for gr in &grads {
                        opt.update_scaled(&mut w, gr, 1e-2, scale).unwrap();
                    }
                    [w, opt.m().to_vec(), opt.v().to_vec()].concat()
                });
            }
        }
    }
}

#[test]
fn the_zeroing_adamw_passes_flag_a_non_finite_result() {
    use moe_core::kernels::adamw::{adamw_pass_zeroing, adamw_pass_zeroing_bf16, AdamWStep};
    let step = |step_size: f32| AdamWStep {
        decay: 1.0,
        grad_scale: 1.0,
        w1: 0.1,
        beta2: 0.999,
        w2: 0.001,
        bc2_sqrt: 0.0316,
        eps: 1e-8,
        step_size,
    };
    for n in [1usize, 63, 64, 65, 300] {
        for bad_at in [None, Some(0), Some(n - 1), Some(n / 2)] {
            let mut w = vec![0.5f32; n];
            let mut g = vec![0.01f32; n];
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            if let Some(i) = bad_at {
                w[i] = f32::MAX; // pushed past f32::MAX by the update below
                g[i] = -1.0;
            }
            let flagged = adamw_pass_zeroing(&mut w, &mut g, &mut m, &mut v, step(1e38));
            let expect = w.iter().any(|x| !x.is_finite());
            assert_eq!(flagged, expect, "n {n} bad {bad_at:?}");
            assert_eq!(expect, bad_at.is_some(), "n {n} bad {bad_at:?}");
            assert!(g.iter().all(|&x| x == 0.0));
            // bf16: a finite w beyond bf16's rounding edge rounds to +inf.
            let mut w = vec![0.5f32; n];
            let mut g = vec![0.0f32; n];
            let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut copy = vec![0u16; n];
            if let Some(i) = bad_at {
                w[i] = 3.4e38;
            }
            let flagged =
                adamw_pass_zeroing_bf16(&mut w, &mut g, &mut m, &mut v, &mut copy, step(1e-3));
            assert!(w.iter().all(|x| x.is_finite()));
            assert_eq!(flagged, bad_at.is_some(), "bf16 n {n} bad {bad_at:?}");
        }
    }
}
