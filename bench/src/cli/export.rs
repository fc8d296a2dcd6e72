//! `moe export`: a checkpoint in the forms the Hugging Face ecosystem writes.
//!
//! ```text
//! moe export --checkpoint DIR --out DIR [--dtype f32|bf16|f16] [--max-shard-size 2GB]
//! ```
//!
//! Reads any loadable checkpoint (ours, a `moe train --out` directory, or one
//! written by `transformers`) and writes `config.json` (declaring the dtype)
//! plus `model.safetensors`, or with `--max-shard-size` the shards
//! `model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`, as
//! `save_pretrained(max_shard_size=…)` does. BF16/F16 round each f32 to
//! nearest (ties to even). The whole directory is written atomically (a
//! temporary directory renamed into place, see [`checkpoint::export`]).

use std::path::PathBuf;

use crate::cli::{arg_error, checkpoint_dir};
use crate::io::checkpoint::{self, ExportOptions, SaveOptions, StoreDtype};

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// float32 (exact).
    F32,
    /// bfloat16.
    Bf16,
    /// float16 (finite range ±65504).
    F16,
}

/// Arguments of `moe export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Checkpoint to read (any loadable directory, or a `moe train --out` directory).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Output directory (replaced atomically if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Tensor dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Largest shard, e.g. `2GB`, `500MB`, `40KB` (powers of 1000), `1GiB`
    /// (powers of 1024) or bytes; without it one `model.safetensors`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: Option<u64>,
}

/// `"2GB"` → 2·10⁹, `"1GiB"` → 2³⁰, `"123"` → 123 bytes (as `transformers`' `convert_file_size_to_int`).
///
/// # Errors
/// A message for an empty, zero, non-numeric or overflowing size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let units: [(&str, u64); 9] = [
        ("GIB", 1 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("B", 1),
    ];
    let upper = t.to_ascii_uppercase();
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| upper.strip_suffix(u).map(|n| (n.trim().to_owned(), *m)))
        .unwrap_or((upper.clone(), 1));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 2GB, 500MB, 1GiB or a byte count"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 {
        return Err("the shard size must be > 0".to_owned());
    }
    Ok(bytes)
}

/// Runs `moe export`.
///
/// # Errors
/// `--checkpoint` load errors, `--out` write errors.
pub fn run(args: ExportArgs) -> Result<(), crate::Error> {
    let dir = checkpoint_dir(&args.checkpoint);
    let cc = checkpoint::read_config(&dir).map_err(|e| arg_error("--checkpoint", e))?;
    let model = checkpoint::load(&dir).map_err(|e| arg_error("--checkpoint", e))?;
    let dtype = match args.dtype {
        DtypeArg::F32 => StoreDtype::F32,
        DtypeArg::Bf16 => StoreDtype::BF16,
        DtypeArg::F16 => StoreDtype::F16,
    };
    let opts = ExportOptions {
        save: SaveOptions {
            router_aux_loss_coef: cc
                .router_aux_loss_coef
                .unwrap_or(checkpoint::DEFAULT_ROUTER_AUX_LOSS_COEF),
        },
        dtype,
        max_shard_bytes: args.max_shard_size,
    };
    checkpoint::export(&args.out, &model, &opts).map_err(|e| arg_error("--out", e))?;
    println!(
        "exported {} ({} parameters) as {} to {}",
        dir.display(),
        model.config().param_counts().total,
        dtype.torch_name(),
        args.out.display()
    );
    Ok(())
}
