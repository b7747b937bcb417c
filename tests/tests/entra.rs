//! Agent and collector on Entra ID credentials against the hub checking `jwt` put-tokens,
//! with a loopback token server signing for a test issuer (never the real IMDS address or
//! Entra: the credentials are pointed at 127.0.0.1 by config).
//!
//! - the agent on its managed identity (IMDS style, no connection string anywhere on disk
//!   or in its environment) and the collector on a client-secret service principal, both
//!   through 5-second tokens for a minute: every report arrives, tokens are renewed on the
//!   live connections (no producer or consumer reconnect), the collector's
//!   `credential_expires_in_seconds` gauge stays positive;
//! - failures, each a distinct error the user can act on, while the agent keeps spooling:
//!   a token endpoint that fails and recovers, a token for another audience, an expired
//!   token, a Sender identity used to receive.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tcpulse_tests::agent::{AgentOptions, AgentProcess, Target};
use tcpulse_tests::client::{read_all, statuses};
use tcpulse_tests::collector::{
    metric_by_partition, metric_max, CollectorOptions, CollectorProcess,
};
use tcpulse_tests::entra::{Principal, TestIssuer, TokenServer, TokenServerOptions};
use tcpulse_tests::hub::{HubInfo, HubOptions, HubProcess};
use tcpulse_tests::wait::{poll_until, OnError, Poll};

const SENDER_OID: &str = "0d1e5e4d-0000-4000-8000-00000000a9e7";
const RECEIVER_OID: &str = "0d1e5e4d-0000-4000-8000-0000000c011e";
const SENDER_SP_OID: &str = "0d1e5e4d-0000-4000-8000-0000000005e0";
const SP_SECRET: &str = "collector-sp-S3CRET";

fn vm_identity() -> Principal {
    Principal {
        object_id: SENDER_OID.into(),
        client_id: "a9e70000-0000-4000-8000-000000000001".into(),
    }
}

fn collector_sp() -> Principal {
    Principal {
        object_id: RECEIVER_OID.into(),
        client_id: "c011ec70-0000-4000-8000-000000000002".into(),
    }
}

/// A principal with the Sender role only.
fn sender_sp() -> Principal {
    Principal {
        object_id: SENDER_SP_OID.into(),
        client_id: "5e0d0000-0000-4000-8000-000000000003".into(),
    }
}

/// A hub trusting `issuer`, the VM identity a Data Sender and the collector's principal a
/// Data Receiver on the hub.
async fn entra_hub(dir: &Path, issuer: &TestIssuer) -> Result<HubProcess> {
    std::fs::create_dir_all(dir)?;
    let jwks = dir.join("jwks.json");
    issuer.write_jwks(&jwks)?;
    let roles = dir.join("roles");
    std::fs::write(
        &roles,
        format!(
            "{SENDER_OID}:Azure Event Hubs Data Sender:tcpulse\n\
             {RECEIVER_OID}:Azure Event Hubs Data Receiver:tcpulse\n\
             {SENDER_SP_OID}:Azure Event Hubs Data Sender:tcpulse\n"
        ),
    )?;
    HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        extra_args: vec![
            "--entra-jwks-file".into(),
            jwks.display().to_string(),
            "--entra-role-assignments".into(),
            roles.display().to_string(),
        ],
        ..HubOptions::default()
    })
    .await
}

async fn token_server(issuer: &TestIssuer, lifetime: Duration) -> Result<TokenServer> {
    TokenServer::start(
        issuer,
        TokenServerOptions {
            lifetime,
            audience: "https://eventhubs.azure.net".into(),
            identity_header: "app-service-header".into(),
            managed_identities: vec![vm_identity()],
            client_secrets: vec![
                (collector_sp(), SP_SECRET.into()),
                (sender_sp(), SP_SECRET.into()),
            ],
            client_certificates: vec![],
            federated_tokens: vec![],
        },
    )
    .await
}

/// The hub's namespace as the Entra ID settings name it: its host and TLS port.
fn namespace(info: &HubInfo) -> String {
    format!("{}:{}", info.namespace, info.amqps.port())
}

/// An agent on its managed identity, IMDS at `imds` (no connection string).
fn mi_agent(dir: &Path, info: &HubInfo, imds: &str, instance: &str) -> Result<AgentProcess> {
    let d = dir.join(instance);
    let mut opts = AgentOptions::every_second("k-entra", "eu", instance, 3, d.join("spool"));
    opts.publish = format!(
        "auth = \"managed_identity\"\nnamespace = {:?}\nevent_hub = \"tcpulse\"\n\
         [publish.identity]\nimds_endpoint = {imds:?}\n",
        namespace(info)
    );
    AgentProcess::start(&d, &opts, Target::Entra(info))
}

/// A collector on the client-secret service principal (secret in a file).
fn sp_collector(
    dir: &Path,
    info: &HubInfo,
    tokens: &TokenServer,
    issuer: &TestIssuer,
) -> Result<CollectorProcess> {
    collector_as(dir, info, tokens, issuer, &collector_sp())
}

fn collector_as(
    dir: &Path,
    info: &HubInfo,
    tokens: &TokenServer,
    issuer: &TestIssuer,
    principal: &Principal,
) -> Result<CollectorProcess> {
    std::fs::create_dir_all(dir)?;
    let secret = dir.join("sp-secret");
    std::fs::write(&secret, format!("{SP_SECRET}\n"))?;
    let out = dir.join("points.lp");
    let opts = CollectorOptions {
        eventhub: Some(format!(
            "auth = \"client_secret\"\nnamespace = {:?}\nevent_hub = \"tcpulse\"\n\
             [source.eventhub.identity]\ntenant_id = {:?}\nclient_id = {:?}\n\
             client_secret_file = {:?}\nauthority_host = {:?}\n",
            namespace(info),
            issuer.tenant_id(),
            principal.client_id,
            secret.display().to_string(),
            tokens.authority_host(),
        )),
        sinks: format!("[sinks.file]\npath = {:?}\n", out.display().to_string()),
        ..CollectorOptions::default()
    };
    CollectorProcess::start(dir, info, &opts)
}

fn no_secret_under(dir: &Path) -> Result<()> {
    for entry in walk(dir)? {
        let text = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        ensure!(
            !text.contains("SharedAccessKey=") && !text.contains("SharedAccessSignature sr="),
            "{} holds a shared access key or signature",
            entry.display()
        );
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_managed_identity_and_collector_on_a_service_principal_run_through_short_tokens(
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let issuer = TestIssuer::generate()?;
    let hub = entra_hub(&tmp.path().join("hub"), &issuer).await?;
    let info = hub.info.clone();
    let tokens = token_server(&issuer, Duration::from_secs(5)).await?;
    let mut agent = mi_agent(
        &tmp.path().join("agents"),
        &info,
        &tokens.imds_host(),
        "tc-mi-1",
    )?;
    let mut collector = sp_collector(&tmp.path().join("collector"), &info, &tokens, &issuer)?;
    // A minute of reports through twelve token lifetimes.
    let started = std::time::Instant::now();
    let mut lowest_expiry = f64::MAX;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        agent.ensure_running()?;
        collector.ensure_running()?;
        if let Some(v) = metric_max(
            &collector.metrics()?,
            "tcpulse_collector_credential_expires_in_seconds",
        ) {
            lowest_expiry = lowest_expiry.min(v);
        }
    }
    agent.stop(Duration::from_secs(15))?;
    let agent_log = agent.log();
    ensure!(
        agent_log.contains("spooled=0"),
        "the agent left reports spooled:\n{agent_log}"
    );
    ensure!(
        !agent_log.contains("producer reconnected") && !agent_log.contains("put-token failed"),
        "the agent's link dropped or a renewal failed:\n{agent_log}"
    );
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|s| s.body["seq"].as_u64())
        .collect();
    ensure!(
        seqs.len() >= 55,
        "only {} reports reached the hub",
        seqs.len()
    );
    // The collector read them all on its first links, its token renewed meanwhile.
    let want = seqs.len() as f64;
    poll_until(
        "the collector has read every report",
        Duration::from_secs(20),
        Poll::every(250, OnError::Retry),
        || {
            let by_partition =
                metric_by_partition(&collector.metrics()?, "tcpulse_collector_events_total");
            Ok(by_partition.values().sum::<f64>() >= want)
        },
    )
    .await
    .with_context(|| collector.log_tail(40))?;
    let clog = collector.log();
    ensure!(
        !clog.contains("consumer reconnected") && !clog.contains("reconnecting"),
        "a consumer link dropped:\n{}",
        collector.log_tail(60)
    );
    ensure!(
        lowest_expiry > 0.0 && lowest_expiry <= 5.0,
        "credential_expires_in_seconds went to {lowest_expiry}"
    );
    ensure!(
        tokens.requests() >= 20,
        "only {} tokens issued in a minute of 5 s tokens: no renewal",
        tokens.requests()
    );
    no_secret_under(&tmp.path().join("agents"))?;
    println!(
        "a minute of 5 s tokens: {} reports delivered, {} tokens issued, lowest credential_expires_in_seconds {lowest_expiry}",
        seqs.len(),
        tokens.requests()
    );
    collector.stop(Duration::from_secs(15))?;
    tokens.shutdown().await;
    Ok(())
}

/// Waits until `log()` contains `needle`.
async fn log_shows(what: &str, needle: &str, mut log: impl FnMut() -> String) -> Result<String> {
    let mut last = String::new();
    let found = poll_until(
        what,
        Duration::from_secs(30),
        Poll::every(200, OnError::Retry),
        || {
            last = log();
            Ok(last.contains(needle))
        },
    )
    .await;
    found.with_context(|| format!("no {needle:?} in:\n{last}"))?;
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_failures_are_distinct_errors_while_the_agent_keeps_spooling() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let agents = tmp.path().join("agents");
    let issuer = TestIssuer::generate()?;
    let hub = entra_hub(&tmp.path().join("hub"), &issuer).await?;
    let info = hub.info.clone();
    let tokens = token_server(&issuer, Duration::from_secs(60)).await?;

    // The token endpoint fails, then recovers: nothing is lost meanwhile.
    tokens.set_failing(Some(503));
    let mut agent = mi_agent(&agents, &info, &tokens.imds_host(), "tc-down")?;
    log_shows("the endpoint's 503", "HTTP 503", || agent.log()).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokens.set_failing(None);
    // The producer's reconnect backoff (≤ 4 s here), then the backlog goes out.
    tokio::time::sleep(Duration::from_secs(8)).await;
    agent.stop(Duration::from_secs(15))?;
    let log = agent.log();
    ensure!(log.contains("spooled=0"), "reports left spooled:\n{log}");
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|s| s.body["instance"] == "tc-down")
        .filter_map(|s| s.body["seq"].as_u64())
        .collect();
    seqs.sort_unstable();
    ensure!(seqs.len() >= 6, "only {seqs:?} arrived");
    ensure!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a report made while tokens failed is missing: {seqs:?}"
    );

    // Unreachable endpoint: named as such.
    let dead = format!("http://127.0.0.1:{}", tcpulse_tests::services::free_port()?);
    let mut agent = mi_agent(&agents, &info, &dead, "tc-unreachable")?;
    log_shows("an unreachable token endpoint", "unreachable", || {
        agent.log()
    })
    .await?;
    agent.stop(Duration::from_secs(15))?;

    // A token for another audience, then an expired one: the hub's refusals reach the log.
    tokens.set_audience("https://storage.azure.com");
    let mut agent = mi_agent(&agents, &info, &tokens.imds_host(), "tc-audience")?;
    let audience_log = log_shows("the audience refusal", "InvalidAudience", || agent.log()).await?;
    agent.stop(Duration::from_secs(15))?;
    tokens.set_audience("https://eventhubs.azure.net");
    tokens.set_lifetime(Duration::ZERO);
    let mut agent = mi_agent(&agents, &info, &tokens.imds_host(), "tc-expired")?;
    let expired_log = log_shows("the expiry refusal", "ExpiredToken", || agent.log()).await?;
    agent.stop(Duration::from_secs(15))?;
    ensure!(
        !audience_log.contains("ExpiredToken") && !expired_log.contains("InvalidAudience"),
        "the two refusals are not told apart"
    );
    tokens.set_lifetime(Duration::from_secs(60));

    // A Sender principal used to receive.
    let mut c = collector_as(
        &tmp.path().join("c-sender"),
        &info,
        &tokens,
        &issuer,
        &sender_sp(),
    )?;
    log_shows(
        "the missing Listen claim",
        "'Listen' claim(s) are required",
        || c.log(),
    )
    .await?;
    c.stop(Duration::from_secs(15))?;
    no_secret_under(&agents)?;
    tokens.shutdown().await;
    Ok(())
}

/// Every credential kind the agent and the collector can be configured with, built from
/// its settings (the environment read through a closure, as the binaries read theirs) and
/// asked for a token by the loopback server: the token is the issuer's, for the principal
/// that was configured; a wrong secret is the endpoint's own refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_kind_gets_the_configured_principals_token() -> Result<()> {
    use tcpulse_eventhub::identity::{
        AuthMethod, IdentityConfig, TokenCredential, EVENTHUBS_SCOPE,
    };
    use tcpulse_tests::entra::TestCertificate;
    let tmp = tempfile::tempdir()?;
    let issuer = TestIssuer::generate()?;
    let (mi_system, mi_user) = (Principal::random(), Principal::random());
    let (sp_secret, sp_cert, sp_fed) = (
        Principal::random(),
        Principal::random(),
        Principal::random(),
    );
    let cert = TestCertificate::generate("tcpulse-collector")?;
    let federated = "eyJ.federated.token";
    let tokens = TokenServer::start(
        &issuer,
        TokenServerOptions {
            lifetime: Duration::from_secs(600),
            audience: "https://eventhubs.azure.net".into(),
            identity_header: "hdr".into(),
            managed_identities: vec![mi_system.clone(), mi_user.clone()],
            client_secrets: vec![(sp_secret.clone(), SP_SECRET.into())],
            client_certificates: vec![(sp_cert.clone(), cert.cert_pem.clone())],
            federated_tokens: vec![(sp_fed.clone(), federated.into())],
        },
    )
    .await?;
    let pem = tmp.path().join("sp.pem");
    std::fs::write(&pem, format!("{}{}", cert.cert_pem, cert.key_pem))?;
    let fed = tmp.path().join("federated-token");
    std::fs::write(&fed, federated)?;
    let (tenant, authority) = (issuer.tenant_id().to_string(), tokens.authority_host());
    let (identity_endpoint, imds) = (tokens.identity_endpoint(), tokens.imds_host());
    let env = move |secret: Option<&'static str>, app_service: bool| {
        let (tenant, authority) = (tenant.clone(), authority.clone());
        let identity_endpoint = identity_endpoint.clone();
        move |k: &str| match k {
            "AZURE_TENANT_ID" => Some(tenant.clone()),
            "AZURE_AUTHORITY_HOST" => Some(authority.clone()),
            "AZURE_CLIENT_SECRET" => secret.map(str::to_string),
            "IDENTITY_ENDPOINT" if app_service => Some(identity_endpoint.clone()),
            "IDENTITY_HEADER" if app_service => Some("hdr".into()),
            _ => None,
        }
    };
    let cases: Vec<(&str, AuthMethod, IdentityConfig, bool, &Principal)> = vec![
        (
            "IMDS, system-assigned",
            AuthMethod::ManagedIdentity,
            IdentityConfig {
                imds_endpoint: Some(imds.clone()),
                ..Default::default()
            },
            false,
            &mi_system,
        ),
        (
            "IMDS, user-assigned",
            AuthMethod::ManagedIdentity,
            IdentityConfig {
                imds_endpoint: Some(imds.clone()),
                object_id: Some(mi_user.object_id.clone()),
                ..Default::default()
            },
            false,
            &mi_user,
        ),
        (
            "App Service, user-assigned",
            AuthMethod::ManagedIdentity,
            IdentityConfig {
                client_id: Some(mi_user.client_id.clone()),
                ..Default::default()
            },
            true,
            &mi_user,
        ),
        (
            "client secret",
            AuthMethod::ClientSecret,
            IdentityConfig {
                client_id: Some(sp_secret.client_id.clone()),
                ..Default::default()
            },
            false,
            &sp_secret,
        ),
        (
            "client certificate",
            AuthMethod::ClientCertificate,
            IdentityConfig {
                client_id: Some(sp_cert.client_id.clone()),
                client_certificate_file: Some(pem.clone()),
                ..Default::default()
            },
            false,
            &sp_cert,
        ),
        (
            "workload identity",
            AuthMethod::WorkloadIdentity,
            IdentityConfig {
                client_id: Some(sp_fed.client_id.clone()),
                federated_token_file: Some(fed.clone()),
                ..Default::default()
            },
            false,
            &sp_fed,
        ),
    ];
    for (what, method, config, app_service, principal) in cases {
        let credential = config
            .credential(method, &env(Some(SP_SECRET), app_service))
            .with_context(|| what.to_string())?
            .with_context(|| format!("{what}: no credential"))?;
        let token = credential
            .get_token(EVENTHUBS_SCOPE)
            .await
            .with_context(|| what.to_string())?;
        let claims = issuer.verify(&token.token)?;
        ensure!(
            claims["oid"] == principal.object_id.as_str(),
            "{what}: token for {} instead of {}",
            claims["oid"],
            principal.object_id
        );
        ensure!(
            credential.stats().expires_in_seconds().unwrap_or(0) > 500,
            "{what}"
        );
    }
    let wrong = IdentityConfig {
        client_id: Some(sp_secret.client_id.clone()),
        ..Default::default()
    }
    .credential(
        AuthMethod::ClientSecret,
        &env(Some("not-the-secret"), false),
    )?
    .context("credential")?;
    let e = wrong
        .get_token(EVENTHUBS_SCOPE)
        .await
        .err()
        .context("a wrong secret got a token")?;
    ensure!(
        e.to_string()
            .contains("HTTP 401 invalid_client: AADSTS7000215")
            && !e.is_transient(),
        "{e}"
    );
    ensure!(wrong.stats().failures() == 1);
    tokens.shutdown().await;
    Ok(())
}
