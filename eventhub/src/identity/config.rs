//! [`IdentityConfig`]: how a binary authenticates to Event Hubs, as the user writes it.
//!
//! Every field falls back to the variable the Azure SDKs read (`AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST`; the client secret `AZURE_CLIENT_SECRET`), so a workload-identity
//! pod or an App Service works with no tcpulse-specific setting. A configured value wins
//! over the variable; a secret file wins over `AZURE_CLIENT_SECRET` (the rule of
//! [`crate::secret`]).

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

use super::client::{Certificate, ClientCredential, Proof, DEFAULT_AUTHORITY_HOST};
use super::managed::{ManagedIdentity, UserAssigned};
use super::{CachedCredential, IdentityError};

/// `AZURE_TENANT_ID`.
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
/// `AZURE_CLIENT_ID`.
pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// `AZURE_CLIENT_SECRET` (the secret's value).
pub const ENV_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
/// `AZURE_CLIENT_CERTIFICATE_PATH`.
pub const ENV_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
/// `AZURE_FEDERATED_TOKEN_FILE`.
pub const ENV_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// `AZURE_AUTHORITY_HOST`.
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";

/// How to authenticate to Event Hubs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A shared access key or signature in a connection string (the default).
    #[default]
    ConnectionString,
    /// The machine's managed identity (Azure VM, scale set, App Service): no secret.
    ManagedIdentity,
    /// A service principal with a client secret (from a file or `AZURE_CLIENT_SECRET`).
    ClientSecret,
    /// A service principal with a certificate (PEM file with the certificate and its key).
    ClientCertificate,
    /// Workload identity: a federated token file (Kubernetes, or any OIDC issuer).
    WorkloadIdentity,
}

impl AuthMethod {
    /// The name used in configs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ConnectionString => "connection_string",
            AuthMethod::ManagedIdentity => "managed_identity",
            AuthMethod::ClientSecret => "client_secret",
            AuthMethod::ClientCertificate => "client_certificate",
            AuthMethod::WorkloadIdentity => "workload_identity",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            AuthMethod::ConnectionString,
            AuthMethod::ManagedIdentity,
            AuthMethod::ClientSecret,
            AuthMethod::ClientCertificate,
            AuthMethod::WorkloadIdentity,
        ];
        all.into_iter()
            .find(|m| m.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown auth '{s}': use connection_string, managed_identity, client_secret, client_certificate or workload_identity")
            })
    }
}

/// Entra ID settings of the `managed_identity`, `client_secret`, `client_certificate` and
/// `workload_identity` methods (all optional; each names the variable it falls back to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema, clap::Args))]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Directory (tenant) id of the service principal. Default: AZURE_TENANT_ID.
    #[cfg_attr(feature = "cli", arg(long = "azure-tenant-id", value_name = "ID"))]
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id: the service principal's, or a user-assigned managed
    /// identity's. Default: AZURE_CLIENT_ID (for managed identity: the system-assigned
    /// identity).
    #[cfg_attr(feature = "cli", arg(long = "azure-client-id", value_name = "ID"))]
    #[serde(default)]
    pub client_id: Option<String>,
    /// A user-assigned managed identity by object (principal) id instead. Default: none.
    #[cfg_attr(feature = "cli", arg(long = "azure-object-id", value_name = "ID"))]
    #[serde(default)]
    pub object_id: Option<String>,
    /// A user-assigned managed identity by ARM resource id instead. Default: none.
    #[cfg_attr(feature = "cli", arg(long = "azure-resource-id", value_name = "ID"))]
    #[serde(default)]
    pub resource_id: Option<String>,
    /// File whose first line is the client secret; it wins over AZURE_CLIENT_SECRET (one
    /// WARN when both are set). The secret is never a flag. Default: none.
    #[cfg_attr(
        feature = "cli",
        arg(long = "azure-client-secret-file", value_name = "FILE")
    )]
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM file with the client certificate and its RSA private key. Default:
    /// AZURE_CLIENT_CERTIFICATE_PATH.
    #[cfg_attr(
        feature = "cli",
        arg(long = "azure-client-certificate-file", value_name = "FILE")
    )]
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    /// Federated token file of workload identity, re-read for every token. Default:
    /// AZURE_FEDERATED_TOKEN_FILE.
    #[cfg_attr(
        feature = "cli",
        arg(long = "azure-federated-token-file", value_name = "FILE")
    )]
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// Entra ID authority (a sovereign cloud's). Default: AZURE_AUTHORITY_HOST, else
    /// https://login.microsoftonline.com.
    #[cfg_attr(
        feature = "cli",
        arg(long = "azure-authority-host", value_name = "URL")
    )]
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Managed identity endpoint host instead of IMDS's http://169.254.169.254. Default:
    /// AZURE_POD_IDENTITY_AUTHORITY_HOST; IDENTITY_ENDPOINT + IDENTITY_HEADER (App Service)
    /// take precedence over IMDS.
    #[cfg_attr(feature = "cli", arg(long = "azure-imds-endpoint", value_name = "URL"))]
    #[serde(default)]
    pub imds_endpoint: Option<String>,
}

fn or<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.or(b)
}

impl IdentityConfig {
    /// Field by field, `self` where set, else `fallback` (flags over the config file).
    pub fn or(self, fallback: IdentityConfig) -> IdentityConfig {
        IdentityConfig {
            tenant_id: or(self.tenant_id, fallback.tenant_id),
            client_id: or(self.client_id, fallback.client_id),
            object_id: or(self.object_id, fallback.object_id),
            resource_id: or(self.resource_id, fallback.resource_id),
            client_secret_file: or(self.client_secret_file, fallback.client_secret_file),
            client_certificate_file: or(
                self.client_certificate_file,
                fallback.client_certificate_file,
            ),
            federated_token_file: or(self.federated_token_file, fallback.federated_token_file),
            authority_host: or(self.authority_host, fallback.authority_host),
            imds_endpoint: or(self.imds_endpoint, fallback.imds_endpoint),
        }
    }

    /// The credential of an Entra ID `method`, `None` for `connection_string`. Reads the
    /// environment through `var` and the secret file; never connects.
    pub fn credential(
        &self,
        method: AuthMethod,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Arc<CachedCredential>>, IdentityError> {
        let pick = |v: &Option<String>, env: &str| v.clone().or_else(|| var(env));
        let inner: Arc<dyn super::TokenCredential> = match method {
            AuthMethod::ConnectionString => return Ok(None),
            AuthMethod::ManagedIdentity => Arc::new(ManagedIdentity::new(
                self.user_assigned(var)?,
                self.imds_endpoint.as_deref(),
                var,
            )),
            m => {
                let need = |v: Option<String>, what: &str, flag: &str, env: &str| {
                    v.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                        IdentityError::Config(format!(
                            "auth = \"{m}\" needs {what}: set {flag} or {env}"
                        ))
                    })
                };
                let tenant = need(
                    pick(&self.tenant_id, ENV_TENANT_ID),
                    "the tenant id",
                    "tenant_id (--azure-tenant-id)",
                    ENV_TENANT_ID,
                )?;
                let client = need(
                    pick(&self.client_id, ENV_CLIENT_ID),
                    "the client id",
                    "client_id (--azure-client-id)",
                    ENV_CLIENT_ID,
                )?;
                let authority = pick(&self.authority_host, ENV_AUTHORITY_HOST)
                    .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string());
                let proof = self.proof(m, var)?;
                Arc::new(ClientCredential::new(&authority, &tenant, &client, proof)?)
            }
        };
        Ok(Some(Arc::new(CachedCredential::new(inner))))
    }

    fn user_assigned(
        &self,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<UserAssigned, IdentityError> {
        let ids = [&self.client_id, &self.object_id, &self.resource_id];
        if ids.iter().filter(|v| v.is_some()).count() > 1 {
            return Err(IdentityError::Config(
                "give at most one of client_id, object_id and resource_id for a user-assigned managed identity".into(),
            ));
        }
        Ok(
            match (&self.client_id, &self.object_id, &self.resource_id) {
                (Some(c), _, _) => UserAssigned::ClientId(c.clone()),
                (_, Some(o), _) => UserAssigned::ObjectId(o.clone()),
                (_, _, Some(r)) => UserAssigned::ResourceId(r.clone()),
                _ => var(ENV_CLIENT_ID).map_or(UserAssigned::None, UserAssigned::ClientId),
            },
        )
    }

    fn proof(
        &self,
        m: AuthMethod,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Proof, IdentityError> {
        let path =
            |v: &Option<PathBuf>, env: &str| v.clone().or_else(|| var(env).map(PathBuf::from));
        match m {
            AuthMethod::ClientSecret => {
                let loaded = crate::secret::load_with(
                    "Entra ID client secret",
                    Some(ENV_CLIENT_SECRET),
                    self.client_secret_file.as_deref(),
                    var,
                )
                .map_err(|e| IdentityError::Config(e.to_string()))?
                .ok_or_else(|| IdentityError::Config(format!("auth = \"client_secret\" needs the secret: set client_secret_file (--azure-client-secret-file) or {ENV_CLIENT_SECRET}")))?;
                loaded.log_conflict();
                Ok(Proof::Secret(loaded.into_value()))
            }
            AuthMethod::ClientCertificate => {
                let file = path(&self.client_certificate_file, ENV_CLIENT_CERTIFICATE_PATH).ok_or_else(|| IdentityError::Config(format!("auth = \"client_certificate\" needs client_certificate_file (--azure-client-certificate-file) or {ENV_CLIENT_CERTIFICATE_PATH}")))?;
                Ok(Proof::Certificate(Box::new(Certificate::from_pem_file(
                    &file,
                )?)))
            }
            _ => {
                let file = path(&self.federated_token_file, ENV_FEDERATED_TOKEN_FILE).ok_or_else(|| IdentityError::Config(format!("auth = \"workload_identity\" needs federated_token_file (--azure-federated-token-file) or {ENV_FEDERATED_TOKEN_FILE}")))?;
                Ok(Proof::FederatedTokenFile(file))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_by_their_config_names() {
        assert_eq!(
            "managed_identity".parse::<AuthMethod>(),
            Ok(AuthMethod::ManagedIdentity)
        );
        assert!("msi"
            .parse::<AuthMethod>()
            .unwrap_err()
            .contains("workload_identity"));
    }

    #[test]
    fn missing_settings_name_the_setting_and_the_variable() {
        let none = |_: &str| None;
        let c = IdentityConfig::default();
        let m = AuthMethod::ClientSecret;
        let e = c.credential(m, &none).unwrap_err().to_string();
        assert!(
            e.contains("tenant_id") && e.contains("AZURE_TENANT_ID"),
            "{e}"
        );
        let env = |k: &str| match k {
            ENV_TENANT_ID => Some("t".to_string()),
            ENV_CLIENT_ID => Some("c".to_string()),
            _ => None,
        };
        let e = c.credential(m, &env).unwrap_err().to_string();
        assert!(e.contains("AZURE_CLIENT_SECRET"), "{e}");
        let with_secret = |k: &str| match k {
            ENV_CLIENT_SECRET => Some("S3CRET".to_string()),
            k => env(k),
        };
        let cred = c.credential(m, &with_secret).unwrap().unwrap();
        assert!(!format!("{cred:?}").contains("S3CRET"));
        let two = IdentityConfig {
            client_id: Some("a".into()),
            object_id: Some("b".into()),
            ..IdentityConfig::default()
        };
        assert!(two.credential(AuthMethod::ManagedIdentity, &none).is_err());
        let sas = AuthMethod::ConnectionString;
        assert!(c.credential(sas, &none).unwrap().is_none());
    }
}
