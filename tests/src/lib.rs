//! Shared helpers of the moe-rs test suite.

pub mod golden;
