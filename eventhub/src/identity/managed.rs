//! Managed identity: the VM's (or App Service's) own identity, no secret on the machine.
//!
//! Which endpoint, as azure-identity 1.27.0 `_credentials/managed_identity.py:82-140` and
//! MSAL 1.39.0 `msal/managed_identity.py:407-500` choose it (the sources this module
//! supports; Service Fabric, Arc and Azure ML are not):
//! - `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set: App Service style, `GET
//!   $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…` with header `X-IDENTITY-HEADER`
//!   (`_credentials/app_service.py`); a user-assigned identity by `client_id`,
//!   `principal_id` (object id) or `mi_res_id`.
//! - otherwise IMDS, the Azure VM and scale-set endpoint: `GET
//!   http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`
//!   with header `Metadata: true` (`_credentials/imds.py`); user-assigned by `client_id`,
//!   `object_id` or `msi_res_id`. The host can be overridden by
//!   `AZURE_POD_IDENTITY_AUTHORITY_HOST` (as in azure-identity) or `imds_endpoint` in the
//!   config; the tests point it at a loopback token server.
//!
//! IMDS answers 404 or 410 while an identity is still being assigned to a new VM (azure-
//! identity retries those); they arrive here as [`IdentityError::Unreachable`], so they are
//! retried with backoff like a network error.
//!
//! The resource is the scope without its `/.default` suffix (`https://eventhubs.azure.net`).

use futures::future::BoxFuture;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::http::{TokenHttp, TokenRequest};
use super::{AccessToken, IdentityError, TokenCredential};

/// The IMDS host of every Azure VM.
pub const IMDS_HOST: &str = "http://169.254.169.254";
/// The IMDS token path.
pub const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// App Service's endpoint variable.
pub const ENV_IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// App Service's header secret variable.
pub const ENV_IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// azure-identity's IMDS host override.
pub const ENV_IMDS_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

/// Which identity of the machine: the system-assigned one, or a user-assigned one by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UserAssigned {
    /// The system-assigned identity.
    #[default]
    None,
    /// By client (application) id.
    ClientId(String),
    /// By object (principal) id.
    ObjectId(String),
    /// By ARM resource id.
    ResourceId(String),
}

/// The endpoint in use.
#[derive(Clone, PartialEq, Eq)]
enum Endpoint {
    AppService { url: String, header: String },
    Imds { host: String },
}

/// A managed identity credential.
#[derive(Clone)]
pub struct ManagedIdentity {
    endpoint: Endpoint,
    which: UserAssigned,
    http: TokenHttp,
}

impl std::fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = match &self.endpoint {
            Endpoint::AppService { url, .. } => format!("app service {url}"),
            Endpoint::Imds { host } => format!("imds {host}"),
        };
        f.debug_struct("ManagedIdentity")
            .field("endpoint", &endpoint)
            .field("which", &self.which)
            .finish()
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `https://eventhubs.azure.net/.default` → `https://eventhubs.azure.net`.
pub fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

impl ManagedIdentity {
    /// Chooses the endpoint from the environment (read through `var`) and the configured
    /// IMDS host override.
    pub fn new(
        which: UserAssigned,
        imds_host: Option<&str>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> ManagedIdentity {
        let endpoint = match (var(ENV_IDENTITY_ENDPOINT), var(ENV_IDENTITY_HEADER)) {
            (Some(url), Some(header)) => Endpoint::AppService { url, header },
            _ => Endpoint::Imds {
                host: imds_host
                    .map(str::to_string)
                    .or_else(|| var(ENV_IMDS_HOST))
                    .unwrap_or_else(|| IMDS_HOST.to_string())
                    .trim_end_matches('/')
                    .to_string(),
            },
        };
        ManagedIdentity {
            endpoint,
            which,
            http: TokenHttp::new(),
        }
    }

    /// Where tokens come from, for the start-up log (no secret).
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::AppService { url, .. } => format!("App Service endpoint {url}"),
            Endpoint::Imds { host } => format!("IMDS {host}{IMDS_TOKEN_PATH}"),
        }
    }

    fn request(&self, scope: &str) -> TokenRequest {
        let resource = enc(resource_of(scope));
        match &self.endpoint {
            Endpoint::AppService { url, header } => {
                let id = match &self.which {
                    UserAssigned::None => String::new(),
                    UserAssigned::ClientId(v) => format!("&client_id={}", enc(v)),
                    UserAssigned::ObjectId(v) => format!("&principal_id={}", enc(v)),
                    UserAssigned::ResourceId(v) => format!("&mi_res_id={}", enc(v)),
                };
                TokenRequest {
                    url: format!("{url}?api-version=2019-08-01&resource={resource}{id}"),
                    headers: vec![("X-IDENTITY-HEADER", header.clone())],
                    form: None,
                }
            }
            Endpoint::Imds { host } => {
                let id = match &self.which {
                    UserAssigned::None => String::new(),
                    UserAssigned::ClientId(v) => format!("&client_id={}", enc(v)),
                    UserAssigned::ObjectId(v) => format!("&object_id={}", enc(v)),
                    UserAssigned::ResourceId(v) => format!("&msi_res_id={}", enc(v)),
                };
                TokenRequest {
                    url: format!(
                        "{host}{IMDS_TOKEN_PATH}?api-version=2018-02-01&resource={resource}{id}"
                    ),
                    headers: vec![("Metadata", "true".into())],
                    form: None,
                }
            }
        }
    }
}

impl TokenCredential for ManagedIdentity {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, IdentityError>> {
        Box::pin(async move {
            let imds = matches!(self.endpoint, Endpoint::Imds { .. });
            match self.http.fetch(self.request(scope)).await {
                Err(IdentityError::Refused {
                    endpoint,
                    status: status @ (404 | 410),
                    ..
                }) if imds => Err(IdentityError::Unreachable {
                    endpoint,
                    why: format!("HTTP {status}"),
                    hint: "IMDS answers so while the VM's managed identity is being assigned; retrying",
                }),
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn app_service_variables_win_over_imds() {
        let mi = ManagedIdentity::new(
            UserAssigned::ObjectId("o-1".into()),
            None,
            &env(&[
                (ENV_IDENTITY_ENDPOINT, "http://127.0.0.1:9/msi/token"),
                (ENV_IDENTITY_HEADER, "HDRSECRET"),
            ]),
        );
        let r = mi.request("https://eventhubs.azure.net/.default");
        assert_eq!(
            r.url,
            "http://127.0.0.1:9/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Feventhubs%2Eazure%2Enet&principal_id=o%2D1"
        );
        assert_eq!(r.headers, vec![("X-IDENTITY-HEADER", "HDRSECRET".into())]);
        assert!(!format!("{mi:?}").contains("HDRSECRET"));
    }

    #[test]
    fn imds_is_the_default_and_its_host_can_be_overridden() {
        let mi = ManagedIdentity::new(UserAssigned::None, None, &env(&[]));
        let r = mi.request("https://eventhubs.azure.net/.default");
        assert!(r.url.starts_with(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
        ));
        assert_eq!(r.headers, vec![("Metadata", "true".into())]);
        let only_header = env(&[
            (ENV_IDENTITY_HEADER, "x"),
            (ENV_IMDS_HOST, "http://127.0.0.1:7/"),
        ]);
        let mi = ManagedIdentity::new(UserAssigned::ClientId("c".into()), None, &only_header);
        let url = mi.request("s").url;
        assert!(url.starts_with("http://127.0.0.1:7/metadata/"), "{url}");
        assert!(url.ends_with("&client_id=c"), "{url}");
        let mi = ManagedIdentity::new(UserAssigned::None, Some("http://[::1]:5"), &only_header);
        assert!(mi.describe().contains("[::1]:5"));
    }
}
