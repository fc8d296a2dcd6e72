//! The README's "Using the core in your program", verbatim: build the tiny
//! model, run a forward pass in its planned arena, take one training step and
//! sample 16 tokens. `cargo run -p moe-core --example embed`.
//!
//! `moe-tests`' `readme::embed_example_is_the_readme_snippet` keeps this file and
//! the README identical, and the README block is a doctest of moe-core.

use moe_core::{
    ChaCha8Rng, Config, MoETransformer, Mode, SamplingStrategy, SeedableRng, TrainConfig, Trainer,
};

fn main() -> Result<(), moe_core::Error> {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 42)?; // deterministic init from a seed
    let mut ws = model.workspace(2, 32, Mode::Inference)?; // the arena: planned once
    let tokens: Vec<u32> = (0..64).collect();
    let logits = model.forward(&mut ws, &tokens, 2, 32)?; // [2, 32, 1000], no allocation
    assert_eq!(logits.len(), 2 * 32 * cfg.vocab_size);

    let mut trainer = Trainer::new(model, TrainConfig::default(), 2, 8)?;
    let stats = trainer.train_step(&tokens[..16], &tokens[1..17], 2, 8)?;
    println!(
        "loss {} (ce {}, aux {})",
        stats.loss, stats.ce_loss, stats.aux_loss
    );

    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let strategy = SamplingStrategy::TopP {
        p: 0.9,
        temperature: 0.8,
    };
    let out = moe_core::generate(trainer.model(), &[1, 2, 3], 16, strategy, &mut rng)?;
    assert_eq!(out.len(), 16);
    Ok(())
}
