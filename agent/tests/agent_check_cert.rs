//! `check-cert` on certificates generated here with rcgen: a private CA (root and
//! intermediate) issues leaves with the properties under test; PFX files are written with
//! p12-keystore and, for interoperability, with the `openssl` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures

use std::path::{Path, PathBuf};
use std::process::Command;

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use tcpulse_agent::check_cert::{check, name_matches, Report, Status};

const PASSWORD: &str = "pfx-pass";
const FQDN: &str = "tc-eu.example.com";

struct Ca {
    root_der: Vec<u8>,
    inter_der: Vec<u8>,
    inter_params: CertificateParams,
    inter_key: KeyPair,
}

fn rsa() -> KeyPair {
    KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap()
}

fn ca() -> Ca {
    let root_key = rsa();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name
        .push(DnType::CommonName, "tcpulse Test Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let inter_key = rsa();
    let mut inter = CertificateParams::new(Vec::<String>::new()).unwrap();
    inter
        .distinguished_name
        .push(DnType::CommonName, "tcpulse Test Intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let inter_cert = inter
        .signed_by(&inter_key, &Issuer::new(root, &root_key))
        .unwrap();
    Ca {
        root_der: root_cert.der().to_vec(),
        inter_der: inter_cert.der().to_vec(),
        inter_params: inter,
        inter_key,
    }
}

struct Leaf {
    names: Vec<&'static str>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    ec: bool,
    expired: bool,
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf {
            names: vec![FQDN],
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ec: false,
            expired: false,
        }
    }
}

/// Issues the leaf; returns (leaf DER, key PKCS#8 DER, key PEM, leaf PEM).
fn issue(ca: &Ca, leaf: Leaf) -> (Vec<u8>, Vec<u8>, String, String) {
    let key = if leaf.ec {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    } else {
        rsa()
    };
    let mut p =
        CertificateParams::new(leaf.names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name.push(DnType::CommonName, leaf.names[0]);
    p.extended_key_usages = leaf.eku;
    if leaf.expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    } else {
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    }
    let cert = p
        .signed_by(&key, &Issuer::from_params(&ca.inter_params, &ca.inter_key))
        .unwrap();
    (
        cert.der().to_vec(),
        key.serialize_der(),
        key.serialize_pem(),
        cert.pem(),
    )
}

fn write_pfx(dir: &Path, name: &str, key_der: &[u8], chain: &[&[u8]]) -> PathBuf {
    let key = PrivateKey::from_der(key_der).unwrap();
    let certs = chain.iter().map(|d| Certificate::from_der(d).unwrap());
    let mut ks = KeyStore::new();
    ks.add_entry(
        "tc",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(b"tc-key".as_slice(), key, certs)),
    );
    let path = dir.join(name);
    std::fs::write(&path, ks.writer(PASSWORD).write().unwrap()).unwrap();
    path
}

fn now() -> i64 {
    tcpulse_schema::Timestamp::now().unix_millis() / 1000
}

fn status(r: &Report, name: &str) -> Status {
    r.check(name)
        .unwrap_or_else(|| panic!("no check {name}"))
        .status
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
}

fn fixture() -> Fixture {
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        ca: ca(),
    }
}

impl Fixture {
    fn pfx(&self, name: &str, leaf: Leaf, with_intermediate: bool) -> PathBuf {
        let (der, key, _, _) = issue(&self.ca, leaf);
        let chain: Vec<&[u8]> = if with_intermediate {
            vec![&der, &self.ca.inter_der]
        } else {
            vec![&der]
        };
        write_pfx(self.dir.path(), name, &key, &chain)
    }
}

#[test]
fn agent_check_cert_good_pfx_passes_every_check() {
    let f = fixture();
    let path = f.pfx("good.pfx", Leaf::default(), true);
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert!(r.passed(), "{r}");
    for name in [
        "format",
        "private key",
        "key type",
        "EKU",
        "name",
        "chain",
        "validity",
    ] {
        assert_eq!(status(&r, name), Status::Pass, "{name}: {r}");
    }
    assert!(r.days_left > 2000.0);
    assert!(
        r.check("chain")
            .unwrap()
            .detail
            .contains("tcpulse Test Intermediate"),
        "{r}"
    );
    // With the root in the bundle as well, still fine.
    let (der, key, _, _) = issue(&f.ca, Leaf::default());
    let full = write_pfx(
        f.dir.path(),
        "full.pfx",
        &key,
        &[&der, &f.ca.inter_der, &f.ca.root_der],
    );
    assert!(check(&full, Some(PASSWORD), Some(FQDN), now())
        .unwrap()
        .passed());
}

#[test]
fn agent_check_cert_wrong_eku_fails() {
    let f = fixture();
    let path = f.pfx(
        "server-only.pfx",
        Leaf {
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            ..Leaf::default()
        },
        true,
    );
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert_eq!(status(&r, "EKU"), Status::Fail);
    assert!(r.check("EKU").unwrap().detail.contains("clientAuth"), "{r}");
    assert!(!r.passed());
    let none = f.pfx(
        "no-eku.pfx",
        Leaf {
            eku: vec![],
            ..Leaf::default()
        },
        true,
    );
    assert_eq!(
        status(
            &check(&none, Some(PASSWORD), Some(FQDN), now()).unwrap(),
            "EKU"
        ),
        Status::Fail
    );
}

#[test]
fn agent_check_cert_wrong_name_fails() {
    let f = fixture();
    let path = f.pfx(
        "other.pfx",
        Leaf {
            names: vec!["other.example.com"],
            ..Leaf::default()
        },
        true,
    );
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert_eq!(status(&r, "name"), Status::Fail, "{r}");
    // A SAN list covering several regional connectors matches each of them.
    let multi = f.pfx(
        "multi.pfx",
        Leaf {
            names: vec!["tc-us.example.com", FQDN],
            ..Leaf::default()
        },
        true,
    );
    assert_eq!(
        status(
            &check(&multi, Some(PASSWORD), Some(FQDN), now()).unwrap(),
            "name"
        ),
        Status::Pass
    );
}

#[test]
fn agent_check_cert_wildcards_follow_rfc6125() {
    let f = fixture();
    let wild = f.pfx(
        "wild.pfx",
        Leaf {
            names: vec!["*.example.com"],
            ..Leaf::default()
        },
        true,
    );
    let r = check(&wild, Some(PASSWORD), Some("tc-eu.example.com"), now()).unwrap();
    assert_eq!(status(&r, "name"), Status::Pass, "{r}");
    let r = check(&wild, Some(PASSWORD), Some("a.b.example.com"), now()).unwrap();
    assert_eq!(status(&r, "name"), Status::Fail, "one label only: {r}");
    let r = check(&wild, Some(PASSWORD), Some("example.com"), now()).unwrap();
    assert_eq!(status(&r, "name"), Status::Fail, "{r}");
    let partial = f.pfx(
        "partial.pfx",
        Leaf {
            names: vec!["f*.example.com"],
            ..Leaf::default()
        },
        true,
    );
    let r = check(&partial, Some(PASSWORD), Some("foo.example.com"), now()).unwrap();
    assert_eq!(status(&r, "name"), Status::Fail, "{r}");
    assert!(r.check("name").unwrap().detail.contains("RFC 6125"), "{r}");
    assert!(
        name_matches("*.example.com", "x.example.com")
            && !name_matches("*.example.com", "a.b.example.com")
    );
}

#[test]
fn agent_check_cert_expired_fails_with_date() {
    let f = fixture();
    let path = f.pfx(
        "expired.pfx",
        Leaf {
            expired: true,
            ..Leaf::default()
        },
        true,
    );
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert_eq!(status(&r, "validity"), Status::Fail);
    assert!(r.days_left < 0.0);
    assert!(
        r.check("validity")
            .unwrap()
            .detail
            .contains("expired on 2021-01-01"),
        "{r}"
    );
}

#[test]
fn agent_check_cert_ec_key_fails() {
    let f = fixture();
    let path = f.pfx(
        "ec.pfx",
        Leaf {
            ec: true,
            ..Leaf::default()
        },
        true,
    );
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert_eq!(status(&r, "key type"), Status::Fail, "{r}");
    assert!(r.check("key type").unwrap().detail.starts_with("EC"), "{r}");
    assert_eq!(status(&r, "EKU"), Status::Pass);
}

#[test]
fn agent_check_cert_missing_intermediate_fails() {
    let f = fixture();
    let path = f.pfx("leaf-only.pfx", Leaf::default(), false);
    let r = check(&path, Some(PASSWORD), Some(FQDN), now()).unwrap();
    assert_eq!(status(&r, "chain"), Status::Fail, "{r}");
    assert!(
        r.check("chain")
            .unwrap()
            .detail
            .contains("intermediate missing"),
        "{r}"
    );
}

#[test]
fn agent_check_cert_pem_and_wrong_password() {
    let f = fixture();
    let (_, _, key_pem, leaf_pem) = issue(&f.ca, Leaf::default());
    let pem = f.dir.path().join("tc.pem");
    std::fs::write(&pem, format!("{leaf_pem}{}", pem_of(&f.ca.inter_der))).unwrap();
    let r = check(&pem, None, Some(FQDN), now()).unwrap();
    assert_eq!(
        status(&r, "format"),
        Status::Fail,
        "PEM is not what the connector takes: {r}"
    );
    assert_eq!(status(&r, "private key"), Status::Fail);
    assert_eq!(status(&r, "chain"), Status::Pass);
    std::fs::write(&pem, format!("{leaf_pem}{key_pem}")).unwrap();
    assert_eq!(
        status(
            &check(&pem, None, Some(FQDN), now()).unwrap(),
            "private key"
        ),
        Status::Pass
    );
    let pfx = f.pfx("good.pfx", Leaf::default(), true);
    let err = check(&pfx, Some("wrong"), Some(FQDN), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("TCPULSE_CERT_PASSWORD"), "{err}");
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn openssl() -> &'static str {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the openssl CLI is needed for this test: apt-get install -y openssl"
    );
    "openssl"
}

#[test]
fn agent_check_cert_reads_openssl_pfx_modern_and_legacy() {
    let f = fixture();
    let (_, _, key_pem, leaf_pem) = issue(&f.ca, Leaf::default());
    let d = f.dir.path();
    std::fs::write(d.join("key.pem"), key_pem).unwrap();
    std::fs::write(d.join("leaf.pem"), leaf_pem).unwrap();
    std::fs::write(d.join("inter.pem"), pem_of(&f.ca.inter_der)).unwrap();
    for (name, extra) in [
        ("modern.pfx", vec![]),
        // The layout Windows exports (TripleDES-SHA1).
        (
            "legacy.pfx",
            vec![
                "-certpbe",
                "PBE-SHA1-3DES",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
        ),
    ] {
        let out = Command::new(openssl())
            .current_dir(d)
            .args([
                "pkcs12",
                "-export",
                "-inkey",
                "key.pem",
                "-in",
                "leaf.pem",
                "-certfile",
                "inter.pem",
            ])
            .args(["-passout", &format!("pass:{PASSWORD}"), "-out", name])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = check(&d.join(name), Some(PASSWORD), Some(FQDN), now()).unwrap();
        assert!(r.passed(), "{name}: {r}");
    }
}

#[test]
fn agent_check_cert_binary_exit_codes_and_report() {
    let f = fixture();
    let good = f.pfx("good.pfx", Leaf::default(), true);
    let bad = f.pfx(
        "bad.pfx",
        Leaf {
            names: vec!["other.example.com"],
            ..Leaf::default()
        },
        false,
    );
    let bin = env!("CARGO_BIN_EXE_tcpulse-agent");
    let run = |p: &Path| {
        Command::new(bin)
            .args(["check-cert", "--cert"])
            .arg(p)
            .args(["--fqdn", FQDN])
            .env("TCPULSE_CERT_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let out = run(&good);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("PASS  EKU") && text.contains("Result: OK"),
        "{text}"
    );
    let out = run(&bad);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  name")
            && text.contains("FAIL  chain")
            && text.contains("Result: FAILED"),
        "{text}"
    );
    let out = run(Path::new("/nonexistent.pfx"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tcpulse-agent: cannot read certificate file") && err.lines().count() == 1,
        "{err}"
    );
}

/// r12 (11): an RSA key under 2048 bits fails `check-cert` with the reason; 2048 passes.
/// The leaf keys are made by the `openssl` CLI (rcgen does not make 1024-bit keys) and
/// signed by the test intermediate, so the key size is the only fault.
#[test]
fn r12_agent_check_cert_rsa_1024_fails_and_2048_passes() {
    let f = fixture();
    let d = f.dir.path();
    std::fs::write(d.join("inter.pem"), pem_of(&f.ca.inter_der)).unwrap();
    std::fs::write(d.join("inter-key.pem"), f.ca.inter_key.serialize_pem()).unwrap();
    std::fs::write(
        d.join("ext.cnf"),
        format!("subjectAltName=DNS:{FQDN}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(openssl())
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for bits in [1024, 2048] {
        let (key, csr, leaf, pfx) = (
            format!("k{bits}.pem"),
            format!("r{bits}.csr"),
            format!("c{bits}.pem"),
            format!("tc{bits}.pfx"),
        );
        run(&["genrsa", "-out", &key, &bits.to_string()]);
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={FQDN}"),
            "-out",
            &csr,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "inter.pem",
            "-CAkey",
            "inter-key.pem",
            "-set_serial",
            "7",
            "-days",
            "365",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            &leaf,
        ]);
        run(&[
            "pkcs12",
            "-export",
            "-inkey",
            &key,
            "-in",
            &leaf,
            "-certfile",
            "inter.pem",
            "-passout",
            &format!("pass:{PASSWORD}"),
            "-out",
            &pfx,
        ]);
        let r = check(&d.join(&pfx), Some(PASSWORD), Some(FQDN), now()).unwrap();
        let key_check = r.check("key type").unwrap();
        if bits == 1024 {
            assert!(!r.passed(), "{r}");
            assert_eq!(key_check.status, Status::Fail, "{r}");
            assert!(
                key_check.detail.contains("RSA 1024 bits is too weak")
                    && key_check.detail.contains("2048"),
                "{r}"
            );
            for other in ["format", "private key", "EKU", "name", "chain", "validity"] {
                assert_eq!(status(&r, other), Status::Pass, "only the key fails: {r}");
            }
            let out = Command::new(env!("CARGO_BIN_EXE_tcpulse-agent"))
                .args(["check-cert", "--cert"])
                .arg(d.join(&pfx))
                .args(["--fqdn", FQDN])
                .env("TCPULSE_CERT_PASSWORD", PASSWORD)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{text}");
            assert!(
                text.contains("FAIL  key type") && text.contains("Result: FAILED"),
                "{text}"
            );
        } else {
            assert!(r.passed(), "{r}");
            assert_eq!(key_check.detail, "RSA 2048 bits", "{r}");
        }
    }
}
