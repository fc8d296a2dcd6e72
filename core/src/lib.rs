//! # moe-core
//!
//! A Mixture-of-Experts Transformer (Mixtral-style) written from scratch:
//! forward pass, hand-derived backward pass, cross-entropy + load-balancing
//! loss, AdamW, and sampling — `#![no_std]` + `alloc`, with every activation
//! buffer planned up front in a [`Workspace`] arena, so that the steady-state
//! hot path makes no heap allocation.
//!
//! ```text
//! tokens [b,t]
//!   │ embedding (E4)
//!   ▼
//! x [b·t, c] ──┬─────────────────────────────┐
//!   │          RMSNorm (E5) → q,k,v (E6) → RoPE (E9) → causal MQA (E10) → o_proj
//!   │ ◄────────┘ residual
//!   ├──────────┬─────────────────────────────┐
//!   │          RMSNorm → router softmax/top-k (E12) → SwiGLU experts (E8) → combine (E11)
//!   │ ◄────────┘ residual                                    × L layers
//!   ▼
//! RMSNorm → lm_head → logits [b, t, v] → CE (E14) + α·aux (E13)
//! ```
//!
//! The numbers E1–E32 refer to `docs/equations.md` (E1–E21 the forward
//! units and sampling, E22–E32 their gradients).
//!
//! ```
//! use moe_core::{Config, MoETransformer, Mode};
//! let cfg = Config::tiny();
//! let model = MoETransformer::new(&cfg, 42)?;
//! let mut ws = model.workspace(1, 8, Mode::Inference)?;
//! let logits = model.forward(&mut ws, &[1, 2, 3, 4, 5, 6, 7, 8], 1, 8)?;
//! assert_eq!(logits.len(), 8 * cfg.vocab_size);
//! # Ok::<(), moe_core::Error>(())
//! ```
#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arena;
pub mod attention;
pub mod config;
pub mod embedding;
pub mod error;
pub mod generate;
#[allow(unsafe_code)]
pub mod kernels;
pub mod kv_cache;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod model;
pub mod moe;
pub mod optim;
#[allow(unsafe_code)]
pub mod parallel;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod sampling;
pub mod swiglu;
pub mod train;
pub mod workspace;

#[cfg(feature = "heap-per-step")]
pub use arena::AllocPolicy;
pub use arena::{AttnMemory, Memory, Mode, PlanEntry, Recompute};
pub use config::{Config, Dims, ParamCounts, TokenId};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_greedy, generate_sample, generate_topk, generate_topp, generate_with,
    Decoder,
};
pub use kv_cache::KvCache;
pub use layout::{ExpertRanges, LayerLayout, Layout, TensorInfo};
pub use linear::Weight;
pub use loss::IGNORE_INDEX;
pub use model::{Bf16ParamsMut, Losses, MoETransformer, Precision, SplitWorkspace, FORWARD_SPLITS};
pub use optim::{AdamW, AdamWConfig, LrSchedule};
pub use parallel::{available_threads, Pool, MAX_THREADS};
pub use rand_chacha::ChaCha8Rng;
pub use rand_core::{RngCore, SeedableRng};
pub use sampling::SamplingStrategy;
pub use train::{StepStats, TrainConfig, Trainer, DEFAULT_MICRO_BATCHES, MAX_MICRO_BATCHES};
pub use workspace::Workspace;

/// The README's Rust snippet ("Using the core in your program"), compiled and
/// run as a doctest so that it cannot rot; `examples/embed.rs` is the same code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
