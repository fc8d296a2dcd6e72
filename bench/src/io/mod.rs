//! Files: atomic writes, bounded reads and memory maps of untrusted inputs,
//! the text corpus, tokenizers, checkpoint directories.

pub mod atomic;
pub mod checkpoint;
pub mod corpus;
pub mod mmap;
pub mod outdir;
pub mod read;
pub mod tokenizer;
