//! `moe plan`: where every byte of a model lives — the flat parameter,
//! gradient and AdamW moment buffers, and the [`Workspace::plan`] entries of
//! the activation arena per mode, with the KV cache of a decoding session.
//!
//! Nothing here runs the model: the workspace is planned and allocated
//! (untouched pages, so cheap even for `full`), then described. The output of
//! this command is pasted into `docs/runtime.md`.

use clap::{Args, ValueEnum};
use moe_core::rope::RopeTable;
use moe_core::{
    AttnMemory, Config, KvCache, Memory, MoETransformer, Mode, PlanEntry, Recompute, Workspace,
};

use crate::Error;

crate::profile_choices! {
    /// Model profile of `moe plan`.
    PlanProfile {
        Tiny => "`Config::tiny()` (hidden 64, the benchmark profile)",
        Scale256 => "`Config::scale_256()` (hidden 256, axis 5)" alias "scale256",
        Full => "`Config::full()` (hidden 768, 30 layers; never benchmarked)",
    }
}

/// Which workspace(s) `moe plan` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanMode {
    /// `Mode::Inference` (default shape b2 s32, as `mem_scale_*` / `dispatch_warm`).
    Inference,
    /// `Mode::Training` (default shape b2 s8, as `mem_train_step`).
    Training,
    /// Both, each at its own default shape unless `--batch`/`--seq` are given.
    Both,
}

/// `--recompute` of `moe plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanRecompute {
    /// Every layer's activations saved (`Recompute::None`).
    None,
    /// Activation checkpointing (`Recompute::Layers`).
    Layers,
}

/// `--attention` of `moe plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanAttention {
    /// Probabilities `[b, h, t, t]` saved (`AttnMemory::Saved`).
    Saved,
    /// Row statistics saved, probabilities recomputed (`AttnMemory::Lse`).
    Lse,
    /// Probabilities saved as bf16 (`AttnMemory::SavedBf16`, mixed precision).
    SavedBf16,
}

/// Options of `moe plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Model profile.
    #[arg(long, value_enum, default_value = "tiny")]
    pub profile: PlanProfile,
    /// Planned batch (default: 2, the benchmark batch).
    #[arg(long, value_parser = super::at_least_one)]
    pub batch: Option<usize>,
    /// Planned sequence length (default: 32 for inference, 8 for training — the benchmark shapes).
    #[arg(long, value_parser = super::at_least_one)]
    pub seq: Option<usize>,
    /// Workspace mode(s).
    #[arg(long, value_enum, default_value = "both")]
    pub mode: PlanMode,
    /// Training memory option: activation checkpointing. With `layers` (or
    /// `--attention lse`) the training plan is printed beside the default one.
    #[arg(long, value_enum, default_value = "none")]
    pub recompute: PlanRecompute,
    /// Training memory option: what attention keeps for the backward.
    #[arg(long, value_enum, default_value = "saved")]
    pub attention: PlanAttention,
    /// Print markdown tables (for docs/runtime.md) instead of plain text.
    #[arg(long)]
    pub markdown: bool,
    /// Also print the memory of a step on N threads: the per-micro-batch
    /// training workspaces and gradient buffers, the split-forward workspaces.
    #[arg(long, value_name = "N", value_parser = super::threads_arg)]
    pub threads: Option<usize>,
    /// Weight precision. `bf16`: the bf16 model's buffers (weights halved, as
    /// `moe generate --precision bf16` holds them), then mixed-precision
    /// training (`moe train --precision bf16`): the flat buffers gain the bf16
    /// weight copy, and the training plan saves the attention probabilities
    /// as bf16 (printed beside the default plan; with `--attention lse` there
    /// are none to save).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: crate::cli::PrecisionArg,
}

/// The benchmark shapes of each mode (spec §6: b2 s32 inference, b2 s8 training).
fn default_shape(mode: Mode) -> (usize, usize) {
    match mode {
        Mode::Inference => (2, 32),
        Mode::Training => (2, 8),
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Inference => "inference",
        Mode::Training => "training",
    }
}

/// `1234567` → `1,234,567`.
fn thousands(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes with a binary-prefixed approximation, e.g. `2,170,112 (2.07 MiB)`.
fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    let approx = if b >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.2} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    };
    format!("{} ({approx})", thousands(bytes))
}

/// A table: header and rows of cells, printed as markdown or aligned text.
struct Table {
    header: Vec<&'static str>,
    /// Columns that are right-aligned in text output.
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn print(&self, markdown: bool) {
        if markdown {
            println!("| {} |", self.header.join(" | "));
            let rule: Vec<&str> = self
                .right
                .iter()
                .map(|&r| if r { "---:" } else { "---" })
                .collect();
            println!("|{}|", rule.join("|"));
            for r in &self.rows {
                println!("| {} |", r.join(" | "));
            }
            return;
        }
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        // Plain text: drop the markdown emphasis and code marks.
        let plain = |c: &str| c.replace("**", "").replace('`', "");
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| plain(c)).collect())
            .collect();
        for r in &rows {
            for (i, cell) in r.iter().enumerate() {
                w[i] = w[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if self.right[i] {
                        format!("{c:>width$}", width = w[i])
                    } else {
                        format!("{c:<width$}", width = w[i])
                    }
                })
                .collect();
            println!("  {}", parts.join("  ").trim_end());
        };
        line(self.header.iter().map(|h| plain(h)).collect());
        for r in rows {
            line(r);
        }
    }
}

fn heading(markdown: bool, text: &str) {
    if markdown {
        println!("\n**{text}**\n");
    } else {
        println!("\n{text}");
    }
}

/// The flat buffers: parameters, and in training gradients + both AdamW moments.
/// With `Precision::Bf16`: first the bf16 model's buffers (inference), then
/// the mixed-precision trainer's, which adds the bf16 copy the GEMMs read.
fn print_flat(cfg: &Config, markdown: bool, precision: moe_core::Precision) -> Result<(), Error> {
    let mixed = precision == moe_core::Precision::Bf16;
    if mixed {
        print_flat_bf16(cfg, markdown)?;
    }
    let counts = cfg.param_counts_checked()?;
    let params = counts.total;
    let bytes = params
        .checked_mul(4)
        .ok_or("parameter bytes overflow u64")?;
    heading(
        markdown,
        &format!(
            "Flat buffers ({} parameters, {} active per token)",
            thousands(params),
            thousands(counts.active)
        ),
    );
    let row = |name: &str, when: &str| vec![format!("`{name}`"), when.to_owned(), human(bytes)];
    let layout = moe_core::Layout::new(cfg)?;
    let packed = MoETransformer::prepacked_len(&layout)? as u64 * 4;
    let mut rows = vec![
        row("params", "MoETransformer (always)"),
        vec![
            "`prepacked`".to_owned(),
            "MoETransformer::prepack (f32 inference only; not in the total)".to_owned(),
            human(packed),
        ],
        row("grads", "Trainer (training)"),
        row("AdamW m", "Trainer (training)"),
        row("AdamW v", "Trainer (training)"),
    ];
    let mut total = 4 * bytes;
    if mixed {
        // The bf16 shadow model: 2 bytes per parameter plus its f32 norm
        // table ([2L + 1, c], see `MoETransformer::param_bytes`).
        let norms = (2 * cfg.num_hidden_layers as u64 + 1) * cfg.hidden_size as u64 * 4;
        let shadow = bytes / 2 + norms;
        rows.push(vec![
            "`bf16 copy`".to_owned(),
            "Trainer (mixed precision: what the GEMMs read)".to_owned(),
            human(shadow),
        ]);
        total += shadow;
    }
    rows.push(vec![
        "**total in training**".to_owned(),
        String::new(),
        human(total),
    ]);
    Table {
        header: vec!["buffer", "held by", "bytes"],
        right: vec![false, false, true],
        rows,
    }
    .print(markdown);
    Ok(())
}

/// The bf16 model's buffers: the bf16 parameters and the f32 norm table.
fn print_flat_bf16(cfg: &Config, markdown: bool) -> Result<(), Error> {
    let counts = cfg.param_counts_checked()?;
    let params = counts.total;
    let bf16 = params
        .checked_mul(2)
        .ok_or("parameter bytes overflow u64")?;
    let norms = 4 * (2 * cfg.num_hidden_layers as u64 + 1) * cfg.hidden_size as u64;
    let f32_bytes = params
        .checked_mul(4)
        .ok_or("parameter bytes overflow u64")?;
    heading(
        markdown,
        &format!(
            "Flat buffers in bf16 ({} parameters, {} active per token: {} bf16 bytes read per decoded token)",
            thousands(params),
            thousands(counts.active),
            human(2 * counts.active)
        ),
    );
    Table {
        header: vec!["buffer", "held by", "bytes"],
        right: vec![false, false, true],
        rows: vec![
            vec![
                "`params` (bf16)".to_owned(),
                "MoETransformer (Precision::Bf16)".to_owned(),
                human(bf16),
            ],
            vec![
                "norm table (f32)".to_owned(),
                "MoETransformer (Precision::Bf16)".to_owned(),
                human(norms),
            ],
            vec!["**total**".to_owned(), String::new(), human(bf16 + norms)],
            vec![
                "(f32 `params`, for comparison)".to_owned(),
                String::new(),
                human(f32_bytes),
            ],
        ],
    }
    .print(markdown);
    Ok(())
}

/// One workspace: every plan entry, then the byte accounting of `Workspace::bytes`.
fn print_workspace(
    cfg: &Config,
    mode: Mode,
    batch: usize,
    seq: usize,
    markdown: bool,
) -> Result<(), Error> {
    super::check_workspace_fits(cfg, batch, seq, mode, "--batch/--seq")?;
    let ws =
        Workspace::new(cfg, batch, seq, mode).map_err(|e| super::arg_error("--batch/--seq", e))?;
    let plan: Vec<PlanEntry> = ws.plan();
    heading(
        markdown,
        &format!(
            "Workspace, {} mode, b{batch} s{seq} ({} buffers in the plan)",
            mode_name(mode),
            plan.len()
        ),
    );
    let mut rows = Vec::new();
    let mut zero = Vec::new();
    let mut sum: u64 = 0;
    for e in &plan {
        let bytes = e.bytes() as u64;
        sum += bytes;
        if e.elems == 0 {
            zero.push(e.name);
            continue;
        }
        let dtype = match e.dtype {
            moe_core::arena::Dtype::F32 => "f32",
            moe_core::arena::Dtype::U32 => "u32",
            moe_core::arena::Dtype::Bf16 => "bf16",
        };
        rows.push(vec![
            format!("`{}`", e.name),
            dtype.to_owned(),
            thousands(e.elems as u64),
            e.copies.to_string(),
            thousands(bytes),
        ]);
    }
    Table {
        header: vec!["buffer", "dtype", "elems", "copies", "bytes"],
        right: vec![false, false, true, true, true],
        rows,
    }
    .print(markdown);
    if !zero.is_empty() {
        println!();
        println!(
            "{} entries are empty in this mode: {}.",
            zero.len(),
            zero.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let rope = RopeTable::new(cfg, seq)?.bytes() as u64;
    let total = ws.bytes() as u64;
    let table = total.saturating_sub(sum + rope);
    println!();
    Table {
        header: vec!["part of `Workspace::bytes()`", "bytes"],
        right: vec![false, true],
        rows: vec![
            vec!["activation buffers (Σ above)".to_owned(), human(sum)],
            vec!["per-layer slice table".to_owned(), human(table)],
            vec![format!("RoPE cos/sin table [{seq}, d/2]"), human(rope)],
            vec!["**total (`arena_bytes`)**".to_owned(), human(total)],
        ],
    }
    .print(markdown);
    if mode == Mode::Inference && batch == 1 {
        let kv = KvCache::new(cfg, seq)?.bytes() as u64;
        println!();
        println!(
            "KV cache for {seq} positions (a `Decoder` holds this workspace + the cache): {}",
            human(kv)
        );
    }
    Ok(())
}

fn memory_name(mem: Memory) -> String {
    let r = match mem.recompute {
        Recompute::None => "no recompute",
        Recompute::Layers => "recompute layers",
    };
    let a = match mem.attention {
        AttnMemory::Saved => "saved probabilities",
        AttnMemory::Lse => "LSE attention",
        AttnMemory::SavedBf16 => "bf16 saved probabilities",
    };
    format!("{r}, {a}")
}

/// The default training plan and the one with `mem`, entry by entry.
fn print_side_by_side(
    cfg: &Config,
    mem: Memory,
    batch: usize,
    seq: usize,
    markdown: bool,
) -> Result<(), Error> {
    let mode = Mode::Training;
    super::check_workspace_fits(cfg, batch, seq, mode, "--batch/--seq")?;
    let build = |m: Memory| {
        Workspace::with_memory(cfg, batch, seq, mode, m)
            .map_err(|e| super::arg_error("--batch/--seq", e))
    };
    let (base, low) = (build(Memory::default())?, build(mem)?);
    heading(
        markdown,
        &format!(
            "Training plan b{batch} s{seq}: default vs {}",
            memory_name(mem)
        ),
    );
    let cell = |e: &PlanEntry| {
        if e.elems == 0 {
            "—".to_owned()
        } else {
            format!("{} × {}", thousands(e.elems as u64), e.copies)
        }
    };
    let mut rows = Vec::new();
    for (a, b) in base.plan().iter().zip(low.plan().iter()) {
        if a.elems == 0 && b.elems == 0 {
            continue;
        }
        let (x, y) = (a.bytes() as u64, b.bytes() as u64);
        let name = if x != y {
            format!("**`{}`**", a.name)
        } else {
            format!("`{}`", a.name)
        };
        rows.push(vec![name, cell(a), thousands(x), cell(b), thousands(y)]);
    }
    let (x, y) = (base.bytes() as u64, low.bytes() as u64);
    rows.push(vec![
        "**total (`arena_bytes`)**".to_owned(),
        String::new(),
        human(x),
        String::new(),
        human(y),
    ]);
    Table {
        header: vec![
            "buffer",
            "default elems × copies",
            "bytes (default)",
            "chosen elems × copies",
            "bytes (chosen)",
        ],
        right: vec![false, true, true, true, true],
        rows,
    }
    .print(markdown);
    println!();
    println!(
        "{:.2}× smaller ({} saved){}",
        x as f64 / y.max(1) as f64,
        human(x.saturating_sub(y)),
        if markdown {
            "; changed buffers in bold."
        } else {
            "."
        }
    );
    Ok(())
}

/// The KV cache of `generate` for a few lengths: `2 · L · capacity · kv · d` f32.
fn print_kv(cfg: &Config, markdown: bool) -> Result<(), Error> {
    let per = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4;
    heading(
        markdown,
        &format!(
            "KV cache: k and v [L, capacity, kv·d] f32 = {} bytes per position",
            thousands(per as u64)
        ),
    );
    let mut caps = vec![32usize, 64, 512, cfg.max_position_embeddings];
    caps.retain(|&c| c <= cfg.max_position_embeddings);
    caps.dedup();
    let mut rows = Vec::new();
    for cap in caps {
        let bytes = (per as u64) * cap as u64;
        // Cross-check against the real allocation where that is cheap (it is zero-filled).
        if bytes <= 16 << 20 {
            let real = KvCache::new(cfg, cap)?.bytes() as u64;
            if real != bytes {
                return Err(
                    format!("KV cache of {cap} positions: {real} bytes, expected {bytes}").into(),
                );
            }
        }
        rows.push(vec![thousands(cap as u64), human(bytes)]);
    }
    Table {
        header: vec!["capacity (positions)", "bytes"],
        right: vec![true, true],
        rows,
    }
    .print(markdown);
    Ok(())
}

/// Runs `moe plan`.
///
/// # Errors
/// moe-core errors (invalid shape, overflow, allocation failure).
pub fn run(args: PlanArgs) -> Result<(), Error> {
    let cfg = args.profile.0.config();
    let modes: &[Mode] = match args.mode {
        PlanMode::Inference => &[Mode::Inference],
        PlanMode::Training => &[Mode::Training],
        PlanMode::Both => &[Mode::Inference, Mode::Training],
    };
    if args.markdown {
        println!("#### Profile `{}`", args.profile.0.name());
    } else {
        println!("profile {}", args.profile.0.name());
    }
    print_flat(&cfg, args.markdown, args.precision.precision())?;
    for &mode in modes {
        let (b0, t0) = default_shape(mode);
        let (b, t) = (args.batch.unwrap_or(b0), args.seq.unwrap_or(t0));
        print_workspace(&cfg, mode, b, t, args.markdown)?;
    }
    let mem = Memory {
        recompute: match args.recompute {
            PlanRecompute::None => Recompute::None,
            PlanRecompute::Layers => Recompute::Layers,
        },
        attention: match args.attention {
            PlanAttention::Saved => AttnMemory::Saved,
            PlanAttention::Lse => AttnMemory::Lse,
            PlanAttention::SavedBf16 => AttnMemory::SavedBf16,
        },
    };
    // Mixed precision saves the probabilities as bf16 (what `Trainer` plans).
    let mixed = args.precision.precision() == moe_core::Precision::Bf16;
    let mem = match (mixed, mem.attention) {
        (true, AttnMemory::Saved) => Memory {
            attention: AttnMemory::SavedBf16,
            ..mem
        },
        _ => mem,
    };
    if mem != Memory::default() && modes.contains(&Mode::Training) {
        let (b0, t0) = default_shape(Mode::Training);
        let (b, t) = (args.batch.unwrap_or(b0), args.seq.unwrap_or(t0));
        print_side_by_side(&cfg, mem, b, t, args.markdown)?;
    }
    if modes.contains(&Mode::Inference) {
        print_kv(&cfg, args.markdown)?;
    }
    if let Some(threads) = args.threads {
        let (b0, t0) = default_shape(Mode::Training);
        let train = (args.batch.unwrap_or(b0), args.seq.unwrap_or(t0));
        let (b1, t1) = default_shape(Mode::Inference);
        let infer = (args.batch.unwrap_or(b1), args.seq.unwrap_or(t1));
        print_threads(&cfg, threads, train, infer, args.markdown)?;
    }
    Ok(())
}

/// The memory of one model on `threads` threads: it belongs to the fixed
/// micro-batches (training) and sequence groups (forward), never to a
/// thread, so it is the same for every `threads`.
fn print_threads(
    cfg: &Config,
    threads: usize,
    (tb, tt): (usize, usize),
    (ib, it): (usize, usize),
    markdown: bool,
) -> Result<(), Error> {
    let groups = |splits: usize, b: usize| {
        let g = splits.min(b);
        (g, b.div_ceil(g))
    };
    let (m, per) = groups(moe_core::DEFAULT_MICRO_BATCHES, tb);
    let ws = Workspace::new(cfg, per, tt, Mode::Training)
        .map_err(|e| super::arg_error("--batch/--seq", e))?;
    let grad = 4 * cfg.param_counts_checked()?.total;
    heading(
        markdown,
        &format!(
            "Training on {threads} threads, b{tb} s{tt}: {m} micro-batches (Trainer::with_threads; \
             {} worker thread{} + the caller, any of which runs any micro-batch)",
            threads - 1,
            if threads == 2 { "" } else { "s" }
        ),
    );
    let mut rows: Vec<Vec<String>> = (0..m)
        .map(|i| {
            let (lo, hi) = (i * tb / m, (i + 1) * tb / m);
            vec![
                i.to_string(),
                format!("{lo}..{hi}"),
                human(ws.bytes() as u64),
                if i == 0 {
                    format!("{} (`Trainer::grads`, the reduced sum)", human(grad))
                } else {
                    human(grad)
                },
            ]
        })
        .collect();
    rows.push(vec![
        "**total**".to_owned(),
        String::new(),
        human(m as u64 * ws.bytes() as u64),
        human(m as u64 * grad),
    ]);
    Table {
        header: vec![
            "micro-batch",
            "sequences",
            "training workspace",
            "gradient buffer",
        ],
        right: vec![true, false, true, true],
        rows,
    }
    .print(markdown);
    let (g, per) = groups(moe_core::FORWARD_SPLITS, ib);
    let wsi = Workspace::new(cfg, per, it, Mode::Inference)
        .map_err(|e| super::arg_error("--batch/--seq", e))?;
    let logits = 4 * (ib * it * cfg.vocab_size) as u64;
    heading(
        markdown,
        &format!(
            "Split forward on {threads} threads, b{ib} s{it}: {g} sequence groups (SplitWorkspace)"
        ),
    );
    Table {
        header: vec!["part", "bytes"],
        right: vec![false, true],
        rows: vec![
            vec![
                format!("{g} × inference workspace (≤ {per} sequences each)"),
                human(g as u64 * wsi.bytes() as u64),
            ],
            vec!["gathered logits `[b, t, v]`".to_owned(), human(logits)],
            vec![
                "**total (`SplitWorkspace::bytes`)**".to_owned(),
                human(g as u64 * wsi.bytes() as u64 + logits),
            ],
        ],
    }
    .print(markdown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(542_528), "542,528");
        assert_eq!(thousands(6_880_000_000), "6,880,000,000");
    }

    #[test]
    fn workspace_bytes_decompose() {
        // Σ plan entries + slice table + RoPE table = Workspace::bytes().
        let cfg = Config::tiny();
        for (mode, (b, t)) in [
            (Mode::Inference, default_shape(Mode::Inference)),
            (Mode::Training, default_shape(Mode::Training)),
        ] {
            let ws = Workspace::new(&cfg, b, t, mode).unwrap();
            let sum: usize = ws.plan().iter().map(PlanEntry::bytes).sum();
            let rope = RopeTable::new(&cfg, t).unwrap().bytes();
            assert!(ws.bytes() >= sum + rope);
            assert!(ws.bytes() - sum - rope < 4096, "slice table is small");
        }
    }
}
