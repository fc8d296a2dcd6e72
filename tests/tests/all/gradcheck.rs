//! Gradient checks: moe-core's hand-written `f32` backward of every unit, and
//! of the whole model (`MoETransformer::loss_and_grad`), against central
//! finite differences of the naive `f64` reference (`moe_tests::reference`).
//!
//! Per unit the objective is `L = Σ g ⊙ y` with a random `g`, differentiated
//! with respect to every input and weight element. Units that accumulate are
//! called on gradient buffers pre-filled with `PREFILL`, which is subtracted
//! again (so "accumulates" is checked too); units that overwrite get NaN.
//!
//! Top-k routing is piecewise constant: a coordinate whose ±h perturbation
//! changes a routing decision has a meaningless difference quotient and is
//! skipped (the objective returns NaN there); the tests assert that only few are.
//!
//! Tolerance: `|core − fd| <= 2e-6 + 1e-4·|fd|` (f32 backward vs f64 FD). The
//! gradients here are ~1e-2 (model) to ~1 (units) and the observed errors
//! ~1e-7, so the looser `1e-4 + 1e-3·|fd|` would accept a wrong gradient of a
//! small coordinate (or a missing aux term of ~1e-4) outright.

use moe_core::kernels::softmax;
use moe_core::linear::Accum;
use moe_core::rope::{self, RopeTable};
use moe_core::swiglu::SwiGLU;
use moe_core::Dims;
use moe_core::{
    attention, embedding, linear, loss, rmsnorm, router, Config, Layout, MoETransformer, Mode,
};
use moe_tests::reference as r;
use moe_tests::reference::to_f64;
use moe_tests::router_dims;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Finite-difference step (f64).
const H: f64 = 1e-6;
const ATOL: f64 = 2e-6;
const RTOL: f64 = 1e-4;
/// Value accumulating gradient buffers start from.
const PREFILL: f32 = 0.25;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in `[-scale, scale)`.
fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of `f` at `x` for every coordinate (NaN where `f` is NaN).
fn fd(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + H;
            let up = f(&xp);
            xp[i] = x0 - H;
            let down = f(&xp);
            xp[i] = x0;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Running comparison statistics of one tensor group.
#[derive(Debug, Default, Clone)]
struct Stats {
    n: usize,
    skipped: usize,
    max_abs: f64,
    /// Max `|b|` (the size of the gradient itself).
    max_want: f64,
    /// Max `|a − b| / |b|` over elements with `|b| > 1e-3`.
    max_rel: f64,
    /// Max `|a − b| / (ATOL + RTOL·|b|)`: must stay <= 1.
    max_ratio: f64,
    worst: Option<(usize, f32, f64)>,
}

impl Stats {
    fn add(&mut self, i: usize, got: f32, want: f64) {
        if want.is_nan() {
            self.skipped += 1;
            return;
        }
        self.n += 1;
        let err = (got as f64 - want).abs();
        self.max_abs = self.max_abs.max(err);
        self.max_want = self.max_want.max(want.abs());
        if want.abs() > 1e-3 {
            self.max_rel = self.max_rel.max(err / want.abs());
        }
        let ratio = err / (ATOL + RTOL * want.abs());
        if ratio > self.max_ratio || !ratio.is_finite() {
            self.max_ratio = if ratio.is_finite() {
                ratio
            } else {
                f64::INFINITY
            };
            self.worst = Some((i, got, want));
        }
    }
    fn report(&self, label: &str) {
        println!(
            "{label:<48} n {:>5}  skipped {:>3}  max |fd| {:.2e}  max abs {:.2e}  max rel {:.2e}  err/tol {:.3}",
            self.n, self.skipped, self.max_want, self.max_abs, self.max_rel, self.max_ratio
        );
    }
    fn ok(&self) -> bool {
        self.max_ratio <= 1.0
    }
}

/// Compares a whole gradient; prints and asserts. NaN in `want` means skipped.
fn check(label: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut s = Stats::default();
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        s.add(i, a, b);
    }
    s.report(label);
    assert!(s.n > 0, "{label}: nothing compared");
    assert!(s.ok(), "{label}: worst (index, core, fd) = {:?}", s.worst);
}

fn minus_prefill(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| v - PREFILL).collect()
}

// ------------------------------------------------------------------ units

#[test]
fn softmax_backward() {
    let mut g = rng(1);
    let x = rand_vec(&mut g, 9, 3.0);
    let gy = rand_vec(&mut g, 9, 1.0);
    let mut p = x.clone();
    softmax::forward_inplace(&mut p);
    let mut dx = vec![f32::NAN; 9];
    softmax::backward(&mut dx, &p, &gy);
    let gd = to_f64(&gy);
    let want = fd(&to_f64(&x), |x| dot(&gd, &r::softmax(x)));
    check("softmax::backward dx", &dx, &want);
    let mut dx2 = gy.clone();
    softmax::backward_inplace(&mut dx2, &p);
    check("softmax::backward_inplace dx", &dx2, &want);
}

#[test]
fn rmsnorm_backward() {
    let mut g = rng(2);
    let (n, c, eps) = (3, 7, 1e-5f32);
    let x = rand_vec(&mut g, n * c, 2.0);
    let w = rand_vec(&mut g, c, 1.5);
    let gy = rand_vec(&mut g, n * c, 1.0);
    let mut y = vec![0.0; n * c];
    let mut rstd = vec![0.0; n];
    rmsnorm::forward(&mut y, &mut rstd, &x, &w, eps);
    let mut dx = vec![PREFILL; n * c];
    let mut dw = vec![PREFILL; c];
    rmsnorm::backward(&mut dx, &mut dw, &gy, &x, &rstd, &w);
    let (xd, wd, gd, e) = (to_f64(&x), to_f64(&w), to_f64(&gy), eps as f64);
    check(
        "rmsnorm::backward dx",
        &minus_prefill(&dx),
        &fd(&xd, |x| dot(&gd, &r::rmsnorm(x, &wd, e))),
    );
    check(
        "rmsnorm::backward dw",
        &minus_prefill(&dw),
        &fd(&wd, |w| dot(&gd, &r::rmsnorm(&xd, w, e))),
    );
}

#[test]
fn linear_backward() {
    let mut g = rng(3);
    let (n, din, dout) = (4, 5, 3);
    let x = rand_vec(&mut g, n * din, 1.0);
    let w = rand_vec(&mut g, dout * din, 1.0);
    let gy = rand_vec(&mut g, n * dout, 1.0);
    let (xd, wd, gd) = (to_f64(&x), to_f64(&w), to_f64(&gy));
    let want_dx = fd(&xd, |x| dot(&gd, &r::linear(x, &wd, n, din, dout)));
    let want_dw = fd(&wd, |w| dot(&gd, &r::linear(&xd, w, n, din, dout)));
    let mut dx = vec![f32::NAN; n * din];
    linear::backward_input(&mut dx, &gy, &w, n, din, dout, Accum::Set);
    check("linear::backward_input β=0", &dx, &want_dx);
    let mut dx = vec![PREFILL; n * din];
    linear::backward_input(&mut dx, &gy, &w, n, din, dout, Accum::Add);
    check("linear::backward_input β=1", &minus_prefill(&dx), &want_dx);
    let mut dw = vec![PREFILL; dout * din];
    linear::backward_weight(&mut dw, &gy, &x, n, din, dout);
    check("linear::backward_weight", &minus_prefill(&dw), &want_dw);
}

/// Reference RoPE on a fused `[b·t, (h+2kv)·d]` buffer (positions `r % t`, values untouched).
fn ref_rope_qkv(x: &[f64], t: usize, h: usize, kv: usize, d: usize, theta: f64) -> Vec<f64> {
    let q = (h + 2 * kv) * d;
    let mut y = x.to_vec();
    for row in 0..x.len() / q {
        for head in 0..h + kv {
            let at = row * q + head * d;
            y[at..at + d].copy_from_slice(&r::rope(&x[at..at + d], row % t, theta));
        }
    }
    y
}

#[test]
fn rope_backward() {
    let mut g = rng(4);
    let (b, t, h, kv, d) = (2, 3, 2, 1, 4);
    let cfg = Config {
        num_attention_heads: h,
        num_key_value_heads: kv,
        head_dim: d,
        ..Config::tiny()
    };
    let q = (h + 2 * kv) * d;
    let table = RopeTable::new(&cfg, t).unwrap();
    let x = rand_vec(&mut g, b * t * q, 1.0);
    let gy = rand_vec(&mut g, b * t * q, 1.0);
    let mut dx = gy.clone();
    rope::backward(&mut dx, &table, &Dims::new(&cfg, b, t)).unwrap();
    let (gd, theta) = (to_f64(&gy), cfg.rope_theta() as f64);
    let want = fd(&to_f64(&x), |x| {
        dot(&gd, &ref_rope_qkv(x, t, h, kv, d, theta))
    });
    check("rope::backward dqkv", &dx, &want);
}

#[test]
fn attention_backward_mqa_and_gqa() {
    let mut g = rng(5);
    for kv in [1, 2] {
        let cfg = Config {
            num_attention_heads: 4,
            num_key_value_heads: kv,
            head_dim: 4,
            ..Config::tiny()
        };
        let (b, t) = (2, 4);
        let dm = Dims::new(&cfg, b, t);
        let (n, h, d) = (dm.n, dm.h, dm.d);
        let qkv = rand_vec(&mut g, n * dm.q, 1.5);
        let gy = rand_vec(&mut g, n * h * d, 1.0);
        let mut att = vec![0.0; n * h * d];
        let mut probs = vec![0.0; b * h * t * t];
        attention::forward(&mut att, &mut probs, &qkv, &dm, true).unwrap();
        let mut dqkv = vec![f32::NAN; n * dm.q];
        let mut dp = vec![f32::NAN; t * t];
        attention::backward(&mut dqkv, &mut dp, &gy, &probs, &qkv, &dm);
        let gd = to_f64(&gy);
        let q = dm.q;
        let want = fd(&to_f64(&qkv), |x| {
            let part = |lo: usize, w: usize| -> Vec<f64> {
                (0..n)
                    .flat_map(|row| x[row * q + lo..row * q + lo + w].to_vec())
                    .collect()
            };
            let att = r::attention(
                &part(0, h * d),
                &part(h * d, kv * d),
                &part((h + kv) * d, kv * d),
                b,
                t,
                h,
                kv,
                d,
            );
            dot(&gd, &att)
        });
        check(
            &format!("attention::backward dqkv (h 4, kv {kv})"),
            &dqkv,
            &want,
        );
    }
}

#[test]
fn router_backward_with_aux() {
    let mut g = rng(6);
    let (n, c, e, k) = (5, 6, 4, 2);
    let x = rand_vec(&mut g, n * c, 1.0);
    let wg = rand_vec(&mut g, e * c, 1.0);
    let gw = rand_vec(&mut g, n * k, 1.0);
    let aux = rand_vec(&mut g, e, 0.5);
    let mut p = vec![0.0; n * e];
    let mut idx = vec![0u32; n * k];
    let mut w = vec![0.0; n * k];
    let dm = router_dims(n, c, e, k);
    router::forward(&mut p, &mut idx, &mut w, &x, &wg, &dm);
    let mut dx = vec![PREFILL; n * c];
    let mut dwg = vec![PREFILL; e * c];
    let mut dp = vec![f32::NAN; n * e];
    router::backward(
        &mut dx,
        &mut dwg,
        &mut dp,
        &gw,
        &p,
        &idx,
        &w,
        &aux,
        &x,
        moe_core::Weight::F32(&wg),
        &dm,
    );
    let (xd, wgd, gwd, auxd) = (to_f64(&x), to_f64(&wg), to_f64(&gw), to_f64(&aux));
    let base = r::router(&xd, &wgd, n, c, e, k);
    let idx0: Vec<usize> = idx.iter().map(|&j| j as usize).collect();
    assert_eq!(
        base.topk, idx0,
        "router: core and reference choose different experts"
    );
    // L = Σ_rj gw_rj · w(expert idx0_rj) + Σ_r Σ_e aux_e · p_re; NaN if a top-k set changes.
    let objective = |x: &[f64], wg: &[f64]| -> f64 {
        let rt = r::router(x, wg, n, c, e, k);
        if rt.sets(k) != base.sets(k) {
            return f64::NAN;
        }
        let mut l = 0.0;
        for row in 0..n {
            let pr = &rt.probs[row * e..(row + 1) * e];
            let s: f64 = idx0[row * k..(row + 1) * k].iter().map(|&j| pr[j]).sum();
            for j in 0..k {
                l += gwd[row * k + j] * pr[idx0[row * k + j]] / s;
            }
            l += dot(&auxd, pr);
        }
        l
    };
    check(
        "router::backward dx",
        &minus_prefill(&dx),
        &fd(&xd, |x| objective(x, &wgd)),
    );
    check(
        "router::backward dw_gate",
        &minus_prefill(&dwg),
        &fd(&wgd, |wg| objective(&xd, wg)),
    );
}

#[test]
fn swiglu_backward() {
    let mut g = rng(7);
    let (m, c, f) = (4, 5, 6);
    let x = rand_vec(&mut g, m * c, 1.5);
    let w13 = rand_vec(&mut g, 2 * f * c, 1.0);
    let w2 = rand_vec(&mut g, c * f, 1.0);
    let gy = rand_vec(&mut g, m * c, 1.0);
    let ex = SwiGLU {
        w13: moe_core::Weight::F32(&w13),
        w2: moe_core::Weight::F32(&w2),
        c,
        f,
    };
    let (mut y, mut h13, mut act) = (vec![0.0; m * c], vec![0.0; m * 2 * f], vec![0.0; m * f]);
    ex.forward(&mut y, &mut h13, &mut act, &x, m);
    let mut dx = vec![f32::NAN; m * c];
    let mut dw13 = vec![PREFILL; 2 * f * c];
    let mut dw2 = vec![PREFILL; c * f];
    let (mut dh13, mut dact) = (vec![f32::NAN; m * 2 * f], vec![f32::NAN; m * f]);
    ex.backward(
        &mut dx, &mut dw13, &mut dw2, &mut dh13, &mut dact, &gy, &x, &h13, &act, m,
    );
    let (xd, w13d, w2d, gd) = (to_f64(&x), to_f64(&w13), to_f64(&w2), to_f64(&gy));
    let (w1, w3) = w13d.split_at(f * c);
    let ob = |x: &[f64], w1: &[f64], w3: &[f64], w2: &[f64]| {
        dot(&gd, &r::swiglu(x, w1, w3, w2, m, c, f))
    };
    check(
        "SwiGLU::backward dx",
        &dx,
        &fd(&xd, |x| ob(x, w1, w3, &w2d)),
    );
    let dw13 = minus_prefill(&dw13);
    check(
        "SwiGLU::backward dw1",
        &dw13[..f * c],
        &fd(w1, |w| ob(&xd, w, w3, &w2d)),
    );
    check(
        "SwiGLU::backward dw3",
        &dw13[f * c..],
        &fd(w3, |w| ob(&xd, w1, w, &w2d)),
    );
    check(
        "SwiGLU::backward dw2",
        &minus_prefill(&dw2),
        &fd(&w2d, |w| ob(&xd, w1, w3, w)),
    );
}

#[test]
fn cross_entropy_dlogits() {
    let mut g = rng(8);
    let (n, v) = (5, 7);
    let logits = rand_vec(&mut g, n * v, 3.0);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 3 + 1) % v as u32).collect();
    let mut dlogits = vec![f32::NAN; n * v];
    let mut ce_row = vec![0.0; n];
    loss::cross_entropy(&mut dlogits, &mut ce_row, &logits, &targets, v).unwrap();
    let want = fd(&to_f64(&logits), |z| r::cross_entropy(z, &targets, v));
    check("loss::cross_entropy dlogits", &dlogits, &want);
}

#[test]
fn embedding_backward() {
    let mut g = rng(9);
    let (v, c) = (6, 4);
    let table = rand_vec(&mut g, v * c, 1.0);
    let tokens = [2u32, 5, 2, 0, 2];
    let gy = rand_vec(&mut g, tokens.len() * c, 1.0);
    let mut dtable = vec![PREFILL; v * c];
    embedding::backward(&mut dtable, &gy, &tokens, c).unwrap();
    let gd = to_f64(&gy);
    let want = fd(&to_f64(&table), |tb| {
        dot(&gd, &r::embedding(&tokens, tb, c))
    });
    check("embedding::backward dtable", &minus_prefill(&dtable), &want);
}

// ------------------------------------------------------------------ whole model

/// `model.layers.1.block_sparse_moe.experts.3.w1.weight` → `layers.*.block_sparse_moe.experts.*.w1`.
fn group_of(name: &str) -> String {
    name.trim_start_matches("model.")
        .trim_end_matches(".weight")
        .split('.')
        .map(|p| if p.parse::<usize>().is_ok() { "*" } else { p })
        .collect::<Vec<_>>()
        .join(".")
}

fn small(h: usize, kv: usize, e: usize, k: usize) -> Config {
    Config {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: h,
        num_key_value_heads: kv,
        head_dim: 4,
        intermediate_size: 12,
        num_local_experts: e,
        num_experts_per_tok: k,
        max_position_embeddings: 16,
        ..Config::tiny()
    }
}

/// `loss_and_grad` at α = 0 and α = 0.7 against central differences of the
/// reference CE and aux for every parameter.
fn model_gradcheck(label: &str, cfg: &Config, b: usize, t: usize, seed: u64) {
    const ALPHA: f32 = 0.7;
    let model = MoETransformer::new(cfg, seed).unwrap();
    let layout = Layout::new(cfg).unwrap();
    let mut g = rng(seed ^ 0x5eed);
    let v = cfg.vocab_size as u32;
    let tokens: Vec<u32> = (0..b * t).map(|_| g.next_u32() % v).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| g.next_u32() % v).collect();
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut grad = [vec![0.0f32; layout.total], vec![0.0f32; layout.total]];
    let mut losses = Vec::new();
    for (gr, alpha) in grad.iter_mut().zip([0.0, ALPHA]) {
        losses.push(
            model
                .loss_and_grad(&mut ws, gr, &tokens, &targets, b, t, alpha, None)
                .unwrap(),
        );
    }

    let params = to_f64(model.params().unwrap());
    let k = cfg.num_experts_per_tok;
    let (base, routing) = r::loss_with_routing(cfg, &params, &tokens, &targets, b, t, 0.0);
    let sets: Vec<_> = routing.iter().map(|x| x.sets(k)).collect();
    println!(
        "{label}: core ce {} aux {} | reference ce {} aux {}",
        losses[1].ce, losses[1].aux, base.ce, base.aux
    );
    assert!(
        (losses[1].ce as f64 - base.ce).abs() <= 1e-5 * base.ce.abs().max(1.0),
        "{label}: CE"
    );
    assert!(
        (losses[1].aux as f64 - base.aux).abs() <= 1e-5 * base.aux.abs().max(1.0),
        "{label}: aux"
    );

    let mut p = params.clone();
    let mut groups: Vec<(String, Stats, Stats)> = Vec::new();
    let (mut total, mut skipped) = (0usize, 0usize);
    for info in layout.tensors() {
        let name = group_of(&info.name);
        let at = match groups.iter().position(|x| x.0 == name) {
            Some(i) => i,
            None => {
                groups.push((name, Stats::default(), Stats::default()));
                groups.len() - 1
            }
        };
        for i in info.range() {
            let x0 = p[i];
            let mut eval = |x: f64| {
                p[i] = x;
                let (l, rt) = r::loss_with_routing(cfg, &p, &tokens, &targets, b, t, 0.0);
                let same = rt.iter().zip(&sets).all(|(a, s)| a.sets(k) == *s);
                (l, same)
            };
            let (up, same_up) = eval(x0 + H);
            let (down, same_down) = eval(x0 - H);
            p[i] = x0;
            total += 1;
            let (d_ce, d_aux) = if same_up && same_down {
                (
                    (up.ce - down.ce) / (2.0 * H),
                    (up.aux - down.aux) / (2.0 * H),
                )
            } else {
                skipped += 1;
                (f64::NAN, f64::NAN)
            };
            groups[at].1.add(i, grad[0][i], d_ce);
            groups[at].2.add(i, grad[1][i], d_ce + ALPHA as f64 * d_aux);
        }
    }
    println!("{label}: {total} parameters, {skipped} skipped (routing flips)");
    for (name, s0, s7) in &groups {
        s0.report(&format!("  α=0   {name}"));
        s7.report(&format!("  α=0.7 {name}"));
    }
    assert!(
        skipped * 100 <= total,
        "{label}: {skipped} of {total} coordinates flip routing"
    );
    for (name, s0, s7) in &groups {
        assert!(
            s0.ok(),
            "{label} α=0 {name}: worst (index, core, fd) = {:?}",
            s0.worst
        );
        assert!(
            s7.ok(),
            "{label} α=0.7 {name}: worst (index, core, fd) = {:?}",
            s7.worst
        );
    }
}

#[test]
fn model_gradcheck_mqa() {
    model_gradcheck("MQA h4 kv1 e4 k2", &small(4, 1, 4, 2), 2, 4, 11);
}

#[test]
fn model_gradcheck_gqa() {
    model_gradcheck("GQA h4 kv2 e4 k2", &small(4, 2, 4, 2), 2, 3, 12);
}

#[test]
fn model_gradcheck_single_expert() {
    model_gradcheck("dense e1 k1", &small(4, 1, 1, 1), 1, 5, 13);
}
