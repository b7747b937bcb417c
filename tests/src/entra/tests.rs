//! The token server over real HTTP on loopback: each flow issues a token the issuer's JWKS
//! verifies, and each wrong request gets Entra's error.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::*;
use crate::entra::issuer::unix_now;

/// `(status, JSON body)` of a GET with `headers`, or a POST of `form` when given.
async fn call(
    url: String,
    headers: Vec<(&'static str, String)>,
    form: Option<Vec<(String, String)>>,
) -> Result<(u16, Value)> {
    tokio::task::spawn_blocking(move || -> Result<(u16, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = match form {
            Some(form) => {
                let pairs: Vec<(&str, &str)> =
                    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                agent.post(&url).send_form(pairs)?
            }
            None => {
                let mut req = agent.get(&url);
                for (k, v) in &headers {
                    req = req.header(*k, v.as_str());
                }
                req.call()?
            }
        };
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json()?;
        Ok((status, body))
    })
    .await?
}

/// The claims of `token` if the issuer's JWKS verifies it.
fn verified_claims(issuer: &TestIssuer, token: &str) -> Result<Value> {
    issuer.verify(token)
}

struct Fixture {
    issuer: TestIssuer,
    server: TokenServer,
    system: Principal,
    user: Principal,
    app: Principal,
    cert_app: Principal,
    cert: TestCertificate,
    workload: Principal,
}

async fn fixture() -> Result<Fixture> {
    let issuer = TestIssuer::generate()?;
    let (system, user, app, cert_app, workload) = (
        Principal::random(),
        Principal::random(),
        Principal::random(),
        Principal::random(),
        Principal::random(),
    );
    let cert = TestCertificate::generate("tcpulse-test-app")?;
    let server = TokenServer::start(
        &issuer,
        TokenServerOptions {
            identity_header: "the-identity-header".into(),
            managed_identities: vec![system.clone(), user.clone()],
            client_secrets: vec![(app.clone(), "s3cret".into())],
            client_certificates: vec![(cert_app.clone(), cert.cert_pem.clone())],
            federated_tokens: vec![(workload.clone(), "federated-subject-token".into())],
            ..TokenServerOptions::default()
        },
    )
    .await?;
    Ok(Fixture {
        issuer,
        server,
        system,
        user,
        app,
        cert_app,
        cert,
        workload,
    })
}

fn form(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[tokio::test]
async fn managed_identity_endpoints_issue_verifiable_tokens_for_the_selected_identity() -> Result<()>
{
    let f = fixture().await?;
    let res = "https://eventhubs.azure.net";
    let secret = vec![("X-IDENTITY-HEADER", "the-identity-header".to_string())];
    // App Service: the system-assigned identity by default, a user-assigned one by any id.
    let url = format!(
        "{}?api-version=2019-08-01&resource={res}",
        f.server.identity_endpoint()
    );
    let (status, body) = call(url.clone(), secret.clone(), None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_on"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    let claims = verified_claims(&f.issuer, body["access_token"].as_str().unwrap_or_default())?;
    assert_eq!(claims["oid"], f.system.object_id.as_str());
    assert_eq!(claims["aud"], res);
    assert_eq!(claims["iss"], f.issuer.issuer());
    assert_eq!(claims["tid"], f.issuer.tenant_id());
    assert_eq!(claims["appid"], f.system.client_id.as_str());
    assert_eq!(claims["ver"], "1.0");
    for q in [
        format!("client_id={}", f.user.client_id),
        format!("principal_id={}", f.user.object_id),
        format!("mi_res_id={}", f.user.resource_id()),
    ] {
        let (status, body) = call(format!("{url}&{q}"), secret.clone(), None).await?;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(body["client_id"], f.user.client_id.as_str(), "{q}");
    }
    let (status, body) = call(format!("{url}&client_id=nobody"), secret.clone(), None).await?;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    let (status, _) = call(
        url.clone(),
        vec![("X-IDENTITY-HEADER", "wrong".into())],
        None,
    )
    .await?;
    assert_eq!(status, 401);

    // IMDS: the Metadata header is required; expires_in is a string.
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={res}/",
        f.server.imds_host()
    );
    let (status, body) = call(url.clone(), vec![], None).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    let md = vec![("Metadata", "true".to_string())];
    let (status, body) = call(
        format!("{url}&object_id={}", f.user.object_id),
        md.clone(),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_in"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 3500)),
        "{body}"
    );
    let claims = verified_claims(&f.issuer, body["access_token"].as_str().unwrap_or_default())?;
    assert_eq!(claims["oid"], f.user.object_id.as_str());
    let other = format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/", f.server.imds_host());
    let (status, body) = call(other, md, None).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_resource"))
    );
    assert_eq!(
        f.server.requests(),
        5,
        "one App Service default, three selected, one IMDS"
    );
    f.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_credentials_authenticate_by_secret_certificate_or_federated_token() -> Result<()> {
    let f = fixture().await?;
    let url = f.server.token_url();
    let post = |pairs: Vec<(&str, String)>| {
        let url = url.clone();
        let pairs: Vec<(String, String)> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        async move { call(url, vec![], Some(pairs)).await }
    };
    let base = |client: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", client.to_string()),
            ("scope", "https://eventhubs.azure.net//.default".to_string()),
        ]
    };
    // A secret (the scope in the double-slash form the Python SDK asks for).
    let mut ok = base(&f.app.client_id);
    ok.push(("client_secret", "s3cret".into()));
    let (status, body) = post(ok).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_in"].as_u64().is_some_and(|n| n > 3500),
        "{body}"
    );
    let claims = verified_claims(&f.issuer, body["access_token"].as_str().unwrap_or_default())?;
    assert_eq!(claims["oid"], f.app.object_id.as_str());
    let mut wrong = base(&f.app.client_id);
    wrong.push(("client_secret", "nope".into()));
    let (status, body) = post(wrong).await?;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AADSTS7000215: Invalid client secret provided."),
        "{body}"
    );
    let mut unknown = base("ghost");
    unknown.push(("client_secret", "s3cret".into()));
    let (status, body) = post(unknown).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AADSTS700016"),
        "{body}"
    );

    // A certificate: x5t or x5t#S256; a wrong audience or another key is refused.
    for sha256 in [false, true] {
        let mut c = base(&f.cert_app.client_id);
        c.push(("client_assertion_type", JWT_BEARER.to_string()));
        c.push((
            "client_assertion",
            f.cert
                .client_assertion(&f.cert_app.client_id, &url, sha256)?,
        ));
        let (status, body) = post(c).await?;
        assert_eq!(status, 200, "sha256={sha256}: {body}");
    }
    let mut c = base(&f.cert_app.client_id);
    c.push(("client_assertion_type", JWT_BEARER.to_string()));
    c.push((
        "client_assertion",
        f.cert
            .client_assertion(&f.cert_app.client_id, "https://elsewhere/token", false)?,
    ));
    let (status, body) = post(c).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AADSTS50012"),
        "{body}"
    );
    let impostor = TestCertificate::generate("impostor")?;
    let now = unix_now();
    let forged = impostor.sign(
        &serde_json::json!({"alg": "RS256", "x5t": f.cert.x5t()}),
        &serde_json::json!({"aud": url, "iss": f.cert_app.client_id, "sub": f.cert_app.client_id, "exp": now + 600, "nbf": now}),
    )?;
    let mut c = base(&f.cert_app.client_id);
    c.push(("client_assertion_type", JWT_BEARER.to_string()));
    c.push(("client_assertion", forged));
    let (status, body) = post(c).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid signature"),
        "{body}"
    );

    // A federated token: exactly the configured text.
    for (token, want) in [("federated-subject-token", 200), ("another-token", 400)] {
        let mut c = base(&f.workload.client_id);
        c.push(("client_assertion_type", JWT_BEARER.to_string()));
        c.push(("client_assertion", token.to_string()));
        let (status, body) = post(c).await?;
        assert_eq!(status, want, "{token}: {body}");
    }

    // The scope must be the audience's .default; the tenant must be the issuer's.
    let mut bad_scope = base(&f.app.client_id);
    bad_scope[2].1 = "https://eventhubs.azure.net".into();
    bad_scope.push(("client_secret", "s3cret".into()));
    let (status, body) = post(bad_scope).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let other_tenant = url.replace(f.issuer.tenant_id(), "other-tenant");
    let (status, body) = call(
        other_tenant,
        vec![],
        form(&[("grant_type", "client_credentials")]),
    )
    .await?;
    assert!(
        status == 400
            && body["error_description"]
                .as_str()
                .unwrap_or_default()
                .starts_with("AADSTS90002"),
        "{body}"
    );
    assert_eq!(
        f.server.requests(),
        4,
        "secret, two certificates, federated"
    );
    assert_eq!(
        f.server.scopes()[0],
        "https://eventhubs.azure.net//.default"
    );
    f.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failing_audience_and_lifetime_switches_change_what_is_issued() -> Result<()> {
    let f = fixture().await?;
    let url = format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://eventhubs.azure.net", f.server.imds_host());
    let md = vec![("Metadata", "true".to_string())];
    f.server.set_failing(Some(503));
    let (status, _) = call(url.clone(), md.clone(), None).await?;
    assert_eq!(status, 503);
    f.server.set_failing(None);
    f.server.set_audience("https://storage.azure.com/");
    f.server.set_lifetime(Duration::ZERO);
    let (status, body) = call(url.clone(), md.clone(), None).await?;
    assert_eq!(status, 200, "{body}");
    let claims = verified_claims(&f.issuer, body["access_token"].as_str().unwrap_or_default())?;
    assert_eq!(claims["aud"], "https://storage.azure.com/");
    assert!(
        claims["exp"].as_u64().is_some_and(|e| e + 30 < unix_now()),
        "already expired: {claims}"
    );
    assert_eq!(body["expires_in"], "0");
    f.server.set_lifetime(Duration::from_secs(5));
    let (_, body) = call(url, md, None).await?;
    let claims = verified_claims(&f.issuer, body["access_token"].as_str().unwrap_or_default())?;
    let life =
        claims["exp"].as_u64().unwrap_or_default() - claims["iat"].as_u64().unwrap_or_default();
    assert_eq!(life, 5);
    assert_eq!(f.server.requests(), 2, "a failed request issues nothing");
    f.server.shutdown().await;
    Ok(())
}
