//! `image_path`: a migrations folder copied out of the release's image. A
//! container of the image is created (never started), the folder is
//! downloaded from it as a tar archive, and the container is removed, also
//! when the copy fails or is cancelled. The archive's regular files become
//! the same [`Files`] map the CLI sends for `dir`, read by the same reader.

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, RemoveContainerOptions,
};
use ferry_common::migration_layout::{Files, MAX_BYTES, MAX_FILES};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// The files under `path` in `image` (which must be on the host), keyed by
/// their path relative to `path`.
pub async fn copy_folder(
    docker: &Docker,
    image: &str,
    path: &str,
    cancel: &CancellationToken,
) -> Result<Files, String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // Never started; some images have no default command.
        cmd: Some(vec!["true".to_string()]),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| {
            format!("image {image}: cannot create a container to copy {path} from: {e} (is the image on this host?)")
        })?;
    let copy = async {
        let mut stream = docker.download_from_container(
            &created.id,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("image {image}: copying {path}: {e}"))?;
            tar.extend_from_slice(&chunk);
            if tar.len() as u64 > MAX_BYTES + MAX_FILES as u64 * 1024 {
                return Err(format!(
                    "image {image}: {path} holds more than {} MiB; is this the migrations folder?",
                    MAX_BYTES / 1024 / 1024
                ));
            }
        }
        untar(&tar).map_err(|e| format!("image {image}: {path}: {e}"))
    };
    let result = tokio::select! {
        r = copy => r,
        () = cancel.cancelled() => Err("the copy was stopped: the task was cancelled".to_string()),
    };
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    result
}

/// The regular files of a tar archive as Docker sends a folder: every path
/// starts with the folder's own name, which is stripped. Long names (GNU
/// `L` entries and pax `path` records) are honoured.
pub fn untar(tar: &[u8]) -> Result<Files, String> {
    let mut files = Files::new();
    let mut at = 0usize;
    let mut long_name: Option<String> = None;
    loop {
        // An archive ends with zero blocks; running out before one is a
        // truncated copy, not a shorter folder.
        let Some(header) = tar.get(at..at + 512) else {
            return Err("the archive ends early".into());
        };
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let field = |from: usize, len: usize| {
            let raw = &header[from..from + len];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size = u64::from_str_radix(field(124, 12).trim(), 8)
            .map_err(|_| "not a tar archive (bad size field)".to_string())?
            as usize;
        let kind = header[156];
        let mut name = field(0, 100);
        if &header[257..262] == b"ustar" {
            let prefix = field(345, 155);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let data_at = at + 512;
        let data_end = data_at + size;
        if data_end > tar.len() {
            return Err("the archive ends early".into());
        }
        let data = &tar[data_at..data_end];
        at = data_at + size.div_ceil(512) * 512;
        match kind {
            b'L' => {
                long_name = Some(
                    String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string(),
                );
                continue;
            }
            b'x' => {
                // pax records: "<len> key=value\n".
                let text = String::from_utf8_lossy(data);
                for record in text.lines() {
                    if let Some((_, kv)) = record.split_once(' ')
                        && let Some(path) = kv.strip_prefix("path=")
                    {
                        long_name = Some(path.to_string());
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        if kind != b'0' && kind != 0 {
            continue;
        }
        // "migrations/1_init.sql" → "1_init.sql".
        let Some((_, rel)) = name.trim_start_matches("./").split_once('/') else {
            continue;
        };
        if rel.is_empty() || rel.split('/').any(|p| p.starts_with('.')) {
            continue;
        }
        if files.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
        files.insert(rel.to_string(), data.to_vec());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: u8, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", data.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        let mut out = h;
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn a_folder_archive_becomes_relative_files() {
        let mut tar = Vec::new();
        tar.extend(entry("migrations/", b'5', b""));
        tar.extend(entry("migrations/1_init.sql", b'0', b"CREATE TABLE a ();"));
        tar.extend(entry("migrations/20240101_x/", b'5', b""));
        tar.extend(entry(
            "migrations/20240101_x/migration.sql",
            b'0',
            b"SELECT 1;",
        ));
        tar.extend(entry("migrations/.hidden", b'0', b"x"));
        let long = format!("migrations/{}.sql", "n".repeat(120));
        tar.extend(entry("././@LongLink", b'L', long.as_bytes()));
        tar.extend(entry("ignored-short-name", b'0', b"long"));
        tar.extend(vec![0u8; 1024]);
        let files = untar(&tar).unwrap();
        assert_eq!(files["1_init.sql"], b"CREATE TABLE a ();");
        assert_eq!(files["20240101_x/migration.sql"], b"SELECT 1;");
        assert_eq!(files[&format!("{}.sql", "n".repeat(120))], b"long");
        assert_eq!(files.len(), 3);
        assert!(untar(&tar[..600]).is_err());
    }
}
