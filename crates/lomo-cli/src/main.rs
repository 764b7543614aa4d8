//! `lomo`: full-parameter fine-tuning of LLaMA-family models with LOMO / AdaLomo on limited
//! memory. Subcommands: train, eval, generate, export, launch, coordinator, plan, demo.

mod alloc;
mod args;
mod checkpoint;
mod config;
mod data;
mod demo;
mod eval;
mod export;
mod generate;
mod launch;
mod model;
mod placement;
mod plan;
mod plot;
mod progress;
mod scoring;
mod signals;
mod train;
mod trainer;

use std::process::ExitCode;

use clap::Parser;
use lomo_cli::backend;

use args::{Cli, Command};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// A user error: one line, the error and its causes, outermost first.
fn fail(err: &anyhow::Error) -> ExitCode {
    // A cause whose text its context already quotes (an error type that prints its source) is
    // not said twice.
    let mut line = String::new();
    for cause in err.chain().map(|c| c.to_string()) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    lomo_cli::noteln!("error: {line}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let expanded = match config::expand(std::env::args_os().collect()) {
        Ok(expanded) => expanded,
        Err(err) => return fail(&err),
    };
    let cli = match Cli::try_parse_from(&expanded.argv) {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line, as every other user error: clap's first line, and where to look.
            let text = err.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: invalid arguments");
            let rest: Vec<&str> = text
                .lines()
                .skip_while(|l| *l != first)
                .skip(1)
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            let detail = if rest.is_empty() { String::new() } else { format!(" {}", rest.join(", ")) };
            // A bad value from a config file names the file and line it came from.
            let origin = match err.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(arg)) => {
                    arg.split([' ', '=']).next().and_then(|flag| expanded.origin_of(flag))
                }
                _ => None,
            };
            let at = origin.map(|o| format!("{}:{}: ", o.file.display(), o.line)).unwrap_or_default();
            let first = match first.strip_prefix("error: ") {
                Some(rest) if !at.is_empty() => format!("error: {at}{rest}"),
                _ => first.to_string(),
            };
            lomo_cli::noteln!("{first}{detail} (see `lomo --help`)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Export(a) => export::run(a),
        Command::Launch(a) => launch::run(a),
        Command::Coordinator(a) => launch::coordinator(a),
        Command::Plan(a) => plan::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped as a signal asked: the command has said so in its own line.
        Err(err) => match err.downcast_ref::<signals::Interrupted>() {
            Some(signals::Interrupted(signal)) => ExitCode::from(signal.exit_code()),
            None => fail(&err),
        },
    }
}
