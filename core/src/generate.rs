//! Inference (FR-08): [`Decoder`], a decoding session over a KV cache, and
//! `generate` — the one entry point — with its four thin wrappers. Token
//! choice is [`crate::sampling`]; the cache is [`crate::kv_cache`].

use alloc::vec::Vec;

use rand_core::RngCore;

use crate::arena::Mode;
use crate::config::TokenId;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::MoETransformer;
use crate::parallel::Pool;
use crate::sampling::SamplingStrategy;
use crate::workspace::Workspace;

/// A decoding session: an inference workspace (batch 1) and a KV cache of
/// `capacity` positions. After construction, `prefill` and `step` allocate nothing.
#[derive(Debug)]
pub struct Decoder<'m> {
    model: &'m MoETransformer,
    ws: Workspace,
    cache: KvCache,
    /// Installed around every forward: decoding's GEMVs split over its threads.
    pool: Option<Pool>,
}

impl<'m> Decoder<'m> {
    /// A session for sequences of up to `capacity` tokens.
    pub fn new(model: &'m MoETransformer, capacity: usize) -> Result<Self> {
        let cache = KvCache::new(model.config(), capacity)?;
        let ws = model.workspace(1, capacity, Mode::Inference)?;
        Ok(Decoder {
            model,
            ws,
            cache,
            pool: None,
        })
    }

    /// [`Decoder::new`] whose forwards run on `pool`: each one-row GEMV
    /// (`qkv`, `o_proj`, the experts' `w13`/`w2`, `lm_head`) is split into
    /// fixed column blocks ([`crate::linear::GEMV_CHUNKS`]) spread over the
    /// pool's threads. The blocks do not depend on the thread count, so the
    /// logits are bit-identical for every pool size (including one thread).
    pub fn with_pool(model: &'m MoETransformer, capacity: usize, pool: &Pool) -> Result<Self> {
        let mut d = Self::new(model, capacity)?;
        d.pool = Some(pool.clone());
        Ok(d)
    }

    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing has been decoded.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Bytes of the workspace plan plus the cache.
    pub fn bytes(&self) -> usize {
        self.ws.bytes() + self.cache.bytes()
    }

    /// Starts over (keeps the memory).
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Appends `tokens` and returns their logits `[tokens.len(), vocab]`.
    pub fn prefill(&mut self, tokens: &[TokenId]) -> Result<&[f32]> {
        let Decoder {
            model,
            ws,
            cache,
            pool,
        } = self;
        match pool {
            Some(p) => p.install(|| model.forward_cached(ws, tokens, cache)),
            None => model.forward_cached(ws, tokens, cache),
        }
    }

    /// Appends one token and returns the logits `[vocab]` of its position.
    pub fn step(&mut self, token: TokenId) -> Result<&[f32]> {
        self.prefill(&[token])
    }
}

/// Generates until the sequence holds `max_len` tokens (prompt included) and
/// returns the whole sequence. The single entry point of inference: prefill
/// the prompt into a KV cache, then pick and append one token at a time.
///
/// # Errors
/// [`Error::EmptyInput`] for an empty prompt; [`Error::InvalidParameter`] for
/// `max_len < prompt.len()` or a bad strategy; [`Error::SeqTooLong`] for
/// `max_len > max_position_embeddings`; token ids out of range; non-finite logits.
pub fn generate<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    strategy: SamplingStrategy,
    rng: &mut R,
) -> Result<Vec<TokenId>> {
    generate_impl(model, prompt, max_len, strategy, rng, None)
}

/// [`generate`] decoding on `pool` ([`Decoder::with_pool`]): the same tokens
/// for every pool size.
///
/// # Errors
/// As [`generate`].
pub fn generate_with<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    strategy: SamplingStrategy,
    rng: &mut R,
    pool: &Pool,
) -> Result<Vec<TokenId>> {
    generate_impl(model, prompt, max_len, strategy, rng, Some(pool))
}

fn generate_impl<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    strategy: SamplingStrategy,
    rng: &mut R,
    pool: Option<&Pool>,
) -> Result<Vec<TokenId>> {
    strategy.validate()?;
    if prompt.is_empty() {
        return Err(Error::EmptyInput { arg: "prompt" });
    }
    if max_len < prompt.len() {
        return Err(Error::InvalidParameter {
            param: "max_len",
            expected: ">= prompt length",
            actual: max_len as f64,
        });
    }
    let max = model.config().max_position_embeddings;
    if max_len > max {
        return Err(Error::SeqTooLong { seq: max_len, max });
    }
    crate::model::check_tokens("prompt", prompt, prompt.len(), model.config().vocab_size)?;
    let mut out = Vec::new();
    out.try_reserve_exact(max_len)
        .map_err(|_| Error::AllocationFailed { bytes: max_len * 4 })?;
    out.extend_from_slice(prompt);
    if max_len == prompt.len() {
        return Ok(out);
    }
    let v = model.config().vocab_size;
    let mut dec = match pool {
        Some(p) => Decoder::with_pool(model, max_len, p)?,
        None => Decoder::new(model, max_len)?,
    };
    // Planned sampling scratch `[v]`: each token's weights are computed once into it.
    let mut probs = crate::layout::alloc_zeroed(v)?;
    let logits = dec.prefill(prompt)?;
    let mut next = strategy.pick_token_with(&logits[(prompt.len() - 1) * v..], &mut probs, rng)?;
    loop {
        out.push(next);
        if out.len() == max_len {
            return Ok(out);
        }
        next = strategy.pick_token_with(dec.step(next)?, &mut probs, rng)?;
    }
}

/// `generate` with [`SamplingStrategy::Greedy`] (draws nothing from `rng`).
pub fn generate_greedy<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    rng: &mut R,
) -> Result<Vec<TokenId>> {
    generate(model, prompt, max_len, SamplingStrategy::Greedy, rng)
}

/// `generate` with [`SamplingStrategy::Temperature`].
pub fn generate_sample<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    temperature: f32,
    rng: &mut R,
) -> Result<Vec<TokenId>> {
    generate(
        model,
        prompt,
        max_len,
        SamplingStrategy::Temperature(temperature),
        rng,
    )
}

/// `generate` with [`SamplingStrategy::TopK`].
pub fn generate_topk<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    k: usize,
    temperature: f32,
    rng: &mut R,
) -> Result<Vec<TokenId>> {
    generate(
        model,
        prompt,
        max_len,
        SamplingStrategy::TopK { k, temperature },
        rng,
    )
}

/// `generate` with [`SamplingStrategy::TopP`].
pub fn generate_topp<R: RngCore + ?Sized>(
    model: &MoETransformer,
    prompt: &[TokenId],
    max_len: usize,
    p: f32,
    temperature: f32,
    rng: &mut R,
) -> Result<Vec<TokenId>> {
    generate(
        model,
        prompt,
        max_len,
        SamplingStrategy::TopP { p, temperature },
        rng,
    )
}
