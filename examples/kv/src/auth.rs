//! Who may run which command over RESP, as Redis does it.
//!
//! * `--requirepass-file`: one password for the `default` user. `AUTH <password>` or
//!   `AUTH default <password>` or `HELLO 3 AUTH default <password>` authenticate.
//! * `--users-file`: named users, each with a role and a password (`AUTH <user> <password>`).
//!
//! Until a connection authenticates, every command but `AUTH`, `HELLO … AUTH …` and `QUIT` gets
//! `-NOAUTH Authentication required.`. Then each command needs a role: reads need `read`, writes
//! `write`, `FLUSHDB`/`FLUSHALL` `admin`; a command beyond the user's role gets `-NOPERM`.
//! `ACL WHOAMI` names the user. With neither file, every connection is the `default` user with
//! every right.
//!
//! The check on the hot path is one comparison of the connection's role and one of the accounts'
//! generation; passwords are compared (in constant time) only by `AUTH` and `HELLO`, and once per
//! connection after a reload.
//!
//! A reload (`SIGHUP`) applies to connections already authenticated, at their next command:
//! * a user whose password changed, or who is no longer in the files, loses the connection: its
//!   next command is answered `-NOAUTH …` and the connection is closed, unless that command is
//!   `AUTH`, `HELLO` or `QUIT`, which are run (a failed `AUTH` then closes it too: its time
//!   to authenticate has passed);
//! * a user whose role changed runs its next command with the new role, as in Redis, and its
//!   `EXEC` is refused whole (`EXECABORT`) if a queued command needs more than the new role;
//! * a connection that needed no authentication is closed in the same way once a reload requires
//!   it.
//!
//! Users file format: one user per line, `<name> <role> <password>`, where the role is `read`,
//! `write` or `admin` and the password is the rest of the line (trimmed). Blank lines and lines
//! starting with `#` are ignored. The same users (password as bearer token) may call the gRPC
//! cluster API.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use raft_grpc::Role;

use crate::commands::Spec;
use crate::store::Reply;

/// The built-in user of `AUTH <password>`.
pub const DEFAULT_USER: &str = "default";

/// One user.
#[derive(Clone)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub role: Role,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Account({}, {})", self.name, self.role)
    }
}

/// Every credential a node accepts over RESP. Its `Debug` form names no password.
#[derive(Clone, Default)]
pub struct Accounts {
    /// The `default` user's password (`requirepass`).
    pub requirepass: Option<String>,
    pub users: Vec<Account>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("requirepass", &self.requirepass.as_ref().map(|_| "…"))
            .field("users", &self.users)
            .finish()
    }
}

/// The accounts in force, replaced whole on reload, with a count of replacements that lets a
/// connection notice one with a single atomic load.
#[derive(Debug, Default)]
pub struct LiveAccounts {
    accounts: RwLock<Arc<Accounts>>,
    generation: AtomicU64,
}

impl LiveAccounts {
    /// `accounts` in force.
    pub fn new(accounts: Accounts) -> LiveAccounts {
        LiveAccounts {
            accounts: RwLock::new(Arc::new(accounts)),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `accounts` in force; connections check theirs again at their next command.
    pub fn replace(&self, accounts: Accounts) {
        *self.accounts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(accounts);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the accounts were replaced.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The accounts of a node, shared by its connections and its reloader.
pub type SharedAccounts = Arc<LiveAccounts>;

/// Reads the accounts in force.
pub fn current(shared: &LiveAccounts) -> Arc<Accounts> {
    shared
        .accounts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// A SHA-256 digest of a password.
type Digest = [u8; 32];

fn digest(password: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, password).as_ref());
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl Accounts {
    /// Whether connections must authenticate.
    pub fn required(&self) -> bool {
        self.requirepass.is_some() || !self.users.is_empty()
    }

    /// The user `name` and its role if `opens` accepts its password: the `default` user's
    /// `requirepass` first, then the users file.
    fn find(&self, name: &[u8], opens: impl Fn(&str) -> bool) -> Option<(&str, Role)> {
        if name == DEFAULT_USER.as_bytes()
            && let Some(p) = &self.requirepass
            && opens(p)
        {
            return Some((DEFAULT_USER, Role::Admin));
        }
        self.users
            .iter()
            .find(|u| u.name.as_bytes() == name)
            .filter(|u| opens(&u.password))
            .map(|u| (u.name.as_str(), u.role))
    }

    /// The role of user `name` if `password_digest` is the digest of their password.
    fn check_digest(&self, name: &str, password_digest: &Digest) -> Option<Role> {
        self.find(name.as_bytes(), |p| {
            digest(p.as_bytes()) == *password_digest
        })
        .map(|(_, role)| role)
    }

    /// The user `name` (the default user if `None`) if `password` is theirs.
    fn check(&self, name: Option<&[u8]>, password: &[u8]) -> Option<(String, Role)> {
        let name = name.unwrap_or(DEFAULT_USER.as_bytes());
        self.find(name, |p| ct_eq(p.as_bytes(), password))
            .map(|(name, role)| (name.to_string(), role))
    }
}

/// Parses a users file (see the module documentation).
pub fn parse_users(text: &str) -> Result<Vec<Account>, String> {
    let mut users: Vec<Account> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            format!(
                "line {}: {why} (expected `<name> <role> <password>`)",
                i + 1
            )
        };
        let mut parts = line.splitn(3, char::is_whitespace);
        let name = parts.next().unwrap_or_default();
        let role = parts.next().ok_or_else(|| bad("no role"))?;
        let password = parts.next().map(str::trim).unwrap_or_default();
        if password.is_empty() {
            return Err(bad("no password"));
        }
        let role = role.parse::<Role>().map_err(|e| bad(&e.to_string()))?;
        if users.iter().any(|u| u.name == name) {
            return Err(bad(&format!("user {name:?} appears twice")));
        }
        users.push(Account {
            name: name.to_string(),
            password: password.to_string(),
            role,
        });
    }
    Ok(users)
}

/// Who a connection acts as, and how it proved it.
#[derive(Clone)]
struct User {
    name: String,
    role: Role,
    /// The digest of the password it authenticated with (not the password, which would stay
    /// in the connection's memory for its whole life), checked again after a reload; `None`
    /// for a connection that needed no authentication.
    password: Option<Digest>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({}, {})", self.name, self.role)
    }
}

/// A connection's authentication state.
#[derive(Debug, Clone)]
pub struct ConnAuth {
    user: Option<User>,
    /// The accounts' generation this state was last checked against.
    generation: u64,
}

impl ConnAuth {
    /// A new connection: the default user with every right if nothing is required.
    pub fn new(live: &LiveAccounts) -> ConnAuth {
        let generation = live.generation();
        ConnAuth {
            user: (!current(live).required()).then(|| User {
                name: DEFAULT_USER.to_string(),
                role: Role::Admin,
                password: None,
            }),
            generation,
        }
    }

    /// Whether the connection acts as some user (it authenticated, or needs not).
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// Whether the connection's user may run what needs `role` (as last checked).
    pub fn may(&self, role: Role) -> bool {
        self.user.as_ref().is_some_and(|u| u.role >= role)
    }

    /// Checks the connection's user against the accounts in force if they were replaced since
    /// the last check: takes a changed role, and `false` (the user forgotten) when its password
    /// no longer opens the account.
    fn still_valid(&mut self, live: &LiveAccounts) -> bool {
        let generation = live.generation();
        if generation == self.generation {
            return true;
        }
        self.generation = generation;
        let Some(user) = self.user.as_mut() else {
            return true;
        };
        let accounts = current(live);
        let role = match &user.password {
            None => (!accounts.required()).then_some(Role::Admin),
            Some(d) => accounts.check_digest(&user.name, d),
        };
        match role {
            Some(role) => {
                user.role = role;
                true
            }
            None => {
                self.user = None;
                false
            }
        }
    }
}

/// What the gate decided about a command.
pub enum Gate {
    /// Answer this instead of running the command.
    Reply(Reply),
    /// The connection may not run the command (not authenticated, no permission, or a
    /// malformed `ACL`): answer this error, and inside `MULTI` discard the transaction, as
    /// Redis does for a command it rejects before queueing.
    Refused(Reply),
    /// Run it.
    Pass,
    /// The connection's user was removed, or its password changed, by a reload: answer this
    /// and close the connection.
    Revoked(Reply),
}

fn err(s: impl Into<String>) -> Gate {
    Gate::Reply(Reply::Error(s.into()))
}

fn refuse(s: impl Into<String>) -> Gate {
    Gate::Refused(Reply::Error(s.into()))
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const REVOKED: &str = "NOAUTH This connection's user was removed or its password changed; connect and authenticate again.";

/// The role a command needs.
pub fn role_for(spec: &Spec) -> Role {
    if spec.is_admin() {
        Role::Admin
    } else if spec.is_write() {
        Role::Write
    } else {
        Role::Read
    }
}

/// Authenticates, answers `AUTH`/`ACL`, or checks that the connection may run the command
/// (`spec` is its table entry if known). The accounts are read only to check a password, and
/// once after each reload.
pub fn gate(
    spec: Option<&'static Spec>,
    args: &[Bytes],
    conn: &mut ConnAuth,
    live: &LiveAccounts,
) -> Gate {
    let accounts = || current(live);
    let name = spec.map(|s| s.name);
    if !conn.still_valid(live) && !matches!(name, Some("auth" | "hello" | "quit" | "reset")) {
        return Gate::Revoked(Reply::Error(REVOKED.into()));
    }
    match name {
        Some("auth") => {
            let a = accounts();
            if !a.required() {
                return err(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                );
            }
            let (user, password) = match args.len() {
                2 => (None, &args[1]),
                3 => (Some(&args[1][..]), &args[2]),
                _ => return err("ERR wrong number of arguments for 'auth' command"),
            };
            let found = a.check(user, password);
            match found {
                Some((name, role)) => {
                    conn.user = Some(User {
                        name,
                        role,
                        password: Some(digest(password)),
                    });
                    Gate::Reply(Reply::Ok)
                }
                None => err(WRONGPASS),
            }
        }
        Some("hello") => {
            // HELLO <protover> [AUTH <user> <pass>] [SETNAME <name>]. As in Redis, a version it
            // refuses or an option it cannot read authenticates nobody: the command answers
            // its error (the version's, from the command itself).
            let version_ok = args
                .get(1)
                .is_none_or(|v| matches!(crate::store::parse_int(v), Some(2 | 3)));
            if !version_ok {
                return Gate::Pass;
            }
            let mut authenticated = None;
            let mut i = 2;
            while i < args.len() {
                if args[i].eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
                    let a = accounts();
                    match a.check(Some(&args[i + 1]), &args[i + 2]) {
                        Some((name, role)) if a.required() => {
                            authenticated = Some(User {
                                name,
                                role,
                                password: Some(digest(&args[i + 2])),
                            })
                        }
                        _ if !a.required() => {}
                        _ => return err(WRONGPASS),
                    }
                    i += 3;
                } else if args[i].eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
                    i += 2;
                } else {
                    return err("ERR Syntax error in HELLO option");
                }
            }
            if authenticated.is_some() {
                conn.user = authenticated;
            }
            if conn.user.is_none() {
                return err(
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                );
            }
            Gate::Pass
        }
        // RESET needs no authentication: it takes the connection's away.
        Some("quit" | "reset") => Gate::Pass,
        _ => {
            let Some(User {
                name: user, role, ..
            }) = &conn.user
            else {
                return refuse(NOAUTH);
            };
            let Some(spec) = spec else {
                return Gate::Pass; // unknown commands get their own error
            };
            let name = spec.name;
            if name == "acl" {
                return match args.get(1).map(|s| s.to_ascii_lowercase()) {
                    Some(s) if s == b"whoami" && args.len() == 2 => {
                        Gate::Reply(Reply::Bulk(Bytes::from(user.clone())))
                    }
                    _ => refuse(
                        "ERR unknown subcommand or wrong number of arguments for 'acl'. Try ACL WHOAMI.",
                    ),
                };
            }
            if *role == Role::Admin {
                return Gate::Pass; // may run anything: no lookup on the hot path
            }
            let needed = role_for(spec);
            if *role < needed {
                return refuse(format!(
                    "NOPERM User {user} has no permissions to run the '{}' command",
                    spec.name
                ));
            }
            Gate::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::from(a.to_string())).collect()
    }

    fn run(conn: &mut ConnAuth, a: &LiveAccounts, line: &str) -> Option<Reply> {
        let args = args(line);
        let spec = crate::commands::find(&args[0]);
        match gate(spec, &args, conn, a) {
            Gate::Reply(r) | Gate::Refused(r) | Gate::Revoked(r) => Some(r),
            Gate::Pass => None,
        }
    }

    fn accounts() -> LiveAccounts {
        LiveAccounts::new(Accounts {
            requirepass: Some("s3cret".into()),
            users: parse_users("# users\nalice read alice pass\n\nbob write bobpw\n").unwrap(),
        })
    }

    #[test]
    fn noauth_until_auth() {
        let a = accounts();
        let mut c = ConnAuth::new(&a);
        assert_eq!(run(&mut c, &a, "GET k"), Some(Reply::Error(NOAUTH.into())));
        assert_eq!(run(&mut c, &a, "QUIT"), None);
        assert_eq!(
            run(&mut c, &a, "AUTH nope"),
            Some(Reply::Error(WRONGPASS.into()))
        );
        assert_eq!(run(&mut c, &a, "AUTH s3cret"), Some(Reply::Ok));
        assert_eq!(run(&mut c, &a, "FLUSHDB"), None, "default is admin");
        assert_eq!(
            run(&mut c, &a, "ACL WHOAMI"),
            Some(Reply::Bulk(Bytes::from("default")))
        );
    }

    #[test]
    fn users_have_roles() {
        let a = accounts();
        let mut c = ConnAuth::new(&a);
        assert_eq!(run(&mut c, &a, "AUTH bob bobpw"), Some(Reply::Ok));
        assert_eq!(run(&mut c, &a, "SET k v"), None);
        assert_eq!(run(&mut c, &a, "GET k"), None);
        assert_eq!(
            run(&mut c, &a, "FLUSHDB"),
            Some(Reply::Error(
                "NOPERM User bob has no permissions to run the 'flushdb' command".into()
            ))
        );
        let mut r = ConnAuth::new(&a);
        assert_eq!(run(&mut r, &a, "HELLO 3 AUTH bob bobpw"), None);
        assert_eq!(run(&mut r, &a, "INCR n"), None);
        let mut h = ConnAuth::new(&a);
        assert!(
            matches!(run(&mut h, &a, "HELLO 3"), Some(Reply::Error(e)) if e.starts_with("NOAUTH"))
        );
        assert_eq!(
            run(&mut h, &a, "HELLO 3 AUTH default s3cret"),
            None,
            "requirepass through HELLO"
        );
        // A HELLO refused for its version or its options authenticates nobody, as in Redis;
        // the version's error is the command's own.
        for refused in [
            "HELLO 4 AUTH bob bobpw",
            "HELLO x AUTH bob bobpw",
            "HELLO 3 AUTH bob bobpw SETNAME",
            "HELLO 3 AUTH bob bobpw NOSUCH option",
        ] {
            let mut c = ConnAuth::new(&a);
            let _ = run(&mut c, &a, refused);
            assert!(
                matches!(run(&mut c, &a, "GET k"), Some(Reply::Error(e)) if e.starts_with("NOAUTH")),
                "{refused}"
            );
        }
    }

    #[test]
    fn readers_cannot_write() {
        let a = LiveAccounts::new(Accounts {
            requirepass: None,
            users: parse_users("carol read pw").unwrap(),
        });
        let mut c = ConnAuth::new(&a);
        assert_eq!(run(&mut c, &a, "AUTH carol pw"), Some(Reply::Ok));
        assert_eq!(run(&mut c, &a, "GET k"), None);
        assert!(
            matches!(run(&mut c, &a, "SET k v"), Some(Reply::Error(e)) if e.starts_with("NOPERM"))
        );
        assert!(
            matches!(run(&mut c, &a, "DEL k"), Some(Reply::Error(e)) if e.starts_with("NOPERM"))
        );
    }

    #[test]
    fn nothing_configured_means_open() {
        let a = LiveAccounts::default();
        let mut c = ConnAuth::new(&a);
        assert_eq!(run(&mut c, &a, "SET k v"), None);
        assert!(
            matches!(run(&mut c, &a, "AUTH x"), Some(Reply::Error(e)) if e.contains("without any password"))
        );
    }

    fn revoked(r: Option<Reply>) -> bool {
        matches!(r, Some(Reply::Error(e)) if e == REVOKED)
    }

    /// After a reload, a connection keeps its user only while the user's password still opens
    /// the account; a changed role applies to its next command.
    #[test]
    fn a_reload_applies_to_connections_already_authenticated() {
        let live = LiveAccounts::new(Accounts {
            requirepass: Some("s3cret".into()),
            users: parse_users(
                "alice read apw
bob write bpw
carol read cpw
erin write epw",
            )
            .unwrap(),
        });
        let conn = |line: &str| {
            let mut c = ConnAuth::new(&live);
            assert_eq!(run(&mut c, &live, line), Some(Reply::Ok));
            c
        };
        let (mut alice, mut bob, mut carol, mut erin, mut default) = (
            conn("AUTH alice apw"),
            conn("AUTH bob bpw"),
            conn("AUTH carol cpw"),
            conn("AUTH erin epw"),
            conn("AUTH s3cret"),
        );
        let mut hello = ConnAuth::new(&live);
        assert_eq!(run(&mut hello, &live, "HELLO 3 AUTH bob bpw"), None);
        assert!(
            run(&mut carol, &live, "SET k v").is_some(),
            "carol reads only"
        );
        // alice removed, bob's password changed, carol may now write, erin unchanged, and a new
        // requirepass.
        live.replace(Accounts {
            requirepass: Some("n3w".into()),
            users: parse_users(
                "bob write bpw2
carol write cpw
erin write epw",
            )
            .unwrap(),
        });
        assert!(revoked(run(&mut alice, &live, "GET k")));
        assert!(revoked(run(&mut bob, &live, "SET k v")));
        assert!(revoked(run(&mut hello, &live, "GET k")));
        assert!(revoked(run(&mut default, &live, "GET k")));
        assert_eq!(
            run(&mut carol, &live, "SET k v"),
            None,
            "the new role applies"
        );
        assert_eq!(run(&mut erin, &live, "SET k v"), None);
        // Once told, the connection is simply unauthenticated; AUTH with the new password works
        // on it, as on a new connection.
        assert_eq!(
            run(&mut bob, &live, "GET k"),
            Some(Reply::Error(NOAUTH.into()))
        );
        assert_eq!(run(&mut bob, &live, "AUTH bob bpw2"), Some(Reply::Ok));
        assert_eq!(run(&mut bob, &live, "SET k v"), None);
        let mut admin = conn("AUTH n3w");
        assert_eq!(run(&mut admin, &live, "FLUSHDB"), None);
        // AUTH right after the reload is run, not refused.
        live.replace(Accounts {
            requirepass: Some("n3w".into()),
            users: parse_users("carol write cpw3").unwrap(),
        });
        assert_eq!(run(&mut carol, &live, "AUTH carol cpw3"), Some(Reply::Ok));
        assert_eq!(run(&mut carol, &live, "SET k v"), None);
        assert!(revoked(run(&mut erin, &live, "GET k")));
    }

    #[test]
    fn connections_that_needed_no_password_are_closed_once_one_is_required() {
        let live = LiveAccounts::default();
        let mut open = ConnAuth::new(&live);
        assert_eq!(run(&mut open, &live, "SET k v"), None);
        live.replace(Accounts::default());
        assert_eq!(run(&mut open, &live, "SET k v"), None, "still open");
        live.replace(Accounts {
            requirepass: Some("pw".into()),
            users: Vec::new(),
        });
        assert!(revoked(run(&mut open, &live, "GET k")));
    }

    #[test]
    fn bad_users_files_are_refused() {
        assert!(parse_users("alice").is_err());
        assert!(parse_users("alice root pw").is_err());
        assert!(parse_users("alice read").is_err());
        assert!(parse_users("a read x\na write y").is_err());
        let u = parse_users("dave admin  two words ").unwrap();
        assert_eq!(u[0].password, "two words");
    }
}
