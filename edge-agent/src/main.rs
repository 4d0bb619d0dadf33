//! `fedge-agent`: the edge agent's command line.

use clap::{Parser, Subcommand};
use fedge_agent::offline;

#[derive(Debug, Parser)]
#[command(name = "fedge-agent", version, about = "fedge edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model locally on a data set, without a server.
    Train(offline::TrainArgs),
    /// Evaluate a model on a test set.
    Eval(offline::EvalArgs),
    /// Write one of the example models as ONNX.
    MakeModel(offline::MakeModelArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Train(a) => offline::train(a),
        Command::Eval(a) => offline::eval(a),
        Command::MakeModel(a) => offline::make_model(a),
    }
}
