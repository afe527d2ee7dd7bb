//! The security flags of `kv node`: who may talk to the node, over what, and reloading it all.
//!
//! * `--cluster-secret-file`: peers prove they know it (see `raft_grpc::auth`); as a bearer
//!   token it is also an admin credential on the gRPC cluster API (`kv node --join` uses it).
//!   Its first line is the secret this node sends; an optional second line is one more secret
//!   it accepts, so the secret can be rotated without peers refusing each other.
//! * `--requirepass-file`, `--users-file`: RESP authentication and roles (see `auth.rs`); the
//!   users may also call the gRPC cluster API with their password as bearer token.
//! * `--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`, `--tls-auth-clients`: TLS on
//!   both ports. With `--tls-auth-clients yes` (the default once TLS is on) every client and peer
//!   needs a certificate from the CA, and peers' certificates must name their node
//!   (`urn:raftkit:node:<id>`, as `kv certs` makes them); with `optional` a certificate is
//!   checked if presented; with `no` none is asked for.
//! * `--insecure`: serve a non-loopback address without authentication (refused otherwise).
//!
//! On SIGHUP every file is read again. A reload that fails (a missing file, a bad line, a key
//! that does not match its certificate) keeps everything as it was and logs why. New secrets and
//! users apply to the next call or `AUTH`; new certificates to the next connection accepted on
//! either port, and to the next connection this node makes to a peer.

use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use clap::ValueEnum;
use raft_grpc::AuthConfig;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterSecret;
use raft_grpc::Credentials;
use raft_grpc::GrpcOptions;
use raft_grpc::ReloadableTls;
use raft_grpc::TlsConfig;
use raft_grpc::User;
use raft_grpc::auth::Auth;

use crate::auth::Accounts;
use crate::auth::LiveAccounts;
use crate::auth::SharedAccounts;

/// Whether TLS clients (and peers) must present a certificate.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsAuthClients {
    /// A certificate signed by the CA is required (Redis's default).
    #[default]
    Yes,
    /// No certificate is asked for.
    No,
    /// A certificate is checked if presented.
    Optional,
}

/// The security flags of `kv node`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// File holding the secret peers authenticate with (a line of at least 16 bytes, trimmed).
    /// Also an admin credential on the gRPC cluster API. An optional second line holds one
    /// more secret accepted from peers but never sent, for rotating the secret (SECURITY.md).
    #[arg(long, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the password of the `default` RESP user (Redis `requirepass`).
    #[arg(long, value_name = "PATH")]
    pub requirepass_file: Option<PathBuf>,
    /// File of users, one per line: `<name> <read|write|admin> <password>`.
    #[arg(long, value_name = "PATH")]
    pub users_file: Option<PathBuf>,
    /// This node's certificate (PEM), for both the RESP and the raft port.
    #[arg(long, value_name = "PATH", requires_all = ["tls_key_file", "tls_ca_cert_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA that signs every node's (and client's) certificate (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert_file")]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// Whether TLS clients and peers must present a certificate signed by the CA.
    #[arg(long, value_enum, default_value_t = TlsAuthClients::Yes)]
    pub tls_auth_clients: TlsAuthClients,
    /// Serve a non-loopback address even without authentication (like Redis with protected
    /// mode off). Anyone who can reach the ports can then read, write and change membership.
    #[arg(long)]
    pub insecure: bool,
}

/// A security setting could not be loaded, or would leave the node open.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read or is invalid.
    #[error("{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The TLS files do not make a usable configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// A non-loopback address without authentication and without --insecure.
    #[error(
        "refusing to serve the {what} port on the non-loopback address {addr} without authentication: \
         give {how}, or --insecure to serve it open anyway"
    )]
    Exposed {
        what: &'static str,
        addr: String,
        how: &'static str,
    },
}

/// The RESP TLS configuration in force, replaced whole on reload.
pub type SharedTls = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Everything the flags name, read from their files.
struct Loaded {
    secret: Option<ClusterSecret>,
    /// The secret also accepted (the cluster secret file's second line).
    previous: Option<ClusterSecret>,
    accounts: Accounts,
    tls: Option<(TlsConfig, Arc<rustls::ServerConfig>)>,
}

/// A node's security settings, live: the parts other modules hold are swapped on reload.
pub struct Security {
    args: SecurityArgs,
    /// Peer and cluster-API authentication, shared with the gRPC transport and server.
    pub grpc_auth: Auth,
    /// RESP credentials.
    pub accounts: SharedAccounts,
    /// RESP TLS, if on.
    pub resp_tls: Option<SharedTls>,
    grpc_tls: Option<TlsConfig>,
    /// Raft-port TLS, shared with the gRPC transport and server.
    grpc_tls_live: Option<ReloadableTls>,
    credentials: Option<Credentials>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("args", &self.args)
            .field("grpc_auth", &self.grpc_auth)
            .field("tls", &self.resp_tls.is_some())
            .finish_non_exhaustive()
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::File {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_text(flag: &'static str, path: &Path) -> Result<String, SecurityError> {
    String::from_utf8(read(flag, path)?).map_err(|_| SecurityError::File {
        flag,
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })
}

/// The RESP server's rustls configuration: the raft port's, without HTTP/2's ALPN.
fn resp_tls_config(grpc: &TlsConfig) -> Result<rustls::ServerConfig, SecurityError> {
    let mut config = grpc
        .rustls_server_config()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .ok_or_else(|| SecurityError::Tls("no certificate to serve with".into()))?;
    config.alpn_protocols.clear();
    Ok(config)
}

/// The secrets of a cluster secret file: the first line, sent and accepted, and an optional
/// second, accepted only. Blank lines are ignored.
fn parse_secrets(content: &[u8]) -> Result<(ClusterSecret, Option<ClusterSecret>), String> {
    let lines: Vec<&[u8]> = content
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty())
        .collect();
    let secret = |l: &[u8]| ClusterSecret::new(l).map_err(|e| e.to_string());
    match lines.as_slice() {
        [] => Err(secret(b"").err().unwrap_or_default()),
        [current] => Ok((secret(current)?, None)),
        [current, previous] => Ok((
            secret(current)?,
            Some(secret(previous).map_err(|e| format!("second line: {e}"))?),
        )),
        more => Err(format!(
            "{} lines; expected the secret to send, then at most one more secret to accept",
            more.len()
        )),
    }
}

fn load(args: &SecurityArgs) -> Result<Loaded, SecurityError> {
    let (secret, previous) =
        match &args.cluster_secret_file {
            Some(p) => {
                let (current, previous) = parse_secrets(&read("--cluster-secret-file", p)?)
                    .map_err(|reason| SecurityError::File {
                        flag: "--cluster-secret-file",
                        path: p.clone(),
                        reason,
                    })?;
                (Some(current), previous)
            }
            None => (None, None),
        };
    let requirepass = match &args.requirepass_file {
        Some(p) => {
            let pass = read_text("--requirepass-file", p)?.trim().to_string();
            if pass.is_empty() {
                return Err(SecurityError::File {
                    flag: "--requirepass-file",
                    path: p.clone(),
                    reason: "the password is empty".into(),
                });
            }
            Some(pass)
        }
        None => None,
    };
    let users = match &args.users_file {
        Some(p) => crate::auth::parse_users(&read_text("--users-file", p)?).map_err(|reason| {
            SecurityError::File {
                flag: "--users-file",
                path: p.clone(),
                reason,
            }
        })?,
        None => Vec::new(),
    };
    // A users file that names nobody, with no requirepass beside it, would turn authentication
    // off (every connection the `default` user, with every right): an empty or half-written
    // file is a mistake, refused at start and on reload alike.
    if let Some(p) = &args.users_file
        && users.is_empty()
        && requirepass.is_none()
    {
        return Err(SecurityError::File {
            flag: "--users-file",
            path: p.clone(),
            reason: "the file names no user (expected `<name> <role> <password>` lines), and without users or --requirepass-file every client would be admin".into(),
        });
    }
    let tls = match (
        &args.tls_cert_file,
        &args.tls_key_file,
        &args.tls_ca_cert_file,
    ) {
        (Some(c), Some(k), Some(ca)) => {
            let (c, k, ca) = (
                read("--tls-cert-file", c)?,
                read("--tls-key-file", k)?,
                read("--tls-ca-cert-file", ca)?,
            );
            let grpc = TlsConfig::from_pem(ca, Some((c, k)))
                .require_client_cert(args.tls_auth_clients == TlsAuthClients::Yes)
                .optional_client_cert(args.tls_auth_clients == TlsAuthClients::Optional);
            let resp = resp_tls_config(&grpc)?;
            Some((grpc, Arc::new(resp)))
        }
        (None, None, None) => None,
        _ => {
            return Err(SecurityError::Tls(
                "--tls-cert-file, --tls-key-file and --tls-ca-cert-file go together".into(),
            ));
        }
    };
    Ok(Loaded {
        secret,
        previous,
        accounts: Accounts {
            requirepass,
            users: users.clone(),
        },
        tls,
    })
}

impl SecurityArgs {
    fn peer_certs(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_auth_clients == TlsAuthClients::Yes
    }

    fn auth_config(&self, loaded: &Loaded) -> AuthConfig {
        AuthConfig::default()
            .with_cluster_secret(loaded.secret.clone())
            .with_previous_secret(loaded.previous.clone())
            .with_peer_certs(self.peer_certs())
            .with_users(
                loaded
                    .accounts
                    .users
                    .iter()
                    .map(|u| User::new(u.name.clone(), u.password.clone(), u.role)),
            )
            .with_cert_users(self.tls_cert_file.is_some())
    }
}

/// Whether `addr` (`host:port`) is only reachable from this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

impl Security {
    /// Reads every file the flags name.
    pub fn load(args: &SecurityArgs) -> Result<Security, SecurityError> {
        let loaded = load(args)?;
        let credentials = match (&loaded.secret, &args.cluster_secret_file) {
            (Some(s), Some(p)) => {
                Some(
                    Credentials::from_secret(s).map_err(|e| SecurityError::File {
                        flag: "--cluster-secret-file",
                        path: p.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            _ => None,
        };
        let grpc_tls_live = loaded
            .tls
            .as_ref()
            .map(|(grpc, _)| ReloadableTls::new(grpc.clone()))
            .transpose()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        Ok(Security {
            grpc_tls_live,
            grpc_auth: Auth::new(args.auth_config(&loaded)),
            accounts: Arc::new(LiveAccounts::new(loaded.accounts)),
            resp_tls: loaded
                .tls
                .as_ref()
                .map(|(_, resp)| Arc::new(RwLock::new(resp.clone()))),
            grpc_tls: loaded.tls.map(|(grpc, _)| grpc),
            credentials,
            args: args.clone(),
        })
    }

    /// No authentication, no TLS: the default, for loopback.
    pub fn open() -> Security {
        Security {
            args: SecurityArgs::default(),
            grpc_auth: Auth::default(),
            accounts: SharedAccounts::default(),
            resp_tls: None,
            grpc_tls: None,
            grpc_tls_live: None,
            credentials: None,
        }
    }

    /// Refuses to serve a non-loopback address without authentication, unless `--insecure`.
    pub fn check_exposure(&self, raft_addr: &str, resp_addr: &str) -> Result<(), SecurityError> {
        if self.args.insecure {
            return Ok(());
        }
        let mtls = self.args.peer_certs();
        if !is_loopback(raft_addr) && !self.grpc_auth.current().authenticates_peers() {
            return Err(SecurityError::Exposed {
                what: "raft",
                addr: raft_addr.to_string(),
                how: "--cluster-secret-file (or TLS with --tls-auth-clients yes)",
            });
        }
        if !is_loopback(resp_addr) && !crate::auth::current(&self.accounts).required() && !mtls {
            return Err(SecurityError::Exposed {
                what: "RESP",
                addr: resp_addr.to_string(),
                how: "--requirepass-file or --users-file (or TLS with --tls-auth-clients yes)",
            });
        }
        Ok(())
    }

    /// The gRPC options of this node: TLS and authentication.
    pub fn grpc_options(&self) -> GrpcOptions {
        GrpcOptions::default()
            .with_tls(self.grpc_tls_live.clone())
            .with_auth(self.grpc_auth.clone())
    }

    /// Options for this node acting as a client of its cluster (joining): its TLS identity and
    /// the cluster secret as credentials.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::default()
            .with_tls(self.grpc_tls.clone())
            .with_credentials(self.credentials.clone())
    }

    /// Reads every file again and puts the result in force, or keeps the old settings.
    pub fn reload(&self) -> Result<(), SecurityError> {
        let loaded = load(&self.args)?;
        if loaded.tls.is_some() != self.resp_tls.is_some() {
            return Err(SecurityError::Tls(
                "TLS cannot be turned on or off without a restart".into(),
            ));
        }
        // The one step that can still fail goes first, so a failure changes nothing.
        if let (Some(live), Some((grpc, _))) = (&self.grpc_tls_live, &loaded.tls) {
            live.reload(grpc.clone())
                .map_err(|e| SecurityError::Tls(e.to_string()))?;
        }
        self.grpc_auth.reload(self.args.auth_config(&loaded));
        self.accounts.replace(loaded.accounts);
        if let (Some(shared), Some((_, resp))) = (&self.resp_tls, loaded.tls) {
            *shared.write().unwrap_or_else(|p| p.into_inner()) = resp;
        }
        Ok(())
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut hup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; security files will not be reloaded");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                match self.reload() {
                    Ok(()) => tracing::info!("security files reloaded"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "security files not reloaded; the previous settings stay in force"
                    ),
                }
            }
        });
    }
}

/// A TLS acceptor with the RESP configuration in force now.
pub fn acceptor(tls: &SharedTls) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(tls.read().unwrap_or_else(|p| p.into_inner()).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:6379"));
        assert!(is_loopback("[::1]:6379"));
        assert!(is_loopback("localhost:1"));
        assert!(!is_loopback("0.0.0.0:6379"));
        assert!(!is_loopback("10.1.2.3:6379"));
        assert!(!is_loopback("db.example.com:6379"));
    }

    #[test]
    fn open_nodes_must_stay_on_loopback() {
        let open = Security::open();
        open.check_exposure("127.0.0.1:1", "127.0.0.1:2").unwrap();
        assert!(matches!(
            open.check_exposure("0.0.0.0:1", "127.0.0.1:2"),
            Err(SecurityError::Exposed { what: "raft", .. })
        ));
        assert!(matches!(
            open.check_exposure("127.0.0.1:1", "0.0.0.0:2"),
            Err(SecurityError::Exposed { what: "RESP", .. })
        ));
        let insecure = Security::load(&SecurityArgs {
            insecure: true,
            ..SecurityArgs::default()
        })
        .unwrap();
        insecure.check_exposure("0.0.0.0:1", "0.0.0.0:2").unwrap();
    }

    #[test]
    fn a_secret_file_holds_one_or_two_secrets() {
        let one = "a secret of a cluster, long enough";
        let two = "the next secret of the cluster, long";
        let (s, p) = parse_secrets(format!("{one}\n").as_bytes()).unwrap();
        assert_eq!(
            s.peer_token(),
            ClusterSecret::new(one).unwrap().peer_token()
        );
        assert!(p.is_none());
        let (s, p) = parse_secrets(format!("  {two} \r\n\n{one}\n").as_bytes()).unwrap();
        assert_eq!(
            s.peer_token(),
            ClusterSecret::new(two).unwrap().peer_token()
        );
        assert_eq!(
            p.unwrap().peer_token(),
            ClusterSecret::new(one).unwrap().peer_token()
        );
        assert!(parse_secrets(format!("{one}\n{two}\n{one}").as_bytes()).is_err());
        assert!(parse_secrets(format!("{one}\nshort").as_bytes()).is_err());
        assert!(parse_secrets(b" \n\n").is_err());
    }

    #[test]
    fn a_failed_reload_keeps_the_old_settings() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "first\n").unwrap();
        let s = Security::load(&SecurityArgs {
            requirepass_file: Some(pass.clone()),
            ..SecurityArgs::default()
        })
        .unwrap();
        let now = || crate::auth::current(&s.accounts).requirepass.clone();
        assert_eq!(now().as_deref(), Some("first"));
        std::fs::write(&pass, "second").unwrap();
        s.reload().unwrap();
        assert_eq!(now().as_deref(), Some("second"));
        std::fs::write(&pass, "  \n").unwrap();
        assert!(s.reload().is_err());
        assert_eq!(now().as_deref(), Some("second"));
        std::fs::remove_file(&pass).unwrap();
        assert!(s.reload().is_err());
        assert_eq!(now().as_deref(), Some("second"));
    }

    /// A users file emptied (or left with comments only) before a reload would have turned
    /// authentication off for every new connection; it is refused and the users stay.
    #[test]
    fn a_users_file_that_names_nobody_is_refused_and_authentication_stays() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "alice admin pw\n").unwrap();
        let s = Security::load(&SecurityArgs {
            users_file: Some(users.clone()),
            ..SecurityArgs::default()
        })
        .unwrap();
        let required = || crate::auth::current(&s.accounts).required();
        assert!(required());
        for text in ["", "# nobody\n", "\n  \n"] {
            std::fs::write(&users, text).unwrap();
            assert!(s.reload().is_err(), "{text:?} was taken");
            assert!(required(), "{text:?} turned authentication off");
        }
        // Nor does a node start with one.
        assert!(
            Security::load(&SecurityArgs {
                users_file: Some(users.clone()),
                ..SecurityArgs::default()
            })
            .is_err()
        );
        // Beside a requirepass, which keeps authentication on, an empty users file is fine.
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "secret\n").unwrap();
        let s = Security::load(&SecurityArgs {
            users_file: Some(users),
            requirepass_file: Some(pass),
            ..SecurityArgs::default()
        })
        .unwrap();
        assert!(crate::auth::current(&s.accounts).required());
    }
}
