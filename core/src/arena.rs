//! The arena: every activation buffer a forward (and, in training mode,
//! a backward) pass needs, planned from `(config, max_batch, max_seq, mode)`,
//! allocated once (one buffer per element type, filled once with a poison
//! value) and carved into named slices per step, never filled again.
//! The arena knows sizes, not math: the RoPE table that a step also needs is
//! held next to it by `Workspace` (`workspace.rs`).
//!
//! Every buffer is one line of the `buffers!` table below, which generates the
//! plan entries (names, order, sizes), the `LayerActs` / `GradActs` / `Acts`
//! structs and the carving; no buffer is picked by position.
//!
//! Lifetimes make the arena discipline a compile-time fact: `Arena::carve`
//! takes `&mut self` and hands out slices that borrow the workspace, so no
//! slice of step `s` can be alive when step `s+1` carves again. The store is
//! sized for the plan at its maximum shape, so a request larger than the plan
//! is an `Err`, never a reallocation. A step writes every buffer before it
//! reads it (accumulators are zeroed by the code that accumulates, at the
//! start of the step), so carving costs no fill; a buffer read before it is
//! written reads NaN (or `u32::MAX`) on a new workspace, which the tests' first
//! step on a fresh workspace would catch.
//!
//! Buffers (elements; `n = b·t`, `q = (h+2kv)·d`, `s = n·k` routed slots;
//! "per layer" buffers exist once per layer in training mode and once in all
//! in inference mode, where layers reuse them):
//!
//! | buffer | shape | per layer | used by |
//! |---|---|---|---|
//! | `resid` | `[n, c]` | | residual stream |
//! | `x_in`, `x_mid` | `[n, c]` | yes | RMSNorm inputs (saved) |
//! | `rstd1`, `rstd2` | `[n]` | yes | RMSNorm `1/rms` (saved) |
//! | `xn1`, `xn2` | `[n, c]` | yes | normed inputs of attention / MoE |
//! | `qkv` | `[n, q]` | yes | q, k after RoPE, v |
//! | `ckpt` | `[L−1, n, c]` (train, `Recompute::Layers`; else empty) | | each layer's input but the last's |
//! | `probs` | `[b, h, t, t]` (train, saved) / `[t]` (train, LSE) / `[h, t, t]` (train, saved bf16: one sequence's f32 rows) / `[max_seq]` (infer: one score row) | yes | attention probabilities |
//! | `probs16` | `[b, h, t, t]` bf16 (train, `AttnMemory::SavedBf16`; else empty) | yes | attention probabilities, 2 bytes each |
//! | `row_max`, `row_inv` | `[b, h, t]` (train, `AttnMemory::Lse`; else empty) | yes | softmax row statistics |
//! | `att` | `[n, h·d]` | yes | attention output before `o_proj` |
//! | `rprobs` | `[n, e]` | yes | router probabilities |
//! | `topk_idx`, `topk_w` | `[n, k]` | yes | chosen experts, renormalised weights |
//! | `counts`, `offsets` | `[e]`, `[e+1]` | yes | slots per expert (u32) |
//! | `slot_row`, `slot_of` | `[s]` | yes | row of each slot; slot of each (row, choice) (u32) |
//! | `xg`, `ye` | `[s, c]` | yes | gathered expert inputs / outputs |
//! | `h13` | `[s, 2f]` | yes | `[x·w1ᵀ, x·w3ᵀ]` pre-activations |
//! | `act` | `[s, f]` | yes | `silu(h1) ⊙ h3` |
//! | `xf`, `rstd_f` | `[n, c]`, `[n]` | | final norm output / `1/rms` |
//! | `logits` | `[n, v]` | | output; in training overwritten by `dL/dlogits` |
//! | training only: `dresid`, `dxn` `[n,c]`, `dqkv` `[n,q]`, `datt` `[n,h·d]`, `dprobs` `[t,t]` (saved) / `[t]` (LSE), `drprobs` `[n,e]`, `dtopk_w` `[n,k]` | | | backward scratch, shared by all layers |
//!
//! In-place gradients: the cross-entropy gradient overwrites `logits`, and the
//! MoE backward overwrites `ye`, `act`, `h13`, `xg` with their gradients (each
//! is dead once read), so there are no `dlogits`, `dye`, `dact`, `dh13`, `dxg`.
//! "Per layer" buffers are one copy in all under `Recompute::Layers`.

use alloc::vec::Vec;
use bumpalo::Bump;

use crate::config::{Config, Dims};
use crate::error::{Error, Result};

/// What the workspace is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward only; layers share one set of activation buffers.
    Inference,
    /// Forward with every layer's activations saved, plus backward scratch.
    Training,
}

/// What a training workspace keeps of each layer between forward and backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recompute {
    /// Every layer's activations are saved (one copy of the `layer` buffers per layer).
    #[default]
    None,
    /// Activation checkpointing: the forward saves only each layer's input
    /// `x_in` (`ckpt: [L−1, n, c]`; the last layer's activations stay in the
    /// buffers); the backward recomputes one layer at a time into a single
    /// copy of the `layer` buffers, then differentiates it.
    /// Same arithmetic in the same order: bit-identical gradients.
    Layers,
}

/// What a training workspace keeps of attention for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttnMemory {
    /// The probabilities `P: [b, h, t, t]` (memory grows as `t²`).
    #[default]
    Saved,
    /// Each row's max `m_i` and `1/Σ_j exp(s_ij − m_i)` (`[b, h, t]` each, the
    /// log-sum-exp in two parts); the backward recomputes `P` one row at a time
    /// (E33), bit-identically. Memory grows as `t`.
    Lse,
    /// The probabilities saved as bf16 (`probs16: [b, h, t, t]`, 2 bytes each,
    /// rounded to nearest even from the forward's f32 rows; mixed-precision
    /// training). The forward computes one sequence's rows in f32 into
    /// `probs: [h, t, t]` (its output `att` uses the f32 values) and rounds
    /// them into `probs16`; the backward widens one row at a time. Gradients
    /// change by the rounding (cosine ≥ 0.99999 to [`AttnMemory::Saved`],
    /// docs/tradeoffs.md §8); memory still grows as `t²`, at half the bytes.
    SavedBf16,
}

/// The memory options of a workspace, chosen when it is built
/// ([`crate::Workspace::with_memory`]). Inference workspaces ignore them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Activation checkpointing.
    pub recompute: Recompute,
    /// Attention probabilities saved or recomputed.
    pub attention: AttnMemory,
}

impl Memory {
    /// The default: every layer's activations and the attention probabilities saved.
    pub const DEFAULT: Memory = Memory {
        recompute: Recompute::None,
        attention: AttnMemory::Saved,
    };
    /// The smallest training plan: [`Recompute::Layers`] and [`AttnMemory::Lse`].
    pub const LOW: Memory = Memory {
        recompute: Recompute::Layers,
        attention: AttnMemory::Lse,
    };
}

/// Element type of a planned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `f32`.
    F32,
    /// `u32` (routing indices and counts).
    U32,
    /// bf16 bit patterns (`u16`; saved activations of mixed precision).
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// One named buffer of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    /// Name, as in the module table.
    pub name: &'static str,
    /// Element type (both are 4 bytes).
    pub dtype: Dtype,
    /// Elements in one copy.
    pub elems: usize,
    /// Copies (number of layers for per-layer buffers in training mode, else 1).
    pub copies: usize,
}

impl PlanEntry {
    /// Bytes of all copies (saturating; a plan that big is refused when built).
    /// A bf16 copy is counted rounded up to 4 bytes (the alignment the next
    /// 4-byte buffer needs in the arena).
    pub fn bytes(&self) -> usize {
        let one = self.elems.saturating_mul(self.dtype.size());
        let one = one.saturating_add(3) & !3;
        one.saturating_mul(self.copies)
    }
}

/// An element type a buffer can hold (4 bytes, or 2 for bf16).
trait Elem: Copy + 'static {
    const DTYPE: Dtype;
    /// What a heap-per-step buffer starts as.
    #[cfg(feature = "heap-per-step")]
    const ZERO: Self;
    /// What a new arena holds ([`Store`]): NaN for `f32` and bf16, `u32::MAX`.
    const POISON: Self;
    /// The not yet carved rest of this type's store.
    fn rest<'s, 'a>(t: &'s mut StoreTake<'a>) -> &'s mut &'a mut [Self];
    /// This type's next pre-allocated buffer of a heap-per-step carve.
    #[cfg(feature = "heap-per-step")]
    fn from_heap<'a>(h: &mut HeapTake<'a>) -> Option<&'a mut [Self]>;
}

impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
    #[cfg(feature = "heap-per-step")]
    const ZERO: Self = 0.0;
    const POISON: Self = f32::NAN;
    fn rest<'s, 'a>(t: &'s mut StoreTake<'a>) -> &'s mut &'a mut [Self] {
        &mut t.f32s
    }
    #[cfg(feature = "heap-per-step")]
    fn from_heap<'a>(h: &mut HeapTake<'a>) -> Option<&'a mut [Self]> {
        h.f32s.next().map(Vec::as_mut_slice)
    }
}

impl Elem for u32 {
    const DTYPE: Dtype = Dtype::U32;
    #[cfg(feature = "heap-per-step")]
    const ZERO: Self = 0;
    const POISON: Self = u32::MAX;
    fn rest<'s, 'a>(t: &'s mut StoreTake<'a>) -> &'s mut &'a mut [Self] {
        &mut t.u32s
    }
    #[cfg(feature = "heap-per-step")]
    fn from_heap<'a>(h: &mut HeapTake<'a>) -> Option<&'a mut [Self]> {
        h.u32s.next().map(Vec::as_mut_slice)
    }
}

impl Elem for u16 {
    const DTYPE: Dtype = Dtype::Bf16;
    #[cfg(feature = "heap-per-step")]
    const ZERO: Self = 0;
    /// A bf16 quiet NaN (all ones).
    const POISON: Self = u16::MAX;
    fn rest<'s, 'a>(t: &'s mut StoreTake<'a>) -> &'s mut &'a mut [Self] {
        &mut t.u16s
    }
    #[cfg(feature = "heap-per-step")]
    fn from_heap<'a>(h: &mut HeapTake<'a>) -> Option<&'a mut [Self]> {
        h.u16s.next().map(Vec::as_mut_slice)
    }
}

/// Where `carve_acts` takes each buffer from.
trait Take<'a> {
    /// A buffer of `len` elements, its contents unspecified: the step writes
    /// every buffer before reading it (an accumulator is zeroed by the code
    /// that accumulates into it, at the start of its step).
    fn take<T: Elem>(&mut self, len: usize) -> Result<&'a mut [T]>;
}

/// The buffers' memory: one allocation per element type, sized for the plan
/// at its maximum shape and filled once, when the arena is built, with each
/// type's [`Elem::POISON`]. Steps carve it with `split_at_mut` and never fill
/// it again: a step writes every buffer before it reads it, so `carve` costs
/// no pass over the plan (it used to zero every buffer of every step). A
/// buffer that a step read before writing would read NaN or `u32::MAX` on a
/// new workspace — loud, and what every test's first step on a fresh
/// workspace would catch — instead of a plausible zero.
#[derive(Debug, Default)]
struct Store {
    f32s: Vec<f32>,
    u32s: Vec<u32>,
    u16s: Vec<u16>,
}

impl Store {
    /// A store for `plan` (at the maximum shape), poisoned; failure as an `Err`.
    fn new(plan: &[PlanEntry]) -> Result<Self> {
        let mut st = Store::default();
        let (mut nf, mut nu, mut nh) = (0usize, 0usize, 0usize);
        for e in plan {
            let n = e.elems.saturating_mul(e.copies);
            match e.dtype {
                Dtype::F32 => nf = nf.saturating_add(n),
                Dtype::U32 => nu = nu.saturating_add(n),
                Dtype::Bf16 => nh = nh.saturating_add(n),
            }
        }
        fill(&mut st.f32s, nf)?;
        fill(&mut st.u32s, nu)?;
        fill(&mut st.u16s, nh)?;
        Ok(st)
    }
}

/// `v` = `len` copies of `T::POISON`, failure as an `Err`.
fn fill<T: Elem>(v: &mut Vec<T>, len: usize) -> Result<()> {
    v.try_reserve_exact(len)
        .map_err(|_| Error::AllocationFailed {
            bytes: len.saturating_mul(T::DTYPE.size()),
        })?;
    v.resize(len, T::POISON);
    Ok(())
}

/// The default: consecutive slices of the arena's [`Store`], as they are.
struct StoreTake<'a> {
    f32s: &'a mut [f32],
    u32s: &'a mut [u32],
    u16s: &'a mut [u16],
}

impl<'a> Take<'a> for StoreTake<'a> {
    fn take<T: Elem>(&mut self, len: usize) -> Result<&'a mut [T]> {
        let rest = T::rest(self);
        if rest.len() < len {
            return Err(Error::AllocationFailed {
                bytes: len.saturating_mul(T::DTYPE.size()),
            });
        }
        let (head, tail) = core::mem::take(rest).split_at_mut(len);
        *rest = tail;
        Ok(head)
    }
}

/// How a workspace provides the buffers of a step (moe-core feature
/// `heap-per-step`, for the benchmark's arena-vs-heap comparison only).
#[cfg(feature = "heap-per-step")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocPolicy {
    /// Slices of the one planned arena (the default; allocation-free).
    #[default]
    Arena,
    /// Every planned buffer of a step is a fresh, zero-filled heap allocation
    /// (`Vec` per buffer), freed when the next step starts or the workspace is
    /// dropped — the Vec-per-op style, with the same arithmetic.
    HeapPerStep,
}

/// The buffers of the current step under [`AllocPolicy::HeapPerStep`], in carve order.
#[cfg(feature = "heap-per-step")]
#[derive(Debug, Default)]
struct HeapStore {
    f32s: Vec<Vec<f32>>,
    u32s: Vec<Vec<u32>>,
    u16s: Vec<Vec<u16>>,
}

/// Hands out the [`HeapStore`]'s buffers in carve order.
#[cfg(feature = "heap-per-step")]
struct HeapTake<'a> {
    f32s: core::slice::IterMut<'a, Vec<f32>>,
    u32s: core::slice::IterMut<'a, Vec<u32>>,
    u16s: core::slice::IterMut<'a, Vec<u16>>,
}

#[cfg(feature = "heap-per-step")]
impl<'a> Take<'a> for HeapTake<'a> {
    fn take<T: Elem>(&mut self, len: usize) -> Result<&'a mut [T]> {
        match T::from_heap(self) {
            Some(b) if b.len() == len => Ok(b),
            _ => Err(Error::WorkspaceMismatch {
                what: "heap-per-step buffers out of carve order",
            }),
        }
    }
}

/// A fresh zero-filled heap buffer, failure as an `Err`.
#[cfg(feature = "heap-per-step")]
fn fresh<T: Elem>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::AllocationFailed {
            bytes: len * T::DTYPE.size(),
        })?;
    v.resize(len, T::ZERO);
    Ok(v)
}

/// The quantities the buffer table is written in (elements, for one step of `(b, t)`).
#[derive(Debug, Clone, Copy)]
struct Sz {
    /// Rows `n = b·t`.
    n: usize,
    /// Hidden width `c`.
    c: usize,
    /// Fused q/k/v width `(h+2kv)·d`.
    q: usize,
    /// Attention output width `h·d`.
    hd: usize,
    /// Experts `e`.
    e: usize,
    /// Top-k `k`.
    k: usize,
    /// Expert FFN width `f`.
    f: usize,
    /// Vocabulary `v`.
    v: usize,
    /// Routed slots `s = n·k`.
    s: usize,
    /// Attention probabilities: `b·h·t·t` saved (training, [`AttnMemory::Saved`]),
    /// one row of `t` ([`AttnMemory::Lse`]), one sequence's `h·t·t`
    /// ([`AttnMemory::SavedBf16`]: f32 rows before rounding), else one score row of `max_seq`.
    probs: usize,
    /// bf16 probabilities `b·h·t·t` ([`AttnMemory::SavedBf16`]), else 0.
    probs16: usize,
    /// Per-row softmax statistics: `b·h·t` under [`AttnMemory::Lse`], else 0.
    lse: usize,
    /// Softmax-backward scratch: `t·t` ([`AttnMemory::Saved`]) or `t` ([`AttnMemory::Lse`]).
    dprobs: usize,
    /// Layer checkpoints `(L−1)·n·c` under [`Recompute::Layers`], else 0.
    ckpt: usize,
}

impl Sz {
    fn new(dm: &Dims, train: bool, mem: Memory, max_seq: usize) -> Self {
        let lse = train && mem.attention == AttnMemory::Lse;
        let bf16 = train && mem.attention == AttnMemory::SavedBf16;
        Sz {
            n: dm.n,
            c: dm.c,
            q: dm.q,
            hd: dm.h * dm.d,
            e: dm.e,
            k: dm.k,
            f: dm.f,
            v: dm.v,
            s: dm.s(),
            probs: match (train, mem.attention) {
                (false, _) => max_seq,
                (true, AttnMemory::Saved) => dm.b * dm.h * dm.t * dm.t,
                (true, AttnMemory::Lse) => dm.t,
                (true, AttnMemory::SavedBf16) => dm.h * dm.t * dm.t,
            },
            probs16: if bf16 { dm.b * dm.h * dm.t * dm.t } else { 0 },
            lse: if lse { dm.b * dm.h * dm.t } else { 0 },
            dprobs: if lse { dm.t } else { dm.t * dm.t },
            ckpt: if train && mem.recompute == Recompute::Layers {
                dm.layers.saturating_sub(1) * dm.n * dm.c
            } else {
                0
            },
        }
    }
}

/// Copies of the `layer` buffers: one per layer in training without
/// recompute, else one shared by all layers.
fn layer_copies(layers: usize, train: bool, mem: Memory) -> usize {
    if train && mem.recompute == Recompute::None {
        layers
    } else {
        1
    }
}

/// Generates, from one table of `name: type = elements;` lines in four
/// sections, the plan (`N_BUFFERS`, `entries`), the structs `LayerActs`,
/// `GradActs`, `Acts` and `carve_acts`. Plan order is the table order:
/// `head`, `layer` (one copy per layer in training mode), `tail`, `grad`
/// (training only; zero elements in inference mode).
macro_rules! buffers {
    (
        |$z:ident|
        head { $( $(#[$hm:meta])* $hn:ident : $ht:ty = $hs:expr; )* }
        layer { $( $(#[$lm:meta])* $ln:ident : $lt:ty = $ls:expr; )* }
        tail { $( $(#[$tm:meta])* $tn:ident : $tt:ty = $ts:expr; )* }
        grad { $( $(#[$gm:meta])* $gn:ident : $gt:ty = $gs:expr; )* }
    ) => {
        /// Number of named buffers in the plan.
        const N_BUFFERS: usize = [
            $(stringify!($hn),)* $(stringify!($ln),)* $(stringify!($tn),)* $(stringify!($gn),)*
        ]
        .len();

        /// The named buffer sizes of a step of shape `(b, t)` in `mode`; the
        /// single source of truth for both the plan and the carving.
        /// `max_seq` sizes the inference-mode score row (a query attends to at
        /// most `max_seq` keys, including KV-cached ones).
        fn entries(dm: &Dims, mode: Mode, mem: Memory, max_seq: usize) -> [PlanEntry; N_BUFFERS] {
            let train = mode == Mode::Training;
            let $z = Sz::new(dm, train, mem, max_seq);
            let lc = layer_copies(dm.layers, train, mem);
            let g = |x: usize| if train { x } else { 0 };
            let e = |name, dtype, elems, copies| PlanEntry {
                name,
                dtype,
                elems,
                copies,
            };
            [
                $( e(stringify!($hn), <$ht as Elem>::DTYPE, $hs, 1), )*
                $( e(stringify!($ln), <$lt as Elem>::DTYPE, $ls, lc), )*
                $( e(stringify!($tn), <$tt as Elem>::DTYPE, $ts, 1), )*
                $( e(stringify!($gn), <$gt as Elem>::DTYPE, g($gs), 1), )*
            ]
        }

        /// Activations of one transformer block (see the module table for shapes).
        #[derive(Debug, Default)]
        pub(crate) struct LayerActs<'a> {
            $( $(#[$lm])* pub $ln: &'a mut [$lt], )*
        }

        /// Backward scratch, shared by all layers.
        #[derive(Debug)]
        pub(crate) struct GradActs<'a> {
            $( $(#[$gm])* pub $gn: &'a mut [$gt], )*
        }

        /// Everything carved for one step.
        #[derive(Debug)]
        pub(crate) struct Acts<'a> {
            /// The step's dimensions.
            pub dims: Dims,
            /// The workspace's memory options (training).
            pub memory: Memory,
            $( $(#[$hm])* pub $hn: &'a mut [$ht], )*
            /// One `LayerActs` per layer (training without recompute) or one
            /// shared by all (inference, [`Recompute::Layers`]).
            pub layers: &'a mut [LayerActs<'a>],
            $( $(#[$tm])* pub $tn: &'a mut [$tt], )*
            /// `Some` in training mode.
            pub grads: Option<GradActs<'a>>,
        }

        /// Carves every buffer of a step of `dm`: the per-layer table from
        /// `table` (already reset), then from `src` each layer's buffers, the
        /// `head`, `tail` and (training) `grad` buffers, contents unspecified
        /// ([`Take::take`]).
        fn carve_acts<'a>(
            table: &'a Bump,
            src: &mut impl Take<'a>,
            dm: Dims,
            train: bool,
            mem: Memory,
            max_seq: usize,
        ) -> Result<Acts<'a>> {
            let $z = Sz::new(&dm, train, mem, max_seq);
            let copies = layer_copies(dm.layers, train, mem);
            let layers = table
                .try_alloc_slice_fill_with(copies, |_| LayerActs::default())
                .map_err(|_| Error::AllocationFailed {
                    bytes: copies * core::mem::size_of::<LayerActs<'static>>(),
                })?;
            for la in layers.iter_mut() {
                *la = LayerActs {
                    $( $ln: src.take::<$lt>($ls)?, )*
                };
            }
            $( let $hn = src.take::<$ht>($hs)?; )*
            $( let $tn = src.take::<$tt>($ts)?; )*
            let grads = if train {
                Some(GradActs {
                    $( $gn: src.take::<$gt>($gs)?, )*
                })
            } else {
                None
            };
            Ok(Acts {
                dims: dm,
                memory: mem,
                $( $hn, )*
                layers,
                $( $tn, )*
                grads,
            })
        }

        /// Allocates, in `carve_acts`' order, one fresh heap buffer per
        /// planned buffer of a step of `dm` into `store` (emptied first,
        /// which frees the previous step's).
        #[cfg(feature = "heap-per-step")]
        fn fill_heap(
            store: &mut HeapStore,
            dm: Dims,
            train: bool,
            mem: Memory,
            max_seq: usize,
        ) -> Result<()> {
            let $z = Sz::new(&dm, train, mem, max_seq);
            store.f32s.clear();
            store.u32s.clear();
            store.u16s.clear();
            fn push<T: Elem>(store: &mut HeapStore, len: usize) -> Result<()> {
                match T::DTYPE {
                    Dtype::F32 => store.f32s.push(fresh::<f32>(len)?),
                    Dtype::U32 => store.u32s.push(fresh::<u32>(len)?),
                    Dtype::Bf16 => store.u16s.push(fresh::<u16>(len)?),
                }
                Ok(())
            }
            let copies = layer_copies(dm.layers, train, mem);
            for _ in 0..copies {
                $( push::<$lt>(store, $ls)?; )*
            }
            $( push::<$ht>(store, $hs)?; )*
            $( push::<$tt>(store, $ts)?; )*
            if train {
                $( push::<$gt>(store, $gs)?; )*
            }
            Ok(())
        }
    };
}

buffers! {
    |z|
    head {
        /// Residual stream `[n, c]`.
        resid: f32 = z.n * z.c;
        /// Each layer's input but the last's `[L−1, n, c]` ([`Recompute::Layers`] only).
        ckpt: f32 = z.ckpt;
    }
    layer {
        /// RMSNorm input before attention `[n, c]` (saved).
        x_in: f32 = z.n * z.c;
        /// Its `1/rms` `[n]` (saved).
        rstd1: f32 = z.n;
        /// Normed attention input `[n, c]`.
        xn1: f32 = z.n * z.c;
        /// q, k after RoPE, v `[n, q]`.
        qkv: f32 = z.n * z.q;
        /// Attention probabilities `[b, h, t, t]` (train, saved) / one row `[t]`
        /// (train, LSE) / one score row `[max_seq]` (infer).
        probs: f32 = z.probs;
        /// bf16 attention probabilities `[b, h, t, t]` ([`AttnMemory::SavedBf16`] only).
        probs16: u16 = z.probs16;
        /// Softmax row max `m_i` `[b, h, t]` ([`AttnMemory::Lse`] only).
        row_max: f32 = z.lse;
        /// Softmax row `1/Σ_j exp(s_ij − m_i)` `[b, h, t]` ([`AttnMemory::Lse`] only).
        row_inv: f32 = z.lse;
        /// Attention output before `o_proj` `[n, h·d]`.
        att: f32 = z.n * z.hd;
        /// RMSNorm input before the MoE `[n, c]` (saved).
        x_mid: f32 = z.n * z.c;
        /// Its `1/rms` `[n]` (saved).
        rstd2: f32 = z.n;
        /// Normed MoE input `[n, c]`.
        xn2: f32 = z.n * z.c;
        /// Router probabilities `[n, e]`.
        rprobs: f32 = z.n * z.e;
        /// Chosen experts `[n, k]`.
        topk_idx: u32 = z.n * z.k;
        /// Renormalised weights of the chosen experts `[n, k]`.
        topk_w: f32 = z.n * z.k;
        /// Slots per expert `[e]`.
        counts: u32 = z.e;
        /// Exclusive prefix sum of `counts` `[e+1]`.
        offsets: u32 = z.e + 1;
        /// Row of each slot `[s]`.
        slot_row: u32 = z.s;
        /// Slot of each (row, choice) `[s]`.
        slot_of: u32 = z.s;
        /// Gathered expert inputs `[s, c]`; in the backward, overwritten by their gradient.
        xg: f32 = z.s * z.c;
        /// `[x·w1ᵀ, x·w3ᵀ]` pre-activations `[s, 2f]`; backward: their gradient.
        h13: f32 = z.s * 2 * z.f;
        /// `silu(h1) ⊙ h3` `[s, f]`; backward: its gradient.
        act: f32 = z.s * z.f;
        /// Expert outputs `[s, c]`; backward: their gradient `w_rj · dout_r`.
        ye: f32 = z.s * z.c;
    }
    tail {
        /// Final norm output `[n, c]`.
        xf: f32 = z.n * z.c;
        /// Its `1/rms` `[n]`.
        rstd_f: f32 = z.n;
        /// Output logits `[n, v]`; in training, overwritten by `dL/dlogits`.
        logits: f32 = z.n * z.v;
    }
    grad {
        /// Gradient of the residual stream `[n, c]`.
        dresid: f32 = z.n * z.c;
        /// Gradient of a normed input `[n, c]`.
        dxn: f32 = z.n * z.c;
        /// `[n, q]`.
        dqkv: f32 = z.n * z.q;
        /// `[n, h·d]`.
        datt: f32 = z.n * z.hd;
        /// Score gradient: one sequence-head `[t, t]` (saved) / one row `[t]` (LSE).
        dprobs: f32 = z.dprobs;
        /// `[n, e]`.
        drprobs: f32 = z.n * z.e;
        /// `[n, k]`.
        dtopk_w: f32 = z.n * z.k;
        /// Per-row cross-entropy `[n]`.
        ce_row: f32 = z.n;
        /// Aux loss: routed fraction per expert `[e]`.
        aux_f: f32 = z.e;
        /// Aux loss: mean probability per expert `[e]`.
        aux_p: f32 = z.e;
    }
}

/// Slack for the alignment of the per-layer table inside the arena.
const TABLE_ALIGN_SLACK: usize = 16;

/// Planned activation memory for one model shape; see the module docs.
#[derive(Debug)]
pub(crate) struct Arena {
    cfg: Config,
    mode: Mode,
    mem: Memory,
    max_batch: usize,
    max_seq: usize,
    plan_bytes: usize,
    /// The buffers' memory.
    store: Store,
    /// The per-layer slice table.
    table: Bump,
    /// `Some` under [`AllocPolicy::HeapPerStep`].
    #[cfg(feature = "heap-per-step")]
    heap: Option<HeapStore>,
}

impl Arena {
    /// Plans and allocates the workspace for steps of up to `max_batch × max_seq` tokens.
    ///
    /// # Errors
    /// Invalid config, `max_batch == 0` / `max_seq == 0` ([`Error::EmptyInput`]),
    /// `max_seq > max_position_embeddings` ([`Error::SeqTooLong`]), size overflow,
    /// or a failed allocation.
    pub(crate) fn new(
        cfg: &Config,
        max_batch: usize,
        max_seq: usize,
        mode: Mode,
        mem: Memory,
    ) -> Result<Self> {
        cfg.validate()?;
        if max_batch == 0 {
            return Err(Error::EmptyInput { arg: "max_batch" });
        }
        if max_seq == 0 {
            return Err(Error::EmptyInput { arg: "max_seq" });
        }
        if max_seq > cfg.max_position_embeddings {
            return Err(Error::SeqTooLong {
                seq: max_seq,
                max: cfg.max_position_embeddings,
            });
        }
        let plan_bytes = Self::plan_bytes(cfg, max_batch, max_seq, mode, mem)?;
        let store = Store::new(&entries(
            &Dims::new(cfg, max_batch, max_seq),
            mode,
            mem,
            max_seq,
        ))?;
        // The per-layer slice table (in a bump arena: `&'a mut [LayerActs<'a>]`).
        let table_capacity = Self::table_bytes(cfg, mode, mem) + TABLE_ALIGN_SLACK;
        let table =
            Bump::try_with_capacity(table_capacity).map_err(|_| Error::AllocationFailed {
                bytes: table_capacity,
            })?;
        // One chunk, never another: a request beyond the plan fails instead of growing.
        table.set_allocation_limit(Some(table.allocated_bytes()));
        Ok(Arena {
            cfg: *cfg,
            mode,
            mem,
            max_batch,
            max_seq,
            plan_bytes,
            store,
            table,
            #[cfg(feature = "heap-per-step")]
            heap: None,
        })
    }

    /// The named buffers of a step at the planned maximum shape.
    pub(crate) fn plan(&self) -> Vec<PlanEntry> {
        entries(
            &Dims::new(&self.cfg, self.max_batch, self.max_seq),
            self.mode,
            self.mem,
            self.max_seq,
        )
        .to_vec()
    }

    /// Activation bytes of the plan at the maximum shape, checked for overflow.
    fn plan_bytes(
        cfg: &Config,
        max_batch: usize,
        max_seq: usize,
        mode: Mode,
        mem: Memory,
    ) -> Result<usize> {
        let of = Error::Overflow {
            what: "workspace plan bytes",
        };
        // Check the largest products before `entries` computes them unchecked.
        let n = max_batch.checked_mul(max_seq).ok_or(of.clone())?;
        let s = n.checked_mul(cfg.num_experts_per_tok).ok_or(of.clone())?;
        let wide = [
            s.checked_mul(2 * cfg.intermediate_size),
            n.checked_mul(cfg.vocab_size),
            n.checked_mul(cfg.qkv_dim()),
            max_batch
                .checked_mul(cfg.num_attention_heads)
                .and_then(|x| x.checked_mul(max_seq))
                .and_then(|x| x.checked_mul(max_seq)),
            s.checked_mul(cfg.hidden_size),
        ];
        for w in wide {
            w.and_then(|x| x.checked_mul(4 * cfg.num_hidden_layers.max(1)))
                .ok_or(of.clone())?;
        }
        let dm = Dims::new(cfg, max_batch, max_seq);
        entries(&dm, mode, mem, max_seq)
            .iter()
            .try_fold(0usize, |acc, e| acc.checked_add(e.bytes()))
            .ok_or(of)
    }

    fn table_bytes(cfg: &Config, mode: Mode, mem: Memory) -> usize {
        let copies = layer_copies(cfg.num_hidden_layers, mode == Mode::Training, mem);
        copies * core::mem::size_of::<LayerActs<'static>>()
    }

    /// Bytes of the plan: activation buffers at the maximum shape plus the
    /// per-layer slice table.
    pub(crate) fn bytes(&self) -> usize {
        self.plan_bytes + Self::table_bytes(&self.cfg, self.mode, self.mem)
    }

    /// The memory options it was planned with.
    pub(crate) fn memory(&self) -> Memory {
        self.mem
    }

    /// The mode it was planned for.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Planned maximum batch.
    pub(crate) fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Planned maximum sequence length.
    pub(crate) fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// The config it was planned for.
    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }

    /// Checks that a step of `(batch, seq)` for `cfg` fits this workspace.
    pub(crate) fn check(&self, cfg: &Config, batch: usize, seq: usize) -> Result<()> {
        if *cfg != self.cfg {
            return Err(Error::WorkspaceMismatch {
                what: "the workspace was planned for a different Config",
            });
        }
        check_shape(cfg, batch, seq, self.max_batch, self.max_seq)
    }

    /// Carves every buffer for a step of `(batch, seq)`
    /// (call [`Arena::check`] first). Buffers are not filled: their contents
    /// are what the previous step left (or [`Elem::POISON`] on a new arena), and
    /// each step writes a buffer before it reads it.
    pub(crate) fn carve(&mut self, batch: usize, seq: usize) -> Result<Acts<'_>> {
        let dm = Dims::new(&self.cfg, batch, seq);
        let train = self.mode == Mode::Training;
        self.table.reset();
        #[cfg(feature = "heap-per-step")]
        if let Some(store) = &mut self.heap {
            fill_heap(store, dm, train, self.mem, self.max_seq)?;
            let mut src = HeapTake {
                f32s: store.f32s.iter_mut(),
                u32s: store.u32s.iter_mut(),
                u16s: store.u16s.iter_mut(),
            };
            let mut acts = carve_acts(&self.table, &mut src, dm, train, self.mem, self.max_seq)?;
            acts.zero_accumulators();
            return Ok(acts);
        }
        let mut acts = carve_acts(
            &self.table,
            &mut StoreTake {
                f32s: &mut self.store.f32s,
                u32s: &mut self.store.u32s,
                u16s: &mut self.store.u16s,
            },
            dm,
            train,
            self.mem,
            self.max_seq,
        )?;
        acts.zero_accumulators();
        Ok(acts)
    }

    /// Switches how the buffers of the following steps are provided.
    #[cfg(feature = "heap-per-step")]
    pub(crate) fn set_alloc_policy(&mut self, policy: AllocPolicy) {
        self.heap = match policy {
            AllocPolicy::Arena => None,
            AllocPolicy::HeapPerStep => Some(HeapStore::default()),
        };
    }

    /// The current policy.
    #[cfg(feature = "heap-per-step")]
    pub(crate) fn alloc_policy(&self) -> AllocPolicy {
        if self.heap.is_some() {
            AllocPolicy::HeapPerStep
        } else {
            AllocPolicy::Arena
        }
    }
}

impl Acts<'_> {
    /// Zeroes the buffers a step accumulates into (the only ones it reads
    /// before writing): the aux-loss sums `aux_f`, `aux_p`, pooled over all
    /// layers by the forward (E13). Everything else is written first.
    fn zero_accumulators(&mut self) {
        if let Some(g) = self.grads.as_mut() {
            g.aux_f.fill(0.0);
            g.aux_p.fill(0.0);
        }
    }
}

/// A step of `(batch, seq)` against a plan of `max_batch × max_seq`: both
/// non-zero, `seq` within the model's positions, neither beyond the plan.
pub(crate) fn check_shape(
    cfg: &Config,
    batch: usize,
    seq: usize,
    max_batch: usize,
    max_seq: usize,
) -> Result<()> {
    if batch == 0 {
        return Err(Error::EmptyInput { arg: "batch" });
    }
    if seq == 0 {
        return Err(Error::EmptyInput { arg: "seq" });
    }
    if seq > cfg.max_position_embeddings {
        return Err(Error::SeqTooLong {
            seq,
            max: cfg.max_position_embeddings,
        });
    }
    if batch > max_batch {
        return Err(Error::WorkspaceTooSmall {
            dim: "batch",
            requested: batch,
            planned: max_batch,
        });
    }
    if seq > max_seq {
        return Err(Error::WorkspaceTooSmall {
            dim: "seq",
            requested: seq,
            planned: max_seq,
        });
    }
    Ok(())
}
