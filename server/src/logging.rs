//! Log set-up for the binaries: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON.

/// Installs the global subscriber once (default level `info`); later calls do nothing.
pub fn init(json: bool) {
    init_with_default(json, "info,quinn=warn,tract=warn")
}

/// Installs the global subscriber with `default` as the filter when `RUST_LOG` is not set.
pub fn init_with_default(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
