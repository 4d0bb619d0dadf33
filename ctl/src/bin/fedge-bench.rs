//! `fedge-bench`: the round-level benchmark. Starts a real `fedge-server` process and N agents (separate processes,
//! or tasks in this process with `--in-process`) on loopback QUIC with mutual TLS, a synthetic MLP of about P
//! parameters and a trivial local update (seeded noise, so only the framework's own cost is measured), runs R
//! rounds, checks that every new global model is exactly the expected example-weighted mean, and prints one JSON
//! line of figures. Exits non-zero when anything is wrong.
//!
//! It only ever talks to 127.0.0.1.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fedge_agent::client::{Agent, AgentEvent};
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_ctl::demo::agent_settings;
use fedge_server::coordinator::AggregationMode;
use fedge_server::store::Store;
use fedge_shared::tls::{self, Role};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser)]
#[command(name = "fedge-bench", version, about = "fedge round-level benchmark")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Agents, all connected for the whole run.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Agents selected for each round, out of the connected `--agents` (default: all of them). With a cohort
    /// smaller than the agents, bytes per agent are not reported (an agent's traffic then spans the rounds it sat
    /// out).
    #[arg(long)]
    cohort: Option<usize>,
    /// Model parameters (a synthetic MLP of about this size).
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Secure aggregation on or off.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    secagg: OnOff,
    /// Run the agents as tasks in this process instead of one process each.
    #[arg(long)]
    in_process: bool,
    /// How plain rounds' updates travel: int8 (the default) or f32. The check of the aggregate allows int8's
    /// rounding (at most a block's largest magnitude / 127 a coordinate).
    #[arg(long, default_value = "int8")]
    upload: fedge_shared::delta_encoding::DeltaEncoding,
    /// Amplitude of the agents' noise updates.
    #[arg(long, default_value_t = 0.01)]
    scale: f32,
    /// How new versions reach the agents (the server's `download`): int8 differences (the default) or f32, whole.
    #[arg(long, default_value = "int8")]
    download: fedge_shared::delta_encoding::DeltaEncoding,
    /// The server's `max_concurrent_downloads` (its default when absent).
    #[arg(long)]
    max_downloads: Option<usize>,
    /// Fraction of the cohort that drops out of each round after the key exchange (each agent's learner fails a
    /// seeded draw of its rounds and the agent abandons them), so secure rounds recover their masks. The check of the
    /// committed models counts only the agents each round recorded. Bytes per agent are not reported with drop-outs.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    dropout: f64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        Ok(f) => Err(format!("{f} is not a fraction in [0, 1)")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// (internal) One benchmark agent process: prints its events as JSON lines on stdout.
    Agent {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        server: std::net::SocketAddr,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        examples: u64,
        #[arg(long)]
        scale: f32,
        /// Take part in plain rounds (`--secagg off`); otherwise the agent requires secure aggregation.
        #[arg(long)]
        allow_plain: bool,
        #[arg(long, default_value_t = 0.0)]
        dropout: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // As fedge-server and fedge-agent do (this process runs the bench's agents).
    fedge_shared::alloc::return_large_blocks_to_the_os();
    fedge_server::logging::init_with_default(false, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.mode {
        Some(Mode::Agent { bundle, server, seed, examples, scale, allow_plain, dropout }) => {
            runtime.block_on(agent_process(&bundle, server, seed, examples, scale, allow_plain, dropout))
        }
        None => runtime.block_on(run(cli.run)),
    }
}

fn examples_of(i: usize) -> u64 {
    100 + 37 * i as u64
}

async fn agent_process(
    bundle: &Path,
    server: std::net::SocketAddr,
    seed: u64,
    examples: u64,
    scale: f32,
    allow_plain: bool,
    dropout: f64,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_stop, stop_rx) = watch::channel(false);
    let mut settings = agent_settings(bundle, server)?;
    settings.require_secure_aggregation = !allow_plain;
    let agent = Agent::new(
        settings,
        ModelState::in_memory(),
        Box::new(NoiseLearner::new(examples, seed, scale).with_dropout(dropout)),
    )
    .with_events(tx);
    let task = tokio::spawn(agent.run(stop_rx));
    let started = Instant::now();
    while let Some(e) = rx.recv().await {
        let line = event_json(&e, started);
        if let Some(line) = line {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                break; // the bench went away
            }
        }
    }
    task.abort();
    Ok(())
}

fn event_json(e: &AgentEvent, started: Instant) -> Option<serde_json::Value> {
    let t = started.elapsed().as_secs_f64();
    match e {
        AgentEvent::ModelReceived { version } => {
            Some(serde_json::json!({"event": "model", "version": version, "t": t}))
        }
        AgentEvent::Traffic { sent, received, sent_packets, sent_acks, lost_bytes } => Some(serde_json::json!({
            "event": "traffic", "sent": sent, "received": received, "sent_packets": sent_packets,
            "sent_acks": sent_acks, "lost_bytes": lost_bytes, "t": t
        })),
        AgentEvent::Refused { reason } => Some(serde_json::json!({"event": "refused", "reason": reason})),
        _ => None,
    }
}

/// One agent connection's traffic counters (cumulative).
#[derive(Debug, Clone, Copy)]
struct Traffic {
    sent: u64,
    received: u64,
    sent_packets: u64,
    sent_acks: u64,
    lost_bytes: u64,
}

/// An agent's event as the bench sees it, from whichever kind of agent.
#[derive(Debug)]
enum Seen {
    Model { version: u64, at: Instant },
    Traffic(Traffic),
    Refused(String),
}

fn parse_line(line: &str) -> Option<Seen> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    match v["event"].as_str()? {
        "model" => Some(Seen::Model { version: v["version"].as_u64()?, at: Instant::now() }),
        "traffic" => Some(Seen::Traffic(Traffic {
            sent: v["sent"].as_u64()?,
            received: v["received"].as_u64()?,
            sent_packets: v["sent_packets"].as_u64()?,
            sent_acks: v["sent_acks"].as_u64()?,
            lost_bytes: v["lost_bytes"].as_u64()?,
        })),
        "refused" => Some(Seen::Refused(v["reason"].as_str().unwrap_or("").to_string())),
        _ => None,
    }
}

fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found next to fedge-bench: build it (cargo build --release -p fedge-server -p fedge-ctl --bins)",
            path.display()
        );
    }
    Ok(path)
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn self_peak_rss_kb() -> Option<u64> {
    proc_status_kb(std::process::id(), "VmHWM:")
}

struct Killed(Vec<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.rounds == 0 || args.params < 4 {
        bail!("--agents and --rounds must be at least 1 and --params at least 4");
    }
    let cohort = args.cohort.unwrap_or(args.agents);
    if cohort == 0 || cohort > args.agents {
        bail!("--cohort must be between 1 and --agents");
    }
    // Bytes per agent per round are read between an agent's consecutive round ends: only meaningful when every
    // agent takes part in every round (no smaller cohort, no drop-outs).
    let whole_cohort = cohort == args.agents && args.dropout == 0.0;
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    tls::init_federation(&pki, &["localhost".into(), "127.0.0.1".into()], 30)?;
    let onnx = fedge_shared::train::builder::mlp_with_params(args.params, 1);
    std::fs::write(dir.path().join("model.onnx"), &onnx)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let secagg = args.secagg == OnOff::On;
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "{db}"
rounds = {rounds}
autostart = true
download = "{download}"
{downloads}
[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"
[model]
onnx = "{model}"
[secagg]
enabled = {secagg}
[coordinator]
min_agents = {min_agents}
min_available = {n}
max_agents = {cohort}
fraction = {fraction}
overselect = 1.0
seed = 1
round_timeout_ms = 600000
retry_backoff_ms = 500
[coordinator.hyper]
epochs = 1
batch_size = 32
learning_rate = 0.1
optimizer = "sgd"
seed = 5
upload = "{upload}"
"#,
        db = dir.path().join("db").display(),
        pki = pki.display(),
        model = dir.path().join("model.onnx").display(),
        rounds = args.rounds,
        n = args.agents,
        cohort = cohort,
        fraction = cohort as f64 / args.agents as f64,
        // With drop-outs a round completes with the agents left: twice the expected drop-outs may be missing.
        min_agents = ((cohort as f64 * (1.0 - 2.0 * args.dropout)).floor() as usize).clamp(2.min(cohort), cohort),
        upload = encoding_name(args.upload),
        download = encoding_name(args.download),
        downloads = args.max_downloads.map(|d| format!("max_concurrent_downloads = {d}")).unwrap_or_default(),
    );
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, config)?;
    let server_log = std::fs::File::create(dir.path().join("server.log"))?;
    let server = Command::new(sibling_bin("fedge-server")?)
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(server_log)
        .spawn()
        .context("starting fedge-server")?;
    let server_pid = server.id();
    let mut children = Killed(vec![server]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, Seen)>();
    let (_stop, stop_rx) = watch::channel(false);
    let mut agent_pids = vec![];
    for i in 0..args.agents {
        let bundle = tls::issue_bundle(&pki, &format!("bench-{i:04}"), Role::Agent, 30)?;
        let seed = 1000 + i as u64;
        if args.in_process {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let learner = Box::new(NoiseLearner::new(examples_of(i), seed, args.scale).with_dropout(args.dropout));
            let mut settings = agent_settings(&bundle, addr)?;
            settings.require_secure_aggregation = secagg;
            let agent = Agent::new(settings, ModelState::in_memory(), learner).with_events(tx);
            tokio::spawn(agent.run(stop_rx.clone()));
            let seen_tx = seen_tx.clone();
            let started = Instant::now();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if let Some(s) = event_json(&e, started).and_then(|v| parse_line(&v.to_string())) {
                        let _ = seen_tx.send((i, s));
                    }
                }
            });
        } else {
            let mut child = Command::new(std::env::current_exe()?)
                .args(["agent", "--bundle"])
                .arg(&bundle)
                .args(["--server", &addr.to_string(), "--seed", &seed.to_string()])
                .args(["--examples", &examples_of(i).to_string(), "--scale", &args.scale.to_string()])
                .args(["--dropout", &args.dropout.to_string()])
                .args(if secagg { &[][..] } else { &["--allow-plain"][..] })
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            agent_pids.push(child.id());
            let stdout = child.stdout.take().context("agent stdout")?;
            children.0.push(child);
            let seen_tx = seen_tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(s) = parse_line(&line) {
                        let _ = seen_tx.send((i, s));
                    }
                }
            });
        }
    }

    // Round r ends when the first agent holds version r.
    let mut first_seen: Vec<Option<Instant>> = vec![None; args.rounds as usize + 1];
    let mut traffic: Vec<Vec<Traffic>> = vec![vec![]; args.agents];
    let mut peak_server_kb = 0u64;
    let mut peak_agent_kb = 0u64;
    // A run fails when no new version arrives for this long: connecting many agents takes a while (a TLS handshake
    // each), and so does a large cohort's round on a 2-core machine.
    let patience = Duration::from_secs(120 + args.agents as u64 / 20);
    let mut deadline = Instant::now() + patience;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let done = first_seen.iter().all(|s| s.is_some())
            && (!whole_cohort || traffic.iter().all(|t| t.len() as u64 >= args.rounds));
        if done {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            bail!("timed out; rounds seen {first_seen:?}\nserver log:\n{log}");
        }
        tokio::select! {
            m = seen_rx.recv() => match m {
                Some((_, Seen::Model { version, at })) => {
                    if let Some(slot) = first_seen.get_mut(version as usize) && slot.is_none() {
                        *slot = Some(at);
                        deadline = Instant::now() + patience;
                    }
                }
                Some((i, Seen::Traffic(t))) => traffic[i].push(t),
                Some((i, Seen::Refused(reason))) => bail!("agent {i} refused: {reason}"),
                None => bail!("agents stopped"),
            },
            _ = tick.tick() => {
                peak_server_kb = peak_server_kb.max(proc_status_kb(server_pid, "VmRSS:").unwrap_or(0));
                for pid in &agent_pids {
                    peak_agent_kb = peak_agent_kb.max(proc_status_kb(*pid, "VmRSS:").unwrap_or(0));
                }
            }
        }
    }
    peak_server_kb = peak_server_kb.max(proc_status_kb(server_pid, "VmHWM:").unwrap_or(0));
    for pid in &agent_pids {
        peak_agent_kb = peak_agent_kb.max(proc_status_kb(*pid, "VmHWM:").unwrap_or(0));
    }
    let server_cpu = proc_cpu_s(server_pid).unwrap_or(f64::NAN);
    drop(children); // SIGKILL: the store was flushed at every commit

    let mut rounds: Vec<f64> =
        first_seen.windows(2).filter_map(|w| Some(w[1]?.duration_since(w[0]?).as_secs_f64())).collect();
    rounds.sort_by(f64::total_cmp);
    let pct = |p: f64| rounds[((rounds.len() - 1) as f64 * p).round() as usize];
    let per_round = |f: fn(&Traffic) -> u64| -> f64 {
        let per_agent: Vec<f64> = traffic
            .iter()
            .filter(|t| t.len() >= 2)
            .map(|t| (f(&t[t.len() - 1]) - f(&t[0])) as f64 / (t.len() - 1) as f64)
            .collect();
        per_agent.iter().sum::<f64>() / per_agent.len().max(1) as f64
    };

    // Check every committed model whose parent's weights the store still keeps (the newest `keep_weights`
    // versions) against the expected example-weighted mean of the known noise updates.
    let store = Store::open(dir.path().join("db"))?;
    let mut max_err = 0f64;
    // The most int8 rounding can move a coordinate of the mean: the largest step of any agent's blocks; in secure
    // rounds, two quantization steps (under one per agent in the weighted sum, about one in the mean).
    let mut rounding = 0f64;
    // With 8-bit differences the server commits within half a step of the aggregate: half the largest change / 127.
    let mut settling = 0f64;
    let (mut committed, mut checked) = (0u64, 0u64);
    // Coordinator time per round and per secure phase (milliseconds), for the medians printed below.
    let mut phases: [Vec<u64>; 5] = Default::default();
    for r in store.rounds()? {
        let Some(v) = r.new_version else { continue };
        committed += 1;
        phases[0].push(r.metrics.duration_ms);
        if let Some(m) = &r.metrics.secagg {
            for (list, ms) in phases[1..].iter_mut().zip([m.advertise_ms, m.share_ms, m.masked_ms, m.unmask_ms]) {
                list.push(ms);
            }
        }
        if !store.has_weights(v - 1)? {
            continue;
        }
        checked += 1;
        let before = store.weights(v - 1)?;
        let after = store.weights(v)?;
        let seed = fedge_server::service::round_seed(&r.plan);
        let secure = match &r.plan.aggregation {
            AggregationMode::Secure(plan) => Some(&plan.params),
            // The bench runs no buffered rounds.
            AggregationMode::Plain | AggregationMode::Held | AggregationMode::HeldGroup(..) => None,
        };
        if let Some(params) = secure {
            rounding = rounding.max(2.0 * fedge_shared::secagg::quant::quantum(params) + 1e-4);
        }
        let mut sum = vec![0f64; before.len()];
        let mut total = 0f64;
        for rep in &r.reported {
            let i: usize = rep.agent.trim_start_matches("bench-").parse()?;
            let delta = NoiseLearner::delta_for(1000 + i as u64, seed, before.len(), args.scale);
            // A secure round's reports carry no example count (it is under the masks): the bench knows each agent's,
            // and the round weighs it up to the plan's cap.
            let w = match secure {
                Some(params) => examples_of(i).min(params.weight_cap) as f64,
                None => {
                    rounding = rounding.max(delta.iter().fold(0f64, |m, d| m.max(f64::from(d.abs()))) / 127.0);
                    rep.examples as f64
                }
            };
            total += w;
            for (s, d) in sum.iter_mut().zip(&delta) {
                *s += w * *d as f64;
            }
        }
        if args.download == fedge_shared::delta_encoding::DeltaEncoding::Int8 {
            let change = before.iter().zip(&after).fold(0f64, |m, (b, a)| m.max(f64::from((a - b).abs())));
            settling = settling.max(change / 127.0 / 2.0 * 1.01);
        }
        for ((b, a), s) in before.iter().zip(&after).zip(&sum) {
            let expected = *b as f64 + s / total;
            max_err = max_err.max((expected - *a as f64).abs());
        }
    }
    let median_ms = |list: &mut Vec<u64>| -> Option<u64> {
        list.sort_unstable();
        list.get(list.len() / 2).copied()
    };
    let [duration, advertise, share, masked, unmask] = &mut phases;
    let tolerance = settling
        + match (secagg, args.upload) {
            (true, _) => rounding,
            (false, fedge_shared::delta_encoding::DeltaEncoding::Int8) => rounding * 1.0001 + 1e-6,
            (false, fedge_shared::delta_encoding::DeltaEncoding::F32) => 1e-6,
        };
    let upload_name = match (secagg, args.upload) {
        (true, _) => "masked",
        (false, fedge_shared::delta_encoding::DeltaEncoding::Int8) => "int8",
        (false, fedge_shared::delta_encoding::DeltaEncoding::F32) => "f32",
    };
    let out = serde_json::json!({
        "agents": args.agents,
        "cohort": cohort,
        "dropout": args.dropout,
        "params": store.latest()?.map(|m| m.num_params).unwrap_or(0),
        "rounds": args.rounds,
        "secagg": secagg,
        "upload": upload_name,
        "download": encoding_name(args.download),
        "in_process": args.in_process,
        "round_median_s": pct(0.5),
        "round_p95_s": pct(0.95),
        "coordinator_round_median_ms": median_ms(duration),
        "secagg_phase_median_ms": secagg.then(|| serde_json::json!({
            "advertise": median_ms(advertise),
            "share": median_ms(share),
            "masked": median_ms(masked),
            "unmask": median_ms(unmask),
        })),
        "server_peak_rss_mb": peak_server_kb as f64 / 1024.0,
        "agent_peak_rss_mb": if args.in_process {
            self_peak_rss_kb().unwrap_or(0) as f64 / 1024.0 / args.agents as f64
        } else {
            peak_agent_kb as f64 / 1024.0
        },
        "bytes_up_per_agent": whole_cohort.then(|| per_round(|t| t.sent)),
        "bytes_down_per_agent": whole_cohort.then(|| per_round(|t| t.received)),
        "up_packets_per_agent": whole_cohort.then(|| per_round(|t| t.sent_packets)),
        "up_acks_per_agent": whole_cohort.then(|| per_round(|t| t.sent_acks)),
        "up_lost_bytes_per_agent": whole_cohort.then(|| per_round(|t| t.lost_bytes)),
        "server_cpu_s": server_cpu,
        "max_abs_error": max_err,
        "max_abs_error_allowed": tolerance,
        "versions_checked": checked,
    });
    println!("{out}");
    if committed > 0 && checked == 0 {
        bail!("no committed version could be checked: the store kept no parent's weights");
    }
    if max_err > tolerance {
        bail!("the aggregate is wrong: max abs error {max_err} > {tolerance}");
    }
    Ok(())
}

fn encoding_name(e: fedge_shared::delta_encoding::DeltaEncoding) -> &'static str {
    match e {
        fedge_shared::delta_encoding::DeltaEncoding::Int8 => "int8",
        fedge_shared::delta_encoding::DeltaEncoding::F32 => "f32",
    }
}
