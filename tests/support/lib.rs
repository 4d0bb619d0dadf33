//! Shared pieces of the whole-system tests: data subsets, small models, waiting for events, finding binaries.
//!
//! Test support only: nothing here is part of a fedge deployment.

use anyhow::{Context, bail};
use fedge_agent::client::AgentEvent;
use fedge_server::service::ServerEvent;
use fedge_shared::data::{self, Dataset, Split};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The first `train` training and `test` test examples of MNIST.
pub fn mnist_subset(train: usize, test: usize) -> anyhow::Result<(Dataset, Dataset)> {
    let dir = fedge_server::demo::find_mnist(None)?;
    Ok((data::load_mnist_dir(&dir, Split::Train)?.take(train), data::load_mnist_dir(&dir, Split::Test)?.take(test)))
}

/// Waits for the next server event matching `pick`, for at most `limit`.
pub async fn wait_server<T>(
    events: &mut broadcast::Receiver<ServerEvent>,
    limit: Duration,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => bail!("server events ended: {e}"),
            }
        }
    })
    .await
    .context("timed out waiting for a server event")?
}

/// Waits for the next agent event matching `pick`, for at most `limit`.
pub async fn wait_agent<T>(
    events: &mut mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    limit: Duration,
    mut pick: impl FnMut(usize, &AgentEvent) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Some((i, e)) => {
                    if let Some(t) = pick(i, &e) {
                        return Ok(t);
                    }
                }
                None => bail!("agent events ended"),
            }
        }
    })
    .await
    .context("timed out waiting for an agent event")?
}

/// A binary of the workspace, built by `cargo test --workspace` next to the test executables.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: run the tests with `cargo test --workspace` so that it is built", path.display());
    }
    Ok(path)
}
