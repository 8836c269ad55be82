//! The `gptc` command line: its arguments, what each command prints, and the bench it runs.

pub mod args;
pub mod bench;
pub mod commands;
