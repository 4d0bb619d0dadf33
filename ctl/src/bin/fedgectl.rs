//! `fedgectl`: the operator's command line: certificates and the local demo federation (offline), and a running
//! server's agents, rounds, settings, history and models over the admin protocol (QUIC, ALPN `fedge-admin/1`,
//! an operator certificate from `fedgectl operator add`). Where the server is: `--server HOST:PORT`,
//! `--server-name NAME` (defaults to HOST), `--bundle DIR`, or `FEDGE_SERVER`, `FEDGE_SERVER_NAME`, `FEDGE_BUNDLE`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fedge_ctl::{self as ctl, AdminClient, RoundCmd, Target};
use fedge_shared::tls::{self, Identity, Role};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(name = "fedgectl", version, about = "fedge round-management CLI")]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to reach a running server.
#[derive(Debug, Args)]
struct TargetArgs {
    /// The server's QUIC address.
    #[arg(long, global = true, env = "FEDGE_SERVER", default_value = "localhost:4433")]
    server: String,
    /// The name in the server's certificate (default: the host of --server).
    #[arg(long, global = true, env = "FEDGE_SERVER_NAME")]
    server_name: Option<String>,
    /// An operator bundle directory (cert.pem, key.pem, ca.pem) from `fedgectl operator add`.
    #[arg(long, global = true, env = "FEDGE_BUNDLE")]
    bundle: Option<PathBuf>,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let bundle = self.bundle.clone().context(
            "this command talks to a running server: give an operator bundle with --bundle DIR or FEDGE_BUNDLE",
        )?;
        Ok(Target { server: self.server.clone(), server_name: self.server_name.clone(), bundle })
    }
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
    Demo(Box<fedge_ctl::demo::DemoArgs>),
    /// The running server's state: version, uptime, agents, round, phase, deadline.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start, pause, resume or abort rounds on the running server.
    #[command(subcommand)]
    Round(RoundArgs),
    /// Show or change the coordinator's settings on the running server (kept across restarts).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Per round: participants, drop-outs, mean train loss, test accuracy, duration, bytes.
    History {
        /// Same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// How to print the history: a table, JSON, or CSV for spreadsheets.
        #[arg(long, value_enum, default_value_t = HistoryFormat::Table)]
        format: HistoryFormat,
        /// Also draw test accuracy and train loss against round into FILE.png or FILE.svg.
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
        /// Also write the per-round metrics as a TensorBoard event file into DIR (`tensorboard --logdir DIR`).
        #[arg(long, value_name = "DIR")]
        tensorboard: Option<PathBuf>,
    },
    /// The stored model versions.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Live progress of the rounds (Ctrl-C to stop).
    Watch {
        /// Stop after this many rounds have ended.
        #[arg(long)]
        rounds: Option<u64>,
        /// Print one JSON progress snapshot per line instead of bars.
        #[arg(long)]
        json: bool,
    },
}

/// `history --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HistoryFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum RoundArgs {
    /// Run rounds: COUNT more (default: until stopped), pausing when the test accuracy reaches a target.
    Start {
        /// Rounds to run (default: until stopped).
        #[arg(long)]
        count: Option<u64>,
        /// Pause once a round's global test accuracy reaches this (0 to 1).
        #[arg(long)]
        target_accuracy: Option<f32>,
        /// Fine-tune part of the model: train only the weights whose names match PATTERN (a glob, e.g. 'head.*';
        /// repeatable). Sets `hyper.trainable` (kept across restarts; `config set hyper.trainable '[]'` trains the
        /// whole model again). A pattern that matches no weight is refused and no round starts.
        #[arg(long = "train-only", value_name = "PATTERN")]
        train_only: Vec<String>,
    },
    /// Start no new round (the one in flight finishes).
    Pause,
    /// Start rounds again.
    Resume,
    /// Abort the round in flight.
    Abort,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Every setting and its value.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Set KEY (e.g. min_agents, fraction, hyper.learning_rate, strategy.kind) to VALUE (TOML: 3, 0.1, fedadam).
    Set { key: String, value: String },
}

#[derive(Debug, Subcommand)]
enum ModelCmd {
    /// Stored versions with their test accuracy.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write a standalone ONNX (the version's weights baked in as initializers).
    Export {
        /// The version (default: the newest).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
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
    /// List agents: from the running server's store (first/last seen, connected, revoked), or with --dir the
    /// bundles issued from that directory.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent on the running server (its connection is closed and it is refused from then on), or with
    /// --dir list its certificate in DIR/revoked.txt, which the server reads at every connection.
    Revoke {
        name: String,
        #[arg(long)]
        dir: Option<PathBuf>,
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
        Command::Agent(AgentCmd::List { dir: Some(dir), json }) => list_agents(&dir, json),
        Command::Agent(AgentCmd::Revoke { name, dir: Some(dir) }) => revoke(&dir, &name),
        Command::Operator(OperatorCmd::Add { name, dir, days }) => {
            let out = tls::issue_bundle(&dir, &name, Role::Operator, days)?;
            println!("operator bundle for {name}: {}", out.display());
            Ok(())
        }
        Command::Demo(args) => {
            // The demo shows its own progress; logs only for what goes wrong (RUST_LOG=info for everything).
            fedge_server::logging::init_with_default(false, "warn");
            fedge_ctl::demo::run(*args)
        }
        online => {
            let target = cli.target.target()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = AdminClient::connect(&target).await?;
                let result = run_online(&client, online).await;
                client.close().await;
                result
            })
        }
    }
}

fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints what a reading command got: JSON with `--json`, otherwise the human rendering.
fn show<T: serde::Serialize + ?Sized>(v: &T, json: bool, render: impl Fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        print_json(v)
    } else {
        print!("{}", render(v));
        Ok(())
    }
}

/// Commands against a running server.
async fn run_online(client: &AdminClient, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { json } => {
            let s = client.status().await?;
            show(&s, json, ctl::render::status)
        }
        Command::Agent(AgentCmd::List { json, .. }) => {
            let a = client.agents().await?;
            show(a.as_slice(), json, ctl::render::agents)
        }
        Command::Agent(AgentCmd::Revoke { name, .. }) => {
            println!("{}", client.revoke(&name).await?);
            Ok(())
        }
        Command::Round(r) => {
            if let RoundArgs::Start { train_only, .. } = &r
                && !train_only.is_empty()
            {
                let patterns = toml::Value::Array(train_only.iter().cloned().map(toml::Value::String).collect());
                println!("{}", client.config_set("hyper.trainable", &patterns.to_string()).await?);
            }
            let cmd = match r {
                RoundArgs::Start { count, target_accuracy, .. } => RoundCmd::Start { count, target_accuracy },
                RoundArgs::Pause => RoundCmd::Pause,
                RoundArgs::Resume => RoundCmd::Resume,
                RoundArgs::Abort => RoundCmd::Abort,
            };
            {
                println!("{}", client.round(cmd).await?);
                Ok(())
            }
        }
        Command::Config(ConfigCmd::Show { json }) => {
            let c = client.config_show().await?;
            show(c.as_slice(), json, ctl::render::config)
        }
        Command::Config(ConfigCmd::Set { key, value }) => {
            println!("{}", client.config_set(&key, &value).await?);
            Ok(())
        }
        Command::History { json, format, plot, tensorboard } => {
            let h = client.history().await?;
            if let Some(path) = &plot {
                ctl::plot::plot_history(&h, path)?;
                eprintln!("plot written to {}", path.display());
            }
            if let Some(dir) = &tensorboard {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                let file = ctl::tensorboard::write_history(&h, dir, now, &ctl::tensorboard::host_name())?;
                eprintln!("TensorBoard events written to {}", file.display());
            }
            match (json, format) {
                (true, _) | (false, HistoryFormat::Json) => print_json(h.as_slice()),
                (false, HistoryFormat::Table) => show(h.as_slice(), false, ctl::render::history),
                (false, HistoryFormat::Csv) => {
                    use std::io::Write;
                    std::io::stdout().write_all(&ctl::csv_history::history_csv(&h)?)?;
                    Ok(())
                }
            }
        }
        Command::Model(ModelCmd::List { json }) => {
            let m = client.models().await?;
            show(m.as_slice(), json, ctl::render::models)
        }
        Command::Model(ModelCmd::Export { version, out }) => {
            let (model, bytes) = client.export(version).await?;
            tls::write_atomic(&out, &bytes, 0o644)?;
            println!(
                "model version {} ({} parameters, test accuracy {}) written to {} ({})",
                model.version,
                model.params,
                model.test_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
                out.display(),
                ctl::render::bytes(bytes.len() as u64)
            );
            Ok(())
        }
        Command::Watch { rounds, json } => {
            let mut view = ctl::progress::WatchView::new(json);
            let mut seen = 0u64;
            let watching = client.watch(|p| {
                seen += p.finished.len() as u64;
                if json {
                    if let Ok(line) = serde_json::to_string(p) {
                        println!("{line}");
                    }
                } else {
                    view.update(p);
                }
                rounds.is_none_or(|n| seen < n)
            });
            tokio::select! {
                r = watching => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
            view.finish();
            Ok(())
        }
        Command::Init { .. } | Command::Operator(_) | Command::Demo(_) | Command::Agent(AgentCmd::Add { .. }) => {
            anyhow::bail!("not a server command")
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
    // The same list signed with the CA key, which the server relays to agents so that peers refuse the certificate
    // too, whatever the server does.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let signed = fedge_shared::revocation_list::RevocationList::sign_file(dir, &text, now)?;
    let sig_path = dir.join(fedge_shared::revocation_list::FILE);
    tls::write_atomic(&sig_path, &signed.to_bytes()?, 0o644)?;
    println!(
        "revoked {name}; a running server refuses it from its next connection (copy {} and {} to the server's \
         tls.revoked directory; agents check their peers against the signed list)",
        path.display(),
        sig_path.display()
    );
    Ok(())
}
