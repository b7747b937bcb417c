//! `[checkpoint.azure_blob]`: which container, and how to authorize.
//!
//! Either a `container_url` with the account key from a file or the environment, or a
//! storage connection string (from a file or the environment: it holds the key) plus
//! `container`. The key never goes in the config or on a command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tcpulse_eventhub::identity::{
    AuthMethod, CachedCredential, IdentityConfig, TokenCredential, STORAGE_SCOPE,
};

use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::secret::{self, Loaded};

use super::auth::{BearerTokenSource, BlobAuth, SharedKey};
use super::client::BlobClient;
use super::BlobCheckpointStore;

/// What the storage connection string is called in messages.
pub const BLOB_CONNECTION_STRING: &str = "storage connection string";
/// What the account key is called in messages.
pub const BLOB_ACCOUNT_KEY: &str = "storage account key";

/// The Azure Blob container of the checkpoints and partition ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobConfig {
    /// How requests are authorized: `connection_string` (the storage account's key, from
    /// `account_key_*` with `container_url` or from a storage connection string; the
    /// default), or an Entra ID identity with the role "Storage Blob Data Contributor" on
    /// the container: `managed_identity`, `client_secret`, `client_certificate`,
    /// `workload_identity` (settings in `[checkpoint.azure_blob.identity]`; needs
    /// `container_url`). Default: `connection_string`.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Entra ID settings of the identity (as `[source.eventhub.identity]`: `tenant_id`,
    /// `client_id`, `client_secret_file`, …, each falling back to the `AZURE_*` variables).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The container's URL, e.g. `https://<account>.blob.core.windows.net/tcpulse-checkpoints`
    /// (Azurite: `http://127.0.0.1:10000/devstoreaccount1/<container>`). With it, the
    /// account key comes from `account_key_file` or `account_key_env`. Without it, a
    /// connection string and `container` are needed. Default: none.
    #[serde(default)]
    pub container_url: Option<String>,
    /// The storage account's name, for signing with the key. Default: taken from
    /// `container_url` (the first label of the host, or the first path segment for an IP
    /// address or `localhost`, as Azurite serves accounts).
    #[serde(default)]
    pub account_name: Option<String>,
    /// Environment variable holding the account key (key1 or key2, Base64).
    /// Default: `TCPULSE_BLOB_ACCOUNT_KEY`.
    #[serde(default = "default_account_key_env")]
    pub account_key_env: String,
    /// File holding the account key (first line); wins over the variable. Default: none.
    #[serde(default)]
    pub account_key_file: Option<PathBuf>,
    /// The container, with a connection string. Default: none.
    #[serde(default)]
    pub container: Option<String>,
    /// Environment variable holding a storage connection string
    /// (`DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net`,
    /// or with `BlobEndpoint=…`), used when `container_url` is not set.
    /// Default: `TCPULSE_BLOB_CONNECTION_STRING`.
    #[serde(default = "default_connection_string_env")]
    pub connection_string_env: String,
    /// File holding the storage connection string (first line); wins over the variable.
    /// Default: none.
    #[serde(default)]
    pub connection_string_file: Option<PathBuf>,
    /// A PEM file of extra CA certificates trusted besides the built-in roots (a private CA,
    /// a TLS-inspecting proxy's). Default: none.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Timeout of each request to the Blob service. Default: 10s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

fn default_account_key_env() -> String {
    "TCPULSE_BLOB_ACCOUNT_KEY".into()
}
fn default_connection_string_env() -> String {
    "TCPULSE_BLOB_CONNECTION_STRING".into()
}
const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for AzureBlobConfig {
    fn default() -> Self {
        AzureBlobConfig {
            auth: AuthMethod::default(),
            identity: IdentityConfig::default(),
            container_url: None,
            account_name: None,
            account_key_env: default_account_key_env(),
            account_key_file: None,
            container: None,
            connection_string_env: default_connection_string_env(),
            connection_string_file: None,
            extra_ca_file: None,
            request_timeout: default_request_timeout(),
        }
    }
}

/// Entra ID tokens of scope [`STORAGE_SCOPE`] from a cached credential (renewed before
/// expiry, failures backed off and logged there).
#[derive(Debug)]
struct EntraStorageToken(Arc<CachedCredential>);

impl BearerTokenSource for EntraStorageToken {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.0
                .get_token(STORAGE_SCOPE)
                .await
                .map(|t| t.token)
                .map_err(|e| e.to_string())
        })
    }
}

/// Why the Blob store cannot be set up; the message names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint.azure_blob: {0}")]
pub struct AzureBlobBuildError(pub String);

/// The parts of a storage connection string the store uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConnectionString {
    /// `AccountName`.
    pub account: String,
    /// `AccountKey` (Base64).
    pub key: String,
    /// The Blob endpoint: `BlobEndpoint`, else `<protocol>://<account>.blob.<suffix>`.
    pub blob_endpoint: String,
}

impl StorageConnectionString {
    /// Parses `AccountName`, `AccountKey`, and `BlobEndpoint` or
    /// `DefaultEndpointsProtocol` + `EndpointSuffix` (keys case-insensitive).
    pub fn parse(s: &str) -> Result<Self, String> {
        let get = |name: &str| {
            s.split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let account = get("AccountName").ok_or("the connection string has no AccountName")?;
        let key = get("AccountKey").ok_or(
            "the connection string has no AccountKey (a SAS connection string is not supported)",
        )?;
        let blob_endpoint = match get("BlobEndpoint") {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => {
                let protocol = get("DefaultEndpointsProtocol").unwrap_or_else(|| "https".into());
                let suffix = get("EndpointSuffix").unwrap_or_else(|| "core.windows.net".into());
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        Ok(StorageConnectionString {
            account,
            key,
            blob_endpoint,
        })
    }
}

/// The account a container URL belongs to: the first path segment for an IP address or
/// `localhost` (Azurite's path-style URLs), else the host's first label.
pub fn account_from_url(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let path_style =
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[');
    if path_style {
        url.path_segments()?
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    } else {
        host.split('.').next().map(str::to_owned)
    }
}

impl AzureBlobConfig {
    fn load(
        &self,
        what: &str,
        env: &str,
        file: Option<&std::path::Path>,
    ) -> Result<Option<Loaded>, AzureBlobBuildError> {
        let loaded =
            secret::load(what, Some(env), file).map_err(|e| AzureBlobBuildError(e.to_string()))?;
        if let Some(l) = &loaded {
            l.log_conflict();
        }
        Ok(loaded)
    }

    /// The container URL and the shared key, resolved from the settings and secrets.
    pub fn resolve(&self) -> Result<(reqwest::Url, SharedKey), AzureBlobBuildError> {
        let bad = |m: String| AzureBlobBuildError(m);
        if let Some(raw) = &self.container_url {
            let url =
                reqwest::Url::parse(raw).map_err(|e| bad(format!("container_url {raw:?}: {e}")))?;
            let account = self
                .account_name
                .clone()
                .or_else(|| account_from_url(&url))
                .ok_or_else(|| {
                    bad(format!(
                        "cannot tell the account from container_url {raw:?}; set `account_name`"
                    ))
                })?;
            let key = self
                .load(
                    BLOB_ACCOUNT_KEY,
                    &self.account_key_env,
                    self.account_key_file.as_deref(),
                )?
                .ok_or_else(|| {
                    bad(format!(
                        "no account key: export {} or set `account_key_file`",
                        self.account_key_env
                    ))
                })?;
            let key = SharedKey::new(&account, key.expose()).map_err(bad)?;
            return Ok((url, key));
        }
        let cs = self
            .load(BLOB_CONNECTION_STRING, &self.connection_string_env, self.connection_string_file.as_deref())?
            .ok_or_else(|| bad(format!("set `container_url` (with the account key), or a connection string: export {} or set `connection_string_file`", self.connection_string_env)))?;
        let parsed = StorageConnectionString::parse(cs.expose()).map_err(|e| {
            bad(format!(
                "the {BLOB_CONNECTION_STRING} from {}: {e}",
                cs.origin()
            ))
        })?;
        let container = self
            .container
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("with a connection string, set `container`".into()))?;
        let url = reqwest::Url::parse(&format!("{}/{container}", parsed.blob_endpoint))
            .map_err(|e| bad(format!("the connection string's Blob endpoint: {e}")))?;
        let account = self.account_name.clone().unwrap_or(parsed.account);
        let key = SharedKey::new(&account, &parsed.key).map_err(bad)?;
        Ok((url, key))
    }

    /// The store, ready to use (nothing is contacted).
    pub fn build(&self) -> Result<BlobCheckpointStore, AzureBlobBuildError> {
        let (url, auth) = if self.auth == AuthMethod::ConnectionString {
            let (url, key) = self.resolve()?;
            (url, BlobAuth::SharedKey(key))
        } else {
            self.resolve_entra()?
        };
        let pem = match &self.extra_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                AzureBlobBuildError(format!("extra_ca_file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let client = BlobClient::with_extra_ca(url, auth, self.request_timeout, pem.as_deref())
            .map_err(AzureBlobBuildError)?;
        Ok(BlobCheckpointStore::new(client))
    }

    /// The container URL and an Entra ID bearer source for an identity `auth`.
    fn resolve_entra(&self) -> Result<(reqwest::Url, BlobAuth), AzureBlobBuildError> {
        let bad = |m: String| AzureBlobBuildError(m);
        let raw = self.container_url.as_deref().ok_or_else(|| {
            bad(format!(
                "auth = \"{}\" needs `container_url` (https://<account>.blob.core.windows.net/<container>)",
                self.auth
            ))
        })?;
        let url =
            reqwest::Url::parse(raw).map_err(|e| bad(format!("container_url {raw:?}: {e}")))?;
        let credential = self
            .identity
            .credential(self.auth, &|k| std::env::var(k).ok())
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("no credential".into()))?;
        Ok((
            url,
            BlobAuth::Bearer(Arc::new(EntraStorageToken(credential))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_and_urls_give_endpoint_and_account() {
        let cs = StorageConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;",
        )
        .unwrap();
        assert_eq!(cs.blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(cs.account, "devstoreaccount1");
        let cs = StorageConnectionString::parse(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(cs.blob_endpoint, "https://acct.blob.core.windows.net");
        assert!(
            StorageConnectionString::parse("AccountName=a;SharedAccessSignature=sv=1").is_err()
        );
        let url = |s| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            account_from_url(&url("https://acct.blob.core.windows.net/c")).as_deref(),
            Some("acct")
        );
        assert_eq!(
            account_from_url(&url("http://127.0.0.1:10000/devstoreaccount1/c")).as_deref(),
            Some("devstoreaccount1")
        );
    }

    #[test]
    fn a_missing_key_names_the_variable_and_the_file_setting() {
        let c = AzureBlobConfig {
            container_url: Some("https://acct.blob.core.windows.net/c".into()),
            account_key_env: "TCPULSE_TEST_UNSET_BLOB_KEY_VARIABLE".into(),
            ..AzureBlobConfig::default()
        };
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.contains("TCPULSE_TEST_UNSET_BLOB_KEY_VARIABLE") && e.contains("account_key_file"),
            "{e}"
        );
        let c = AzureBlobConfig {
            connection_string_env: "TCPULSE_TEST_UNSET_BLOB_CS_VARIABLE".into(),
            ..AzureBlobConfig::default()
        };
        let e = c.resolve().unwrap_err().to_string();
        assert!(
            e.contains("container_url") && e.contains("TCPULSE_TEST_UNSET_BLOB_CS_VARIABLE"),
            "{e}"
        );
    }
}
