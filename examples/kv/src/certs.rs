//! `kv certs`: a CA, node certificates and client certificates for a development cluster.
//!
//! ```text
//! kv certs --dir certs --node 1=10.0.0.1 --node 2=10.0.0.2 --node 3=node3.internal --client alice
//! ```
//!
//! writes `ca.pem` (and `ca.key`, to sign more later — keep it offline), `node-<id>.pem` and
//! `node-<id>.key` for each node and `client-<name>.pem`/`.key` for each client. A node
//! certificate is valid for its host, `localhost` and `127.0.0.1`, serves and connects (server and
//! client use), and names the node as `urn:raftkit:node:<id>`, which peers check under mutual
//! TLS. A client certificate is for client use only, with the user's name as its common name, so
//! it cannot pass for a peer. Keys are written readable by their owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

use raft_core::NodeId;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertifiedIssuer;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;

/// Arguments of `kv certs`.
#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Where to write the files (created if missing; existing files are not overwritten).
    #[arg(long, default_value = "kv-certs")]
    pub dir: PathBuf,
    /// A node, as `id=host` (the host or IP address in its --raft-addr); repeat per node.
    #[arg(long = "node", value_name = "ID=HOST", required = true)]
    pub nodes: Vec<String>,
    /// A client certificate for this user name; repeat per client.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Days the certificates are valid (1 to 36,500).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
}

fn fail(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn write_file(dir: &Path, name: &str, content: &str, private: bool) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(content.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Signs `params` with `ca` and writes `<stem>.pem` and `<stem>.key` into `args.dir`.
fn issue(
    mut params: CertificateParams,
    ca: &CertifiedIssuer<'static, KeyPair>,
    args: &CertsArgs,
    stem: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), String> {
    validity(&mut params, args.days);
    let key = KeyPair::generate().map_err(fail("key"))?;
    let cert = params.signed_by(&key, ca).map_err(fail(stem))?;
    written.push(write_file(
        &args.dir,
        &format!("{stem}.pem"),
        &cert.pem(),
        false,
    )?);
    written.push(write_file(
        &args.dir,
        &format!("{stem}.key"),
        &key.serialize_pem(),
        true,
    )?);
    Ok(())
}

/// Generates the files; returns what was written.
pub fn run(args: &CertsArgs) -> Result<Vec<PathBuf>, String> {
    let nodes = args
        .nodes
        .iter()
        .map(|n| {
            let (id, host) = n
                .split_once('=')
                .ok_or_else(|| format!("--node: expected id=host, got {n:?}"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("--node: {id:?} is not a node id (1 or more)"))?;
            Ok((id, host.trim().to_string()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // A client's name becomes part of its files' names in --dir.
    if let Some(bad) = args.clients.iter().find(|name| {
        name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }) {
        return Err(format!(
            "--client: {bad:?} is not a name for files (letters, digits, '-', '_' and '.', not first)"
        ));
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let mut written = Vec::new();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kv development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, args.days);
    let ca_key = KeyPair::generate().map_err(fail("CA key"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail("CA"))?;
    written.push(write_file(&args.dir, "ca.pem", &ca.pem(), false)?);
    written.push(write_file(&args.dir, "ca.key", &ca_key_pem, true)?);

    for (id, host) in &nodes {
        let mut names = vec![
            host.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        names.sort();
        names.dedup();
        let mut params = CertificateParams::new(names).map_err(fail("node certificate"))?;
        params.subject_alt_names.push(SanType::URI(
            raft_grpc::auth::node_uri(*id)
                .try_into()
                .map_err(fail("node URI"))?,
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kv node {id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        issue(params, &ca, args, &format!("node-{id}"), &mut written)?;
    }
    for name in &args.clients {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(fail("client certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(params, &ca, args, &format!("client-{name}"), &mut written)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, node: &str, client: &str) -> CertsArgs {
        CertsArgs {
            dir: dir.to_path_buf(),
            nodes: vec![node.to_string()],
            clients: vec![client.to_string()],
            days: 1,
        }
    }

    /// Node 0 (which no cluster has) and client names that would write outside `--dir` are
    /// refused before any file is written.
    #[test]
    fn node_ids_and_client_names_are_checked_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("certs");
        for (node, client) in [("0=h", "app"), ("1=h", "../../escape"), ("1=h", ".hidden")] {
            assert!(run(&args(&dir, node, client)).is_err(), "{node} {client}");
            assert!(!dir.exists(), "{node} {client}: files were written");
        }
        assert!(!root.path().join("client-..").exists());
        let written = run(&args(&dir, "1=h", "app")).unwrap();
        assert!(written.iter().all(|p| p.starts_with(&dir)), "{written:?}");
    }
}
