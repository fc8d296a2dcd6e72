//! Training converges: the tiny model learns a fixed token stream.

use moe_core::{Config, LrSchedule, MoETransformer, TrainConfig, Trainer};

#[test]
fn tiny_model_learns_a_fixed_stream_deterministically() {
    // A periodic stream over 40 ids: next-token prediction is learnable.
    let stream: Vec<u32> = (0..200).map(|i| ((i * 7) % 40 + 100) as u32).collect();
    let (b, t) = (2, 16);
    let run = || {
        let cfg = TrainConfig {
            schedule: LrSchedule {
                lr: 3e-3,
                min_lr: 3e-4,
                warmup: 20,
                total: 300,
            },
            ..TrainConfig::default()
        };
        let mut tr =
            Trainer::new(MoETransformer::new(&Config::tiny(), 42).unwrap(), cfg, b, t).unwrap();
        let mut losses = Vec::new();
        for step in 0..300 {
            let mut x = Vec::with_capacity(b * t);
            let mut y = Vec::with_capacity(b * t);
            for r in 0..b {
                let s = (step * 5 + r * 37) % (stream.len() - t - 1);
                x.extend_from_slice(&stream[s..s + t]);
                y.extend_from_slice(&stream[s + 1..s + t + 1]);
            }
            losses.push(tr.train_step(&x, &y, b, t).unwrap().ce_loss);
        }
        losses
    };
    let losses = run();
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    println!("mean CE first 10 steps {first:.4}, last 10 steps {last:.4}");
    assert!(
        first > 6.0,
        "initial CE should be near ln(1000) = 6.9, got {first}"
    );
    assert!(last < 0.5, "CE should fall far below its start, got {last}");
    let again = run();
    assert_eq!(
        losses.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn the_gradient_hook_sees_named_gradients_and_can_change_them() {
    let mut tr = Trainer::new(
        MoETransformer::new(&Config::tiny(), 1).unwrap(),
        TrainConfig::default(),
        1,
        8,
    )
    .unwrap();
    let x: Vec<u32> = (0..8).map(|i| i * 3 + 1).collect();
    let y: Vec<u32> = (0..8).map(|i| i * 5 + 2).collect();
    let before = tr.model().params().unwrap().to_vec();
    let mut seen = 0.0f32;
    // Freeze lm_head by zeroing its gradient; AdamW then moves it by weight decay only.
    let st = tr
        .train_step_with_hook(&x, &y, 1, 8, |g, layout| {
            let t = layout.get("lm_head.weight").unwrap();
            seen = g[t.range()].iter().map(|v| v.abs()).sum();
            g[t.range()].iter_mut().for_each(|v| *v = 0.0);
        })
        .unwrap();
    assert!(seen > 0.0, "the hook must see the real lm_head gradient");
    let t = tr.model().layout().get("lm_head.weight").unwrap().clone();
    let decay = 1.0 - st.lr * TrainConfig::default().adamw.weight_decay;
    for i in t.range() {
        assert_eq!(
            tr.model().params().unwrap()[i],
            before[i] * decay,
            "lm_head[{i}] moved beyond weight decay"
        );
    }
    let e = tr
        .model()
        .layout()
        .get("model.embed_tokens.weight")
        .unwrap()
        .range();
    assert!(
        e.clone()
            .any(|i| tr.model().params().unwrap()[i] != before[i] * decay),
        "other tensors must still train"
    );
}

#[test]
fn clipping_bounds_the_update_gradient_and_reports_the_pre_clip_norm() {
    let make = |clip| {
        let cfg = TrainConfig {
            clip_grad_norm: clip,
            ..TrainConfig::default()
        };
        Trainer::new(MoETransformer::new(&Config::tiny(), 2).unwrap(), cfg, 1, 8).unwrap()
    };
    let x: Vec<u32> = (0..8).map(|i| i * 7).collect();
    let (mut clipped, mut free) = (make(Some(0.5)), make(None));
    // The hook variant applies the clip to the buffer in place; the hook
    // sees it (after the step the AdamW pass has zeroed the buffer).
    let mut norm = f32::NAN;
    let a = clipped
        .train_step_with_hook(&x, &x, 1, 8, |g, _| norm = moe_core::optim::global_norm(g))
        .unwrap();
    let b = free.train_step(&x, &x, 1, 8).unwrap();
    assert_eq!(
        a.grad_norm, b.grad_norm,
        "the reported norm is the pre-clip norm"
    );
    assert!(a.grad_norm > 0.5);
    assert!((norm - 0.5).abs() < 1e-3, "clipped gradient norm {norm}");
    // The unclipped gradients, recomputed on an identical trainer.
    let mut again = make(None);
    again.compute_gradients(&x, &x, 1, 8, None).unwrap();
    assert!((moe_core::optim::global_norm(again.grads()) - b.grad_norm).abs() < 1e-4);
}

fn param_bits(t: &Trainer) -> Vec<u32> {
    t.model()
        .params()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The fused zeroing (phase D zeroes g_m, m ≥ 1; the AdamW pass zeroes g_0)
/// gives the bits of the old path: zero the buffer, `loss_and_grad`, clip
/// coefficient, `AdamW::update_scaled` — three steps, so a missed zeroing
/// would accumulate into the second.
#[test]
fn fused_gradient_zeroing_equals_zeroing_before_each_step() {
    use moe_core::{optim::clip_coef, AdamW, Mode, Pool};
    let (b, t) = (2, 8);
    let model = MoETransformer::new(&Config::tiny(), 9).unwrap();
    let tc = TrainConfig {
        clip_grad_norm: Some(0.3),
        ..TrainConfig::default()
    };
    let batch = |s: u32| -> (Vec<u32>, Vec<u32>) {
        let x = (0..16).map(|i| (i * 13 + 7 * s + 1) % 1000).collect();
        let y = (0..16).map(|i| (i * 17 + 3 * s + 2) % 1000).collect();
        (x, y)
    };
    // The reference: explicit zeroing, unfused.
    let mut params = model.params().unwrap().to_vec();
    let mut reference = model.clone();
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut g = vec![0.0f32; model.layout().total];
    let mut opt = AdamW::new(tc.adamw, g.len()).unwrap();
    let mut tr = Trainer::with_pool(model, tc, b, t, Pool::new(2).unwrap(), 1).unwrap();
    for s in 0..3 {
        let (x, y) = batch(s);
        g.fill(0.0);
        reference.params_mut().unwrap().copy_from_slice(&params);
        reference
            .loss_and_grad(&mut ws, &mut g, &x, &y, b, t, tc.aux_alpha, None)
            .unwrap();
        let coef = clip_coef(moe_core::optim::global_norm(&g), 0.3);
        assert!(coef < 1.0, "the clip must be active");
        opt.update_scaled(&mut params, &g, tc.schedule.at(s as u64), coef)
            .unwrap();
        tr.train_step(&x, &y, b, t).unwrap();
        let got: Vec<u32> = tr
            .model()
            .params()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u32> = params.iter().map(|v| v.to_bits()).collect();
        assert!(
            got == want,
            "step {s}: parameters differ from the unfused path"
        );
        assert!(
            tr.grads().iter().all(|&g| g == 0.0),
            "step {s}: g_0 not zeroed"
        );
    }
}

/// Data-parallel micro-batches: steps whose buffers were left dirty (by
/// `compute_gradients`, by a failed step, by a smaller batch) give the same
/// parameters, bit for bit, as uninterrupted steps.
#[test]
fn dirty_gradient_buffers_are_zeroed_before_the_next_step() {
    use moe_core::IGNORE_INDEX;
    let (b, t) = (8, 8);
    let model = MoETransformer::new(&Config::tiny(), 5).unwrap();
    let tc = TrainConfig::default();
    let batch = |s: u32, n: usize| -> (Vec<u32>, Vec<u32>) {
        let x = (0..n as u32)
            .map(|i| (i * 29 + 11 * s + 1) % 1000)
            .collect();
        let y = (0..n as u32).map(|i| (i * 31 + 5 * s + 2) % 1000).collect();
        (x, y)
    };
    let mut clean = Trainer::with_threads(model.clone(), tc, b, t, 2).unwrap();
    let mut dirty = Trainer::with_threads(model, tc, b, t, 2).unwrap();
    assert_eq!(dirty.micro_batches(), 4);
    for s in 0..3 {
        let (x, y) = batch(s, b * t);
        clean.train_step(&x, &y, b, t).unwrap();
        // Gradients of another batch left in the buffers...
        let (x2, y2) = batch(s + 10, b * t);
        dirty.compute_gradients(&x2, &y2, b, t, None).unwrap();
        assert!(dirty.grads().iter().any(|&g| g != 0.0));
        // ... a failed step (every target ignored) ...
        let all = vec![IGNORE_INDEX; b * t];
        dirty.train_step(&x, &all, b, t).unwrap_err();
        // ... a 2-sequence batch (two of the four buffers) ...
        let (x3, y3) = batch(s + 20, 2 * t);
        dirty.compute_gradients(&x3, &y3, 2, t, None).unwrap();
        dirty.train_step(&x, &y, b, t).unwrap();
        assert_eq!(param_bits(&clean), param_bits(&dirty), "step {s}");
        assert!(clean.grads().iter().all(|&g| g == 0.0));
        assert!(dirty.grads().iter().all(|&g| g == 0.0));
    }
}

#[test]
fn fused_clipping_equals_clipping_in_place() {
    let make = || {
        let cfg = TrainConfig {
            clip_grad_norm: Some(0.3),
            ..TrainConfig::default()
        };
        Trainer::new(MoETransformer::new(&Config::tiny(), 4).unwrap(), cfg, 2, 8).unwrap()
    };
    let x: Vec<u32> = (0..16).map(|i| (i * 13 + 1) % 1000).collect();
    let y: Vec<u32> = (0..16).map(|i| (i * 17 + 2) % 1000).collect();
    let (mut fused, mut explicit) = (make(), make());
    for _ in 0..4 {
        let a = fused.train_step(&x, &y, 2, 8).unwrap();
        let b = explicit
            .train_step_with_hook(&x, &y, 2, 8, |_, _| {})
            .unwrap();
        assert_eq!(a, b);
        assert!(
            a.grad_norm > 0.3,
            "the clip must be active for this test to mean anything"
        );
    }
    let bits = |t: &Trainer| {
        t.model()
            .params()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&fused), bits(&explicit));
}

#[test]
fn an_update_that_overflows_the_weights_is_a_typed_error_at_the_first_bad_index() {
    // The zeroing AdamW passes check their output block by block (no second
    // sweep); the error must still name the first non-finite parameter,
    // for the f32 trainer and the mixed-precision one (whose bf16 copy is
    // checked too), with and without a hook (which runs the gradient check).
    use moe_core::{Error, Precision};
    let (x, y): (Vec<u32>, Vec<u32>) = (
        (0..16).map(|i| i * 7 % 1000).collect(),
        (0..16).map(|i| i * 11 % 1000).collect(),
    );
    for precision in [Precision::F32, Precision::Bf16] {
        for hook in [false, true] {
            let cfg = TrainConfig {
                schedule: LrSchedule::constant(1e38),
                clip_grad_norm: None,
                precision,
                ..TrainConfig::default()
            };
            let model = MoETransformer::new(&Config::tiny(), 3).unwrap();
            let mut t = Trainer::new(model, cfg, 2, 8).unwrap();
            let r = if hook {
                t.train_step_with_hook(&x, &y, 2, 8, |_, _| {})
            } else {
                t.train_step(&x, &y, 2, 8)
            };
            let e = r.unwrap_err();
            let w = t.model().params().unwrap();
            let first = w.iter().position(|v| !v.is_finite());
            match e {
                Error::NonFinite { what, index } => {
                    assert!(what.contains("after the AdamW update"), "{what}");
                    if what.starts_with("parameters") {
                        assert_eq!(Some(index), first, "{precision:?} hook {hook}");
                    }
                }
                e => panic!("{precision:?} hook {hook}: {e:?}"),
            }
        }
    }
}
