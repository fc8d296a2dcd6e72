//! Zero heap allocations in steady state: after the model, the workspace and
//! the trainer exist, a forward pass and a training step allocate nothing.
//! A counting global allocator counts this thread's allocations.

use moe_bench::harness::sys::alloc_counter::{AllocSnapshot, CountingAlloc};
use moe_core::{Config, MoETransformer, Mode, Precision, TrainConfig, Trainer};

// The tool's counting allocator (one implementation for the benchmark and the
// tests); its per-thread counters keep other test threads out of the counts.
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// (allocations, bytes) made by `f` on this thread.
fn count<R>(f: impl FnOnce() -> R) -> (u64, u64, R) {
    let before = AllocSnapshot::this_thread();
    let r = f();
    let d = AllocSnapshot::this_thread().since(before);
    (d.count, d.bytes, r)
}

fn tokens(n: usize, v: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + salt) % v as u32)
        .collect()
}

#[test]
fn the_counter_sees_allocations() {
    // The instrument itself must be able to fail.
    let (n, bytes, v) = count(|| vec![0u8; 1000]);
    assert_eq!(v.len(), 1000);
    assert!(n >= 1 && bytes >= 1000);
}

#[test]
fn forward_allocates_nothing_at_several_shapes() {
    let cases = [Config::tiny(), Config::scale_256()]
        .into_iter()
        .flat_map(|c| [(c, Precision::F32), (c, Precision::Bf16)]);
    for (cfg, precision) in cases {
        let model = MoETransformer::new_with(&cfg, 42, precision).unwrap();
        let mut ws = model.workspace(8, 64, Mode::Inference).unwrap();
        let shapes = [(1, 8), (2, 32), (8, 64), (2, 16), (1, 1), (8, 64)];
        let inputs: Vec<Vec<u32>> = shapes
            .iter()
            .map(|&(b, t)| tokens(b * t, cfg.vocab_size, 3))
            .collect();
        // Warm-up: lazy one-time state (e.g. matmul CPU detection) happens here.
        model.forward(&mut ws, &inputs[0], 1, 8).unwrap();
        for _ in 0..3 {
            for (&(b, t), x) in shapes.iter().zip(&inputs) {
                let (n, bytes, sum) =
                    count(|| model.forward(&mut ws, x, b, t).unwrap().iter().sum::<f32>());
                assert!(sum.is_finite());
                assert_eq!(
                    (n, bytes),
                    (0, 0),
                    "forward b{b} s{t} (c = {}, {precision:?}) allocated",
                    cfg.hidden_size
                );
            }
        }
    }
}

#[test]
fn prepacked_forward_allocates_nothing() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let mut model = MoETransformer::new(&cfg, 42).unwrap();
        model.prepack().unwrap();
        // Repacking reuses the buffer (e.g. after a weight update).
        let (n, bytes, r) = count(|| model.prepack());
        r.unwrap();
        assert_eq!((n, bytes), (0, 0), "repack allocated");
        assert!(model.is_prepacked());
        let mut ws = model.workspace(8, 64, Mode::Inference).unwrap();
        let shapes = [(1, 8), (2, 32), (8, 64), (1, 1), (1, 5)];
        let inputs: Vec<Vec<u32>> = shapes
            .iter()
            .map(|&(b, t)| tokens(b * t, cfg.vocab_size, 3))
            .collect();
        model.forward(&mut ws, &inputs[0], 1, 8).unwrap();
        for _ in 0..2 {
            for (&(b, t), x) in shapes.iter().zip(&inputs) {
                let (n, bytes, sum) =
                    count(|| model.forward(&mut ws, x, b, t).unwrap().iter().sum::<f32>());
                assert!(sum.is_finite());
                assert_eq!(
                    (n, bytes),
                    (0, 0),
                    "prepacked forward b{b} s{t} (c = {}) allocated",
                    cfg.hidden_size
                );
            }
        }
    }
}

#[test]
fn train_step_allocates_nothing() {
    // f32 and mixed precision (bf16 copy refreshed in the AdamW pass, bf16
    // saved probabilities).
    let precisions = [moe_core::Precision::F32, moe_core::Precision::Bf16];
    for (cfg, precision) in [Config::tiny(), Config::scale_256()]
        .into_iter()
        .flat_map(|c| precisions.map(|p| (c, p)))
    {
        let model = MoETransformer::new(&cfg, 42).unwrap();
        let tc = TrainConfig {
            precision,
            ..TrainConfig::default()
        };
        let mut tr = Trainer::new(model, tc, 4, 16).unwrap();
        let shapes = [(2, 8), (4, 16), (1, 3)];
        let data: Vec<(Vec<u32>, Vec<u32>)> = shapes
            .iter()
            .map(|&(b, t)| {
                (
                    tokens(b * t, cfg.vocab_size, 1),
                    tokens(b * t, cfg.vocab_size, 5),
                )
            })
            .collect();
        tr.train_step(&data[0].0, &data[0].1, 2, 8).unwrap();
        for _ in 0..3 {
            for (&(b, t), (x, y)) in shapes.iter().zip(&data) {
                let (n, bytes, st) = count(|| tr.train_step(x, y, b, t).unwrap());
                assert!(st.loss.is_finite());
                assert_eq!(
                    (n, bytes),
                    (0, 0),
                    "train_step b{b} s{t} (c = {}, {precision:?}) allocated",
                    cfg.hidden_size
                );
            }
        }
    }
}

#[test]
fn decoding_a_token_allocates_nothing() {
    for precision in [Precision::F32, Precision::Bf16] {
        for pooled in [false, true] {
            decode_allocates_nothing(precision, pooled);
        }
    }
}

fn decode_allocates_nothing(precision: Precision, pooled: bool) {
    use moe_core::{ChaCha8Rng, Decoder, Pool, SamplingStrategy, SeedableRng};
    let cfg = if pooled {
        Config::scale_256()
    } else {
        Config::tiny()
    };
    let model = MoETransformer::new_with(&cfg, 42, precision).unwrap();
    let pool = Pool::new(2).unwrap();
    let mut dec = if pooled {
        Decoder::with_pool(&model, 64, &pool).unwrap()
    } else {
        Decoder::new(&model, 64).unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let v = model.config().vocab_size;
    let strategies = [
        SamplingStrategy::Greedy,
        SamplingStrategy::Temperature(0.9),
        SamplingStrategy::TopK {
            k: 40,
            temperature: 1.0,
        },
        SamplingStrategy::TopP {
            p: 0.9,
            temperature: 1.0,
        },
    ];
    let logits = dec.prefill(&[1, 2, 3, 4]).unwrap();
    let mut next = strategies[0]
        .pick_token(&logits[3 * v..], &mut rng)
        .unwrap();
    for i in 0..40 {
        let s = strategies[i % strategies.len()];
        let (n, bytes, t) = count(|| {
            let l = dec.step(next).unwrap();
            s.pick_token(l, &mut rng).unwrap()
        });
        assert_eq!(
            (n, bytes),
            (0, 0),
            "decode step {i} with {s:?} ({precision:?}, pool {pooled}) allocated"
        );
        next = t;
    }
}

#[test]
fn gemm_calls_allocate_nothing() {
    use moe_core::kernels::gemm::portable::{gemm, gemm_packed_b, pack_b, packed_len};
    let shapes = [
        (64, 64, 64),
        (1, 1000, 64),
        (3, 100, 300),
        (16, 1000, 64),
        (256, 64, 16),
        (300, 600, 300),
    ];
    let mut bufs = Vec::new();
    for &(m, n, k) in &shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let c = vec![0.0f32; m * n];
        let mut pk = vec![0.0f32; packed_len(k, n)];
        pack_b(k, n, &b, 1, k, &mut pk);
        bufs.push((m, n, k, a, b, c, pk));
    }
    let (n_allocs, bytes, ()) = count(|| {
        for (m, n, k, a, b, c, pk) in bufs.iter_mut() {
            let (m, n, k) = (*m, *n, *k);
            gemm(m, n, k, 1.0, a, k, 1, b, n, 1, 0.0, c, n, 1);
            // op(A) = Aᵀ of the same buffer viewed as [k, m] (values irrelevant).
            gemm(m, n, k, 1.0, a, 1, m, b, 1, k, 1.0, c, n, 1);
            gemm_packed_b(m, n, k, 1.0, a, k, 1, pk, 1.0, c, n, 1);
        }
    });
    assert_eq!((n_allocs, bytes), (0, 0), "gemm allocated");
}

#[test]
fn sampling_with_planned_scratch_allocates_nothing() {
    use moe_core::{ChaCha8Rng, SamplingStrategy, SeedableRng};
    let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.1).collect();
    let mut probs = vec![0.0f32; logits.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for s in [
        SamplingStrategy::Temperature(0.9),
        SamplingStrategy::TopK {
            k: 40,
            temperature: 1.0,
        },
        SamplingStrategy::TopP {
            p: 0.9,
            temperature: 1.0,
        },
    ] {
        let (n, bytes, _) = count(|| s.pick_token_with(&logits, &mut probs, &mut rng).unwrap());
        assert_eq!((n, bytes), (0, 0), "{s:?} with scratch allocated");
    }
}
