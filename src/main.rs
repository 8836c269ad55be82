//! The `gptc` command line: export, generate, inspect, bench, check. Parsing and dispatch here,
//! the arguments in `cli::args`, the rendering in `cli::commands`; the work is gptc's library.

mod cli;

use clap::Parser;

use cli::args::{Cli, Command};
use cli::commands;

fn main() {
    // A usage error gets clap's whole message (what is wrong, what was expected, the usage
    // line) and exit code 2; --help and --version exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    // Panics are caught where a dependency may raise them on bad input (tract on malformed
    // models) and reported as errors; any other is a bug, reported below in one line.
    std::panic::set_hook(Box::new(|_| {}));
    // Ctrl-C, SIGTERM or SIGHUP in the middle of an export (or a bench, or staging a large
    // model) leaves no temporary file behind. 128 + SIGINT, as shells report an interrupt.
    let _ = ctrlc::set_handler(|| {
        gptc_graph::file::remove_temporaries();
        std::process::exit(130);
    });
    let run = std::panic::catch_unwind(|| match cli.command {
        Command::Export(args) => commands::export(args),
        Command::Generate(args) => commands::generate(args),
        Command::Inspect(args) => commands::inspect(args),
        Command::Bench(args) => commands::bench(args),
        Command::Check(args) => commands::check(args),
    });
    let result = match run {
        Ok(result) => result,
        Err(panic) => {
            let message = gptc::panic_message(&*panic);
            eprintln!("error: internal error, a bug in gptc: {message}");
            std::process::exit(101);
        }
    };
    if let Err(e) = result {
        // A reader that stopped reading (`gptc generate ... | head -c 10`) ends us quietly.
        if broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or(match cause.downcast_ref() {
            Some(gptc::Error::Io(io)) => Some(io),
            _ => None,
        });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error in one line, in the CLI's words: settings are named by their flags.
fn message(e: &anyhow::Error) -> String {
    let text = match e.downcast_ref::<gptc::Error>() {
        Some(gptc::Error::Setting { setting, problem }) => format!("--{setting} {problem}"),
        Some(gptc::Error::NoConfig(path)) => format!(
            "{} has no gptc config in its metadata; say which model it is with --preset or --config",
            path.display()
        ),
        Some(gptc::Error::CheckpointNeedsConfig(path)) => format!(
            "{} is a bare .safetensors file: say which model it holds with --preset or --config",
            path.display()
        ),
        _ => format!("{e:#}"),
    };
    text.replace('\n', " ")
}
