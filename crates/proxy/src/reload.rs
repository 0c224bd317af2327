//! Hot reload: on SIGHUP or when a watched file changes, load the config again and swap it in
//! only when it is fully valid (see [`crate::runtime::Shared::reload`]).
//!
//! Directories are watched, not files: editors and Kubernetes ConfigMaps replace files by
//! rename or symlink swap, which a file watch would miss. Events are debounced.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;

const DEBOUNCE: Duration = Duration::from_millis(250);

fn watch_dirs(shared: &Shared) -> BTreeSet<PathBuf> {
    shared
        .runtime
        .load()
        .config
        .watched
        .iter()
        .map(|p| portcullis_policy::watch_root(p).to_path_buf())
        .collect()
}

/// Whether a change to `paths` can change the config: a watched file itself, a file inside a
/// watched directory, or the `..data` link swap by which Kubernetes updates a mounted ConfigMap
/// or Secret beside a watched file.
fn concerns_config(shared: &Shared, paths: &[PathBuf]) -> bool {
    let rt = shared.runtime.load();
    let watched = &rt.config.watched;
    paths.iter().any(|p| {
        let k8s_swap = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."));
        watched.iter().any(|w| {
            w == p
                || (w.is_dir() && p.parent() == Some(w.as_path()))
                || (k8s_swap && p.parent().is_some() && p.parent() == w.parent())
        })
    })
}

/// Starts watching the config's files; reloads until `shutdown` is cancelled.
pub fn watch(shared: Arc<Shared>, shutdown: CancellationToken) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(ev.paths);
            }
        }
    })?;
    let mut watched = BTreeSet::new();
    for dir in watch_dirs(&shared) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        watched.insert(dir);
    }
    tokio::spawn(async move {
        loop {
            let paths = tokio::select! {
                got = rx.recv() => match got { Some(p) => p, None => break },
                _ = shutdown.cancelled() => break,
            };
            if !concerns_config(&shared, &paths) {
                continue;
            }
            // Debounce: wait until the burst of events about config files settles. Other files
            // in the same directories (an audit log, say) change all the time and are ignored.
            let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(quiet_at) => break,
                    got = rx.recv() => match got {
                        Some(p) if concerns_config(&shared, &p) => {
                            quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
            if shared.reload().is_ok() {
                for dir in watch_dirs(&shared) {
                    if !watched.contains(&dir)
                        && watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok()
                    {
                        watched.insert(dir);
                    }
                }
            }
        }
        drop(watcher);
    });
    Ok(())
}

/// Reloads on every SIGHUP until `shutdown` is cancelled.
#[cfg(unix)]
pub fn on_sighup(shared: Arc<Shared>, shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { break },
                _ = shutdown.cancelled() => break,
            }
            tracing::info!("SIGHUP: reloading");
            let _ = shared.reload();
        }
    });
    Ok(())
}
