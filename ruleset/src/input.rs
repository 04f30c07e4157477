//! Reading input files safely: only regular files, never more than a cap,
//! and folder walks that visit each file once even through symlink loops.
//!
//! Every reader of the `arbiter` command (rules, fixtures, audit logs) comes
//! through here, so `/dev/zero`, a FIFO or a folder given as a file is a
//! clear error instead of a process that grows without end.

use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The largest rules file read (a 100,000-rule file is about 11 MB).
pub const RULES_CAP: u64 = 64 << 20;
/// The largest fixture read (30,000 steps are about 9 MB).
pub const FIXTURE_CAP: u64 = 64 << 20;
/// The largest audit log read (the service rotates its files at 16 MiB).
pub const AUDIT_CAP: u64 = 256 << 20;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// The operating system's error (missing, no permission...).
    Io(std::io::Error),
    /// A device, FIFO, socket or folder.
    NotRegular(&'static str),
    /// Larger than the cap.
    TooLarge {
        /// The cap, bytes.
        cap: u64,
    },
    /// Not UTF-8 text.
    NotText,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotRegular(what) => write!(f, "is {what}, not a regular file"),
            Self::TooLarge { cap } => write!(f, "is larger than the {} MiB this command reads", cap >> 20),
            Self::NotText => f.write_str("is not UTF-8 text"),
        }
    }
}

impl std::error::Error for ReadError {}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = m.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() { "a folder" } else { "not a regular file" }
}

/// Reads a regular file of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta)));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge { cap });
    }
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    // The file may grow between the check and the read: never take more.
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut out).map_err(ReadError::Io)?;
    if out.len() as u64 > cap {
        return Err(ReadError::TooLarge { cap });
    }
    Ok(out)
}

/// Reads a regular UTF-8 text file of at most `cap` bytes.
pub fn read_text_capped(path: &Path, cap: u64) -> Result<String, ReadError> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| ReadError::NotText)
}

/// The files a command was given: files as they are, folders searched
/// recursively for `*.EXT` (sorted per folder). Each file is listed once and
/// each folder entered once, so a symlink loop ends the walk at its second
/// visit. Inputs that do not exist or cannot be listed come back as
/// `(path, why)`; a folder with no `*.EXT` below it is one of them.
pub fn collect_files(inputs: &[PathBuf], ext: &str) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut walk =
        Walk { ext, files: Vec::new(), seen_files: HashSet::new(), seen_dirs: HashSet::new(), errors: Vec::new() };
    for p in inputs {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let before = walk.files.len();
                walk.dir(p);
                if walk.files.len() == before && !walk.errors.iter().any(|(e, _)| e.starts_with(p)) {
                    walk.errors.push((p.clone(), format!("the folder holds no .{ext} files")));
                }
            }
            Ok(_) => walk.file(p),
            Err(e) => walk.errors.push((p.clone(), e.to_string())),
        }
    }
    (walk.files, walk.errors)
}

struct Walk<'e> {
    ext: &'e str,
    files: Vec<PathBuf>,
    seen_files: HashSet<PathBuf>,
    seen_dirs: HashSet<PathBuf>,
    errors: Vec<(PathBuf, String)>,
}

impl Walk<'_> {
    fn file(&mut self, p: &Path) {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if self.seen_files.insert(key) {
            self.files.push(p.to_path_buf());
        }
    }

    fn dir(&mut self, dir: &Path) {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !self.seen_dirs.insert(key) {
            return;
        }
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.errors.push((dir.to_path_buf(), e.to_string()));
                return;
            }
        };
        entries.sort();
        for e in entries {
            match std::fs::metadata(&e) {
                Ok(m) if m.is_dir() => self.dir(&e),
                Ok(_) if e.extension().is_some_and(|x| x == self.ext) => self.file(&e),
                Ok(_) => {}
                // A dangling symlink or an entry that vanished: say so when it looks like input.
                Err(err) if e.extension().is_some_and(|x| x == self.ext) => {
                    self.errors.push((e.clone(), err.to_string()));
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_folders_are_refused_and_sizes_capped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_capped(dir.path(), 10), Err(ReadError::NotRegular("a folder"))));
        if Path::new("/dev/zero").exists() {
            let e = read_capped(Path::new("/dev/zero"), 10).unwrap_err();
            assert_eq!(e.to_string(), "is a character device, not a regular file");
        }
        let f = dir.path().join("big.toml");
        std::fs::write(&f, vec![b'#'; 2 << 20]).unwrap();
        let e = read_capped(&f, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "is larger than the 1 MiB this command reads");
        assert_eq!(read_capped(&f, 4 << 20).unwrap().len(), 2 << 20);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_visit_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x.toml"), "").unwrap();
        std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
        std::os::unix::fs::symlink("x.toml", sub.join("y.toml")).unwrap();
        let (files, errors) = collect_files(&[dir.path().to_path_buf()], "toml");
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn an_empty_folder_and_a_missing_path_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let (files, errors) = collect_files(&[dir.path().to_path_buf(), missing.clone()], "toml");
        assert!(files.is_empty());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].1, "the folder holds no .toml files");
        assert_eq!(errors[1].0, missing);
    }
}
