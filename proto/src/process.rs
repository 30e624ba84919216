//! Process plumbing shared by the devctl binaries: logging set-up and the
//! shutdown signal.

/// Crates whose debug output carries request bodies (a container's
/// environment, certificates on the wire): held at `info` unless `RUST_LOG`
/// names them itself, so `RUST_LOG=debug` never writes secrets to a log.
const QUIET_TARGETS: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "h2",
    "tonic",
    "rustls",
    "async_nats",
    "tower",
];

/// Crates that log every connection and internal retry at `info`/`warn`
/// (neo4rs: a line per pooled Bolt connection, one per retry while the
/// graph server is down, and its debug output carries the login): held at
/// `error` unless `RUST_LOG` names them; the graph projection logs its own
/// state and lag.
const NOISY_TARGETS: &[&str] = &["neo4rs"];

/// The `RUST_LOG` filter `spec` with [`QUIET_TARGETS`] held at `info` and
/// [`NOISY_TARGETS`] at `error`, unless it names them.
pub fn log_filter(spec: &str) -> String {
    let mut filter = spec.to_string();
    let levels = QUIET_TARGETS
        .iter()
        .map(|t| (t, "info"))
        .chain(NOISY_TARGETS.iter().map(|t| (t, "error")));
    for (target, level) in levels {
        let named = spec
            .split(',')
            .any(|d| d.trim().split(['=', '[']).next() == Some(*target));
        if !named {
            filter.push_str(&format!(",{target}={level}"));
        }
    }
    filter
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; see
/// [`log_filter`]). Colours only on a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&spec))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter("info")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatty_crates_stay_at_info_unless_named() {
        let f = log_filter("debug");
        assert!(
            f.starts_with("debug,") && f.contains(",bollard=info"),
            "{f}"
        );
        let f = log_filter("debug,bollard=trace");
        assert!(!f.contains("bollard=info") && f.contains("h2=info"), "{f}");
        assert!(f.contains(",neo4rs=error"), "{f}");
        assert!(!log_filter("neo4rs=debug").contains("neo4rs=error"));
    }
}
