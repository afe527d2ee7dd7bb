//! TLS and mutual TLS, configured with PEM files.
//!
//! One [`TlsConfig`] serves a node both ways: it is the server's identity towards peers and
//! clients, and the client identity the node presents when it connects to peers. With
//! `require_client_cert`, the server accepts only clients (and peers) whose certificate is
//! signed by the configured CA.

use std::path::Path;

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

/// A TLS setup could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} from {path}: {source}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

/// Certificates and keys in PEM form, loaded into memory.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    require_client_cert: bool,
    optional_client_cert: bool,
    server_name: Option<String>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl TlsConfig {
    /// Loads the CA that signs every node's certificate, and this process's own certificate and
    /// key (needed by servers, and by clients under mutual TLS).
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            ca: read("CA certificate", ca.as_ref())?,
            identity: Some((
                read("certificate", cert.as_ref())?,
                read("private key", key.as_ref())?,
            )),
            require_client_cert: false,
            optional_client_cert: false,
            server_name: None,
        })
    }

    /// A client that trusts `ca` and presents no certificate of its own.
    pub fn client_only(ca: impl AsRef<Path>) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            ca: read("CA certificate", ca.as_ref())?,
            identity: None,
            require_client_cert: false,
            optional_client_cert: false,
            server_name: None,
        })
    }

    /// Builds a configuration from PEM bytes already in memory.
    pub fn from_pem(ca: impl Into<Vec<u8>>, identity: Option<(Vec<u8>, Vec<u8>)>) -> TlsConfig {
        TlsConfig {
            ca: ca.into(),
            identity,
            require_client_cert: false,
            optional_client_cert: false,
            server_name: None,
        }
    }

    /// Mutual TLS: servers refuse clients without a certificate signed by the CA.
    pub fn require_client_cert(mut self, required: bool) -> TlsConfig {
        self.require_client_cert = required;
        self
    }

    /// Servers ask for a client certificate signed by the CA but also accept clients without
    /// one (which must then authenticate otherwise, for example with a token).
    pub fn optional_client_cert(mut self, optional: bool) -> TlsConfig {
        self.optional_client_cert = optional;
        self
    }

    /// The name to verify servers' certificates against, instead of the host in the address.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = Some(name.into());
        self
    }

    pub(crate) fn server(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if self.require_client_cert || self.optional_client_cert {
            tls = tls
                .client_ca_root(Certificate::from_pem(&self.ca))
                .client_auth_optional(!self.require_client_cert);
        }
        Some(tls)
    }

    pub(crate) fn client(&self, host: &str) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(self.server_name.clone().unwrap_or_else(|| host.to_string()));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}
