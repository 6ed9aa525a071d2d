//! The running process: the shards, the admin server, and the signals that reload the
//! configuration (SIGHUP) or stop the server (SIGTERM, SIGINT).

use std::path::Path;

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use sipward::config::Config;
use sipward::shard::Server;

/// Runs until SIGTERM or SIGINT; returns once the shards have stopped.
pub fn run(path: &Path, cfg: Config) -> anyhow::Result<()> {
    // Registered before anything starts, so an early signal is not the default (fatal) action.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .context("signal handlers")?;
    let server = Server::start(&cfg)?;
    if let Some(addr) = cfg.admin {
        sipward::admin::start(addr, sipward::admin::State::of(&server))
            .with_context(|| format!("admin.listen {addr}"))?;
    }
    let mut running = cfg;
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload(path, &server, &mut running),
            _ => {
                tracing::info!(
                    grace_s = running.server.shutdown_grace.as_secs(),
                    "stopping: no new requests; waiting for requests on the token source"
                );
                server.shutdown();
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
    Ok(())
}

fn reload(path: &Path, server: &Server, running: &mut Config) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    match server.shared.reload(running, &new) {
        Ok(restart) => {
            for key in &restart {
                tracing::warn!(key, "changed in the file; takes effect after a restart");
            }
            // What was not applied stays as it runs, so the next reload compares with that.
            let (server_cfg, admin, max_entries, forward) = (
                running.server.clone(),
                running.admin,
                running.cache.max_entries,
                running.forward.take(),
            );
            *running = new;
            running.server = server_cfg;
            running.admin = admin;
            running.cache.max_entries = max_entries;
            // The flow key among it: a new random one would orphan every flow token given out.
            running.forward = forward;
            tracing::info!(file = %path.display(), "configuration reloaded");
        }
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
    }
}
