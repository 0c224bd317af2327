//! Preparing the real programs some tests run beside the proxy (the frameworks of the
//! differential harness, the oidc-provider authorization server): finding tools on PATH,
//! copying their sources into a work directory under target/tmp, and installing their npm
//! packages. Every failure is an error that names the command to run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The tool's path on PATH, if it is there.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

/// Copies `files` from `src` to `dst` (created if missing); true if any changed.
pub(crate) fn sync(src: &Path, dst: &Path, files: &[&str]) -> bool {
    std::fs::create_dir_all(dst).unwrap();
    // Not short-circuiting: every file is copied.
    let mut changed = false;
    for f in files {
        let new = std::fs::read(src.join(f)).unwrap();
        if std::fs::read(dst.join(f)).ok().as_ref() != Some(&new) {
            std::fs::write(dst.join(f), new).unwrap();
            changed = true;
        }
    }
    changed
}

/// Runs a preparation command; on failure, the error names the command and its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("{what} took {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Node and npm, or the command that installs them.
pub(crate) fn need_node(what: &str) -> Result<(), String> {
    for tool in ["node", "npm"] {
        if which(tool).is_none() {
            return Err(format!(
                "{what}: {tool} is missing; run: apt-get install -y nodejs npm"
            ));
        }
    }
    Ok(())
}

/// `npm ci` in `work` (pinned by its package-lock.json) when the manifest `changed` or
/// `installed` (a file inside node_modules) is missing.
pub(crate) fn npm_ci(
    work: &Path,
    changed: bool,
    installed: &str,
    what: &str,
) -> Result<(), String> {
    if !changed && work.join(installed).exists() {
        return Ok(());
    }
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(work),
        &format!("{what}: npm ci"),
    )
    .map_err(|e| {
        format!(
            "{e}\nrun: cd {} && npm ci   (needs the npm registry)",
            work.display()
        )
    })
}
