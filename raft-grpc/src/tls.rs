//! TLS and mutual TLS, configured with PEM files, and replaceable while a node runs.
//!
//! One [`TlsConfig`] serves a node both ways: it is the server's identity towards peers and
//! clients, and the client identity the node presents when it connects to peers. With
//! `require_client_cert`, the server accepts only clients (and peers) whose certificate is
//! signed by the configured CA.
//!
//! A node holds its configuration in a [`ReloadableTls`]: [`ReloadableTls::reload`] checks a
//! new configuration and puts it in force for the connections accepted and made from then on;
//! connections already open keep the certificate they were set up with.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tonic::transport::Certificate;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

/// The ALPN protocol gRPC runs over.
const ALPN_H2: &[u8] = b"h2";

/// A TLS setup could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificates or key do not make a usable configuration.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What is wrong (the CA, the certificate, the key, or how they fit together).
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(what: &'static str, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// Certificates and keys in PEM form, loaded into memory. Its `Debug` form shows the
/// certificates' sizes and settings, never the private key.
#[derive(Clone)]
pub struct TlsConfig {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    require_client_cert: bool,
    optional_client_cert: bool,
    server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_bytes", &self.ca.len())
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|(cert, _)| format!("{} certificate bytes, key redacted", cert.len())),
            )
            .field("require_client_cert", &self.require_client_cert)
            .field("optional_client_cert", &self.optional_client_cert)
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "no PEM certificate found"));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid("private key", e))
}

fn roots(ca: &[u8]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("CA certificate", ca)? {
        roots.add(c).map_err(|e| invalid("CA certificate", e))?;
    }
    Ok(Arc::new(roots))
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

    /// tonic's own server TLS, for connections a caller accepted itself
    /// ([`crate::Server::serve_with_incoming`]).
    pub(crate) fn tonic_server(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if self.require_client_cert || self.optional_client_cert {
            tls = tls
                .client_ca_root(Certificate::from_pem(&self.ca))
                .client_auth_optional(!self.require_client_cert);
        }
        Some(tls)
    }

    /// The rustls server configuration this describes — the certificate chain and key, client
    /// certificates required, optional or not asked for — offering HTTP/2 by ALPN; `None`
    /// without an identity to serve with. Also usable for other ports of the same process
    /// (clear `alpn_protocols` for a protocol other than HTTP/2).
    pub fn rustls_server_config(&self) -> Result<Option<rustls::ServerConfig>, TlsError> {
        let Some((cert, key_pem)) = &self.identity else {
            return Ok(None);
        };
        let chain = certs("certificate", cert)?;
        let key = key(key_pem)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?;
        let builder = if self.require_client_cert || self.optional_client_cert {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots(&self.ca)?,
                provider(),
            );
            let v = if self.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| invalid("CA certificate", e))?)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("certificate and key", e))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Some(config))
    }

    /// The rustls client configuration: trusts the CA, presents the identity if there is one.
    fn rustls_client(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?
            .with_root_certificates(roots(&self.ca)?);
        let mut config = match &self.identity {
            Some((cert, key_pem)) => builder
                .with_client_auth_cert(certs("certificate", cert)?, key(key_pem)?)
                .map_err(|e| invalid("certificate and key", e))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A configuration checked and turned into what handshakes need.
struct Active {
    config: TlsConfig,
    server: Option<Arc<rustls::ServerConfig>>,
    client: Arc<rustls::ClientConfig>,
}

/// A node's TLS configuration, shared by its transport and server and replaceable while it
/// runs. Clones share one configuration. A new configuration applies to connections accepted
/// or made after [`ReloadableTls::reload`] returns.
#[derive(Clone)]
pub struct ReloadableTls {
    active: Arc<RwLock<Arc<Active>>>,
}

impl fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReloadableTls")
            .field(&self.current().config)
            .finish()
    }
}

impl ReloadableTls {
    /// Checks `config` (the PEM data parse, the key fits the certificate) and starts with it.
    pub fn new(config: TlsConfig) -> Result<ReloadableTls, TlsError> {
        Ok(ReloadableTls {
            active: Arc::new(RwLock::new(Arc::new(Self::activate(config)?))),
        })
    }

    fn activate(config: TlsConfig) -> Result<Active, TlsError> {
        Ok(Active {
            server: config.rustls_server_config()?.map(Arc::new),
            client: config.rustls_client()?,
            config,
        })
    }

    /// Puts `config` in force for new connections, or, if it is not usable (or would stop a
    /// server from serving TLS), keeps the configuration in force and says why.
    pub fn reload(&self, config: TlsConfig) -> Result<(), TlsError> {
        let next = Self::activate(config)?;
        if next.server.is_none() && self.current().server.is_some() {
            return Err(invalid(
                "configuration",
                "it has no certificate and key to serve with",
            ));
        }
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> TlsConfig {
        self.current().config.clone()
    }

    fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server side in force, if this configuration can serve.
    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.current()
            .server
            .clone()
            .map(tokio_rustls::TlsAcceptor::from)
    }

    /// Whether this configuration can serve TLS.
    pub(crate) fn serves(&self) -> bool {
        self.current().server.is_some()
    }

    /// The client side in force, and the name to verify `host`'s certificate against.
    pub(crate) fn connector(
        &self,
        host: &str,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TlsError> {
        let active = self.current();
        let name = active.config.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| invalid("server name", format!("{name:?}: {e}")))?;
        Ok((
            tokio_rustls::TlsConnector::from(active.client.clone()),
            name,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n";
        let c = TlsConfig::from_pem(b"ca".to_vec(), Some((b"cert".to_vec(), key.into())));
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        // The raw key bytes, as a derived Debug of Vec<u8> would print them.
        let bytes = format!("{:?}", &key.as_bytes()[..8]);
        assert!(!shown.contains(&bytes[1..bytes.len() - 1]), "{shown}");
        assert!(shown.contains("key redacted"), "{shown}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let c = TlsConfig::from_pem(b"ca".to_vec(), Some((b"cert".to_vec(), b"key".to_vec())));
        let e = ReloadableTls::new(c).unwrap_err();
        assert!(matches!(e, TlsError::Invalid { .. }), "{e}");
    }
}
