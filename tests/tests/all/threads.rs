//! Every core on one model: data-parallel training, split forward and
//! pooled decoding give bit-identical results for 1, 2 and 4 threads, stay
//! within the golden tolerance of the single pass, and allocate nothing in
//! steady state on any thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use moe_bench::harness::sys::alloc_counter::AllocSnapshot;
use moe_core::{
    Config, Decoder, Error, MoETransformer, Mode, Pool, StepStats, TrainConfig, Trainer,
    DEFAULT_MICRO_BATCHES,
};

fn tokens(n: usize, v: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ salt) % v as u32)
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Parameters and stats after training steps at (b, t) shapes, on `threads`.
fn train(threads: usize, shapes: &[(usize, usize)]) -> (Vec<u32>, Vec<StepStats>) {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 7).unwrap();
    let mut tr = Trainer::with_threads(model, TrainConfig::default(), 8, 16, threads).unwrap();
    assert_eq!(tr.threads(), threads);
    assert_eq!(tr.micro_batches(), DEFAULT_MICRO_BATCHES);
    let mut stats = Vec::new();
    for (s, &(b, t)) in shapes.iter().enumerate() {
        let x = tokens(b * t, cfg.vocab_size, s as u32);
        let y = tokens(b * t, cfg.vocab_size, 99 + s as u32);
        stats.push(tr.train_step(&x, &y, b, t).unwrap());
    }
    (bits(tr.model().params().unwrap()), stats)
}

#[test]
fn train_steps_are_bit_identical_for_1_2_4_threads() {
    // Even micro-batches, uneven ones (5 = 1+1+1+2), fewer sequences than
    // micro-batches, and a short sequence.
    let shapes = [(8, 16), (5, 16), (3, 9), (8, 16)];
    let (p1, s1) = train(1, &shapes);
    for t in [2, 4] {
        let (p, s) = train(t, &shapes);
        assert_eq!(s, s1, "step stats differ at T={t}");
        assert!(p == p1, "parameters differ at T={t}");
    }
    // Trainer::new is the same computation (one thread, the default micro-batches).
    let cfg = Config::tiny();
    let mut tr = Trainer::new(
        MoETransformer::new(&cfg, 7).unwrap(),
        TrainConfig::default(),
        8,
        16,
    )
    .unwrap();
    for (s, &(b, t)) in shapes.iter().enumerate() {
        let x = tokens(b * t, cfg.vocab_size, s as u32);
        let y = tokens(b * t, cfg.vocab_size, 99 + s as u32);
        assert_eq!(tr.train_step(&x, &y, b, t).unwrap(), s1[s]);
    }
    assert!(bits(tr.model().params().unwrap()) == p1);
}

#[test]
fn micro_batches_keep_the_single_pass_losses_and_gradients() {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 3).unwrap();
    let (b, t) = (8, 16);
    let x = tokens(b * t, cfg.vocab_size, 1);
    let y = tokens(b * t, cfg.vocab_size, 2);
    let tc = TrainConfig::default();
    // The single pass.
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut g1 = vec![0.0f32; model.layout().total];
    let l1 = model
        .loss_and_grad(&mut ws, &mut g1, &x, &y, b, t, tc.aux_alpha, None)
        .unwrap();
    // One micro-batch is that single pass, bit for bit.
    let mut one = Trainer::with_pool(model.clone(), tc, b, t, Pool::new(2).unwrap(), 1).unwrap();
    assert_eq!(one.compute_gradients(&x, &y, b, t, None).unwrap(), l1);
    assert!(bits(one.grads()) == bits(&g1));
    // Four: the CE is the single pass's sum in the same order (bit-identical);
    // the aux statistics are summed per micro-batch, then in micro-batch
    // order (a rounding-level difference), and the gradients differ only in
    // the order of the row sums.
    let mut four = Trainer::with_threads(model, tc, b, t, 2).unwrap();
    let mut logits = vec![0.0f32; b * t * cfg.vocab_size];
    let l4 = four
        .compute_gradients(&x, &y, b, t, Some(&mut logits))
        .unwrap();
    assert_eq!(l4.ce.to_bits(), l1.ce.to_bits());
    for (what, a, w) in [("aux", l4.aux, l1.aux), ("loss", l4.loss, l1.loss)] {
        assert!(
            (a - w).abs() <= 1e-6 * w.abs(),
            "{what}: {a} vs the single pass's {w}"
        );
    }
    let mut worst = 0.0f32;
    for (&a, &w) in four.grads().iter().zip(&g1) {
        let err = (a - w).abs() / (1e-5 + 1e-4 * w.abs());
        worst = worst.max(err);
    }
    assert!(
        worst <= 1.0,
        "gradient error {worst} × (1e-5 abs + 1e-4 rel)"
    );
    assert!(
        four.grads() != &g1[..],
        "the micro-batched sums were not exercised"
    );
    // The logits copied out are the plain forward's within 1e-5 (other GEMM shapes).
    let mut wi = four.model().workspace(b, t, Mode::Inference).unwrap();
    let plain = four.model().forward(&mut wi, &x, b, t).unwrap();
    let d = plain
        .iter()
        .zip(&logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-5, "logits differ by {d}");
}

#[test]
fn split_forward_is_bit_identical_for_any_thread_count() {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 5).unwrap();
    let (b, t) = (6, 12);
    let x = tokens(b * t, cfg.vocab_size, 4);
    let mut want: Option<Vec<u32>> = None;
    for threads in [1, 2, 4] {
        let pool = Pool::new(threads).unwrap();
        let mut ws = model
            .split_workspace(8, 16, moe_core::FORWARD_SPLITS)
            .unwrap();
        assert_eq!(ws.splits(), 4);
        let got = bits(model.forward_split(&pool, &mut ws, &x, b, t).unwrap());
        match &want {
            None => want = Some(got),
            Some(w) => assert!(&got == w, "logits differ at T={threads}"),
        }
    }
    let mut wi = model.workspace(b, t, Mode::Inference).unwrap();
    let plain = model.forward(&mut wi, &x, b, t).unwrap();
    let split: Vec<f32> = want.unwrap().into_iter().map(f32::from_bits).collect();
    let d = plain
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-5, "split forward differs from forward by {d}");
    // Bad input is a typed error, not a panic.
    let pool = Pool::new(2).unwrap();
    let mut ws = model.split_workspace(2, 16, 4).unwrap();
    assert!(matches!(
        model.forward_split(&pool, &mut ws, &x, b, t),
        Err(Error::WorkspaceTooSmall { dim: "batch", .. })
    ));
}

/// Logits of a prefill and `steps` greedy decoding steps.
fn decode(model: &MoETransformer, pool: Option<&Pool>, steps: usize) -> Vec<u32> {
    let mut dec = match pool {
        Some(p) => Decoder::with_pool(model, 32, p).unwrap(),
        None => Decoder::new(model, 32).unwrap(),
    };
    let v = model.config().vocab_size;
    let mut out = bits(dec.prefill(&[3, 1, 4, 1, 5]).unwrap());
    let mut next = 9;
    for _ in 0..steps {
        let l = dec.step(next).unwrap();
        out.extend(bits(l));
        next = (0..v).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32;
    }
    out
}

#[test]
fn pooled_decoding_is_bit_identical_for_any_thread_count() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let model = MoETransformer::new(&cfg, 11).unwrap();
        let one = decode(&model, Some(&Pool::single()), 6);
        for t in [2, 4] {
            let got = decode(&model, Some(&Pool::new(t).unwrap()), 6);
            assert!(
                got == one,
                "decoded logits differ at T={t} (c = {})",
                cfg.hidden_size
            );
        }
        let plain = decode(&model, None, 6);
        let d = plain
            .iter()
            .zip(&one)
            .map(|(&a, &b)| (f32::from_bits(a) - f32::from_bits(b)).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "pooled decoding differs from plain by {d}");
    }
}

#[test]
fn zero_threads_and_bad_micro_batches_are_typed_errors() {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 1).unwrap();
    let tc = TrainConfig::default();
    for t in [0, moe_core::MAX_THREADS + 1, usize::MAX] {
        assert!(matches!(
            Trainer::with_threads(model.clone(), tc, 2, 8, t),
            Err(Error::InvalidParameter {
                param: "threads",
                ..
            })
        ));
    }
    for m in [0, 17] {
        assert!(matches!(
            Trainer::with_pool(model.clone(), tc, 2, 8, Pool::single(), m),
            Err(Error::InvalidParameter {
                param: "micro_batches",
                ..
            })
        ));
    }
    let mut tr = Trainer::with_threads(model, tc, 2, 8, 2).unwrap();
    let x = tokens(24, cfg.vocab_size, 0);
    assert!(matches!(
        tr.train_step(&x, &x, 3, 8),
        Err(Error::WorkspaceTooSmall { dim: "batch", .. })
    ));
    assert!(matches!(
        tr.train_step(&x[..16], &x[..15], 2, 8),
        Err(Error::ShapeMismatch { arg: "targets", .. })
    ));
}

/// Every thread of `pool` reads its own allocation counters, once each:
/// each task waits until all `threads` tasks are running, so no thread can
/// take two.
fn per_thread(pool: &Pool) -> Vec<(ThreadId, AllocSnapshot)> {
    let n = pool.threads();
    let arrived = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<(ThreadId, AllocSnapshot)>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    pool.run(n, &|i| {
        let snap = AllocSnapshot::this_thread();
        arrived.fetch_add(1, Ordering::AcqRel);
        let t0 = Instant::now();
        while arrived.load(Ordering::Acquire) < n && t0.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        *slots[i].lock().unwrap() = Some((std::thread::current().id(), snap));
    });
    let mut v: Vec<_> = slots
        .into_iter()
        .map(|s| s.into_inner().unwrap().unwrap())
        .collect();
    v.sort_by_key(|(id, _)| format!("{id:?}"));
    v
}

#[test]
fn threaded_steps_allocate_nothing_on_any_thread() {
    for precision in [moe_core::Precision::F32, moe_core::Precision::Bf16] {
        let cfg = Config::tiny();
        let mut model = MoETransformer::new(&cfg, 2).unwrap();
        if precision == moe_core::Precision::Bf16 {
            // The second round's split forward and decoder on pre-packed
            // weights (the trainer's clone drops the copy at its first step).
            model.prepack().unwrap();
        }
        let pool = Pool::new(2).unwrap();
        let mut tr = Trainer::with_pool(
            model.clone(),
            TrainConfig {
                precision,
                ..TrainConfig::default()
            },
            8,
            16,
            pool.clone(),
            DEFAULT_MICRO_BATCHES,
        )
        .unwrap();
        let x = tokens(128, cfg.vocab_size, 1);
        let y = tokens(128, cfg.vocab_size, 2);
        let mut ws = model.split_workspace(8, 16, 4).unwrap();
        let mut dec = Decoder::with_pool(&model, 32, &pool).unwrap();
        // Warm-up: lazy one-time state (CPU detection, thread handles).
        tr.train_step(&x, &y, 8, 16).unwrap();
        model.forward_split(&pool, &mut ws, &x, 8, 16).unwrap();
        dec.prefill(&[1, 2, 3]).unwrap();
        per_thread(&pool);
        let main = std::thread::current().id();
        // Workers: read inside a gather region (their own bookkeeping happens
        // after their snapshot, on the caller); the caller: read directly.
        let before = per_thread(&pool);
        let main0 = AllocSnapshot::this_thread();
        for _ in 0..3 {
            tr.train_step(&x, &y, 8, 16).unwrap();
            model.forward_split(&pool, &mut ws, &x, 8, 16).unwrap();
            dec.step(4).unwrap();
        }
        let main_d = AllocSnapshot::this_thread().since(main0);
        let after = per_thread(&pool);
        assert_eq!(
            (main_d.count, main_d.bytes),
            (0, 0),
            "the calling thread allocated"
        );
        assert_eq!(before.len(), 2);
        let mut workers = 0;
        for ((id, a), (id2, b)) in before.iter().zip(&after) {
            assert_eq!(id, id2);
            if *id == main {
                continue;
            }
            workers += 1;
            let d = b.since(*a);
            assert_eq!(
                (d.count, d.bytes),
                (0, 0),
                "worker {id:?} allocated ({precision:?})"
            );
        }
        assert_eq!(workers, 1);
    }
}
