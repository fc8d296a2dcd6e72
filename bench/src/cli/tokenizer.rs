//! `moe tokenizer train`: a byte-level BPE `tokenizer.json` from a text file.
//!
//! ```text
//! moe tokenizer train --data FILE --vocab-size N --out tokenizer.json
//! ```
//!
//! See [`crate::io::tokenizer::train_bpe`]. The file loads in Python's
//! `tokenizers.Tokenizer.from_file` and in `moe train/generate --tokenizer`.

use std::path::PathBuf;

use crate::cli::arg_error;
use crate::io::tokenizer::{train_bpe, TokenizerError};

/// `moe tokenizer` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on a UTF-8 text file.
    Train(TrainTokenizerArgs),
}

/// Arguments of `moe tokenizer train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainTokenizerArgs {
    /// UTF-8 training text.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Vocabulary size (256 byte symbols + merges), in [257, 2^20].
    #[arg(long)]
    pub vocab_size: usize,
    /// Output tokenizer.json (written atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Arguments of `moe tokenizer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

/// Runs `moe tokenizer …`.
///
/// # Errors
/// The flag concerned and the [`TokenizerError`].
pub fn run(args: TokenizerArgs) -> Result<(), crate::Error> {
    match args.command {
        TokenizerCommand::Train(a) => {
            let n = train_bpe(&a.data, a.vocab_size, &a.out).map_err(|e| {
                let flag = match e {
                    TokenizerError::BadVocab { .. } => "--vocab-size",
                    TokenizerError::Write(_) => "--out",
                    _ => "--data",
                };
                arg_error(flag, e)
            })?;
            println!("wrote {} ({n} tokens)", a.out.display());
            Ok(())
        }
    }
}
