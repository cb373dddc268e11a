//! The desired config as a document: the file's keys, as API edits change
//! them. The file's text is validated on the daemon's start; its document
//! is parsed on a thread of its own meanwhile (at 10,000 services that
//! second parse took ~0.5 s, as long as the first) and waited for only by
//! the first API call that needs it.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use pnlb_core::config::{self, ConfigError, Document};

use crate::log::warning;

pub(super) struct DesiredDocument {
    parsing: Option<JoinHandle<Result<Document, ConfigError>>>,
    document: Document,
}

impl DesiredDocument {
    /// `text` (validated already) parsed into its document in the
    /// background.
    pub(super) fn parse(path: &Path, text: String) -> Self {
        let path: PathBuf = path.to_path_buf();
        Self {
            parsing: Some(std::thread::spawn(move || {
                config::parse_document(&path, &text)
            })),
            document: Document::new(),
        }
    }

    /// The document, once parsed. Text that validated parses; should it
    /// not, the document is empty and every edit is refused (the file's
    /// services are not in it) until a reload.
    pub(super) fn get(&mut self) -> &mut Document {
        if let Some(parsing) = self.parsing.take() {
            self.document = match parsing.join() {
                Ok(Ok(document)) => document,
                Ok(Err(err)) => {
                    warning!("the config's document: {err}; API edits are refused until a reload");
                    Document::new()
                }
                Err(_) => {
                    warning!("the config's document was not parsed; API edits are refused until a reload");
                    Document::new()
                }
            };
        }
        &mut self.document
    }
}
