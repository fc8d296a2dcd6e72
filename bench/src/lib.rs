//! # moe-bench (library)
//!
//! The parts of the `moe` command-line tool that other code (and the
//! integration tests in `bench/tests/`) use directly.
//!
//! * [`checkpoint`] — checkpoint directories (`config.json` + `model.safetensors`,
//!   plus `optimizer.safetensors` for training), atomic writes, typed errors.
//! * [`grads`] — `moe grads`: logits, losses and all gradients of one batch.
//! * [`corpus`] — the byte-level tokenizer and the train/held-out text corpus.
//! * [`train`] — `moe train`: training on a text file, loss.csv, loss plot, checkpoints.
//! * [`generate`] — `moe generate`: text from a checkpoint.
//! * [`stress`] — `moe stress`: numerical stability under extreme inputs (`docs/stability.md`).

pub mod checkpoint;
pub mod corpus;
pub mod generate;
pub mod grads;
pub mod stress;
pub mod train;
