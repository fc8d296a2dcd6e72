//! moe-core as a `no_std` + `alloc` library: everything below `main` uses
//! only `core`, `alloc` and `moe_core` — no `std` item — and builds with the
//! crate's default features off:
//!
//! ```sh
//! cargo run -p moe-core --no-default-features --example no_std
//! ```
//!
//! (`std` is linked only to give this example binary an entry point, a heap
//! and `println!`; a firmware build would supply its own `#[global_allocator]`
//! and panic handler instead.)
#![no_std]

extern crate alloc;
extern crate std;

use alloc::vec::Vec;

use moe_core::{Config, Error, MoETransformer, Mode};

/// One greedy next-token prediction per position of a forward pass, and the
/// arena size it used.
fn predict(tokens: &[u32]) -> Result<(Vec<u32>, usize), Error> {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 42)?;
    let (b, t) = (1, tokens.len());
    let mut ws = model.workspace(b, t, Mode::Inference)?;
    let logits = model.forward(&mut ws, tokens, b, t)?;
    let next = logits
        .chunks_exact(cfg.vocab_size)
        .map(|row| {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect();
    Ok((next, logits.len()))
}

fn main() {
    let tokens: Vec<u32> = (1..=8).collect();
    match predict(&tokens) {
        Ok((next, n_logits)) => {
            assert_eq!(next.len(), tokens.len());
            std::println!("{n_logits} logits; greedy next tokens {next:?}");
        }
        Err(e) => {
            std::eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
