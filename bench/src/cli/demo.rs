//! `moe demo`: build the tiny model, run one forward pass and print the arena plan.

use std::time::Instant;

use moe_core::{Config, MoETransformer, Mode};

use crate::Error;

/// Runs the demo.
///
/// # Errors
/// moe-core errors.
pub fn run() -> Result<(), Error> {
    let cfg = Config::tiny();
    let t0 = Instant::now();
    let model = MoETransformer::new(&cfg, 42)?;
    let (b, t) = (2, 32);
    let mut ws = model.workspace(b, t, Mode::Inference)?;
    let build = t0.elapsed();
    let tokens: Vec<u32> = (0..(b * t) as u32)
        .map(|i| (i * 37 + 11) % cfg.vocab_size as u32)
        .collect();
    let arena_bytes = ws.bytes();
    let plan = ws.plan();
    let t1 = Instant::now();
    let logits = model.forward(&mut ws, &tokens, b, t)?;
    let first = t1.elapsed();
    let (mut sum, mut max_abs) = (0.0f64, 0.0f32);
    for &x in logits {
        sum += x as f64;
        max_abs = max_abs.max(x.abs());
    }
    println!(
        "tiny model: {} parameters, arena plan {} bytes (b{b} s{t}, inference)",
        cfg.param_counts().total,
        arena_bytes
    );
    println!("build {:?}, first forward {:?}", build, first);
    println!(
        "logits [{b}, {t}, {}]: mean {:.6}, max|x| {:.4}",
        cfg.vocab_size,
        sum / logits.len() as f64,
        max_abs
    );
    for e in plan {
        println!("  {:<10} {:>9} elems x {}", e.name, e.elems, e.copies);
    }
    Ok(())
}
