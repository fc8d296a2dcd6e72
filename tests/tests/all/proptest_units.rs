//! Property tests of the equation units (STYLE "Tests": proptest invariants).
//!
//! * softmax rows sum to 1 and lie in `[0, 1]` (`kernels::softmax::forward_inplace`),
//!   also with huge logits and masked (`−∞`) entries;
//! * router probabilities and the renormalised top-k weights sum to 1
//!   (`router::forward`);
//! * top-k indices are distinct, in range, the k largest, in descending order,
//!   ties to the lower index (`router::select_topk`, also on tie-heavy inputs);
//! * every backward is linear in the upstream gradient: `B(2g) = 2·B(g)` and
//!   `B(g₁ + g₂) = B(g₁) + B(g₂)` for `linear::backward_input/weight`,
//!   `rmsnorm::backward`, `softmax::backward`, `attention::backward`,
//!   `SwiGLU::backward`, `router::backward` (aux term zero) and `rope::backward`.

use moe_core::kernels::softmax;
use moe_core::linear::Accum;
use moe_core::rope::{self, RopeTable};
use moe_core::swiglu::SwiGLU;
use moe_core::Dims;
use moe_core::{attention, linear, rmsnorm, router, Config};
use moe_tests::router_dims;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

/// Cases per property; each case is a few small kernel calls.
const CASES: u32 = 2048;

/// proptest's config with `cases` cases. Failing inputs persist to
/// `tests/proptest-regressions/proptest_units.txt` (the path is relative to the
/// package root, where `cargo test` runs): the default `SourceParallel`
/// persistence looks for a `lib.rs`/`main.rs` next to the test file, finds
/// none for an integration test and would persist nothing.
fn pt_config(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptest_units.txt",
        ))),
        ..PtConfig::default()
    }
}
fn vec_f32(len: usize, scale: f32) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-scale..scale, len)
}

/// Elementwise `|a − b| ≤ TOL · (1 + max |·|)` over the buffers (a scale-aware
/// comparison: linearity holds up to f32 rounding of the magnitudes involved).
fn assert_close(what: &str, a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    const TOL: f32 = 1e-4;
    prop_assert_eq!(a.len(), b.len());
    let scale = a
        .iter()
        .chain(b)
        .fold(0.0f32, |m, &x| m.max(x.abs()))
        .max(1.0);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= TOL * scale,
            "{}: index {}: {} vs {} (scale {})",
            what,
            i,
            x,
            y,
            scale
        );
    }
    Ok(())
}

fn scaled(x: &[f32], s: f32) -> Vec<f32> {
    x.iter().map(|v| v * s).collect()
}

fn sum(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Checks `B(2g₁) = 2B(g₁)` and `B(g₁+g₂) = B(g₁)+B(g₂)` for a backward `B`
/// that maps an upstream gradient to a list of output gradients.
fn check_linear(
    what: &str,
    g1: &[f32],
    g2: &[f32],
    mut b: impl FnMut(&[f32]) -> Vec<Vec<f32>>,
) -> Result<(), TestCaseError> {
    let (o1, o2) = (b(g1), b(g2));
    let o_double = b(&scaled(g1, 2.0));
    let o_sum = b(&sum(g1, g2));
    for (j, ((a, bb), (d, s))) in o1
        .iter()
        .zip(&o2)
        .zip(o_double.iter().zip(&o_sum))
        .enumerate()
    {
        assert_close(&format!("{what} out{j}: B(2g)"), d, &scaled(a, 2.0))?;
        assert_close(&format!("{what} out{j}: B(g1+g2)"), s, &sum(a, bb))?;
    }
    Ok(())
}

/// Attention/RoPE dims from `(b, t, h = kv·group, kv, d)`.
fn dims(b: usize, t: usize, kv: usize, group: usize, d: usize) -> (Config, Dims) {
    let cfg = Config {
        num_attention_heads: kv * group,
        num_key_value_heads: kv,
        head_dim: d,
        ..Config::tiny()
    };
    (cfg, Dims::new(&cfg, b, t))
}

proptest! {
    #![proptest_config(pt_config(CASES))]

    #[test]
    fn softmax_rows_sum_to_one(
        x in prop::collection::vec(prop_oneof![
            4 => -30.0f32..30.0,
            1 => -3e38f32..3e38,
            1 => Just(f32::NEG_INFINITY),
        ], 1..64),
    ) {
        let mut p = x.clone();
        softmax::forward_inplace(&mut p);
        let masked = x.iter().all(|v| *v == f32::NEG_INFINITY);
        prop_assert!(p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{:?} -> {:?}", x, p);
        let s: f64 = p.iter().map(|&v| v as f64).sum();
        if masked {
            prop_assert!(s == 0.0, "a fully masked row gives zeros, got sum {}", s);
        } else {
            prop_assert!((s - 1.0).abs() <= 1e-5, "sum {} for {:?}", s, x);
        }
        // Masked entries get exactly zero probability; the max gets the most.
        for (xi, pi) in x.iter().zip(&p) {
            if *xi == f32::NEG_INFINITY {
                prop_assert!(*pi == 0.0);
            }
        }
    }

    #[test]
    fn router_probabilities_and_topk_weights_sum_to_one(
        (n, c, e, k, x, wg) in (1usize..6, 1usize..10, 1usize..9).prop_flat_map(|(n, c, e)| {
            (Just(n), Just(c), Just(e), 1usize..=e, vec_f32(n * c, 3.0), vec_f32(e * c, 3.0))
        }),
    ) {
        let mut rprobs = vec![f32::NAN; n * e];
        let mut idx = vec![u32::MAX; n * k];
        let mut w = vec![f32::NAN; n * k];
        router::forward(&mut rprobs, &mut idx, &mut w, &x, &wg, &router_dims(n, c, e, k));
        for r in 0..n {
            let p = &rprobs[r * e..(r + 1) * e];
            let s: f32 = p.iter().sum();
            prop_assert!((s - 1.0).abs() <= 1e-5, "row {} probs sum {}", r, s);
            let wr = &w[r * k..(r + 1) * k];
            let s: f32 = wr.iter().sum();
            prop_assert!((s - 1.0).abs() <= 1e-5, "row {} top-k weights sum {}", r, s);
            prop_assert!(wr.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)));
            check_topk(&idx[r * k..(r + 1) * k], p)?;
            // The weights are the selected probabilities renormalised.
            let ssel: f32 = idx[r * k..(r + 1) * k].iter().map(|&j| p[j as usize]).sum();
            for (&j, &wj) in idx[r * k..(r + 1) * k].iter().zip(wr) {
                prop_assert!((wj - p[j as usize] / ssel).abs() <= 1e-6);
            }
        }
    }

    #[test]
    fn topk_indices_are_distinct_and_the_k_largest(
        (k, p) in (1usize..12).prop_flat_map(|e| {
            // Few distinct values, so that ties are common.
            (1usize..=e, prop::collection::vec(prop_oneof![
                Just(0.0f32), Just(0.25), Just(0.5), Just(1.0), 0.0f32..1.0
            ], e))
        }),
    ) {
        let mut idx = vec![u32::MAX; k];
        let mut val = vec![f32::NAN; k];
        router::select_topk(&mut idx, &mut val, &p);
        check_topk(&idx, &p)?;
        for (&j, &v) in idx.iter().zip(&val) {
            prop_assert_eq!(v.to_bits(), p[j as usize].to_bits());
        }
    }

    #[test]
    fn topk_indices_stay_distinct_with_nan(
        (k, p) in (1usize..8).prop_flat_map(|e| {
            (1usize..=e, prop::collection::vec(prop_oneof![Just(f32::NAN), 0.0f32..1.0], e))
        }),
    ) {
        let mut idx = vec![u32::MAX; k];
        let mut val = vec![0.0; k];
        router::select_topk(&mut idx, &mut val, &p);
        let mut seen = idx.clone();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len(), k, "{:?}", idx);
        prop_assert!(idx.iter().all(|&j| (j as usize) < p.len()));
    }

    #[test]
    fn linear_backward_is_linear_in_dy(
        (n, din, dout, x, w, g1, g2) in (1usize..6, 1usize..9, 1usize..9).prop_flat_map(|(n, din, dout)| {
            (Just(n), Just(din), Just(dout), vec_f32(n * din, 2.0), vec_f32(dout * din, 2.0),
             vec_f32(n * dout, 2.0), vec_f32(n * dout, 2.0))
        }),
    ) {
        check_linear("linear", &g1, &g2, |dy| {
            let mut dx = vec![f32::NAN; n * din];
            linear::backward_input(&mut dx, dy, &w, n, din, dout, Accum::Set);
            let mut dw = vec![0.0; dout * din];
            linear::backward_weight(&mut dw, dy, &x, n, din, dout);
            vec![dx, dw]
        })?;
    }

    #[test]
    fn rmsnorm_backward_is_linear_in_dy(
        (n, c, x, w, g1, g2, eps) in (1usize..6, 1usize..17).prop_flat_map(|(n, c)| {
            (Just(n), Just(c), vec_f32(n * c, 3.0), vec_f32(c, 2.0),
             vec_f32(n * c, 2.0), vec_f32(n * c, 2.0), 1e-6f32..1e-2)
        }),
    ) {
        let mut y = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        rmsnorm::forward(&mut y, &mut rstd, &x, &w, eps);
        prop_assert!(y.iter().chain(&rstd).all(|v| v.is_finite()));
        check_linear("rmsnorm", &g1, &g2, |dy| {
            let mut dx = vec![0.0; n * c];
            let mut dw = vec![0.0; c];
            rmsnorm::backward(&mut dx, &mut dw, dy, &x, &rstd, &w);
            vec![dx, dw]
        })?;
    }

    #[test]
    fn softmax_backward_is_linear_in_dp(
        (x, g1, g2) in (1usize..20).prop_flat_map(|e| (vec_f32(e, 5.0), vec_f32(e, 2.0), vec_f32(e, 2.0))),
    ) {
        let mut p = x.clone();
        softmax::forward_inplace(&mut p);
        check_linear("softmax", &g1, &g2, |g| {
            let mut dx = vec![f32::NAN; g.len()];
            softmax::backward(&mut dx, &p, g);
            let mut inplace = g.to_vec();
            softmax::backward_inplace(&mut inplace, &p);
            vec![dx, inplace]
        })?;
    }

    #[test]
    fn attention_backward_is_linear_in_datt(
        (b, t, kv, group, half_d, seed_qkv, g1, g2) in
            (1usize..3, 1usize..6, 1usize..3, 1usize..3, 1usize..4).prop_flat_map(|(b, t, kv, group, half_d)| {
                let n = b * t;
                let q = (kv * group + 2 * kv) * 2 * half_d;
                let hd = kv * group * 2 * half_d;
                (Just(b), Just(t), Just(kv), Just(group), Just(half_d),
                 vec_f32(n * q, 2.0), vec_f32(n * hd, 2.0), vec_f32(n * hd, 2.0))
            }),
    ) {
        let (_, dm) = dims(b, t, kv, group, 2 * half_d);
        let qkv = seed_qkv;
        let mut att = vec![0.0; dm.n * dm.h * dm.d];
        let mut probs = vec![0.0; b * dm.h * t * t];
        attention::forward(&mut att, &mut probs, &qkv, &dm, true).unwrap();
        prop_assert!(att.iter().all(|v| v.is_finite()));
        // Every causal row of probabilities sums to 1, the masked part is 0.
        for row in 0..b * dm.h * t {
            let i = row % t;
            let pr = &probs[row * t..(row + 1) * t];
            let s: f32 = pr[..=i].iter().sum();
            prop_assert!((s - 1.0).abs() <= 1e-5);
            prop_assert!(pr[i + 1..].iter().all(|&v| v == 0.0));
        }
        check_linear("attention", &g1, &g2, |datt| {
            let mut dqkv = vec![f32::NAN; dm.n * dm.q];
            let mut dp = vec![0.0; t * t];
            attention::backward(&mut dqkv, &mut dp, datt, &probs, &qkv, &dm);
            vec![dqkv]
        })?;
    }

    #[test]
    fn rope_backward_is_linear_and_inverts_forward(
        (t, kv, group, half_d, x, g1, g2) in
            (1usize..8, 1usize..3, 1usize..3, 1usize..5).prop_flat_map(|(t, kv, group, half_d)| {
                let q = (kv * group + 2 * kv) * 2 * half_d;
                (Just(t), Just(kv), Just(group), Just(half_d),
                 vec_f32(t * q, 2.0), vec_f32(t * q, 2.0), vec_f32(t * q, 2.0))
            }),
    ) {
        let (cfg, dm) = dims(1, t, kv, group, 2 * half_d);
        let table = RopeTable::new(&cfg, t).unwrap();
        check_linear("rope", &g1, &g2, |g| {
            let mut dq = g.to_vec();
            rope::backward(&mut dq, &table, &dm).unwrap();
            vec![dq]
        })?;
        // Backward is the inverse rotation: backward(forward(x)) = x.
        let mut y = x.clone();
        rope::forward(&mut y, &table, 0, &dm).unwrap();
        rope::backward(&mut y, &table, &dm).unwrap();
        assert_close("rope round trip", &y, &x)?;
    }

    #[test]
    fn swiglu_backward_is_linear_in_dy(
        (m, c, f, xg, w13, w2, g1, g2) in (1usize..6, 1usize..9, 1usize..9).prop_flat_map(|(m, c, f)| {
            (Just(m), Just(c), Just(f), vec_f32(m * c, 2.0), vec_f32(2 * f * c, 1.0),
             vec_f32(c * f, 1.0), vec_f32(m * c, 2.0), vec_f32(m * c, 2.0))
        }),
    ) {
        let ex = SwiGLU { w13: moe_core::Weight::F32(&w13), w2: moe_core::Weight::F32(&w2), c, f };
        let mut y = vec![0.0; m * c];
        let mut h13 = vec![0.0; m * 2 * f];
        let mut act = vec![0.0; m * f];
        ex.forward(&mut y, &mut h13, &mut act, &xg, m);
        check_linear("swiglu", &g1, &g2, |dy| {
            let mut dxg = vec![f32::NAN; m * c];
            let mut dw13 = vec![0.0; 2 * f * c];
            let mut dw2 = vec![0.0; c * f];
            let mut dh13 = vec![f32::NAN; m * 2 * f];
            let mut dact = vec![f32::NAN; m * f];
            ex.backward(&mut dxg, &mut dw13, &mut dw2, &mut dh13, &mut dact, dy, &xg, &h13, &act, m);
            vec![dxg, dw13, dw2]
        })?;
    }

    #[test]
    fn router_backward_is_linear_in_dw(
        (n, c, e, k, x, wg, g1, g2) in (1usize..5, 1usize..8, 1usize..6).prop_flat_map(|(n, c, e)| {
            (Just(n), Just(c), Just(e), 1usize..=e)
        }).prop_flat_map(|(n, c, e, k)| {
            (Just(n), Just(c), Just(e), Just(k), vec_f32(n * c, 2.0), vec_f32(e * c, 2.0),
             vec_f32(n * k, 2.0), vec_f32(n * k, 2.0))
        }),
    ) {
        let mut rprobs = vec![0.0; n * e];
        let mut idx = vec![0u32; n * k];
        let mut w = vec![0.0; n * k];
        router::forward(&mut rprobs, &mut idx, &mut w, &x, &wg, &router_dims(n, c, e, k));
        let aux = vec![0.0f32; e]; // α = 0: the map is linear, not affine
        check_linear("router", &g1, &g2, |dtopk_w| {
            let mut dx = vec![0.0; n * c];
            let mut dwg = vec![0.0; e * c];
            let mut dp = vec![f32::NAN; n * e];
            router::backward(&mut dx, &mut dwg, &mut dp, dtopk_w, &rprobs, &idx, &w, &aux, &x, moe_core::Weight::F32(&wg), &router_dims(n, c, e, k));
            vec![dx, dwg]
        })?;
    }
}

/// `idx` holds distinct in-range indices of the `idx.len()` largest entries of
/// `p`, in descending order, ties broken toward the lower index.
fn check_topk(idx: &[u32], p: &[f32]) -> Result<(), TestCaseError> {
    let mut seen = idx.to_vec();
    seen.sort_unstable();
    seen.dedup();
    prop_assert_eq!(seen.len(), idx.len(), "duplicate indices {:?}", idx);
    prop_assert!(idx.iter().all(|&j| (j as usize) < p.len()));
    for w in idx.windows(2) {
        let (a, b) = (p[w[0] as usize], p[w[1] as usize]);
        prop_assert!(
            a > b || (a == b && w[0] < w[1]),
            "not descending: {:?} of {:?}",
            idx,
            p
        );
    }
    for (j, &pj) in p.iter().enumerate() {
        if idx.contains(&(j as u32)) {
            continue;
        }
        for &s in idx {
            let ps = p[s as usize];
            // Unselected j must be below every selected one, or tied at a higher index.
            prop_assert!(
                ps > pj || (ps == pj && (s as usize) < j),
                "{:?} of {:?}: {} left out",
                idx,
                p,
                j
            );
        }
    }
    Ok(())
}
