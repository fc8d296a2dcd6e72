//! The subcommands other than `bench` and `report`, and what they share.

pub mod demo;
pub mod dispatch_compare;
pub mod generate;
pub mod grads;
pub mod plan;
pub mod stress;
pub mod train;
