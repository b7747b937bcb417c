//! [`ClientSecretSource`]: a `TokenSource` for our Event Hubs client that gets Entra ID
//! tokens from the loopback [`super::TokenServer`] with a client secret, for the hub's tests.
//! (The product's credentials live in the eventhub crate; this one exists so the hub's
//! `jwt` handling can be tested on its own.)

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::Value;
use tcpulse_eventhub::client::{AccessToken, TokenError, TokenSource, TokenType};

/// Client credentials with a secret against `{authority}/{tenant}/oauth2/v2.0/token`,
/// scope `https://eventhubs.azure.net/.default`. `Debug` never shows the secret.
#[derive(Clone)]
pub struct ClientSecretSource {
    token_url: String,
    client_id: String,
    secret: String,
    scope: String,
}

impl std::fmt::Debug for ClientSecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecretSource")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientSecretSource {
    /// A source for `client_id` with `secret` at `token_url` (see
    /// [`super::TokenServer::token_url`]).
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        ClientSecretSource {
            token_url: token_url.into(),
            client_id: client_id.into(),
            secret: secret.into(),
            scope: format!("{}/.default", super::EVENTHUBS_AUDIENCE),
        }
    }

    /// One token request; blocking (ureq).
    fn fetch(&self) -> Result<AccessToken, TokenError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let mut resp = agent.post(&self.token_url).send_form(form).map_err(|e| {
            TokenError::transient(format!("token endpoint {}: {e}", self.token_url))
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json().map_err(|e| {
            TokenError::transient(format!(
                "token endpoint answered {status} without JSON: {e}"
            ))
        })?;
        if status != 200 {
            let text = format!(
                "token endpoint answered {status}: {} {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            );
            return Err(if status >= 500 {
                TokenError::transient(text)
            } else {
                TokenError::fatal(text)
            });
        }
        let token = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let expires_in = body["expires_in"].as_u64().unwrap_or_default();
        Ok(AccessToken {
            token,
            token_type: TokenType::Jwt,
            expires_at: SystemTime::now() + Duration::from_secs(expires_in),
        })
    }
}

impl TokenSource for ClientSecretSource {
    fn token<'a>(&'a self, _audience: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        let me = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.fetch())
                .await
                .map_err(|e| TokenError::transient(format!("token fetch task failed: {e}")))?
        })
    }
}
