//! Live reload: a new validated [`Config`] replaces the engine (auth policy, respond settings), the
//! token source and the cache TTLs while shards run. Sockets stay open and the cache keeps its
//! entries. What a running process cannot change (listen addresses, shard count, the I/O driver,
//! other `[server]` keys, `cache.max_entries`, `[admin] listen`, `[forward]`) is reported, not
//! applied: forward mode's sockets, lanes and flow tokens were set up for the running `[forward]`.

use std::sync::Arc;

use super::Shared;
use crate::auth::Engine;
use crate::config::{Config, ConfigError, SourceConfig};
use crate::forward::ForwardConfig;
use crate::token::http::RemoteSource;
use crate::token::{StaticTokens, TokenSource};

/// The engine `cfg` describes, relaying to `forward` when set. The key derives To tags and relay
/// branches: kept for the process's life, so a retransmission maps to the same values after a reload.
pub(super) fn engine(
    cfg: &Config,
    tag_key: (u64, u64),
    forward: Option<&crate::forward::ForwardConfig>,
) -> Engine {
    Engine::new(cfg.policy.clone(), cfg.respond_status, tag_key)
        .with_contact(cfg.respond_contact.as_deref())
        .with_forward(forward.map(|f| crate::forward::Forwarder::new(f, tag_key)))
}

impl Shared {
    /// Builds the token source `cfg` names: loads a token file, or makes a new HTTP client (its
    /// connections are made on each shard as requests need them).
    pub(super) fn source(
        &self,
        cfg: &SourceConfig,
    ) -> Result<Option<Arc<dyn TokenSource>>, ConfigError> {
        Ok(match cfg {
            SourceConfig::Static(path) => {
                let st = StaticTokens::load(path)?;
                tracing::info!(tokens = st.len(), file = %path.display(), "static token source loaded");
                Some(Arc::new(st))
            }
            SourceConfig::Remote(remote) => {
                let src = RemoteSource::with_metrics(remote.clone(), self.source_metrics.clone())
                    .map_err(|e| ConfigError::Parse(e.to_string()))?;
                let hosts: Vec<String> = remote.urls.iter().map(ToString::to_string).collect();
                tracing::info!(kind = src.name(), hosts = ?hosts, "remote token source ready");
                Some(Arc::new(src))
            }
            SourceConfig::None => None,
        })
    }

    /// Applies `new` over the `running` configuration. Everything is built before anything is
    /// swapped, so an error (a token file that does not load, say) leaves the running state whole.
    /// Returns the keys that changed but need a restart.
    pub fn reload(&self, running: &Config, new: &Config) -> Result<Vec<&'static str>, ConfigError> {
        let source = self.source(&new.source)?;
        // Forward mode keeps the running `[forward]`: its sockets, lanes and flows were set up at
        // start (a change is reported as needing a restart).
        let engine = engine(new, self.tag_key, running.forward.as_ref());
        self.tokens.reconfigure(source, &new.cache);
        self.engine.store(Arc::new(engine));
        Ok(needs_restart(running, new))
    }
}

/// Keys whose change a running server cannot apply.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    [
        ("server.udp", a.udp != b.udp),
        ("server.tcp", a.tcp != b.tcp),
        ("server.shards", a.shards != b.shards),
        ("server.io", a.io != b.io),
        (
            "server.max_message_size",
            a.max_message_size != b.max_message_size,
        ),
        (
            "server.tcp_idle_timeout_s",
            a.tcp_idle_timeout_s != b.tcp_idle_timeout_s,
        ),
        (
            "server.tcp_max_connections",
            a.tcp_max_connections != b.tcp_max_connections,
        ),
        (
            "server.udp_recv_buffer",
            a.udp_recv_buffer != b.udp_recv_buffer,
        ),
        (
            "server.shutdown_grace_s",
            a.shutdown_grace != b.shutdown_grace,
        ),
        (
            "cache.max_entries",
            running.cache.max_entries != new.cache.max_entries,
        ),
        ("admin.listen", running.admin != new.admin),
        ("forward", forward_changed(&running.forward, &new.forward)),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect()
}

/// Whether `[forward]` changed. Two random flow keys (none configured) are the same setting: each
/// parse draws a new one, and the running key is what stays.
fn forward_changed(running: &Option<ForwardConfig>, new: &Option<ForwardConfig>) -> bool {
    match (running, new) {
        (Some(a), Some(b)) if a.flow_key_random && b.flow_key_random => {
            let b = ForwardConfig {
                flow_key: a.flow_key.clone(),
                ..b.clone()
            };
            *a != b
        }
        (a, b) => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn restart_keys_are_named() {
        let a = Config::parse(
            "[server]\nudp = \"127.0.0.1:5060\"\nshards = 2\n",
            Path::new("."),
        )
        .unwrap();
        let b = Config::parse(
            "[server]\nudp = \"127.0.0.1:5070\"\nshards = 2\n[auth]\nmethods = [\"INVITE\"]\n[cache]\nmax_ttl_s = 5\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(needs_restart(&a, &b), vec!["server.udp"]);
        assert!(needs_restart(&a, &a).is_empty());
    }

    #[test]
    fn a_random_flow_key_is_not_a_change_but_a_new_upstream_is() {
        // Found merging forward mode with reload: each parse drew a new random key, so every
        // SIGHUP reported [forward] as changed.
        let fwd = |up: &str| {
            Config::parse(
                &format!(
                    "[server]\nudp = \"127.0.0.1:5060\"\n[forward]\nupstream = \"udp:{up}\"\n"
                ),
                Path::new("."),
            )
            .unwrap()
        };
        let a = fwd("127.0.0.1:5080");
        assert!(needs_restart(&a, &fwd("127.0.0.1:5080")).is_empty());
        assert_eq!(needs_restart(&a, &fwd("127.0.0.1:5090")), vec!["forward"]);
        let keyed = Config::parse(
            "[server]\nudp = \"127.0.0.1:5060\"\n[forward]\nupstream = \"udp:127.0.0.1:5080\"\nflow_key = \"0123456789abcdef\"\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(needs_restart(&a, &keyed), vec!["forward"]);
        assert!(needs_restart(&keyed, &keyed.clone()).is_empty());
    }

    #[test]
    fn reload_swaps_the_engine_and_keeps_the_cache() {
        let a = Config::parse("", Path::new(".")).unwrap();
        let b = Config::parse("[auth]\nmethods = [\"INVITE\"]\n", Path::new(".")).unwrap();
        let shared = Shared::from_config(&a).unwrap();
        assert_eq!(shared.engine.load().policy.methods.len(), 2);
        shared.reload(&a, &b).unwrap();
        assert_eq!(shared.engine.load().policy.methods.len(), 1);
        let broken = Config::parse(
            "[static_tokens]\nfile = \"/nonexistent/tokens.toml\"\n",
            Path::new("."),
        )
        .unwrap();
        assert!(shared.reload(&b, &broken).is_err());
        assert_eq!(shared.engine.load().policy.methods.len(), 1);
        assert!(!shared.tokens.has_source());
    }
}
