//! Checks made through a mount as a second, unprivileged user, where the kernel (with
//! `default_permissions`) and the plugin together must keep to POSIX: permission bits,
//! sticky directories, set-id bits cleared by another user's write, who may set times.
//!
//! Each check has two parts. Root sets it up in its own directory
//! `conformance-user-<name>` (made 0755, owned by root); a child process running as the
//! user then makes the user's part of every check whose directory it finds, and prints one
//! outcome per check ([`run_as_user`]), which the parent reads back ([`parse_outcomes`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plugfs_plugin_api::{Capabilities, Errno, Timestamp};

use crate::checks::Outcome;
use crate::client::{Client, MountClient, R, TimeArg};

const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_CREAT: i32 = 0o100;

/// One check made as the second user.
pub struct UserCheck {
    /// A name that says the behaviour.
    pub name: &'static str,
    /// Whether a plugin with these capabilities must pass it.
    pub applies: fn(&Capabilities) -> bool,
    /// Root's part, given the check's directory.
    pub setup: fn(&dyn Client, &str) -> Outcome,
    /// The user's part, in the child process, given the same directory.
    pub run: fn(&dyn Client, &str) -> Outcome,
}

fn writable_with_permissions(c: &Capabilities) -> bool {
    c.writable && c.permissions
}

/// Every check made as the second user, in the order they run.
pub fn all() -> Vec<UserCheck> {
    macro_rules! check {
        ($name:ident, $applies:expr) => {
            UserCheck { name: stringify!($name), applies: $applies, setup: $name::setup, run: $name::run }
        };
    }
    vec![
        check!(permissions_are_enforced_for_an_unprivileged_user, writable_with_permissions),
        check!(sticky_directories_keep_other_users_from_removing_or_renaming, writable_with_permissions),
        check!(another_users_write_clears_suid_and_group_executable_sgid, writable_with_permissions),
        check!(another_users_truncation_clears_suid_and_group_executable_sgid, writable_with_permissions),
        check!(another_users_fallocate_clears_suid_and_group_executable_sgid, |c: &Capabilities| {
            writable_with_permissions(c) && c.fallocate
        }),
        check!(only_the_owner_sets_explicit_times_but_writers_may_touch, writable_with_permissions),
    ]
}

/// The directory of the check named `name`, relative to the mount's root.
pub fn dir_of(name: &str) -> String {
    format!("conformance-user-{name}")
}

/// The user's part. Runs in the child process: makes every check whose directory root set
/// up and returns one line per check (`PASS name` or `FAIL name: why`).
pub fn run_as_user(mountpoint: &Path) -> Result<String, String> {
    if unsafe { libc::geteuid() } == 0 {
        return Err("the checks as another user must run as a non-root user".into());
    }
    let c = MountClient::new(mountpoint);
    let mut out = String::new();
    for check in all() {
        let dir = dir_of(check.name);
        let outcome = match c.stat(&dir) {
            Err(Errno::ENOENT) => continue, // not set up: it does not apply
            Err(e) => Err(format!("cannot reach {dir} (may this user enter the mount's root?): {e:?}")),
            Ok(_) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(&c, &dir)))
                .unwrap_or_else(|_| Err("the check panicked".into())),
        };
        match outcome {
            Ok(()) => out.push_str(&format!("PASS {}\n", check.name)),
            Err(why) => out.push_str(&format!("FAIL {}: {}\n", check.name, why.replace('\n', " "))),
        }
    }
    Ok(out)
}

/// Reads back what [`run_as_user`] printed.
pub fn parse_outcomes(text: &str) -> HashMap<String, Outcome> {
    let mut outcomes = HashMap::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("PASS ") {
            outcomes.insert(name.to_string(), Ok(()));
        } else if let Some((name, why)) = line.strip_prefix("FAIL ").and_then(|l| l.split_once(": ")) {
            outcomes.insert(name.to_string(), Err(why.to_string()));
        }
    }
    outcomes
}

fn step<T>(what: &str, r: R<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e:?}"))
}

fn refused(what: &str, r: R<()>, want: Errno) -> Outcome {
    match r {
        Err(e) if e == want => Ok(()),
        other => Err(format!("{what}: expected {want:?}, got {other:?}")),
    }
}

/// Sticky-bit refusals: Linux says EPERM; POSIX lets a system say EACCES.
fn refused_by_sticky(what: &str, r: R<()>) -> Outcome {
    match r {
        Err(Errno::EPERM) | Err(Errno::EACCES) => Ok(()),
        other => Err(format!("{what}: expected EPERM, got {other:?}")),
    }
}

/// Root's helper: a file with exactly `mode` (chmod after create, past any umask).
fn root_file(c: &dyn Client, path: &str, mode: u32, data: &[u8]) -> Outcome {
    let fd = step(&format!("create {path}"), c.open(path, O_WRONLY | O_CREAT, 0o600))?;
    let written = c.write(fd, 0, data);
    step(&format!("close {path}"), c.close(fd))?;
    step(&format!("write {path}"), written)?;
    step(&format!("chmod {path}"), c.chmod(path, mode))
}

fn root_dir(c: &dyn Client, path: &str, mode: u32) -> Outcome {
    step(&format!("mkdir {path}"), c.mkdir(path, 0o700))?;
    step(&format!("chmod {path}"), c.chmod(path, mode))
}

fn touch(c: &dyn Client, path: &str) -> R<()> {
    c.open(path, O_WRONLY | O_CREAT, 0o644).and_then(|fd| c.close(fd))
}

mod permissions_are_enforced_for_an_unprivileged_user {
    use super::*;

    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        root_file(c, &format!("{d}/root-secret"), 0o600, b"secret")?;
        root_file(c, &format!("{d}/root-readable"), 0o644, b"")?;
        root_dir(c, &format!("{d}/root-only"), 0o755)?;
        root_dir(c, &format!("{d}/shared"), 0o1777)?;
        root_file(c, &format!("{d}/shared/roots-file"), 0o666, b"")
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let open = |path: &str, flags: i32| c.open(path, flags, 0o644).and_then(|fd| c.close(fd));

        refused("reading root's 0600 file", open(&format!("{d}/root-secret"), O_RDONLY), Errno::EACCES)?;
        refused("writing root's 0644 file", open(&format!("{d}/root-readable"), O_WRONLY), Errno::EACCES)?;
        step("reading root's 0644 file", open(&format!("{d}/root-readable"), O_RDONLY))?;
        refused(
            "creating in root's 0755 directory",
            open(&format!("{d}/root-only/mine"), O_WRONLY | O_CREAT),
            Errno::EACCES,
        )?;
        refused("mkdir in root's 0755 directory", c.mkdir(&format!("{d}/root-only/d"), 0o755), Errno::EACCES)?;
        refused("chmod of root's file", c.chmod(&format!("{d}/root-readable"), 0o666), Errno::EPERM)?;
        refused("chown of root's file", c.chown(&format!("{d}/root-readable"), uid, gid), Errno::EPERM)?;
        refused("unlink in root's 0755 directory", c.unlink(&format!("{d}/root-readable")), Errno::EACCES)?;

        let mine = format!("{d}/shared/mine");
        step("creating in a 1777 directory", open(&mine, O_WRONLY | O_CREAT))?;
        let st = step("stat of my file", c.stat(&mine))?;
        if (st.uid, st.gid) != (uid, gid) {
            return Err(format!("a file I created belongs to {}:{}, not to me ({uid}:{gid})", st.uid, st.gid));
        }
        step("mkdir in a 1777 directory", c.mkdir(&format!("{d}/shared/mydir"), 0o700))?;
        let st = step("stat of my directory", c.stat(&format!("{d}/shared/mydir")))?;
        if st.uid != uid {
            return Err(format!("a directory I created belongs to uid {}", st.uid));
        }
        step("chmod of my own file", c.chmod(&mine, 0o600))?;
        step("unlink of my own file in a sticky directory", c.unlink(&mine))?;
        step("rmdir of my own directory", c.rmdir(&format!("{d}/shared/mydir")))
    }
}

mod sticky_directories_keep_other_users_from_removing_or_renaming {
    use super::*;

    /// The same entries in a sticky and in a plain world-writable directory: what the
    /// sticky one refuses, the plain one allows, so the refusal is the sticky bit's.
    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        for (sub, mode) in [("sticky", 0o1777), ("plain", 0o777)] {
            root_dir(c, &format!("{d}/{sub}"), mode)?;
            root_file(c, &format!("{d}/{sub}/roots-file"), 0o666, b"root's")?;
            root_file(c, &format!("{d}/{sub}/roots-target"), 0o666, b"root's")?;
            root_dir(c, &format!("{d}/{sub}/roots-dir"), 0o777)?;
        }
        Ok(())
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        let s = format!("{d}/sticky");
        let perm = step("stat of the sticky directory", c.stat(&s))?.perm;
        if perm != 0o1777 {
            return Err(format!("the sticky directory shows mode {perm:o}, root set 1777"));
        }
        refused_by_sticky("unlink of root's file", c.unlink(&format!("{s}/roots-file")))?;
        refused_by_sticky("rmdir of root's directory", c.rmdir(&format!("{s}/roots-dir")))?;
        refused_by_sticky("rename of root's file", c.rename(&format!("{s}/roots-file"), &format!("{s}/taken"), 0))?;
        refused_by_sticky("rename of root's directory", c.rename(&format!("{s}/roots-dir"), &format!("{s}/d"), 0))?;
        step("creating my file", touch(c, &format!("{s}/mine")))?;
        refused_by_sticky(
            "rename of my file over root's",
            c.rename(&format!("{s}/mine"), &format!("{s}/roots-target"), 0),
        )?;
        for name in ["roots-file", "roots-target", "roots-dir", "mine"] {
            step(&format!("stat of {name} after the refusals"), c.stat(&format!("{s}/{name}")))?;
        }
        step("rename of my own file", c.rename(&format!("{s}/mine"), &format!("{s}/mine2"), 0))?;
        step("unlink of my own file", c.unlink(&format!("{s}/mine2")))?;

        let p = format!("{d}/plain");
        step("unlink of root's file in a plain 0777 directory", c.unlink(&format!("{p}/roots-file")))?;
        step("rmdir of root's directory in a plain 0777 directory", c.rmdir(&format!("{p}/roots-dir")))?;
        step("creating my file", touch(c, &format!("{p}/mine")))?;
        step(
            "rename of my file over root's in a plain 0777 directory",
            c.rename(&format!("{p}/mine"), &format!("{p}/roots-target"), 0),
        )
    }
}

mod another_users_write_clears_suid_and_group_executable_sgid {
    use super::*;

    /// (name, mode root sets, mode after another user writes): Linux clears S_ISUID, and
    /// S_ISGID only with group execute (without it the bit marks mandatory locking).
    const FILES: [(&str, u32, u32); 3] =
        [("suid-sgid", 0o6777, 0o777), ("suid", 0o4766, 0o766), ("sgid-no-group-exec", 0o2766, 0o2766)];

    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        for (name, mode, _) in FILES {
            root_file(c, &format!("{d}/{name}"), mode, b"root's data")?;
        }
        Ok(())
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        for (name, mode, after) in FILES {
            let path = format!("{d}/{name}");
            let fd = step(&format!("open {name} for writing"), c.open(&path, O_WRONLY, 0))?;
            let written = c.write(fd, 0, b"user");
            step("close", c.close(fd))?;
            step(&format!("write to {name}"), written)?;
            let perm = step("stat", c.stat(&path))?.perm;
            if perm != after {
                return Err(format!(
                    "after another user wrote to a {mode:o} file it has mode {perm:o}, want {after:o}"
                ));
            }
        }
        Ok(())
    }
}

/// The files of the checks below: (name, mode root sets, mode after another user changed
/// the data), as for a write. Not a set-group-ID file without group execute: Linux keeps
/// its bit for a member of its group only (since 6.2), which FUSE's own clearing does not
/// know, so the answer depends on the path the change takes.
const PRIVILEGED_FILES: [(&str, u32, u32); 2] = [("suid-sgid", 0o6777, 0o777), ("suid", 0o4766, 0o766)];

fn privileged_files(c: &dyn Client, d: &str, ops: &[&str]) -> Outcome {
    for op in ops {
        for (name, mode, _) in PRIVILEGED_FILES {
            root_file(c, &format!("{d}/{op}-{name}"), mode, b"root's data")?;
        }
    }
    Ok(())
}

fn privileges_cleared(c: &dyn Client, path: &str, mode: u32, after: u32, how: &str) -> Outcome {
    let perm = step("stat", c.stat(path))?.perm;
    if perm != after {
        return Err(format!("after another user's {how} of a {mode:o} file it has mode {perm:o}, want {after:o}"));
    }
    Ok(())
}

mod another_users_truncation_clears_suid_and_group_executable_sgid {
    use super::*;

    const O_TRUNC: i32 = 0o1000;

    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        privileged_files(c, d, &["truncate", "otrunc"])
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        for (name, mode, after) in PRIVILEGED_FILES {
            let path = format!("{d}/truncate-{name}");
            step(&format!("truncate {name}"), c.truncate(&path, 4))?;
            privileges_cleared(c, &path, mode, after, "truncate(2)")?;
            let path = format!("{d}/otrunc-{name}");
            let fd = step(&format!("open {name} with O_TRUNC"), c.open(&path, O_WRONLY | O_TRUNC, 0))?;
            step("close", c.close(fd))?;
            privileges_cleared(c, &path, mode, after, "open with O_TRUNC")?;
        }
        Ok(())
    }
}

mod another_users_fallocate_clears_suid_and_group_executable_sgid {
    use super::*;

    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        privileged_files(c, d, &["fallocate"])
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        for (name, mode, after) in PRIVILEGED_FILES {
            let path = format!("{d}/fallocate-{name}");
            let fd = step(&format!("open {name} for writing"), c.open(&path, O_WRONLY, 0))?;
            let allocated = c.fallocate(fd, 0, 0, 8192);
            step("close", c.close(fd))?;
            step(&format!("fallocate {name}"), allocated)?;
            privileges_cleared(c, &path, mode, after, "fallocate(2)")?;
        }
        Ok(())
    }
}

mod only_the_owner_sets_explicit_times_but_writers_may_touch {
    use super::*;

    const OLD: Timestamp = Timestamp { secs: 1_000_000_000, nanos: 0 };

    pub(super) fn setup(c: &dyn Client, d: &str) -> Outcome {
        for (name, mode) in [("writable", 0o666), ("readable", 0o644)] {
            let path = format!("{d}/{name}");
            root_file(c, &path, mode, b"x")?;
            step("utimens", c.utimens(&path, OLD, OLD))?;
        }
        Ok(())
    }

    pub(super) fn run(c: &dyn Client, d: &str) -> Outcome {
        let writable = format!("{d}/writable");
        step("utimensat(NULL) by a non-owner with write access", c.set_times(&writable, TimeArg::Now, TimeArg::Now))?;
        let st = step("stat", c.stat(&writable))?;
        if st.mtime == OLD || st.atime == OLD {
            return Err(format!("utimensat(NULL) left atime {:?}, mtime {:?}", st.atime, st.mtime));
        }
        let t = Timestamp { secs: 1_234_567_890, nanos: 0 };
        refused("explicit times by a non-owner", c.utimens(&writable, t, t), Errno::EPERM)?;
        refused(
            "an explicit mtime with UTIME_OMIT atime by a non-owner",
            c.set_times(&writable, TimeArg::Omit, TimeArg::At(t)),
            Errno::EPERM,
        )?;
        let readable = format!("{d}/readable");
        refused(
            "utimensat(NULL) by a non-owner without write access",
            c.set_times(&readable, TimeArg::Now, TimeArg::Now),
            Errno::EACCES,
        )?;
        let st = step("stat", c.stat(&readable))?;
        if st.mtime != OLD {
            return Err(format!("a refused utimensat changed mtime to {:?}", st.mtime));
        }
        Ok(())
    }
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
