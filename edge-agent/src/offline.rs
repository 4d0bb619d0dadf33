//! The agent's commands that need no server: local training, evaluation, writing the example models.

use clap::Args;

/// `fedge-agent train`.
#[derive(Debug, Args)]
pub struct TrainArgs {}

/// `fedge-agent eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {}

/// `fedge-agent make-model`.
#[derive(Debug, Args)]
pub struct MakeModelArgs {}

pub fn train(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet written")
}

pub fn eval(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet written")
}

pub fn make_model(_args: MakeModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet written")
}
