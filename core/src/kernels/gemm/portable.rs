//! The portable GEMM backend, BLIS-style: `C = α·op(A)·op(B) + β·C` on
//! arbitrarily strided `f32` operands, with no heap allocation.
//!
//! # Structure
//!
//! The classic five loops of BLIS (Van Zee & van de Geijn) around one
//! register-tiled micro-kernel:
//!
//! ```text
//! for jc in 0..n step NC            (5th loop: columns of C / B)
//!   for pc in 0..k step KC          (4th loop: depth)          pack B[pc.., jc..] → NR-column panels
//!     for ic in 0..m step MC        (3rd loop: rows of C / A)  pack A[ic.., pc..] → MR-row panels
//!       for jr in 0..nc step NR     (2nd loop)                 one B micro-panel (KC×NR) stays in L1
//!         for ir in 0..mc step MR   (1st loop)                 A micro-panels stream from L2
//!           micro-kernel: MR×NR tile of C in registers for the whole KC loop
//! ```
//!
//! Packing `B = Wᵀ` (the weight of `x·Wᵀ`, rows of W contiguous in depth) is
//! a transpose: on AVX2 16-column panels go through 8 × 8 register
//! transposes (`avx2::pack_bt_panel`, missing columns of a partial panel as
//! zero vectors; the scalar copy took ~1.5 cycles per element, a quarter of
//! a 64³ product).
//!
//! Packed layouts: an A panel holds `MR` rows as `[kc][MR]` (element `(r, p)`
//! at `p·MR + r`); a B panel holds `NR` columns as `[kc][NR]` (element `(p, j)`
//! at `p·NR + j`). Edge panels are zero-padded to full width in the *buffer*,
//! but the micro-kernel is instantiated for every tile height `1..=MR` and
//! for 8 or 16 columns and stores partial 8-lane vectors with masked stores,
//! so no FLOPs are spent on padding rows and at most one partial vector per
//! tile row is computed.
//!
//! # Blocking (AMD EPYC Zen 4 class, AVX2+FMA, 16 `ymm` registers)
//!
//! * `MR × NR = 6 × 16`: 12 accumulators + 2 B vectors + 1 broadcast = 15 of
//!   the 16 `ymm` registers. Per depth step: 2 vector loads, 6 broadcast
//!   loads (`vbroadcastss` from memory, a pure load µop on Zen) and 12 FMAs;
//!   Zen 4 has 2 FMA pipes and 3 load AGUs, so 12 FMAs (6 cycles) against 8
//!   loads keeps the FMA pipes the binding resource, and 12 independent
//!   accumulators cover the FMA latency (4 cycles × 2 pipes = 8 needed).
//!   8 × 12 or 4 × 24 would need more than 16 registers; without AVX-512
//!   6 × 16 is the largest tile that fits (the same choice as BLIS' Haswell
//!   and Zen configurations).
//! * `KC = 256`: the B micro-panel (KC·NR·4 B = 16 KiB) stays resident in the
//!   32 KiB L1d while the 6 KiB A micro-panels stream through it; 256 depth
//!   steps amortise the tile's C load/store (12 + 12 vector accesses) over
//!   3072 FMAs.
//! * `MC = 144` (24 A micro-panels): the packed A block is MC·KC·4 B =
//!   144 KiB, a seventh of the 1 MiB L2, leaving room for the B block and C
//!   lines; each B micro-panel brought into L1 is reused 24 times.
//! * `NC = 512`: the packed B block is KC·NC·4 B = 512 KiB, half the L2 (the
//!   32 MiB L3 would allow BLIS' 4080, but the buffer lives on the stack).
//!   A is repacked `⌈n/NC⌉` times: 1 copy per 2·NC = 1024 FLOPs, < 1 % of
//!   the time at 1024³.
//!
//! # AVX-512 (32 `zmm` registers)
//!
//! The panels stay `MR × NR = 6 × 16` (so pre-packed weights are the same on
//! every path); a 16-column tile row is one `zmm`. On a core that splits a
//! 512-bit FMA into two 256-bit halves (AMD Zen 4) the 6 accumulators of a
//! 6 × 16 tile cover the latency and the AVX2 tile shapes are kept. On a
//! full-width core (Zen 5, Intel server cores: two 16-lane FMA pipes of
//! latency 4, so ≥ 8 chains; `kernels::cpu::zmm_full_width`) the full row
//! bands take 6 × 32 tiles over two adjacent panels — 12 accumulators, 2 B
//! vectors, 6 broadcasts per 12 FMAs, 20 of the 32 registers — and a band
//! of 1–5 rows 1 × 128, 2 × 64, 3 × 64, 4 × 32 or 5 × 32 tiles (8–12
//! accumulators). The two B panels of a 6 × 32 tile (2 × 16 KiB at
//! `KC = 256`) fit Zen 5's 48 KiB L1d beside the streaming A panel.
//!
//! Packing buffers are fixed-size `MaybeUninit` arrays on the stack (never
//! zero-filled), in tiers so that a call only touches — and stack-probes —
//! the pages it needs: 32 KiB for 64³, up to 656 KiB (A 144 KiB + B
//! 512 KiB) for large problems; each tier is its own non-inlined function
//! (when all tiers were inlined into one frame, probing ~1.5 MiB of stack
//! cost more than a 64³ product). Fine for the 8 MiB main thread and
//! 2 MiB spawned threads. A pre-packed B ([`pack_b`], [`gemm_packed_b`])
//! needs no B buffer at all; for a model's pre-packed weight, which comes
//! from memory ([`gemm_prepacked_b`]), the first tile of each B panel
//! prefetches the next panel into L2 while it computes. Nothing is ever
//! heap-allocated.
//!
//! # When not to pack
//!
//! Packing pays through reuse: an A micro-panel is used `⌈n/NR⌉` times, a B
//! micro-panel `⌈m/MR⌉` times. An operand is read **in place** by the
//! micro-kernel (A broadcast from its strided rows, B vectors loaded from its
//! rows when `csb = 1`) when it is reused at most twice (B: three times), or spans ≤ 64 KiB
//! (it sits in L1/L2 on few TLB pages anyway) — unless its depth stride is a
//! multiple of 2–4 KiB, which maps a micro-panel's lines to 1–2 L1 sets
//! (`l1_friendly`). An in-place B panel with a partial 8-lane vector is
//! copied to a padded panel (the kernel never loads past the operand). At
//! 64³ nothing is packed at all. An in-place operand spanning more than
//! 256 KiB (`STREAM_SPAN`: a weight, coming from memory) is prefetched one
//! micro-panel ahead — B's next panel by the first tile of each run, A's
//! next rows by a run down a band — since its rows are lines 1–4 KiB apart
//! that hardware prefetchers do not follow; each run takes the kernel
//! instance with just the prefetch tests it needs (`PF_NONE`, `PF_B`,
//! `PF_AB`).
//!
//! # AVX-512
//!
//! Where the CPU has AVX-512F the same driver runs the `avx512` kernels: a
//! 16-column tile row is one `zmm`, edges are `k`-masked. On Zen 4 this does
//! not raise the FLOP peak (a `zmm` FMA is two 256-bit halves) but halves the
//! accumulators the FMA latency needs (4 instead of 8), which is what the
//! few-token tiles lacked, and the instructions per step.
//!
//! # Special shapes
//!
//! * `m ≤ 4` (decoding): A is read in place (no packing), the tile keeps its
//!   accumulators over the *whole* depth, and wide tiles (1 × 64, 2 × 32,
//!   3 × 32) give the FMA pipes enough independent chains. `x·Wᵀ` with
//!   contiguous rows (`csa = 1`, `rsb = 1`) uses dot products instead (a
//!   GEMV that reads each weight once, no packing).
//! * `x·Wᵀ` with `4 < m ≤ 16` (not pre-packed) is computed as
//!   `Cᵀ = W·xᵀ`: W read in place, only xᵀ (one 16-column panel) packed.
//! * A partial last row band (`m mod 6` = 1–3 rows, e.g. the 6 + 2 rows of 8
//!   tokens) takes the same wide tiles over its whole panels instead of
//!   16-column tiles with 2–6 accumulators; in the BLIS walk each follows
//!   the panels it reads while they are still in L1/L2.
//! * Depth-16 weight gradients `dW += dYᵀ·X`: `k ≤ KC`, so every C tile is
//!   read and written exactly once per call, after all 16 FMA steps done in
//!   registers. For depths ≤ `SHORT_K` = 32 the C traffic dominates, so the
//!   two inner loops are swapped to walk each 6-row band of C left to right
//!   (contiguous lines, few pages), the kernel prefetches the *next* tile's C
//!   lines, and a whole band is one kernel dispatch (a `Run` of tiles; on
//!   AVX2 each tile is then one plain call of the tile body, cheaper than
//!   the loop-carried addresses of an inlined one). With AVX-512 the full
//!   bands take 6 × 64 tiles (`Arch::short_wp`: 24 accumulators, 4 B
//!   vectors, one broadcast per 4 FMAs instead of one per FMA in a 6 × 16
//!   tile), so a depth step's 24 FMAs carry the tile's fixed work. The
//!   store form (`β = 0`; `C += A·B` with `α = β = 1`, stored as
//!   `c + acc`; general) is picked once per tile, not per vector: with 4–16
//!   depth steps a tile has only 48–192 FMAs to carry it (the same bits as
//!   the general form).
//! * Column-major C (`rsc = 1`) is computed as `Cᵀ = op(B)ᵀ·op(A)ᵀ` so that
//!   stores stay contiguous.
//!
//! # Semantics and determinism
//!
//! `β = 0` overwrites C without reading it (NaN garbage is ignored); `k = 0`
//! gives `C = β·C`. No special case for `α = 0` (like the previous backend,
//! NaN/Inf in A or B still propagate). The summation order depends only on
//! the shape, never on timing or alignment, so the same inputs give the same
//! bits on the same machine and dispatch path. The AVX2 path uses FMA, the
//! portable path separate multiply and add, so the two paths are *not*
//! bit-identical to each other. The AVX-512 path (`avx512`, where the CPU has
//! AVX-512F) runs the same tiles and operations as the AVX2 one on 16-lane
//! registers: the same bits.
#![deny(unsafe_op_in_unsafe_fn)]

use core::mem::MaybeUninit;

/// Rows of the micro-tile (A panel width).
pub const MR: usize = 6;
/// Columns of the micro-tile (B panel width).
pub const NR: usize = 16;
/// Depth block (L1: one B micro-panel of `KC × NR`).
pub const KC: usize = 256;
/// Row block (L2: the packed `MC × KC` A block).
pub const MC: usize = 144;
/// Column block (the packed `KC × NC` B block).
pub const NC: usize = 512;
/// Up to this many rows of `op(A)` take the unpacked small-`m` path.
pub const SMALL_M: usize = 4;

/// Tiered packing buffers (floats): the smallest tier the blocked operands
/// fit is used (every stack page of the frame is probed on each call).
const TINY_A: usize = 72 * 64;
const TINY_B: usize = 64 * 64;
const SMALL_A: usize = 8 * 1024;
const SMALL_B: usize = 16 * 1024;
/// Operands spanning at most this many floats (64 KiB) are read in place.
const INPLACE_SPAN: usize = 16 * 1024;
/// Depth blocks up to this long walk C row band by row band.
const SHORT_K: usize = 32;

/// Whether `rows` cache lines `stride` floats apart (one per depth step of
/// an in-place micro-panel) avoid L1d set conflicts (32 KiB, 8-way, 64 sets
/// of 64 B lines): a stride that is a multiple of 4 KiB puts them all in one
/// set, and 8 ways cannot hold 16 depth steps.
const fn l1_friendly(stride: usize, rows: usize) -> bool {
    const SETS: usize = 64;
    const WAYS: usize = 8;
    let lines = (stride / 16) % SETS; // floats → lines, modulo the set count
    let mut g = SETS;
    let mut x = lines;
    while x != 0 {
        let t = g % x;
        g = x;
        x = t;
    }
    // `g` = gcd(lines, SETS) (SETS when lines = 0): the rows visit SETS / g sets.
    // With ≥ 4 sets the panel may overflow L1 but streams from L2 at one line
    // per depth step (6 cycles), which the L2 sustains; with 1–2 sets (strides
    // of 2–4 KiB multiples) lines evict each other within a tile.
    let sets = SETS / g;
    sets >= 4 || rows <= sets * WAYS / 2
}

#[inline(always)]
const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Asserts that every element `(r, c)`, `r < rows`, `c < cols`, at offset
/// `r·rs + c·cs` lies inside a slice of length `len`.
#[track_caller]
fn check(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|x| (cols - 1).checked_mul(cs).and_then(|y| x.checked_add(y)));
    match last {
        Some(l) if l < len => {}
        _ => panic!("gemm: {what} ({rows}×{cols}, strides {rs},{cs}) exceeds its {len} elements"),
    }
}

/// A strided read-only operand: element `(r, c)` at `d[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct Op<'a> {
    d: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Op<'_> {
    #[inline(always)]
    fn t(self) -> Self {
        Op {
            d: self.d,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Where a micro-kernel reads its A tile: element `(r, p)` at `ptr + r·rs + p·ks`.
#[derive(Clone, Copy)]
struct ASrc {
    ptr: *const f32,
    rs: usize,
    ks: usize,
}

/// Where a micro-kernel reads its B tile: the 8-float vector `v` of depth step
/// `p` starts at `ptr + p·ks + (v / 2)·ps + (v % 2)·8` (16-column panels
/// `ps` apart; `ps = 16` for a contiguous in-place row).
/// `pf`: offset (floats) from `ptr` to the panel that the first tile of a
/// run prefetches into L2 at each depth step (the next panel of a
/// pre-packed weight, which streams from memory: one line; of an in-place
/// B: the two lines its 16 floats may touch), or 0 for none; may point past
/// the operand (prefetches never fault).
#[derive(Clone, Copy)]
struct BSrc {
    ptr: *const f32,
    ks: usize,
    ps: usize,
    pf: usize,
}

/// Where a micro-kernel writes its C tile: element `(r, j)` at `ptr + r·rs + j·cs`;
/// the driver's next tile starts at `ptr + nx` (prefetched; may be out of bounds).
#[derive(Clone, Copy)]
struct CDst {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
    nx: usize,
}

impl CDst {
    #[inline(always)]
    fn at(self, r: usize, j: usize) -> Self {
        CDst {
            ptr: self.ptr.wrapping_add(r * self.rs + j * self.cs),
            ..self
        }
    }
}

/// A run of `n` tiles called at once: tile `t` reads A at `+ t·da`, B at
/// `+ t·db` and writes C at `+ t·c.nx` (all in floats).
#[derive(Clone, Copy)]
struct Run {
    n: usize,
    da: usize,
    db: usize,
    /// Tiles prefetch the A rows of the next tile (`da` below; A streams
    /// from memory, see [`STREAM_SPAN`]).
    pfa: bool,
}

impl Run {
    const ONE: Run = Run {
        n: 1,
        da: 0,
        db: 0,
        pfa: false,
    };
}

/// Prefetch modes of a micro-kernel instance: none; the next B panel
/// ([`BSrc::pf`]); that and the A rows of the next tile ([`Run::pfa`]).
const PF_NONE: u8 = 0;
const PF_B: u8 = 1;
const PF_AB: u8 = 2;

/// An in-place operand spanning more than this many floats (256 KiB) is
/// taken to come from memory (a weight; the model's activations of a few
/// tokens are far smaller), so its next micro-panel is software-prefetched:
/// its rows are lines `rs` apart, often on separate pages, which hardware
/// prefetchers do not follow. Below it the prefetches only cost issue slots
/// (the tiny model's steps were 2–3 % slower with them).
const STREAM_SPAN: usize = 64 * 1024;

/// One `mc × nc × kc` block of the driver: the inner two loops of BLIS.
#[derive(Clone, Copy)]
struct Block {
    mc: usize,
    nc: usize,
    kc: usize,
    /// A source of the block's first row panel; row panel `q` is `q·a_panel` further.
    a: ASrc,
    a_panel: usize,
    /// A is packed (`a.rs = 1, a.ks = MR`).
    pa: bool,
    /// A is in place and streams from memory (runs down a band prefetch).
    a_stream: bool,
    /// B source of the first column panel; panel `q` is `q·b_panel` further.
    b: BSrc,
    b_panel: usize,
    /// B is packed (`b.ks = NR`).
    pb: bool,
    /// Column offset of a partial in-place panel copied to `edge_ptr` (packed
    /// `[kc][NR]`), or `usize::MAX`.
    edge: usize,
    edge_ptr: *const f32,
    /// C at the block's origin.
    c: CDst,
    alpha: f32,
    beta: f32,
    /// Walk row bands left to right (short depth) instead of BLIS' column
    /// panels top to bottom.
    row_walk: bool,
}

/// `n` tiles of `wp` panels (`wp·NR` columns; 1: one panel, cut at the
/// block's edge) from (ir, jr) on, stepping right (row walk) or down.
///
/// # Safety
/// As [`Arch::block`] for `blk`; (ir, jr) is a tile origin of the block,
/// and the `n` tiles are full ones (same mr, nr) that are not the edge copy
/// unless `n = 1`; a wide tile (`wp > 1`: `wp·16 ≤ 8·wide_nv(mr)`, or a
/// full band's `band_wp()` or `short_wp()` panels) spans `wp` whole panels
/// before the edge copy.
#[inline(always)]
unsafe fn tile_run<K: Arch>(blk: &Block, jr: usize, ir: usize, n: usize, right: bool, wp: usize) {
    let nr = if wp == 1 {
        NR.min(blk.nc - jr)
    } else {
        wp * NR
    };
    let mr = MR.min(blk.mc - ir);
    let (b, pb) = if jr == blk.edge {
        let src = BSrc {
            ptr: blk.edge_ptr,
            ks: NR,
            ps: NR,
            pf: 0,
        };
        (src, true)
    } else {
        let src = BSrc {
            ptr: blk.b.ptr.wrapping_add(jr / NR * blk.b_panel),
            // A wide tile's vectors 2q, 2q + 1 are in panel q.
            ps: if wp == 1 { blk.b.ps } else { blk.b_panel },
            // Only the BLIS walk's first tile per panel (or `wp`
            // panels) prefetches: the next `wp` panels.
            pf: if wp == 1 {
                blk.b.pf
            } else if right {
                0
            } else {
                wp * blk.b.pf
            },
            ..blk.b
        };
        (src, blk.pb)
    };
    let a = ASrc {
        ptr: blk.a.ptr.wrapping_add(ir / MR * blk.a_panel),
        ..blk.a
    };
    let (run, nx) = if right {
        (
            Run {
                n,
                da: 0,
                db: wp * blk.b_panel,
                pfa: false,
            },
            wp * NR * blk.c.cs,
        )
    } else {
        (
            Run {
                n,
                da: blk.a_panel,
                db: 0,
                pfa: blk.a_stream,
            },
            MR * blk.c.rs,
        )
    };
    let c = CDst {
        nx,
        ..blk.c.at(ir, jr)
    };
    // SAFETY: the caller's contract: the block's (`Arch::block`) covers
    // every tile (ir, jr) with ir < mc, jr < nc; a run only spans full
    // tiles (same mr, nr) that are not the edge copy, stepping by `wp`
    // panels; a wide tile (`wp > 1`: `wp·16 ≤ 8·wide_nv(mr)`, or a full
    // band's `band_wp()` or `short_wp()` panels) spans `wp` whole panels
    // before the edge copy, each `b_panel` apart.
    unsafe {
        K::tile(
            mr, nr, blk.kc, a, b, c, blk.alpha, blk.beta, blk.pa, pb, run,
        )
    };
}

/// The tiles of one block.
///
/// # Safety
/// As [`Arch::block`].
#[inline(always)]
unsafe fn block_tiles<K: Arch>(blk: &Block) {
    // SAFETY: every call below names a tile origin of the block with a run
    // of full tiles (or one tile), as `tile_run` requires.
    let tiles = |jr, ir, n, right, wp| unsafe { tile_run::<K>(blk, jr, ir, n, right, wp) };
    // Full panels that can be run together (the edge copy is never full).
    let full_n = blk.nc / NR;
    let full_m = blk.mc / MR;
    // The last row band, if partial: with 1–3 rows a 16-column tile holds
    // 2–6 accumulators, too few chains for the FMA latency, so that band
    // takes tiles of `wide_nv(mr)` vectors (1 × 64, 2 × 32, 3 × 32: 6–12
    // accumulators) over the whole panels before any edge copy. Each C
    // element keeps its one FMA chain in depth order: the same bits.
    let er = blk.mc - full_m * MR;
    let wp = if er > 0 { 8 * K::wide_nv(er) / NR } else { 1 };
    let wide_cols = if wp > 1 { full_n / wp * (wp * NR) } else { 0 };
    // One row band left to right: tiles of `w` panels over the first
    // `w_cols` columns, then whole panels, then the partial one (the only
    // one that may be an edge copy).
    let band = |ir: usize, w: usize, w_cols: usize| {
        if w_cols > 0 {
            tiles(0, ir, w_cols / (w * NR), true, w);
        }
        let rest = full_n - w_cols / NR;
        if rest > 0 {
            tiles(w_cols, ir, rest, true, 1);
        }
        if full_n * NR < blk.nc {
            tiles(full_n * NR, ir, 1, true, 1);
        }
    };
    // Full row bands: tiles of `bw` panels over the first `band_cols`
    // columns (`bw = 1`: 6 × 16 tiles everywhere), 6 × 16 tiles after.
    let bw = if blk.row_walk {
        K::short_wp()
    } else {
        K::band_wp()
    };
    let band_cols = if bw > 1 { full_n / bw * (bw * NR) } else { 0 };
    if blk.row_walk {
        // Short depth: the C traffic dominates, so walk each row band of C
        // left to right (contiguous lines, few pages).
        for ir in (0..full_m * MR).step_by(MR) {
            band(ir, bw, band_cols);
        }
        if er > 0 {
            band(full_m * MR, wp, wide_cols);
        }
    } else {
        // BLIS order: one B micro-panel (or `bw` of them) stays in L1 while
        // the A micro-panels stream past it. The partial band's tiles follow
        // the panels they read while those are still in L1/L2: a wide tile
        // right after the last of its `wp` panels, a 16-column one right
        // after its panel. (Walking the partial band after the whole block
        // read a pre-packed weight twice — the second time from L3 once it
        // outgrew L2: `w13` of 25 tokens, 2 MiB.)
        let ir = full_m * MR;
        let mut jr = 0;
        let mut wide_done = 0;
        while jr < blk.nc {
            let w = if jr < band_cols { bw } else { 1 };
            if full_m > 0 {
                tiles(jr, 0, full_m, false, w);
            }
            jr += w * NR;
            if er == 0 {
                continue;
            }
            while wide_done + wp * NR <= jr.min(wide_cols) {
                tiles(wide_done, ir, 1, true, wp);
                wide_done += wp * NR;
            }
            let mut q = (jr - w * NR).max(wide_cols);
            while q < jr.min(blk.nc) {
                tiles(q, ir, 1, wp > 1, 1);
                q += NR;
            }
        }
    }
}

/// One instruction-set implementation of the micro-kernels.
trait Arch {
    /// Widest tile (in 8-float vectors) [`Arch::tile`] supports for `mr` rows
    /// (the small-`m` path, and a partial last row band of the blocked one).
    fn wide_nv(mr: usize) -> usize;

    /// Panels (of `NR` columns) per tile in the full row bands: 1 (6 × 16
    /// tiles), or 2 (6 × 32) where one tile row is one register and the
    /// FMA latency needs more than 6 accumulators.
    fn band_wp() -> usize {
        1
    }

    /// Panels per tile in the full row bands of a short-depth block
    /// (`kc ≤ SHORT_K`, the weight gradients `dW += dYᵀ·X`): with 4–32
    /// depth steps the per-tile work (C loads and stores, prefetches, the
    /// call) and one broadcast per row and step are carried by
    /// `6·16·wp` FMAs per step, so the widest tile the registers hold.
    fn short_wp() -> usize {
        Self::band_wp()
    }

    /// `C[r, j] = α·Σ_{p<kc} A(r, p)·B(p, j) + β·C[r, j]` for `r < mr`,
    /// `j < nr` (C not read when `β = 0`). `pa`/`pb`: A/B are packed panels
    /// (`a.rs = 1, a.ks = MR` / `b.ks = NR`), which selects faster code.
    /// Repeated for the `run.n` tiles of `run` (same `mr`, `nr`).
    ///
    /// # Safety
    /// The CPU supports the instruction set of `Self`; `1 ≤ mr ≤ MR`,
    /// `1 ≤ nr`, and `nr ≤ 16`, `nr ≤ 8·wide_nv(mr)`, or `mr = MR` and
    /// `nr = NR·wp` with `wp` = `band_wp()` or `short_wp()`;
    /// `A(r, p)` is readable for `r < mr, p < kc`; the B vectors `v <
    /// ⌈nr/8⌉` are readable (8 floats each) for `p < kc`; `C[r, j]` is
    /// writable (and readable if `β ≠ 0`) for `r < mr, j < nr`, and no other
    /// live reference aliases those C elements — for each tile of `run`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        mr: usize,
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        pa: bool,
        pb: bool,
        run: Run,
    );

    /// All tiles of one block ([`block_tiles`]).
    ///
    /// # Safety
    /// The CPU supports the instruction set of `Self`; for every tile
    /// `(ir, jr)` of the block, the [`Arch::tile`] contract holds for its A
    /// panel, B panel (or the edge copy) and C tile as described in [`Block`].
    unsafe fn block(blk: &Block);

    /// [`blocked`] with `ACAP`/`BCAP`-float buffers, in its own stack frame
    /// (so a call only probes and touches the pages of the tier it uses).
    ///
    /// # Safety
    /// The CPU supports the instruction set of `Self`; operand bounds were
    /// checked by the entry point.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_tier<const ACAP: usize, const BCAP: usize>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    );

    /// [`small_m`] in its own stack frame.
    ///
    /// # Safety
    /// As [`Arch::blocked_tier`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn small_m_frame(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    );

    /// Small-`m` `x·Wᵀ`: `C[i, j] = α·Σ_p X[i, p]·W[j, p] + β·C[i, j]` for
    /// `i < mr ≤ SMALL_M`, `j < n`, rows of `X` and `W` contiguous.
    #[allow(clippy::too_many_arguments)] // reason: shape, α, both operands with strides, β, C
    fn dots(
        mr: usize,
        n: usize,
        k: usize,
        x: Op,
        w: Op,
        c: &mut [f32],
        cd: CDst,
        alpha: f32,
        beta: f32,
    );
}

// ───────────────────────────── packing ─────────────────────────────

/// Packs `op(A)[i0..i0+mc, p0..p0+kc]` into `MR`-row panels `[kc][MR]`
/// (panel `q` at `q·MR·kc`), zero-padding the last panel's missing rows.
#[inline(always)]
fn pack_a(dst: &mut [MaybeUninit<f32>], a: Op, i0: usize, mc: usize, p0: usize, kc: usize) {
    for (q, panel) in dst[..round_up(mc, MR) * kc]
        .chunks_exact_mut(MR * kc)
        .enumerate()
    {
        let r0 = i0 + q * MR;
        let mr = MR.min(i0 + mc - r0);
        if a.rs == 1 {
            // Transposed A (e.g. dYᵀ): the panel's rows are contiguous for each p.
            for (p, d) in panel.chunks_exact_mut(MR).enumerate() {
                let s = (p0 + p) * a.cs + r0;
                let src = &a.d[s..s + mr];
                for r in 0..mr {
                    d[r].write(src[r]);
                }
                for x in &mut d[mr..] {
                    x.write(0.0);
                }
            }
        } else if a.cs == 1 && mr == MR {
            // Row-major A: six contiguous row streams, transposed into the panel.
            let row = |r: usize| {
                let s = (r0 + r) * a.rs + p0;
                &a.d[s..s + kc]
            };
            let (s0, s1, s2, s3, s4, s5) = (row(0), row(1), row(2), row(3), row(4), row(5));
            for (p, d) in panel.chunks_exact_mut(MR).enumerate().take(kc) {
                d[0].write(s0[p]);
                d[1].write(s1[p]);
                d[2].write(s2[p]);
                d[3].write(s3[p]);
                d[4].write(s4[p]);
                d[5].write(s5[p]);
            }
        } else {
            for (p, d) in panel.chunks_exact_mut(MR).enumerate() {
                for r in 0..MR {
                    d[r].write(if r < mr {
                        a.d[(r0 + r) * a.rs + (p0 + p) * a.cs]
                    } else {
                        0.0
                    });
                }
            }
        }
    }
}

/// Packs `op(B)[p0..p0+kc, j0..j0+nc]` into `NR`-column panels `[kc][NR]`,
/// panel `q` at `q·ps` (`ps ≥ kc·NR`), zero-padding missing columns.
#[inline(always)]
fn pack_b_block(
    dst: &mut [MaybeUninit<f32>],
    b: Op,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    ps: usize,
) {
    let panels = nc.div_ceil(NR);
    for q in 0..panels {
        let c0 = j0 + q * NR;
        let nr = NR.min(j0 + nc - c0);
        let panel = &mut dst[q * ps..q * ps + kc * NR];
        if b.cs == 1 {
            // Row-major B: one contiguous 16-float copy per depth step.
            for (p, d) in panel.chunks_exact_mut(NR).enumerate() {
                let s = (p0 + p) * b.rs + c0;
                let src = &b.d[s..s + nr];
                for j in 0..nr {
                    d[j].write(src[j]);
                }
                for x in &mut d[nr..] {
                    x.write(0.0);
                }
            }
        } else if b.rs == 1 {
            // B = Wᵀ: column j of B is row j of W, contiguous in p.
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::cpu::avx2_fma() {
                let s = c0 * b.cs + p0;
                // Last element read: column c0 + nr − 1, depth p0 + kc − 1.
                let _ = &b.d[s + (nr - 1) * b.cs + kc - 1];
                // SAFETY: AVX2 detected just above; the kernel reads
                // `b.d[s + j·cs + p]` for j < nr, p < kc, the largest of which
                // was bounds-checked on the line above, and writes the
                // `kc·NR` floats of `panel`.
                unsafe {
                    avx2::pack_bt_panel(
                        panel.as_mut_ptr() as *mut f32,
                        b.d.as_ptr().add(s),
                        b.cs,
                        kc,
                        nr,
                    )
                };
                continue;
            }
            // Transpose 8 depth steps × 16 columns at a time through a small block.
            if nr < NR {
                for x in panel.iter_mut() {
                    x.write(0.0);
                }
            }
            let mut p = 0;
            while p + 8 <= kc {
                let mut blk = [[0.0f32; 8]; NR];
                for j in 0..nr {
                    let s = (c0 + j) * b.cs + p0 + p;
                    blk[j].copy_from_slice(&b.d[s..s + 8]);
                }
                for u in 0..8 {
                    let d = &mut panel[(p + u) * NR..(p + u + 1) * NR];
                    for j in 0..NR {
                        d[j].write(blk[j][u]);
                    }
                }
                p += 8;
            }
            for j in 0..nr {
                let s = (c0 + j) * b.cs + p0;
                for pp in p..kc {
                    panel[pp * NR + j].write(b.d[s + pp]);
                }
            }
        } else {
            for (p, d) in panel.chunks_exact_mut(NR).enumerate() {
                for j in 0..NR {
                    d[j].write(if j < nr {
                        b.d[(p0 + p) * b.rs + (c0 + j) * b.cs]
                    } else {
                        0.0
                    });
                }
            }
        }
    }
}

/// A fresh uninitialised stack buffer.
#[inline(always)]
fn buffer<const N: usize>() -> [MaybeUninit<f32>; N] {
    [const { MaybeUninit::uninit() }; N]
}

// ───────────────────────────── drivers ─────────────────────────────

/// The B operand of the blocked driver.
#[derive(Clone, Copy)]
enum BSide<'a> {
    /// Strided, packed per block into the stack buffer.
    Strided(Op<'a>),
    /// Row-major (`cs = 1`), read in place by the micro-kernel; only an edge
    /// panel of `n % 8` columns is copied (into the `BCAP ≥ KC·NR` buffer).
    InPlace(Op<'a>),
    /// Pre-packed by [`pack_b`] over the full depth `k`; `true`: packed long
    /// before (a model's weight, likely in memory), so the next panel is
    /// prefetched ([`gemm_prepacked_b`]).
    Packed(&'a [f32], bool),
}

/// The blocked (BLIS) driver with packing buffers of `ACAP` / `BCAP` floats;
/// `ACAP = 0` reads A in place (no packing). Operand bounds were checked by
/// the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn blocked<K: Arch, const ACAP: usize, const BCAP: usize>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Op,
    b: BSide,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    let a_inplace = ACAP == 0;
    let a_span = (m - 1) * a.rs + (k - 1) * a.cs + 1;
    let kc_blk = k.min(KC);
    let mc_blk = round_up(m, MR).min(MC);
    let nc_blk = match b {
        BSide::Strided(_) => round_up(n, NR).min(NC).min(BCAP / kc_blk / NR * NR),
        BSide::InPlace(_) => round_up(n, NR).min(NC),
        BSide::Packed(..) => round_up(n, NR),
    };
    assert!(
        (a_inplace || mc_blk * kc_blk <= ACAP)
            && nc_blk >= NR
            && (!matches!(b, BSide::InPlace(_)) || kc_blk * NR <= BCAP),
        "gemm: packing buffer too small"
    );
    let mut abuf = buffer::<ACAP>();
    let mut bbuf = buffer::<BCAP>();
    let cd = CDst {
        ptr: c.as_mut_ptr(),
        rs: rsc,
        cs: csc,
        nx: 0,
    };
    let mut jc = 0;
    while jc < n {
        let nc = nc_blk.min(n - jc);
        let mut pc = 0;
        while pc < k {
            let kc = kc_blk.min(k - pc);
            // Later depth blocks accumulate onto the first one's result.
            let beta_here = if pc == 0 { beta } else { 1.0 };
            // Base of the B panels for this block, panel stride, depth stride,
            // whether packed, and the first column (if any) of an edge panel
            // that was copied into `bbuf`.
            let (bp, ps, bks, pb, edge) = match b {
                BSide::Strided(op) => {
                    pack_b_block(&mut bbuf, op, pc, kc, jc, nc, kc * NR);
                    (bbuf.as_ptr() as *const f32, kc * NR, NR, true, usize::MAX)
                }
                BSide::InPlace(op) => {
                    let full = nc / 8 * 8;
                    if full < nc {
                        // Columns full..nc (fewer than 8) into a padded panel.
                        let e0 = full / NR * NR;
                        pack_b_block(&mut bbuf, op, pc, kc, jc + e0, nc - e0, kc * NR);
                    }
                    let edge = if full < nc {
                        full / NR * NR
                    } else {
                        usize::MAX
                    };
                    (
                        op.d.as_ptr().wrapping_add(pc * op.rs + jc),
                        NR,
                        op.rs,
                        false,
                        edge,
                    )
                }
                BSide::Packed(pk, _) => (
                    pk.as_ptr().wrapping_add(jc * k + pc * NR),
                    k * NR,
                    NR,
                    true,
                    usize::MAX,
                ),
            };
            let mut ic = 0;
            while ic < m {
                let mc = mc_blk.min(m - ic);
                if !a_inplace {
                    pack_a(&mut abuf, a, ic, mc, pc, kc);
                }
                let ap = abuf.as_ptr() as *const f32;
                let blk = Block {
                    mc,
                    nc,
                    kc,
                    a: if a_inplace {
                        ASrc {
                            ptr: a.d.as_ptr().wrapping_add(ic * a.rs + pc * a.cs),
                            rs: a.rs,
                            ks: a.cs,
                        }
                    } else {
                        ASrc {
                            ptr: ap,
                            rs: 1,
                            ks: MR,
                        }
                    },
                    a_panel: if a_inplace { MR * a.rs } else { MR * kc },
                    pa: !a_inplace,
                    a_stream: a_inplace && a_span > STREAM_SPAN,
                    b: BSrc {
                        ptr: bp,
                        ks: bks,
                        ps: NR,
                        // A pre-packed B: the next panel, ahead of its use.
                        // In place: the next panel's 16 floats of each depth
                        // row (rows `ks` apart are separate lines, often
                        // separate pages, which no hardware prefetcher follows).
                        pf: match b {
                            BSide::Packed(_, true) => ps,
                            BSide::InPlace(op) if op.rs * k > STREAM_SPAN => ps,
                            _ => 0,
                        },
                    },
                    b_panel: ps,
                    pb,
                    edge,
                    edge_ptr: bbuf.as_ptr() as *const f32,
                    c: cd.at(ic, jc),
                    alpha,
                    beta: beta_here,
                    row_walk: kc <= SHORT_K,
                };
                // SAFETY: `K` was selected for this CPU by the entry point.
                // A: either `abuf`, whose ⌈mc/MR⌉ panels of `MR·kc` floats
                // `pack_a` just wrote, or op(A)[ic.., pc..] in place (rows
                // < m, depth < k: inside `a`, checked by the entry point).
                // B: packed panels hold `kc·NR` initialised floats each
                // (`pack_b_block` above, or the caller's pre-packed slice of
                // checked length `packed_len(k, n)`); in place, only panels
                // whose 8-float vectors are whole are read from `b` (rows
                // pc.. < k, columns < n), the partial one (`edge`) was copied
                // to `bbuf`. C: rows ic.. < m, columns jc.. < n lie in `c`
                // (checked by the entry point), borrowed mutably here.
                unsafe { K::block(&blk) };
                ic += mc;
            }
            pc += kc;
        }
        jc += nc;
    }
}

/// The small-`m` path (`m ≤ SMALL_M`): A read in place, each tile accumulates
/// over the whole depth in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn small_m<K: Arch>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Op,
    b: BSide,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    let cd = CDst {
        ptr: c.as_mut_ptr(),
        rs: rsc,
        cs: csc,
        nx: NR * csc,
    };
    let asrc = ASrc {
        ptr: a.d.as_ptr(),
        rs: a.rs,
        ks: a.cs,
    };
    let wide = 8 * K::wide_nv(m);
    match b {
        BSide::Packed(pk, _) => {
            let ps = k * NR;
            let mut j = 0;
            while j < n {
                let w = if n - j >= wide { wide } else { NR.min(n - j) };
                let bsrc = BSrc {
                    ptr: pk.as_ptr().wrapping_add(j * k),
                    ks: NR,
                    ps,
                    pf: 0,
                };
                // SAFETY: `K` was selected for this CPU. A(r, p) for r < m,
                // p < k is inside `a` (checked by the entry point). B: the
                // panels j/NR.. (j/NR + ⌈w/16⌉) each hold k·NR initialised
                // floats of the pre-packed slice (length checked), so every
                // vector v < ⌈w/8⌉ of every step p < k is readable; w ≤ 16 or
                // w = 8·wide_nv(m). C: rows < m, columns j..j+w ≤ n are in `c`.
                unsafe {
                    K::tile(
                        m,
                        w,
                        k,
                        asrc,
                        bsrc,
                        cd.at(0, j),
                        alpha,
                        beta,
                        false,
                        true,
                        Run::ONE,
                    )
                };
                j += w;
            }
        }
        BSide::Strided(bo) | BSide::InPlace(bo) if bo.cs == 1 => {
            // Row-major B in place: vectors straight from the rows of B.
            let full = n / 8 * 8;
            let mut j = 0;
            while j < full {
                let w = if full - j >= wide {
                    wide
                } else {
                    NR.min(full - j)
                };
                let bsrc = BSrc {
                    ptr: bo.d.as_ptr().wrapping_add(j),
                    ks: bo.rs,
                    ps: NR,
                    pf: 0,
                };
                // SAFETY: `K` was selected for this CPU; A as above. B: w is a
                // multiple of 8 with j + w ≤ n, so every vector read (columns
                // j..j+w of rows p < k, offset p·rsb + j + …) is an element of
                // op(B) inside `b` (checked). C: columns j..j+w ≤ n, rows < m.
                unsafe {
                    K::tile(
                        m,
                        w,
                        k,
                        asrc,
                        bsrc,
                        cd.at(0, j),
                        alpha,
                        beta,
                        false,
                        false,
                        Run::ONE,
                    )
                };
                j += w;
            }
            if j < n {
                // The last n % 8 columns: copy them into a padded panel.
                let nr = n - j;
                let mut pbuf = buffer::<{ KC * NR }>();
                let mut pc = 0;
                while pc < k {
                    let kc = KC.min(k - pc);
                    pack_b_block(&mut pbuf, bo, pc, kc, j, nr, kc * NR);
                    let bsrc = BSrc {
                        ptr: pbuf.as_ptr() as *const f32,
                        ks: NR,
                        ps: NR,
                        pf: 0,
                    };
                    let ablk = ASrc {
                        ptr: asrc.ptr.wrapping_add(pc * a.cs),
                        ..asrc
                    };
                    // SAFETY: `K` was selected for this CPU. A(r, pc + p),
                    // p < kc, is inside `a`. B: `pbuf` holds kc·NR floats just
                    // written by `pack_b_block`. C: columns j..n, rows < m, in `c`.
                    unsafe {
                        K::tile(
                            m,
                            nr,
                            kc,
                            ablk,
                            bsrc,
                            cd.at(0, j),
                            alpha,
                            if pc == 0 { beta } else { 1.0 },
                            false,
                            true,
                            Run::ONE,
                        )
                    };
                    pc += kc;
                }
            }
        }
        BSide::Strided(bo) | BSide::InPlace(bo) if a.cs == 1 && bo.rs == 1 => {
            K::dots(m, n, k, a, bo, c, cd, alpha, beta);
        }
        BSide::Strided(bo) | BSide::InPlace(bo) => {
            // General strides: pack one 16-column panel at a time.
            let mut pbuf = buffer::<{ KC * NR }>();
            let mut j = 0;
            while j < n {
                let nr = NR.min(n - j);
                let mut pc = 0;
                while pc < k {
                    let kc = KC.min(k - pc);
                    pack_b_block(&mut pbuf, bo, pc, kc, j, nr, kc * NR);
                    let bsrc = BSrc {
                        ptr: pbuf.as_ptr() as *const f32,
                        ks: NR,
                        ps: NR,
                        pf: 0,
                    };
                    let ablk = ASrc {
                        ptr: asrc.ptr.wrapping_add(pc * a.cs),
                        ..asrc
                    };
                    // SAFETY: as in the branch above (panel just packed, A and
                    // C elements inside their checked slices).
                    unsafe {
                        K::tile(
                            m,
                            nr,
                            kc,
                            ablk,
                            bsrc,
                            cd.at(0, j),
                            alpha,
                            if pc == 0 { beta } else { 1.0 },
                            false,
                            true,
                            Run::ONE,
                        )
                    };
                    pc += kc;
                }
                j += NR;
            }
        }
    }
}

/// Chooses the path and the packing-buffer tier. Bounds were checked.
///
/// # Safety
/// The CPU supports the instruction set of `K`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run<K: Arch>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Op,
    b: BSide,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    if m <= SMALL_M {
        // SAFETY: forwarded contract (CPU support for `K`, operand bounds
        // checked by the entry point).
        return unsafe { K::small_m_frame(m, n, k, alpha, a, b, beta, c, rsc, csc) };
    }
    let kc = k.min(KC);
    let a_need = round_up(m, MR).min(MC) * kc;
    let b_need = round_up(n, NR).min(NC) * kc;
    // Packing pays for itself through reuse: each A micro-panel is used
    // ⌈n/NR⌉ times, each B micro-panel ⌈m/MR⌉ times. Read an operand in place
    // when it is reused at most twice (B: three times — a 13–18-row `dy·W`
    // packed its whole weight per call for three uses of each panel: 58 vs
    // 90 GFLOP/s), or small enough (≤ 64 KiB span) to sit in L1/L2 with few
    // TLB pages anyway.
    // In-place micro-panels must also not alias in L1 (see `l1_friendly`).
    let a_span = (m - 1) * a.rs + (k - 1) * a.cs + 1;
    let a_inplace = n <= 2 * NR || (a_span <= INPLACE_SPAN && (a.cs == 1 || l1_friendly(a.cs, kc)));
    let b = match b {
        BSide::Strided(op) if op.cs == 1 => {
            let b_span = (k - 1) * op.rs + n;
            if m <= 3 * MR || (b_span <= INPLACE_SPAN && l1_friendly(op.rs, kc)) {
                BSide::InPlace(op)
            } else {
                b
            }
        }
        _ => b,
    };
    let at = if a_inplace {
        0
    } else if a_need <= TINY_A {
        1
    } else if a_need <= SMALL_A {
        2
    } else {
        3
    };
    let bt = match b {
        BSide::Packed(..) => 0,
        BSide::InPlace(_) => 4,
        BSide::Strided(_) if b_need <= TINY_B => 1,
        BSide::Strided(_) if b_need <= SMALL_B => 2,
        BSide::Strided(_) => 3,
    };
    macro_rules! tiers {
        ($(($x:literal, $y:literal) => ($ac:expr, $bc:expr)),* $(,)?) => {
            match (at, bt) {
                // SAFETY: forwarded contract (CPU support for `K`, operand
                // bounds checked by the entry point); the tier's buffers are
                // large enough (the driver asserts it).
                $(($x, $y) => unsafe { K::blocked_tier::<{ $ac }, { $bc }>(m, n, k, alpha, a, b, beta, c, rsc, csc) },)*
                _ => unreachable!(),
            }
        };
    }
    const BIG_A: usize = MC * KC;
    const BIG_B: usize = KC * NC;
    const EDGE: usize = KC * NR;
    tiers! {
        (0, 0) => (0, 0), (0, 1) => (0, TINY_B), (0, 2) => (0, SMALL_B), (0, 3) => (0, BIG_B), (0, 4) => (0, EDGE),
        (1, 0) => (TINY_A, 0), (1, 1) => (TINY_A, TINY_B), (1, 2) => (TINY_A, SMALL_B), (1, 3) => (TINY_A, BIG_B), (1, 4) => (TINY_A, EDGE),
        (2, 0) => (SMALL_A, 0), (2, 1) => (SMALL_A, TINY_B), (2, 2) => (SMALL_A, SMALL_B), (2, 3) => (SMALL_A, BIG_B), (2, 4) => (SMALL_A, EDGE),
        (3, 0) => (BIG_A, 0), (3, 1) => (BIG_A, TINY_B), (3, 2) => (BIG_A, SMALL_B), (3, 3) => (BIG_A, BIG_B), (3, 4) => (BIG_A, EDGE),
    }
}

/// Which micro-kernels a call may use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The best kernels this CPU supports (what [`gemm`] uses).
    Auto,
    /// The AVX2+FMA kernels even where AVX-512 exists (test hook: checks that
    /// path, and its bit-identity with the AVX-512 one, on an AVX-512
    /// machine); the portable kernels without AVX2+FMA.
    Avx2,
    /// The plain-Rust kernels, even where AVX2+FMA exist (test hook: checks
    /// the fallback path on an AVX2 machine without a global switch).
    Portable,
    /// The AVX-512 kernels with the wide tiles (6 × 32 bands; what `Auto`
    /// runs on a core with full-width 512-bit FMA, see
    /// [`crate::kernels::cpu::zmm_full_width`]) whatever the core; the AVX2
    /// (or portable) kernels without AVX-512F. Test hook.
    Avx512Wide,
    /// The AVX-512 kernels with the AVX2 tile shapes (what `Auto` runs on a
    /// core that splits a 512-bit FMA in two halves) whatever the core; the
    /// AVX2 (or portable) kernels without AVX-512F. Test hook.
    Avx512Narrow,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn have_avx2_fma() -> bool {
    crate::kernels::cpu::avx2_fma()
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn have_avx512() -> bool {
    crate::kernels::cpu::avx512f()
}

/// Runs [`run`] with the best micro-kernels for this CPU.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    path: Path,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Op,
    b: BSide,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(path, Path::Auto | Path::Avx512Wide | Path::Avx512Narrow) && have_avx512() {
        let wide = match path {
            Path::Avx512Wide => true,
            Path::Avx512Narrow => false,
            _ => crate::kernels::cpu::zmm_full_width(),
        };
        // SAFETY: AVX-512F (and with it AVX2 and FMA) was detected just above.
        unsafe {
            if wide {
                avx512::run::<true>(m, n, k, alpha, a, b, beta, c, rsc, csc)
            } else {
                avx512::run::<false>(m, n, k, alpha, a, b, beta, c, rsc, csc)
            }
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if path != Path::Portable && have_avx2_fma() {
        // SAFETY: AVX2 and FMA were detected on this CPU just above.
        unsafe { avx2::run(m, n, k, alpha, a, b, beta, c, rsc, csc) };
        return;
    }
    // SAFETY: the portable kernels run on any CPU.
    unsafe { run::<Portable>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
}

/// Name of the micro-kernel this CPU uses (for benchmark metadata).
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if have_avx512() {
        return if crate::kernels::cpu::zmm_full_width() {
            "avx512f 6x32 (blis, full-width zmm FMA; tiles of <= 8 columns avx2+fma)"
        } else {
            "avx512f 6x16 (blis, half-width zmm FMA; tiles of <= 8 columns avx2+fma)"
        };
    }
    #[cfg(target_arch = "x86_64")]
    if have_avx2_fma() {
        return "avx2+fma 6x16 (blis)";
    }
    "portable 6x16 (blis)"
}

/// `C = β·C` for `k = 0` (`β = 0` writes zeros without reading).
fn scale_c(m: usize, n: usize, beta: f32, c: &mut [f32], rsc: usize, csc: usize) {
    for i in 0..m {
        for j in 0..n {
            let o = &mut c[i * rsc + j * csc];
            *o = if beta == 0.0 { 0.0 } else { beta * *o };
        }
    }
}

// ───────────────────────────── public API ─────────────────────────────

/// `C[m,n] = α·op(A)[m,k]·op(B)[k,n] + β·C` on strided operands: `op(A)[i,p]`
/// is `a[i·rsa + p·csa]`, `op(B)[p,j]` is `b[p·rsb + j·csb]`, `C[i,j]` is
/// `c[i·rsc + j·csc]` (so `Aᵀ` is just swapped strides). With `β = 0`, C is
/// overwritten and never read. Allocation-free.
///
/// # Panics
/// If an operand's slice is too short for its shape and strides.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    gemm_on(
        Path::Auto,
        m,
        n,
        k,
        alpha,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        beta,
        c,
        rsc,
        csc,
    )
}

/// [`gemm`] on an explicit kernel [`Path`] (test hook).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_on(
    path: Path,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    check(c.len(), m, n, rsc, csc, "C");
    if k == 0 {
        return scale_c(m, n, beta, c, rsc, csc);
    }
    check(a.len(), m, k, rsa, csa, "A");
    check(b.len(), k, n, rsb, csb, "B");
    let a = Op {
        d: a,
        rs: rsa,
        cs: csa,
    };
    let b = Op {
        d: b,
        rs: rsb,
        cs: csb,
    };
    if (rsc == 1 && csc != 1 && n > 1)
        || (csc == 1 && a.cs == 1 && b.rs == 1 && b.cs != 1 && m > SMALL_M && m <= NR && n > 2 * NR)
    {
        // Column-major C, or a few rows times a transposed weight (`x·Wᵀ`,
        // 4 < m ≤ 16): compute Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ. For the latter, W
        // (rows contiguous, each A micro-panel used once) is read in place
        // and only xᵀ — one 16-column panel — is packed, instead of packing
        // all of Wᵀ; the price is strided C stores.
        dispatch(
            path,
            n,
            m,
            k,
            alpha,
            b.t(),
            BSide::Strided(a.t()),
            beta,
            c,
            csc,
            rsc,
        );
    } else {
        dispatch(
            path,
            m,
            n,
            k,
            alpha,
            a,
            BSide::Strided(b),
            beta,
            c,
            rsc,
            csc,
        );
    }
}

/// Length of the buffer [`pack_b`] fills for a `[k, n]` operand:
/// `k · ⌈n/16⌉·16` floats.
pub const fn packed_len(k: usize, n: usize) -> usize {
    k * round_up(n, NR)
}

/// Packs `op(B)[k,n]` (`op(B)[p,j] = b[p·rsb + j·csb]`) into the micro-kernel's
/// panel layout, for [`gemm_packed_b`]: 16-column panels over the full depth,
/// panel `q` at `q·16·k`, element `(p, j)` at `q·16·k + p·16 + j % 16`,
/// the last panel zero-padded. For a weight `W[out, in]` used as `x·Wᵀ`:
/// `pack_b(in, out, w, 1, in, &mut buf)` with `buf.len() >= packed_len(in, out)`.
///
/// # Panics
/// If `b` is too short for its shape or `out.len() < packed_len(k, n)`.
pub fn pack_b(k: usize, n: usize, b: &[f32], rsb: usize, csb: usize, out: &mut [f32]) {
    check(b.len(), k, n, rsb, csb, "B");
    let len = packed_len(k, n);
    assert!(
        out.len() >= len,
        "pack_b: output has {} floats, needs {len}",
        out.len()
    );
    if len == 0 {
        return;
    }
    let out = &mut out[..len];
    // SAFETY: `MaybeUninit<f32>` has the size, alignment and validity-superset
    // of `f32`; `pack_b_block` only ever writes initialised `f32` values through the
    // view, so `out` stays fully initialised when the borrow ends.
    let view =
        unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut MaybeUninit<f32>, len) };
    let op = Op {
        d: b,
        rs: rsb,
        cs: csb,
    };
    pack_b_block(view, op, 0, k, 0, n, k * NR);
}

/// [`gemm`] with `op(B)` pre-packed by [`pack_b`] for the same `k`, `n`:
/// no B packing at all (inference never repacks a weight).
///
/// # Panics
/// If an operand is too short, or `packed.len() < packed_len(k, n)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm_packed_b(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    packed: &[f32],
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    gemm_packed_b_on(
        Path::Auto,
        m,
        n,
        k,
        alpha,
        a,
        rsa,
        csa,
        packed,
        beta,
        c,
        rsc,
        csc,
    )
}

/// [`gemm_packed_b`] for a B packed long before the call — a model's weight
/// ([`crate::MoETransformer::prepack`]), which streams from memory: the
/// first tile of each B panel also prefetches the next panel into L2. The
/// same arithmetic and bits as [`gemm_packed_b`]. (Not for a B packed just
/// now and hot in cache, such as the bf16 GEMM's stack blocks: the
/// prefetches would only cost load slots there.)
///
/// # Panics
/// As [`gemm_packed_b`].
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm_prepacked_b(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    packed: &[f32],
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    packed_b(
        Path::Auto,
        true,
        m,
        n,
        k,
        alpha,
        a,
        rsa,
        csa,
        packed,
        beta,
        c,
        rsc,
        csc,
    )
}

/// [`gemm_packed_b`] on an explicit kernel [`Path`] (test hook).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_b_on(
    path: Path,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    packed: &[f32],
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    packed_b(
        path, false, m, n, k, alpha, a, rsa, csa, packed, beta, c, rsc, csc,
    )
}

/// [`gemm_packed_b_on`], prefetching the next B panel if `stream`.
#[allow(clippy::too_many_arguments)]
fn packed_b(
    path: Path,
    stream: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    packed: &[f32],
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    check(c.len(), m, n, rsc, csc, "C");
    if k == 0 {
        return scale_c(m, n, beta, c, rsc, csc);
    }
    check(a.len(), m, k, rsa, csa, "A");
    assert!(
        packed.len() >= packed_len(k, n),
        "gemm_packed_b: packed B has {} floats, needs {}",
        packed.len(),
        packed_len(k, n)
    );
    let a = Op {
        d: a,
        rs: rsa,
        cs: csa,
    };
    dispatch(
        path,
        m,
        n,
        k,
        alpha,
        a,
        BSide::Packed(packed, stream),
        beta,
        c,
        rsc,
        csc,
    );
}

// ───────────────────────────── portable kernels ─────────────────────────────

/// Plain-Rust kernels (the compiler vectorises the 16-wide inner loops for the
/// baseline ISA).
struct Portable;

/// One portable tile (see [`Arch::tile`]).
///
/// # Safety
/// The contract of [`Arch::tile`] for a single tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    mr: usize,
    nr: usize,
    kc: usize,
    a: ASrc,
    b: BSrc,
    c: CDst,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[0.0f32; NR]; MR];
    let nv = nr.div_ceil(8);
    let nrp = nv * 8;
    for p in 0..kc {
        let mut bv = [0.0f32; NR];
        // SAFETY: the caller guarantees vectors v < ⌈nr/8⌉ (floats
        // 0..nrp, nrp ≤ 16, in one panel since nr ≤ 16) of step p < kc
        // are readable at `b.ptr + p·ks`.
        unsafe {
            core::ptr::copy_nonoverlapping(b.ptr.wrapping_add(p * b.ks), bv.as_mut_ptr(), nrp)
        };
        for r in 0..mr {
            // SAFETY: A(r, p), r < mr, p < kc is readable (caller).
            let x = unsafe { *a.ptr.wrapping_add(r * a.rs + p * a.ks) };
            for j in 0..NR {
                acc[r][j] += x * bv[j];
            }
        }
    }
    for r in 0..mr {
        for j in 0..nr {
            let o = c.ptr.wrapping_add(r * c.rs + j * c.cs);
            // SAFETY: C[r, j], r < mr, j < nr, is writable (readable
            // when β ≠ 0) and unaliased (caller).
            unsafe {
                *o = if beta == 0.0 {
                    alpha * acc[r][j]
                } else {
                    alpha * acc[r][j] + beta * *o
                };
            }
        }
    }
}

impl Arch for Portable {
    fn wide_nv(_mr: usize) -> usize {
        2
    }

    unsafe fn block(blk: &Block) {
        // SAFETY: forwarded contract.
        unsafe { block_tiles::<Portable>(blk) }
    }

    #[inline(never)]
    unsafe fn blocked_tier<const ACAP: usize, const BCAP: usize>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        blocked::<Portable, ACAP, BCAP>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    #[inline(never)]
    unsafe fn small_m_frame(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        small_m::<Portable>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    #[inline(always)]
    unsafe fn tile(
        mr: usize,
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        _pa: bool,
        _pb: bool,
        run: Run,
    ) {
        for t in 0..run.n {
            let a = ASrc {
                ptr: a.ptr.wrapping_add(t * run.da),
                ..a
            };
            let b = BSrc {
                ptr: b.ptr.wrapping_add(t * run.db),
                ..b
            };
            let c = CDst {
                ptr: c.ptr.wrapping_add(t * c.nx),
                ..c
            };
            // SAFETY: the contract holds for every tile of the run.
            unsafe { portable_tile(mr, nr, kc, a, b, c, alpha, beta) };
        }
    }

    fn dots(
        mr: usize,
        n: usize,
        k: usize,
        x: Op,
        w: Op,
        c: &mut [f32],
        cd: CDst,
        alpha: f32,
        beta: f32,
    ) {
        for i in 0..mr {
            let xi = &x.d[i * x.rs..i * x.rs + k];
            for j in 0..n {
                let wj = &w.d[j * w.cs..j * w.cs + k];
                let mut acc = [0.0f32; 8];
                let (xc, wc) = (xi.chunks_exact(8), wj.chunks_exact(8));
                let (xr, wr) = (xc.remainder(), wc.remainder());
                for (u, v) in xc.zip(wc) {
                    for l in 0..8 {
                        acc[l] += u[l] * v[l];
                    }
                }
                for (l, (u, v)) in xr.iter().zip(wr).enumerate() {
                    acc[l] += u * v;
                }
                let s = ((acc[0] + acc[4]) + (acc[2] + acc[6]))
                    + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
                let o = &mut c[i * cd.rs + j * cd.cs];
                *o = if beta == 0.0 {
                    alpha * s
                } else {
                    alpha * s + beta * *o
                };
            }
        }
    }
}

// ───────────────────────────── AVX2 + FMA kernels ─────────────────────────────

/// `for $i in 0..$n` with `$n ≤ 8` unrolled textually, so that every
/// accumulator index is a literal and LLVM keeps the tile in registers (a
/// loop it declines to unroll would index `acc` dynamically and force the
/// whole tile to the stack after every FMA). Used by the `avx2` and `avx512`
/// kernels.
#[cfg(target_arch = "x86_64")]
macro_rules! unroll {
    ($i:ident < $n:expr => $body:block) => {
        unroll!(@ $i, $n, $body, 0, 1, 2, 3, 4, 5, 6, 7)
    };
    (@ $i:ident, $n:expr, $body:block, $($l:literal),*) => {
        $(
            if $l < $n {
                let $i: usize = $l;
                $body
            }
        )*
    };
}

/// `_mm_prefetch` of the line holding `p` (hint `H`), for any address.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<const H: i32>(p: *const f32) {
    // SAFETY: SSE is part of the x86_64 baseline, so the intrinsic's target
    // feature is present on every CPU this code runs on; a prefetch is a
    // hint that never faults and never reads into the program, so any
    // address (even past an operand, or unmapped) is allowed.
    unsafe { core::arch::x86_64::_mm_prefetch::<H>(p as *const i8) }
}

/// The C prefetches at the start of an x86 micro-kernel tile (`M` rows,
/// `nr` columns): this tile's lines if it is the first of its run (within a
/// run the previous tile already fetched them), and always the next tile's
/// (`c.nx` further, in the driver's walking order) — with short depths
/// (k = 16) a tile's FMAs are too few to hide a C miss. With contiguous
/// rows (`cs = 1`, at most 64 B apart) the next tile's first line is this
/// tile's last one or the line of its own last element, so that line alone
/// is fetched. Prefetches never fault: the next tile may lie past C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_c<const M: usize>(c: CDst, nr: usize, first: bool) {
    use core::arch::x86_64::_MM_HINT_T0 as T0;
    if first {
        for r in 0..M {
            let row = c.ptr.wrapping_add(r * c.rs);
            prefetch::<T0>(row);
            if c.cs == 1 {
                // A wide tile's row spans more than two lines.
                for j in (16..nr).step_by(16) {
                    prefetch::<T0>(row.wrapping_add(j));
                }
            }
            prefetch::<T0>(row.wrapping_add((nr - 1) * c.cs));
        }
    }
    for r in 0..M {
        let next = c.ptr.wrapping_add(r * c.rs + c.nx);
        if c.cs != 1 {
            prefetch::<T0>(next);
        } else {
            // Every line of the next tile's row past its first (which is
            // this tile's last or the one holding element 15).
            for j in (16..nr).step_by(16) {
                prefetch::<T0>(next.wrapping_add(j - 1));
            }
        }
        prefetch::<T0>(next.wrapping_add((nr - 1) * c.cs));
    }
}

/// The operand prefetches of an x86 micro-kernel's four depth steps from `p`
/// (A at `ap`, B at `bp`, both at step `p`), by prefetch mode `S`:
/// * `PF_AB`, `a_next`, A in place with depth-contiguous rows (`W` of the
///   transposed `Cᵀ = W·xᵀ`): every 16 steps, the line of the rows `M`
///   below (the next tile of the run down the band), which streams from
///   memory (`gemm_shapes` "route cold" `x·Wᵀ` of 8 tokens: 26 → 59
///   GFLOP/s; prefetching past a run's last tile cost the pre-packed path
///   up to 25 %);
/// * `pf ≠ 0` (not `PF_NONE`): B's next panel, `pf` floats on, one line per
///   step — two for an in-place B (`!PB`), whose 16 floats of a row may
///   straddle two lines.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)] // reason: the depth loop's two cursors, their strides and the modes
fn prefetch_steps<const M: usize, const PB: bool, const S: u8>(
    ap: *const f32,
    ars: usize,
    aks: usize,
    a_next: bool,
    bp: *const f32,
    bks: usize,
    pf: usize,
    np: usize,
    ps: usize,
    p: usize,
) {
    if S == PF_AB && a_next && aks == 1 && p.is_multiple_of(16) {
        unroll!(r < M => {
            let at = ap.wrapping_add((M + r) * ars);
            prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(at);
        });
    }
    if S != PF_NONE && pf != 0 {
        unroll!(u < 4 => {
            for q in 0..np {
                let at = bp.wrapping_add(pf + q * ps + u * bks);
                prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(at);
                if !PB {
                    prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(at.wrapping_add(NR - 1));
                }
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ASrc, Arch, BSide, BSrc, Block, CDst, Op, Run, MR, NR, PF_AB, PF_B, PF_NONE};
    use core::arch::x86_64::*;

    pub(super) struct Avx2;

    /// The whole driver compiled with AVX2+FMA enabled (packing loops too).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        // SAFETY: forwarded contract (AVX2+FMA present).
        unsafe { super::run::<Avx2>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
    }

    /// [`super::blocked`] for `Avx2` in its own frame (LLVM inlines
    /// `#[target_feature]` callees regardless of `inline(never)`, merging all
    /// tiers' buffers into one frame; the kernels it calls carry the features).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; operand bounds were checked.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_avx2<const ACAP: usize, const BCAP: usize>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        super::blocked::<Avx2, ACAP, BCAP>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    /// The tiles of one block, compiled with AVX2+FMA so that the kernels
    /// inline into the loop.
    ///
    /// # Safety
    /// AVX2+FMA present; the contract of [`Arch::block`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(blk: &Block) {
        // SAFETY: forwarded contract.
        unsafe { super::block_tiles::<Avx2>(blk) }
    }

    /// [`super::small_m`] for `Avx2` in its own frame.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; operand bounds were checked.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn small_m_avx2(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        super::small_m::<Avx2>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    /// Packs one 16-column panel of `B = Wᵀ` with `nr ≤ 16` real columns:
    /// `dst[p·16 + j] = src[j·cs + p]` for `p < kc`, `j < nr`, and 0 for
    /// `nr ≤ j < 16` (column `j` of B is the contiguous row `j` of W), 8 × 8
    /// blocks transposed in registers (missing rows are zero vectors: a
    /// partial panel, e.g. `xᵀ` of 13 tokens, costs what a full one does
    /// instead of a scalar copy per element).
    ///
    /// # Safety
    /// AVX2 present; `1 ≤ nr ≤ 16`; `src[j·cs + p]` readable for `j < nr,
    /// p < kc`; `dst` writable for `kc·16` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_bt_panel(
        dst: *mut f32,
        src: *const f32,
        cs: usize,
        kc: usize,
        nr: usize,
    ) {
        let mut p = 0;
        while p + 8 <= kc {
            for h in 0..2 {
                // Rows ≥ nr are zero vectors, never read.
                let r: [__m256; 8] = core::array::from_fn(|i| {
                    if 8 * h + i < nr {
                        // SAFETY: row j = 8h + i < nr, depth p..p+8 ≤ kc:
                        // readable (the caller's contract).
                        unsafe { _mm256_loadu_ps(src.add((8 * h + i) * cs + p)) }
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                // 8 × 8 transpose: unpack pairs, shuffle quads, swap halves.
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let o = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (u, v) in o.iter().enumerate() {
                    // SAFETY: depth p + u < kc, lanes 8h..8h+8 of a 16-float row.
                    unsafe { _mm256_storeu_ps(dst.add((p + u) * NR + 8 * h), *v) };
                }
            }
            p += 8;
        }
        while p < kc {
            for j in 0..NR {
                // SAFETY: j < nr reads src (caller), p < kc; the row is in dst.
                unsafe { *dst.add(p * NR + j) = if j < nr { *src.add(j * cs + p) } else { 0.0 } };
            }
            p += 1;
        }
    }

    /// Lane mask with the first `lanes` (0..=8) lanes set.
    #[inline(always)]
    fn mask(lanes: usize) -> __m256i {
        // SAFETY: plain AVX register arithmetic, no memory access; only
        // reached from `#[target_feature(enable = "avx2")]` kernels.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(lanes as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    /// The `M × 8·NV` micro-kernel. `PA`: A is a packed panel (`rs = 1`,
    /// `ks = MR`); `PB`: B is packed (`ks = NR`).
    ///
    /// # Safety
    /// As [`Arch::tile`] with `mr = M`, `⌈nr/8⌉ = NV`, on a CPU with AVX2+FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kern<const M: usize, const NV: usize, const PA: bool, const PB: bool>(
        nr: usize,
        kc: usize,
        a0: ASrc,
        b0: BSrc,
        c0: CDst,
        alpha: f32,
        beta: f32,
        run: Run,
    ) {
        // Each run takes the kernel instance with only the prefetch tests it
        // needs (none, B's next panel, or also A's next rows).
        for t in 0..run.n {
            let a = ASrc {
                ptr: a0.ptr.wrapping_add(t * run.da),
                ..a0
            };
            let b = BSrc {
                ptr: b0.ptr.wrapping_add(t * run.db),
                ..b0
            };
            let c = CDst {
                ptr: c0.ptr.wrapping_add(t * c0.nx),
                ..c0
            };
            // The next tile of a run down a band reads the A rows M below.
            let a_next = run.pfa && t + 1 < run.n;
            // SAFETY: the caller's contract holds for every tile of the run.
            unsafe {
                if !PA && run.pfa {
                    kern_body::<M, NV, PA, PB, PF_AB>(nr, kc, a, b, c, alpha, beta, t == 0, a_next)
                } else if b0.pf != 0 {
                    kern_body::<M, NV, PA, PB, PF_B>(nr, kc, a, b, c, alpha, beta, t == 0, false)
                } else {
                    kern_body::<M, NV, PA, PB, PF_NONE>(nr, kc, a, b, c, alpha, beta, t == 0, false)
                }
            };
        }
    }

    /// One tile of [`kern`] (`first`: the first tile of its run; `a_next`: a
    /// next tile in the run reads the A rows `M` below this one's).
    ///
    /// Its own function, called once per tile: inlined into [`kern`]'s loop
    /// over a run, LLVM kept every row and prefetch address of the tile as
    /// a loop-carried pointer (~40 of them, spilled to the stack and bumped
    /// by a read-modify-write per tile), which cost a short-depth tile more
    /// than the call does (callgrind, `dW += dYᵀ·X` of 512 × 64 × 4: 14.8 →
    /// 11.4 M instructions per 100 products together with the whole-tile
    /// store below; for the deep tiles of a forward the call is < 1 % of a
    /// tile's 256 depth steps).
    ///
    /// # Safety
    /// As [`kern`] for a single tile.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kern_body<
        const M: usize,
        const NV: usize,
        const PA: bool,
        const PB: bool,
        const S: u8,
    >(
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        first: bool,
        a_next: bool,
    ) {
        let (ars, aks) = if PA { (1, MR) } else { (a.rs, a.ks) };
        let bks = if PB { NR } else { b.ks };
        let ps = b.ps;
        // Offset of B vector v within a depth step.
        let boff = |v: usize| (v / 2) * ps + (v % 2) * 8;
        super::prefetch_c::<M>(c, nr, first);
        let mut acc = [[_mm256_setzero_ps(); NV]; M];
        // A pre-packed B streams from memory once per forward: the first
        // tile of each run (the one that brings this panel in) prefetches
        // the next panel into L2, one line (one depth step of 16 floats) per
        // step, so its lines arrive while this panel is computed (cold
        // weights, `gemm_shapes` "packed cold": 65–92 → 73–110 GFLOP/s; into
        // L1 (`T0`) only 77–100, and hot panels lost up to 10 %: the next
        // panel evicts the current one's lines).
        let pf = if S != PF_NONE && first { b.pf } else { 0 };
        // The depth loop for A strides `($ars, $aks)`: instantiated with the
        // unit stride as a constant where it is one, so that each broadcast
        // is one load at a constant offset from a base or index register
        // (with both strides at run time every broadcast cost an address
        // computation, as many instructions as the FMAs).
        macro_rules! depth {
            ($ars:expr, $aks:expr) => {{
                let (ars, aks): (usize, usize) = ($ars, $aks);
                let mut ap = a.ptr;
                let mut bp = b.ptr;
                macro_rules! step {
                    ($u:expr) => {{
                        let mut bv = [_mm256_setzero_ps(); NV];
                        unroll!(v < NV => {
                            // SAFETY: step p + $u < kc: vector v < NV = ⌈nr/8⌉ of
                            // that step is readable (the caller's contract).
                            bv[v] = unsafe { _mm256_loadu_ps(bp.wrapping_add($u * bks + boff(v))) };
                        });
                        unroll!(r < M => {
                            // SAFETY: A(r, p + $u) with r < M = mr, p + $u < kc is
                            // readable (the caller's contract).
                            let x = _mm256_set1_ps(unsafe { *ap.wrapping_add(r * ars + $u * aks) });
                            unroll!(v < NV => {
                                acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);
                            });
                        });
                    }};
                }
                let mut p = 0;
                while p + 4 <= kc {
                    super::prefetch_steps::<M, PB, S>(ap, ars, aks, a_next, bp, bks, pf, NV.div_ceil(2), ps, p);
                    step!(0);
                    step!(1);
                    step!(2);
                    step!(3);
                    ap = ap.wrapping_add(4 * aks);
                    bp = bp.wrapping_add(4 * bks);
                    p += 4;
                }
                while p < kc {
                    step!(0);
                    ap = ap.wrapping_add(aks);
                    bp = bp.wrapping_add(bks);
                    p += 1;
                }
            }};
        }
        if PA {
            depth!(1, MR)
        } else if ars == 1 {
            depth!(1, aks)
        } else if aks == 1 {
            depth!(ars, 1)
        } else {
            depth!(ars, aks)
        }
        let va = _mm256_set1_ps(alpha);
        let vb = _mm256_set1_ps(beta);
        let accumulate = alpha == 1.0 && beta == 1.0;
        // A whole tile (every vector 8 lanes) with contiguous rows: the store
        // form is chosen once per tile, not per vector — with short depths
        // (k = 4–16 weight gradients) the per-vector `beta`/`accumulate`
        // tests were ~80 of a tile's ~420 instructions (callgrind). Each
        // form is the general one's arithmetic for its case, so the bits do
        // not change.
        macro_rules! whole_rows {
            (|$dst:ident, $a:ident| $y:expr) => {
                unroll!(r < M => {
                    let row = c.ptr.wrapping_add(r * c.rs);
                    unroll!(v < NV => {
                        let $dst = row.wrapping_add(8 * v);
                        let $a = acc[r][v];
                        // SAFETY: C[r, 8v..8v+8] is in the tile (8·NV = nr)
                        // and contiguous (cs = 1): writable, and readable
                        // where the form reads it (β ≠ 0).
                        unsafe { _mm256_storeu_ps($dst, $y) };
                    });
                });
            };
        }
        if c.cs == 1 && nr == 8 * NV {
            if beta == 0.0 {
                whole_rows!(|dst, a| _mm256_mul_ps(va, a));
            } else if accumulate {
                // C += A·B: the same bits as the general form (1·acc is
                // exact, fma(1, c, acc) = c + acc).
                whole_rows!(|dst, a| _mm256_add_ps(_mm256_loadu_ps(dst), a));
            } else {
                whole_rows!(|dst, a| _mm256_fmadd_ps(
                    vb,
                    _mm256_loadu_ps(dst),
                    _mm256_mul_ps(va, a)
                ));
            }
        } else if c.cs == 1 {
            unroll!(r < M => {
                let row = c.ptr.wrapping_add(r * c.rs);
                unroll!(v < NV => {
                    let dst = row.wrapping_add(8 * v);
                    let lanes = nr - 8 * v; // ≥ 1 since NV = ⌈nr/8⌉
                    let x = _mm256_mul_ps(va, acc[r][v]);
                    if lanes >= 8 {
                        // SAFETY: C[r, 8v..8v+8] is in the tile (8v + 8 ≤ nr)
                        // and contiguous (cs = 1): writable, readable if β ≠ 0.
                        unsafe {
                            let y = if beta == 0.0 {
                                x
                            } else if accumulate {
                                // C += A·B: the same bits as the general
                                // form (1·acc is exact, fma(1, c, acc) = c + acc).
                                _mm256_add_ps(_mm256_loadu_ps(dst), acc[r][v])
                            } else {
                                _mm256_fmadd_ps(vb, _mm256_loadu_ps(dst), x)
                            };
                            _mm256_storeu_ps(dst, y);
                        }
                    } else {
                        let mk = mask(lanes);
                        // SAFETY: masked accesses touch only lanes < lanes,
                        // i.e. C[r, 8v + l] with 8v + l < nr, in the tile;
                        // masked-off lanes are never accessed (no fault).
                        unsafe {
                            let y = if beta == 0.0 {
                                x
                            } else {
                                _mm256_fmadd_ps(vb, _mm256_maskload_ps(dst, mk), x)
                            };
                            _mm256_maskstore_ps(dst, mk, y);
                        }
                    }
                });
            });
        } else {
            // Strided C: gather the row into a buffer, same arithmetic, scatter.
            unroll!(r < M => {
                unroll!(v < NV => {
                    let lanes = (nr - 8 * v).min(8);
                    let mut t = [0.0f32; 8];
                    let base = c.ptr.wrapping_add(r * c.rs + 8 * v * c.cs);
                    if beta != 0.0 {
                        for l in 0..lanes {
                            // SAFETY: C[r, 8v + l], 8v + l < nr, is in the tile.
                            t[l] = unsafe { *base.wrapping_add(l * c.cs) };
                        }
                    }
                    // SAFETY: `t` is a local 8-float array.
                    unsafe {
                        let x = _mm256_mul_ps(va, acc[r][v]);
                        let y = if beta == 0.0 {
                            x
                        } else {
                            _mm256_fmadd_ps(vb, _mm256_loadu_ps(t.as_ptr()), x)
                        };
                        _mm256_storeu_ps(t.as_mut_ptr(), y);
                    }
                    for l in 0..lanes {
                        // SAFETY: C[r, 8v + l], 8v + l < nr, is in the tile.
                        unsafe { *base.wrapping_add(l * c.cs) = t[l] };
                    }
                });
            });
        }
    }

    /// Dispatch on `(mr, ⌈nr/8⌉)` for fixed packing flags.
    ///
    /// # Safety
    /// As [`Arch::tile`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_pp<const PA: bool, const PB: bool>(
        mr: usize,
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        run: Run,
    ) {
        let nv = nr.div_ceil(8);
        macro_rules! go {
            ($m:literal, $v:literal) => {
                // SAFETY: forwarded contract; (mr, nv) = ($m, $v) matched.
                unsafe { kern::<$m, $v, PA, PB>(nr, kc, a, b, c, alpha, beta, run) }
            };
        }
        match (mr, nv) {
            (6, 2) => go!(6, 2),
            (6, 1) => go!(6, 1),
            (5, 2) => go!(5, 2),
            (5, 1) => go!(5, 1),
            (4, 2) => go!(4, 2),
            (4, 1) => go!(4, 1),
            (3, 4) => go!(3, 4),
            (3, 2) => go!(3, 2),
            (3, 1) => go!(3, 1),
            (2, 4) => go!(2, 4),
            (2, 2) => go!(2, 2),
            (2, 1) => go!(2, 1),
            (1, 8) => go!(1, 8),
            (1, 2) => go!(1, 2),
            (1, 1) => go!(1, 1),
            _ => unreachable!("gemm: no {mr}x{nr} micro-kernel"),
        }
    }

    /// Horizontal sums of 8 vectors: lane `i` of the result is `Σ v[i]`
    /// (fixed order).
    #[inline(always)]
    fn hsum8(v: &[__m256; 8]) -> __m256 {
        // SAFETY: register-only AVX arithmetic; reached only from AVX2 code.
        unsafe {
            let t0 = _mm256_hadd_ps(v[0], v[1]);
            let t1 = _mm256_hadd_ps(v[2], v[3]);
            let t2 = _mm256_hadd_ps(v[4], v[5]);
            let t3 = _mm256_hadd_ps(v[6], v[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(u0, u1),
                _mm256_permute2f128_ps::<0x31>(u0, u1),
            )
        }
    }

    /// `M` rows of X against `J` rows of W: `M·J` dot products of length `k`.
    ///
    /// # Safety
    /// AVX2+FMA; X rows `i < M` and W rows `j < J` are readable for `k`
    /// contiguous floats from `x + i·rsx`, `w + j·rsw`; C[i, j] writable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_tile<const M: usize, const J: usize>(
        k: usize,
        x: *const f32,
        rsx: usize,
        w: *const f32,
        rsw: usize,
        c: CDst,
        alpha: f32,
        beta: f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); J]; M];
        let mut p = 0;
        while p + 8 <= k {
            let mut xv = [_mm256_setzero_ps(); M];
            for i in 0..M {
                // SAFETY: p + 8 ≤ k floats of X row i are readable.
                xv[i] = unsafe { _mm256_loadu_ps(x.wrapping_add(i * rsx + p)) };
            }
            for j in 0..J {
                // SAFETY: p + 8 ≤ k floats of W row j are readable.
                let wv = unsafe { _mm256_loadu_ps(w.wrapping_add(j * rsw + p)) };
                for i in 0..M {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
            p += 8;
        }
        if p < k {
            let mk = mask(k - p);
            let mut xv = [_mm256_setzero_ps(); M];
            for i in 0..M {
                // SAFETY: only lanes p + l < k are loaded (masked).
                xv[i] = unsafe { _mm256_maskload_ps(x.wrapping_add(i * rsx + p), mk) };
            }
            for j in 0..J {
                // SAFETY: only lanes p + l < k are loaded (masked).
                let wv = unsafe { _mm256_maskload_ps(w.wrapping_add(j * rsw + p), mk) };
                for i in 0..M {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
        }
        let mut flat = [_mm256_setzero_ps(); 8];
        let mut sums = [0.0f32; 8];
        let mut n = 0;
        for i in 0..M {
            for j in 0..J {
                flat[n] = acc[i][j];
                n += 1;
            }
        }
        debug_assert!(M * J <= 8);
        // SAFETY: `sums` is a local 8-float array.
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(&flat)) };
        for i in 0..M {
            for j in 0..J {
                let s = sums[i * J + j];
                let o = c.ptr.wrapping_add(i * c.rs + j * c.cs);
                // SAFETY: C[i, j], i < M, j < J, is writable (caller).
                unsafe {
                    *o = if beta == 0.0 {
                        alpha * s
                    } else {
                        alpha * s + beta * *o
                    }
                };
            }
        }
    }

    impl Arch for Avx2 {
        fn wide_nv(mr: usize) -> usize {
            match mr {
                1 => 8,
                2 | 3 => 4,
                _ => 2,
            }
        }

        #[inline(always)]
        unsafe fn block(blk: &Block) {
            // SAFETY: forwarded contract (AVX2+FMA present).
            unsafe { block_avx2(blk) }
        }

        #[inline(always)]
        unsafe fn blocked_tier<const ACAP: usize, const BCAP: usize>(
            m: usize,
            n: usize,
            k: usize,
            alpha: f32,
            a: Op,
            b: BSide,
            beta: f32,
            c: &mut [f32],
            rsc: usize,
            csc: usize,
        ) {
            // SAFETY: forwarded contract (AVX2+FMA present, bounds checked).
            unsafe { blocked_avx2::<ACAP, BCAP>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
        }

        #[inline(always)]
        unsafe fn small_m_frame(
            m: usize,
            n: usize,
            k: usize,
            alpha: f32,
            a: Op,
            b: BSide,
            beta: f32,
            c: &mut [f32],
            rsc: usize,
            csc: usize,
        ) {
            // SAFETY: forwarded contract (AVX2+FMA present, bounds checked).
            unsafe { small_m_avx2(m, n, k, alpha, a, b, beta, c, rsc, csc) }
        }

        #[inline(always)]
        unsafe fn tile(
            mr: usize,
            nr: usize,
            kc: usize,
            a: ASrc,
            b: BSrc,
            c: CDst,
            alpha: f32,
            beta: f32,
            pa: bool,
            pb: bool,
            run: Run,
        ) {
            // The implementor `Avx2` is only used after AVX2+FMA detection;
            // each arm forwards the contract of `Arch::tile` unchanged.
            match (pa, pb) {
                // SAFETY: forwarded contract (see above); A and B are packed.
                (true, true) => unsafe {
                    tile_pp::<true, true>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; A packed, B in place.
                (true, false) => unsafe {
                    tile_pp::<true, false>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; A in place, B packed.
                (false, true) => unsafe {
                    tile_pp::<false, true>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; A and B in place.
                (false, false) => unsafe {
                    tile_pp::<false, false>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
            }
        }

        fn dots(
            mr: usize,
            n: usize,
            k: usize,
            x: Op,
            w: Op,
            c: &mut [f32],
            cd: CDst,
            alpha: f32,
            beta: f32,
        ) {
            debug_assert!(x.cs == 1 && w.rs == 1 && mr <= super::SMALL_M);
            // The caller checked X[i, p] (i < mr, p < k) and W[j, p] = op(B)[p, j]
            // (j < n) inside their slices, and C[i, j] inside `c`.
            let cp = CDst {
                ptr: c.as_mut_ptr(),
                ..cd
            };
            let xp = x.d.as_ptr();
            let wp = w.d.as_ptr();
            macro_rules! sweep {
                ($m:literal, $j:literal) => {{
                    let mut j = 0;
                    while j + $j <= n {
                        // SAFETY: AVX2+FMA detected (Avx2 is only used after
                        // detection); rows i < mr of X and rows j..j+$j ≤ n of
                        // W (k contiguous floats each) and C[i, j..j+$j] are
                        // inside their checked slices.
                        unsafe {
                            dot_tile::<$m, $j>(
                                k,
                                xp,
                                x.rs,
                                wp.wrapping_add(j * w.cs),
                                w.cs,
                                cp.at(0, j),
                                alpha,
                                beta,
                            )
                        };
                        j += $j;
                    }
                    while j < n {
                        // SAFETY: as above with one W row j < n.
                        unsafe {
                            dot_tile::<$m, 1>(
                                k,
                                xp,
                                x.rs,
                                wp.wrapping_add(j * w.cs),
                                w.cs,
                                cp.at(0, j),
                                alpha,
                                beta,
                            )
                        };
                        j += 1;
                    }
                }};
            }
            match mr {
                1 => sweep!(1, 8),
                2 => sweep!(2, 4),
                3 => sweep!(3, 2),
                _ => sweep!(4, 2),
            }
        }
    }
}

// ───────────────────────────── AVX-512 kernels ─────────────────────────────

/// The same driver and tile shapes on 512-bit registers (AVX-512F), where
/// the CPU has them. A tile row of 16 columns is one `zmm` instead of two
/// `ymm`, with masked loads and stores at the edges. On Zen 4 a `zmm` FMA
/// issues once per cycle (two 256-bit halves) with a 4-cycle latency, so
/// the peak is the AVX2 one but **4** independent accumulators reach it
/// instead of 8 (measured: 4 and 8 zmm chains 117 and 117 GFLOP/s, 12 ymm
/// chains 112–115): a 6 × 16 tile has 6, a 2 × 32 or 1 × 64 edge tile 4 —
/// the partial tiles of the few-token expert products no longer wait on the
/// FMA latency, and each step issues 1 B load + 6 FMAs with an embedded
/// broadcast instead of 2 + 6 + 12 instructions.
///
/// Tiles of at most 8 columns (the `x·Wᵀ` route's 6 × 8, decoding tails) run
/// the AVX2 kernel: half a `zmm` would waste half of each FMA. Every C
/// element is still one FMA chain in depth order with the AVX2 epilogue, so
/// both paths give the same bits (tested).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::Avx2;
    use super::{ASrc, Arch, BSide, BSrc, Block, CDst, Op, Run, MR, NR, PF_AB, PF_B, PF_NONE};
    use core::arch::x86_64::*;

    /// The AVX-512F kernels. `WIDE`: the tiles for a core that executes a
    /// 512-bit FMA in one pass (two FMA pipes of 16 lanes need ≥ 8
    /// independent accumulators): 6 × 32 tiles in the full row bands and
    /// 8–12-accumulator tiles for 1–5 rows; otherwise (a core that splits a
    /// `zmm` FMA into two 256-bit halves, where 6 accumulators cover the
    /// latency) the AVX2 tile shapes on 16-lane registers.
    pub(super) struct Avx512<const WIDE: bool>;

    /// [`super::run`] with the AVX-512 kernels.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run<const W: bool>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        // SAFETY: forwarded contract (AVX-512F, AVX2, FMA present).
        unsafe { super::run::<Avx512<W>>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
    }

    /// [`super::blocked`] for `Avx512` in its own frame (see `avx2`).
    ///
    /// # Safety
    /// As [`run`]; operand bounds were checked.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_avx512<const W: bool, const ACAP: usize, const BCAP: usize>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        super::blocked::<Avx512<W>, ACAP, BCAP>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    /// The tiles of one block, compiled for AVX-512 so the kernels inline.
    ///
    /// # Safety
    /// As [`run`]; the contract of [`Arch::block`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_avx512<const W: bool>(blk: &Block) {
        // SAFETY: forwarded contract.
        unsafe { super::block_tiles::<Avx512<W>>(blk) }
    }

    /// [`super::small_m`] for `Avx512` in its own frame.
    ///
    /// # Safety
    /// As [`run`]; operand bounds were checked.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn small_m_avx512<const W: bool>(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Op,
        b: BSide,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        super::small_m::<Avx512<W>>(m, n, k, alpha, a, b, beta, c, rsc, csc)
    }

    /// Mask of the first `lanes` (1..=16) lanes.
    #[inline(always)]
    fn mask16(lanes: usize) -> __mmask16 {
        if lanes >= 16 {
            0xFFFF
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        }
    }

    /// The `M × 16·NZ` micro-kernel over a run of tiles (see `avx2::kern`).
    ///
    /// # Safety
    /// As [`Arch::tile`] with `mr = M`, `⌈nr/16⌉ = NZ`, `nr > 8`, on a CPU
    /// with AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kern<const M: usize, const NZ: usize, const PA: bool, const PB: bool>(
        nr: usize,
        kc: usize,
        a0: ASrc,
        b0: BSrc,
        c0: CDst,
        alpha: f32,
        beta: f32,
        run: Run,
    ) {
        // Each run takes the kernel instance with only the prefetch tests it
        // needs (none, B's next panel, or also A's next rows).
        for t in 0..run.n {
            let a = ASrc {
                ptr: a0.ptr.wrapping_add(t * run.da),
                ..a0
            };
            let b = BSrc {
                ptr: b0.ptr.wrapping_add(t * run.db),
                ..b0
            };
            let c = CDst {
                ptr: c0.ptr.wrapping_add(t * c0.nx),
                ..c0
            };
            // The next tile of a run down a band reads the A rows M below.
            let a_next = run.pfa && t + 1 < run.n;
            // SAFETY: the caller's contract holds for every tile of the run.
            unsafe {
                if !PA && run.pfa {
                    kern_body::<M, NZ, PA, PB, PF_AB>(nr, kc, a, b, c, alpha, beta, t == 0, a_next)
                } else if b0.pf != 0 {
                    kern_body::<M, NZ, PA, PB, PF_B>(nr, kc, a, b, c, alpha, beta, t == 0, false)
                } else {
                    kern_body::<M, NZ, PA, PB, PF_NONE>(nr, kc, a, b, c, alpha, beta, t == 0, false)
                }
            };
        }
    }

    /// One tile of [`kern`]: `avx2::kern_body` on 16-lane vectors. The B
    /// vector `z` of a depth step is the 16 floats at `z·ps` (the two 8-float
    /// vectors `2z`, `2z + 1` of [`BSrc`]); its last one is loaded and
    /// stored with a mask of the tile's remaining columns, so no lane beyond
    /// `nr` is read from B or touched in C (masked-off lanes never fault).
    /// Its own function for the reason `avx2::kern_body` is.
    ///
    /// # Safety
    /// As [`kern`] for a single tile.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kern_body<
        const M: usize,
        const NZ: usize,
        const PA: bool,
        const PB: bool,
        const S: u8,
    >(
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        first: bool,
        a_next: bool,
    ) {
        let (ars, aks) = if PA { (1, MR) } else { (a.rs, a.ks) };
        let bks = if PB { NR } else { b.ks };
        let ps = b.ps;
        let mut bm = [0 as __mmask16; NZ];
        unroll!(z < NZ => {
            bm[z] = mask16(nr - 16 * z); // ≥ 1 lane since NZ = ⌈nr/16⌉
        });
        super::prefetch_c::<M>(c, nr, first);
        let mut acc = [[_mm512_setzero_ps(); NZ]; M];
        let pf = if S != PF_NONE && first { b.pf } else { 0 };
        // The depth loop for A strides `($ars, $aks)`, the unit one as a
        // constant (see `avx2::kern_body`).
        macro_rules! depth {
            ($ars:expr, $aks:expr) => {{
                let (ars, aks): (usize, usize) = ($ars, $aks);
                let mut ap = a.ptr;
                let mut bp = b.ptr;
                macro_rules! step {
                    ($u:expr) => {{
                        let mut bv = [_mm512_setzero_ps(); NZ];
                        unroll!(z < NZ => {
                            // SAFETY: step p + $u < kc: the lanes < nr − 16z of
                            // vector z are columns < nr of that step, readable (the
                            // caller's contract: its 8-float vectors v < ⌈nr/8⌉ are);
                            // the masked-off lanes are not accessed.
                            bv[z] = unsafe {
                                _mm512_maskz_loadu_ps(bm[z], bp.wrapping_add($u * bks + z * ps))
                            };
                        });
                        unroll!(r < M => {
                            // SAFETY: A(r, p + $u) with r < M = mr, p + $u < kc is
                            // readable (the caller's contract).
                            let x = _mm512_set1_ps(unsafe { *ap.wrapping_add(r * ars + $u * aks) });
                            unroll!(z < NZ => {
                                acc[r][z] = _mm512_fmadd_ps(x, bv[z], acc[r][z]);
                            });
                        });
                    }};
                }
                let mut p = 0;
                while p + 4 <= kc {
                    super::prefetch_steps::<M, PB, S>(ap, ars, aks, a_next, bp, bks, pf, NZ, ps, p);
                    step!(0);
                    step!(1);
                    step!(2);
                    step!(3);
                    ap = ap.wrapping_add(4 * aks);
                    bp = bp.wrapping_add(4 * bks);
                    p += 4;
                }
                while p < kc {
                    step!(0);
                    ap = ap.wrapping_add(aks);
                    bp = bp.wrapping_add(bks);
                    p += 1;
                }
            }};
        }
        if PA {
            depth!(1, MR)
        } else if ars == 1 {
            depth!(1, aks)
        } else if aks == 1 {
            depth!(ars, 1)
        } else {
            depth!(ars, aks)
        }
        // The epilogue of `avx2::kern_body`, lane for lane: `y = α·acc`,
        // `c + acc` for `α = β = 1`, else `fma(β, c, α·acc)` — the form
        // chosen once per tile (see there), each vector stored under its
        // mask (every lane but those past `nr` in the last vector).
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        macro_rules! rows {
            (|$dst:ident, $mk:ident, $a:ident| $y:expr) => {
                unroll!(r < M => {
                    let row = c.ptr.wrapping_add(r * c.rs);
                    unroll!(z < NZ => {
                        let $dst = row.wrapping_add(16 * z);
                        let $mk = bm[z];
                        let $a = acc[r][z];
                        // SAFETY: the lanes of `mk` are C[r, 16z + l] with
                        // 16z + l < nr, in the tile and contiguous (cs = 1):
                        // writable, readable where the form reads (β ≠ 0);
                        // masked-off lanes are never accessed.
                        unsafe { _mm512_mask_storeu_ps($dst, $mk, $y) };
                    });
                });
            };
        }
        if c.cs == 1 {
            if beta == 0.0 {
                rows!(|dst, mk, a| _mm512_mul_ps(va, a));
            } else if alpha == 1.0 && beta == 1.0 {
                // C += A·B: the general form's bits (1·acc is exact,
                // fma(1, c, acc) = c + acc).
                rows!(|dst, mk, a| _mm512_add_ps(_mm512_maskz_loadu_ps(mk, dst), a));
            } else {
                rows!(|dst, mk, a| _mm512_fmadd_ps(
                    vb,
                    _mm512_maskz_loadu_ps(mk, dst),
                    _mm512_mul_ps(va, a)
                ));
            }
        } else {
            // Strided C: gather the row into a buffer, same arithmetic, scatter.
            unroll!(r < M => {
                unroll!(z < NZ => {
                    let lanes = (nr - 16 * z).min(16);
                    let mut t = [0.0f32; 16];
                    let base = c.ptr.wrapping_add(r * c.rs + 16 * z * c.cs);
                    if beta != 0.0 {
                        for l in 0..lanes {
                            // SAFETY: C[r, 16z + l], 16z + l < nr, is in the tile.
                            t[l] = unsafe { *base.wrapping_add(l * c.cs) };
                        }
                    }
                    // SAFETY: `t` is a local 16-float array.
                    unsafe {
                        let x = _mm512_mul_ps(va, acc[r][z]);
                        let y = if beta == 0.0 {
                            x
                        } else {
                            _mm512_fmadd_ps(vb, _mm512_loadu_ps(t.as_ptr()), x)
                        };
                        _mm512_storeu_ps(t.as_mut_ptr(), y);
                    }
                    for l in 0..lanes {
                        // SAFETY: C[r, 16z + l], 16z + l < nr, is in the tile.
                        unsafe { *base.wrapping_add(l * c.cs) = t[l] };
                    }
                });
            });
        }
    }

    /// Dispatch on `(mr, ⌈nr/16⌉)` for fixed packing flags (`nr > 8`).
    ///
    /// # Safety
    /// As [`Arch::tile`], with AVX-512F present and `nr > 8`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_pp<const PA: bool, const PB: bool>(
        mr: usize,
        nr: usize,
        kc: usize,
        a: ASrc,
        b: BSrc,
        c: CDst,
        alpha: f32,
        beta: f32,
        run: Run,
    ) {
        let nz = nr.div_ceil(16);
        macro_rules! go {
            ($m:literal, $z:literal) => {
                // SAFETY: forwarded contract; (mr, nz) = ($m, $z) matched.
                unsafe { kern::<$m, $z, PA, PB>(nr, kc, a, b, c, alpha, beta, run) }
            };
        }
        match (mr, nz) {
            (6, 4) => go!(6, 4),
            (6, 2) => go!(6, 2),
            (6, 1) => go!(6, 1),
            (5, 2) => go!(5, 2),
            (5, 1) => go!(5, 1),
            (4, 2) => go!(4, 2),
            (4, 1) => go!(4, 1),
            (3, 4) => go!(3, 4),
            (3, 2) => go!(3, 2),
            (3, 1) => go!(3, 1),
            (2, 4) => go!(2, 4),
            (2, 2) => go!(2, 2),
            (2, 1) => go!(2, 1),
            (1, 8) => go!(1, 8),
            (1, 4) => go!(1, 4),
            (1, 2) => go!(1, 2),
            (1, 1) => go!(1, 1),
            _ => unreachable!("gemm: no {mr}x{nr} AVX-512 micro-kernel"),
        }
    }

    impl<const W: bool> Arch for Avx512<W> {
        fn wide_nv(mr: usize) -> usize {
            if !W {
                return Avx2::wide_nv(mr);
            }
            // 1 × 128, 2 × 64, 3 × 64, 4 × 32, 5 × 32: 8–12 accumulators.
            match mr {
                1 => 16,
                2 | 3 => 8,
                _ => 4,
            }
        }

        fn band_wp() -> usize {
            if W {
                2
            } else {
                1
            }
        }

        /// 6 × 64: 24 accumulators, 4 B vectors and the broadcast operand
        /// of each FMA from memory, 28 of the 32 registers; one broadcast
        /// per 4 FMAs (a 6 × 16 tile: one per FMA).
        fn short_wp() -> usize {
            4
        }

        #[inline(always)]
        unsafe fn block(blk: &Block) {
            // SAFETY: forwarded contract (AVX-512F present).
            unsafe { block_avx512::<W>(blk) }
        }

        #[inline(always)]
        unsafe fn blocked_tier<const ACAP: usize, const BCAP: usize>(
            m: usize,
            n: usize,
            k: usize,
            alpha: f32,
            a: Op,
            b: BSide,
            beta: f32,
            c: &mut [f32],
            rsc: usize,
            csc: usize,
        ) {
            // SAFETY: forwarded contract (AVX-512F present, bounds checked).
            unsafe { blocked_avx512::<W, ACAP, BCAP>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
        }

        #[inline(always)]
        unsafe fn small_m_frame(
            m: usize,
            n: usize,
            k: usize,
            alpha: f32,
            a: Op,
            b: BSide,
            beta: f32,
            c: &mut [f32],
            rsc: usize,
            csc: usize,
        ) {
            // SAFETY: forwarded contract (AVX-512F present, bounds checked).
            unsafe { small_m_avx512::<W>(m, n, k, alpha, a, b, beta, c, rsc, csc) }
        }

        #[inline(always)]
        unsafe fn tile(
            mr: usize,
            nr: usize,
            kc: usize,
            a: ASrc,
            b: BSrc,
            c: CDst,
            alpha: f32,
            beta: f32,
            pa: bool,
            pb: bool,
            run: Run,
        ) {
            if nr <= 8 {
                // SAFETY: forwarded contract; AVX-512F implies the AVX2 and
                // FMA this implementor was selected with.
                return unsafe { Avx2::tile(mr, nr, kc, a, b, c, alpha, beta, pa, pb, run) };
            }
            // `Avx512` is only used after AVX-512F detection; each arm
            // forwards the contract of `Arch::tile` unchanged (nr > 8).
            match (pa, pb) {
                // SAFETY: forwarded contract; A and B are packed.
                (true, true) => unsafe {
                    tile_pp::<true, true>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; A packed, B in place.
                (true, false) => unsafe {
                    tile_pp::<true, false>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; A in place, B packed.
                (false, true) => unsafe {
                    tile_pp::<false, true>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
                // SAFETY: forwarded contract; both in place.
                (false, false) => unsafe {
                    tile_pp::<false, false>(mr, nr, kc, a, b, c, alpha, beta, run)
                },
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn dots(
            mr: usize,
            n: usize,
            k: usize,
            x: Op,
            w: Op,
            c: &mut [f32],
            cd: CDst,
            alpha: f32,
            beta: f32,
        ) {
            // The AVX2 GEMV: the same bits on both paths.
            Avx2::dots(mr, n, k, x, w, c, cd, alpha, beta)
        }
    }
}
