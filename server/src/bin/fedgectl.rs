//! `fedgectl`: the operator's command line: certificates, agents, and the local demo federation.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedge_shared::tls::{self, Identity, Role};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "fedgectl", version, about = "fedge round-management CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a federation: a CA and the server's certificate.
    Init {
        /// Directory for the federation's keys and certificates.
        #[arg(long)]
        dir: PathBuf,
        /// DNS names and IP addresses the server is reached at (repeat, or comma-separate).
        #[arg(long = "name", value_delimiter = ',', default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Validity of the server certificate in days (the CA gets twice this).
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Agents' certificates.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Operators' certificates.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Run a local federation: a server and agents on loopback, training on a bundled data set.
    Demo(fedge_server::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Issue an agent's certificate bundle (cert.pem, key.pem, ca.pem) to copy onto the device.
    Add {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// List the agents' bundles issued from this directory.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent: its certificate is listed in revoked.txt, which the server reads at every connection.
    Revoke {
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCmd {
    /// Issue an operator's certificate bundle.
    Add {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir, names, days } => {
            tls::init_federation(&dir, &names, days)?;
            println!("federation created in {} (server names: {})", dir.display(), names.join(", "));
            Ok(())
        }
        Command::Agent(AgentCmd::Add { name, dir, days }) => {
            let out = tls::issue_bundle(&dir, &name, Role::Agent, days)?;
            println!("agent bundle for {name}: {}", out.display());
            Ok(())
        }
        Command::Agent(AgentCmd::List { dir, json }) => list_agents(&dir, json),
        Command::Agent(AgentCmd::Revoke { name, dir }) => revoke(&dir, &name),
        Command::Operator(OperatorCmd::Add { name, dir, days }) => {
            let out = tls::issue_bundle(&dir, &name, Role::Operator, days)?;
            println!("operator bundle for {name}: {}", out.display());
            Ok(())
        }
        Command::Demo(args) => {
            // The demo shows its own progress; logs only for what goes wrong (RUST_LOG=info for everything).
            fedge_server::logging::init_with_default(false, "warn");
            fedge_server::demo::run(args)
        }
    }
}

fn revoked_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("revoked.txt");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn list_agents(dir: &Path, json: bool) -> anyhow::Result<()> {
    let revoked = revoked_names(dir)?;
    let mut rows = vec![];
    let agents = dir.join("agents");
    if agents.exists() {
        for entry in std::fs::read_dir(&agents).with_context(|| format!("reading {}", agents.display()))? {
            let entry = entry?;
            let info = Identity::load_bundle(&entry.path())?.info()?;
            rows.push(serde_json::json!({
                "name": info.name,
                "fingerprint": info.fingerprint.to_hex(),
                "not_after": info.not_after,
                "revoked": revoked.contains(&info.name),
            }));
        }
    }
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{:<24} {} {}",
                r["name"].as_str().unwrap_or(""),
                &r["fingerprint"].as_str().unwrap_or("")[..16],
                if r["revoked"].as_bool() == Some(true) { "REVOKED" } else { "" }
            );
        }
    }
    Ok(())
}

fn revoke(dir: &Path, name: &str) -> anyhow::Result<()> {
    let bundle = dir.join("agents").join(name);
    let info =
        Identity::load_bundle(&bundle).with_context(|| format!("no agent bundle {}", bundle.display()))?.info()?;
    let path = dir.join("revoked.txt");
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let line = format!("{} {}", info.name, info.fingerprint.to_hex());
    if !text.lines().any(|l| l == line) {
        text.push_str(&line);
        text.push('\n');
        tls::write_atomic(&path, text.as_bytes(), 0o644)?;
    }
    println!("revoked {name}; a running server refuses it from its next connection");
    Ok(())
}
