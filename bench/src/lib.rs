//! # moe-bench (library)
//!
//! The parts of the `moe` command-line tool that other code (and the
//! integration tests in `bench/tests/`) use directly.
//!
//! * [`checkpoint`] — checkpoint directories (`config.json` + `model.safetensors`,
//!   plus `optimizer.safetensors` for training), atomic writes, typed errors.
//! * [`grads`] — `moe grads`: logits, losses and all gradients of one batch.

pub mod checkpoint;
pub mod grads;
