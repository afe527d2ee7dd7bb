//! `kv backup` and `kv restore`: disaster recovery, in the manner of `etcdctl snapshot save` and
//! `etcdutl snapshot restore`.
//!
//! `kv backup` asks any reachable node for a consistent backup (at a linearizable read index)
//! and writes it to a temporary file beside `--out` (mode 0600, named `.NAME.TAG.partial`, TAG
//! random), verifies it, fsyncs it and renames it into place, so `--out` is either the old file
//! or a complete, verified backup. A backup holds a lock (`flock`) on its temporary file while
//! it writes; one that was killed cannot remove the file, and the next backup to the same name
//! removes those no backup holds. `kv restore` turns a
//! backup into the data directory of one node of a new cluster (see [`raft_core::backup`]);
//! restore every initial member from the same file with the same `--initial-members`, then start
//! them with `kv node` and the same flags. Keys keep their expiry times: they are absolute, so a
//! key's remaining TTL after a restore is what it was at the backup minus the time since, and a
//! key that expired meanwhile is gone.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;

use clap::Args;
use raft_core::BackupInfo;
use raft_core::ClusterId;
use raft_core::NodeId;
use raft_grpc::ClientError;
use raft_grpc::RequestError;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::ctl;
use crate::ctl::CtlError;

/// `kv backup`
#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to write the backup. Written under a temporary name in the same directory and
    /// renamed into place once complete and verified (an existing file is replaced). The file
    /// is readable by its owner only (mode 0600): it holds every value.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub conn: ctl::Conn,
}

/// `kv restore`
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file (from `kv backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// The id of the node whose data directory this prepares; must be one of
    /// --initial-members.
    #[arg(long)]
    pub id: NodeId,
    /// The node's data directory: created if missing; must be empty (`lost+found` aside).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new cluster's members, as `id=host:port,...` with raft addresses, exactly as given
    /// to `kv node --initial-members` (the same list for every node).
    #[arg(long, value_delimiter = ',', required = true)]
    pub initial_members: Vec<String>,
    /// The new cluster's id (32 hex digits). By default it is derived from the backup and the
    /// members, so every node restored from the same file with the same members gets the same
    /// id; give one to restore the same backup into two separate clusters.
    #[arg(long)]
    pub cluster_id: Option<ClusterId>,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// What `kv backup --json` prints.
#[derive(Debug, Serialize)]
struct BackupReport {
    file: PathBuf,
    index: u64,
    term: u64,
    bytes: u64,
    crc32c: String,
    cluster_id: Option<String>,
}

/// What `kv restore --json` prints.
#[derive(Debug, Serialize)]
struct RestoreReport {
    data_dir: PathBuf,
    id: NodeId,
    index: u64,
    term: u64,
    bytes: u64,
    crc32c: String,
    from_cluster_id: Option<String>,
    cluster_id: String,
    members: BTreeMap<NodeId, String>,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> CtlError {
    CtlError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Checks `out` before anything is transferred: it must name a file (not a directory) in an
/// existing directory. Returns that directory and the file's name.
fn check_out(out: &Path) -> Result<(PathBuf, &str), CtlError> {
    use std::os::unix::ffi::OsStrExt;
    let refuse = |why: String| CtlError::Config(format!("--out {}: {why}", out.display()));
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| !out.as_os_str().as_bytes().ends_with(b"/"))
        .ok_or_else(|| refuse("names no file; name the backup file".into()))?;
    if std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        return Err(refuse(format!(
            "is a directory; name the backup file, e.g. {}",
            out.join("cluster.backup").display()
        )));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok((dir, name)),
        Ok(_) => Err(refuse(format!("{} is not a directory", dir.display()))),
        Err(e) => Err(refuse(format!(
            "cannot use directory {}: {e}",
            dir.display()
        ))),
    }
}

/// Whether a failed call may mean that no node could be reached at all.
fn maybe_unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::GaveUp {
            last: RequestError::Transport { .. } | RequestError::Timeout(_),
            ..
        }
    )
}

/// Runs `kv backup`; returns what to print.
pub async fn backup(args: &BackupArgs) -> Result<String, CtlError> {
    let out = &args.out;
    let (dir, name) = check_out(out)?;
    remove_stale_partials(&dir, name);
    let tmp = partial_path(&dir, name, rand::random());
    let client = args.conn.client()?;
    let mut file = create_partial(&tmp).await.map_err(|e| {
        CtlError::Failed(format!(
            "cannot create {} (the temporary file for --out {}): {e}",
            tmp.display(),
            out.display()
        ))
    })?;
    let result = async {
        let info = match client.backup(&mut file).await {
            Ok(info) => info,
            Err(ClientError::Output(e)) => return Err(failed("cannot write", &tmp, e)),
            Err(e) => {
                if maybe_unreachable(&e)
                    && let Some(unreachable) = args.conn.none_answers(&client).await
                {
                    return Err(unreachable);
                }
                return Err(CtlError::Failed(ctl::explain(
                    e,
                    "the",
                    "pass --token-file with the cluster secret or an admin's password",
                    "not allowed; a backup needs the admin role",
                )));
            }
        };
        file.flush()
            .await
            .map_err(|e| failed("cannot write", &tmp, e))?;
        file.sync_all()
            .await
            .map_err(|e| failed("cannot fsync", &tmp, e))?;
        // Read back what is on disk: the file, not just the stream, must check out.
        let check = tmp.clone();
        let on_disk = tokio::task::spawn_blocking(move || raft_core::backup::inspect(&check))
            .await
            .map_err(|e| CtlError::Failed(format!("verifying the backup failed: {e}")))?
            .map_err(|e| failed("verifying", &tmp, e))?;
        if on_disk != info {
            return Err(CtlError::Failed(format!(
                "the file written ({on_disk:?}) differs from what the node sent ({info:?})"
            )));
        }
        tokio::fs::rename(&tmp, out)
            .await
            .map_err(|e| failed("cannot rename into", out, e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                CtlError::Failed(format!(
                    "the backup is complete and verified in {}, but fsyncing directory {} failed \
                     ({e}): a power loss may take the new name away; fsync it or run the backup \
                     again",
                    out.display(),
                    dir.display()
                ))
            })?;
        Ok(info)
    }
    .await;
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    if args.conn.json {
        return ctl::json(&report(out, &info));
    }
    Ok(format!(
        "backup of cluster {} at index {} (term {}): {} bytes, crc32c {:08x}, written to {}\n",
        info.cluster.map_or_else(|| "-".into(), |c| c.to_string()),
        info.index,
        info.term,
        info.bytes,
        info.checksum,
        out.display()
    ))
}

/// Where `kv backup` writes a backup named `name` in `dir` before it is complete:
/// `.NAME.TAG.partial` with a random `tag`, so two backups to the same name do not write into
/// one file, whatever their process ids (every run in a container can be pid 1) or hosts (a
/// shared backup directory).
fn partial_path(dir: &Path, name: &str, tag: u64) -> PathBuf {
    dir.join(format!(".{name}.{tag:016x}.partial"))
}

/// Removes what interrupted backups to `name` left in `dir`: `.NAME.TAG.partial` files (`TAG`
/// 16 hex digits, or a process id as earlier versions named them) that no backup holds locked (a backup killed before it could clean up; the lock went with its
/// process). A locked file, another backup's under way, is left. Best effort: a file that cannot
/// be opened or removed is left, the latter logged.
fn remove_stale_partials(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let is_partial = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".partial"))
            .is_some_and(|tag| {
                let hex = tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit());
                let pid = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit());
                hex || pid
            });
        if !is_partial {
            continue;
        }
        let path = entry.path();
        let Ok(held) = std::fs::File::open(&path) else {
            continue;
        };
        // Held while the file is removed, so a backup that would lock it finds it gone.
        if rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed an interrupted backup's partial file")
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot remove an interrupted backup's partial file")
            }
        }
    }
}

/// Creates the file a backup is written to, new, readable and writable by its owner only (it
/// holds every value and the session table, as the data directory does), and locks it for as
/// long as it is open, so that other backups leave it alone ([`remove_stale_partials`]).
async fn create_partial(path: &Path) -> std::io::Result<tokio::fs::File> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    // Another backup may have found the file before it was locked: it holds it now, or
    // removed it.
    let taken = || {
        std::io::Error::other(
            "another backup to the same name took it for a leftover as it was created; run the \
             backup again",
        )
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| taken())?;
    let ours = file.metadata().await?;
    match tokio::fs::metadata(path).await {
        Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => Ok(file),
        _ => Err(taken()),
    }
}

fn report(file: &Path, info: &BackupInfo) -> BackupReport {
    BackupReport {
        file: file.to_path_buf(),
        index: info.index,
        term: info.term,
        bytes: info.bytes,
        crc32c: format!("{:08x}", info.checksum),
        cluster_id: info.cluster.map(|c| c.to_string()),
    }
}

/// Runs `kv restore` with the parsed `members`; returns what to print.
pub async fn restore(
    args: &RestoreArgs,
    members: BTreeMap<NodeId, String>,
) -> Result<String, CtlError> {
    let (from, dir, id, cluster) = (
        args.from.clone(),
        args.data_dir.clone(),
        args.id,
        args.cluster_id,
    );
    let m = members.clone();
    let restored = tokio::task::spawn_blocking(move || {
        raft_core::backup::restore_data_dir_checked::<crate::store::Store>(
            &from, &dir, id, &m, cluster,
        )
    })
    .await
    .map_err(|e| CtlError::Failed(format!("the restore task failed: {e}")))?
    .map_err(|e| CtlError::Failed(e.to_string()))?;
    let b = &restored.backup;
    if args.json {
        return ctl::json(&RestoreReport {
            data_dir: args.data_dir.clone(),
            id,
            index: b.index,
            term: b.term,
            bytes: b.bytes,
            crc32c: format!("{:08x}", b.checksum),
            from_cluster_id: b.cluster.map(|c| c.to_string()),
            cluster_id: restored.cluster.to_string(),
            members,
        });
    }
    let list: Vec<String> = members.iter().map(|(i, a)| format!("{i}={a}")).collect();
    Ok(format!(
        "restored the backup at index {} (term {}, {} bytes) into {} as node {id} of new cluster {}\n\
         start it with: kv node --id {id} --data-dir {} --initial-members {} …\n",
        b.index,
        b.term,
        b.bytes,
        args.data_dir.display(),
        restored.cluster,
        args.data_dir.display(),
        list.join(","),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn the_partial_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = partial_path(dir.path(), "b.backup", 7);
        drop(create_partial(&path).await.unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        backup: BackupArgs,
    }

    #[tokio::test]
    async fn an_out_that_names_no_file_in_a_directory_is_refused_before_any_transfer() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        // Where the backup would come from: any connection made to it shows.
        let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        node.set_nonblocking(true).unwrap();
        let endpoint = node.local_addr().unwrap().to_string();
        let outs = [
            dir.path().display().to_string(),
            format!("{}/new/", dir.path().display()),
            format!("{}/missing/b.backup", dir.path().display()),
            format!("{}/b.backup", file.display()),
        ];
        for out in &outs {
            let args = Cli::parse_from([
                "kv",
                "--out",
                out,
                "--endpoints",
                &endpoint,
                "--timeout",
                "2s",
            ])
            .backup;
            let e = backup(&args).await.unwrap_err();
            assert!(matches!(e, CtlError::Config(_)), "--out {out}: {e}");
        }
        assert_eq!(
            node.accept().map(drop).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "no node was asked"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["file"], "nothing was written");
    }

    #[tokio::test]
    async fn partial_files_no_backup_holds_are_removed_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        // A backup under way holds its file; a killed one's file is held by nobody.
        let under_way = partial_path(dir, "b.backup", 1);
        let _held = create_partial(&under_way).await.unwrap();
        let killed = partial_path(dir, "b.backup", 2);
        drop(create_partial(&killed).await.unwrap());
        // Left by earlier versions, named by pid: this process's own pid too (every run in a
        // container can be pid 1), which they kept for ever.
        let by_pid = dir.join(format!(".b.backup.{}.partial", std::process::id()));
        std::fs::write(&by_pid, b"x").unwrap();
        let others = [
            partial_path(dir, "other.backup", 3),
            dir.join("b.backup"),
            dir.join(".b.backup.partial.kept"),
            // Another --out, `b.backup.1`, whose name starts with this one's.
            partial_path(dir, "b.backup.1", 4),
        ];
        for f in &others {
            std::fs::write(f, b"x").unwrap();
        }
        remove_stale_partials(dir, "b.backup");
        assert!(under_way.exists(), "the backup under way keeps its file");
        assert!(!killed.exists());
        assert!(!by_pid.exists());
        assert!(others.iter().all(|f| f.exists()), "other files are left");
        // A new backup to the same name does not collide with the one under way.
        let next = partial_path(dir, "b.backup", rand::random());
        drop(create_partial(&next).await.unwrap());
    }
}
