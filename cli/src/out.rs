//! Standard output that survives pipes: every write goes through here, and a
//! write that fails ends the process cleanly instead of panicking.
//!
//! A reader that closed early (`arbiter lab | head -1`) is not an error: the
//! process exits 0 without another word. Any other write error (a full disk,
//! `> /dev/full`) is reported once on stderr, and the process exits 2.

use std::fmt;
use std::io::{ErrorKind, Write as _};

use crate::EXIT_BAD_INPUT;

/// Writes formatted text to stdout, or ends the process on a write error.
pub(crate) fn text(args: fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args) {
        write_failed(&e);
    }
}

/// Writes bytes to stdout and flushes, or ends the process on a write error.
pub(crate) fn bytes(b: &[u8]) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(b).and_then(|()| o.flush()) {
        write_failed(&e);
    }
}

/// Flushes stdout before the process ends, so a late error is still seen.
pub(crate) fn flush() {
    if let Err(e) = std::io::stdout().lock().flush() {
        write_failed(&e);
    }
}

/// Ends the process after a failed write to stdout.
pub(crate) fn write_failed(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // stderr may be gone too: nothing more can be said then.
    let _ = writeln!(std::io::stderr(), "arbiter: cannot write the output: {e}");
    std::process::exit(i32::from(EXIT_BAD_INPUT));
}

/// Catches what a library prints with `print!` on a closed or full stdout:
/// the standard library panics with "failed printing to stdout", which this
/// hook turns into the same quiet exit as [`write_failed`].
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") {
            let kind = if message.contains("Broken pipe") { ErrorKind::BrokenPipe } else { ErrorKind::Other };
            write_failed(&std::io::Error::new(kind, message.trim_start_matches("failed printing to stdout: ")));
        }
        default(info);
    }));
}

/// `println!` that survives a closed stdout.
macro_rules! outln {
    () => { $crate::out::text(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::text(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that survives a closed stdout.
macro_rules! out {
    ($($t:tt)*) => { $crate::out::text(format_args!($($t)*)) };
}

pub(crate) use {out, outln};
