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
    let cli = Cli::parse();
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
