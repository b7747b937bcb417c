//! The hub's TLS identity: a local CA and a server certificate for `localhost`, `127.0.0.1`
//! and `::1`, generated on first start and reused after; or a certificate the user gives.
//!
//! Files in the TLS directory: `ca.pem` (give this to clients), `ca.key`, `server.pem`
//! (server then CA certificate), `server.key`. Keys are written with mode 0600.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
};

use crate::HubError;

/// A loaded TLS identity.
pub struct TlsIdentity {
    /// PEM file with the CA clients should trust (the server certificate itself when the user
    /// gave one without a CA).
    pub ca_pem: PathBuf,
    /// The rustls acceptor (TLS 1.2 and 1.3 only).
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), HubError> {
    let io = |source| HubError::Tls {
        step: "write",
        path: path.to_path_buf(),
        source,
    };
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn generate(dir: &Path) -> Result<(), HubError> {
    let gen = |e: rcgen::Error| HubError::TlsGenerate(e.to_string());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tcpulse-hub local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(gen)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tcpulse-hub");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(gen)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::Tls {
            step: "write",
            path,
            source,
        }
    };
    let ca_path = dir.join("ca.pem");
    fs::write(&ca_path, ca_cert.pem()).map_err(io(&ca_path))?;
    write_private(&dir.join("ca.key"), &issuer.key().serialize_pem())?;
    let server_path = dir.join("server.pem");
    fs::write(&server_path, format!("{}{}", cert.pem(), ca_cert.pem()))
        .map_err(io(&server_path))?;
    write_private(&dir.join("server.key"), &key.serialize_pem())?;
    Ok(())
}

fn load_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, HubError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| HubError::TlsLoad {
            path: cert.to_path_buf(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(HubError::TlsLoad {
            path: cert.to_path_buf(),
            why: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| HubError::TlsLoad {
        path: key.to_path_buf(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| HubError::TlsGenerate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HubError::TlsLoad {
            path: cert.to_path_buf(),
            why: e.to_string(),
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Loads the user's certificate and key, or the generated identity in `dir` (generating it on
/// first use).
pub fn identity(dir: &Path, user_cert: Option<(&Path, &Path)>) -> Result<TlsIdentity, HubError> {
    if let Some((cert, key)) = user_cert {
        return Ok(TlsIdentity {
            ca_pem: cert.to_path_buf(),
            acceptor: load_acceptor(cert, key)?,
        });
    }
    fs::create_dir_all(dir).map_err(|source| HubError::Tls {
        step: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    let acceptor = if cert.exists() && key.exists() && ca.exists() {
        match load_acceptor(&cert, &key) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "stored TLS identity unusable; generating a new one");
                generate(dir)?;
                load_acceptor(&cert, &key)?
            }
        }
    } else {
        generate(dir)?;
        tracing::info!(ca = %ca.display(), "generated a local CA and server certificate");
        load_acceptor(&cert, &key)?
    };
    Ok(TlsIdentity {
        ca_pem: ca,
        acceptor,
    })
}
