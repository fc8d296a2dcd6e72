//! Shared helpers of the moe-rs test suite.

pub mod golden;
pub mod reference;

use moe_core::{Config, Dims};

/// The [`Dims`] a router call reads (`n, c, e, k`): `n` rows of width `c`
/// routed over `e` experts, top-`k` (the other fields are `Config::tiny()`'s).
pub fn router_dims(n: usize, c: usize, e: usize, k: usize) -> Dims {
    let cfg = Config {
        hidden_size: c,
        num_local_experts: e,
        num_experts_per_tok: k,
        ..Config::tiny()
    };
    Dims::new(&cfg, n, 1)
}

/// The README's code blocks compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
