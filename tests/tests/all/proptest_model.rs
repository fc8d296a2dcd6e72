//! Property tests of the whole model (issue: proptest invariants, STYLE "Tests").
//!
//! Random *valid* tiny configs (`c, h, kv | h, d even, e, k ≤ e, f, v, layers,
//! max_seq`) and shapes (`b`, `t ≤ max_seq`):
//!
//! * forward, `loss_and_grad` (training workspace) and `Trainer::train_step`
//!   succeed, every output is finite and has the right length;
//! * with `e = k = 1` the MoE block is the dense SwiGLU block: the model's
//!   logits equal a hand-composed dense forward built from the public units
//!   (`embedding`, `rmsnorm`, `linear`, `rope`, `attention`, `SwiGLU`), and
//!   the router weights are irrelevant (changing them changes nothing, and
//!   their gradient is zero);
//! * a finite-difference spot check of `loss_and_grad` on random tiny configs
//!   (a few coordinates per case, against the f64 reference of `moe_tests`).
//!
//! Case counts are bounded so that the whole proptest suite stays well under
//! 20 s in `cargo test --release` on 2 cores.

use moe_core::linear::Accum;
use moe_core::rope::{self, RopeTable};
use moe_core::swiglu::SwiGLU;
use moe_core::Dims;
use moe_core::{
    attention, embedding, linear, rmsnorm, Config, MoETransformer, Mode, TrainConfig, Trainer,
};
use moe_tests::reference as r;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

/// Cases per model-level property (each case builds a model and runs a step).
const MODEL_CASES: u32 = 512;
/// Cases of the finite-difference property (each case runs ~2·COORDS reference forwards).
const GRADCHECK_CASES: u32 = 64;
/// Coordinates checked per finite-difference case.
const COORDS: usize = 24;

/// proptest's config with `cases` cases. Failing inputs persist to
/// `tests/proptest-regressions/proptest_model.txt` (the path is relative to the
/// package root, where `cargo test` runs): the default `SourceParallel`
/// persistence looks for a `lib.rs`/`main.rs` next to the test file, finds
/// none for an integration test and would persist nothing.
fn pt_config(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptest_model.txt",
        ))),
        ..PtConfig::default()
    }
}

/// A random valid tiny config. `dense` forces `e = k = 1`.
fn config_strategy(dense: bool) -> impl Strategy<Value = Config> {
    (
        (1usize..=12, 1usize..=2, 1usize..=3, 1usize..=4),
        (1usize..=4, 0usize..4, 1usize..=12),
        (1usize..=24, 1usize..=2, 1usize..=12),
        (any::<bool>(), -7i32..=-3),
    )
        .prop_map(
            move |((c, kv, group, half_d), (e, kk, f), (v, layers, max_pos), (ntk, eps_exp))| {
                let d = 2 * half_d;
                let (e, k) = if dense { (1, 1) } else { (e, 1 + kk % e) };
                Config {
                    vocab_size: v,
                    hidden_size: c,
                    num_hidden_layers: layers,
                    num_attention_heads: kv * group,
                    num_key_value_heads: kv,
                    head_dim: d,
                    intermediate_size: f,
                    num_local_experts: e,
                    num_experts_per_tok: k,
                    max_position_embeddings: max_pos,
                    rope_base: 10_000.0,
                    // NTK scaling needs d > 2.
                    rope_alpha: if ntk && d > 2 { 4.0 } else { 1.0 },
                    rms_norm_eps: 10f32.powi(eps_exp),
                    sliding_window: None,
                }
            },
        )
}

/// A config, a batch shape `(b, t)` with `t ≤ max_seq`, tokens and targets `< v`, and a seed.
#[derive(Debug, Clone)]
struct Case {
    cfg: Config,
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    seed: u64,
}

fn case_strategy(dense: bool) -> impl Strategy<Value = Case> {
    config_strategy(dense).prop_flat_map(|cfg| {
        (1usize..=3, 1usize..=cfg.max_position_embeddings).prop_flat_map(move |(b, t)| {
            let v = cfg.vocab_size as u32;
            (
                prop::collection::vec(0..v, b * t),
                prop::collection::vec(0..v, b * t),
                any::<u64>(),
            )
                .prop_map(move |(tokens, targets, seed)| Case {
                    cfg,
                    b,
                    t,
                    tokens,
                    targets,
                    seed,
                })
        })
    })
}

fn all_finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// `|a − b| ≤ atol + rtol·max(|a|, |b|)` elementwise; returns the first failure.
fn close(a: &[f32], b: &[f32], atol: f32, rtol: f32) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("lengths {} vs {}", a.len(), b.len()));
    }
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if (x - y).abs() > atol + rtol * x.abs().max(y.abs()) {
            return Err(format!("index {i}: {x} vs {y}"));
        }
    }
    Ok(())
}

/// The model's forward composed by hand from the public units, with the MoE
/// block replaced by the dense SwiGLU of expert 0 (valid when `e = k = 1`).
fn dense_forward(model: &MoETransformer, tokens: &[u32], b: usize, t: usize) -> Vec<f32> {
    let cfg = *model.config();
    let dm = Dims::new(&cfg, b, t);
    let (n, c, v, f) = (dm.n, dm.c, dm.v, dm.f);
    let hd = dm.h * dm.d;
    let p = model.params().unwrap();
    let lay = model.layout();
    let eps = cfg.rms_norm_eps;
    let table = RopeTable::new(&cfg, t).unwrap();

    let mut resid = vec![0.0f32; n * c];
    embedding::forward(&mut resid, tokens, &p[lay.embed.clone()], c).unwrap();
    let mut xn = vec![0.0f32; n * c];
    let mut rstd = vec![0.0f32; n];
    let mut qkv = vec![0.0f32; n * dm.q];
    let mut att = vec![0.0f32; n * hd];
    let mut probs = vec![0.0f32; b * dm.h * t * t];
    let mut y = vec![0.0f32; n * c];
    let mut h13 = vec![0.0f32; n * 2 * f];
    let mut act = vec![0.0f32; n * f];
    for ll in &lay.layers {
        rmsnorm::forward(&mut xn, &mut rstd, &resid, &p[ll.attn_norm.clone()], eps);
        linear::forward(&mut qkv, &xn, &p[ll.wqkv.clone()], n, c, dm.q, Accum::Set);
        rope::forward(&mut qkv, &table, 0, &dm).unwrap();
        attention::forward(&mut att, &mut probs, &qkv, &dm, true).unwrap();
        linear::forward(&mut resid, &att, &p[ll.wo.clone()], n, hd, c, Accum::Add);
        rmsnorm::forward(&mut xn, &mut rstd, &resid, &p[ll.mlp_norm.clone()], eps);
        let base = ll.experts.start;
        let expert = SwiGLU {
            w13: moe_core::Weight::F32(&p[base..base + 2 * f * c]),
            w2: moe_core::Weight::F32(&p[base + 2 * f * c..base + 3 * f * c]),
            c,
            f,
        };
        expert.forward(&mut y, &mut h13, &mut act, &xn, n);
        resid.iter_mut().zip(&y).for_each(|(r, &yi)| *r += yi);
    }
    let mut xf = vec![0.0f32; n * c];
    rmsnorm::forward(&mut xf, &mut rstd, &resid, &p[lay.final_norm.clone()], eps);
    let mut logits = vec![0.0f32; n * v];
    linear::forward(
        &mut logits,
        &xf,
        &p[lay.lm_head.clone()],
        n,
        c,
        v,
        Accum::Set,
    );
    logits
}

proptest! {
    #![proptest_config(pt_config(MODEL_CASES))]

    /// Forward, backward and a training step on random valid configs and shapes
    /// succeed with finite outputs of the right shapes.
    #[test]
    fn forward_backward_and_train_step_succeed_and_are_finite(
        case in case_strategy(false),
        alpha in prop_oneof![Just(0.0f32), 0.0f32..2.0],
    ) {
        let Case { cfg, b, t, tokens, targets, seed } = case;
        let (n, v) = (b * t, cfg.vocab_size);
        let model = MoETransformer::new(&cfg, seed).unwrap();
        prop_assert!(all_finite(model.params().unwrap()));
        prop_assert_eq!(model.params().unwrap().len() as u64, cfg.param_counts().total);

        // Inference forward.
        let mut ws = model.workspace(b, t, Mode::Inference).unwrap();
        let logits = model.forward(&mut ws, &tokens, b, t).unwrap().to_vec();
        prop_assert_eq!(logits.len(), n * v);
        prop_assert!(all_finite(&logits));

        // Forward + backward in a training workspace, logits copied out.
        let mut tws = model.workspace(b, t, Mode::Training).unwrap();
        let mut grads = vec![0.0f32; model.layout().total];
        let mut train_logits = vec![f32::NAN; n * v];
        let losses = model
            .loss_and_grad(&mut tws, &mut grads, &tokens, &targets, b, t, alpha, Some(&mut train_logits))
            .unwrap();
        prop_assert!(losses.loss.is_finite() && losses.ce.is_finite() && losses.aux.is_finite());
        prop_assert!(losses.ce >= 0.0, "ce = {}", losses.ce);
        prop_assert!(losses.aux >= 0.0, "aux = {}", losses.aux);
        // aux = e·Σ f_e P_e with Σ f_e = k and P_e ≤ 1, so aux ≤ e·k.
        let (e, k) = (cfg.num_local_experts as f32, cfg.num_experts_per_tok as f32);
        prop_assert!(losses.aux <= e * k * (1.0 + 1e-5), "aux = {}", losses.aux);
        let total = losses.ce + alpha * losses.aux;
        prop_assert!((losses.loss - total).abs() <= 1e-5 * total.abs().max(1.0));
        if alpha == 0.0 {
            prop_assert_eq!(losses.loss.to_bits(), losses.ce.to_bits());
        }
        prop_assert!(all_finite(&grads));
        // Training and inference forwards agree.
        if let Err(m) = close(&train_logits, &logits, 1e-5, 1e-5) {
            return Err(TestCaseError::fail(format!("train vs inference logits: {m}")));
        }

        // One training step.
        let before = model.params().unwrap().to_vec();
        let tc = TrainConfig { aux_alpha: alpha, ..TrainConfig::default() };
        let mut tr = Trainer::new(model, tc, b, t).unwrap();
        let stats = tr.train_step(&tokens, &targets, b, t).unwrap();
        prop_assert_eq!(stats.step, 1);
        prop_assert!(stats.loss.is_finite() && stats.grad_norm.is_finite());
        prop_assert!((stats.loss - losses.loss).abs() <= 1e-5 * losses.loss.abs().max(1.0));
        prop_assert!((stats.lr - 1e-3).abs() < 1e-9);
        prop_assert!(all_finite(tr.model().params().unwrap()));
        prop_assert!(all_finite(tr.grads()));
        // AdamW moves every weight by at most ~lr (plus the decay term).
        for (a, w) in tr.model().params().unwrap().iter().zip(&before) {
            prop_assert!((a - w).abs() <= 1.1e-3 * (1.0 + w.abs()), "{} -> {}", w, a);
        }
    }

    /// `e = k = 1`: the MoE block is exactly the dense SwiGLU block, and the
    /// router's weights are irrelevant.
    #[test]
    fn single_expert_moe_equals_the_dense_swiglu_block(case in case_strategy(true), scale in -3.0f32..3.0) {
        let Case { cfg, b, t, tokens, targets, seed } = case;
        let model = MoETransformer::new(&cfg, seed).unwrap();
        let mut ws = model.workspace(b, t, Mode::Inference).unwrap();
        let logits = model.forward(&mut ws, &tokens, b, t).unwrap().to_vec();
        let dense = dense_forward(&model, &tokens, b, t);
        if let Err(m) = close(&logits, &dense, 1e-5, 1e-5) {
            return Err(TestCaseError::fail(format!("model vs dense: {m}")));
        }

        // Change every router weight: nothing changes.
        let mut other = model.clone();
        let routers: Vec<usize> = other.layout().layers.iter().map(|l| l.router.start).collect();
        let c = cfg.hidden_size;
        for at in routers.iter().copied() {
            for (i, w) in other.params_mut().unwrap()[at..at + c].iter_mut().enumerate() {
                *w = scale * (i as f32 - 2.5);
            }
        }
        let logits2 = other.forward(&mut ws, &tokens, b, t).unwrap().to_vec();
        prop_assert_eq!(
            logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            logits2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );

        // ... and its gradient is zero (a softmax over one expert is constant).
        let mut tws = model.workspace(b, t, Mode::Training).unwrap();
        let mut grads = vec![0.0f32; model.layout().total];
        model.loss_and_grad(&mut tws, &mut grads, &tokens, &targets, b, t, 0.5, None).unwrap();
        for at in routers {
            prop_assert!(grads[at..at + c].iter().all(|&g| g.abs() <= 1e-12), "{:?}", &grads[at..at + c]);
        }
    }
}

proptest! {
    #![proptest_config(pt_config(GRADCHECK_CASES))]

    /// A few random coordinates of `loss_and_grad` against central finite
    /// differences of the f64 reference loss (the full check is in gradcheck.rs).
    #[test]
    fn loss_and_grad_matches_finite_differences_on_random_coordinates(
        case in case_strategy(false),
        alpha in 0.0f32..1.0,
        picks in prop::collection::vec(any::<prop::sample::Index>(), COORDS),
    ) {
        const H: f64 = 1e-6;
        let Case { cfg, b, t, tokens, targets, seed } = case;
        let model = MoETransformer::new(&cfg, seed).unwrap();
        let mut ws = model.workspace(b, t, Mode::Training).unwrap();
        let mut grads = vec![0.0f32; model.layout().total];
        model.loss_and_grad(&mut ws, &mut grads, &tokens, &targets, b, t, alpha, None).unwrap();
        let k = cfg.num_experts_per_tok;
        let mut p = r::to_f64(model.params().unwrap());
        let (_, routing) = r::loss_with_routing(&cfg, &p, &tokens, &targets, b, t, alpha as f64);
        let sets: Vec<_> = routing.iter().map(|x| x.sets(k)).collect();
        let mut checked = 0;
        for pick in picks {
            let i = pick.index(p.len());
            let x0 = p[i];
            let mut eval = |x: f64| {
                p[i] = x;
                let (l, rt) = r::loss_with_routing(&cfg, &p, &tokens, &targets, b, t, alpha as f64);
                (l.total, rt.iter().zip(&sets).all(|(a, s)| a.sets(k) == *s))
            };
            let (up, same_up) = eval(x0 + H);
            let (down, same_down) = eval(x0 - H);
            p[i] = x0;
            if !(same_up && same_down) {
                continue; // a routing flip: the difference quotient is meaningless
            }
            checked += 1;
            let fd = (up - down) / (2.0 * H);
            let got = grads[i] as f64;
            prop_assert!(
                (got - fd).abs() <= 2e-5 + 1e-3 * fd.abs(),
                "param {}: core {} vs finite difference {}", i, got, fd
            );
        }
        prop_assert!(checked * 2 >= COORDS, "only {} of {} coordinates checked", checked, COORDS);
    }
}
