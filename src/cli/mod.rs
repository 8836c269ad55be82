//! The `gptc` command line: its arguments, and what each command prints.

pub mod args;
pub mod commands;
