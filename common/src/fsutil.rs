//! Writing files that hold keys and credentials: mode 0600 from the first
//! byte, written to a temporary file and renamed, so a crash never leaves a
//! half-written key behind and nothing is ever world-readable.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors writing or reading Ferry's files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Who may read a file Ferry writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: keys, credentials.
    Private,
    /// 0644: certificates, configuration.
    Public,
}

/// Writes `contents` to `path` atomically. With `overwrite == false` an
/// existing file is an error and is left untouched.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: Mode,
    overwrite: bool,
) -> Result<(), FileError> {
    if !overwrite && path.exists() {
        return Err(FileError::Exists {
            path: path.to_path_buf(),
        });
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FileError::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let bits = match mode {
        Mode::Private => 0o600,
        Mode::Public => 0o644,
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(bits)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(bits))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::io(path, e));
    }
    Ok(())
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_to_string(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key.pem");
        write_atomic(&p, b"secret", Mode::Private, false).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_atomic(&p, b"other", Mode::Private, false).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        write_atomic(&p, b"new", Mode::Private, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
