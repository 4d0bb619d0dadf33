//! Network faults between real processes in network namespaces that this test creates (a bridge in the server's
//! namespace, one veth pair per agent namespace, `tc netem` on both ends): 10% loss with 100 ms of delay each way
//! (200 ms round trip), a partition of two of five agents that heals, and an agent whose address changes in the
//! middle of a round (QUIC connection migration). It only ever uses addresses inside its own namespaces
//! (10.77.0.0/24 exists nowhere else).
//!
//! Gated: it runs with `FEDGE_NETNS=1` (see `scripts/netns-faults.sh`) and needs root; without them it says why
//! and passes as skipped.
//!
//! Specification: rounds complete at 10% loss and 200 ms; during the partition rounds complete or abort cleanly and
//! the partitioned agents catch up after it heals; the moved agent keeps taking part; the server never crashes.

use fedge_shared::tls::{self, Role};
use fedge_system_tests::workspace_bin;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const AGENTS: usize = 5;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The namespaces and processes of one run; everything is removed on drop.
struct Lab {
    tag: String,
    children: Vec<Child>,
}

impl Lab {
    fn srv(&self) -> String {
        format!("fnf{}s", self.tag)
    }
    fn agent_ns(&self, i: usize) -> String {
        format!("fnf{}a{i}", self.tag)
    }
    fn agent_if(&self, i: usize) -> String {
        format!("fnf{}v{i}", self.tag)
    }
    fn port_if(&self, i: usize) -> String {
        format!("fnf{}p{i}", self.tag)
    }

    fn create() -> Result<Lab, String> {
        let lab = Lab { tag: format!("{}", std::process::id() % 100_000), children: vec![] };
        let srv = lab.srv();
        run(&["ip", "netns", "add", &srv])?;
        run(&["ip", "-n", &srv, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &srv, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &srv, "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        run(&["ip", "-n", &srv, "link", "set", "br0", "up"])?;
        for i in 0..AGENTS {
            let (ns, v, p) = (lab.agent_ns(i), lab.agent_if(i), lab.port_if(i));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "link", "add", &v, "netns", &ns, "type", "veth", "peer", "name", &p, "netns", &srv])?;
            run(&["ip", "-n", &srv, "link", "set", &p, "master", "br0"])?;
            run(&["ip", "-n", &srv, "link", "set", &p, "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("10.77.0.{}/24", 10 + i), "dev", &v])?;
            run(&["ip", "-n", &ns, "link", "set", &v, "up"])?;
        }
        Ok(lab)
    }

    /// Sets the netem discipline of agent `i`'s link, both directions.
    fn netem(&self, i: usize, spec: &[&str]) -> Result<(), String> {
        for (ns, dev) in [(self.agent_ns(i), self.agent_if(i)), (self.srv(), self.port_if(i))] {
            let mut args = vec!["ip", "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", &dev, "root", "netem"];
            args.extend_from_slice(spec);
            run(&args)?;
        }
        Ok(())
    }

    fn spawn_in(
        &mut self,
        ns: &str,
        program: &Path,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<usize, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..AGENTS {
            let _ = run(&["ip", "netns", "del", &self.agent_ns(i)]);
        }
        let _ = run(&["ip", "netns", "del", &self.srv()]);
    }
}

fn server_config(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let text = format!(
        r#"
listen = "10.77.0.1:4433"
data_dir = "{db}"
idle_timeout_ms = 5000

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"

[model]
onnx = "{model}"

[coordinator]
min_agents = 3
min_available = 3
max_agents = {AGENTS}
fraction = 1.0
overselect = 1.0
round_timeout_ms = 8000
retry_backoff_ms = 300

[coordinator.hyper]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"
"#,
        db = dir.join("db").display(),
        pki = pki.display(),
        model = dir.join("model.onnx").display(),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Newest global version each agent has received, fed by the agents' JSON event lines.
struct Versions {
    rx: mpsc::Receiver<(usize, u64)>,
    newest: [u64; AGENTS],
}

impl Versions {
    fn drain(&mut self) {
        while let Ok((i, v)) = self.rx.try_recv() {
            self.newest[i] = self.newest[i].max(v);
        }
    }
    /// Waits until `pick` holds, for at most `limit`.
    fn wait(&mut self, limit: Duration, what: &str, pick: impl Fn(&[u64; AGENTS]) -> bool) -> Result<(), String> {
        let end = Instant::now() + limit;
        loop {
            self.drain();
            if pick(&self.newest) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!("timed out waiting for {what}; newest versions {:?}", self.newest));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(needle).count()
}

#[test]
fn rounds_survive_loss_delay_a_healing_partition_and_an_agent_changing_address() {
    if std::env::var("FEDGE_NETNS").ok().as_deref() != Some("1") {
        eprintln!("SKIPPED: network-namespace faults run with FEDGE_NETNS=1 (scripts/netns-faults.sh), as root");
        return;
    }
    let mut lab = match Lab::create() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED: this machine does not allow network namespaces here ({e})");
            return;
        }
    };
    if let Err(e) = lab.netem(0, &["delay", "1ms"]) {
        eprintln!(
            "SKIPPED: this kernel has no netem queueing discipline ({e}); tests/faults_network.rs covers the same faults with a user-space proxy"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let result = scenario(&mut lab, dir.path(), &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let committed = text.matches("round committed").count();
    let aborted = text.matches("round aborted").count();
    eprintln!("server: {committed} round-committed log lines, {aborted} round-aborted lines");
    if let Err(e) = result {
        eprintln!("--- server log ---\n{text}");
        panic!("{e}");
    }
    assert!(!text.contains("panicked"), "the server never panics");
}

fn scenario(lab: &mut Lab, dir: &Path, log: &Path) -> Result<(), String> {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into(), "10.77.0.1".into()], 30).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[32, 16, 4], 2))
        .map_err(|e| e.to_string())?;
    let config = server_config(dir);
    let server_bin = workspace_bin("fedge-server").map_err(|e| e.to_string())?;
    let bench = workspace_bin("fedge-bench").map_err(|e| e.to_string())?;

    // 10% loss and 100 ms each way on every link from the start: the handshakes themselves go through it.
    for i in 0..AGENTS {
        lab.netem(i, &["delay", "100ms", "loss", "10%"])?;
    }
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let srv = lab.srv();
    let server = lab.spawn_in(
        &srv,
        &server_bin,
        &["--config", &config.display().to_string()],
        Stdio::null(),
        Stdio::from(log_file),
    )?;

    let (tx, rx) = mpsc::channel();
    for i in 0..AGENTS {
        let bundle = tls::issue_bundle(&pki, &format!("netns-{i}"), Role::Agent, 30).map_err(|e| e.to_string())?;
        let ns = lab.agent_ns(i);
        let idx = lab.spawn_in(
            &ns,
            &bench,
            &[
                "agent",
                "--bundle",
                &bundle.display().to_string(),
                "--server",
                "10.77.0.1:4433",
                "--seed",
                &(i + 1).to_string(),
                "--examples",
                "50",
                "--scale",
                "0.01",
            ],
            Stdio::piped(),
            Stdio::null(),
        )?;
        let stdout = lab.children[idx].stdout.take().ok_or("no agent stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["event"] == "model"
                    && let Some(version) = v["version"].as_u64()
                {
                    let _ = tx.send((i, version));
                }
            }
        });
    }
    let mut versions = Versions { rx, newest: [0; AGENTS] };

    // Phase 1: 10% loss, 200 ms round trip: three rounds complete with every agent receiving their models.
    let t = Instant::now();
    versions.wait(Duration::from_secs(120), "3 versions at 10% loss", |n| n.iter().all(|v| *v >= 3))?;
    eprintln!("phase 1: 3 rounds at 10% loss + 200 ms RTT in {:.1}s", t.elapsed().as_secs_f64());

    // Phase 2: agents 3 and 4 are cut off; the other three go on; after the partition heals, 3 and 4 catch up.
    versions.drain();
    let before = versions.newest[0];
    for i in [3, 4] {
        lab.netem(i, &["loss", "100%"])?;
    }
    let t = Instant::now();
    versions.wait(Duration::from_secs(90), "2 rounds during the partition", |n| n[0] >= before + 2)?;
    eprintln!("phase 2: 2 rounds with agents 3, 4 partitioned in {:.1}s", t.elapsed().as_secs_f64());
    for i in [3, 4] {
        lab.netem(i, &["delay", "100ms", "loss", "10%"])?;
    }
    versions.drain();
    let target = versions.newest[0] + 1;
    let t = Instant::now();
    versions.wait(Duration::from_secs(120), "the healed agents to catch up", |n| n[3] >= target && n[4] >= target)?;
    eprintln!("phase 2: healed agents caught up to version {target} in {:.1}s", t.elapsed().as_secs_f64());

    // Phase 3: agent 0's address changes just after a round starts (it received a new model).
    versions.drain();
    let v0 = versions.newest[0];
    versions.wait(Duration::from_secs(60), "a new round", |n| n[0] > v0)?;
    std::thread::sleep(Duration::from_millis(150));
    let joined_before = count(log, "agent joined agent=netns-0");
    let (ns, dev) = (lab.agent_ns(0), lab.agent_if(0));
    run(&["ip", "-n", &ns, "addr", "add", "10.77.0.100/24", "dev", &dev])?;
    run(&["ip", "-n", &ns, "addr", "del", "10.77.0.10/24", "dev", &dev])?;
    versions.drain();
    let moved_at = versions.newest[0];
    let t = Instant::now();
    versions.wait(Duration::from_secs(120), "the moved agent to take part again", |n| n[0] >= moved_at + 2)?;
    let rejoins = count(log, "agent joined agent=netns-0") - joined_before;
    eprintln!(
        "phase 3: agent 0 moved from 10.77.0.10 to 10.77.0.100; 2 more versions in {:.1}s; reconnects: {rejoins} \
         (0 means QUIC migrated the connection)",
        t.elapsed().as_secs_f64()
    );

    if let Ok(Some(status)) = lab.children[server].try_wait() {
        return Err(format!("the server exited: {status}"));
    }
    Ok(())
}
