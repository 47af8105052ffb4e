//! Reading a backup file back: its bytes decompressed by the agent, its
//! SHA-256 computed on the same read and checked before the last chunk is
//! handed out ([`CheckedChunks`]). A restore into a new database (and a
//! verification's scratch one) needs no separate checksum pass: the
//! program fed (`pg_restore`, `mariadb`) never sees the end of a damaged
//! file, so it never finishes, and the new database is dropped. A restore
//! in place still checks the file before it starts (see `restore`).

use std::fs::File;
use std::io::{BufReader, Read};

use sha2::{Digest, Sha256};

/// How much of a backup's bytes is handled at once: read from a dump
/// tool, decompressed and handed out here (also how much is held back
/// until the checksum is known), streamed into a container.
pub const CHUNK: usize = 256 * 1024;

/// The message of a file whose checksum is not the catalogue's.
pub fn mismatch(path: &str, got: &str, want: &str) -> String {
    format!(
        "checksum mismatch: {path} has sha256 {got} but the catalogue says {want}; the file is damaged and was not restored"
    )
}

/// Hashes what is read through it.
struct Hashing {
    file: File,
    sha: Sha256,
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// The decompressed bytes of a zstd backup file, in chunks, the file's
/// SHA-256 checked against `want` before the last chunk is returned.
pub struct CheckedChunks {
    decoder: zstd::Decoder<'static, BufReader<Hashing>>,
    /// The newest chunk, returned only once the next one exists (or the
    /// file was read to its end and matched).
    held: Option<Vec<u8>>,
    path: String,
    want: Option<String>,
    ended: bool,
}

impl CheckedChunks {
    /// Opens the file at `path`; `want`: the SHA-256 it must have (`None`:
    /// checked elsewhere, before).
    pub fn open(path: &str, want: Option<&str>) -> Result<CheckedChunks, String> {
        let file = File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let decoder = zstd::Decoder::new(Hashing {
            file,
            sha: Sha256::new(),
        })
        .map_err(|e| format!("{path} is not zstd: {e}"))?;
        Ok(CheckedChunks {
            decoder,
            held: None,
            path: path.to_string(),
            want: want.map(str::to_string),
            ended: false,
        })
    }

    /// The next chunk; `None` at the end of a file that matched. A damaged
    /// file is an error before its last chunk: the checksum mismatch when
    /// the hash differs (also when the damage stopped the decompression).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if self.ended {
                return Ok(self.held.take());
            }
            let mut buf = vec![0u8; CHUNK];
            match self.decoder.read(&mut buf) {
                Ok(0) => {
                    self.check()?;
                    self.ended = true;
                }
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(previous) = self.held.replace(buf) {
                        return Ok(Some(previous));
                    }
                }
                Err(e) => {
                    let why = format!("decompressing {}: {e}", self.path);
                    self.check()?;
                    return Err(why);
                }
            }
        }
    }

    /// Hashes what the decoder left unread and compares.
    fn check(&mut self) -> Result<(), String> {
        let Some(want) = self.want.clone() else {
            return Ok(());
        };
        let hashing = self.decoder.get_mut().get_mut();
        std::io::copy(hashing, &mut std::io::sink())
            .map_err(|e| format!("reading {}: {e}", self.path))?;
        let got = hex::encode(std::mem::take(&mut hashing.sha).finalize());
        if got == want {
            Ok(())
        } else {
            Err(mismatch(&self.path, &got, &want))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn backup(dir: &std::path::Path, data: &[u8]) -> (String, String) {
        let path = dir.join("b.zst");
        let compressed = zstd::encode_all(data, 1).unwrap();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&compressed)
            .unwrap();
        (
            path.to_string_lossy().into_owned(),
            hex::encode(Sha256::digest(&compressed)),
        )
    }

    fn read_all(chunks: &mut CheckedChunks) -> Result<Vec<u8>, (String, usize)> {
        let mut out = Vec::new();
        loop {
            match chunks.next_chunk() {
                Ok(Some(c)) => out.extend(c),
                Ok(None) => return Ok(out),
                Err(e) => return Err((e, out.len())),
            }
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_good_file_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17] {
            let original = data(len);
            let (path, sha) = backup(dir.path(), &original);
            let mut chunks = CheckedChunks::open(&path, Some(&sha)).unwrap();
            assert_eq!(read_all(&mut chunks).unwrap(), original, "{len} bytes");
            let mut unchecked = CheckedChunks::open(&path, None).unwrap();
            assert_eq!(read_all(&mut unchecked).unwrap(), original);
        }
    }

    #[test]
    fn a_damaged_file_never_gives_its_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let original = data(4 * CHUNK + 5);
        let (path, sha) = backup(dir.path(), &original);
        // The wrong checksum: everything but the last chunk, then the mismatch.
        let mut chunks = CheckedChunks::open(&path, Some(&"0".repeat(64))).unwrap();
        let (err, got) = read_all(&mut chunks).unwrap_err();
        assert!(err.starts_with("checksum mismatch: "), "{err}");
        assert!(
            err.contains(&sha) && err.contains("was not restored"),
            "{err}"
        );
        assert!(got < original.len(), "the end was held back");
        // A flipped byte in the file: the decoder may stop first; the
        // message is still the checksum's.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let mut chunks = CheckedChunks::open(&path, Some(&sha)).unwrap();
        let (err, got) = read_all(&mut chunks).unwrap_err();
        assert!(err.starts_with("checksum mismatch: "), "{err}");
        assert!(got < original.len());
    }
}
