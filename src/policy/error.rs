//! The one error type of the policy module: every variant names the file
//! and, where there is one, the rule and field at fault.

use std::path::PathBuf;

/// Loading, validating or testing policies failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid YAML, or does not have the expected shape.
    #[error("{file}: {message}")]
    Parse {
        /// The file (or `<string>` for in-memory policies).
        file: String,
        /// Where in the document and what is wrong.
        message: String,
    },
    /// A rule or guard is well-formed YAML but means nothing valid.
    #[error("{file}: {item}: {field}: {problem}")]
    Invalid {
        /// The file (or `<string>`).
        file: String,
        /// `rule ID` or `guard ID` (or its position when it has no id).
        item: String,
        /// The field at fault, e.g. `match.args./path.glob`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file watcher could not be started.
    #[error("watching {}: {source}", path.display())]
    Watch {
        /// The watched directory.
        path: PathBuf,
        /// What the watcher said.
        #[source]
        source: notify::Error,
    },
}

impl PolicyError {
    pub(crate) fn invalid(
        file: &str,
        item: &str,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            file: file.to_owned(),
            item: item.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PolicyError {
        PolicyError::Io {
            path: path.into(),
            source,
        }
    }
}
