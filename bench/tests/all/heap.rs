//! moe-core's `heap-per-step` allocation policy (the arena-vs-heap
//! scenarios): the same arithmetic, bit for bit, as the arena.

use moe_core::{AllocPolicy, Config, MoETransformer, Mode, TrainConfig, Trainer};

fn tokens(n: usize, shift: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7 + shift) % 1000) as u32).collect()
}

#[test]
fn forward_is_bit_identical_under_both_policies() {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 42).unwrap();
    let x = tokens(2 * 32, 0);
    let mut ws = model.workspace(2, 32, Mode::Inference).unwrap();
    assert_eq!(ws.alloc_policy(), AllocPolicy::Arena);
    let arena: Vec<f32> = model.forward(&mut ws, &x, 2, 32).unwrap().to_vec();
    ws.set_alloc_policy(AllocPolicy::HeapPerStep);
    assert_eq!(ws.alloc_policy(), AllocPolicy::HeapPerStep);
    // Twice: the second step frees the first step's buffers.
    for _ in 0..2 {
        let heap = model.forward(&mut ws, &x, 2, 32).unwrap();
        assert!(arena
            .iter()
            .zip(heap)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // A smaller step than planned, then back to the arena.
    let small = model.forward(&mut ws, &x[..16], 2, 8).unwrap().to_vec();
    ws.set_alloc_policy(AllocPolicy::Arena);
    let small_arena = model.forward(&mut ws, &x[..16], 2, 8).unwrap();
    assert!(small
        .iter()
        .zip(small_arena)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn train_steps_are_bit_identical_under_both_policies() {
    let cfg = Config::tiny();
    let (x, y) = (tokens(16, 0), tokens(16, 1));
    let run = |policy| {
        let model = MoETransformer::new(&cfg, 42).unwrap();
        let mut t = Trainer::new(model, TrainConfig::default(), 2, 8).unwrap();
        t.set_alloc_policy(policy);
        let losses: Vec<u32> = (0..3)
            .map(|_| t.train_step(&x, &y, 2, 8).unwrap().loss.to_bits())
            .collect();
        let params: Vec<u32> = t
            .model()
            .params()
            .unwrap()
            .iter()
            .map(|p| p.to_bits())
            .collect();
        (losses, params)
    };
    assert_eq!(run(AllocPolicy::Arena), run(AllocPolicy::HeapPerStep));
}
