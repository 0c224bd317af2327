//! What a running proxy holds: the swappable [`Runtime`] (config + upstream clients) and the
//! process-wide [`Shared`] parts (metrics, audit, reload).
//!
//! A reload builds a whole new `Runtime` from a fully valid `Config` and swaps it in with one
//! atomic store. Requests take a snapshot when they start and keep it to the end; TLS handshakes
//! take the listener config of the snapshot current when the connection is accepted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::AuditLog;
use crate::config::{Config, ConfigErrors};
use crate::telemetry::Metrics;
use crate::upstream::UpstreamClient;

pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<UpstreamClient>>,
}

impl Runtime {
    pub fn new(config: Config) -> Runtime {
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(UpstreamClient::new(u))))
            .collect();
        Runtime {
            config: Arc::new(config),
            upstreams,
        }
    }
}

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// The file reloads read; `None` when the config did not come from a file.
    pub config_path: Option<PathBuf>,
    conn_ids: AtomicU64,
}

impl Shared {
    pub fn new(config: Config, audit: AuditLog, config_path: Option<PathBuf>) -> Shared {
        Shared {
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            metrics: Metrics::default(),
            audit,
            config_path,
            conn_ids: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Ready to serve: a valid config is loaded. (Issue #3 adds: every key set fetched.)
    pub fn ready(&self) -> bool {
        !self.runtime.load().config.policies.routes().is_empty()
    }

    /// Re-reads the config file; swaps it in only when it is fully valid.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        match Config::load(path) {
            Ok(new) => {
                let old = self.runtime.load();
                if new.listener.address != old.config.listener.address
                    || new.admin != old.config.admin
                    || new.audit.sink != old.config.audit.sink
                {
                    tracing::warn!(
                        "listener, admin or audit sink changes take effect only after a restart"
                    );
                }
                let version = new.policies.version.clone();
                self.runtime.store(Arc::new(Runtime::new(new)));
                self.metrics.reload(true);
                tracing::info!(policy_version = %version, "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(errors = %e, "config reload refused; the previous config stays");
                Err(e)
            }
        }
    }
}
