//! Who may call what: peers prove they are peers, clients prove who they are.
//!
//! # Peers (`RaftInternal`)
//!
//! Every internal call must prove it comes from a member of the cluster, in one or both of two
//! ways chosen in [`AuthConfig`]:
//!
//! * **A shared cluster secret** ([`AuthConfig::cluster_secret`]). Each node derives a token
//!   from it once — HMAC-SHA256 of a fixed label, keyed by the secret — and sends the token with
//!   every call in the `x-raftkit-peer-token` metadata; the receiver compares it in constant
//!   time. No per-message cryptography, so replication pays nothing measurable. Without TLS the
//!   token travels in clear: it stops anyone who does not know the secret, not an eavesdropper
//!   on the path, who can replay it. Use TLS as well wherever the network is not trusted.
//!
//!   To change the secret without peers refusing each other, give nodes a second accepted
//!   secret ([`AuthConfig::previous_secret`]) while the change goes round: a node sends the
//!   token of `cluster_secret` and accepts the tokens of both (see SECURITY.md for the steps).
//! * **Mutual TLS with peer identity** ([`AuthConfig::peer_certs`]). A peer must present a
//!   certificate signed by the cluster's CA that names a node: a URI subject alternative name
//!   `urn:raftkit:node:<id>` ([`node_uri`]). The sender also states its id
//!   (`x-raftkit-from`), and the two must agree. A certificate without such a name — a client
//!   certificate from the same CA — is refused on `RaftInternal`.
//!
//! A call that fails this check is answered `UNAUTHENTICATED` by an interceptor, before its
//! message is decoded and before anything about the node changes.
//!
//! # Clients (`Cluster`)
//!
//! Callers are [`User`]s with a [`Role`]: `read` may call `Read` and `Status`, `write` also
//! `Write`, `admin` everything, including `AddLearner`, `ChangeMembership`, `RemoveNode` and
//! `TransferLeader`. A caller proves who it is with a bearer token (`authorization: Bearer
//! <token>`, set by [`crate::ClientOptions::credentials`]) — a user's token, or the cluster
//! secret itself, which counts as `admin` — or, under mutual TLS with
//! [`AuthConfig::cert_users`], with a client certificate whose common name is a user's name.
//! A missing or wrong credential is `UNAUTHENTICATED`; a role too low for the call is
//! `PERMISSION_DENIED`. A node that forwards a call to the leader authenticates as a peer and
//! names the original caller, so the leader applies the caller's role, not the node's.
//!
//! With no secret, no users and no peer certificates configured (the default), every call is
//! allowed: fine on loopback, and a node says so loudly in its log when it serves anything else.
//! Users alone, without a secret or peer certificates, authenticate `Cluster` calls only:
//! `RaftInternal` stays open, and whoever can connect can act as a peer (win an election,
//! rewrite the log) whatever role it has. So the roles mean something only where peers are
//! authenticated too, or where nothing but the nodes can reach the port.
//!
//! [`Auth`] holds the configuration behind a lock so it can be replaced while the node runs
//! ([`Auth::reload`]), for example when a secret file changes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;

use raft_core::NodeId;
use tonic::Request;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;

use crate::accept::Unproven;

/// Metadata carrying the token peers derive from the cluster secret.
pub const PEER_TOKEN_KEY: &str = "x-raftkit-peer-token";
/// Metadata carrying the sending node's id on internal calls.
pub const FROM_KEY: &str = "x-raftkit-from";
/// Metadata carrying the sender's cluster id on internal calls.
pub const CLUSTER_ID_KEY: &str = "x-raftkit-cluster-id";
/// Metadata naming the original caller of a forwarded call (trusted only from a peer).
const CALLER_NAME_KEY: &str = "x-raftkit-caller";
/// Metadata carrying the original caller's role on a forwarded call (trusted only from a peer).
const CALLER_ROLE_KEY: &str = "x-raftkit-caller-role";
/// The label the peer token is derived from; changing it changes every token.
const PEER_TOKEN_LABEL: &[u8] = b"raftkit peer token v1";

/// The URI subject alternative name that marks a certificate as node `id`'s.
pub fn node_uri(id: NodeId) -> String {
    format!("urn:raftkit:node:{id}")
}

/// What a caller may do on the `Cluster` service; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Role {
    /// `Read` and `Status`.
    Read,
    /// Also `Write`.
    Write,
    /// Also membership and leadership changes.
    Admin,
}

impl Role {
    /// The role's name: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(AuthError::BadRole(other.chars().take(32).collect())),
        }
    }
}

/// An authentication setting could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The secret is empty (after trimming) or too short to be a secret.
    #[error("the cluster secret must be at least {min} bytes, got {len}")]
    WeakSecret {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A role name other than read, write or admin.
    #[error("unknown role {0:?}: expected read, write or admin")]
    BadRole(String),
    /// A token that cannot travel as gRPC metadata (it must be visible ASCII).
    #[error("a token must be printable ASCII")]
    BadToken,
}

/// The secret every member of a cluster knows. Its `Debug` form hides it.
#[derive(Clone)]
pub struct ClusterSecret {
    secret: Arc<[u8]>,
    peer_token: AsciiMetadataValue,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A secret from bytes (surrounding whitespace is trimmed). At least
    /// [`ClusterSecret::MIN_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<ClusterSecret, AuthError> {
        let secret = secret.as_ref().trim_ascii();
        if secret.len() < Self::MIN_LEN {
            return Err(AuthError::WeakSecret {
                len: secret.len(),
                min: Self::MIN_LEN,
            });
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, PEER_TOKEN_LABEL);
        let peer_token =
            AsciiMetadataValue::try_from(hex(tag.as_ref())).map_err(|_| AuthError::BadToken)?;
        Ok(ClusterSecret {
            secret: secret.into(),
            peer_token,
        })
    }

    /// Reads a secret from a file; its content is trimmed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterSecret, AuthError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClusterSecret::new(bytes)
    }

    /// The token peers send (`x-raftkit-peer-token`): hex HMAC-SHA256 of a fixed label, keyed
    /// by the secret. Knowing it lets a caller act as a peer, so guard it like the secret.
    pub fn peer_token(&self) -> &str {
        self.peer_token.to_str().unwrap_or_default()
    }

    fn is(&self, candidate: &[u8]) -> bool {
        ct_eq(&self.secret, candidate)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality (the time depends on the lengths only).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A caller of the `Cluster` service. Made with [`User::new`].
#[derive(Clone)]
#[non_exhaustive]
pub struct User {
    /// The name it is known by (in logs, and as a certificate's common name).
    pub name: String,
    /// Its bearer token (or password); unique among users.
    pub token: String,
    /// What it may do.
    pub role: Role,
}

impl User {
    /// A user called `name` who authenticates with the bearer token `token` and may do what
    /// `role` allows.
    pub fn new(name: impl Into<String>, token: impl Into<String>, role: Role) -> User {
        User {
            name: name.into(),
            token: token.into(),
            role,
        }
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Who a call comes from, as the `Cluster` service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's name (`cluster-secret`, `peer` or `anonymous` for the built-in ones).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The bearer credential it presented, passed on when a call is forwarded to a leader
    /// that cannot authenticate this node as a peer.
    bearer: Option<AsciiMetadataValue>,
}

impl Caller {
    fn new(name: impl Into<String>, role: Role) -> Caller {
        Caller {
            name: name.into(),
            role,
            bearer: None,
        }
    }

    fn anonymous() -> Caller {
        Caller::new("anonymous", Role::Admin)
    }
}

/// How a node authenticates peers and clients. The default authenticates nothing; adjust it with
/// the `with_*` methods.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Peers prove they know this secret; as a bearer token it is also an `admin` credential.
    /// Outgoing calls carry its token.
    pub cluster_secret: Option<ClusterSecret>,
    /// A second secret accepted from peers (and as an `admin` bearer token), never sent: during
    /// a rotation, the secret being replaced or the one being introduced. Only consulted when
    /// `cluster_secret` is set. Default none.
    pub previous_secret: Option<ClusterSecret>,
    /// Peers must present a node certificate (see the module documentation). Needs TLS with
    /// client certificates required or optional.
    pub peer_certs: bool,
    /// Callers of the `Cluster` service.
    pub users: Vec<User>,
    /// Under mutual TLS, a client certificate whose common name is a user's name authenticates
    /// as that user.
    pub cert_users: bool,
}

impl AuthConfig {
    /// Sets the cluster secret peers must prove they know (default none); see
    /// [`AuthConfig::cluster_secret`].
    #[must_use]
    pub fn with_cluster_secret(mut self, secret: Option<ClusterSecret>) -> AuthConfig {
        self.cluster_secret = secret;
        self
    }

    /// Sets a second secret accepted but never sent, for rotations (default none); see
    /// [`AuthConfig::previous_secret`].
    #[must_use]
    pub fn with_previous_secret(mut self, secret: Option<ClusterSecret>) -> AuthConfig {
        self.previous_secret = secret;
        self
    }

    /// Sets whether peers must present a node certificate (default no).
    #[must_use]
    pub fn with_peer_certs(mut self, required: bool) -> AuthConfig {
        self.peer_certs = required;
        self
    }

    /// Sets the callers of the `Cluster` service (default none).
    #[must_use]
    pub fn with_users(mut self, users: impl IntoIterator<Item = User>) -> AuthConfig {
        self.users = users.into_iter().collect();
        self
    }

    /// Sets whether a client certificate whose common name is a user's name authenticates as
    /// that user under mutual TLS (default no).
    #[must_use]
    pub fn with_cert_users(mut self, enabled: bool) -> AuthConfig {
        self.cert_users = enabled;
        self
    }

    /// Whether internal calls must be authenticated.
    pub fn authenticates_peers(&self) -> bool {
        self.cluster_secret.is_some() || self.peer_certs
    }

    /// Whether `Cluster` calls must be authenticated.
    pub fn authenticates_clients(&self) -> bool {
        self.authenticates_peers() || !self.users.is_empty()
    }
}

/// A node's [`AuthConfig`], shared by its transport and server and replaceable while it runs.
/// Clones share one configuration.
#[derive(Clone, Default)]
pub struct Auth {
    config: Arc<RwLock<Arc<AuthConfig>>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current().fmt(f)
    }
}

impl Auth {
    /// Starts with `config`.
    pub fn new(config: AuthConfig) -> Auth {
        Auth {
            config: Arc::new(RwLock::new(Arc::new(config))),
        }
    }

    /// Replaces the configuration; calls already authenticated are unaffected.
    pub fn reload(&self, config: AuthConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<AuthConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds this node's peer credentials (and `from`, its id) to an outgoing internal call.
    pub(crate) fn stamp_peer(&self, meta: &mut MetadataMap, from: NodeId) {
        let cfg = self.config.read().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &cfg.cluster_secret {
            meta.insert(PEER_TOKEN_KEY, s.peer_token.clone());
        }
        meta.insert(FROM_KEY, AsciiMetadataValue::from(from));
    }

    /// Adds peer credentials and the original caller to a call forwarded to the leader (or,
    /// when peers are not authenticated, the caller's own credentials).
    pub(crate) fn stamp_forward(&self, meta: &mut MetadataMap, from: NodeId, caller: &Caller) {
        if !self.current().authenticates_peers() {
            if let Some(b) = &caller.bearer {
                meta.insert("authorization", b.clone());
            }
            return;
        }
        self.stamp_peer(meta, from);
        if let Ok(name) = AsciiMetadataValue::try_from(caller.name.as_str()) {
            meta.insert(CALLER_NAME_KEY, name);
        }
        meta.insert(
            CALLER_ROLE_KEY,
            AsciiMetadataValue::from_static(caller.role.as_str()),
        );
    }

    /// Whether `req` proves it comes from a peer; `Ok(false)` if peers are not authenticated.
    fn peer_proof<T>(&self, cfg: &AuthConfig, req: &Request<T>) -> Result<bool, Status> {
        if !cfg.authenticates_peers() {
            return Ok(false);
        }
        if let Some(secret) = &cfg.cluster_secret {
            let token = req
                .metadata()
                .get(PEER_TOKEN_KEY)
                .ok_or_else(|| unauthenticated("no peer credentials"))?;
            let matches = |s: &ClusterSecret| ct_eq(token.as_bytes(), s.peer_token.as_bytes());
            if !matches(secret) && !cfg.previous_secret.as_ref().is_some_and(matches) {
                return Err(unauthenticated("wrong peer credentials (cluster secret)"));
            }
        }
        if cfg.peer_certs {
            // The certificate proves who sends only if the call says who that is: the sender a
            // call's payload speaks for is checked against this id.
            let from = req
                .metadata()
                .get(FROM_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<NodeId>().ok())
                .ok_or_else(|| {
                    unauthenticated("a peer's call must name its sender (x-raftkit-from)")
                })?;
            check_node_cert(req, Some(from))?;
        }
        Ok(true)
    }

    /// Checks that an internal call comes from a peer.
    pub(crate) fn check_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let cfg = self.current();
        self.peer_proof(&cfg, req).map(|_| ())
    }

    /// Works out who a `Cluster` call comes from.
    pub(crate) fn identify<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let cfg = self.current();
        if !cfg.authenticates_clients() {
            return Ok(Caller::anonymous());
        }
        let meta = req.metadata();
        if cfg.authenticates_peers()
            && (meta.contains_key(PEER_TOKEN_KEY) || meta.contains_key(FROM_KEY))
        {
            self.peer_proof(&cfg, req)?;
            return Ok(forwarded_caller(meta).unwrap_or(Caller::new("peer", Role::Admin)));
        }
        if cfg.peer_certs
            && !meta.contains_key("authorization")
            && check_node_cert(req, None).is_ok()
        {
            // A node's own certificate (for example a node joining the cluster) is an admin.
            return Ok(Caller::new("peer", Role::Admin));
        }
        if let Some(v) = meta.get("authorization") {
            let token = v
                .as_bytes()
                .strip_prefix(b"Bearer ")
                .ok_or_else(|| unauthenticated("expected `authorization: Bearer <token>`"))?;
            let mut found = cfg
                .cluster_secret
                .iter()
                .chain(
                    cfg.cluster_secret
                        .as_ref()
                        .and(cfg.previous_secret.as_ref()),
                )
                .any(|s| s.is(token))
                .then(|| Caller::new("cluster-secret", Role::Admin));
            // Every user is compared, so the time taken does not tell which one nearly matched.
            for u in &cfg.users {
                if ct_eq(u.token.as_bytes(), token) && found.is_none() {
                    found = Some(Caller::new(u.name.clone(), u.role));
                }
            }
            let mut caller = found.ok_or_else(|| unauthenticated("invalid credentials"))?;
            caller.bearer = Some(v.clone());
            return Ok(caller);
        }
        if cfg.cert_users
            && let Some(name) = cert_common_name(req)
            && let Some(u) = cfg.users.iter().find(|u| u.name == name)
        {
            return Ok(Caller::new(u.name.clone(), u.role));
        }
        Err(unauthenticated("credentials required"))
    }
}

fn forwarded_caller(meta: &MetadataMap) -> Option<Caller> {
    let name = meta.get(CALLER_NAME_KEY)?.to_str().ok()?;
    let role = meta.get(CALLER_ROLE_KEY)?.to_str().ok()?.parse().ok()?;
    Some(Caller::new(name, role))
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(format!("unauthenticated: {why}"))
}

/// A caller whose role [`ClientCheck`] checked against the method called, left in the
/// request's extensions for the method's handler. Nothing else makes one.
#[derive(Clone)]
struct Checked {
    caller: Caller,
    method: Method,
}

/// The caller of `req`, as [`ClientCheck`] left it after checking its role against the method
/// called ([`Method::role`]); the handler of `method` takes it once. A call the interceptor did
/// not check, or checked for another method than `method` — a method missing from the table,
/// or a table naming the wrong one — is refused.
pub(crate) fn checked_caller<T>(req: &mut Request<T>, method: Method) -> Result<Caller, Status> {
    match req.extensions_mut().remove::<Checked>() {
        Some(checked) if checked.method == method => Ok(checked.caller),
        _ => Err(unauthenticated("caller unknown")),
    }
}

/// Refuses `caller` unless its role is at least the one `method` needs.
fn allowed(caller: &Caller, method: Method) -> Result<(), Status> {
    let need = method.role();
    if caller.role < need {
        return Err(Status::permission_denied(format!(
            "{} needs the {need} role; {} has {}",
            method.name(),
            caller.name,
            caller.role
        )));
    }
    Ok(())
}

fn peer_cert<T>(req: &Request<T>) -> Option<Vec<u8>> {
    let certs = req.peer_certs()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

/// Checks that the peer's certificate names a node (and node `from`, if the caller said).
fn check_node_cert<T>(req: &Request<T>, from: Option<NodeId>) -> Result<(), Status> {
    let der = peer_cert(req).ok_or_else(|| unauthenticated("no peer certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| unauthenticated("unreadable peer certificate"))?;
    let ids: Vec<NodeId> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => {
                        u.strip_prefix("urn:raftkit:node:")?.parse().ok()
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match from {
        _ if ids.is_empty() => Err(unauthenticated(
            "the certificate does not name a node (a client certificate is not a peer)",
        )),
        Some(from) if !ids.contains(&from) => Err(unauthenticated(&format!(
            "the certificate names node(s) {ids:?}, but the call comes from node {from}"
        ))),
        _ => Ok(()),
    }
}

fn cert_common_name<T>(req: &Request<T>) -> Option<String> {
    let der = peer_cert(req)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The interceptor in front of `RaftInternal`: peers only. A call that passes proves its
/// connection ([`Unproven`]).
#[derive(Clone)]
pub(crate) struct PeerCheck(pub Auth, pub Unproven);

impl Interceptor for PeerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.0.check_peer(&req)?;
        self.1.prove(&req);
        Ok(req)
    }
}

/// The interceptor in front of `Cluster`: finds the caller and checks that it has the role
/// its method needs ([`MethodRole`]), so a call refused for its role is refused on its headers,
/// before its message is read. This is the one check of the caller's role: the methods take the
/// checked caller with [`checked_caller`], and a call whose method the table does not know
/// reaches its handler without one. A caller it identifies proves its connection
/// ([`Unproven`]), whether or not its role allows the method.
#[derive(Clone)]
pub(crate) struct ClientCheck(pub Auth, pub Unproven);

impl Interceptor for ClientCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.0.identify(&req)?;
        self.1.prove(&req);
        if let Some(method) = req.extensions().get::<Method>().copied() {
            allowed(&caller, method)?;
            req.extensions_mut().insert(Checked { caller, method });
        }
        Ok(req)
    }
}

/// A method of the `Cluster` service. [`Method::role`] is the one table of who may call what:
/// the interceptor refuses on it before a message is read, and each method's handler takes the
/// caller it checked through [`checked_caller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Write,
    Read,
    Status,
    AddLearner,
    ChangeMembership,
    AddVoter,
    RemoveNode,
    TransferLeader,
    SetSessionCapacity,
    Backup,
}

impl Method {
    /// Every method of the `Cluster` service.
    const ALL: [Method; 10] = [
        Method::Write,
        Method::Read,
        Method::Status,
        Method::AddLearner,
        Method::ChangeMembership,
        Method::AddVoter,
        Method::RemoveNode,
        Method::TransferLeader,
        Method::SetSessionCapacity,
        Method::Backup,
    ];

    /// The role a caller needs to call the method.
    fn role(self) -> Role {
        match self {
            Method::Read | Method::Status => Role::Read,
            Method::Write => Role::Write,
            Method::AddLearner
            | Method::ChangeMembership
            | Method::AddVoter
            | Method::RemoveNode
            | Method::TransferLeader
            | Method::SetSessionCapacity
            | Method::Backup => Role::Admin,
        }
    }

    /// The method's name, as in the proto and the gRPC path.
    fn name(self) -> &'static str {
        match self {
            Method::Write => "Write",
            Method::Read => "Read",
            Method::Status => "Status",
            Method::AddLearner => "AddLearner",
            Method::ChangeMembership => "ChangeMembership",
            Method::AddVoter => "AddVoter",
            Method::RemoveNode => "RemoveNode",
            Method::TransferLeader => "TransferLeader",
            Method::SetSessionCapacity => "SetSessionCapacity",
            Method::Backup => "Backup",
        }
    }

    /// The `Cluster` method a gRPC path names, if any.
    fn from_path(path: &str) -> Option<Method> {
        let name = path.strip_prefix("/raftkit.v1.Cluster/")?;
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Wraps the `Cluster` service (behind [`ClientCheck`]) so that the interceptor knows each
/// call's method: tonic hands interceptors the headers but not the path.
#[derive(Clone)]
pub(crate) struct MethodRole<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for MethodRole<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for MethodRole<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        if let Some(method) = Method::from_path(req.uri().path()) {
            req.extensions_mut().insert(method);
        }
        self.0.call(req)
    }
}

/// What a [`crate::ClusterClient`] presents: a bearer token (a user's, or the cluster secret).
#[derive(Clone)]
pub struct Credentials {
    header: AsciiMetadataValue,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// A bearer token: a user's token, or the cluster secret (trimmed).
    pub fn bearer(token: impl AsRef<str>) -> Result<Credentials, AuthError> {
        let token = token.as_ref().trim();
        if token.is_empty() || !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(AuthError::BadToken);
        }
        let header = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| AuthError::BadToken)?;
        Ok(Credentials { header })
    }

    /// The cluster secret as a bearer token (an admin credential); the secret must be
    /// printable ASCII to travel as one.
    pub fn from_secret(secret: &ClusterSecret) -> Result<Credentials, AuthError> {
        Credentials::bearer(std::str::from_utf8(&secret.secret).map_err(|_| AuthError::BadToken)?)
    }

    /// Adds the credentials to an outgoing call.
    pub(crate) fn stamp(&self, meta: &mut MetadataMap) {
        meta.insert("authorization", self.header.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_method_needs_a_role() {
        let proto = include_str!("../proto/raft.proto");
        let service = proto
            .split("service Cluster {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap();
        let methods: Vec<&str> = service
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert_eq!(methods.len(), Method::ALL.len(), "{methods:?}");
        for m in methods {
            let method = Method::from_path(&format!("/raftkit.v1.Cluster/{m}")).unwrap();
            assert_eq!(method.name(), m);
        }
        assert!(Method::from_path("/raftkit.v1.RaftInternal/Vote").is_none());
        assert!(Method::from_path("/raftkit.v1.Cluster/").is_none());
    }

    fn secret() -> ClusterSecret {
        ClusterSecret::new("  correct horse battery staple \n").unwrap()
    }

    #[test]
    fn secrets_are_trimmed_and_must_be_long_enough() {
        assert!(matches!(
            ClusterSecret::new(" short \n"),
            Err(AuthError::WeakSecret { len: 5, .. })
        ));
        let a = secret();
        let b = ClusterSecret::new("correct horse battery staple").unwrap();
        assert_eq!(a.peer_token, b.peer_token, "trimmed before use");
        let c = ClusterSecret::new("another secret, long enough").unwrap();
        assert_ne!(a.peer_token, c.peer_token);
        assert!(!format!("{a:?}").contains("horse"));
    }

    fn with_peer_token(token: &AsciiMetadataValue) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert(PEER_TOKEN_KEY, token.clone());
        r
    }

    #[test]
    fn peers_need_the_secret() {
        let auth = Auth::new(AuthConfig {
            cluster_secret: Some(secret()),
            ..Default::default()
        });
        assert_eq!(
            auth.check_peer(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let wrong = ClusterSecret::new("another secret, long enough").unwrap();
        assert!(
            auth.check_peer(&with_peer_token(&wrong.peer_token))
                .is_err()
        );
        auth.check_peer(&with_peer_token(&secret().peer_token))
            .unwrap();
        // Without a secret, nothing is checked.
        Auth::default().check_peer(&Request::new(())).unwrap();
    }

    #[test]
    fn a_previous_secret_is_accepted_but_not_sent() {
        let old = ClusterSecret::new("the old secret, long enough").unwrap();
        let auth = Auth::new(AuthConfig {
            cluster_secret: Some(secret()),
            previous_secret: Some(old.clone()),
            ..Default::default()
        });
        auth.check_peer(&with_peer_token(&secret().peer_token))
            .unwrap();
        auth.check_peer(&with_peer_token(&old.peer_token)).unwrap();
        let other = ClusterSecret::new("another secret, long enough").unwrap();
        assert!(
            auth.check_peer(&with_peer_token(&other.peer_token))
                .is_err()
        );
        let mut sent = Request::new(());
        auth.stamp_peer(sent.metadata_mut(), 1);
        assert_eq!(
            sent.metadata().get(PEER_TOKEN_KEY),
            Some(&secret().peer_token)
        );
        let mut bearer = Request::new(());
        Credentials::from_secret(&old)
            .unwrap()
            .stamp(bearer.metadata_mut());
        assert_eq!(auth.identify(&bearer).unwrap().role, Role::Admin);
        // Without a current secret, a previous one alone admits nobody.
        let alone = Auth::new(AuthConfig {
            previous_secret: Some(old.clone()),
            users: vec![User {
                name: "u".into(),
                token: "u-token".into(),
                role: Role::Read,
            }],
            ..Default::default()
        });
        assert!(alone.identify(&bearer).is_err());
    }

    #[test]
    fn callers_are_identified_by_token() {
        let auth = Auth::new(AuthConfig {
            cluster_secret: Some(secret()),
            users: vec![User {
                name: "reader".into(),
                token: "r-token".into(),
                role: Role::Read,
            }],
            ..Default::default()
        });
        let bearer = |t: &str| {
            let mut r = Request::new(());
            Credentials::bearer(t).unwrap().stamp(r.metadata_mut());
            r
        };
        assert_eq!(auth.identify(&bearer("r-token")).unwrap().role, Role::Read);
        assert_eq!(
            auth.identify(&bearer("correct horse battery staple"))
                .unwrap()
                .role,
            Role::Admin
        );
        assert_eq!(
            auth.identify(&bearer("nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.identify(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // A forwarded call keeps its caller's role, but only when a peer vouches for it.
        let mut fwd = Request::new(());
        let reader = Caller::new("reader", Role::Read);
        auth.stamp_forward(fwd.metadata_mut(), 2, &reader);
        assert_eq!(auth.identify(&fwd).unwrap(), reader);
        let mut forged = Request::new(());
        forged
            .metadata_mut()
            .insert(CALLER_ROLE_KEY, AsciiMetadataValue::from_static("admin"));
        forged
            .metadata_mut()
            .insert(FROM_KEY, AsciiMetadataValue::from(2u64));
        assert!(auth.identify(&forged).is_err());
        // Nothing configured: everyone is an anonymous admin.
        assert_eq!(
            Auth::default().identify(&Request::new(())).unwrap().role,
            Role::Admin
        );
    }

    #[test]
    fn roles_are_ordered_and_enforced() {
        let auth =
            Auth::new(AuthConfig::default().with_users([User::new("w", "w-token", Role::Write)]));
        // A call as `w` to `method`, as the interceptor passes it on (or refuses it).
        let call = |method: Option<Method>| {
            let mut r = Request::new(());
            Credentials::bearer("w-token")
                .unwrap()
                .stamp(r.metadata_mut());
            if let Some(m) = method {
                r.extensions_mut().insert(m);
            }
            ClientCheck(auth.clone(), Unproven::default()).call(r)
        };
        let mut r = call(Some(Method::Write)).unwrap();
        let caller = checked_caller(&mut r, Method::Write).unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("w", Role::Write));
        // The handler takes it once.
        assert!(checked_caller(&mut r, Method::Write).is_err());
        let e = call(Some(Method::RemoveNode)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("RemoveNode needs the admin role"),
            "{e}"
        );
        // A caller checked for one method does not pass for another.
        let mut r = call(Some(Method::Write)).unwrap();
        let e = checked_caller(&mut r, Method::RemoveNode).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // A call whose method the table does not know reaches its handler unchecked, and is
        // refused there.
        let mut r = call(None).unwrap();
        let e = checked_caller(&mut r, Method::Read).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // So is a call that never passed the interceptor, even with a caller of its own.
        let mut r = Request::new(());
        r.extensions_mut().insert(Caller::new("admin", Role::Admin));
        assert!(checked_caller(&mut r, Method::Read).is_err());
        assert_eq!("ADMIN".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
    }
}
