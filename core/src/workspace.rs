//! [`Workspace`]: what one model shape needs per step, planned up front — the
//! [`crate::arena`] of activation buffers (reset and re-carved every step) and
//! the persistent RoPE `cos`/`sin` table `[max_seq, d/2]` (E9), built once.
//! The arena knows sizes; the table knows the math; this type holds both.

use alloc::vec::Vec;

use crate::arena::{Acts, Arena, Memory, Mode, PlanEntry};
use crate::config::Config;
use crate::error::Result;
use crate::rope::RopeTable;

/// Planned activation memory for one model shape, plus its RoPE table.
#[derive(Debug)]
pub struct Workspace {
    arena: Arena,
    rope: RopeTable,
}

impl Workspace {
    /// Plans and allocates the workspace for steps of up to `max_batch × max_seq` tokens.
    ///
    /// # Errors
    /// Invalid config, `max_batch == 0` / `max_seq == 0` ([`crate::Error::EmptyInput`]),
    /// `max_seq > max_position_embeddings` ([`crate::Error::SeqTooLong`]), size overflow,
    /// or a failed allocation.
    pub fn new(cfg: &Config, max_batch: usize, max_seq: usize, mode: Mode) -> Result<Self> {
        Self::with_memory(cfg, max_batch, max_seq, mode, Memory::default())
    }

    /// Like [`Workspace::new`], with the training memory options `mem`
    /// (activation checkpointing, attention statistics instead of
    /// probabilities; ignored in [`Mode::Inference`]). Every option computes
    /// bit-identical losses and gradients; they trade memory for step time.
    ///
    /// # Errors
    /// As [`Workspace::new`].
    pub fn with_memory(
        cfg: &Config,
        max_batch: usize,
        max_seq: usize,
        mode: Mode,
        mem: Memory,
    ) -> Result<Self> {
        let arena = Arena::new(cfg, max_batch, max_seq, mode, mem)?;
        let rope = RopeTable::new(cfg, max_seq)?;
        Ok(Workspace { arena, rope })
    }

    /// The memory options it was planned with.
    pub fn memory(&self) -> Memory {
        self.arena.memory()
    }

    /// The named buffers of a step at the planned maximum shape.
    pub fn plan(&self) -> Vec<PlanEntry> {
        self.arena.plan()
    }

    /// Bytes of the plan: activation buffers at the maximum shape plus the
    /// per-layer slice table and the RoPE table. This is what `arena_bytes`
    /// reports in the benchmark.
    pub fn bytes(&self) -> usize {
        self.arena.bytes() + self.rope.bytes()
    }

    /// The mode it was planned for.
    pub fn mode(&self) -> Mode {
        self.arena.mode()
    }

    /// Planned maximum batch.
    pub fn max_batch(&self) -> usize {
        self.arena.max_batch()
    }

    /// Planned maximum sequence length.
    pub fn max_seq(&self) -> usize {
        self.arena.max_seq()
    }

    /// The config it was planned for.
    pub fn config(&self) -> &Config {
        self.arena.config()
    }

    /// Chooses how the buffers of the following steps are provided (feature
    /// `heap-per-step`; the benchmark's arena-vs-heap comparison). The plan,
    /// the arithmetic and the results are the same under both policies.
    #[cfg(feature = "heap-per-step")]
    pub fn set_alloc_policy(&mut self, policy: crate::arena::AllocPolicy) {
        self.arena.set_alloc_policy(policy);
    }

    /// The current [`crate::arena::AllocPolicy`] (feature `heap-per-step`).
    #[cfg(feature = "heap-per-step")]
    pub fn alloc_policy(&self) -> crate::arena::AllocPolicy {
        self.arena.alloc_policy()
    }

    /// Checks that a step of `(batch, seq)` for `cfg` fits this workspace.
    pub(crate) fn check(&self, cfg: &Config, batch: usize, seq: usize) -> Result<()> {
        self.arena.check(cfg, batch, seq)
    }

    /// Carves every buffer for a step of `(batch, seq)` (call
    /// [`Workspace::check`] first), not filled (the step writes each before
    /// reading it; see `arena.rs`); with the RoPE table.
    pub(crate) fn carve(&mut self, batch: usize, seq: usize) -> Result<(Acts<'_>, &RopeTable)> {
        let acts = self.arena.carve(batch, seq)?;
        Ok((acts, &self.rope))
    }
}
