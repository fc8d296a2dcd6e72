//! The operating-system calls of the tool: resource usage, machine
//! description, the counting allocator, the output-directory lock and
//! process liveness. The tool's only `unsafe` lives here,
//! each block with its `// SAFETY:` comment.

pub mod alloc_counter;
pub mod os;
pub mod process;
pub mod rusage;
