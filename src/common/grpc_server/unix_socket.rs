//! The local gRPC socket: bound with mode 0660 (and the configured group),
//! so only its owner, its group and root can connect; and the credentials
//! the kernel gives of each caller (SO_PEERCRED, SO_PEERGROUPS), from which
//! its role follows.
use std::{
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use tokio::net::{UnixListener, UnixStream};

use super::{conn::PeerKind, settings::UnixSocket};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another daemon answers on {path}")]
    InUse { path: PathBuf },
    #[error("cannot set up the local socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the socket: a stale one (left by a daemon that died) is replaced,
/// a live one or another file is not.
pub async fn bind(socket: &UnixSocket) -> Result<UnixListener, SocketError> {
    let path = &socket.path;
    let io = |source| SocketError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse { path: path.clone() });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.clone() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    // Created under the process umask (0077: owner only); then opened to
    // the group, never to others.
    if let Some((_, gid)) = &socket.group {
        nix::unistd::chown(path.as_path(), None, Some(nix::unistd::Gid::from_raw(*gid)))
            .map_err(|e| io(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Removes the socket at shutdown (only if it is still ours).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The caller's credentials, as the kernel recorded them at connect(2).
pub fn peer(stream: &UnixStream) -> io::Result<PeerKind> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    Ok(PeerKind::Unix {
        uid,
        gid: cred.gid(),
        groups: peer_groups(stream).unwrap_or_default().into(),
        pid: cred.pid(),
        user,
    })
}

/// The caller's supplementary groups (SO_PEERGROUPS, Linux 4.13+).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// The user a uid names, for logs and the audit log.
pub fn describe(uid: u32, user: Option<&str>) -> String {
    match user {
        Some(name) => format!("unix:{name}(uid={uid})"),
        None => format!("unix:uid={uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_0660_and_names_its_callers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        let socket = UnixSocket {
            path: path.clone(),
            group: None,
        };
        let listener = bind(&socket).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let _client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        match peer(&server).unwrap() {
            PeerKind::Unix { uid, .. } => assert_eq!(uid, nix::unistd::geteuid().as_raw()),
            other => panic!("{other:?}"),
        }
        // Bound a second time while the first answers: refused.
        assert!(matches!(
            bind(&socket).await,
            Err(SocketError::InUse { .. })
        ));
        drop(listener);
        // Stale (nobody answers): replaced.
        bind(&socket).await.unwrap();
    }

    #[tokio::test]
    async fn another_file_in_its_place_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        std::fs::write(&path, "precious").unwrap();
        let e = bind(&UnixSocket {
            path: path.clone(),
            group: None,
        })
        .await
        .unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
