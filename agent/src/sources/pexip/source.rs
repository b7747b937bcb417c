//! The `pexip` source: page through `/api/admin/status/v1/teamsnode/` and map each node.

use std::collections::BTreeMap;

use serde_json::Value;
use tcpulse_schema::{Calls, State, Timestamp};

use super::PexipConfig;
use crate::sources::extract::{as_count, as_percent, parse_state};
use crate::sources::fetch::{Fetcher, FetcherError};
use crate::sources::{Sample, SourceError};

/// Path of Pexip's Teams Connector node status resource.
pub const TEAMSNODE_PATH: &str = "/api/admin/status/v1/teamsnode/";
/// Objects asked for per page.
const PAGE_LIMIT: u32 = 500;
/// Pages followed at most (a fleet of 10 000 nodes).
const MAX_PAGES: usize = 20;

/// Polls one Management Node.
#[derive(Debug)]
pub struct PexipSource {
    base: String,
    fetcher: Fetcher,
    connectors: BTreeMap<String, String>,
}

/// Reads a Pexip datetime: RFC 3339, or Pexip's offset-less form (UTC).
pub fn parse_pexip_time(s: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(s)
        .or_else(|_| Timestamp::parse_rfc3339(&format!("{s}Z")))
        .ok()
}

/// Maps one `teamsnode` object to a sample; `None` when it has no name.
pub fn node_sample(node: &Value, connectors: &BTreeMap<String, String>) -> Option<Sample> {
    let text = |k: &str| {
        node.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let instance = text("name").or_else(|| text("id"))?.to_owned();
    let scaleset = text("scaleset_id").map(str::to_owned);
    let mut state = text("state").map_or(State::Unknown, parse_state);
    if state == State::Unknown {
        state = text("instance_status").map_or(State::Unknown, parse_state);
    }
    let calls = node.get("call_count").and_then(as_count).map(|n| Calls {
        call_count: u32::try_from(n).unwrap_or(u32::MAX),
        max_calls: node
            .get("max_calls")
            .and_then(as_count)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(tcpulse_schema::capacity::MAX_CALLS_PER_INSTANCE),
        planned_calls: None,
        media_load: node.get("media_load").and_then(as_percent),
    });
    Some(Sample {
        connector: scaleset.as_ref().and_then(|s| connectors.get(s)).cloned(),
        instance: Some(instance),
        scaleset,
        state,
        calls,
        start_time: text("start_time").and_then(parse_pexip_time),
    })
}

impl PexipSource {
    /// A source for `cfg` with the resolved `password`.
    pub fn new(cfg: &PexipConfig, password: &str) -> Result<Self, FetcherError> {
        let fetcher = Fetcher::new(cfg.timeout, cfg.ca_file.as_deref())?
            .with_basic_auth(&cfg.username, password);
        Ok(PexipSource {
            base: cfg.url.trim_end_matches('/').to_owned(),
            fetcher,
            connectors: cfg.connectors.clone(),
        })
    }

    /// Reads every node now.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        let mut url = format!("{}{TEAMSNODE_PATH}?limit={PAGE_LIMIT}", self.base);
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let text = self.fetcher.get_text(&url).await?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| SourceError::Parse(format!("teamsnode answer is not JSON: {e}")))?;
            let objects = doc
                .get("objects")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    SourceError::Parse("teamsnode answer has no `objects` list".to_owned())
                })?;
            out.extend(
                objects
                    .iter()
                    .filter_map(|n| node_sample(n, &self.connectors)),
            );
            match doc.pointer("/meta/next").and_then(Value::as_str) {
                // `next` is a path on the same host (tastypie paging).
                Some(next) if next.starts_with('/') => url = format!("{}{next}", self.base),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_pexip_fields_and_states() {
        let mut map = BTreeMap::new();
        map.insert("tc-us-vmss".to_owned(), "tc-us.example.com".to_owned());
        let node = json!({"name": "tc-us-vmss_2", "scaleset_id": "tc-us-vmss", "state": "Waiting for termination",
            "call_count": 3, "max_calls": 16, "media_load": 41, "start_time": "2026-11-26T07:41:12.123456",
            "heartbeat_time": "2026-11-26T10:00:00", "ip_address": "10.0.0.5"});
        let s = node_sample(&node, &map).unwrap();
        assert_eq!(s.instance.as_deref(), Some("tc-us-vmss_2"));
        assert_eq!(s.connector.as_deref(), Some("tc-us.example.com"));
        assert_eq!(s.state, State::WaitingForTermination);
        assert_eq!(s.calls.unwrap().media_load, Some(41));
        assert_eq!(
            s.start_time.unwrap().to_string(),
            "2026-11-26T07:41:12.123Z"
        );
        let bare = node_sample(
            &json!({"name": "n", "instance_status": "Maintenance"}),
            &map,
        )
        .unwrap();
        assert_eq!(
            (bare.state, bare.calls, bare.connector),
            (State::Maintenance, None, None)
        );
        assert!(node_sample(&json!({"call_count": 1}), &map).is_none());
    }
}
