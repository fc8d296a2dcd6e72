//! Subword tokenizers: Hugging Face `tokenizer.json` files through the
//! `tokenizers` crate (pure Rust: `default-features = false` with its
//! `fancy-regex` backend, no C library), and training a byte-level BPE on a
//! text file (`moe tokenizer train`).
//!
//! The byte tokenizer ([`crate::io::corpus::encode`]) stays the default; a
//! [`Tokenizer`] replaces it when `--tokenizer FILE` is given to `moe train`
//! or `moe generate`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use moe_core::TokenId;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
};

use crate::io::atomic::write_atomic;
use crate::io::read::{read_to_string_bounded, ReadError, MAX_JSON_BYTES, MAX_TEXT_BYTES};

/// Largest vocabulary `moe tokenizer train` accepts (ids stay far below
/// [`moe_core::IGNORE_INDEX`]).
pub const MAX_VOCAB: usize = 1 << 20;

/// What went wrong with a tokenizer file or its training.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The file could not be read (missing, not regular, too large, not UTF-8).
    Read(ReadError),
    /// `tokenizers` refused the file (not a tokenizer.json) or failed to encode/decode/train.
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// The crate's message.
        message: String,
    },
    /// `--vocab-size` out of range.
    BadVocab {
        /// The value given.
        vocab: usize,
    },
    /// Writing the output failed.
    Write(crate::io::checkpoint::CheckpointError),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Read(e) => write!(f, "{e}"),
            TokenizerError::Invalid { path, message } => {
                write!(f, "{}: not a usable tokenizer: {message}", path.display())
            }
            TokenizerError::BadVocab { vocab } => write!(
                f,
                "--vocab-size must be in [257, {MAX_VOCAB}] (256 byte symbols plus merges), got {vocab}"
            ),
            TokenizerError::Write(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

impl From<ReadError> for TokenizerError {
    fn from(e: ReadError) -> Self {
        TokenizerError::Read(e)
    }
}

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `path` (a regular file of at most [`MAX_JSON_BYTES`]).
    ///
    /// # Errors
    /// [`TokenizerError::Read`], [`TokenizerError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let text = read_to_string_bounded(path, MAX_JSON_BYTES)?;
        let inner =
            tokenizers::Tokenizer::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Tokenizer {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// Size of the vocabulary, added tokens included: every id is `< vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `text` → ids (no special tokens added).
    ///
    /// # Errors
    /// [`TokenizerError::Invalid`] if the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.invalid(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// ids → text (special tokens kept).
    ///
    /// # Errors
    /// [`TokenizerError::Invalid`] if the tokenizer fails on the ids.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| self.invalid(e))
    }

    fn invalid(&self, e: impl fmt::Display) -> TokenizerError {
        TokenizerError::Invalid {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Trains a byte-level BPE (GPT-2 style: `ByteLevel` pre-tokenizer without a
/// prefix space, the 256 byte symbols as initial alphabet, `ByteLevel`
/// decoder) of `vocab` entries on the UTF-8 text file `data` and writes its
/// `tokenizer.json` to `out` atomically. Returns the vocabulary size.
///
/// # Errors
/// [`TokenizerError::BadVocab`], [`TokenizerError::Read`] (for `data`),
/// [`TokenizerError::Invalid`], [`TokenizerError::Write`].
pub fn train_bpe(data: &Path, vocab: usize, out: &Path) -> Result<usize, TokenizerError> {
    if !(257..=MAX_VOCAB).contains(&vocab) {
        return Err(TokenizerError::BadVocab { vocab });
    }
    let text = read_to_string_bounded(data, MAX_TEXT_BYTES)?;
    let invalid = |e: tokenizers::Error| TokenizerError::Invalid {
        path: data.to_path_buf(),
        message: e.to_string(),
    };
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab)
        .min_frequency(0)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tok = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
    .with_post_processor(None)
    .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
    .build()
    .map_err(invalid)?;
    // Line by line (each with its newline), as the Python library's
    // `train(files)` reads a file.
    tok.train(&mut trainer, text.split_inclusive('\n'))
        .map_err(invalid)?;
    let json = tok.to_string(false).map_err(invalid)?;
    write_atomic(out, |w| w.write_all(json.as_bytes())).map_err(TokenizerError::Write)?;
    Ok(tok.get_vocab_size(true))
}
