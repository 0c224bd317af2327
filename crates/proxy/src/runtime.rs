//! What a running proxy holds: the swappable [`Runtime`] (config, upstream clients, key sources,
//! verified-token cache) and the process-wide [`Shared`] parts (metrics, audit, replay store,
//! clock, reload).
//!
//! A reload builds a whole new `Runtime` from a fully valid `Config` and swaps it in with one
//! atomic store. Requests take a snapshot when they start and keep it to the end; TLS handshakes
//! take the listener config of the snapshot current when the connection is accepted. The token
//! cache starts empty with each config (a token verified under old keys or rules is verified
//! again); remote key sources and the replay store live across reloads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, JwksSource, LoadedCrl};
use crate::pipeline::token::TokenCache;
use crate::telemetry::Metrics;
use crate::upstream::UpstreamClient;
use portcullis_audit::AuditLog;
use portcullis_base::clock::{Clock, SystemClock};
use portcullis_base::metrics::{Exposition, Float, Kind};
use portcullis_sources::crl::CrlFeed;
use portcullis_sources::discovery::Discovery;
use portcullis_sources::keys::KeySource;
use portcullis_sources::leafcrl::LeafCrlChecker;
use portcullis_sources::ocsp::OcspChecker;
use portcullis_sources::revocation::Counts;
use portcullis_state::replay::{MemoryReplayStore, ReplayStore};

pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<UpstreamClient>>,
    /// Key source per issuer name.
    pub keys: HashMap<String, Arc<KeySource>>,
    /// Metadata per issuer that uses discovery.
    pub discoveries: HashMap<String, Arc<Discovery>>,
    /// Introspection client per issuer that has one.
    pub introspectors: HashMap<String, Arc<portcullis_sources::introspect::Introspector>>,
    pub tokens: TokenCache,
    /// The consent source, when the config has one.
    pub consent: Option<Arc<portcullis_sources::consent::ConsentSource>>,
    /// Callers' request-signature keys, when the config names a source; a reload
    /// starts an empty cache.
    pub client_keys: Option<Arc<portcullis_sources::clientkeys::ClientKeys>>,
    /// Local rate limiters of this config; a reload starts them empty.
    pub rate_limits: Arc<portcullis_state::limits::RateLimits>,
    /// Every CRL URL of every host, fetched and refreshed (kept across reloads), each once.
    pub crl_feeds: Vec<Arc<CrlFeed>>,
    /// OCSP for client certificates of the hosts that have it (kept across reloads with its
    /// cache), each once.
    pub ocsp: Vec<Arc<OcspChecker>>,
    /// The checkers of the CRLs client certificates name, of the hosts that follow them (kept
    /// across reloads with their caches), each once.
    pub leaf_crls: Vec<Arc<LeafCrlChecker>>,
    /// Each host's TLS, by [`crate::config::Host::key`].
    hosts: HashMap<Arc<str>, HostTls>,
}

/// One host's handshake and revocation state: its rustls config with the CRLs fetched so far.
pub(crate) struct HostTls {
    pub host: Arc<crate::config::Host>,
    feeds: Vec<Arc<CrlFeed>>,
    pub ocsp: Option<Arc<OcspChecker>>,
    /// The CRLs client certificates name, when the host follows them.
    pub leaf_crls: Option<Arc<LeafCrlChecker>>,
    live: ArcSwap<LiveTls>,
    /// Held while the host's TLS is rebuilt for a new fetched CRL.
    rebuilding: std::sync::Mutex<()>,
}

/// The listener's TLS as it is now: from the config's files and, with CRL URLs, the CRLs
/// fetched so far. Handshakes and the per-request revocation check read it.
pub(crate) struct LiveTls {
    pub server_config: Arc<rustls::ServerConfig>,
    pub revoked: Arc<portcullis_crypto::pki::Revoked>,
    /// Every CRL in use, from files and URLs, for the `nextUpdate` gauge.
    pub crls: Vec<LoadedCrl>,
    /// Whether every CRL URL has delivered a CRL; until then client certificates are refused
    /// (their revocation status is unknown: fail closed).
    pub complete: bool,
    /// The sum of the feeds' generations this was built from (feeds only ever count up).
    generation: u64,
}

impl Runtime {
    /// What the pipeline needs for one request on a connection to `host` of `listener`: this
    /// snapshot and the process-wide stores.
    pub(crate) fn context<'a>(
        &'a self,
        shared: &'a Shared,
        listener: &'a crate::config::Listener,
        host: &'a HostTls,
    ) -> crate::pipeline::Context<'a> {
        crate::pipeline::Context {
            config: &self.config,
            listener,
            host: &host.host,
            keys: &self.keys,
            introspectors: &self.introspectors,
            tokens: &self.tokens,
            consent: self.consent.as_deref(),
            client_keys: self.client_keys.as_deref(),
            rate_limits: &self.rate_limits,
            replay: shared.replay.as_ref(),
            idempotency: &shared.idempotency,
            nonces: &shared.nonces,
            clock: shared.clock.as_ref(),
            revoked: Arc::clone(&host.live().revoked),
            ocsp: host.ocsp.as_deref(),
            leaf_crls: host.leaf_crls.as_deref(),
            detect: &shared.detect,
        }
    }

    /// The listener configured at `address` and its host `key`, when this config still has
    /// them as they were (see [`crate::config::Host::key`]).
    pub(crate) fn host(
        &self,
        address: std::net::SocketAddr,
        key: &str,
    ) -> Option<(&crate::config::Listener, &HostTls)> {
        let listener = self
            .config
            .listeners
            .iter()
            .find(|l| l.address == address)?;
        listener.host(key)?;
        Some((listener, self.hosts.get(key)?))
    }

    /// The TLS state of the host `key`.
    pub(crate) fn host_tls(&self, key: &str) -> Option<&HostTls> {
        self.hosts.get(key)
    }

    /// Every host's TLS now (see [`HostTls::live`]).
    fn all_live(&self) -> Vec<Arc<LiveTls>> {
        let mut keys: Vec<&Arc<str>> = self.hosts.keys().collect();
        keys.sort();
        keys.into_iter().map(|k| self.hosts[k].live()).collect()
    }
}

impl HostTls {
    /// The host's TLS now: rebuilt first when a CRL feed has taken a new CRL since.
    pub(crate) fn live(&self) -> Arc<LiveTls> {
        let now = self.live.load_full();
        if self.feed_generation() == now.generation {
            return now;
        }
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.live.load_full();
        let generation = self.feed_generation();
        if generation == now.generation {
            return now;
        }
        let fresh = Arc::new(build_live_tls(
            &self.host.tls,
            &self.feeds,
            generation,
            &now,
        ));
        self.live.store(Arc::clone(&fresh));
        fresh
    }

    fn feed_generation(&self) -> u64 {
        self.feeds.iter().map(|f| f.generation()).sum()
    }
}

/// The host's TLS with the CRLs the feeds hold now. Each fetched CRL passed the host's
/// CRL check when it was taken; should the build fail all the same, `previous` stays.
fn build_live_tls(
    tls: &crate::config::ListenerTls,
    feeds: &[Arc<CrlFeed>],
    generation: u64,
    previous: &LiveTls,
) -> LiveTls {
    let fetched: Vec<_> = feeds.iter().filter_map(|f| f.current()).collect();
    let ders: Vec<_> = fetched.iter().map(|c| c.der.clone()).collect();
    match tls.material.build(tls.client_auth, &ders) {
        Ok((server_config, revoked)) => {
            let mut crls = tls.crls.clone();
            for (feed, crl) in feeds.iter().filter_map(|f| Some((f, f.current()?))) {
                crls.push(LoadedCrl {
                    source: feed.url(),
                    info: crl.info.clone(),
                });
            }
            LiveTls {
                server_config,
                revoked: Arc::new(revoked),
                crls,
                complete: fetched.len() == feeds.len(),
                generation,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the listener's TLS cannot take the fetched CRLs; the previous ones stay");
            LiveTls {
                server_config: Arc::clone(&previous.server_config),
                revoked: Arc::clone(&previous.revoked),
                crls: previous.crls.clone(),
                complete: previous.complete,
                generation,
            }
        }
    }
}

impl Runtime {
    /// Each upstream's endpoints (where they stand, what is in flight, how tries ended) and
    /// its retries and refusals.
    fn write_upstream_metrics(&self, out: &mut Exposition) {
        use crate::upstream::{Outcome, Standing};
        let mut names: Vec<&String> = self.upstreams.keys().collect();
        names.sort();
        let endpoints: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), self.upstreams[*n].standings()))
            .collect();
        let mut f = out.family(
            "portcullis_upstream_endpoint_state",
            Kind::Gauge,
            "1 for the state each upstream endpoint is in (available, unhealthy, ejected, breaker_open).",
        );
        for (up, eps) in &endpoints {
            for (e, standing) in eps {
                for st in [
                    Standing::Available,
                    Standing::Unhealthy,
                    Standing::Ejected,
                    Standing::Open,
                ] {
                    let v = u8::from(*standing == st);
                    f.sample(
                        &[
                            ("upstream", up),
                            ("endpoint", &e.label),
                            ("state", st.as_str()),
                        ],
                        v,
                    );
                }
            }
        }
        let mut f = out.family(
            "portcullis_upstream_endpoint_outstanding",
            Kind::Gauge,
            "Tries in flight on each upstream endpoint (to response headers).",
        );
        for (up, eps) in &endpoints {
            for (e, _) in eps {
                f.sample(
                    &[("upstream", up), ("endpoint", &e.label)],
                    e.state.outstanding(),
                );
            }
        }
        let mut f = out.family(
            "portcullis_upstream_attempts_total",
            Kind::Counter,
            "Tries on each upstream endpoint by result (answered, status_5xx, connect_failed, timeout, broken).",
        );
        for (up, eps) in &endpoints {
            for (e, _) in eps {
                for o in Outcome::ALL {
                    f.sample(
                        &[
                            ("upstream", up),
                            ("endpoint", &e.label),
                            ("result", o.as_str()),
                        ],
                        e.state.attempts(o),
                    );
                }
            }
        }
        let mut f = out.family(
            "portcullis_upstream_ejections_total",
            Kind::Counter,
            "Times outlier detection ejected each upstream endpoint.",
        );
        for (up, eps) in &endpoints {
            for (e, _) in eps {
                f.sample(
                    &[("upstream", up), ("endpoint", &e.label)],
                    e.state.ejections_total(),
                );
            }
        }
        let stats: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), &self.upstreams[*n].stats))
            .collect();
        let mut f = out.family(
            "portcullis_upstream_retries_total",
            Kind::Counter,
            "Retries on another endpoint, by upstream and whether the retry budget allowed them (sent, budget_exhausted).",
        );
        for (up, s) in &stats {
            f.sample(
                &[("upstream", up), ("result", "sent")],
                s.budget.spent_total.load(Ordering::Relaxed),
            );
            f.sample(
                &[("upstream", up), ("result", "budget_exhausted")],
                s.budget.refused_total.load(Ordering::Relaxed),
            );
        }
        let mut f = out.family(
            "portcullis_upstream_refused_total",
            Kind::Counter,
            "Requests answered 503 without a try, by upstream and reason (unavailable, overloaded).",
        );
        for (up, s) in &stats {
            f.sample(
                &[("upstream", up), ("reason", "unavailable")],
                s.unavailable.load(Ordering::Relaxed),
            );
            f.sample(
                &[("upstream", up), ("reason", "overloaded")],
                s.overloaded.load(Ordering::Relaxed),
            );
        }
    }

    /// Builds the runtime for `config`, reusing remote sources from `remotes` so a reload does
    /// not drop fetched keys and metadata.
    fn new(
        config: Config,
        remotes: &Remotes,
        background: &CancellationToken,
        redis: Option<&Arc<portcullis_state::redis::RedisState>>,
    ) -> Runtime {
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    crate::upstream::start(u, config.listener.workers, &remotes.upstreams),
                )
            })
            .collect();
        let discoveries: HashMap<String, Arc<Discovery>> = config
            .auth
            .issuers
            .iter()
            .filter_map(|(name, issuer)| Some((name, issuer.discovery.as_ref()?)))
            .map(|(name, d)| {
                let key = (name.clone(), format!("{} {}", d.uri, d.issuer));
                let existing = remotes.discoveries.get(&key).map(|r| Arc::clone(r.value()));
                let source = existing.unwrap_or_else(|| {
                    let s = Arc::new(Discovery::new(d.clone()));
                    s.spawn_refresh(background.child_token());
                    remotes.discoveries.insert(key, Arc::clone(&s));
                    s
                });
                (name.clone(), source)
            })
            .collect();
        let keys = config
            .auth
            .issuers
            .iter()
            .filter_map(|(name, issuer)| Some((name, issuer.jwks.as_ref()?)))
            .map(|(name, jwks)| {
                let source = match jwks {
                    JwksSource::File { keys, .. } => {
                        Arc::new(KeySource::fixed(name, Arc::clone(keys)))
                    }
                    JwksSource::Url(remote) => {
                        let discovery = discoveries.get(name).cloned();
                        let at = match (&remote.uri, &discovery) {
                            (Some(u), _) => u.to_string(),
                            (None, Some(d)) => format!("metadata {}", d.config.uri),
                            (None, None) => String::new(),
                        };
                        let key = (name.clone(), at);
                        let existing = remotes.keys.get(&key).map(|r| Arc::clone(r.value()));
                        existing.unwrap_or_else(|| {
                            let s =
                                Arc::new(KeySource::discovered(name, remote.clone(), discovery));
                            s.spawn_refresh(background.child_token());
                            remotes.keys.insert(key, Arc::clone(&s));
                            s
                        })
                    }
                };
                (name.clone(), source)
            })
            .collect();
        let introspectors = config
            .auth
            .issuers
            .iter()
            .filter_map(|(name, i)| {
                let c = i.introspection.clone()?;
                Some((
                    name.clone(),
                    Arc::new(portcullis_sources::introspect::Introspector::discovered(
                        c,
                        discoveries.get(name).cloned(),
                    )),
                ))
            })
            .collect();
        let tokens = TokenCache::new(config.auth.cache_entries);
        let client_keys = config
            .signatures
            .client_keys
            .clone()
            .map(|c| Arc::new(portcullis_sources::clientkeys::ClientKeys::new(c)));
        let consent = config
            .consent
            .clone()
            .map(|c| Arc::new(portcullis_sources::consent::ConsentSource::new(c)));
        let fleet = redis.map(|r| {
            portcullis_state::redis::FleetLimiter::new(
                Arc::clone(r),
                config.state.lease_max_tokens,
                config.state.lease_ttl,
                config.state.rate_limits,
            )
        });
        let rate_limits = Arc::new(portcullis_state::limits::RateLimits::with_fleet(
            &config.rate_limits,
            fleet,
        ));
        portcullis_state::limits::RateLimits::spawn_maintenance(
            &rate_limits,
            background.child_token(),
        );
        let mut hosts = HashMap::new();
        let mut crl_feeds: Vec<Arc<CrlFeed>> = Vec::new();
        let mut ocsp: Vec<Arc<OcspChecker>> = Vec::new();
        let mut leaf_crls: Vec<Arc<LeafCrlChecker>> = Vec::new();
        let mut kept = KeptKeys::default();
        for host in config.listeners.iter().flat_map(|l| &l.hosts) {
            let tls = host_tls(host, remotes, background, &mut kept);
            for f in &tls.feeds {
                if !crl_feeds.iter().any(|x| Arc::ptr_eq(x, f)) {
                    crl_feeds.push(Arc::clone(f));
                }
            }
            if let Some(o) = &tls.ocsp {
                if !ocsp.iter().any(|x| Arc::ptr_eq(x, o)) {
                    ocsp.push(Arc::clone(o));
                }
            }
            if let Some(l) = &tls.leaf_crls {
                if !leaf_crls.iter().any(|x| Arc::ptr_eq(x, l)) {
                    leaf_crls.push(Arc::clone(l));
                }
            }
            hosts.insert(Arc::clone(&host.key), tls);
        }
        // Checkers no host uses any more go, with their cached answers.
        remotes.ocsp.retain(|k, _| kept.ocsp.contains(k));
        remotes.leaf_crls.retain(|k, _| kept.leaf_crls.contains(k));
        Runtime {
            rate_limits,
            crl_feeds,
            ocsp,
            leaf_crls,
            hosts,
            config: Arc::new(config),
            upstreams,
            keys,
            discoveries,
            introspectors,
            tokens,
            consent,
            client_keys,
        }
    }
}

/// The keys in [`Remotes`] of the checkers some host of the new config uses; the others go.
#[derive(Default)]
struct KeptKeys {
    ocsp: Vec<String>,
    leaf_crls: Vec<String>,
}

/// A host's CRL feeds (shared with any host or earlier config fetching the same URL against
/// the same CAs), its OCSP and leaf CRL checkers (likewise) and its TLS built with what the
/// feeds hold now.
fn host_tls(
    host: &Arc<crate::config::Host>,
    remotes: &Remotes,
    background: &CancellationToken,
    kept: &mut KeptKeys,
) -> HostTls {
    let tls = &host.tls;
    let cas: Vec<String> = tls
        .material
        .client_cas
        .iter()
        .map(|c| portcullis_crypto::pki::thumbprint_s256(c.as_ref()))
        .collect();
    let feeds: Vec<Arc<CrlFeed>> = tls
        .crl_urls
        .iter()
        .map(|u| {
            let material = Arc::clone(&tls.material);
            // The feed checks what it fetches against these CAs: new CAs, a new feed.
            let key = format!("{} {}", u.key(), cas.join(","));
            let existing = remotes.crls.get(&key).map(|r| Arc::clone(r.value()));
            existing.unwrap_or_else(|| {
                let accept: portcullis_sources::crl::Accept =
                    Arc::new(move |crl| match material.crl_refusal(crl) {
                        Some(why) => Err(why),
                        None => Ok(()),
                    });
                let feed = Arc::new(CrlFeed::new(u.remote.clone(), accept));
                feed.spawn_refresh(background.child_token());
                remotes.crls.insert(key, Arc::clone(&feed));
                feed
            })
        })
        .collect();
    let der = || -> Vec<Vec<u8>> {
        tls.material
            .client_cas
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    };
    let ocsp = tls.ocsp.as_ref().map(|o| {
        // Its cached answers were verified against these CAs: new CAs, a new checker.
        let key = format!("{} {}", o.key(), cas.join(","));
        kept.ocsp.push(key.clone());
        let existing = remotes.ocsp.get(&key).map(|r| Arc::clone(r.value()));
        existing.unwrap_or_else(|| {
            let checker = Arc::new(OcspChecker::new(o.clone(), der()));
            remotes.ocsp.insert(key, Arc::clone(&checker));
            checker
        })
    });
    let leaf_crls = tls.leaf_crls.as_ref().map(|l| {
        // Its cached CRLs were verified against these CAs: new CAs, a new checker.
        let key = format!("{} {}", l.key(), cas.join(","));
        kept.leaf_crls.push(key.clone());
        let existing = remotes.leaf_crls.get(&key).map(|r| Arc::clone(r.value()));
        existing.unwrap_or_else(|| {
            let checker = Arc::new(LeafCrlChecker::new(l.clone(), der()));
            remotes.leaf_crls.insert(key, Arc::clone(&checker));
            checker
        })
    });
    let initial = LiveTls {
        server_config: Arc::clone(&tls.server_config),
        revoked: Arc::clone(&tls.revoked),
        crls: tls.crls.clone(),
        complete: feeds.is_empty(),
        generation: 0,
    };
    let generation = feeds.iter().map(|f| f.generation()).sum();
    let live = if generation == 0 {
        initial
    } else {
        build_live_tls(tls, &feeds, generation, &initial)
    };
    HostTls {
        host: Arc::clone(host),
        feeds,
        ocsp,
        leaf_crls,
        live: ArcSwap::from_pointee(live),
        rebuilding: std::sync::Mutex::new(()),
    }
}

impl Runtime {
    /// The families of this config: per issuer, the key source (ready, keys, fetches, failures,
    /// age of the last good set), discovery and introspection calls; CRLs; the verified-token
    /// cache (hits and signature verifications); rate-limit keys. Labels are config names
    /// only, escaped all the same (a name with a quote must not break the scrape).
    pub fn write_metrics(&self, now: i64, out: &mut Exposition) {
        self.write_upstream_metrics(out);
        let mut names: Vec<&String> = self.keys.keys().collect();
        names.sort();
        let per_issuer = |out: &mut Exposition,
                          name: &str,
                          kind: Kind,
                          help: &str,
                          v: &dyn Fn(&KeySource) -> String| {
            let mut f = out.family(name, kind, help);
            for n in &names {
                f.sample(&[("issuer", n.as_str())], v(&self.keys[*n]));
            }
        };
        per_issuer(
            out,
            "portcullis_key_source_ready",
            Kind::Gauge,
            "1 when the issuer has a good key set.",
            &|k| u8::from(k.is_ready()).to_string(),
        );
        per_issuer(
            out,
            "portcullis_key_source_keys",
            Kind::Gauge,
            "Keys in the current set.",
            &|k| k.key_count().to_string(),
        );
        per_issuer(
            out,
            "portcullis_key_source_fetches_total",
            Kind::Counter,
            "Key set fetches.",
            &|k| k.fetches.load(Ordering::Relaxed).to_string(),
        );
        per_issuer(
            out,
            "portcullis_key_source_failures_total",
            Kind::Counter,
            "Failed key set fetches.",
            &|k| k.failures.load(Ordering::Relaxed).to_string(),
        );
        per_issuer(
            out,
            "portcullis_key_source_age_seconds",
            Kind::Gauge,
            "Age of the current key set.",
            &|k| {
                let t = k.last_good.load(Ordering::Relaxed);
                if t == 0 {
                    "NaN".to_string()
                } else {
                    (now - t).max(0).to_string()
                }
            },
        );
        let live = self.all_live();
        let mut crls: Vec<_> = live
            .iter()
            .flat_map(|l| &l.crls)
            .filter_map(|c| {
                Some((
                    c.source.as_str(),
                    c.info.issuer.as_str(),
                    c.info.next_update?,
                ))
            })
            .collect();
        crls.sort();
        crls.dedup();
        let mut f = out.family(
            "portcullis_crl_next_update_timestamp_seconds",
            Kind::Gauge,
            "nextUpdate of each CRL of the listener (Unix seconds), by file or URL; past it, the certificates of its issuer are refused.",
        );
        for (source, issuer, t) in &crls {
            f.sample(&[("crl", *source), ("issuer", *issuer)], t);
        }
        let urls: Vec<String> = self.crl_feeds.iter().map(|c| c.url()).collect();
        let per_feed = |out: &mut Exposition,
                        name: &str,
                        kind: Kind,
                        help: &str,
                        v: &dyn Fn(&CrlFeed) -> u64| {
            let mut f = out.family(name, kind, help);
            for (c, url) in self.crl_feeds.iter().zip(&urls) {
                f.sample(&[("crl", url)], v(c));
            }
        };
        per_feed(
            out,
            "portcullis_crl_fetches_total",
            Kind::Counter,
            "Fetches of each CRL URL.",
            &|c| c.fetches.load(Ordering::Relaxed),
        );
        per_feed(
            out,
            "portcullis_crl_fetch_failures_total",
            Kind::Counter,
            "Fetches of each CRL URL not taken (unreachable, garbage, too big, not signed by a client CA, older than the CRL held); the last good CRL stays.",
            &|c| c.failures.load(Ordering::Relaxed),
        );
        per_feed(
            out,
            "portcullis_crl_ready",
            Kind::Gauge,
            "1 when the CRL URL has delivered a CRL; until then client certificates are refused.",
            &|c| u64::from(c.is_ready()),
        );
        // Each summed over the hosts' checkers: one family each, as with a single checker.
        write_revocation_counts(
            out,
            self.ocsp.iter().map(|o| &o.counts),
            [
                (
                    "portcullis_ocsp_requests_total",
                    "OCSP requests sent to a responder for client certificates.",
                ),
                (
                    "portcullis_ocsp_fetch_failures_total",
                    "OCSP requests that brought no verified answer (unreachable, timed out, HTTP error, too big, malformed, not successful, badly signed, about another certificate, not current).",
                ),
                (
                    "portcullis_ocsp_fail_open_total",
                    "Requests let through with fail: open although no good OCSP answer was had for the client certificate.",
                ),
            ],
        );
        write_revocation_counts(
            out,
            self.leaf_crls.iter().map(|l| &l.counts),
            [
                (
                    "portcullis_leaf_crl_fetches_total",
                    "Fetches of a CRL distribution point named by a client certificate.",
                ),
                (
                    "portcullis_leaf_crl_fetch_failures_total",
                    "Fetches of a client certificate's CRL distribution point that brought no verified CRL (unreachable, timed out, HTTP error, too big, not a CRL, not signed by the issuing CA, not current, not complete).",
                ),
                (
                    "portcullis_leaf_crl_fail_open_total",
                    "Requests let through with fail: open although no verified CRL was had for the client certificate.",
                ),
            ],
        );
        let mut disc: Vec<(&String, &Arc<Discovery>)> = self.discoveries.iter().collect();
        disc.sort_by_key(|(n, _)| n.as_str());
        let mut f = out.family(
            "portcullis_discovery_ready",
            Kind::Gauge,
            "1 when the issuer's metadata document has been taken (its issuer matched).",
        );
        for (n, d) in &disc {
            f.sample(&[("issuer", n.as_str())], u8::from(d.is_ready()));
        }
        let mut f = out.family(
            "portcullis_discovery_failures_total",
            Kind::Counter,
            "Metadata fetches not taken (unreachable, garbage, another issuer, an http:// endpoint).",
        );
        for (n, d) in &disc {
            f.sample(
                &[("issuer", n.as_str())],
                d.failures.load(Ordering::Relaxed),
            );
        }
        let mut intro: Vec<(&String, &Arc<portcullis_sources::introspect::Introspector>)> =
            self.introspectors.iter().collect();
        intro.sort_by_key(|(n, _)| n.as_str());
        let mut f = out.family(
            "portcullis_introspection_calls_total",
            Kind::Counter,
            "Introspection requests.",
        );
        for (n, i) in &intro {
            f.sample(&[("issuer", n.as_str())], i.calls.load(Ordering::Relaxed));
        }
        let mut f = out.family(
            "portcullis_introspection_failures_total",
            Kind::Counter,
            "Introspection requests without a decision.",
        );
        for (n, i) in &intro {
            f.sample(
                &[("issuer", n.as_str())],
                i.failures.load(Ordering::Relaxed),
            );
        }
        out.single(
            "portcullis_token_cache_hits_total",
            Kind::Counter,
            "Token checks answered from the verified-token cache.",
            self.tokens.hits.load(Ordering::Relaxed),
        );
        out.single(
            "portcullis_token_verifications_total",
            Kind::Counter,
            "Token signatures verified or tokens introspected (cache misses).",
            self.tokens.verifications.load(Ordering::Relaxed),
        );
        out.single(
            "portcullis_token_cache_entries",
            Kind::Gauge,
            "Tokens in the verified-token cache.",
            self.tokens.len(),
        );
        out.single(
            "portcullis_rate_limit_keys",
            Kind::Gauge,
            "Keys held by this instance's rate limiters (peer and classes); not capped, idle keys are dropped by maintenance, so no fill ratio.",
            self.rate_limits.keys(),
        );
    }
}

/// One revocation checker kind's three counter families (fetches, fetch failures, fail-open),
/// each summed over the hosts' checkers; nothing when no host has such a checker.
fn write_revocation_counts<'a>(
    out: &mut Exposition,
    checkers: impl Iterator<Item = &'a Counts> + Clone,
    families: [(&str, &str); 3],
) {
    if checkers.clone().next().is_none() {
        return;
    }
    let sum = |v: fn(&Counts) -> &AtomicU64| -> u64 {
        checkers.clone().map(|c| v(c).load(Ordering::Relaxed)).sum()
    };
    let values = [
        sum(|c| &c.fetches),
        sum(|c| &c.failures),
        sum(|c| &c.fail_open),
    ];
    for ((name, help), v) in families.into_iter().zip(values) {
        out.family(name, Kind::Counter, help).sample(&[], v);
    }
}

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// The file reloads read; `None` when the config did not come from a file.
    pub config_path: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// Replay store for DPoP `jti`s and RFC 9421 nonces: memory, or Redis for a fleet
    /// (`state:`, fixed at start-up).
    pub replay: Arc<dyn ReplayStore>,
    /// Idempotency keys: memory (capacity fixed at start-up) or Redis.
    pub idempotency: Arc<dyn portcullis_state::idempotency::IdempotencyStore>,
    /// The Redis connection and its health, when `state.backend` is `redis`.
    pub redis: Option<Arc<portcullis_state::redis::RedisState>>,
    /// DPoP server nonces (secret fixed at start-up).
    pub nonces: portcullis_state::nonce::NonceIssuer,
    /// Behavioural detectors and quarantines (kept across reloads; the thresholds are read
    /// from each request's config snapshot).
    pub detect: Arc<portcullis_detect::Detector>,
    /// The alert webhook's queue (settings fixed at start-up).
    pub(crate) webhook: Option<crate::detection::Webhook>,
    /// OTLP span export (feature `otlp`; settings fixed at start-up).
    #[cfg(feature = "otlp")]
    pub otlp: Option<crate::otlp::Exporter>,
    remotes: Remotes,
    /// Cancelled on drop: stops key refresh tasks.
    background: CancellationToken,
    conn_ids: AtomicU64,
    /// SIGTERM came: `/readyz` says 503 from now on, whatever else holds.
    shutting_down: std::sync::atomic::AtomicBool,
    /// The bound listeners, once started: a reload adds and removes listeners through it.
    pub(crate) listeners: std::sync::OnceLock<Arc<dyn ListenerControl>>,
}

/// Listening sockets bound for a config, by configured address, before they accept: the
/// socket and its bound address.
pub(crate) type Bound = Vec<(
    std::net::SocketAddr,
    (std::net::TcpListener, std::net::SocketAddr),
)>;

/// What a reload asks of the running listeners (the server implements it).
pub(crate) trait ListenerControl: Send + Sync {
    /// Binds the addresses of `config` that no listener has yet; an address that cannot be
    /// bound is a config error naming the listener, and nothing is bound.
    fn bind_new(&self, config: &Config) -> Result<Bound, ConfigErrors>;
    /// Starts accepting on `bound` and stops the listeners `config` no longer has.
    fn apply(&self, config: &Config, bound: Bound);
}

/// Remote sources kept across reloads, keyed by issuer name and where they fetch from.
#[derive(Default)]
struct Remotes {
    /// Endpoint health, breakers and in-flight counts, and upstream counters.
    upstreams: crate::upstream::Registry,
    keys: DashMap<(String, String), Arc<KeySource>>,
    discoveries: DashMap<(String, String), Arc<Discovery>>,
    /// CRL feeds by URL, settings and the client CAs they check against.
    crls: DashMap<String, Arc<CrlFeed>>,
    /// The OCSP checkers of the hosts, by their settings and client CAs.
    ocsp: DashMap<String, Arc<OcspChecker>>,
    /// The checkers of the CRLs client certificates name, of the hosts, likewise.
    leaf_crls: DashMap<String, Arc<LeafCrlChecker>>,
}

/// The stores `config.state` asks for: memory, or Redis (one connection for all of them).
#[allow(clippy::type_complexity)]
fn state_backend(
    config: &Config,
    clock: &Arc<dyn Clock>,
    background: &CancellationToken,
) -> (
    Option<Arc<portcullis_state::redis::RedisState>>,
    Arc<dyn ReplayStore>,
    Arc<dyn portcullis_state::idempotency::IdempotencyStore>,
) {
    use portcullis_state::redis::{RedisIdempotencyStore, RedisReplayStore, RedisState};
    use portcullis_state::settings::{Backend, OnOutage};
    let s = &config.state;
    let Backend::Redis(r) = &s.backend else {
        return (
            None,
            Arc::new(MemoryReplayStore::new(config.auth.dpop.replay_capacity)),
            Arc::new(portcullis_state::idempotency::MemoryIdempotencyStore::new(
                config.idempotency.capacity,
            )),
        );
    };
    // The longest time a DPoP proof or an RFC 9421 nonce is accepted, skew on both sides.
    let dpop = &config.auth.dpop;
    let http = &config.signatures.http;
    let window = (dpop.max_age + 2 * dpop.skew).max(http.window + 2 * http.skew);
    let redis = RedisState::start(r, Arc::clone(clock), window, background.child_token());
    for (feature, action) in [("replay", s.replay), ("rate_limits", s.rate_limits)] {
        if action == OnOutage::Local {
            tracing::warn!(
                feature,
                "state.on_outage: this feature uses per-instance state while Redis is unavailable (fail-open across the fleet)"
            );
        }
    }
    tracing::info!(endpoint = %redis.endpoint(), "shared state on Redis");
    (
        Some(Arc::clone(&redis)),
        Arc::new(RedisReplayStore::new(
            Arc::clone(&redis),
            s.replay,
            config.auth.dpop.replay_capacity,
        )),
        Arc::new(RedisIdempotencyStore::new(redis)),
    )
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

impl Shared {
    /// Everything `/metrics` shows, through one writer: the proxy's registry, build and
    /// process metrics, this config's sources, the fill of every bounded store, and the shared
    /// state when it is on Redis.
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        let mut out = Exposition::new();
        self.metrics.write(&mut out);
        let runtime = self.runtime.load();
        runtime.write_metrics(now, &mut out);
        // Entries ÷ capacity of each store that fails closed (or stops taking entries) when
        // full, so an alert can fire before it does. A store on Redis has no capacity here
        // (Redis evicts by TTL) and is left out.
        let (certs, certs_cap) = self.metrics.client_certs_tracked();
        let mut stores: Vec<(&str, Option<(usize, usize)>)> = vec![
            ("dpop_replay", self.replay.fill()),
            ("idempotency", self.idempotency.fill()),
            (
                "token_cache",
                Some((runtime.tokens.len(), runtime.tokens.capacity())),
            ),
            ("client_cert_expiry", Some((certs, certs_cap))),
        ];
        stores.retain(|(_, f)| f.is_some_and(|(_, cap)| cap > 0));
        let mut f = out.family(
            "portcullis_store_fill_ratio",
            Kind::Gauge,
            "Entries ÷ capacity of each bounded in-memory store (at 1 a full store refuses or stops taking entries).",
        );
        for (store, fill) in &stores {
            if let Some((n, cap)) = fill {
                f.sample(&[("store", store)], Float(*n as f64 / *cap as f64));
            }
        }
        let mut f = out.family(
            "portcullis_store_capacity",
            Kind::Gauge,
            "Capacity (entries) of each bounded in-memory store.",
        );
        for (store, fill) in &stores {
            if let Some((_, cap)) = fill {
                f.sample(&[("store", store)], cap);
            }
        }
        if let Some(r) = &self.redis {
            r.write_metrics(now, &mut out);
        }
        crate::detection::write_metrics(&self.detect, self.webhook.as_ref(), now, &mut out);
        #[cfg(feature = "otlp")]
        if let Some(x) = &self.otlp {
            x.write_metrics(&mut out);
        }
        out.finish()
    }

    pub fn new(config: Config, audit: AuditLog, config_path: Option<PathBuf>) -> Shared {
        Shared::with_clock(config, audit, config_path, Arc::new(SystemClock))
    }

    /// As [`Shared::new`], with the clock token and DPoP checks read (tests move it).
    pub fn with_clock(
        config: Config,
        audit: AuditLog,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Shared {
        let remotes = Remotes::default();
        let background = CancellationToken::new();
        let (redis, replay, idempotency) = state_backend(&config, &clock, &background);
        let dpop = &config.auth.dpop;
        let nonces = match &dpop.nonce_secret {
            Some(s) => portcullis_state::nonce::NonceIssuer::new(s, dpop.nonce_lifetime),
            None => portcullis_state::nonce::NonceIssuer::random(dpop.nonce_lifetime),
        };
        #[cfg(feature = "otlp")]
        // The settings were checked at load; an SDK that still refuses them leaves the proxy
        // serving without export, and says so, rather than refusing traffic over telemetry.
        let otlp = config
            .otlp
            .as_ref()
            .and_then(|o| match crate::otlp::Exporter::start(o) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::error!(error = %e, "OTLP trace export could not start; spans are not exported");
                    None
                }
            });
        let webhook = config
            .detection
            .webhook
            .as_ref()
            .and_then(crate::detection::Webhook::start);
        let runtime = Runtime::new(config, &remotes, &background, redis.as_ref());
        let metrics = Metrics::default();
        metrics.attach_audit(audit.clone());
        metrics.server_cert(runtime.config.server_cert_not_after());
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            audit,
            config_path,
            clock,
            replay,
            idempotency,
            redis,
            nonces,
            detect: Arc::new(portcullis_detect::Detector::new()),
            webhook,
            #[cfg(feature = "otlp")]
            otlp,
            remotes,
            background,
            conn_ids: AtomicU64::new(1),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            listeners: std::sync::OnceLock::new(),
        }
    }

    /// Exports the trace spans still queued (feature `otlp`; a no-op without an exporter): at
    /// shutdown, after the drain, so the last requests' spans are not lost with the process.
    pub async fn flush_traces(&self) {
        #[cfg(feature = "otlp")]
        if let Some(x) = &self.otlp {
            x.flush().await;
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Ready to serve ([`Shared::not_ready`] is empty) and not shutting down.
    pub fn ready(&self) -> bool {
        !self.is_shutting_down() && self.not_ready().is_empty()
    }

    /// What keeps the proxy from serving, each named for an operator: no routes, an issuer
    /// without a good key set (`keys: NAME`) or, with discovery, without a metadata document for
    /// exactly that issuer (`discovery: NAME`), a CRL URL without a CRL (`crl: URL`), an
    /// unhealthy audit log (`audit`), and shared state that cannot answer for a fail-closed
    /// feature the routes use ([`Shared::state_ready`]).
    pub fn not_ready(&self) -> Vec<String> {
        let rt = self.runtime.load();
        let mut missing = Vec::new();
        if rt.config.policies.routes().is_empty() {
            missing.push("routes: none loaded".to_string());
        }
        let mut keys: Vec<_> = rt.keys.iter().filter(|(_, k)| !k.is_ready()).collect();
        keys.sort_by_key(|(name, _)| name.as_str());
        missing.extend(keys.iter().map(|(name, _)| format!("keys: {name}")));
        let mut discoveries: Vec<_> = rt
            .discoveries
            .iter()
            .filter(|(_, d)| !d.is_ready())
            .collect();
        discoveries.sort_by_key(|(name, _)| name.as_str());
        missing.extend(
            discoveries
                .iter()
                .map(|(name, _)| format!("discovery: {name}")),
        );
        for f in rt.crl_feeds.iter().filter(|f| !f.is_ready()) {
            missing.push(format!("crl: {}", f.url()));
        }
        if !self.audit.healthy() {
            missing.push("audit: the log cannot be written".to_string());
        }
        if let Err(why) = self.state_ready(&rt.config) {
            missing.push(format!("state: {why}"));
        }
        missing
    }

    /// From SIGTERM on, `/readyz` answers 503 so endpoints are removed before the listener
    /// stops accepting.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Whether the shared state backend can serve the routes of `config`: with Redis, not while
    /// it is down (or its replay history is younger than one replay window) if some route uses
    /// a feature that then refuses — replay checks (routes with `auth`, which may carry DPoP
    /// proofs, or RFC 9421 signatures) with `on_outage.replay: refuse`, idempotency keys, or
    /// rate-limit classes with `on_outage.rate_limits: refuse`. The error names what is missing.
    pub fn state_ready(&self, config: &Config) -> Result<(), &'static str> {
        use portcullis_policy::IdempotencyMode;
        use portcullis_state::settings::OnOutage;
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let routes = config.policies.routes();
        let s = &config.state;
        let replay = s.replay == OnOutage::Refuse
            && routes
                .iter()
                .any(|r| r.auth.is_some() || r.signature.is_some());
        let idempotency = routes
            .iter()
            .any(|r| r.idempotency != IdempotencyMode::None);
        let limits =
            s.rate_limits == OnOutage::Refuse && routes.iter().any(|r| r.rate_limit.is_some());
        if !redis.is_up() && (replay || idempotency || limits) {
            return Err("the shared state backend (Redis) is unavailable");
        }
        if replay && !redis.replay_trusted(self.clock.now()) {
            return Err("the shared replay history (Redis) is younger than one replay window");
        }
        Ok(())
    }

    /// Re-reads the config file; swaps it in only when it is fully valid.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        match Config::load(path) {
            Ok(new) => {
                let old = self.runtime.load();
                if new.admin != old.config.admin || new.audit.sink != old.config.audit.sink {
                    tracing::warn!("admin or audit sink changes take effect only after a restart");
                }
                // New listener addresses are bound before anything is swapped: an address that
                // cannot be bound refuses the whole reload, and the old config keeps serving.
                let listeners = self.listeners.get();
                let bound = match listeners.map(|l| l.bind_new(&new)) {
                    None => None,
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        self.metrics.reload(false);
                        tracing::error!(errors = %e, "config reload refused; the previous config stays");
                        return Err(e);
                    }
                };
                let version = new.policies.version.clone();
                self.metrics.server_cert(new.server_cert_not_after());
                // Credentials, TLS material and sentinels are re-read on reload (a rotated
                // password must not need a restart); the rest of `state:` needs one.
                let mut applied = old.config.state.clone();
                if let (
                    Some(redis),
                    portcullis_state::settings::Backend::Redis(now),
                    portcullis_state::settings::Backend::Redis(before),
                ) = (&self.redis, &new.state.backend, &mut applied.backend)
                {
                    redis.reconfigure(now);
                    let mut kept = now.clone();
                    kept.key_prefix.clone_from(&before.key_prefix);
                    kept.connect_timeout = before.connect_timeout;
                    kept.command_timeout = before.command_timeout;
                    kept.health_interval = before.health_interval;
                    *before = kept;
                }
                if new.state != applied {
                    tracing::warn!("state backend changes take effect only after a restart");
                }
                self.runtime.store(Arc::new(Runtime::new(
                    new,
                    &self.remotes,
                    &self.background,
                    self.redis.as_ref(),
                )));
                // After the swap, so that a connection accepted on a new listener finds it.
                if let (Some(l), Some(b)) = (listeners, bound) {
                    l.apply(&self.runtime.load().config, b);
                }
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
