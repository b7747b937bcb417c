//! `tcpulse-agent check-cert`: checks a Teams Connector certificate against Pexip's
//! requirements (docs.pexip.com "Planning, prerequisites and firewall ports", see
//! `shared/seed/teams-connector-planning.txt`), and reads certificate expiry for health.
//!
//! The requirements, one check each:
//! - **format**: a PFX (PKCS#12) file, with the private key in it;
//! - **key type**: an RSA key of at least [`MIN_RSA_BITS`] bits;
//! - **EKU**: Enhanced Key Usage with both server and client authentication (the connector
//!   and Pexip Infinity authenticate each other with TLS client certificates);
//! - **name**: subject alternative names (or, without any, the subject CN) match the
//!   connector FQDN, wildcards per RFC 6125 as Pexip applies it: `*` only as the whole
//!   left-most label, matching exactly one label;
//! - **chain**: every intermediate certificate is in the bundle (the root may be left out);
//!   a self-signed certificate fails (it must be publicly signed);
//! - **validity**: valid now, with days to expiry (a warning under 30 days).
//!
//! PFX parsing is p12-keystore (pure Rust; reads modern PBES2/AES and legacy 3DES/RC2
//! PFX files as Windows and OpenSSL write them); X.509 parsing and chain signature checks
//! are x509-parser.

use std::fmt::{self, Write as _};
use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Smallest RSA key accepted, bits (CA/Browser Forum baseline requirements since 2013).
pub const MIN_RSA_BITS: usize = 2048;

/// Environment variable holding the PFX password.
pub const ENV_CERT_PASSWORD: &str = "TCPULSE_CERT_PASSWORD";

/// Days to expiry under which the validity check warns (the dashboards' warning level).
pub const WARN_DAYS: f64 = tcpulse_schema::capacity::CERT_WARNING_DAYS;

/// How the certificate file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PKCS#12 / PFX.
    Pfx,
    /// PEM (`-----BEGIN CERTIFICATE-----`).
    Pem,
}

/// The certificates (DER, in file order) and private key algorithm of a bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// File format.
    pub format: Format,
    /// Every certificate in the file.
    pub certs: Vec<Vec<u8>>,
    /// The private key's algorithm, if a key is in the file: `rsa`, `ec` or an OID.
    pub key: Option<String>,
}

/// The file could not be read as a certificate bundle at all.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading failed.
    #[error("cannot read certificate file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PFX could not be opened (wrong password, damaged, unsupported encryption).
    #[error("cannot open PFX {path}: {message}; check the password in {ENV_CERT_PASSWORD}")]
    Pkcs12 {
        /// The file.
        path: String,
        /// The decoder's message.
        message: String,
    },
    /// No certificate in the file.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// A certificate could not be parsed.
    #[error("certificate {index} in {path} is not valid X.509: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Position in the file, from 0.
        index: usize,
        /// The parser's message.
        message: String,
    },
}

/// Reads a PFX (password from the argument) or PEM bundle.
pub fn load_bundle(path: &Path, password: Option<&str>) -> Result<Bundle, CertError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CertError::Read {
        path: name.clone(),
        source,
    })?;
    let bundle = if data.windows(11).any(|w| w == b"-----BEGIN ") {
        let mut certs = Vec::new();
        let mut key = None;
        for pem in x509_parser::pem::Pem::iter_from_buffer(&data).flatten() {
            match pem.label.as_str() {
                "CERTIFICATE" => certs.push(pem.contents),
                "RSA PRIVATE KEY" => key = Some("rsa".to_owned()),
                "EC PRIVATE KEY" => key = Some("ec".to_owned()),
                "PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => key = Some("pkcs8".to_owned()),
                _ => {}
            }
        }
        Bundle {
            format: Format::Pem,
            certs,
            key,
        }
    } else {
        let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&data, password.unwrap_or(""))
            .map_err(|e| CertError::Pkcs12 {
                path: name.clone(),
                message: e.to_string(),
            })?;
        let key = archive.keys.first().map(|k| {
            let oid = k.key.oid().to_string();
            match oid.as_str() {
                "1.2.840.113549.1.1.1" => "rsa".to_owned(),
                "1.2.840.10045.2.1" => "ec".to_owned(),
                _ => oid,
            }
        });
        let certs = archive
            .certs
            .iter()
            .map(|c| c.cert.as_der().to_vec())
            .collect();
        Bundle {
            format: Format::Pfx,
            certs,
            key,
        }
    };
    if bundle.certs.is_empty() {
        return Err(CertError::NoCertificate(name));
    }
    Ok(bundle)
}

fn parse_all<'a>(path: &Path, bundle: &'a Bundle) -> Result<Vec<X509Certificate<'a>>, CertError> {
    bundle
        .certs
        .iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| CertError::Parse {
                    path: path.display().to_string(),
                    index,
                    message: e.to_string(),
                })
        })
        .collect()
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    c.basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca)
}

/// Index of the end-entity certificate: the first that is not a CA, else the first.
fn leaf_index(certs: &[X509Certificate<'_>]) -> usize {
    certs.iter().position(|c| !is_ca(c)).unwrap_or(0)
}

fn issued_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn is_self_signed(c: &X509Certificate<'_>) -> bool {
    issued_by(c, c)
}

/// Days from `now_unix` (seconds) until the end-entity certificate of `bundle` expires;
/// negative once expired.
pub fn expiry_days(path: &Path, bundle: &Bundle, now_unix: i64) -> Result<f64, CertError> {
    let certs = parse_all(path, bundle)?;
    let leaf = &certs[leaf_index(&certs)];
    Ok((leaf.validity().not_after.timestamp() - now_unix) as f64 / 86_400.0)
}

/// Whether a certificate name (`pattern`, from SAN or CN) matches `fqdn` under RFC 6125
/// as Pexip applies it: exact (case-insensitive, trailing dot ignored), or `*.` followed by
/// at least two labels, the `*` standing for exactly one non-empty left-most label.
/// `f*.example.com`, `*.*.example.com` and `*.com` match nothing.
pub fn name_matches(pattern: &str, fqdn: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let h = fqdn.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() || h.contains('*') {
        return false;
    }
    match p.strip_prefix("*.") {
        Some(rest) => {
            if rest.contains('*')
                || rest.split('.').count() < 2
                || rest.split('.').any(str::is_empty)
            {
                return false;
            }
            matches!(h.split_once('.'), Some((first, tail)) if !first.is_empty() && tail == rest)
        }
        None => !p.contains('*') && p == h,
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Meets the requirement.
    Pass,
    /// Meets it, but needs attention soon.
    Warn,
    /// Does not meet it.
    Fail,
    /// Not checked (for example no FQDN given).
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Short name: `format`, `private key`, `key type`, `EKU`, `name`, `chain`, `validity`.
    pub name: &'static str,
    /// Result.
    pub status: Status,
    /// What was found and, on failure, what to do.
    pub detail: String,
}

/// Every check of one certificate file.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The file checked.
    pub path: String,
    /// Subject of the end-entity certificate.
    pub subject: String,
    /// Issuer of the end-entity certificate.
    pub issuer: String,
    /// Days to expiry of the end-entity certificate (negative when expired).
    pub days_left: f64,
    /// The checks, in the order of the module docs.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Teams Connector certificate check: {}", self.path)?;
        writeln!(f, "  subject: {}", self.subject)?;
        writeln!(f, "  issuer:  {}", self.issuer)?;
        for c in &self.checks {
            writeln!(f, "  {}  {:<12} {}", c.status, c.name, c.detail)?;
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            write!(f, "Result: OK")
        } else {
            write!(
                f,
                "Result: FAILED ({failed} of {} checks)",
                self.checks.len()
            )
        }
    }
}

/// Bit length of an RSA modulus (big-endian, possibly with DER's leading zero byte).
fn modulus_bits(modulus: &[u8]) -> usize {
    let start = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[start..];
    m.first()
        .map_or(0, |b| m.len() * 8 - b.leading_zeros() as usize)
}

fn fmt_time(unix: i64) -> String {
    tcpulse_schema::Timestamp::from_unix_millis(unix.saturating_mul(1000))
        .map_or_else(|| unix.to_string(), |t| t.to_string()[..10].to_owned())
}

/// Runs every check on `path` (PFX with `password`, or PEM) for connector `fqdn` at
/// `now_unix` (seconds). `Err` only when the file cannot be read as certificates at all.
pub fn check(
    path: &Path,
    password: Option<&str>,
    fqdn: Option<&str>,
    now_unix: i64,
) -> Result<Report, CertError> {
    let bundle = load_bundle(path, password)?;
    let certs = parse_all(path, &bundle)?;
    let li = leaf_index(&certs);
    let leaf = &certs[li];
    let days_left = (leaf.validity().not_after.timestamp() - now_unix) as f64 / 86_400.0;
    let checks = vec![
        format_check(&bundle),
        private_key_check(&bundle),
        key_type_check(leaf, &bundle),
        eku_check(leaf),
        name_check(leaf, fqdn),
        chain_check(&certs, li, now_unix),
        validity_check(leaf, now_unix),
    ];
    Ok(Report {
        path: path.display().to_string(),
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        days_left,
        checks,
    })
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
        }
    }
}

/// A PFX; PEM is refused (the connector's installer takes a PFX).
fn format_check(bundle: &Bundle) -> Check {
    match bundle.format {
        Format::Pfx => Check::new(
            "format",
            Status::Pass,
            format!("PFX (PKCS#12), {} certificate(s)", bundle.certs.len()),
        ),
        Format::Pem => Check::new(
            "format",
            Status::Fail,
            "PEM; the Teams Connector needs a PFX (PKCS#12) with the private key and intermediates \
             (convert on the Management Node or with `openssl pkcs12 -export`)",
        ),
    }
}

/// The private key is in the file.
fn private_key_check(bundle: &Bundle) -> Check {
    match &bundle.key {
        Some(k) => Check::new("private key", Status::Pass, format!("present ({k})")),
        None => Check::new(
            "private key",
            Status::Fail,
            "missing; export the PFX including the private key",
        ),
    }
}

/// An RSA key of at least [`MIN_RSA_BITS`] bits.
fn key_type_check(leaf: &X509Certificate<'_>, bundle: &Bundle) -> Check {
    let spki = leaf.public_key();
    let bits = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
        Ok(other) => other.key_size(),
        Err(_) => 0,
    };
    let key_ok = spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION
        && matches!(spki.parsed(), Ok(PublicKey::RSA(_)))
        && bundle
            .key
            .as_deref()
            .is_none_or(|k| k == "rsa" || k == "pkcs8");
    if key_ok && bits < MIN_RSA_BITS {
        return Check::new(
            "key type",
            Status::Fail,
            format!(
                "RSA {bits} bits is too weak: public CAs have issued no RSA key under {MIN_RSA_BITS} bits since 2013 and clients refuse them; request a new certificate with an RSA key of 2048 bits or more"
            ),
        );
    }
    if key_ok {
        return Check::new("key type", Status::Pass, format!("RSA {bits} bits"));
    }
    let kind = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        "EC".to_owned()
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        format!(
            "RSA certificate with a {} private key",
            bundle.key.as_deref().unwrap_or("?")
        )
    } else {
        spki.algorithm.algorithm.to_id_string()
    };
    Check::new(
        "key type",
        Status::Fail,
        format!("{kind} ({bits} bits); the Teams Connector requires an RSA key"),
    )
}

/// Enhanced Key Usage with both server and client authentication.
fn eku_check(leaf: &X509Certificate<'_>) -> Check {
    let eku = match leaf.extended_key_usage() {
        Ok(Some(eku)) => eku.value,
        Ok(None) => {
            return Check::new(
                "EKU",
                Status::Fail,
                "no Enhanced Key Usage extension; Pexip requires serverAuth and clientAuth",
            )
        }
        Err(e) => {
            return Check::new(
                "EKU",
                Status::Fail,
                format!("unreadable Enhanced Key Usage: {e}"),
            )
        }
    };
    let mut missing = Vec::new();
    if !eku.server_auth {
        missing.push("serverAuth (server authentication)");
    }
    if !eku.client_auth {
        missing.push("clientAuth (client authentication)");
    }
    if missing.is_empty() {
        return Check::new("EKU", Status::Pass, "serverAuth and clientAuth");
    }
    Check::new(
        "EKU",
        Status::Fail,
        format!(
            "missing {}; request the certificate with both",
            missing.join(" and ")
        ),
    )
}

/// The DNS names the certificate is for: its SANs, or without any its subject CN; and
/// which of the two they are.
fn leaf_names(leaf: &X509Certificate<'_>) -> (Vec<String>, &'static str) {
    let sans: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some((*n).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !sans.is_empty() {
        return (sans, "SAN");
    }
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_owned);
    (cn.into_iter().collect(), "CN")
}

/// A name matches the connector FQDN (skipped without one).
fn name_check(leaf: &X509Certificate<'_>, fqdn: Option<&str>) -> Check {
    let (names, from) = leaf_names(leaf);
    let Some(fqdn) = fqdn else {
        return Check::new(
            "name",
            Status::Skip,
            format!("no --fqdn given; {from}: {}", names.join(", ")),
        );
    };
    if let Some(n) = names.iter().find(|n| name_matches(n, fqdn)) {
        return Check::new("name", Status::Pass, format!("{fqdn} matches {from} {n}"));
    }
    let bad: Vec<&str> = names
        .iter()
        .filter(|n| n.contains('*') && !n.starts_with("*."))
        .map(String::as_str)
        .collect();
    let note = if bad.is_empty() {
        String::new()
    } else {
        format!(
            " ({} not valid wildcards under RFC 6125: `*` must be the whole left-most label)",
            bad.join(", ")
        )
    };
    Check::new(
        "name",
        Status::Fail,
        format!("{fqdn} matches no {from} name [{}]{note}", names.join(", ")),
    )
}

/// The chain from the leaf (index `li`) upwards, as indexes into `certs`: each one issued by
/// the next, ending at a self-signed certificate or where the bundle has no issuer.
fn chain_from(certs: &[X509Certificate<'_>], li: usize) -> Vec<usize> {
    let mut chain = vec![li];
    let mut cur = li;
    while let Some(next) =
        (0..certs.len()).find(|&j| !chain.contains(&j) && issued_by(&certs[cur], &certs[j]))
    {
        chain.push(next);
        cur = next;
        if is_self_signed(&certs[next]) {
            break;
        }
    }
    chain
}

/// Every intermediate is in the bundle and unexpired; a self-signed leaf fails.
fn chain_check(certs: &[X509Certificate<'_>], li: usize, now_unix: i64) -> Check {
    let leaf = &certs[li];
    if is_self_signed(leaf) {
        return Check::new(
            "chain",
            Status::Fail,
            "self-signed; the Teams Connector needs a certificate signed by a public CA",
        );
    }
    let chain = chain_from(certs, li);
    if chain.len() == 1 {
        return Check::new(
            "chain",
            Status::Fail,
            format!("intermediate missing: the issuer \"{}\" is not in the bundle; export the PFX with the whole chain", leaf.issuer()),
        );
    }
    let last = &certs[*chain.last().unwrap_or(&li)];
    let mut d = String::new();
    for (n, &i) in chain.iter().enumerate().skip(1) {
        let _ = write!(
            d,
            "{}{}",
            if n == 1 { "issued by " } else { " <- " },
            certs[i].subject()
        );
    }
    if !is_self_signed(last) {
        let _ = write!(
            d,
            " (root \"{}\" not included, which is fine)",
            last.issuer()
        );
    }
    let expired: Vec<String> = chain
        .iter()
        .skip(1)
        .filter(|&&i| certs[i].validity().not_after.timestamp() < now_unix)
        .map(|&i| certs[i].subject().to_string())
        .collect();
    if expired.is_empty() {
        return Check::new("chain", Status::Pass, d);
    }
    Check::new(
        "chain",
        Status::Fail,
        format!("{d}; expired CA certificate(s): {}", expired.join(", ")),
    )
}

/// Valid now; a warning under [`WARN_DAYS`] days left.
fn validity_check(leaf: &X509Certificate<'_>, now_unix: i64) -> Check {
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let days_left = (na - now_unix) as f64 / 86_400.0;
    if now_unix < nb {
        return Check::new(
            "validity",
            Status::Fail,
            format!("not valid before {}", fmt_time(nb)),
        );
    }
    if days_left < 0.0 {
        return Check::new(
            "validity",
            Status::Fail,
            format!(
                "expired on {} ({:.0} days ago); renew it",
                fmt_time(na),
                -days_left
            ),
        );
    }
    if days_left < WARN_DAYS {
        return Check::new(
            "validity",
            Status::Warn,
            format!(
                "expires on {} ({days_left:.1} days left); renew soon",
                fmt_time(na)
            ),
        );
    }
    Check::new(
        "validity",
        Status::Pass,
        format!("valid until {} ({days_left:.1} days left)", fmt_time(na)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_modulus_bits_ignore_the_der_sign_byte() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(modulus_bits(&[0x7f, 0xff]), 15);
        assert_eq!(modulus_bits(&[0x00, 0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }

    #[test]
    fn rfc6125_wildcards_cover_exactly_one_leftmost_label() {
        assert!(name_matches("tc.example.com", "TC.example.com."));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("f*.example.com", "foo.example.com"));
        assert!(!name_matches("*oo.example.com", "foo.example.com"));
        assert!(!name_matches("*.*.example.com", "a.b.example.com"));
        assert!(!name_matches("a.*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.com", "example.com"));
        assert!(!name_matches("*.example.com", "*.example.com"));
        assert!(!name_matches("other.example.com", "tc.example.com"));
    }
}
