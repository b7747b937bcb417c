//! The `http` source: one GET per poll.

use super::HttpConfig;
use crate::sources::extract::parse_reading;
use crate::sources::fetch::{Fetcher, FetcherError};
use crate::sources::{Sample, SourceError};

/// GETs the status URL once per poll.
#[derive(Debug)]
pub struct HttpSource {
    cfg: HttpConfig,
    fetcher: Fetcher,
}

impl HttpSource {
    /// A source for `cfg.url`.
    pub fn new(cfg: HttpConfig) -> Result<Self, FetcherError> {
        let fetcher = Fetcher::new(cfg.timeout, None)?;
        Ok(HttpSource { cfg, fetcher })
    }

    /// GETs and parses the document now.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        let text = self.fetcher.get_text(&self.cfg.url).await?;
        Ok(vec![parse_reading(
            &text,
            &self.cfg.pointers,
            self.cfg.max_calls,
        )?])
    }
}
