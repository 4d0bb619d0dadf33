//! Inference benchmark (run by scripts/inference-bench.sh, in release).
//!
//! `inference_bench engine DIR [ITERS]`: writes the example MLP (`mnist_2nn`) and CNN (`mnist_cnn`) as ONNX into
//! DIR together with 32 inputs and tract's logits for them (so that onnxruntime can be checked against the same
//! numbers), then times tract's compiled plans (`Predictor`, weights baked in) at batch 1 and 32: per-call
//! latency p50/p99 and examples per second. One JSON object per line.
//!
//! `inference_bench http ADDR PID SECONDS CLIENTS BATCH INPUT_LEN`: drives a running `fedge-agent serve` with
//! CLIENTS keep-alive connections sending raw f32 batches of BATCH examples, then prints request latency
//! p50/p99, throughput and the server process's peak RSS (VmHWM from /proc/PID/status).

use fedge_shared::train::{Predictor, TrainableModel, builder};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn inputs(n: usize, len: usize) -> Vec<f32> {
    (0..n * len).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0).collect()
}

fn engine(dir: &str, iters: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, onnx) in [("mlp", builder::mnist_2nn(1)), ("cnn", builder::mnist_cnn(1))] {
        let path = format!("{dir}/{name}.onnx");
        std::fs::write(&path, &onnx)?;
        let model = TrainableModel::from_onnx_bytes(&onnx)?;
        let weights = model.initial_weights();
        let il = model.input_len();
        let x32 = inputs(32, il);
        let check = Predictor::new(&model, &weights, 32)?.predict(&x32)?;
        std::fs::write(format!("{dir}/{name}.in.f32"), x32.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        std::fs::write(
            format!("{dir}/{name}.out.f32"),
            check.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )?;
        for batch in [1usize, 32] {
            let t = Instant::now();
            let p = Predictor::new(&model, &weights, batch)?;
            let compile_ms = t.elapsed().as_secs_f64() * 1e3;
            let x = inputs(batch, il);
            for _ in 0..iters / 10 + 5 {
                std::hint::black_box(p.predict(&x)?);
            }
            let n = if batch == 1 { iters } else { (iters / 8).max(20) };
            let mut times = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                std::hint::black_box(p.predict(&x)?);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let total = start.elapsed().as_secs_f64();
            times.sort_by(f64::total_cmp);
            println!(
                "{}",
                serde_json::json!({
                    "engine": "tract", "model": name, "batch": batch, "iters": n,
                    "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99),
                    "examples_per_s": (n * batch) as f64 / total, "compile_ms": compile_ms,
                })
            );
        }
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn request(&mut self, body: &[u8]) -> anyhow::Result<u16> {
        let head = format!(
            "POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\nAccept: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.s.write_all(head.as_bytes())?;
        self.s.write_all(body)?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let (head_end, len) = loop {
            let n = self.s.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>()))
                    .transpose()?
                    .unwrap_or(0);
                break (p + 4, len);
            }
        };
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let status = String::from_utf8_lossy(&self.buf[..12]).split(' ').nth(1).unwrap_or("0").parse()?;
        Ok(status)
    }
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| {
        status.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
    };
    Ok((field("VmHWM:").unwrap_or(0), field("VmRSS:").unwrap_or(0)))
}

fn http(addr: &str, pid: u32, secs: f64, clients: usize, batch: usize, input_len: usize) -> anyhow::Result<()> {
    let body: Vec<u8> = inputs(batch, input_len).iter().flat_map(|v| v.to_le_bytes()).collect();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, body) = (addr.to_string(), body.clone());
            std::thread::spawn(move || -> anyhow::Result<(Vec<f64>, usize)> {
                let mut c = Conn { s: std::net::TcpStream::connect(&addr)?, buf: vec![] };
                c.s.set_nodelay(true)?;
                let (mut times, mut failed) = (vec![], 0);
                while Instant::now() < until {
                    let t = Instant::now();
                    if c.request(&body)? != 200 {
                        failed += 1;
                    }
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok((times, failed))
            })
        })
        .collect();
    let (mut times, mut failed) = (vec![], 0);
    for t in threads {
        let (ts, f) = t.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        times.extend(ts);
        failed += f;
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let (hwm, rss) = peak_rss_kib(pid)?;
    println!(
        "{}",
        serde_json::json!({
            "engine": "fedge-agent serve (HTTP)", "batch": batch, "clients": clients, "requests": times.len(),
            "failed": failed, "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99),
            "examples_per_s": (times.len() * batch) as f64 / total, "peak_rss_mib": hwm as f64 / 1024.0,
            "rss_mib": rss as f64 / 1024.0,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("engine") => engine(arg(1).unwrap_or("bench-models"), arg(2).map_or(Ok(2000), str::parse)?),
        Some("http") => {
            let n = |i: usize, d: &str| arg(i).unwrap_or(d).parse::<f64>();
            http(
                arg(1).unwrap_or("127.0.0.1:8490"),
                arg(2).unwrap_or("0").parse()?,
                n(3, "5")?,
                n(4, "4")? as usize,
                n(5, "1")? as usize,
                n(6, "784")? as usize,
            )
        }
        _ => anyhow::bail!("usage: inference_bench engine DIR [ITERS] | http ADDR PID SECONDS CLIENTS BATCH INPUT_LEN"),
    }
}
