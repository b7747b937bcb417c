//! Unit tests of the Entra ID checks: the role table, the key file, each refusal, the grant.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::keys::KeySet;
use super::roles::{self, Role};
use super::verify::{Refusal, Verifier};
use super::*;
use crate::auth::Right;

const AUD: &str = "https://eventhubs.azure.net";
const ISS: &str = "https://sts.windows.net/tenant-1/";
const SENDER: &str = "11111111-aaaa-1111-aaaa-111111111111";
const RECEIVER: &str = "22222222-bbbb-2222-bbbb-222222222222";

/// A test issuer: an RSA-2048 key and its `kid`.
struct Issuer {
    key: RsaKeyPair,
    kid: String,
}

impl Issuer {
    fn new(kid: &str) -> Issuer {
        Issuer {
            key: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(self.key.public_key());
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
               "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e)})
    }

    fn jwks(&self) -> String {
        json!({"keys": [self.jwk()]}).to_string()
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"typ": "JWT", "alg": "RS256", "kid": self.kid}),
            claims,
        )
    }
}

fn now() -> u64 {
    now_unix()
}

fn claims(oid: &str) -> Value {
    let t = now();
    json!({"aud": AUD, "iss": ISS, "iat": t - 10, "nbf": t - 10, "exp": t + 3600,
           "oid": oid, "sub": oid, "tid": "tenant-1", "appid": "app", "ver": "1.0"})
}

fn verifier(issuer: &Issuer, iss: Option<&str>) -> Verifier {
    Verifier::new(KeySet::parse(&issuer.jwks()).unwrap(), AUD, iss)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn role_table_parses_names_scopes_and_resource_ids() {
    let text = format!(
        "# comment\n{SENDER}:Azure Event Hubs Data Sender:tcpulse\n\
         {RECEIVER}:data receiver:/Tcpulse/ConsumerGroups/Collector/;\
         33333333-0000-0000-0000-000000000000:AZURE EVENT HUBS DATA OWNER\n\
         44444444-0000-0000-0000-000000000000:Azure Event Hubs Data Sender:/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventHub/namespaces/ns/eventhubs/Other\n\
         55555555-0000-0000-0000-000000000000:Azure Event Hubs Data Owner:/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventHub/namespaces/ns\n"
    );
    let a = roles::parse(&text).unwrap();
    let got: Vec<(Role, &str)> = a.iter().map(|a| (a.role, a.scope.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Role::DataSender, "tcpulse"),
            (Role::DataReceiver, "tcpulse/consumergroups/collector"),
            (Role::DataOwner, ""),
            (Role::DataSender, "other"),
            (Role::DataOwner, ""),
        ]
    );
    assert_eq!(a[0].principal, SENDER);
}

#[test]
fn role_table_errors_name_the_entry_and_the_roles() {
    let e = roles::parse("x:Azure Event Hubs Data Sender\ny:Contributor").unwrap_err();
    assert!(
        e.contains("entry 2") && e.contains("unknown role 'Contributor'"),
        "{e}"
    );
    assert!(e.contains("Azure Event Hubs Data Receiver"), "{e}");
    assert!(roles::parse(":Azure Event Hubs Data Sender").is_err());
    assert!(roles::parse("x").is_err());
    let e =
        roles::parse("x:Data Owner:/subscriptions/s/providers/Microsoft.Storage/x").unwrap_err();
    assert!(e.contains("not an Event Hubs"), "{e}");
    assert_eq!(roles::parse("# only a comment\n").unwrap(), vec![]);
}

#[test]
fn role_scopes_cover_the_entity_and_below() {
    let a = roles::parse(&format!(
        "{SENDER}:Data Sender:tcpulse\n{SENDER}:Data Receiver:tcpulse/consumergroups/cg\n\
         {RECEIVER}:Data Receiver\n"
    ))
    .unwrap();
    // The hub's audience: Sender on the hub, Receiver only on its consumer group cg.
    let g = roles::grants_for(&a, &SENDER.to_uppercase(), "tcpulse");
    assert_eq!(
        g,
        vec![
            ("tcpulse".to_string(), Rights::SEND),
            ("tcpulse/consumergroups/cg".to_string(), Rights::LISTEN)
        ]
    );
    // The namespace audience: nothing on the namespace, the hub-scoped grants below it.
    let g = roles::grants_for(&a, SENDER, "");
    assert_eq!(g[0], (String::new(), Rights::NONE));
    assert_eq!(g.len(), 3);
    // Another hub: nothing.
    assert_eq!(
        roles::grants_for(&a, SENDER, "other"),
        vec![("other".to_string(), Rights::NONE)]
    );
    // A namespace-wide Receiver covers any hub; an unknown principal gets nothing.
    assert_eq!(roles::grants_for(&a, RECEIVER, "x")[0].1, Rights::LISTEN);
    assert_eq!(
        roles::grants_for(&a, "nobody", "tcpulse")[0].1,
        Rights::NONE
    );
}

#[test]
fn key_file_reads_jwks_and_pem_and_refuses_garbage() {
    let issuer = Issuer::new("k1");
    let mut jwks: Value = serde_json::from_str(&issuer.jwks()).unwrap();
    // Entra's JWKS also lists keys this hub cannot use: skipped.
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}));
    assert_eq!(KeySet::parse(&jwks.to_string()).unwrap().len(), 1);
    assert_eq!(KeySet::parse(&issuer.jwk().to_string()).unwrap().len(), 1);

    let pkcs1 = issuer.key.public_key().as_ref().to_vec();
    let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
        issuer.key.public_key(),
    )
    .unwrap();
    let both = format!(
        "{}{}",
        pem("PUBLIC KEY", spki.as_ref()),
        pem("RSA PUBLIC KEY", &pkcs1)
    );
    assert_eq!(KeySet::parse(&both).unwrap().len(), 2);
    // A PEM key has no kid: it verifies a token whatever the token's kid.
    let v = Verifier::new(
        KeySet::parse(&pem("PUBLIC KEY", spki.as_ref())).unwrap(),
        AUD,
        None,
    );
    assert!(v.verify(&issuer.sign(&claims(SENDER)), now()).is_ok());

    assert!(KeySet::parse("{}").is_err());
    assert!(KeySet::parse("{\"keys\": []}").is_err());
    assert!(KeySet::parse("not a key").is_err());
    let e = KeySet::parse(&pem("PUBLIC KEY", b"not der")).unwrap_err();
    assert!(e.contains("not an RSA public key"), "{e}");
}

#[test]
fn a_valid_token_names_its_principal_and_expiry() {
    let issuer = Issuer::new("k1");
    let c = claims(SENDER);
    let v = verifier(&issuer, Some(ISS))
        .verify(&issuer.sign(&c), now())
        .unwrap();
    assert_eq!(v.principal, SENDER);
    assert_eq!(Some(v.expires_unix), c["exp"].as_u64());
    // `sub` stands in for a missing `oid`; an audience array and a trailing slash match.
    let mut c = claims("x");
    c.as_object_mut().unwrap().remove("oid");
    c["sub"] = json!("the-sub");
    c["aud"] = json!(["other", format!("{AUD}/")]);
    let v = verifier(&issuer, Some("https://sts.windows.net/tenant-1"))
        .verify(&issuer.sign(&c), now())
        .unwrap();
    assert_eq!(v.principal, "the-sub");
}

#[test]
fn each_bad_token_is_refused_with_its_own_reason() {
    let issuer = Issuer::new("k1");
    let v = verifier(&issuer, Some(ISS));
    let refuse = |token: &str| v.verify(token, now()).unwrap_err();

    let mut c = claims(SENDER);
    c["exp"] = json!(now() - 60);
    assert!(matches!(refuse(&issuer.sign(&c)), Refusal::Expired { .. }));
    let mut c = claims(SENDER);
    c["exp"] = json!(now());
    assert!(
        matches!(refuse(&issuer.sign(&c)), Refusal::Expired { .. }),
        "exp has no leeway"
    );
    let mut c = claims(SENDER);
    c["nbf"] = json!(now() + 600);
    assert!(matches!(
        refuse(&issuer.sign(&c)),
        Refusal::NotYetValid { .. }
    ));
    let mut c = claims(SENDER);
    c["nbf"] = json!(now() + 2);
    assert!(
        v.verify(&issuer.sign(&c), now()).is_ok(),
        "nbf has a small leeway"
    );
    let mut c = claims(SENDER);
    c["aud"] = json!("https://storage.azure.com/");
    assert!(matches!(
        refuse(&issuer.sign(&c)),
        Refusal::InvalidAudience { .. }
    ));
    let mut c = claims(SENDER);
    c["iss"] = json!("https://sts.windows.net/other-tenant/");
    assert!(matches!(
        refuse(&issuer.sign(&c)),
        Refusal::InvalidIssuer { .. }
    ));
    // Without a configured issuer any issuer whose key is trusted passes.
    assert!(verifier(&issuer, None)
        .verify(&issuer.sign(&c), now())
        .is_ok());

    // Another issuer's key, even under the same kid; a changed payload; not RS256.
    let other = Issuer::new("k2");
    assert!(matches!(
        refuse(&other.sign(&claims(SENDER))),
        Refusal::InvalidSignature(_)
    ));
    let impostor = Issuer::new("k1");
    assert!(matches!(
        refuse(&impostor.sign(&claims(SENDER))),
        Refusal::InvalidSignature(_)
    ));
    let good = issuer.sign(&claims(SENDER));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims(RECEIVER).to_string()),
        parts[2]
    );
    assert!(matches!(refuse(&forged), Refusal::InvalidSignature(_)));
    let hs = issuer.sign_with_header(&json!({"alg": "HS256", "kid": "k1"}), &claims(SENDER));
    assert!(matches!(refuse(&hs), Refusal::InvalidSignature(_)));

    // Not a JWT; no exp; no principal.
    assert!(matches!(refuse("garbage"), Refusal::Malformed(_)));
    assert!(matches!(
        refuse("SharedAccessSignature sr=x&sig=y&se=1&skn=k"),
        Refusal::Malformed(_)
    ));
    let mut c = claims(SENDER);
    c.as_object_mut().unwrap().remove("exp");
    assert!(matches!(refuse(&issuer.sign(&c)), Refusal::Malformed(_)));
    let mut c = claims(SENDER);
    c.as_object_mut().unwrap().remove("oid");
    c.as_object_mut().unwrap().remove("sub");
    assert!(matches!(refuse(&issuer.sign(&c)), Refusal::Malformed(_)));
}

#[test]
fn refusal_texts_are_the_services_and_distinct() {
    let all = [
        Refusal::NotConfigured,
        Refusal::Malformed(String::new()),
        Refusal::InvalidSignature(String::new()),
        Refusal::Expired { exp: 1 },
        Refusal::NotYetValid { nbf: 1 },
        Refusal::InvalidAudience { aud: "a".into() },
        Refusal::InvalidIssuer { iss: "i".into() },
    ];
    let texts: std::collections::BTreeSet<String> = all.iter().map(Refusal::description).collect();
    assert_eq!(texts.len(), all.len());
    assert!(all.iter().all(|r| r.status() == 401));
    assert_eq!(
        Refusal::Expired { exp: 1 }.description(),
        "ExpiredToken: The token is expired."
    );
    assert_eq!(
        Refusal::InvalidAudience { aud: "a".into() }.description(),
        "InvalidAudience: Invalid authorization token audience."
    );
    assert_eq!(
        Refusal::InvalidIssuer { iss: "i".into() }.description(),
        "InvalidIssuer: Token issuer is invalid."
    );
    assert!(Refusal::NotConfigured
        .description()
        .contains("--entra-jwks-file"));
}

fn entra(issuer: &Issuer, table: &str) -> Entra {
    Entra {
        verifier: verifier(issuer, Some(ISS)),
        assignments: roles::parse(table).unwrap(),
    }
}

#[test]
fn put_token_grants_the_roles_of_the_principal_until_exp() {
    let issuer = Issuer::new("k1");
    let e = entra(
        &issuer,
        &format!("{SENDER}:Azure Event Hubs Data Sender:tcpulse\n{RECEIVER}:Azure Event Hubs Data Receiver"),
    );
    let auth = ConnAuth::default();
    let ok = e
        .put_token(
            &auth,
            "sb://localhost:5671/tcpulse",
            &issuer.sign(&claims(SENDER)),
            None,
        )
        .unwrap();
    assert_eq!(ok.rights, Rights::SEND);
    assert!(ok.expires > Instant::now() + Duration::from_secs(3500));
    assert!(auth.check("tcpulse/partitions/0", Right::Send).is_ok());
    let denied = auth
        .check(
            "tcpulse/consumergroups/$default/partitions/0",
            Right::Listen,
        )
        .unwrap_err();
    assert!(
        denied.0.contains("'Listen' claim(s) are required"),
        "{denied}"
    );

    // A receiver's token put for the consumer group's audience; capped by max_lifetime.
    let auth = ConnAuth::default();
    let ok = e
        .put_token(
            &auth,
            "sb://localhost/tcpulse/consumergroups/$Default",
            &issuer.sign(&claims(RECEIVER)),
            Some(Duration::from_secs(4)),
        )
        .unwrap();
    assert!(ok.expires <= Instant::now() + Duration::from_secs(4));
    assert!(auth
        .check(
            "tcpulse/consumergroups/$default/partitions/1",
            Right::Listen
        )
        .is_ok());
}

#[test]
fn a_valid_token_without_a_role_is_accepted_and_grants_nothing() {
    let issuer = Issuer::new("k1");
    let e = entra(
        &issuer,
        &format!("{SENDER}:Azure Event Hubs Data Sender:other"),
    );
    let auth = ConnAuth::default();
    let ok = e
        .put_token(&auth, "sb://h/tcpulse", &issuer.sign(&claims(SENDER)), None)
        .unwrap();
    assert_eq!(ok.rights, Rights::NONE);
    assert!(auth.was_granted(), "authenticated: the 20 s rule is met");
    let denied = auth.check("tcpulse", Right::Send).unwrap_err();
    assert_eq!(
        denied.0,
        "Unauthorized access. 'Send' claim(s) are required to perform this operation. Resource: 'tcpulse'."
    );
    // A refused token grants nothing at all.
    let auth = ConnAuth::default();
    let mut c = claims(SENDER);
    c["exp"] = json!(now() - 1);
    assert!(e
        .put_token(&auth, "sb://h/tcpulse", &issuer.sign(&c), None)
        .is_err());
    assert!(!auth.was_granted());
}
