//! Same seed → bit-identical parameters, logits, losses and trained weights.

use moe_core::{Config, MoETransformer, Mode, TrainConfig, Trainer};

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn logits(seed: u64) -> Vec<u32> {
    let m = MoETransformer::new(&Config::tiny(), seed).unwrap();
    let mut ws = m.workspace(2, 32, Mode::Inference).unwrap();
    let x: Vec<u32> = (0..64).map(|i| (i * 31 + 5) % 1000).collect();
    bits(m.forward(&mut ws, &x, 2, 32).unwrap())
}

#[test]
fn same_seed_gives_bit_identical_params_and_logits() {
    let a = MoETransformer::new(&Config::tiny(), 42).unwrap();
    let b = MoETransformer::new(&Config::tiny(), 42).unwrap();
    assert_eq!(bits(a.params().unwrap()), bits(b.params().unwrap()));
    assert_eq!(logits(42), logits(42));
    let c = MoETransformer::new(&Config::tiny(), 43).unwrap();
    assert_ne!(bits(a.params().unwrap()), bits(c.params().unwrap()));
    assert_ne!(logits(42), logits(43));
}

#[test]
fn repeated_forward_on_one_workspace_is_bit_identical() {
    let m = MoETransformer::new(&Config::tiny(), 7).unwrap();
    let mut ws = m.workspace(2, 32, Mode::Inference).unwrap();
    let x: Vec<u32> = (0..64).map(|i| (i * 13 + 1) % 1000).collect();
    let first = bits(m.forward(&mut ws, &x, 2, 32).unwrap());
    // A different shape in between must not leak into the next result.
    m.forward(&mut ws, &x[..8], 1, 8).unwrap();
    assert_eq!(first, bits(m.forward(&mut ws, &x, 2, 32).unwrap()));
}

#[test]
fn training_is_bit_identical_across_runs() {
    let run = || {
        let mut tr = Trainer::new(
            MoETransformer::new(&Config::tiny(), 42).unwrap(),
            TrainConfig::default(),
            2,
            8,
        )
        .unwrap();
        let x: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 1000).collect();
        let y: Vec<u32> = (0..16).map(|i| (i * 11 + 9) % 1000).collect();
        let losses: Vec<u32> = (0..5)
            .map(|_| tr.train_step(&x, &y, 2, 8).unwrap().loss.to_bits())
            .collect();
        (losses, bits(tr.model().params().unwrap()))
    };
    assert_eq!(run(), run());
}
