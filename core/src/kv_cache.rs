//! The KV cache of a decoding session, `k`, `v: [L, capacity, kv·d]`, and
//! [`KvSource`], where attention (E10) reads one sequence's keys and values
//! from: the fused `qkv` rows of the current step or a layer of the cache.

use alloc::vec::Vec;

use crate::config::{Config, Dims};
use crate::error::{Error, Result};
use crate::layout::alloc_zeroed;

/// Where one sequence's keys and values live: position `j`'s key of KV head
/// `g` is `k[j·stride + k_off + g·d ..][..d]`, its value likewise at `v_off`.
/// Either the fused `qkv` rows of the current step or a KV cache.
#[derive(Debug, Clone, Copy)]
pub struct KvSource<'a> {
    /// Key storage.
    pub k: &'a [f32],
    /// Value storage.
    pub v: &'a [f32],
    /// Elements between consecutive positions.
    pub stride: usize,
    /// Offset of KV head 0's key within a position.
    pub k_off: usize,
    /// Offset of KV head 0's value within a position.
    pub v_off: usize,
}

/// Keys and values of every layer for the positions decoded so far:
/// `k`, `v: [L, capacity, kv·d]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    cfg: Config,
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for up to `capacity` positions.
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for capacity 0, [`Error::SeqTooLong`] beyond
    /// `max_position_embeddings`, overflow or allocation failure.
    pub fn new(cfg: &Config, capacity: usize) -> Result<Self> {
        cfg.validate()?;
        if capacity == 0 {
            return Err(Error::EmptyInput { arg: "capacity" });
        }
        if capacity > cfg.max_position_embeddings {
            return Err(Error::SeqTooLong {
                seq: capacity,
                max: cfg.max_position_embeddings,
            });
        }
        let per = cfg.num_key_value_heads * cfg.head_dim;
        let len = cfg
            .num_hidden_layers
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(per))
            .ok_or(Error::Overflow { what: "KV cache" })?;
        Ok(KvCache {
            cfg: *cfg,
            k: alloc_zeroed(len)?,
            v: alloc_zeroed(len)?,
            len: 0,
            capacity,
        })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (the memory is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    pub(crate) fn check(&self, cfg: &Config) -> Result<()> {
        if self.cfg != *cfg {
            return Err(Error::WorkspaceMismatch {
                what: "the KV cache was made for a different Config",
            });
        }
        Ok(())
    }

    /// Copies the (RoPE'd) keys and values of `qkv: [t, q]` into layer `l` at
    /// positions `len .. len + t`; returns the layer's cache as a key/value source.
    pub(crate) fn append(&mut self, l: usize, qkv: &[f32], dm: &Dims) -> KvSource<'_> {
        let per = dm.kv * dm.d;
        let hd = dm.h * dm.d;
        let base = l * self.capacity * per;
        for (i, row) in qkv.chunks_exact(dm.q).take(dm.t).enumerate() {
            let at = base + (self.len + i) * per;
            self.k[at..at + per].copy_from_slice(&row[hd..hd + per]);
            self.v[at..at + per].copy_from_slice(&row[hd + per..hd + 2 * per]);
        }
        let layer = base..base + self.capacity * per;
        KvSource {
            k: &self.k[layer.clone()],
            v: &self.v[layer],
            stride: per,
            k_off: 0,
            v_off: 0,
        }
    }

    /// Marks `t` more positions as held (after every layer appended them).
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
