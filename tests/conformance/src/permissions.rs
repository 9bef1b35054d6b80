//! Permission checks through a mount, as an unprivileged user.
//!
//! Root sets up a directory `conformance-permissions` in the mount; a child process, running
//! as the unprivileged user, then checks that the kernel and the plugin together keep to
//! POSIX: what the user may not read, write, create, chmod or delete is refused with the
//! right errno, and what the user creates belongs to the user.

use std::path::{Path, PathBuf};

use plugfs_plugin_api::Errno;

use crate::client::{Client, MountClient};

const DIR: &str = "conformance-permissions";
const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_CREAT: i32 = 0o100;

/// Root's part: files and directories owned by root that the user must not touch, and a
/// sticky world-writable directory.
pub fn setup(mountpoint: &Path) -> Result<(), String> {
    let c = MountClient::new(mountpoint);
    let step = |what: &str, r: Result<(), Errno>| r.map_err(|e| format!("{what}: {e:?}"));
    cleanup(mountpoint);
    step("mkdir", c.mkdir(DIR, 0o755))?;
    step("chmod", c.chmod(DIR, 0o755))?;
    let fd = c.open(&format!("{DIR}/root-secret"), O_WRONLY | O_CREAT, 0o600).map_err(|e| format!("create: {e:?}"))?;
    let _ = c.write(fd, 0, b"secret");
    step("close", c.close(fd))?;
    step("chmod", c.chmod(&format!("{DIR}/root-secret"), 0o600))?;
    let fd =
        c.open(&format!("{DIR}/root-readable"), O_WRONLY | O_CREAT, 0o644).map_err(|e| format!("create: {e:?}"))?;
    step("close", c.close(fd))?;
    step("chmod", c.chmod(&format!("{DIR}/root-readable"), 0o644))?;
    step("mkdir", c.mkdir(&format!("{DIR}/root-only"), 0o755))?;
    step("chmod", c.chmod(&format!("{DIR}/root-only"), 0o755))?;
    step("mkdir", c.mkdir(&format!("{DIR}/shared"), 0o777))?;
    step("chmod", c.chmod(&format!("{DIR}/shared"), 0o1777))?;
    let fd =
        c.open(&format!("{DIR}/shared/roots-file"), O_WRONLY | O_CREAT, 0o666).map_err(|e| format!("create: {e:?}"))?;
    step("close", c.close(fd))?;
    step("chmod", c.chmod(&format!("{DIR}/shared/roots-file"), 0o666))
}

/// Removes what [`setup`] and the checks left.
pub fn cleanup(mountpoint: &Path) {
    let _ = std::fs::remove_dir_all(mountpoint.join(DIR));
}

/// The user's part. Runs in the child process; returns the first broken expectation.
pub fn run_as_user(mountpoint: &Path) -> Result<(), String> {
    let c = MountClient::new(mountpoint);
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        return Err("the permission checks must run as a non-root user".into());
    }
    let refused = |what: &str, r: Result<(), Errno>, want: Errno| match r {
        Err(e) if e == want => Ok(()),
        other => Err(format!("{what}: expected {want:?}, got {other:?}")),
    };
    let open = |path: &str, flags: i32| c.open(path, flags, 0o644).and_then(|fd| c.close(fd));

    refused("reading root's 0600 file", open(&format!("{DIR}/root-secret"), O_RDONLY), Errno::EACCES)?;
    refused("writing root's 0644 file", open(&format!("{DIR}/root-readable"), O_WRONLY), Errno::EACCES)?;
    open(&format!("{DIR}/root-readable"), O_RDONLY).map_err(|e| format!("reading root's 0644 file: {e:?}"))?;
    refused(
        "creating in root's 0755 directory",
        open(&format!("{DIR}/root-only/mine"), O_WRONLY | O_CREAT),
        Errno::EACCES,
    )?;
    refused("mkdir in root's 0755 directory", c.mkdir(&format!("{DIR}/root-only/d"), 0o755), Errno::EACCES)?;
    refused("chmod of root's file", c.chmod(&format!("{DIR}/root-readable"), 0o666), Errno::EPERM)?;
    refused("chown of root's file", c.chown(&format!("{DIR}/root-readable"), uid, gid), Errno::EPERM)?;
    refused("unlink in root's 0755 directory", c.unlink(&format!("{DIR}/root-readable")), Errno::EACCES)?;
    refused(
        "unlink of root's file in a sticky directory",
        c.unlink(&format!("{DIR}/shared/roots-file")),
        Errno::EPERM,
    )?;

    let mine = format!("{DIR}/shared/mine");
    open(&mine, O_WRONLY | O_CREAT).map_err(|e| format!("creating in a 1777 directory: {e:?}"))?;
    let st = c.stat(&mine).map_err(|e| format!("stat of my file: {e:?}"))?;
    if (st.uid, st.gid) != (uid, gid) {
        return Err(format!("a file I created belongs to {}:{}, not to me ({uid}:{gid})", st.uid, st.gid));
    }
    c.mkdir(&format!("{DIR}/shared/mydir"), 0o700).map_err(|e| format!("mkdir in a 1777 directory: {e:?}"))?;
    let st = c.stat(&format!("{DIR}/shared/mydir")).map_err(|e| format!("stat of my directory: {e:?}"))?;
    if st.uid != uid {
        return Err(format!("a directory I created belongs to uid {}", st.uid));
    }
    c.chmod(&mine, 0o600).map_err(|e| format!("chmod of my own file: {e:?}"))?;
    c.unlink(&mine).map_err(|e| format!("unlink of my own file in a sticky directory: {e:?}"))?;
    c.rmdir(&format!("{DIR}/shared/mydir")).map_err(|e| format!("rmdir of my own directory: {e:?}"))?;
    Ok(())
}

/// The `plugfs-conformance` binary, which runs [`run_as_user`] in the child process.
pub fn helper_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let name = format!("plugfs-conformance{}", std::env::consts::EXE_SUFFIX);
    if exe.file_name().is_some_and(|n| n == name.as_str()) {
        return Ok(exe);
    }
    // From a test binary in <target>/<profile>/deps/, the tool is in <target>/<profile>/.
    let candidate = exe.parent().and_then(Path::parent).map(|d| d.join(&name));
    match candidate {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(format!("cannot find the {name} binary next to {}: build the workspace first", exe.display())),
    }
}
