//! Printing that a closed pipe never turns into a crash.
//!
//! `println!` and `eprintln!` panic when the stream is gone (`lomo train … 2>&1 | head -2`
//! closes it after two lines; Rust ignores SIGPIPE, so the write fails with EPIPE), and a
//! panic would end a run that was only being watched. These write the same text and drop the
//! error: what could not be shown is lost, the work goes on.

/// `print!` to stdout, ignoring a closed or failing stream.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stdout(), $($arg)*);
    }};
}

/// `println!` to stdout, ignoring a closed or failing stream.
#[macro_export]
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout(), $($arg)*);
    }};
}

/// `eprint!` to stderr, ignoring a closed or failing stream.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

/// `eprintln!` to stderr, ignoring a closed or failing stream.
#[macro_export]
macro_rules! noteln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}
