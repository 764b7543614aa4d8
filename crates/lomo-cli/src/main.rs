//! `lomo`: full-parameter fine-tuning of LLaMA-family models with LOMO / AdaLomo on limited
//! memory. Subcommands: train, eval, generate, plan, demo.

mod alloc;
mod args;
mod backend;
mod checkpoint;
mod data;
mod demo;
mod eval;
mod generate;
mod model;
mod plan;
mod progress;
mod train;
mod trainer;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
            // One line, as every other user error: clap's first line, and where to look.
            let text = err.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: invalid arguments");
            let rest: Vec<&str> = text.lines().skip_while(|l| *l != first).skip(1).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")).collect();
            let detail = if rest.is_empty() { String::new() } else { format!(" {}", rest.join(", ")) };
            eprintln!("{first}{detail} (see `lomo --help`)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(2)
        }
    }
}
