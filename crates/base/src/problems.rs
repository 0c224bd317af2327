//! Config problems: every error found while loading a config or policy file names the file, the
//! dotted field path and the reason, and loading collects all of them before refusing.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config or policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted field path, e.g. `listener.tls.client_ca[0]`; empty for whole-file errors.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

/// Every problem found while loading; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors against one file.
pub struct Problems<'a> {
    file: &'a Path,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(file: &'a Path, errors: &'a mut Vec<ConfigError>) -> Self {
        Problems { file, errors }
    }

    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// A path from a config file, relative to the directory of the file that names it.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
