//! Subcommands of the binary that are more than a few lines.

pub mod assignments;
pub mod diagnose;
pub mod inspect;
