//! Files: atomic writes, the text corpus, checkpoint directories.

pub mod atomic;
pub mod checkpoint;
pub mod corpus;
