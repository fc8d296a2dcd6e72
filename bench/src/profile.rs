//! [`Profile`]: the model-size presets of moe-core, shared by the benchmark
//! scenarios and the subcommands' `--profile` flags.
//!
//! A leaf module (not in `cli/`) so that the harness does not depend on the
//! command-line layer. Each command offers its own subset of profiles with its
//! own help lines: [`profile_choices!`](crate::profile_choices) declares that set as a `clap`
//! [`ValueEnum`](clap::ValueEnum) over `Profile`, so the flag's values, help
//! and errors are exactly those of a derived value enum.

use moe_core::Config;

/// A model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `Config::tiny()` (hidden 64, 542,528 parameters; the benchmark profile).
    Tiny,
    /// `Config::scale_256()` (hidden 256, 7,134,464 parameters; the scale axis).
    Scale256,
    /// `Config::full()` (hidden 768, 30 layers; never benchmarked).
    Full,
}

impl Profile {
    /// The model config.
    pub fn config(self) -> Config {
        match self {
            Profile::Tiny => Config::tiny(),
            Profile::Scale256 => Config::scale_256(),
            Profile::Full => Config::full(),
        }
    }

    /// The name on the command line and in outputs (`tiny`, `scale_256`, `full`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Tiny => "tiny",
            Profile::Scale256 => "scale_256",
            Profile::Full => "full",
        }
    }
}

/// Declares `pub struct $name(pub Profile)`, a `clap::ValueEnum` offering the
/// listed profiles (in that order), each with its help line and optional
/// aliases:
///
/// ```ignore
/// profile_choices! {
///     /// Model size of `moe train`.
///     TrainProfile { Tiny => "`Config::tiny()`", Scale256 => "`Config::scale_256()`" }
/// }
/// ```
#[macro_export]
macro_rules! profile_choices {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident => $help:literal $(alias $alias:literal)?),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub $crate::profile::Profile);

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($name($crate::profile::Profile::$variant)),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                match self.0 {
                    $($crate::profile::Profile::$variant => Some(
                        clap::builder::PossibleValue::new(self.0.name())
                            .help($help)
                            $(.alias($alias))?
                    ),)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}
