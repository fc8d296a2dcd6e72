//! Regression tests of issue 12's moe-core defects (1, 7, 8, 9). Each test's
//! doc says why it fails on the pre-fix code.

use moe_core::kernels::softmax;
use moe_core::linear::{self, Accum};
use moe_core::optim::MAX_STEP;
use moe_core::rope::RopeTable;
use moe_core::{embedding, loss, router, AdamW, AdamWConfig, Config, Error, MoETransformer, Mode};

fn tiny() -> MoETransformer {
    MoETransformer::new(&Config::tiny(), 42).unwrap()
}

fn toks(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((37 * i + 11) % 1000) as u32).collect()
}

// ---------------------------------------------------------------- defect 1

/// Pre-fix, an all-NaN row had a running max of −∞ (NaN compares false), so
/// the kernel took its "fully masked" branch and wrote zeros: this test saw
/// `[0, 0, 0]` and failed. A masked (all −∞) row still gives zeros.
#[test]
fn softmax_never_treats_nan_as_masked() {
    let mut all_nan = [f32::NAN; 3];
    assert!(!softmax::forward_inplace(&mut all_nan));
    assert!(all_nan.iter().all(|x| x.is_nan()), "{all_nan:?}");
    let mut one_nan = [0.5, f32::NAN, -1.0];
    assert!(!softmax::forward_inplace(&mut one_nan));
    assert!(one_nan.iter().all(|x| x.is_nan()), "{one_nan:?}");
    let mut masked = [f32::NEG_INFINITY; 4];
    assert!(!softmax::forward_inplace(&mut masked));
    assert!(masked.iter().all(|&x| x == 0.0));
    let mut inf = [1.0, f32::INFINITY];
    assert!(!softmax::forward_inplace(&mut inf));
    assert!(inf.iter().all(|x| x.is_nan()));
    let mut ok = [1.0, 2.0, f32::NEG_INFINITY];
    assert!(softmax::forward_inplace(&mut ok));
    assert!((ok.iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

/// One NaN in `q_proj` (or `k_proj`) makes every score row of a head NaN.
/// Pre-fix those rows were "fully masked" (zeros): `forward` returned finite
/// logits and `loss_and_grad` returned `Ok` with NaN gradients — both `Ok`
/// here, so the test failed. Now both are `NonFinite("attention scores")`.
#[test]
fn nan_in_query_or_key_weights_is_nonfinite_not_masked() {
    let clean = tiny();
    let (c, h, d) = (64, 4, 16);
    for (name, at) in [
        ("q_proj", clean.layout().layers[0].wqkv.start),
        ("k_proj", clean.layout().layers[0].wqkv.start + h * d * c),
    ] {
        let mut m = clean.clone();
        m.params_mut().unwrap()[at] = f32::NAN;
        let t = toks(9);
        let mut ws = m.workspace(2, 4, Mode::Inference).unwrap();
        let e = m.forward(&mut ws, &t[..8], 2, 4).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    what: "attention scores",
                    ..
                }
            ),
            "{name}: {e:?}"
        );
        let mut tws = m.workspace(2, 4, Mode::Training).unwrap();
        let mut g = vec![0.0; m.layout().total];
        let e = m
            .loss_and_grad(&mut tws, &mut g, &t[..8], &t[1..], 2, 4, 0.01, None)
            .unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{name}: {e:?}");
    }
}

/// Pre-fix `validate` accepted `rope_base = 1e-45`: `θ^(−(d−2)/d)` overflows
/// f32, the RoPE table held Inf/NaN and poisoned q and k (this test's first
/// assertion failed). Now every base is either rejected or gives a finite
/// table at every position (checked by rotating a unit vector at the last
/// position and by a forward pass).
#[test]
fn validate_rejects_every_rope_base_whose_table_is_not_finite() {
    let bad = Config {
        rope_base: 1e-45,
        ..Config::tiny()
    };
    assert!(
        matches!(
            bad.validate(),
            Err(Error::InvalidConfig {
                field: "rope_base",
                ..
            })
        ),
        "{:?}",
        bad.validate()
    );
    assert!(MoETransformer::new(&bad, 1).is_err());
    let mut accepted = 0;
    for base in [
        1e-45f32,
        1e-44,
        1e-42,
        1e-41,
        1e-40,
        1e-38,
        1e-30,
        1e-10,
        1e-3,
        0.5,
        1.0,
        1e4,
        1e30,
        f32::MAX,
    ] {
        for max_pos in [1usize, 2, 512] {
            let cfg = Config {
                rope_base: base,
                max_position_embeddings: max_pos,
                ..Config::tiny()
            };
            if cfg.validate().is_err() {
                assert!(RopeTable::new(&cfg, max_pos).is_err(), "base {base:e}");
                continue;
            }
            accepted += 1;
            let table = RopeTable::new(&cfg, max_pos).unwrap();
            for pos in [0, max_pos - 1] {
                let mut x = [1.0f32; 16];
                table.rotate(&mut x, pos).unwrap();
                assert!(x.iter().all(|v| v.is_finite()), "base {base:e} pos {pos}");
            }
            let m = MoETransformer::new(&cfg, 1).unwrap();
            let t = max_pos.min(4);
            let mut ws = m.workspace(1, t, Mode::Inference).unwrap();
            m.forward(&mut ws, &toks(t), 1, t).unwrap();
        }
    }
    assert!(accepted > 20, "too few bases accepted: {accepted}");
}

/// `loss_and_grad` scans its gradients once per call. With a huge aux weight
/// `alpha` the loss `ce + alpha·aux` is still finite (checked before backward)
/// but the router's gradient `alpha·e·f/rows · …` overflows in backward.
/// Pre-fix `loss_and_grad` returned `Ok` with Inf/NaN gradients there (the
/// loop below found no `NonFinite("gradients")` and failed); now every `Ok`
/// has finite gradients and the overflow is `NonFinite("gradients")`.
#[test]
fn loss_and_grad_never_returns_non_finite_gradients() {
    let m = tiny();
    let t = toks(9);
    let mut tws = m.workspace(2, 4, Mode::Training).unwrap();
    let mut g = vec![0.0; m.layout().total];
    let mut caught = Vec::new();
    for alpha in [1e30f32, 1e36, 1e37, 3e37, 5e37, 1e38, 1.5e38] {
        g.iter_mut().for_each(|x| *x = 0.0);
        match m.loss_and_grad(&mut tws, &mut g, &t[..8], &t[1..], 2, 4, alpha, None) {
            Ok(l) => {
                assert!(l.loss.is_finite());
                assert!(
                    g.iter().all(|x| x.is_finite()),
                    "alpha {alpha:e}: Ok with non-finite gradients"
                );
            }
            Err(Error::NonFinite {
                what: "gradients", ..
            }) => caught.push(alpha),
            Err(Error::NonFinite { what: "loss", .. }) => {}
            Err(e) => panic!("alpha {alpha:e}: {e:?}"),
        }
    }
    assert!(!caught.is_empty(), "no alpha overflowed only in backward");
}

/// The trainer's backward does not scan each micro-batch's gradients; its
/// phase D tests the `Σ g²` of the reduced sum instead. The same overflow as
/// above, through `Trainer::compute_gradients` and `train_step` with 1, 2
/// and 4 micro-batches: every `Ok` has finite gradients (and finite
/// parameters), and at least one alpha is caught as `NonFinite("gradients")`
/// — with neither check, the overflowed gradients reach `Ok` (or AdamW).
#[test]
fn trainer_never_returns_non_finite_gradients() {
    use moe_core::parallel::Pool;
    use moe_core::{TrainConfig, Trainer};
    let t = toks(17);
    for micro in [1usize, 2, 4] {
        let mut caught = Vec::new();
        for alpha in [1e30f32, 1e36, 1e37, 3e37, 5e37, 1e38, 1.5e38] {
            let cfg = TrainConfig {
                aux_alpha: alpha,
                clip_grad_norm: None,
                ..TrainConfig::default()
            };
            for step in [false, true] {
                let mut tr = Trainer::with_pool(tiny(), cfg, 4, 4, Pool::single(), micro).unwrap();
                let r = if step {
                    tr.train_step(&t[..16], &t[1..], 4, 4).map(|_| ())
                } else {
                    tr.compute_gradients(&t[..16], &t[1..], 4, 4, None)
                        .map(|_| ())
                };
                match r {
                    Ok(()) => {
                        assert!(
                            tr.model().params().unwrap().iter().all(|x| x.is_finite()),
                            "M{micro} alpha {alpha:e}: Ok with non-finite parameters"
                        );
                        if !step {
                            assert!(
                                tr.grads().iter().all(|x| x.is_finite()),
                                "M{micro} alpha {alpha:e}: Ok with non-finite gradients"
                            );
                        }
                    }
                    Err(Error::NonFinite {
                        what: "gradients",
                        index,
                    }) => {
                        if !step {
                            assert!(!tr.grads()[index].is_finite(), "M{micro}: index {index}");
                        }
                        caught.push(alpha);
                    }
                    // The loss, or (a step) AdamW's own guards on finite
                    // but huge gradients.
                    Err(Error::NonFinite { what, .. })
                        if what == "loss" || (step && what.starts_with("AdamW")) => {}
                    Err(e) => panic!("M{micro} alpha {alpha:e} step {step}: {e:?}"),
                }
            }
        }
        assert!(
            !caught.is_empty(),
            "M{micro}: no alpha overflowed only in backward"
        );
    }
}

// ---------------------------------------------------------------- defect 7

fn one_update(step: u64) -> Vec<f32> {
    let mut opt = AdamW::new(AdamWConfig::default(), 4).unwrap();
    opt.set_step(step).unwrap();
    let mut w = vec![0.5f32, -0.25, 1.0, 0.0];
    opt.update(&mut w, &[0.1, -0.2, 0.3, 0.0], 1e-3).unwrap();
    assert_eq!(opt.step(), step + 1);
    w
}

/// Pre-fix the bias correction used `self.step as i32`: at step 2³¹ the
/// exponent was negative and every weight became NaN, at 2³² it wrapped to
/// step 1 (a 10× larger update than at step 10⁶). Here steps past 2³¹ and 2³²
/// give exactly the update of step 10⁶ (all bias corrections are 1 in f64),
/// which the pre-fix code (with `opt.step = s`, its public field) did not.
#[test]
fn adamw_bias_correction_uses_the_whole_u64_step() {
    let far = one_update(1_000_000);
    assert!(far.iter().all(|x| x.is_finite()));
    for step in [
        (1u64 << 31) - 1,
        1 << 31,
        (1 << 32) - 1,
        1 << 32,
        MAX_STEP - 1,
    ] {
        let w = one_update(step);
        assert_eq!(
            w.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            far.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "step {step}"
        );
    }
    // Small steps are unchanged: step 0 → t = 1 has bias corrections 0.1 and 0.001.
    assert_ne!(one_update(0), far);
}

/// Pre-fix `step: u64::MAX` was accepted (a public field) and `update` wrapped
/// it to 0, returning with NaN parameters. Now `set_step` refuses steps above
/// 2⁵³, and `update` at 2⁵³ is `Overflow` with the state untouched.
#[test]
fn adamw_refuses_absurd_steps() {
    let mut opt = AdamW::new(AdamWConfig::default(), 2).unwrap();
    for s in [MAX_STEP + 1, u64::MAX] {
        let e = opt.set_step(s).unwrap_err();
        assert!(
            matches!(e, Error::InvalidParameter { param: "step", .. }),
            "{e:?}"
        );
        assert_eq!(opt.step(), 0);
    }
    opt.set_step(MAX_STEP).unwrap();
    let mut w = [1.0f32, 2.0];
    let e = opt.update(&mut w, &[0.1, 0.1], 1e-3).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e:?}");
    assert_eq!(w, [1.0, 2.0]);
    assert_eq!(opt.step(), MAX_STEP);
    assert!(opt.m().iter().all(|&x| x == 0.0));
}

// ---------------------------------------------------------------- defect 8

/// Pre-fix `AdamW`'s fields were public (`beta1 = NaN`, `eps = 0`, a truncated
/// `m` all gave `Ok` with NaN or partially updated parameters) and `update`
/// zipped mismatched lengths, silently updating a prefix. Each of those is
/// now a typed error with the state untouched (pre-fix this file did not
/// compile against `set_config`/`set_moments`, and `update` returned `()`).
#[test]
fn adamw_state_cannot_be_made_invalid() {
    let mut opt = AdamW::new(AdamWConfig::default(), 3).unwrap();
    for bad in [
        AdamWConfig {
            beta1: f32::NAN,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            beta2: 1.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            eps: 0.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            weight_decay: f32::NAN,
            ..AdamWConfig::default()
        },
    ] {
        assert!(matches!(
            opt.set_config(bad),
            Err(Error::InvalidParameter { .. })
        ));
        assert_eq!(*opt.config(), AdamWConfig::default());
    }
    // Moments: length, finiteness, sign.
    let e = opt.set_moments(&[0.0; 2], &[0.0; 3]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: "m", .. }), "{e:?}");
    let e = opt
        .set_moments(&[0.0, f32::NAN, 0.0], &[0.0; 3])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                what: "m",
                index: 1
            }
        ),
        "{e:?}"
    );
    let e = opt.set_moments(&[0.0; 3], &[0.0, 0.0, -1.0]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidParameter { param: "v", .. }),
        "{e:?}"
    );
    opt.set_moments(&[0.1; 3], &[0.2; 3]).unwrap();
    assert_eq!(opt.m(), &[0.1; 3]);
    // update: lengths, lr, gradients.
    let mut w = [1.0f32; 3];
    for (params, grads) in [(3usize, 2usize), (2, 3), (4, 3)] {
        let mut p = vec![1.0f32; params];
        let e = opt.update(&mut p, &vec![0.1; grads], 1e-3).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert!(p.iter().all(|&x| x == 1.0));
    }
    for lr in [f32::NAN, -1.0, f32::INFINITY] {
        let e = opt.update(&mut w, &[0.1; 3], lr).unwrap_err();
        assert!(
            matches!(e, Error::InvalidParameter { param: "lr", .. }),
            "{e:?}"
        );
    }
    let e = opt.update(&mut w, &[0.1, f32::NAN, 0.1], 1e-3).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                what: "gradients",
                index: 1
            }
        ),
        "{e:?}"
    );
    let e = opt.update(&mut w, &[0.1, 1e20, 0.1], 1e-3).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert_eq!(w, [1.0; 3]);
    assert_eq!(opt.step(), 0);
    assert_eq!(opt.m(), &[0.1; 3]);
    opt.update(&mut w, &[0.1; 3], 1e-3).unwrap();
    assert_eq!(opt.step(), 1);
    // An lr so large that the weights overflow is refused after the step.
    let mut big = [f32::MAX / 2.0; 3];
    let e = opt.update(&mut big, &[1.0; 3], 1e30).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
}

// ---------------------------------------------------------------- defect 9

/// Pre-fix `embedding::forward` indexed `table[tok·c ..]` and panicked on a
/// token `>= v` (this test aborted); now `TokenOutOfRange`, nothing written.
#[test]
fn embedding_forward_rejects_bad_tokens_and_shapes() {
    let table = vec![1.0f32; 3 * 2]; // v = 3, c = 2
    let mut x = vec![0.0f32; 4];
    let e = embedding::forward(&mut x, &[1, 3], &table, 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                index: 1,
                token: 3,
                vocab: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(x.iter().all(|&v| v == 0.0));
    let e = embedding::forward(&mut x[..3], &[1, 2], &table, 2).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    let e = embedding::forward(&mut x, &[1, 2], &table, 0).unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "{e:?}");
    let mut dt = vec![0.0f32; 6];
    let e = embedding::backward(&mut dt, &x, &[0, 7], 2).unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { .. }), "{e:?}");
    embedding::forward(&mut x, &[2, 0], &table, 2).unwrap();
}

/// Pre-fix `RopeTable::rotate` sliced `cos[pos·h ..]` and split `x` at `d/2`:
/// a position `>= max_seq` or a short slice panicked (this test aborted).
#[test]
fn rope_rotate_rejects_bad_position_and_slice() {
    let table = RopeTable::new(&Config::tiny(), 8).unwrap();
    let mut x = [1.0f32; 16];
    let e = table.rotate(&mut x, 8).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkspaceTooSmall {
                requested: 8,
                planned: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(x, [1.0; 16]);
    let e = table.rotate(&mut x[..5], 0).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    let e = table.rotate_back(&mut x, usize::MAX).unwrap_err();
    assert!(matches!(e, Error::WorkspaceTooSmall { .. }), "{e:?}");
    table.rotate(&mut x, 7).unwrap();
}

/// Pre-fix `loss::cross_entropy` indexed `z[target]` and panicked for a
/// target `>= v`, and returned NaN for `n = 0` (this test aborted).
#[test]
fn cross_entropy_rejects_bad_targets_and_shapes() {
    let v = 4;
    let logits = vec![0.0f32; 2 * v];
    let (mut dl, mut row) = (vec![0.0f32; 2 * v], vec![0.0f32; 2]);
    let e = loss::cross_entropy(&mut dl, &mut row, &logits, &[0, 4], v).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                arg: "targets",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = loss::cross_entropy(&mut dl, &mut row, &logits, &[], v).unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "{e:?}");
    let e = loss::cross_entropy(&mut dl, &mut row[..1], &logits, &[0, 1], v).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: "ce_row", .. }),
        "{e:?}"
    );
    let ce = loss::cross_entropy(&mut dl, &mut row, &logits, &[0, 3], v).unwrap();
    assert!((ce - (v as f32).ln()).abs() < 1e-6);
}

/// `router::select_topk` keeps a documented panic (`# Panics`: `k > e`) — it
/// is a per-row kernel whose `k ≤ e` comes from a validated config. Pre-fix it
/// panicked too, but with an index-out-of-bounds from `p[usize::MAX]`; this
/// test pins the documented message.
#[test]
#[should_panic(expected = "select_topk: k = 3 > e = 2")]
fn select_topk_panics_when_k_exceeds_e() {
    let (mut idx, mut val) = ([0u32; 3], [0.0f32; 3]);
    router::select_topk(&mut idx, &mut val, &[0.5, 0.5]);
}

/// `linear::forward` keeps a documented panic (`# Panics`: a slice shorter
/// than its shape), raised by the GEMM's operand check before any write.
#[test]
#[should_panic(expected = "gemm:")]
fn linear_forward_panics_on_a_short_slice() {
    let (x, w) = (vec![1.0f32; 2 * 3], vec![1.0f32; 4 * 3 - 1]);
    let mut y = vec![0.0f32; 2 * 4];
    linear::forward(&mut y, &x, &w, 2, 3, 4, Accum::Set);
}
