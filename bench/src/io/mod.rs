//! Files: atomic writes, bounded reads of untrusted inputs, the text corpus,
//! checkpoint directories.

pub mod atomic;
pub mod checkpoint;
pub mod corpus;
pub mod outdir;
pub mod read;
