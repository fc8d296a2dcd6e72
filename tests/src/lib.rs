//! Shared helpers of the moe-rs test suite.

pub mod golden;
pub mod reference;

/// The README's code blocks compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
