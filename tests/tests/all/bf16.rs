//! bf16 storage (issue 17 item 3): the conversions against the `half` crate,
//! the bf16 GEMM / GEMV against an f64 reference on the widened weights, the
//! AVX2 and portable paths bit for bit, the decoding split for any thread count.

use moe_core::kernels::bf16::{self, dot, gemv, round, round_slice, widen, widen_slice};
use moe_core::kernels::cpu::with_portable_elementwise;
use moe_core::kernels::gemm::bf16::{gemm, WOp};
use moe_core::linear::{self, Accum, Weight};
use moe_core::Pool;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn reference(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[test]
fn round_matches_half_on_edge_cases() {
    let edges: &[u32] = &[
        0x0000_0000,
        0x8000_0000, // ±0
        0x0000_0001,
        0x8000_0001,
        0x0000_7FFF,
        0x0000_8000,
        0x0000_8001,
        0x0001_8000, // subnormal ties
        0x007F_FFFF,
        0x0080_0000,
        0x007F_8000, // largest subnormal → smallest normal
        0x3F80_0000,
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_7FFF,
        0x3F80_8001, // 1 and ties
        0x7F7F_7FFF,
        0x7F7F_8000,
        0x7F7F_FFFF,
        0xFF7F_FFFF, // overflow to ±∞
        0x7F80_0000,
        0xFF80_0000, // ±∞
        0x7FC0_0000,
        0xFFC0_0000,
        0x7F80_0001,
        0x7FFF_FFFF,
        0xFF80_0001,
        0x7F80_8000, // NaNs
    ];
    for &b in edges {
        let x = f32::from_bits(b);
        assert_eq!(round(x), reference(x), "bits {b:#010x}");
        if x.is_nan() {
            assert!(widen(round(x)).is_nan(), "NaN stays NaN: {b:#010x}");
        }
    }
    assert_eq!(
        round(f32::from_bits(0x7F7F_8000)),
        0x7F80,
        "tie at bf16::MAX rounds to +inf"
    );
    assert_eq!(round(f32::from_bits(0x7F7F_7FFF)), 0x7F7F);
}

#[test]
fn round_matches_half_on_random_bit_patterns() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let src: Vec<f32> = (0..1 << 20)
        .map(|_| f32::from_bits(rng.next_u32()))
        .collect();
    let mut out = vec![0u16; src.len()];
    round_slice(&mut out, &src);
    let mut portable = vec![0u16; src.len()];
    with_portable_elementwise(|| round_slice(&mut portable, &src));
    for (i, &x) in src.iter().enumerate() {
        assert_eq!(out[i], reference(x), "bits {:#010x}", x.to_bits());
        assert_eq!(portable[i], out[i]);
    }
    // Widening is exact, on both paths, for every one of the 2^16 patterns.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let (mut a, mut b) = (vec![0f32; all.len()], vec![0f32; all.len()]);
    widen_slice(&mut a, &all);
    with_portable_elementwise(|| widen_slice(&mut b, &all));
    for (i, &h) in all.iter().enumerate() {
        // `half` quiets a signalling NaN when widening; ours is the plain
        // 16-bit shift (exact, payload kept), so NaNs compare as NaNs.
        let want = half::bf16::from_bits(h).to_f32();
        if want.is_nan() {
            assert!(a[i].is_nan() && b[i].is_nan());
        } else {
            assert_eq!(a[i].to_bits(), want.to_bits());
            assert_eq!(b[i].to_bits(), want.to_bits());
        }
        assert_eq!(a[i].to_bits(), (h as u32) << 16);
        assert_eq!(b[i].to_bits(), (h as u32) << 16);
    }
}

#[test]
fn first_non_finite_finds_bf16_nan_and_inf() {
    let mut w = vec![bf16::round(1.0); 300];
    assert_eq!(bf16::first_non_finite(&w), None);
    w[200] = 0x7F80;
    w[250] = 0xFFC1;
    assert_eq!(bf16::first_non_finite(&w), Some(200));
    w[200] = 0x7F7F; // bf16::MAX is finite
    assert_eq!(bf16::first_non_finite(&w), Some(250));
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect()
}

fn rand_bf16(rng: &mut ChaCha8Rng, n: usize) -> Vec<u16> {
    rand_vec(rng, n).into_iter().map(round).collect()
}

/// `C = A·op(W) + β·C` in f64 on the widened weights.
#[allow(clippy::too_many_arguments)] // reason: the GEMM shape, its operands and β
fn ref_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    w: &[u16],
    op: WOp,
    beta: f32,
    c: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let wv = match op {
                    WOp::T => w[j * k + p],
                    WOp::N => w[p * n + j],
                };
                s += a[i * k + p] as f64 * widen(wv) as f64;
            }
            out[i * n + j] = s + beta as f64 * c[i * n + j] as f64;
        }
    }
    out
}

fn check_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * (k as f64).sqrt() * (1.0 + w.abs()) + 1e-6;
        assert!(((g as f64) - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn gemm_bf16_matches_f64_reference_over_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Shapes straddling the 16-column panels, the 64-column and 256-depth blocks.
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 17, 5),
        (1, 300, 513),
        (2, 16, 256),
        (3, 65, 257),
        (7, 64, 64),
        (16, 130, 300),
        (33, 200, 520),
        (64, 1000, 64),
        (6, 2048, 256),
    ] {
        let a = rand_vec(&mut rng, m * k);
        let w = rand_bf16(&mut rng, n * k);
        for op in [WOp::T, WOp::N] {
            for beta in [0.0f32, 1.0] {
                let c0 = rand_vec(&mut rng, m * n);
                let want = ref_gemm(m, n, k, &a, &w, op, beta, &c0);
                let mut c = if beta == 0.0 {
                    vec![f32::NAN; m * n]
                } else {
                    c0.clone()
                };
                gemm(m, n, k, &a, k, &w, op, beta, &mut c, n);
                check_close(
                    &c,
                    &want,
                    k,
                    &format!("gemm {m}x{n}x{k} {op:?} beta {beta}"),
                );
            }
        }
    }
}

#[test]
fn gemv_paths_are_bit_identical_and_dot_is_one_row() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(m, k) in &[
        (1, 1),
        (3, 7),
        (4, 8),
        (5, 9),
        (9, 64),
        (37, 1000),
        (130, 768),
    ] {
        let x = rand_vec(&mut rng, k);
        let w = rand_bf16(&mut rng, m * k);
        let mut fast = vec![0f32; m];
        gemv(&mut fast, &x, &w, k, 0.0);
        let mut slow = vec![0f32; m];
        with_portable_elementwise(|| gemv(&mut slow, &x, &w, k, 0.0));
        for j in 0..m {
            assert_eq!(fast[j].to_bits(), slow[j].to_bits(), "m {m} k {k} row {j}");
            assert_eq!(fast[j].to_bits(), dot(&x, &w[j * k..(j + 1) * k]).to_bits());
        }
        let want = ref_gemm(1, m, k, &x, &w, WOp::T, 0.0, &vec![0.0; m]);
        check_close(&fast, &want, k, "gemv");
        // β = 1 adds into y.
        let mut acc = vec![1.5f32; m];
        gemv(&mut acc, &x, &w, k, 1.0);
        for j in 0..m {
            assert_eq!(acc[j], 1.5 + fast[j]);
        }
    }
}

#[test]
fn linear_weight_view_f32_is_the_f32_path_and_bf16_split_is_thread_count_independent() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (din, dout) = (256, 1000);
    let x = rand_vec(&mut rng, din);
    let wb = rand_bf16(&mut rng, dout * din);
    let wf: Vec<f32> = wb.iter().map(|&b| widen(b)).collect();
    // F32 view: exactly the existing function.
    let (mut a, mut b) = (vec![0f32; dout], vec![0f32; dout]);
    linear::forward(&mut a, &x, &wf, 1, din, dout, Accum::Set);
    linear::forward_w(&mut b, &x, Weight::F32(&wf), 1, din, dout, Accum::Set);
    assert_eq!(a, b);
    // Bf16 view: same values as the widened f32 weight within rounding, and
    // the split GEMV bit-identical for every thread count (and to no pool).
    let mut single = vec![0f32; dout];
    linear::forward_w(&mut single, &x, Weight::Bf16(&wb), 1, din, dout, Accum::Set);
    let want = ref_gemm(1, dout, din, &x, &wb, WOp::T, 0.0, &vec![0.0; dout]);
    check_close(&single, &want, din, "bf16 gemv");
    for t in 1..=3 {
        let pool = Pool::new(t).unwrap(); // ok: test setup
        let mut y = vec![0f32; dout];
        pool.install(|| linear::forward_w(&mut y, &x, Weight::Bf16(&wb), 1, din, dout, Accum::Set));
        assert_eq!(y, single, "threads {t}");
    }
    // Backward input on a bf16 view equals dy·W on the widened weight.
    let n = 5;
    let dy = rand_vec(&mut rng, n * dout);
    let mut dx = vec![0f32; n * din];
    linear::backward_input_w(&mut dx, &dy, Weight::Bf16(&wb), n, din, dout, Accum::Set);
    let want = ref_gemm(n, din, dout, &dy, &wb, WOp::N, 0.0, &vec![0.0; n * din]);
    check_close(&dx, &want, dout, "bf16 backward_input");
}

// ---------------------------------------------------------------- the model in bf16

use moe_core::{Config, Decoder, Error, MoETransformer, Mode, Precision, TrainConfig, Trainer};

/// The f32 model from `seed` with every parameter rounded to bf16 and widened
/// back (what `w.to(torch.bfloat16).to(torch.float32)` gives).
fn rounded_f32(cfg: &Config, seed: u64) -> MoETransformer {
    let mut m = MoETransformer::new(cfg, seed).unwrap();
    m.params_mut()
        .unwrap()
        .iter_mut()
        .for_each(|x| *x = bf16::rounded(*x));
    m
}

#[test]
fn bf16_init_is_the_rounded_f32_init_for_any_thread_count() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let f = MoETransformer::new(&cfg, 7).unwrap();
        let want: Vec<u16> = f.params().unwrap().iter().map(|&x| round(x)).collect();
        let b = MoETransformer::new_with(&cfg, 7, Precision::Bf16).unwrap();
        assert_eq!(b.precision(), Precision::Bf16);
        assert!(
            b.params_bf16().unwrap() == &want[..],
            "sequential bf16 init"
        );
        for t in 1..=3 {
            let pool = Pool::new(t).unwrap();
            let p = MoETransformer::new_bf16_on(&cfg, 7, &pool).unwrap();
            assert!(p.params_bf16().unwrap() == &want[..], "threads {t}");
        }
        let conv = f.to_precision(Precision::Bf16).unwrap();
        assert!(conv.params_bf16().unwrap() == &want[..]);
        assert_eq!(
            b.param_bytes(),
            2 * want.len() + 4 * (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
        );
    }
}

#[test]
fn bf16_model_refuses_f32_access_and_training_with_typed_errors() {
    let cfg = Config::tiny();
    let mut b = MoETransformer::new_with(&cfg, 1, Precision::Bf16).unwrap();
    let mismatch = |e: Error| {
        matches!(
            e,
            Error::PrecisionMismatch {
                expected: "f32",
                actual: "bf16",
                ..
            }
        )
    };
    assert!(mismatch(b.params().unwrap_err()));
    assert!(mismatch(b.params_mut().unwrap_err()));
    assert!(mismatch(
        Trainer::new(b.clone(), TrainConfig::default(), 1, 4)
            .map(|_| ())
            .unwrap_err()
    ));
    // Gradients on a bf16 model are those of the rounded f32 model.
    let r = b.to_precision(Precision::F32).unwrap();
    let grads = |m: &MoETransformer| {
        let mut ws = m.workspace(1, 4, Mode::Training).unwrap();
        let mut g = vec![0f32; m.layout().total];
        let toks = [1, 2, 3, 4];
        let l = m
            .loss_and_grad(&mut ws, &mut g, &toks, &[2, 3, 4, 5], 1, 4, 0.01, None)
            .unwrap();
        (l, g)
    };
    let ((lb, gb), (lr, gr)) = (grads(&b), grads(&r));
    close(
        &[lb.loss, lb.ce, lb.aux],
        &[lr.loss, lr.ce, lr.aux],
        "losses",
    );
    close(&gb, &gr, "gradients");
    let f = MoETransformer::new(&cfg, 1).unwrap();
    assert!(matches!(
        f.params_bf16().unwrap_err(),
        Error::PrecisionMismatch {
            expected: "bf16",
            ..
        }
    ));
    // from_params_bf16: wrong length, non-finite.
    let w = b.params_bf16().unwrap().to_vec();
    assert!(matches!(
        MoETransformer::from_params_bf16(&cfg, w[1..].to_vec()).unwrap_err(),
        Error::ShapeMismatch { arg: "params", .. }
    ));
    let mut bad = w.clone();
    bad[77] = 0x7FC0;
    assert!(matches!(
        MoETransformer::from_params_bf16(&cfg, bad).unwrap_err(),
        Error::NonFinite {
            what: "params",
            index: 77
        }
    ));
    // f32 → bf16 overflow is refused, not turned into ∞.
    let mut big = f.clone();
    big.params_mut().unwrap()[5] = f32::MAX;
    assert!(matches!(
        big.to_precision(Precision::Bf16).unwrap_err(),
        Error::NonFinite { index: 5, .. }
    ));
    // The mutable bf16 view refreshes the norm table: a norm set to 2.0
    // through it changes the logits exactly as in the f32 model.
    let norm = b.layout().final_norm.clone();
    {
        let mut p = b.params_bf16_mut().unwrap();
        p[norm.clone()].iter_mut().for_each(|x| *x = round(2.0));
    }
    let mut r = b.to_precision(Precision::F32).unwrap();
    assert!(r.params().unwrap()[norm.clone()].iter().all(|&x| x == 2.0));
    let toks = [1u32, 2, 3];
    let mut w1 = b.workspace(1, 3, Mode::Inference).unwrap();
    let mut w2 = r.workspace(1, 3, Mode::Inference).unwrap();
    let lb = b.forward(&mut w1, &toks, 1, 3).unwrap().to_vec();
    let lf = r.forward(&mut w2, &toks, 1, 3).unwrap().to_vec();
    close(&lb, &lf, "after a norm edit");
    r.params_mut().unwrap()[0] = 0.0; // the f32 copy is independent
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite() && y.is_finite());
        assert!(
            (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn bf16_forward_cached_split_and_decoding_match_the_rounded_f32_model() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let b = MoETransformer::new_with(&cfg, 3, Precision::Bf16).unwrap();
        let r = rounded_f32(&cfg, 3);
        let (bt, t) = (3, 9);
        let toks: Vec<u32> = (0..bt * t)
            .map(|i| (i * 37 % cfg.vocab_size) as u32)
            .collect();
        let mut wb = b.workspace(bt, t, Mode::Inference).unwrap();
        let mut wr = r.workspace(bt, t, Mode::Inference).unwrap();
        let lb = b.forward(&mut wb, &toks, bt, t).unwrap().to_vec();
        let lr = r.forward(&mut wr, &toks, bt, t).unwrap().to_vec();
        close(&lb, &lr, "forward");
        // Split forward: bit-identical for every thread count, and close to
        // the plain forward (its groups have other GEMM shapes).
        let mut split = Vec::new();
        for th in [1, 2] {
            let pool = Pool::new(th).unwrap();
            let mut sw = b.split_workspace(bt, t, 4).unwrap();
            split.push(
                b.forward_split(&pool, &mut sw, &toks, bt, t)
                    .unwrap()
                    .to_vec(),
            );
        }
        assert!(split[0] == split[1], "split forward: 1 vs 2 threads");
        close(&split[0], &lr, "split forward");
        // Decoding: prefill + steps equal the full recompute's last rows,
        // bit-identical for 1 and 2 threads.
        let seq = &toks[..t];
        let mut outs = Vec::new();
        for th in [1, 2] {
            let pool = Pool::new(th).unwrap();
            let mut d = Decoder::with_pool(&b, t, &pool).unwrap();
            let mut rows = d.prefill(&seq[..4]).unwrap().to_vec();
            for &tok in &seq[4..] {
                rows.extend_from_slice(d.step(tok).unwrap());
            }
            outs.push(rows);
        }
        assert!(outs[0] == outs[1], "decoding is thread-count independent");
        let mut w1 = r.workspace(1, t, Mode::Inference).unwrap();
        let full = r.forward(&mut w1, seq, 1, t).unwrap().to_vec();
        let v = cfg.vocab_size;
        close(
            &outs[0][3 * v..],
            &full[3 * v..],
            "decoder vs rounded f32 recompute",
        );
    }
}

/// Timing probe (not a test): `cargo test --release -p moe-tests --test all -- --ignored bf16::gemv_timing --nocapture`.
#[test]
#[ignore]
fn gemv_timing() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(dout, din) in &[
        (2048usize, 256usize),
        (1000, 256),
        (256, 1024),
        (12288, 768),
        (768, 6144),
    ] {
        let x = rand_vec(&mut rng, din);
        let wb = rand_bf16(&mut rng, dout * din);
        let wf: Vec<f32> = wb.iter().map(|&b| widen(b)).collect();
        let mut y = vec![0f32; dout];
        let reps = (200_000_000 / (dout * din)).max(3);
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            best
        };
        let tf = time(&mut || linear::forward(&mut y, &x, &wf, 1, din, dout, Accum::Set));
        let tb = time(&mut || {
            linear::forward_w(&mut y, &x, Weight::Bf16(&wb), 1, din, dout, Accum::Set)
        });
        println!(
            "gemv {dout}x{din}: f32 {:.1} us ({:.1} GB/s), bf16 {:.1} us ({:.1} GB/s), ratio {:.2}",
            tf * 1e6,
            4.0 * (dout * din) as f64 / tf / 1e9,
            tb * 1e6,
            2.0 * (dout * din) as f64 / tb / 1e9,
            tf / tb
        );
    }
}
