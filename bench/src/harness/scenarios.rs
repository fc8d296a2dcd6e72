//! The scenario table (spec §6–§7: 22 scenarios on 5 axes, then our extras)
//! and the code that runs each kind.
//!
//! Every scenario builds its model, workspace and inputs *outside* the timed
//! region (except `dispatch_cold*`, whose construction is the workload),
//! runs `warmup + trials` iterations, and reports per-trial wall time, CPU
//! time and heap traffic (see [`crate::harness::measure`]).
//!
//! Fixed inputs (seed 42):
//! * tokens `[b, t]`: `token[i, s] = (i·t + s) mod v`, targets `(i·t + s + 1) mod v`
//!   — the fixture of the other languages' harnesses;
//! * kernel operands: SplitMix64 seeded with 42, `u = (x >> 40)·2⁻²⁴ ∈ [0, 1)`,
//!   value `2u − 1` (matmul, rmsnorm `x`), `4·(2u − 1)` (softmax), `0.5 + u` (rmsnorm `w`).

use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use moe_core::kernels::gemm::{gemm_with, Backend, Mat};
use moe_core::kernels::softmax;
use moe_core::{
    rmsnorm, AllocPolicy, ChaCha8Rng, Config, Decoder, Memory as MemOpts, MoETransformer, Mode,
    Recompute, SamplingStrategy, SeedableRng, TrainConfig, Trainer,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::flops;
use crate::harness::measure::{self, Measurement};
use crate::harness::schema::{Derived, Gc, Memory, Numerical, ScenarioResult};
use crate::harness::stats::{median_u64, summarize};
use crate::harness::sys::rusage;
pub use crate::profile::Profile;
use crate::Error;

/// The spec's seed for every model and fixture.
pub const SEED: u64 = 42;
/// The spec's warmup runs per scenario.
pub const N_WARMUP: usize = 3;
/// The spec's timed trials per scenario.
pub const N_TRIALS: usize = 10;

/// What one model iteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `model.forward` (logits).
    Forward,
    /// `trainer.train_step` (forward, loss, backward, clip, AdamW).
    TrainStep,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Forward => "forward",
            Workload::TrainStep => "train_step",
        }
    }
}

/// How a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// One forward or train step per iteration on a prebuilt model.
    Model {
        profile: Profile,
        workload: Workload,
        b: usize,
        t: usize,
        /// Under moe-core's `AllocPolicy::HeapPerStep` (every planned buffer a
        /// fresh heap allocation per step) instead of the arena.
        heap: bool,
        /// Forward on a model with pre-packed weights
        /// (`MoETransformer::prepack`, before the timed region; bit-identical
        /// logits): `params.weights = "prepacked"`, else `"row_major"`.
        packed: bool,
        /// The scenario this row-major one is the twin of (`params.twin`,
        /// `extra.speedup_vs_twin` = the twin's median / this median).
        twin: Option<&'static str>,
    },
    /// `C[m,n] = A[m,k]·B[n,k]ᵀ` into a preallocated `C`.
    Matmul {
        backend: Backend,
        m: usize,
        n: usize,
        k: usize,
    },
    /// In-place row softmax of `n` values (input restored outside the timed region).
    Softmax { n: usize },
    /// `rmsnorm::forward` over `[b·t, c]` into preallocated outputs.
    RmsNorm { b: usize, t: usize, c: usize },
    /// Model construction from the seed + workspace plan + first forward, fresh each trial.
    DispatchCold { b: usize, t: usize },
    /// Spawn `moe cold-start` (construction + first forward) and wait for its exit.
    DispatchColdProcess { b: usize, t: usize },
    /// KV-cache decoding on the tiny model: prefill a `prompt`-token prompt,
    /// then `new_tokens` greedy steps (`Decoder::step` + `pick_token`); the
    /// decoder (workspace + cache) is built outside the timed region.
    Decode { prompt: usize, new_tokens: usize },
    /// The single-core FMA peak: `iters` rounds of 12 independent FMA chains
    /// of the widest vector the GEMM uses (16 lanes with AVX-512F, else 8;
    /// `moe_core::kernels::cpu::fma_peak`). `lanes`: that width as a run
    /// file records it (`params.lanes`, read back by the report); `None` =
    /// this CPU's (`peak_lanes`), which is what a run measures.
    FmaPeak { iters: u64, lanes: Option<usize> },
    /// STREAM-style triad `a[i] = b[i] + s·c[i]` over three arrays of `n`
    /// floats each (≫ L3): 12·n bytes moved per iteration.
    Bandwidth { n: usize },
    /// One `loss_and_grad` (forward, CE + aux, backward; no optimizer) per
    /// iteration in a training workspace built with the memory options `mem`;
    /// at most 1 warmup and 5 trials (long steps).
    TrainMemory {
        profile: Profile,
        b: usize,
        t: usize,
        mem: MemOpts,
    },
    /// One full `Trainer::train_step` (forward, backward, AdamW; one thread,
    /// one micro-batch) per iteration in `precision`: f32, or mixed
    /// (`Precision::Bf16`: bf16 weight copy in the GEMMs, bf16 saved
    /// probabilities, f32 master/gradients/moments); `arena_bytes` is the
    /// training workspace, `params.shadow_bytes` the bf16 copy. At most 1
    /// warmup and 5 trials (long steps).
    TrainPrecision {
        profile: Profile,
        b: usize,
        t: usize,
        precision: moe_core::Precision,
    },
    /// One scale_256 model on a `moe_core::Pool` of `threads` threads
    /// (issue 14, "one model, many threads"): bit-identical results for every
    /// `threads`, so the `_T1` row is the baseline of the speedup.
    Threads { work: ThreadsWork, threads: usize },
    /// One AdamW pass (`moe_core::kernels::adamw`) over `n` parameters with
    /// their gradients and both moments (the `scale_256` optimizer state);
    /// `pass`: what the sweep does besides the update ([`AdamPass`]).
    /// Bytes per iteration: [`adamw_bytes`].
    AdamW { n: usize, pass: AdamPass },
    /// `threads` independent tiny models, one per thread, one iteration each per trial.
    Parallel {
        threads: usize,
        workload: Workload,
        b: usize,
        t: usize,
    },
    /// A workload in a storage precision (issue 17 item 3), beside its twin.
    Prec { work: PrecWork, bf16: bool },
}

/// Workloads of [`Kind::Prec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecWork {
    /// scale_256, prompt 8 + 64 greedy tokens with the KV cache, one thread
    /// (`generate_kv_64`'s loop on the bandwidth-bound profile).
    DecodeScale,
    /// tiny forward b2 s32 (`dispatch_warm`'s shape).
    ForwardTiny,
    /// The whole Full profile in bf16: prefill 32 + decode 16 at b1 on all
    /// threads (heavy: ≈ 13.8 GB; only with `--only` or `--heavy`).
    FullDecode,
}

/// `full_decode_bf16`'s prompt and decoded tokens.
pub const FULL_DECODE: (usize, usize) = (32, 16);
/// `generate_kv_64_*`'s prompt and new tokens.
pub const PREC_DECODE: (usize, usize) = (8, 64);

/// Scenarios left out of a default run (selected by `--only` or `--heavy`).
pub const HEAVY: &[&str] = &["full_decode_bf16"];

impl PrecWork {
    /// The profile it runs.
    pub fn profile(self) -> Profile {
        match self {
            PrecWork::DecodeScale => Profile::Scale256,
            PrecWork::ForwardTiny => Profile::Tiny,
            PrecWork::FullDecode => Profile::Full,
        }
    }
}

/// What a [`Kind::Threads`] scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadsWork {
    /// `Trainer::train_step` at b8 s64 (`DEFAULT_MICRO_BATCHES` micro-batches).
    Train,
    /// `MoETransformer::forward_split` at b8 s64 (`FORWARD_SPLITS` groups).
    Forward,
    /// `Decoder::with_pool`: prefill 8 tokens, then 64 greedy steps.
    Decode,
}

impl ThreadsWork {
    /// The `workload` param.
    pub fn name(self) -> &'static str {
        match self {
            ThreadsWork::Train => "train_step",
            ThreadsWork::Forward => "forward",
            ThreadsWork::Decode => "decode",
        }
    }
}

/// Shape of the `threads_train_*` / `threads_forward_*` scenarios.
pub const THREADS_B: usize = 8;
/// Sequence length of the `threads_train_*` / `threads_forward_*` scenarios.
pub const THREADS_T: usize = 64;
/// Prompt and new tokens of `threads_decode_*`.
pub const THREADS_DECODE: (usize, usize) = (8, 64);

/// One row of the scenario table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Id in the JSON.
    pub id: &'static str,
    /// One of `schema::AXES`.
    pub axis: &'static str,
    /// What it runs.
    pub kind: Kind,
}

const fn s(id: &'static str, axis: &'static str, kind: Kind) -> Scenario {
    Scenario { id, axis, kind }
}

const fn tiny(workload: Workload, b: usize, t: usize) -> Kind {
    Kind::Model {
        profile: Profile::Tiny,
        workload,
        b,
        t,
        heap: false,
        packed: false,
        twin: None,
    }
}

/// Whether the model's forward reads pre-packed weights in this build: not
/// with a BLAS backend (moe-core's `blas` feature, e.g. `--features
/// openblas`), whose unpacked products the packed portable kernel would not
/// reproduce bit for bit; there the pre-packed scenarios run row-major
/// (`params.weights` says which).
pub fn prepack_applies() -> bool {
    moe_core::linear::packed_applies(moe_core::linear::PACKED_MIN_ROWS)
}

/// A forward `kind` on pre-packed weights (the model's best inference path).
const fn prepacked(kind: Kind) -> Kind {
    with_weights(kind, true, None)
}

/// A row-major forward `kind`, the twin of the pre-packed scenario `of`.
const fn rowmajor_twin(kind: Kind, of: &'static str) -> Kind {
    with_weights(kind, false, Some(of))
}

/// `kind` (a [`Kind::Model`]) with its weight layout and twin set.
const fn with_weights(kind: Kind, packed: bool, twin: Option<&'static str>) -> Kind {
    match kind {
        Kind::Model {
            profile,
            workload,
            b,
            t,
            heap,
            ..
        } => Kind::Model {
            profile,
            workload,
            b,
            t,
            heap,
            packed,
            twin,
        },
        other => other,
    }
}

/// `kind` under the heap-per-step allocation policy.
const fn heap(kind: Kind) -> Kind {
    match kind {
        Kind::Model {
            profile,
            workload,
            b,
            t,
            ..
        } => Kind::Model {
            profile,
            workload,
            b,
            t,
            heap: true,
            packed: false,
            twin: None,
        },
        other => other,
    }
}

const fn scale(workload: Workload, b: usize, t: usize) -> Kind {
    Kind::Model {
        profile: Profile::Scale256,
        workload,
        b,
        t,
        heap: false,
        packed: false,
        twin: None,
    }
}

const fn thr(work: ThreadsWork, threads: usize) -> Kind {
    Kind::Threads { work, threads }
}

const fn par(threads: usize, workload: Workload, b: usize, t: usize) -> Kind {
    Kind::Parallel {
        threads,
        workload,
        b,
        t,
    }
}

use Workload::{Forward, TrainStep};

/// Every scenario, in run order: the spec's 22, then the extras.
pub const SCENARIOS: &[Scenario] = &[
    // Axis 1 — memory (9)
    s("mem_train_step", "memory", tiny(TrainStep, 2, 8)),
    s("mem_scale_batch_1", "memory", tiny(Forward, 1, 32)),
    s("mem_scale_batch_2", "memory", tiny(Forward, 2, 32)),
    s("mem_scale_batch_4", "memory", tiny(Forward, 4, 32)),
    s("mem_scale_batch_8", "memory", tiny(Forward, 8, 32)),
    s("mem_scale_seq_8", "memory", tiny(Forward, 2, 8)),
    s("mem_scale_seq_16", "memory", tiny(Forward, 2, 16)),
    s("mem_scale_seq_32", "memory", tiny(Forward, 2, 32)),
    s("mem_scale_seq_64", "memory", tiny(Forward, 2, 64)),
    // Axis 2 — compiler (3)
    s(
        "kernel_matmul",
        "compiler",
        Kind::Matmul {
            backend: Backend::DEFAULT,
            m: 64,
            n: 64,
            k: 64,
        },
    ),
    s("kernel_softmax", "compiler", Kind::Softmax { n: 1000 }),
    s(
        "kernel_rmsnorm",
        "compiler",
        Kind::RmsNorm { b: 2, t: 32, c: 64 },
    ),
    // Axis 3 — type system (2)
    s(
        "dispatch_warm",
        "type_system",
        prepacked(tiny(Forward, 2, 32)),
    ),
    s(
        "dispatch_cold",
        "type_system",
        Kind::DispatchCold { b: 1, t: 8 },
    ),
    // Axis 4 — parallel (6)
    s("parallel_T1", "parallel", par(1, Forward, 2, 32)),
    s("parallel_T2", "parallel", par(2, Forward, 2, 32)),
    s("parallel_T4", "parallel", par(4, Forward, 2, 32)),
    s("parallel_train_T1", "parallel", par(1, TrainStep, 2, 8)),
    s("parallel_train_T2", "parallel", par(2, TrainStep, 2, 8)),
    s("parallel_train_T4", "parallel", par(4, TrainStep, 2, 8)),
    // Axis 5 — scale (2)
    s(
        "scale_forward_256",
        "scale",
        prepacked(scale(Forward, 2, 32)),
    ),
    s("scale_train_256", "scale", scale(TrainStep, 2, 8)),
    // Extras (new ids, never replacing the 22 above).
    s(
        "kernel_matmul_portable",
        "compiler",
        Kind::Matmul {
            backend: Backend::Portable,
            m: 64,
            n: 64,
            k: 64,
        },
    ),
    // The `matrixmultiply` crate, which moe-core keeps for comparison only: it
    // allocates its packing buffers on every call (visible in `alloc_bytes`).
    s(
        "kernel_matmul_matrixmultiply",
        "compiler",
        Kind::Matmul {
            backend: Backend::MatrixMultiply,
            m: 64,
            n: 64,
            k: 64,
        },
    ),
    s(
        "dispatch_cold_process",
        "type_system",
        Kind::DispatchColdProcess { b: 1, t: 8 },
    ),
    s(
        "machine_peak",
        "compiler",
        Kind::Matmul {
            backend: Backend::DEFAULT,
            m: 1024,
            n: 1024,
            k: 1024,
        },
    ),
    s(
        "generate_kv_64",
        "type_system",
        Kind::Decode {
            prompt: 8,
            new_tokens: 64,
        },
    ),
    // The machine's limits, measured in the same run as the scenarios they
    // bound: FMA peak (GFLOP/s) and memory bandwidth (GB/s = 12·n bytes ÷ median).
    s(
        "machine_fma_peak",
        "compiler",
        Kind::FmaPeak {
            iters: FMA_PEAK_ITERS,
            lanes: None,
        },
    ),
    s(
        "machine_bandwidth",
        "compiler",
        Kind::Bandwidth { n: BANDWIDTH_N },
    ),
    // The optimizer pass of `scale_train_256` alone, in GB/s beside
    // `machine_bandwidth` (bytes per iteration in `params.bytes_per_iter`).
    s(
        "optimizer_adamw_scale_256",
        "scale",
        Kind::AdamW {
            n: SCALE_256_PARAMS,
            pass: AdamPass::Plain,
        },
    ),
    s(
        "optimizer_adamw_zeroing_scale_256",
        "scale",
        Kind::AdamW {
            n: SCALE_256_PARAMS,
            pass: AdamPass::Zeroing,
        },
    ),
    // The trainer's pass before the fusion (the update, then a separate
    // `g ← 0` sweep), beside the fused one above: the before/after of one run.
    s(
        "optimizer_adamw_then_zero_scale_256",
        "scale",
        Kind::AdamW {
            n: SCALE_256_PARAMS,
            pass: AdamPass::ThenZero,
        },
    ),
    // Mixed precision's pass: the same sweep also writes the bf16 copy.
    s(
        "optimizer_adamw_bf16_scale_256",
        "scale",
        Kind::AdamW {
            n: SCALE_256_PARAMS,
            pass: AdamPass::ZeroingBf16,
        },
    ),
    // OpenBLAS (`--features openblas`) beside our GEMM, same shapes, same run.
    #[cfg(feature = "openblas")]
    s(
        "kernel_matmul_openblas",
        "compiler",
        Kind::Matmul {
            backend: Backend::Blas,
            m: 64,
            n: 64,
            k: 64,
        },
    ),
    // Our GEMM at 1024³ in the same run (`machine_peak` is the default
    // backend, CBLAS in this build).
    #[cfg(feature = "openblas")]
    s(
        "machine_peak_portable",
        "compiler",
        Kind::Matmul {
            backend: Backend::Portable,
            m: 1024,
            n: 1024,
            k: 1024,
        },
    ),
    #[cfg(feature = "openblas")]
    s(
        "machine_peak_openblas",
        "compiler",
        Kind::Matmul {
            backend: Backend::Blas,
            m: 1024,
            n: 1024,
            k: 1024,
        },
    ),
    // The arena's value, measured: the same workloads with every planned
    // buffer a fresh heap allocation per step (moe-core `heap-per-step`).
    s("dispatch_warm_heap", "memory", heap(tiny(Forward, 2, 32))),
    s("mem_train_step_heap", "memory", heap(tiny(TrainStep, 2, 8))),
    s(
        "scale_forward_256_heap",
        "scale",
        heap(scale(Forward, 2, 32)),
    ),
    s(
        "scale_train_256_heap",
        "scale",
        heap(scale(TrainStep, 2, 8)),
    ),
    // Training memory modes (docs/runtime.md): activation checkpointing + LSE
    // attention (`Memory::LOW`) against the default plan, same shape, b8.
    s(
        "recompute_train_tiny_s512",
        "memory",
        train_mem(Profile::Tiny, 512, MemOpts::LOW),
    ),
    s(
        "recompute_train_tiny_s512_off",
        "memory",
        train_mem(Profile::Tiny, 512, MemOpts::DEFAULT),
    ),
    s(
        "recompute_train_scale_s256",
        "memory",
        train_mem(Profile::Scale256, 256, MemOpts::LOW),
    ),
    s(
        "recompute_train_scale_s256_off",
        "memory",
        train_mem(Profile::Scale256, 256, MemOpts::DEFAULT),
    ),
    // Mixed-precision training (issue 17 item 4) against f32, same shapes as
    // the recompute pair: one full train_step each.
    s(
        "mixed_train_tiny_s512",
        "memory",
        train_prec(Profile::Tiny, 512, moe_core::Precision::Bf16),
    ),
    s(
        "mixed_train_tiny_s512_f32",
        "memory",
        train_prec(Profile::Tiny, 512, moe_core::Precision::F32),
    ),
    s(
        "mixed_train_scale_s256",
        "memory",
        train_prec(Profile::Scale256, 256, moe_core::Precision::Bf16),
    ),
    s(
        "mixed_train_scale_s256_f32",
        "memory",
        train_prec(Profile::Scale256, 256, moe_core::Precision::F32),
    ),
    // One model, many threads (issue 14): scale_256 on a pool of T threads.
    s("threads_train_T1", "parallel", thr(ThreadsWork::Train, 1)),
    s("threads_train_T2", "parallel", thr(ThreadsWork::Train, 2)),
    s("threads_train_T4", "parallel", thr(ThreadsWork::Train, 4)),
    s(
        "threads_forward_T1",
        "parallel",
        thr(ThreadsWork::Forward, 1),
    ),
    s(
        "threads_forward_T2",
        "parallel",
        thr(ThreadsWork::Forward, 2),
    ),
    s(
        "threads_forward_T4",
        "parallel",
        thr(ThreadsWork::Forward, 4),
    ),
    s("threads_decode_T1", "parallel", thr(ThreadsWork::Decode, 1)),
    s("threads_decode_T2", "parallel", thr(ThreadsWork::Decode, 2)),
    // bf16 weights (issue 17): each beside its f32 twin (`extra.speedup_vs_twin`).
    s(
        "generate_kv_64_scale_256",
        "scale",
        prec(PrecWork::DecodeScale, false),
    ),
    s(
        "generate_kv_64_bf16",
        "scale",
        prec(PrecWork::DecodeScale, true),
    ),
    s(
        "dispatch_warm_bf16",
        "type_system",
        prec(PrecWork::ForwardTiny, true),
    ),
    // Row-major weights (the forward packs per call), each beside its
    // pre-packed spec twin (`extra.speedup_vs_twin`; issue 13 item 2).
    s(
        "dispatch_warm_rowmajor",
        "type_system",
        rowmajor_twin(tiny(Forward, 2, 32), "dispatch_warm"),
    ),
    s(
        "scale_forward_256_rowmajor",
        "scale",
        rowmajor_twin(scale(Forward, 2, 32), "scale_forward_256"),
    ),
    // Heavy (not in a default run): the 6.88 B Full profile in bf16.
    s(
        "full_decode_bf16",
        "scale",
        prec(PrecWork::FullDecode, true),
    ),
];

const fn prec(work: PrecWork, bf16: bool) -> Kind {
    Kind::Prec { work, bf16 }
}

/// The twin id of a [`Kind::Prec`] (bf16 → its f32 twin).
fn twin_of_kind(work: PrecWork, bf16: bool) -> Option<&'static str> {
    match (work, bf16) {
        (PrecWork::DecodeScale, true) => twin_of("generate_kv_64_bf16"),
        (PrecWork::ForwardTiny, true) => twin_of("dispatch_warm_bf16"),
        _ => None,
    }
}

/// The f32 twin of a bf16 scenario (its `params.twin`).
pub fn twin_of(id: &str) -> Option<&'static str> {
    match id {
        "generate_kv_64_bf16" => Some("generate_kv_64_scale_256"),
        "dispatch_warm_bf16" => Some("dispatch_warm"),
        _ => None,
    }
}

/// A b8 [`Kind::TrainMemory`].
const fn train_mem(profile: Profile, t: usize, mem: MemOpts) -> Kind {
    Kind::TrainMemory {
        profile,
        b: 8,
        t,
        mem,
    }
}

/// A b8 [`Kind::TrainPrecision`].
const fn train_prec(profile: Profile, t: usize, precision: moe_core::Precision) -> Kind {
    Kind::TrainPrecision {
        profile,
        b: 8,
        t,
        precision,
    }
}

/// Rounds of `machine_fma_peak` (8-lane: ≈ 1 ms at 90 GFLOP/s; 16-lane:
/// ≈ 0.8 ms at 240).
const FMA_PEAK_ITERS: u64 = 500_000;
/// Floats per array of `machine_bandwidth`: 3 × 64 MiB, 6× a 32 MiB L3.
const BANDWIDTH_N: usize = 16 << 20;

/// Parameters of `Config::scale_256()` (checked by a test against the model).
pub const SCALE_256_PARAMS: usize = 7_134_464;

/// What an AdamW scenario's sweep does besides the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdamPass {
    /// `adamw_pass` only (gradients read, not zeroed).
    Plain,
    /// `adamw_pass`, then `g.fill(0)`: two sweeps (the trainer before the fusion).
    ThenZero,
    /// `adamw_pass_zeroing`: `g ← 0` behind each read, one sweep (the trainer now).
    Zeroing,
    /// `adamw_pass_zeroing_bf16`: also the bf16 copy of the weights (mixed precision).
    ZeroingBf16,
}

impl AdamPass {
    /// The `params.pass` name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            AdamPass::Plain => "adamw",
            AdamPass::ThenZero => "adamw_then_zero",
            AdamPass::Zeroing => "adamw_zeroing",
            AdamPass::ZeroingBf16 => "adamw_zeroing_bf16",
        }
    }

    /// The pass of a `params.pass` name.
    pub fn from_name(name: &str) -> Option<AdamPass> {
        [
            AdamPass::Plain,
            AdamPass::ThenZero,
            AdamPass::Zeroing,
            AdamPass::ZeroingBf16,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// Whether the gradients are zero afterwards.
    pub const fn zeroes(self) -> bool {
        !matches!(self, AdamPass::Plain)
    }
}

/// Bytes one AdamW pass over `n` parameters must move (f32): w, g, m, v
/// read, w, m, v written, and g written when zeroing (the same count for the
/// two-sweep [`AdamPass::ThenZero`]: its second sweep only writes), and the
/// 2-byte bf16 copy written by [`AdamPass::ZeroingBf16`].
pub const fn adamw_bytes(n: usize, pass: AdamPass) -> u64 {
    let per = match pass {
        AdamPass::Plain => 7 * 4,
        AdamPass::ThenZero | AdamPass::Zeroing => 8 * 4,
        AdamPass::ZeroingBf16 => 8 * 4 + 2,
    };
    per * n as u64
}

/// Number of scenarios the spec defines (the first rows of [`SCENARIOS`]).
pub const SPEC_SCENARIOS: usize = 22;

/// Looks a scenario up by id.
pub fn find(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

impl Kind {
    /// The `params` object of the JSON (key names as in the other languages' files).
    pub fn params(&self) -> serde_json::Value {
        match *self {
            Kind::Model {
                profile,
                workload,
                b,
                t,
                heap,
                packed,
                twin,
            } => {
                let mut p = json!({
                    "batch": b, "seq_len": t, "hidden_dim": profile.config().hidden_size, "workload": workload.name(),
                });
                if heap {
                    p["alloc_policy"] = json!("heap-per-step");
                }
                if workload == Workload::Forward {
                    p["weights"] = json!(if packed && prepack_applies() {
                        "prepacked"
                    } else {
                        "row_major"
                    });
                }
                if let Some(t) = twin {
                    p["twin"] = json!(t);
                }
                p
            }
            Kind::Matmul { backend, m, n, k } => {
                json!({ "M": m, "K": k, "N": n, "backend": backend.name(), "op": "C = A * B^T" })
            }
            Kind::TrainMemory { profile, b, t, mem } => json!({
                "batch": b, "seq_len": t, "hidden_dim": profile.config().hidden_size,
                "workload": "loss_and_grad",
                "recompute": match mem.recompute { Recompute::None => "none", Recompute::Layers => "layers" },
                "attention": match mem.attention {
                    moe_core::AttnMemory::Saved => "saved", moe_core::AttnMemory::Lse => "lse",
                    moe_core::AttnMemory::SavedBf16 => "saved_bf16",
                },
            }),
            Kind::TrainPrecision {
                profile,
                b,
                t,
                precision,
            } => {
                let cfg = profile.config();
                let p = cfg.param_counts().total;
                json!({
                    "batch": b, "seq_len": t, "hidden_dim": cfg.hidden_size,
                    "workload": "train_step", "precision": precision.name(),
                    "mixed": precision == moe_core::Precision::Bf16,
                    // f32 master + gradients + both moments; the bf16 copy.
                    "param_state_bytes": 16 * p,
                    "shadow_bytes": if precision == moe_core::Precision::Bf16 { 2 * p } else { 0 },
                })
            }
            Kind::Softmax { n } => json!({ "n": n }),
            Kind::FmaPeak { iters, lanes } => json!({
                "iters": iters,
                "chains": moe_core::kernels::cpu::PEAK_CHAINS,
                "lanes": lanes.unwrap_or_else(moe_core::kernels::cpu::peak_lanes),
                "zmm_full_width": moe_core::kernels::cpu::zmm_full_width(),
            }),
            Kind::Bandwidth { n } => json!({ "n": n, "bytes_per_iter": 12 * n as u64 }),
            Kind::AdamW { n, pass } => json!({
                "n": n, "pass": pass.name(), "zero_grads": pass.zeroes(),
                "bytes_per_iter": adamw_bytes(n, pass),
            }),
            Kind::Decode { prompt, new_tokens } => json!({
                "profile": "tiny", "prompt": prompt, "new_tokens": new_tokens,
                "strategy": "greedy", "kv_cache": true,
            }),
            Kind::RmsNorm { b, t, c } => json!({ "shape": [b, t, c] }),
            Kind::DispatchCold { b, t } => json!({
                "batch": b, "seq_len": t, "hidden_dim": Config::tiny().hidden_size, "workload": "construct+forward",
            }),
            Kind::DispatchColdProcess { b, t } => json!({
                "batch": b, "seq_len": t, "hidden_dim": Config::tiny().hidden_size, "workload": "spawn+construct+forward+exit",
            }),
            Kind::Parallel {
                threads,
                workload,
                b,
                t,
            } => json!({
                "batch": b, "seq_len": t, "hidden_dim": Config::tiny().hidden_size, "thread_count": threads,
                "workload": workload.name(), "parallel_semantics": "independent",
            }),
            Kind::Prec { work, bf16 } => {
                let cfg = work.profile().config();
                let mut p = json!({
                    "profile": work.profile().name(), "hidden_dim": cfg.hidden_size,
                    "precision": if bf16 { "bf16" } else { "f32" },
                });
                match work {
                    PrecWork::DecodeScale => {
                        p["prompt"] = json!(PREC_DECODE.0);
                        p["new_tokens"] = json!(PREC_DECODE.1);
                        p["strategy"] = json!("greedy");
                        p["kv_cache"] = json!(true);
                    }
                    PrecWork::ForwardTiny => {
                        p["batch"] = json!(2);
                        p["seq_len"] = json!(32);
                        p["workload"] = json!("forward");
                    }
                    PrecWork::FullDecode => {
                        p["prompt"] = json!(FULL_DECODE.0);
                        p["new_tokens"] = json!(FULL_DECODE.1);
                        p["batch"] = json!(1);
                        p["kv_cache"] = json!(true);
                        p["thread_count"] = json!(moe_core::available_threads());
                    }
                }
                if let Some(t) = twin_of_kind(work, bf16) {
                    p["twin"] = json!(t);
                }
                p
            }
            Kind::Threads { work, threads } => {
                let mut p = json!({
                    "profile": "scale_256", "hidden_dim": Config::scale_256().hidden_size,
                    "thread_count": threads, "workload": work.name(),
                    "parallel_semantics": "one_model",
                });
                match work {
                    ThreadsWork::Decode => {
                        p["prompt"] = json!(THREADS_DECODE.0);
                        p["new_tokens"] = json!(THREADS_DECODE.1);
                        p["kv_cache"] = json!(true);
                        p["gemv_chunks"] = json!(moe_core::linear::GEMV_CHUNKS);
                    }
                    ThreadsWork::Train => {
                        p["batch"] = json!(THREADS_B);
                        p["seq_len"] = json!(THREADS_T);
                        p["micro_batches"] = json!(moe_core::DEFAULT_MICRO_BATCHES);
                    }
                    ThreadsWork::Forward => {
                        p["batch"] = json!(THREADS_B);
                        p["seq_len"] = json!(THREADS_T);
                        p["splits"] = json!(moe_core::FORWARD_SPLITS);
                    }
                }
                p
            }
        }
    }

    /// Analytic FLOPs of one iteration (all threads), `None` where not defined
    /// (cold start is dominated by construction).
    pub fn flops(&self) -> Option<u64> {
        let model = |cfg: &Config, w: Workload, b, t| match w {
            Workload::Forward => flops::forward(cfg, b, t),
            Workload::TrainStep => flops::train_step(cfg, b, t),
        };
        match *self {
            Kind::Model {
                profile,
                workload,
                b,
                t,
                ..
            } => Some(model(&profile.config(), workload, b, t)),
            // The model's FLOPs of a training step without the optimizer's
            // (recompute's extra forward work is not counted).
            Kind::TrainMemory { profile, b, t, .. }
            | Kind::TrainPrecision { profile, b, t, .. } => {
                Some(model(&profile.config(), Workload::TrainStep, b, t))
            }
            Kind::Matmul { m, n, k, .. } => Some(flops::gemm(m, n, k)),
            Kind::Softmax { n } => Some(flops::softmax(n)),
            // The file's width when the report reads a run back (a 16-lane
            // run read on an 8-lane machine is still a 16-lane run).
            Kind::FmaPeak { iters, lanes } => Some(
                iters
                    * (moe_core::kernels::cpu::PEAK_CHAINS
                        * lanes.unwrap_or_else(moe_core::kernels::cpu::peak_lanes)
                        * 2) as u64,
            ),
            Kind::Bandwidth { n } => Some(2 * n as u64),
            Kind::RmsNorm { b, t, c } => Some(flops::rmsnorm(b * t, c)),
            Kind::DispatchCold { .. }
            | Kind::DispatchColdProcess { .. }
            | Kind::Decode { .. }
            | Kind::AdamW { .. } => None,
            Kind::Parallel {
                threads,
                workload,
                b,
                t,
            } => Some(threads as u64 * model(&Config::tiny(), workload, b, t)),
            Kind::Prec { work, .. } => match work {
                PrecWork::ForwardTiny => Some(model(&Config::tiny(), Forward, 2, 32)),
                PrecWork::DecodeScale | PrecWork::FullDecode => None,
            },
            Kind::Threads { work, .. } => match work {
                ThreadsWork::Train => {
                    Some(model(&Config::scale_256(), TrainStep, THREADS_B, THREADS_T))
                }
                ThreadsWork::Forward => {
                    Some(model(&Config::scale_256(), Forward, THREADS_B, THREADS_T))
                }
                ThreadsWork::Decode => None,
            },
        }
    }

    /// Tokens processed by one iteration (all threads); `None` for kernels.
    pub fn tokens(&self) -> Option<u64> {
        match *self {
            Kind::Model { b, t, .. }
            | Kind::TrainMemory { b, t, .. }
            | Kind::TrainPrecision { b, t, .. }
            | Kind::DispatchCold { b, t }
            | Kind::DispatchColdProcess { b, t } => Some((b * t) as u64),
            Kind::Parallel { threads, b, t, .. } => Some((threads * b * t) as u64),
            Kind::Decode { new_tokens, .. } => Some(new_tokens as u64),
            Kind::Prec { work, .. } => Some(match work {
                PrecWork::DecodeScale => PREC_DECODE.1 as u64,
                PrecWork::ForwardTiny => 64,
                PrecWork::FullDecode => (FULL_DECODE.0 + FULL_DECODE.1) as u64,
            }),
            Kind::Threads { work, .. } => Some(match work {
                ThreadsWork::Decode => THREADS_DECODE.1 as u64,
                _ => (THREADS_B * THREADS_T) as u64,
            }),
            Kind::Matmul { .. }
            | Kind::Softmax { .. }
            | Kind::RmsNorm { .. }
            | Kind::FmaPeak { .. }
            | Kind::Bandwidth { .. }
            | Kind::AdamW { .. } => None,
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Warmup runs.
    pub warmup: usize,
    /// Timed trials.
    pub trials: usize,
    /// Seed of models and fixtures.
    pub seed: u64,
    /// The `moe` binary (for `dispatch_cold_process`).
    pub exe: PathBuf,
}

/// What a scenario runner hands back.
#[derive(Debug)]
struct Outcome {
    m: Measurement,
    numerical: Numerical,
    arena_bytes: u64,
    /// Replaces this process's peak RSS (cold process: the child's own).
    peak_rss_bytes: Option<u64>,
    /// `ScenarioResult::extra`.
    extra: Option<serde_json::Value>,
}

/// Runs one scenario in this process.
///
/// # Errors
/// Model/workspace errors from moe-core, a failed child, or a measurement error.
pub fn run(sc: &Scenario, o: &RunOpts) -> Result<ScenarioResult, Error> {
    let out = match sc.kind {
        Kind::Model {
            profile,
            workload: Workload::Forward,
            b,
            t,
            heap,
            packed,
            ..
        } => run_forward(&profile.config(), b, t, policy(heap), packed, o)?,
        Kind::Model {
            profile,
            workload: Workload::TrainStep,
            b,
            t,
            heap,
            ..
        } => run_train(&profile.config(), b, t, policy(heap), o)?,
        Kind::TrainMemory { profile, b, t, mem } => {
            run_train_memory(&profile.config(), b, t, mem, o)?
        }
        Kind::TrainPrecision {
            profile,
            b,
            t,
            precision,
        } => run_train_precision(&profile.config(), b, t, precision, o)?,
        Kind::Matmul { backend, m, n, k } => run_matmul(backend, m, n, k, o)?,
        Kind::Softmax { n } => run_softmax(n, o)?,
        Kind::FmaPeak { iters, .. } => run_fma_peak(iters, o)?,
        Kind::Bandwidth { n } => run_bandwidth(n, o)?,
        Kind::AdamW { n, pass } => run_adamw(n, pass, o)?,
        Kind::RmsNorm { b, t, c } => run_rmsnorm(b * t, c, o)?,
        Kind::DispatchCold { b, t } => run_cold(b, t, o)?,
        Kind::DispatchColdProcess { b, t } => run_cold_process(b, t, o)?,
        Kind::Decode { prompt, new_tokens } => run_decode(prompt, new_tokens, o)?,
        Kind::Parallel {
            threads,
            workload,
            b,
            t,
        } => run_parallel(threads, workload, b, t, o)?,
        Kind::Threads { work, threads } => run_threads(work, threads, o)?,
        Kind::Prec { work, bf16 } => run_prec(work, bf16, o)?,
    };
    finish(sc, out)
}

/// Statistics and derived metrics.
fn finish(sc: &Scenario, out: Outcome) -> Result<ScenarioResult, Error> {
    let timings: Vec<u64> = out.m.trials.iter().map(|s| s.wall_ns).collect();
    let cpu: Vec<u64> = out.m.trials.iter().map(|s| s.cpu_ns).collect();
    let warm: Vec<u64> = out.m.warmup.iter().map(|s| s.wall_ns).collect();
    let alloc_bytes = median_u64(
        &out.m
            .trials
            .iter()
            .map(|s| s.alloc.bytes)
            .collect::<Vec<_>>(),
    );
    let alloc_count = median_u64(
        &out.m
            .trials
            .iter()
            .map(|s| s.alloc.count)
            .collect::<Vec<_>>(),
    );
    let sum = summarize(&timings);
    let peak_rss_bytes = match out.peak_rss_bytes {
        Some(p) => p,
        None => rusage::getrusage(rusage::Who::SelfProcess)?.max_rss_bytes,
    };
    let secs = sum.median as f64 * 1e-9;
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    Ok(ScenarioResult {
        id: sc.id.to_owned(),
        axis: sc.axis.to_owned(),
        params: sc.kind.params(),
        warmup_runs: warm.len() as u64,
        trial_runs: timings.len() as u64,
        median_ns: sum.median,
        p95_ns: sum.p95,
        min_ns: sum.min,
        max_ns: sum.max,
        iqr_ns: sum.iqr,
        cpu_median_ns: median_u64(&cpu),
        timings_ns: timings,
        cpu_times_ns: cpu,
        warmup_timings_ns: warm,
        memory: Memory {
            peak_rss_bytes,
            alloc_bytes,
            alloc_count,
            arena_bytes: out.arena_bytes,
        },
        gc: Gc {
            total_gc_time_ns: 0,
            gc_pause_count: 0,
        },
        numerical: out.numerical,
        throughput_tokens_per_sec: sc.kind.tokens().map(|n| per_sec(n as f64)),
        derived: Derived {
            alloc_rate_bytes_per_sec: per_sec(alloc_bytes as f64),
            gc_throughput: 1.0,
            gflops: sc.kind.flops().map(|f| per_sec(f as f64) * 1e-9),
        },
        extra: out.extra,
    })
}

/// `token[i, s] = (i·t + s) mod v` (and `+ 1` for targets), `[b, t]` row-major.
pub fn fixture_tokens(b: usize, t: usize, vocab: usize, shift: usize) -> Vec<u32> {
    (0..b * t).map(|i| ((i + shift) % vocab) as u32).collect()
}

/// SplitMix64 uniforms in `[0, 1)` for the kernel operands.
fn fixture_uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
        })
        .collect()
}

fn policy(heap: bool) -> AllocPolicy {
    if heap {
        AllocPolicy::HeapPerStep
    } else {
        AllocPolicy::Arena
    }
}

fn run_forward(
    cfg: &Config,
    b: usize,
    t: usize,
    policy: AllocPolicy,
    packed: bool,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let mut model = MoETransformer::new(cfg, o.seed)?;
    if packed && prepack_applies() {
        // Construction, outside the timed region: the forward never packs a weight.
        model.prepack()?;
    }
    let mut ws = model.workspace(b, t, Mode::Inference)?;
    ws.set_alloc_policy(policy);
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let mut numerical = Numerical::default();
    let m = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        let out = model.forward(&mut ws, &tokens, b, t);
        p.stop(s);
        numerical = Numerical::of(out?);
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical,
        arena_bytes: ws.bytes() as u64,
        peak_rss_bytes: None,
        extra: None,
    })
}

/// The spec's training scenarios measure one thread running the step as one
/// pass over the whole batch (`micro_batches = 1`: the computation, memory
/// and bits these scenarios always had); `Trainer::new`'s default of 4
/// micro-batches is what the `threads_train_*` scenarios measure.
fn single_pass_trainer(model: MoETransformer, b: usize, t: usize) -> Result<Trainer, Error> {
    Ok(Trainer::with_pool(
        model,
        TrainConfig::default(),
        b,
        t,
        moe_core::Pool::single(),
        1,
    )?)
}

fn run_train(
    cfg: &Config,
    b: usize,
    t: usize,
    policy: AllocPolicy,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let model = MoETransformer::new(cfg, o.seed)?;
    let mut trainer = single_pass_trainer(model, b, t)?;
    trainer.set_alloc_policy(policy);
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let targets = fixture_tokens(b, t, cfg.vocab_size, 1);
    let mut numerical = Numerical::default();
    let m = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        let out = trainer.train_step(&tokens, &targets, b, t);
        p.stop(s);
        numerical = Numerical::of(&[out?.loss]);
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical,
        arena_bytes: trainer.workspace_bytes() as u64,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_train_precision(
    cfg: &Config,
    b: usize,
    t: usize,
    precision: moe_core::Precision,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let model = MoETransformer::new(cfg, o.seed)?;
    let tc = TrainConfig {
        precision,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::with_pool(model, tc, b, t, moe_core::Pool::single(), 1)?;
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let targets = fixture_tokens(b, t, cfg.vocab_size, 1);
    let mut numerical = Numerical::default();
    let m = measure::run(o.warmup.min(1), o.trials.min(5), |p| {
        let s = p.start();
        let out = trainer.train_step(&tokens, &targets, b, t);
        p.stop(s);
        numerical = Numerical::of(&[out?.loss]);
        Ok(())
    })?;
    // Measured on the trainer: its bf16 copy and gradient buffers.
    let extra = json!({
        "shadow_bytes": trainer.shadow_bytes(),
        "grad_bytes": trainer.grad_bytes(),
    });
    Ok(Outcome {
        m,
        numerical,
        arena_bytes: trainer.workspace_bytes() as u64,
        peak_rss_bytes: None,
        extra: Some(extra),
    })
}

fn run_train_memory(
    cfg: &Config,
    b: usize,
    t: usize,
    mem: MemOpts,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let model = MoETransformer::new(cfg, o.seed)?;
    let mut ws = model.workspace_with(b, t, Mode::Training, mem)?;
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let targets = fixture_tokens(b, t, cfg.vocab_size, 1);
    let mut grads = vec![0.0f32; model.layout().total];
    let alpha = TrainConfig::default().aux_alpha;
    let mut numerical = Numerical::default();
    // A step is 0.5–1.5 s at these shapes: at most 1 warmup + 5 trials keeps
    // the four scenarios near half a minute of the full run.
    let m = measure::run(o.warmup.min(1), o.trials.min(5), |p| {
        let s = p.start();
        grads.iter_mut().for_each(|g| *g = 0.0);
        let out = model.loss_and_grad(&mut ws, &mut grads, &tokens, &targets, b, t, alpha, None);
        p.stop(s);
        numerical = Numerical::of(&[out?.loss]);
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical,
        arena_bytes: ws.bytes() as u64,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_matmul(
    backend: Backend,
    m: usize,
    n: usize,
    k: usize,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let a: Vec<f32> = fixture_uniform(o.seed, m * k)
        .iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    let bt: Vec<f32> = fixture_uniform(o.seed + 1, n * k)
        .iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    let mut c = vec![0.0f32; m * n];
    let meas = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        gemm_with(
            backend,
            m,
            n,
            k,
            1.0,
            Mat::n(black_box(&a), k),
            Mat::t(black_box(&bt), k),
            0.0,
            black_box(&mut c),
            n,
        );
        p.stop(s);
        black_box(&c);
        Ok(())
    })?;
    Ok(Outcome {
        m: meas,
        numerical: Numerical::of(&c),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_fma_peak(iters: u64, o: &RunOpts) -> Result<Outcome, Error> {
    let mut out = 0.0f32;
    let meas = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        out = moe_core::kernels::cpu::fma_peak(
            black_box(iters),
            black_box(0.999_999),
            black_box(1e-7),
        );
        p.stop(s);
        black_box(out);
        Ok(())
    })?;
    // Where the peak loop ran on 16-lane `zmm`, also the 8-lane `ymm` rate
    // (the AVX2 peak, which the targets were first written against):
    // `extra.ymm_gflops`, the median of as many trials.
    let lanes = moe_core::kernels::cpu::peak_lanes();
    let extra = if lanes > moe_core::kernels::cpu::PEAK_LANES {
        let ymm = measure::run(o.warmup.min(2), o.trials, |p| {
            let s = p.start();
            let r = moe_core::kernels::cpu::fma_peak_ymm(
                black_box(iters),
                black_box(0.999_999),
                black_box(1e-7),
            );
            p.stop(s);
            black_box(r);
            Ok(())
        })?;
        let ns: Vec<u64> = ymm.trials.iter().map(|t| t.wall_ns).collect();
        let flops = iters
            * (moe_core::kernels::cpu::PEAK_CHAINS * moe_core::kernels::cpu::PEAK_LANES * 2) as u64;
        let med = crate::harness::stats::median_u64(&ns).max(1);
        Some(json!({ "lanes": lanes, "ymm_gflops": flops as f64 / med as f64 }))
    } else {
        Some(json!({ "lanes": lanes }))
    };
    Ok(Outcome {
        m: meas,
        numerical: Numerical::of(&[out]),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra,
    })
}

fn run_bandwidth(n: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let scalar = black_box(3.0f32);
    let meas = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        for ((ai, &bi), &ci) in black_box(&mut a).iter_mut().zip(black_box(&b)).zip(&c) {
            *ai = bi + scalar * ci;
        }
        p.stop(s);
        black_box(&a);
        Ok(())
    })?;
    Ok(Outcome {
        m: meas,
        numerical: Numerical::of(&a[..1024]),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_adamw(n: usize, pass: AdamPass, o: &RunOpts) -> Result<Outcome, Error> {
    use moe_core::kernels::adamw::{
        adamw_pass, adamw_pass_zeroing, adamw_pass_zeroing_bf16, AdamWStep,
    };
    let mut w: Vec<f32> = fixture_uniform(o.seed, n)
        .iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    let g0: Vec<f32> = fixture_uniform(o.seed + 1, n)
        .iter()
        .map(|u| 0.02 * (u - 0.5))
        .collect();
    let mut g = g0.clone();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    // The bf16 copy (mixed precision); empty for the other passes.
    let mut copy = vec![0u16; if pass == AdamPass::ZeroingBf16 { n } else { 0 }];
    // Step-1 scalars of the default config at lr = 1e-3 (the values only need
    // to be those of a real step; the memory traffic does not depend on them).
    let (lr, b1, b2) = (1e-3f32, 0.9f32, 0.999f32);
    let step = AdamWStep {
        decay: 1.0 - lr * 0.01,
        grad_scale: 1.0,
        w1: 1.0 - b1,
        beta2: b2,
        w2: 1.0 - b2,
        bc2_sqrt: (1.0 - b2).sqrt(),
        eps: 1e-8,
        step_size: lr / (1.0 - b1),
    };
    let meas = measure::run(o.warmup, o.trials, |p| {
        if pass.zeroes() {
            // The zeroing passes leave zeros: restore real gradients (untimed).
            g.copy_from_slice(&g0);
        }
        let s = p.start();
        match pass {
            AdamPass::Plain => adamw_pass(black_box(&mut w), &g, &mut m, &mut v, step),
            AdamPass::ThenZero => {
                adamw_pass(black_box(&mut w), &g, &mut m, &mut v, step);
                black_box(&mut g[..]).fill(0.0);
            }
            AdamPass::Zeroing => {
                black_box(adamw_pass_zeroing(
                    black_box(&mut w),
                    &mut g,
                    &mut m,
                    &mut v,
                    step,
                ));
            }
            AdamPass::ZeroingBf16 => {
                black_box(adamw_pass_zeroing_bf16(
                    black_box(&mut w),
                    &mut g,
                    &mut m,
                    &mut v,
                    &mut copy,
                    step,
                ));
            }
        }
        p.stop(s);
        black_box((&w, &g));
        Ok(())
    })?;
    Ok(Outcome {
        m: meas,
        numerical: Numerical::of(&w[..1024]),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_softmax(n: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let x: Vec<f32> = fixture_uniform(o.seed, n)
        .iter()
        .map(|u| 4.0 * (2.0 * u - 1.0))
        .collect();
    let mut buf = vec![0.0f32; n];
    let m = measure::run(o.warmup, o.trials, |p| {
        buf.copy_from_slice(&x);
        let s = p.start();
        softmax::forward_inplace(black_box(&mut buf));
        p.stop(s);
        black_box(&buf);
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical: Numerical::of(&buf),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_decode(prompt: usize, new_tokens: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, o.seed)?;
    let v = cfg.vocab_size;
    let tokens = fixture_tokens(1, prompt, v, 0);
    let mut dec = Decoder::new(&model, prompt + new_tokens)?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let greedy = SamplingStrategy::Greedy;
    let mut last = vec![0.0f32; v];
    let m = measure::run(o.warmup, o.trials, |p| {
        dec.reset();
        let s = p.start();
        let logits = dec.prefill(black_box(&tokens))?;
        let mut next = greedy.pick_token(&logits[(prompt - 1) * v..], &mut rng)?;
        for _ in 1..new_tokens {
            next = greedy.pick_token(dec.step(next)?, &mut rng)?;
        }
        let l = dec.step(next)?;
        p.stop(s);
        last.copy_from_slice(l);
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical: Numerical::of(&last),
        arena_bytes: dec.bytes() as u64,
        peak_rss_bytes: None,
        extra: None,
    })
}

/// One scale_256 model on a pool of `threads` threads ([`Kind::Threads`]);
/// model, pool, workspaces and inputs are built outside the timed region.
fn run_threads(work: ThreadsWork, threads: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let cfg = Config::scale_256();
    let model = MoETransformer::new(&cfg, o.seed)?;
    let pool = moe_core::Pool::new(threads)?;
    let (b, t, v) = (THREADS_B, THREADS_T, cfg.vocab_size);
    match work {
        ThreadsWork::Train => {
            let mut trainer = Trainer::with_pool(
                model,
                TrainConfig::default(),
                b,
                t,
                pool,
                moe_core::DEFAULT_MICRO_BATCHES,
            )?;
            let tokens = fixture_tokens(b, t, v, 0);
            let targets = fixture_tokens(b, t, v, 1);
            let mut numerical = Numerical::default();
            let m = measure::run(o.warmup, o.trials, |p| {
                let s = p.start();
                let out = trainer.train_step(&tokens, &targets, b, t);
                p.stop(s);
                numerical = Numerical::of(&[out?.loss]);
                Ok(())
            })?;
            let arena_bytes = (trainer.workspace_bytes() + trainer.grad_bytes()) as u64;
            Ok(Outcome {
                m,
                numerical,
                arena_bytes,
                peak_rss_bytes: None,
                extra: None,
            })
        }
        ThreadsWork::Forward => {
            let mut ws = model.split_workspace(b, t, moe_core::FORWARD_SPLITS)?;
            let tokens = fixture_tokens(b, t, v, 0);
            let mut numerical = Numerical::default();
            let m = measure::run(o.warmup, o.trials, |p| {
                let s = p.start();
                let out = model.forward_split(&pool, &mut ws, &tokens, b, t);
                p.stop(s);
                numerical = Numerical::of(out?);
                Ok(())
            })?;
            Ok(Outcome {
                m,
                numerical,
                arena_bytes: ws.bytes() as u64,
                peak_rss_bytes: None,
                extra: None,
            })
        }
        ThreadsWork::Decode => {
            let (prompt, new_tokens) = THREADS_DECODE;
            let tokens = fixture_tokens(1, prompt, v, 0);
            let mut dec = Decoder::with_pool(&model, prompt + new_tokens, &pool)?;
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
            let greedy = SamplingStrategy::Greedy;
            let mut last = vec![0.0f32; v];
            let m = measure::run(o.warmup, o.trials, |p| {
                dec.reset();
                let s = p.start();
                let logits = dec.prefill(black_box(&tokens))?;
                let mut next = greedy.pick_token(&logits[(prompt - 1) * v..], &mut rng)?;
                for _ in 1..new_tokens {
                    next = greedy.pick_token(dec.step(next)?, &mut rng)?;
                }
                let l = dec.step(next)?;
                p.stop(s);
                last.copy_from_slice(l);
                Ok(())
            })?;
            Ok(Outcome {
                m,
                numerical: Numerical::of(&last),
                arena_bytes: dec.bytes() as u64,
                peak_rss_bytes: None,
                extra: None,
            })
        }
    }
}

fn run_rmsnorm(rows: usize, c: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let eps = Config::tiny().rms_norm_eps;
    let x: Vec<f32> = fixture_uniform(o.seed, rows * c)
        .iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    let w: Vec<f32> = fixture_uniform(o.seed + 1, c)
        .iter()
        .map(|u| 0.5 + u)
        .collect();
    let mut y = vec![0.0f32; rows * c];
    let mut rstd = vec![0.0f32; rows];
    let m = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        rmsnorm::forward(
            black_box(&mut y),
            black_box(&mut rstd),
            black_box(&x),
            black_box(&w),
            eps,
        );
        p.stop(s);
        black_box((&y, &rstd));
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical: Numerical::of(&y),
        arena_bytes: 0,
        peak_rss_bytes: None,
        extra: None,
    })
}

fn run_cold(b: usize, t: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let cfg = Config::tiny();
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let (mut numerical, mut arena_bytes) = (Numerical::default(), 0u64);
    let m = measure::run(o.warmup, o.trials, |p| {
        let s = p.start();
        let built = MoETransformer::new(&cfg, o.seed).and_then(|model| {
            let ws = model.workspace(b, t, Mode::Inference)?;
            Ok((model, ws))
        });
        let (model, mut ws) = match built {
            Ok(x) => x,
            Err(e) => {
                p.stop(s);
                return Err(e.into());
            }
        };
        let out = model.forward(&mut ws, &tokens, b, t);
        p.stop(s);
        numerical = Numerical::of(out?);
        arena_bytes = ws.bytes() as u64;
        // `model` and `ws` are dropped here, outside the timed region.
        Ok(())
    })?;
    Ok(Outcome {
        m,
        numerical,
        arena_bytes,
        peak_rss_bytes: None,
        extra: None,
    })
}

/// What `moe cold-start` prints (one JSON line) for `dispatch_cold_process`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ColdReport {
    /// Heap bytes the child requested from its start to the end of the forward.
    pub alloc_bytes: u64,
    /// Heap allocation calls, same window.
    pub alloc_count: u64,
    /// Its workspace plan.
    pub arena_bytes: u64,
    /// Its logits' finiteness.
    pub numerical: Numerical,
}

/// The `moe cold-start` subcommand: build the tiny model from the seed, plan a
/// `[b, t]` inference workspace, run one forward, print a [`ColdReport`].
///
/// # Errors
/// moe-core errors.
pub fn cold_start(b: usize, t: usize, seed: u64) -> Result<ColdReport, Error> {
    let cfg = Config::tiny();
    let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
    let model = MoETransformer::new(&cfg, seed)?;
    let mut ws = model.workspace(b, t, Mode::Inference)?;
    let numerical = Numerical::of(model.forward(&mut ws, &tokens, b, t)?);
    let a = crate::harness::sys::alloc_counter::AllocSnapshot::now();
    Ok(ColdReport {
        alloc_bytes: a.bytes,
        alloc_count: a.count,
        arena_bytes: ws.bytes() as u64,
        numerical,
    })
}

fn run_cold_process(b: usize, t: usize, o: &RunOpts) -> Result<Outcome, Error> {
    let mut report: Option<ColdReport> = None;
    let mut peak = 0u64;
    let m = measure::run(o.warmup, o.trials, |p| {
        let mut cmd = Command::new(&o.exe);
        cmd.args([
            "cold-start",
            "--batch",
            &b.to_string(),
            "--seq",
            &t.to_string(),
            "--seed",
            &o.seed.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let s = p.start();
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                p.stop(s);
                return Err(format!("spawning {}: {e}", o.exe.display()).into());
            }
        };
        let stdout = child.stdout.take();
        let waited = rusage::wait_child(child);
        p.stop(s);
        let (code, usage) = waited?;
        let mut text = String::new();
        if let Some(mut out) = stdout {
            out.read_to_string(&mut text)?;
        }
        if code != 0 {
            return Err(format!("`moe cold-start` exited with {code}").into());
        }
        let r: ColdReport = serde_json::from_str(text.trim())
            .map_err(|e| format!("cold-start output {text:?}: {e}"))?;
        if let Some(last) = p.last_mut() {
            // The child's own CPU time and heap traffic, not this process's spawn bookkeeping.
            last.cpu_ns = usage.cpu_ns();
            last.alloc.bytes = r.alloc_bytes;
            last.alloc.count = r.alloc_count;
        }
        peak = peak.max(usage.max_rss_bytes);
        report = Some(r);
        Ok(())
    })?;
    let r = report.ok_or("no cold-start run")?;
    Ok(Outcome {
        m,
        numerical: r.numerical,
        arena_bytes: r.arena_bytes,
        peak_rss_bytes: Some(peak),
        extra: None,
    })
}

/// Per-thread state of the parallel axis.
#[allow(clippy::large_enum_variant)] // reason: one value per thread, built once outside the timed region
enum Worker {
    Forward {
        model: MoETransformer,
        ws: moe_core::Workspace,
        tokens: Vec<u32>,
    },
    Train {
        trainer: Trainer,
        tokens: Vec<u32>,
        targets: Vec<u32>,
    },
}

impl Worker {
    fn build(workload: Workload, b: usize, t: usize, seed: u64) -> Result<Self, Error> {
        let cfg = Config::tiny();
        let model = MoETransformer::new(&cfg, seed)?;
        let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
        Ok(match workload {
            Workload::Forward => Worker::Forward {
                ws: model.workspace(b, t, Mode::Inference)?,
                model,
                tokens,
            },
            Workload::TrainStep => Worker::Train {
                trainer: single_pass_trainer(model, b, t)?,
                targets: fixture_tokens(b, t, cfg.vocab_size, 1),
                tokens,
            },
        })
    }

    fn arena_bytes(&self) -> u64 {
        match self {
            Worker::Forward { ws, .. } => ws.bytes() as u64,
            Worker::Train { trainer, .. } => trainer.workspace_bytes() as u64,
        }
    }
}

/// The barriers every thread (workers + the timing thread) passes.
struct Sync {
    ready: Barrier,
    start: Barrier,
    end: Barrier,
    failed: AtomicBool,
}

/// One worker thread: build, then `total` iterations between the start and
/// end barriers; the output of the last one is scanned after its end barrier.
fn worker_thread(
    sync: &Sync,
    workload: Workload,
    b: usize,
    t: usize,
    seed: u64,
    total: usize,
) -> Result<(u64, Numerical), Error> {
    let built = Worker::build(workload, b, t, seed);
    if built.is_err() {
        sync.failed.store(true, Ordering::SeqCst);
    }
    sync.ready.wait();
    let mut w = built?;
    if sync.failed.load(Ordering::SeqCst) {
        return Ok((0, Numerical::default())); // another worker failed: nobody runs
    }
    let arena = w.arena_bytes();
    let mut numerical = Numerical::default();
    let mut error: Option<Error> = None;
    // After an error the thread keeps passing the barriers (doing nothing) so
    // that the others and the timing thread are not left waiting.
    for i in 0..total {
        sync.start.wait();
        match &mut w {
            Worker::Forward { model, ws, tokens } => {
                let out = if error.is_none() {
                    Some(model.forward(ws, tokens, b, t))
                } else {
                    None
                };
                sync.end.wait();
                match out {
                    Some(Ok(logits)) if i + 1 == total => numerical = Numerical::of(logits),
                    Some(Err(e)) => error = Some(e.into()),
                    _ => {}
                }
            }
            Worker::Train {
                trainer,
                tokens,
                targets,
            } => {
                let out = if error.is_none() {
                    Some(trainer.train_step(tokens, targets, b, t))
                } else {
                    None
                };
                sync.end.wait();
                match out {
                    Some(Ok(st)) if i + 1 == total => numerical = Numerical::of(&[st.loss]),
                    Some(Err(e)) => error = Some(e.into()),
                    _ => {}
                }
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((arena, numerical)),
    }
}

fn run_parallel(
    threads: usize,
    workload: Workload,
    b: usize,
    t: usize,
    o: &RunOpts,
) -> Result<Outcome, Error> {
    let total = o.warmup + o.trials;
    let sync = Sync {
        ready: Barrier::new(threads + 1),
        start: Barrier::new(threads + 1),
        end: Barrier::new(threads + 1),
        failed: AtomicBool::new(false),
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let sync = &sync;
                scope.spawn(move || {
                    worker_thread(sync, workload, b, t, o.seed, total).map_err(|e| e.to_string())
                })
            })
            .collect();
        sync.ready.wait();
        // The timing thread only waits on the barriers: one trial is the wall
        // time from releasing the workers to the last one finishing.
        let m = if sync.failed.load(Ordering::SeqCst) {
            Ok(Measurement::default())
        } else {
            measure::run(o.warmup, o.trials, |p| {
                let s = p.start();
                sync.start.wait();
                sync.end.wait();
                p.stop(s);
                Ok(())
            })
        };
        let mut arena_bytes = 0u64;
        let mut numerical = Numerical::default();
        for h in handles {
            let (arena, num) = h.join().map_err(|_| "a worker thread panicked")??;
            arena_bytes += arena;
            numerical = numerical.merge(num);
        }
        Ok(Outcome {
            m: m?,
            numerical,
            arena_bytes,
            peak_rss_bytes: None,
            extra: None,
        })
    })
}

/// [`Kind::Prec`]: the model is built in its precision outside the timed
/// region (the Full profile's bf16 init is timed separately into `extra`).
fn run_prec(work: PrecWork, bf16: bool, o: &RunOpts) -> Result<Outcome, Error> {
    use moe_core::Precision;
    let precision = if bf16 {
        Precision::Bf16
    } else {
        Precision::F32
    };
    let cfg = work.profile().config();
    match work {
        PrecWork::ForwardTiny => {
            let model = MoETransformer::new_with(&cfg, o.seed, precision)?;
            let (b, t) = (2, 32);
            let mut ws = model.workspace(b, t, Mode::Inference)?;
            let tokens = fixture_tokens(b, t, cfg.vocab_size, 0);
            let mut numerical = Numerical::default();
            let m = measure::run(o.warmup, o.trials, |p| {
                let s = p.start();
                let out = model.forward(&mut ws, &tokens, b, t);
                p.stop(s);
                numerical = Numerical::of(out?);
                Ok(())
            })?;
            Ok(Outcome {
                m,
                numerical,
                arena_bytes: ws.bytes() as u64,
                peak_rss_bytes: None,
                extra: Some(json!({ "weight_bytes": model.param_bytes() })),
            })
        }
        PrecWork::DecodeScale => {
            let model = MoETransformer::new_with(&cfg, o.seed, precision)?;
            let (prompt, new_tokens) = PREC_DECODE;
            let v = cfg.vocab_size;
            let tokens = fixture_tokens(1, prompt, v, 0);
            let mut dec = Decoder::new(&model, prompt + new_tokens)?;
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
            let greedy = SamplingStrategy::Greedy;
            let mut last = vec![0.0f32; v];
            let m = measure::run(o.warmup, o.trials, |p| {
                dec.reset();
                let s = p.start();
                let logits = dec.prefill(black_box(&tokens))?;
                let mut next = greedy.pick_token(&logits[(prompt - 1) * v..], &mut rng)?;
                for _ in 1..new_tokens {
                    next = greedy.pick_token(dec.step(next)?, &mut rng)?;
                }
                let l = dec.step(next)?;
                p.stop(s);
                last.copy_from_slice(l);
                Ok(())
            })?;
            Ok(Outcome {
                m,
                numerical: Numerical::of(&last),
                arena_bytes: dec.bytes() as u64,
                peak_rss_bytes: None,
                extra: Some(json!({ "weight_bytes": model.param_bytes() })),
            })
        }
        PrecWork::FullDecode => run_full_decode(&cfg, o),
    }
}

/// `full_decode_bf16`: builds the Full model straight into bf16 on all
/// threads (timed: `extra.init_s`), measures a STREAM-style read bandwidth on
/// all threads, then times prefill 32 + decode 16 (`trials` runs, KV cache
/// reset each time; the first is the warmup).
fn run_full_decode(cfg: &Config, o: &RunOpts) -> Result<Outcome, Error> {
    let threads = moe_core::available_threads();
    let pool = moe_core::Pool::new(threads)?;
    let t0 = std::time::Instant::now();
    let model = MoETransformer::new_bf16_on(cfg, o.seed, &pool)?;
    let init_s = t0.elapsed().as_secs_f64();
    let read_gbs = read_bandwidth(&pool);
    let (prompt, new_tokens) = FULL_DECODE;
    let v = cfg.vocab_size;
    let tokens = fixture_tokens(1, prompt, v, 0);
    let mut dec = Decoder::with_pool(&model, prompt + new_tokens, &pool)?;
    let greedy = SamplingStrategy::Greedy;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut last = vec![0.0f32; v];
    let (mut prefill_ns, mut decode_ns) = (Vec::new(), Vec::new());
    let m = measure::run(o.warmup.min(1), o.trials.clamp(1, 3), |p| {
        dec.reset();
        let s = p.start();
        let a = std::time::Instant::now();
        let logits = dec.prefill(black_box(&tokens))?;
        let mut next = greedy.pick_token(&logits[(prompt - 1) * v..], &mut rng)?;
        let b = std::time::Instant::now();
        for i in 0..new_tokens {
            let l = dec.step(next)?;
            if i + 1 == new_tokens {
                last.copy_from_slice(l);
            }
            next = greedy.pick_token(l, &mut rng)?;
        }
        let c = std::time::Instant::now();
        p.stop(s);
        prefill_ns.push((b - a).as_nanos() as f64);
        decode_ns.push((c - b).as_nanos() as f64);
        Ok(())
    })?;
    let med = |x: &mut Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (pre, dec_ns) = (med(&mut prefill_ns), med(&mut decode_ns));
    let counts = cfg.param_counts_checked()?;
    // Active bf16 weight bytes of one decoded token: every active parameter
    // once (embedding row and norms are negligible), 2 bytes each.
    let active_bytes = 2 * counts.active;
    let decode_tps = new_tokens as f64 / (dec_ns * 1e-9);
    let limit_tps = read_gbs * 1e9 / active_bytes as f64;
    Ok(Outcome {
        m,
        numerical: Numerical::of(&last),
        arena_bytes: dec.bytes() as u64,
        peak_rss_bytes: None,
        extra: Some(json!({
            "init_s": init_s,
            "init_threads": threads,
            "prefill_tokens_per_sec": prompt as f64 / (pre * 1e-9),
            "decode_tokens_per_sec": decode_tps,
            "weight_bytes": model.param_bytes(),
            "decoder_bytes": dec.bytes(),
            "active_bf16_bytes_per_token": active_bytes,
            "read_bandwidth_gb_per_sec": read_gbs,
            "decode_limit_tokens_per_sec": limit_tps,
            "fraction_of_limit": decode_tps / limit_tps,
        })),
    })
}

/// STREAM-style read bandwidth on all of `pool`'s threads, GB/s: each thread
/// sums its own 256 MiB block of `u16` (touched first), best of 5 passes.
fn read_bandwidth(pool: &moe_core::Pool) -> f64 {
    const PER: usize = 128 << 20; // u16 per thread: 256 MiB
    let threads = pool.threads();
    let mut blocks: Vec<Vec<u16>> = (0..threads).map(|i| vec![i as u16 + 1; PER]).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        pool.for_each_mut(&mut blocks, |_, b| {
            black_box(moe_core::kernels::bf16::dot(&[1.0; 8], &b[..8]));
            // A wide integer sum the compiler vectorises: one pass over the block.
            let s = b.chunks_exact(64).fold(0u32, |acc, c| {
                acc.wrapping_add(c.iter().fold(0u32, |a, &x| a.wrapping_add(u32::from(x))))
            });
            black_box(s);
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (threads * PER * 2) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_spec_ids_first_and_unique_ids() {
        let spec = [
            "mem_train_step",
            "mem_scale_batch_1",
            "mem_scale_batch_2",
            "mem_scale_batch_4",
            "mem_scale_batch_8",
            "mem_scale_seq_8",
            "mem_scale_seq_16",
            "mem_scale_seq_32",
            "mem_scale_seq_64",
            "kernel_matmul",
            "kernel_softmax",
            "kernel_rmsnorm",
            "dispatch_warm",
            "dispatch_cold",
            "parallel_T1",
            "parallel_T2",
            "parallel_T4",
            "parallel_train_T1",
            "parallel_train_T2",
            "parallel_train_T4",
            "scale_forward_256",
            "scale_train_256",
        ];
        let ids: Vec<&str> = SCENARIOS.iter().map(|s| s.id).collect();
        assert_eq!(&ids[..SPEC_SCENARIOS], &spec);
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(SCENARIOS
            .iter()
            .all(|s| crate::harness::schema::AXES.contains(&s.axis)));
    }

    #[test]
    fn fixtures_are_the_shared_ones() {
        assert_eq!(fixture_tokens(2, 3, 1000, 0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(fixture_tokens(1, 3, 3, 1), [1, 2, 0]);
        let u = fixture_uniform(42, 1000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(u, fixture_uniform(42, 1000));
    }

    #[test]
    fn optimizer_scenarios_cover_the_scale_256_model() {
        assert_eq!(
            SCALE_256_PARAMS as u64,
            Config::scale_256().param_counts().total,
            "optimizer_adamw_scale_256 must sweep exactly the scale_256 parameters"
        );
        assert_eq!(adamw_bytes(10, AdamPass::Plain), 280);
        assert_eq!(adamw_bytes(10, AdamPass::Zeroing), 320);
        assert_eq!(adamw_bytes(10, AdamPass::ThenZero), 320);
        assert_eq!(adamw_bytes(10, AdamPass::ZeroingBf16), 340);
        for p in [
            AdamPass::Plain,
            AdamPass::ThenZero,
            AdamPass::Zeroing,
            AdamPass::ZeroingBf16,
        ] {
            assert_eq!(AdamPass::from_name(p.name()), Some(p));
        }
        assert_eq!(AdamPass::from_name("bogus"), None);
    }
}
