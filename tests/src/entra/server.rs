//! [`TokenServer`]: the loopback token endpoints (App Service and IMDS managed identity,
//! client credentials), serving [`TestIssuer`] tokens.
//!
//! Request and response shapes (azure-identity 1.27.0 `_credentials/app_service.py`,
//! `_credentials/imds.py`; MSAL 1.39.0 `msal/managed_identity.py`; reference
//! `azure-blob-identity-websocket.md` §3):
//!
//! - App Service: `GET {base}/msi/token?api-version=2019-08-01&resource=R[&client_id=|
//!   &principal_id=|&mi_res_id=]` with `X-IDENTITY-HEADER`; answers `access_token`,
//!   `expires_on` (unix seconds as a string), `resource`, `token_type`, `client_id`.
//! - IMDS: `GET {host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=R
//!   [&client_id=|&object_id=|&msi_res_id=]` with `Metadata: true`; answers the same plus
//!   `expires_in` and `not_before` (strings).
//! - Client credentials: `POST {authority}/{tenant}/oauth2/v2.0/token`, form
//!   `grant_type=client_credentials`, `client_id`, `scope=R/.default`, and `client_secret`
//!   or `client_assertion_type` + `client_assertion`; answers `token_type`, `expires_in`,
//!   `ext_expires_in` (numbers), `access_token`.
//!
//! IMDS errors are the service's (`{"error":"invalid_request","error_description":"Identity
//! not found"}` for an unknown identity, seen in MicrosoftDocs/azure-docs#21322 and
//! Azure/terraform-provider-azapi#669; "Required metadata header not specified" for a
//! missing `Metadata` header, from memory of IMDS, not checked against a source here).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client_auth::{self, Params};
use super::issuer::{unix_now, TestIssuer};
use super::{Principal, EVENTHUBS_AUDIENCE};

/// What the server issues and to whom.
#[derive(Debug, Clone)]
pub struct TokenServerOptions {
    /// `exp - iat` of issued tokens (tests use a few seconds to exercise refresh).
    /// `Duration::ZERO` issues tokens that expired a minute ago. Default 1 h.
    pub lifetime: Duration,
    /// The `aud` of issued tokens, and the resource clients must ask for (trailing `/`
    /// aside). Default `https://eventhubs.azure.net`.
    pub audience: String,
    /// The App Service secret expected in `X-IDENTITY-HEADER` (what `IDENTITY_HEADER` holds
    /// on App Service). Default: a random one.
    pub identity_header: String,
    /// Managed identities: the first is the system-assigned one (used when the request
    /// names none); each can be selected by its client id, object id or resource id.
    pub managed_identities: Vec<Principal>,
    /// Service principals and their client secrets.
    pub client_secrets: Vec<(Principal, String)>,
    /// Service principals and their certificates (PEM): a client assertion signed with the
    /// certificate's key (RS256, `x5t` or `x5t#S256` naming the certificate, `aud` = the token
    /// endpoint URL, `iss` = `sub` = the client id) authenticates.
    pub client_certificates: Vec<(Principal, String)>,
    /// Workload identity: a `client_assertion` equal to this text authenticates the
    /// principal (the federated credential's subject token).
    pub federated_tokens: Vec<(Principal, String)>,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        TokenServerOptions {
            lifetime: Duration::from_secs(3600),
            audience: EVENTHUBS_AUDIENCE.to_string(),
            identity_header: uuid::Uuid::new_v4().to_string(),
            managed_identities: Vec::new(),
            client_secrets: Vec::new(),
            client_certificates: Vec::new(),
            federated_tokens: Vec::new(),
        }
    }
}

/// An error answer: HTTP status and Entra's `{"error","error_description"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl Reject {
    pub(crate) fn new(status: u16, error: &'static str, description: impl Into<String>) -> Reject {
        Reject {
            status,
            error,
            description: description.into(),
        }
    }
}

/// The server's state, shared by the handlers and the [`TokenServer`] handle.
struct Served {
    issuer: TestIssuer,
    opts: TokenServerOptions,
    token_url: String,
    audience: Mutex<String>,
    lifetime: Mutex<Duration>,
    failing: Mutex<Option<u16>>,
    issued: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

fn get_param<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn parse_params(text: &str) -> Params {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn same_resource(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

impl Served {
    fn check_failing(&self) -> Result<(), Reject> {
        match self.failing.lock().map(|f| *f) {
            Ok(Some(status)) => Err(Reject::new(
                status,
                "temporarily_unavailable",
                format!("the tcpulse test token server answers {status} on purpose (set_failing)"),
            )),
            _ => Ok(()),
        }
    }

    /// A managed-identity `resource` must be the configured audience.
    fn check_resource(&self, resource: Option<&str>) -> Result<String, Reject> {
        let Some(resource) = resource.filter(|r| !r.is_empty()) else {
            return Err(Reject::new(
                400,
                "invalid_request",
                "Required query variable 'resource' is missing",
            ));
        };
        if !same_resource(resource, &self.opts.audience) {
            return Err(self.unknown_resource(resource));
        }
        Ok(resource.to_string())
    }

    fn unknown_resource(&self, resource: &str) -> Reject {
        Reject::new(
            400,
            "invalid_resource",
            format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
                self.issuer.tenant_id()
            ),
        )
    }

    /// The managed identity a request selects (by client id, object id or resource id),
    /// or the system-assigned one (the first).
    fn managed_identity(
        &self,
        client_id: Option<&str>,
        object_id: Option<&str>,
        res_id: Option<&str>,
    ) -> Result<Principal, Reject> {
        let all = &self.opts.managed_identities;
        let found = match (client_id, object_id, res_id) {
            (Some(c), _, _) => all.iter().find(|p| p.client_id.eq_ignore_ascii_case(c)),
            (_, Some(o), _) => all.iter().find(|p| p.object_id.eq_ignore_ascii_case(o)),
            (_, _, Some(r)) => all.iter().find(|p| p.resource_id().eq_ignore_ascii_case(r)),
            _ => all.first(),
        };
        found
            .cloned()
            .ok_or_else(|| Reject::new(400, "invalid_request", "Identity not found"))
    }

    /// Signs a token for `principal`; returns it with its `exp`.
    fn issue(&self, principal: &Principal, asked: &str) -> Result<(String, u64), Reject> {
        let audience = self.audience.lock().map(|a| a.clone()).unwrap_or_default();
        let lifetime = self.lifetime.lock().map(|l| *l).unwrap_or_default();
        let claims = self.issuer.access_claims(principal, &audience, lifetime);
        let exp = claims["exp"].as_u64().unwrap_or_default();
        let token = self
            .issuer
            .sign(&claims)
            .map_err(|e| Reject::new(500, "server_error", format!("{e:#}")))?;
        self.issued.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut s) = self.scopes.lock() {
            s.push(asked.to_string());
        }
        Ok((token, exp))
    }

    fn app_service(&self, q: &Params, headers: &HeaderMap) -> Result<Value, Reject> {
        self.check_failing()?;
        let secret = headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok());
        if secret != Some(self.opts.identity_header.as_str()) {
            // Not checked against App Service: what it answers for a wrong secret.
            return Err(Reject::new(
                401,
                "invalid_request",
                "X-IDENTITY-HEADER is missing or does not match IDENTITY_HEADER",
            ));
        }
        if get_param(q, "api-version").is_none() {
            return Err(Reject::new(
                400,
                "invalid_request",
                "Required query variable 'api-version' is missing",
            ));
        }
        let resource = self.check_resource(get_param(q, "resource"))?;
        let p = self.managed_identity(
            get_param(q, "client_id"),
            get_param(q, "principal_id").or(get_param(q, "object_id")),
            get_param(q, "mi_res_id").or(get_param(q, "msi_res_id")),
        )?;
        let (token, exp) = self.issue(&p, &resource)?;
        Ok(
            json!({"access_token": token, "expires_on": exp.to_string(), "resource": resource,
                  "token_type": "Bearer", "client_id": p.client_id}),
        )
    }

    fn imds(&self, q: &Params, headers: &HeaderMap) -> Result<Value, Reject> {
        self.check_failing()?;
        let metadata = headers.get("metadata").and_then(|v| v.to_str().ok());
        if !metadata.is_some_and(|m| m.eq_ignore_ascii_case("true")) {
            return Err(Reject::new(
                400,
                "invalid_request",
                "Required metadata header not specified",
            ));
        }
        if get_param(q, "api-version").is_none() {
            return Err(Reject::new(
                400,
                "invalid_request",
                "Required query variable 'api-version' is missing",
            ));
        }
        let resource = self.check_resource(get_param(q, "resource"))?;
        let p = self.managed_identity(
            get_param(q, "client_id"),
            get_param(q, "object_id"),
            get_param(q, "msi_res_id").or(get_param(q, "mi_res_id")),
        )?;
        let (token, exp) = self.issue(&p, &resource)?;
        let now = unix_now();
        Ok(json!({"access_token": token, "refresh_token": "",
                  "expires_in": exp.saturating_sub(now).to_string(), "expires_on": exp.to_string(),
                  "not_before": now.to_string(), "resource": resource, "token_type": "Bearer",
                  "client_id": p.client_id}))
    }

    fn client_credentials(&self, tenant: &str, form: &Params) -> Result<Value, Reject> {
        self.check_failing()?;
        let ctx = client_auth::Context {
            tenant: self.issuer.tenant_id(),
            token_url: &self.token_url,
            opts: &self.opts,
        };
        client_auth::check_request(&ctx, tenant, form)?;
        let (scope, resource) = client_auth::scope_resource(form)?;
        if !same_resource(&resource, &self.opts.audience) {
            return Err(self.unknown_resource(&resource));
        }
        let principal = client_auth::client(&ctx, form)?;
        let (token, exp) = self.issue(&principal, &scope)?;
        let expires_in = exp.saturating_sub(unix_now());
        Ok(json!({"token_type": "Bearer", "expires_in": expires_in,
                  "ext_expires_in": expires_in, "access_token": token}))
    }
}

fn respond(result: Result<Value, Reject>) -> Response {
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(r) => (
            r.status,
            json!({"error": r.error, "error_description": r.description}),
        ),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn app_service(
    State(s): State<Arc<Served>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    respond(s.app_service(&parse_params(&q.unwrap_or_default()), &headers))
}

async fn imds(State(s): State<Arc<Served>>, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    respond(s.imds(&parse_params(&q.unwrap_or_default()), &headers))
}

async fn client_credentials(
    State(s): State<Arc<Served>>,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    respond(s.client_credentials(&tenant, &parse_params(&body)))
}

async fn not_found() -> Response {
    respond(Err(Reject::new(
        404,
        "not_found",
        "no such endpoint on the tcpulse test token server",
    )))
}

/// A running token server on `127.0.0.1`. Dropping it stops it; prefer
/// [`TokenServer::shutdown`].
pub struct TokenServer {
    addr: SocketAddr,
    served: Arc<Served>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .field("issued", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TokenServer {
    /// Binds `127.0.0.1:0` and serves `issuer`'s tokens under `opts`.
    pub async fn start(issuer: &TestIssuer, opts: TokenServerOptions) -> Result<TokenServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the token server on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let served = Arc::new(Served {
            issuer: issuer.clone(),
            token_url: format!("http://{addr}/{}/oauth2/v2.0/token", issuer.tenant_id()),
            audience: Mutex::new(opts.audience.clone()),
            lifetime: Mutex::new(opts.lifetime),
            failing: Mutex::new(None),
            issued: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            opts,
        });
        let app = Router::new()
            .route("/msi/token", get(app_service))
            .route("/metadata/identity/oauth2/token", get(imds))
            .route("/{tenant}/oauth2/v2.0/token", post(client_credentials))
            .fallback(not_found)
            .with_state(Arc::clone(&served));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "test token server ended");
            }
        });
        Ok(TokenServer {
            addr,
            served,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The App Service managed-identity endpoint (`IDENTITY_ENDPOINT`): `{base}/msi/token`.
    /// The secret for `IDENTITY_HEADER` is [`TokenServerOptions::identity_header`].
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.base_url())
    }

    /// The IMDS host standing in for `http://169.254.169.254`: requests go to
    /// `{host}/metadata/identity/oauth2/token`.
    pub fn imds_host(&self) -> String {
        self.base_url()
    }

    /// The authority host standing in for `https://login.microsoftonline.com`: tokens from
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn authority_host(&self) -> String {
        self.base_url()
    }

    /// The client-credentials token endpoint of the issuer's tenant (the `aud` client
    /// assertions must carry).
    pub fn token_url(&self) -> String {
        self.served.token_url.clone()
    }

    /// The `credential` object of a Python `conn` (`tests/python/_common.py`): client
    /// credentials with `secret` for `principal` against this server.
    pub fn python_client_secret(&self, principal: &Principal, secret: &str) -> Value {
        json!({"kind": "client_secret", "token_url": self.token_url(),
               "client_id": principal.client_id, "client_secret": secret})
    }

    /// Tokens issued so far.
    pub fn requests(&self) -> usize {
        self.served.issued.load(Ordering::SeqCst)
    }

    /// The resource or scope each issued token was asked for, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.served
            .scopes
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Answers every request with `status` (e.g. 500, 503) until `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        if let Ok(mut f) = self.served.failing.lock() {
            *f = status;
        }
    }

    /// Issues tokens with audience `aud` from now on (clients still ask for the configured
    /// resource).
    pub fn set_audience(&self, aud: &str) {
        if let Ok(mut a) = self.served.audience.lock() {
            *a = aud.to_string();
        }
    }

    /// Issues tokens valid for `d` from now on; `Duration::ZERO` = already expired (a
    /// minute ago).
    pub fn set_lifetime(&self, d: Duration) {
        if let Ok(mut l) = self.served.lifetime.lock() {
            *l = d;
        }
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
