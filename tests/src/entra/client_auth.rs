//! The client-credentials request: its form, its scope, and how the client authenticates
//! (client secret, certificate-signed client assertion, federated token).
//!
//! Error bodies are Entra's `{"error","error_description"}`. Texts with a source:
//! AADSTS7000215 (401 `invalid_client`, "Invalid client secret provided. Ensure the secret
//! being sent in the request is the client secret value, not the client secret ID, for a
//! secret added to app '…'.", OfficeDev/microsoft-365-agents-toolkit#8621,
//! Azure/sap-automation#418); AADSTS700027 ("The certificate with identifier used to sign the
//! client assertion is not registered on application. [Reason - The key was not found., …]"
//! and "Client assertion contains an invalid signature.",
//! AzureAD/microsoft-authentication-library-for-js#8339, #3741); AADSTS700024 ("Client
//! assertion is not within its valid time range.", AzureAD/microsoft-authentication-library-
//! for-dotnet#4951); AADSTS50012 ("Client assertion audience claim does not match Realm
//! issuer.", AzureAD/azure-activedirectory-library-for-python#79, an older text). The other
//! texts (AADSTS700016, 90002, 900144, 70003, 1002012, 7000216, 700021, 50027, 700213) are
//! modelled on Entra's error-code reference from memory and not checked against a source here.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::cert::thumbprint;
use super::server::{Reject, TokenServerOptions};
use super::Principal;

/// Decoded query or form parameters, in order.
pub(crate) type Params = Vec<(String, String)>;

/// What authentication needs to know about the server.
pub(crate) struct Context<'a> {
    /// The issuer's tenant id.
    pub tenant: &'a str,
    /// The token endpoint URL (the `aud` of client assertions).
    pub token_url: &'a str,
    /// The identities and their credentials.
    pub opts: &'a TokenServerOptions,
}

/// The client-assertion type of a signed JWT (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn param<'a>(form: &'a Params, key: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The tenant in the path and the grant type.
pub(crate) fn check_request(ctx: &Context<'_>, tenant: &str, form: &Params) -> Result<(), Reject> {
    if !tenant.eq_ignore_ascii_case(ctx.tenant) {
        return Err(Reject::new(400, "invalid_request", format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.")));
    }
    match param(form, "grant_type") {
        None => Err(Reject::new(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        )),
        Some("client_credentials") => Ok(()),
        Some(other) => Err(Reject::new(
            400,
            "unsupported_grant_type",
            format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// The `scope` (one `<resource>/.default`, or `<resource>//.default` as Python, Go, Java and
/// JS send for Event Hubs) and its resource.
pub(crate) fn scope_resource(form: &Params) -> Result<(String, String), Reject> {
    let scope = param(form, "scope").unwrap_or_default().trim().to_string();
    let resource = scope
        .strip_suffix("/.default")
        .filter(|r| !r.is_empty() && !scope.contains(' '))
        .ok_or_else(|| Reject::new(400, "invalid_scope", format!("AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).")))?;
    Ok((scope.clone(), resource.to_string()))
}

/// The service principal the request authenticates as.
pub(crate) fn client(ctx: &Context<'_>, form: &Params) -> Result<Principal, Reject> {
    let client_id = param(form, "client_id").unwrap_or_default();
    let opts = ctx.opts;
    let known = opts
        .client_secrets
        .iter()
        .map(|(p, _)| p)
        .chain(opts.client_certificates.iter().map(|(p, _)| p))
        .chain(opts.federated_tokens.iter().map(|(p, _)| p))
        .any(|p| p.client_id.eq_ignore_ascii_case(client_id));
    if !known {
        return Err(Reject::new(400, "invalid_client", format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", ctx.tenant)));
    }
    if let Some(secret) = param(form, "client_secret") {
        return by_secret(ctx, client_id, secret);
    }
    let Some(assertion) = param(form, "client_assertion") else {
        return Err(Reject::new(401, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type."));
    };
    if param(form, "client_assertion_type") != Some(JWT_BEARER) {
        return Err(Reject::new(400, "invalid_request", format!("AADSTS50027: JWT token is invalid or malformed. (client_assertion_type must be {JWT_BEARER})")));
    }
    if let Some((p, _)) = opts
        .federated_tokens
        .iter()
        .find(|(p, t)| p.client_id.eq_ignore_ascii_case(client_id) && t == assertion)
    {
        return Ok(p.clone());
    }
    let has_cert = opts
        .client_certificates
        .iter()
        .any(|(p, _)| p.client_id.eq_ignore_ascii_case(client_id));
    if !has_cert {
        return Err(Reject::new(400, "invalid_request", format!("AADSTS700213: No matching federated identity record found for presented assertion subject for app '{client_id}'.")));
    }
    by_certificate(ctx, client_id, assertion)
}

fn by_secret(ctx: &Context<'_>, client_id: &str, secret: &str) -> Result<Principal, Reject> {
    ctx.opts
        .client_secrets
        .iter()
        .find(|(p, s)| p.client_id.eq_ignore_ascii_case(client_id) && s == secret)
        .map(|(p, _)| p.clone())
        .ok_or_else(|| Reject::new(401, "invalid_client", format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")))
}

fn invalid_client(text: impl Into<String>) -> Reject {
    Reject::new(401, "invalid_client", text)
}

/// A client assertion signed with one of the principal's certificates.
fn by_certificate(
    ctx: &Context<'_>,
    client_id: &str,
    assertion: &str,
) -> Result<Principal, Reject> {
    let malformed = || {
        Reject::new(
            400,
            "invalid_request",
            "AADSTS50027: JWT token is invalid or malformed.",
        )
    };
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    let certs = ctx
        .opts
        .client_certificates
        .iter()
        .filter(|(p, _)| p.client_id.eq_ignore_ascii_case(client_id));
    let mut found = None;
    for (p, pem) in certs {
        let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else {
            continue;
        };
        let by_sha1 = header.x5t.as_deref() == Some(thumbprint(&der, false).as_str());
        let by_sha256 = header.x5t_s256.as_deref() == Some(thumbprint(&der, true).as_str());
        if by_sha1 || by_sha256 {
            found = Some((p, der));
            break;
        }
    }
    let Some((principal, der)) = found else {
        let used = header.x5t.or(header.x5t_s256).unwrap_or_default();
        return Err(invalid_client(format!("AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{used}', app Id '{client_id}']")));
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        Reject::new(
            500,
            "server_error",
            format!("the configured certificate does not parse: {e}"),
        )
    })?;
    let key = DecodingKey::from_rsa_der(cert.public_key().raw);
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[ctx.token_url]);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_string());
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v.leeway = 60;
    match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v) {
        Ok(_) => Ok(principal.clone()),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidRsaKey(_) => {
                invalid_client("AADSTS700027: Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]")
            }
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                invalid_client("AADSTS700024: Client assertion is not within its valid time range.")
            }
            ErrorKind::InvalidAudience => invalid_client(format!("AADSTS50012: Client assertion audience claim does not match Realm issuer. (aud must be {})", ctx.token_url)),
            ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => invalid_client("AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter."),
            _ => malformed(),
        }),
    }
}
