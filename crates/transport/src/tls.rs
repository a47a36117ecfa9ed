//! HTTPS without a proxy: the server's certificate and key from PEM files, and the bounded TLS
//! handshake of each accepted connection.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take to complete its TLS handshake before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The only application protocol offered in ALPN: the server speaks HTTP/1.1 alone.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why [`load_tls_config`] could not build a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} file {}: {source}", path.display())]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("the TLS {what} file {} is not valid PEM: {source}", path.display())]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no `-----BEGIN CERTIFICATE-----` block.
    #[error(
        "the TLS certificate file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key in PEM.
    #[error(
        "the TLS private key file {} holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is not the one of the first (end-entity) certificate.
    #[error(
        "the TLS private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate chain or the key for another reason.
    #[error(
        "TLS certificate {} with key {} refused: {source}",
        cert.display(),
        key.display()
    )]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// Builds the server's TLS configuration from a PEM certificate chain (end-entity certificate
/// first) and a PEM private key: aws-lc-rs, rustls's safe protocol versions, no client
/// certificates, ALPN `http/1.1`.
pub fn load_tls_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsConfigError> {
    let cert_pem = read(cert_path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            what: "certificate",
            path: cert_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }

    let key_pem = read(key_path, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: key_path.to_path_buf(),
        },
        source => TlsConfigError::Pem {
            what: "private key",
            path: key_path.to_path_buf(),
            source,
        },
    })?;

    let refused = |source: rustls::Error| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsConfigError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            }
        }
        source => TlsConfigError::Refused {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        },
    };
    // An explicit provider: the default one is ambiguous when several are compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Completes the TLS handshake on `tcp` within [`TLS_HANDSHAKE_TIMEOUT`]; `None` (logged) if it
/// fails or takes longer.
pub(super) async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
