//! Small filesystem helpers with the durability rules raftkit relies on.

use std::fs;
use std::fs::File;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

/// An I/O error together with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// A copy with the same operation and path, and an I/O error of the same kind and OS error
/// code (an `io::Error` is not `Clone`; one that carries no OS code keeps its kind and message).
impl Clone for PathError {
    fn clone(&self) -> Self {
        PathError {
            op: self.op,
            path: self.path.clone(),
            source: match self.source.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(self.source.kind(), self.source.to_string()),
            },
        }
    }
}

/// Attaches `op` and `path` to an I/O error.
pub(crate) fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathError + 'a {
    move |source| PathError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl From<PathError> for io::Error {
    fn from(e: PathError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Makes directory entries (created, renamed or removed files) in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("sync directory", dir))
}

/// Removes the file at `path`. A file already gone is not an error: a directory listed and then
/// cleaned can lose an entry meanwhile to whoever else owns it (a build of a store that is
/// shutting down removes its own temporary file). Returns whether this call removed it.
pub(crate) fn remove_if_present(path: &Path) -> Result<bool, PathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(at("remove", path)(e)),
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a temporary file, fsync it,
/// rename it over the target, fsync the directory. A crash leaves either the old or the new file.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), PathError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(at("create", &tmp))?;
        f.write_all(bytes).map_err(at("write", &tmp))?;
        f.sync_all().map_err(at("fsync", &tmp))?;
    }
    fs::rename(&tmp, &target).map_err(at("rename", &tmp))?;
    sync_dir(dir)
}

/// Creates `dir` and its parents if missing, durably: each directory it creates is made durable
/// in its parent (the parent is fsynced after the creation), so that a power loss cannot take
/// away a directory, and the files made durable in it, after this returned. Directories that
/// exist are left as they are. Fails if `dir` or a parent exists and is not a directory.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PathError> {
    create_dir_all_durable(dir)?;
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(at("create directory", dir)(io::Error::new(
            io::ErrorKind::NotADirectory,
            "exists and is not a directory",
        ))),
        Err(e) => Err(at("create directory", dir)(e)),
    }
}

/// Creates `dir` and its missing parents, and makes each new entry durable by fsyncing the
/// directory it was created in. Returns the directories this call created, outermost first
/// (one created meanwhile by someone else is not among them).
pub(crate) fn create_dir_all_durable(dir: &Path) -> Result<Vec<PathBuf>, PathError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty()) {
        match fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p.to_path_buf()),
            Err(e) => return Err(at("stat", p)(e)),
        }
        cur = p.parent();
    }
    let mut created = Vec::new();
    for p in missing.into_iter().rev() {
        match fs::create_dir(&p) {
            Ok(()) => {
                created.push(p.clone());
                if let Err(e) = sync_dir(parent_of(&p)) {
                    for c in created.iter().rev() {
                        let _ = fs::remove_dir(c);
                    }
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => return Err(at("create directory", &p)(e)),
        }
    }
    Ok(created)
}

/// The directory `path` is in: its parent, or `.` for a bare name.
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Reserves `len` bytes of disk for `file` so later writes do not allocate blocks. Falls back to
/// extending the file where the filesystem does not support preallocation.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            if file.metadata()?.len() < len {
                file.set_len(len)?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes what was written to `file` durable, then drops the file's pages from the page cache, so
/// that the next read of it comes from the disk.
///
/// After a failed fdatasync, Linux keeps the pages it could not write as clean cached pages and
/// reports the error once: a process started afterwards reads them back as if they were on disk,
/// and its own fdatasync succeeds without writing anything. Reading from the disk shows what is
/// really there. Pages still dirty (written by a process that crashed before syncing) are made
/// durable first, so nothing that can be kept is dropped. The advice is best effort: where the
/// kernel ignores it, reads come from the cache as before.
pub(crate) fn sync_and_uncache(file: &File) -> io::Result<()> {
    file.sync_data()?;
    if let Err(error) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::debug!(%error, "the kernel refused to drop a log segment's cached pages");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of the first `len` bytes' pages of `file` the page cache holds.
    fn cached_pages(file: &File, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        // SAFETY: a read-only shared mapping of a file this test owns, only passed to mincore
        // (which reads no mapped byte) and unmapped before returning.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            let mut resident = vec![0u8; len.div_ceil(page)];
            let r = libc::mincore(addr, len, resident.as_mut_ptr());
            let err = io::Error::last_os_error();
            libc::munmap(addr, len);
            assert_eq!(r, 0, "{err}");
            resident.iter().filter(|b| **b & 1 == 1).count()
        }
    }

    #[test]
    fn sync_and_uncache_leaves_no_page_cached_and_loses_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        // tmpfs keeps its pages whatever the advice: there, nothing can be dropped.
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        if rustix::fs::statfs(dir.path()).is_ok_and(|s| s.f_type as u64 == TMPFS_MAGIC) {
            eprintln!("skipped: the temporary directory is on tmpfs");
            return;
        }
        let path = dir.path().join("segment");
        let mut file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        assert!(
            cached_pages(&file, data.len()) > 0,
            "written pages are cached"
        );
        sync_and_uncache(&file).unwrap();
        assert_eq!(cached_pages(&file, data.len()), 0);
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn ensure_dir_creates_missing_parents_and_keeps_what_exists() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("node-1").join("wal");
        ensure_dir(&dir).unwrap();
        assert!(dir.is_dir());
        fs::write(dir.join("kept"), b"x").unwrap();
        ensure_dir(&dir).unwrap();
        assert_eq!(fs::read(dir.join("kept")).unwrap(), b"x");
    }

    #[test]
    fn ensure_dir_refuses_a_file_in_the_way() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("data");
        fs::write(&file, b"").unwrap();
        let err = ensure_dir(&file.join("wal")).unwrap_err();
        assert!(err.path.starts_with(&file), "{err}");
        assert_eq!(err.source.kind(), io::ErrorKind::NotADirectory);
    }
}
