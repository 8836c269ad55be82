//! The `gptc` command line: export, generate, inspect, bench, check. Parsing and dispatch here,
//! the arguments in `cli::args`, the rendering in `cli::commands`; the work is gptc's library.

mod cli;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

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
    // model) leaves no temporary file behind, and every output whole: the old one or the new.
    // The handler runs on its own thread; the commit lock makes it wait for an output being
    // put in place, and keeps any other from being put in place once it has begun. The exit
    // code says which state an export left: 130 (128 + SIGINT, as shells report an
    // interrupt), its output as it was; 0, the signal came once the new output was in place.
    let exporting = matches!(cli.command, Command::Export(_));
    let _ = ctrlc::set_handler(move || {
        let held = gptc_graph::file::commit_lock();
        gptc_graph::file::remove_temporaries(&held);
        let finished = exporting && held.outputs_in_place() > 0;
        std::process::exit(if finished { 0 } else { 130 });
    });
    let run = std::panic::catch_unwind(|| match cli.command {
        Command::Export(args) => commands::export(args),
        Command::Generate(args) => commands::generate(args),
        Command::Inspect(args) => commands::inspect(args),
        Command::Bench(args) => commands::bench(args),
        Command::Check(args) => commands::check(args),
        Command::Tokenize(args) => commands::tokenize(args),
    });
    // A signal handler that has begun ends the process itself, with the code that says what it
    // left (an error of the main thread may only be the handler removing its files); from here
    // on no handler begins.
    let _held = gptc_graph::file::commit_lock();
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
    std::process::exit(0);
}

/// The system allocator, except that a failed allocation ends gptc with one error line (exit 1)
/// instead of Rust's abort with a backtrace. Commands estimate their memory before allocating;
/// this is the net under those estimates.
struct OneLineOnFailure;

#[global_allocator]
static ALLOCATOR: OneLineOnFailure = OneLineOnFailure;

unsafe impl GlobalAlloc for OneLineOnFailure {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        checked(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn checked(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        out_of_memory(size)
    }
    ptr
}

/// Says so without allocating (the digits go through a stack buffer) and exits.
fn out_of_memory(size: usize) -> ! {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(b"error: out of memory: an allocation of ");
    let _ = stderr.write_all(&digits[at..]);
    let _ = stderr.write_all(b" bytes failed; this needs more memory than the machine has\n");
    std::process::exit(1)
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
