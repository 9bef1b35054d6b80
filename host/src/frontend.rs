//! Choosing and starting the frontend that presents a mount to the operating system.
//! The frontends themselves live in their own crates; this is the switch between them.

use std::path::Path;
use std::sync::Arc;

use plugfs_plugin_api::{Capabilities, FileSystem};

use crate::config::{Frontend, MountSection};
use crate::swap::Kernel;

/// Whether `frontend` can run in this build on this platform; the reason if not.
pub fn check_available(frontend: Frontend) -> Result<(), String> {
    match frontend {
        Frontend::Auto => Ok(()),
        Frontend::Fuse if cfg!(unix) => Ok(()),
        Frontend::Fuse => Err("the fuse frontend needs Linux or macOS; use \"winfsp\", \"dokan\" or \"auto\"".into()),
        Frontend::Winfsp | Frontend::Dokan if cfg!(windows) => {
            Err(format!("this build of plugfs does not include the {frontend} frontend yet"))
        }
        Frontend::Winfsp | Frontend::Dokan => {
            Err(format!("the {frontend} frontend runs only on Windows; use \"fuse\" or \"auto\" here"))
        }
    }
}

/// The frontend `auto` means here.
pub fn resolve(frontend: Frontend) -> Frontend {
    match frontend {
        Frontend::Auto if cfg!(windows) => Frontend::Winfsp,
        Frontend::Auto => Frontend::Fuse,
        other => other,
    }
}

/// Why `frontend` cannot switch a live mount from a backend with capabilities `old` to
/// one with `new`, if it cannot: what it told the operating system at mount time from the
/// first backend, and relies on for the mount's life.
pub fn swap_refusal(frontend: Frontend, old: &Capabilities, new: &Capabilities) -> Option<String> {
    match resolve(frontend) {
        // Nothing FUSE fixes at mount time is needed later: passthrough (chosen at INIT
        // from `backing_files`) is per open, and an open without a backing file goes
        // through the daemon.
        Frontend::Fuse | Frontend::Auto => None,
        // The Windows frontends report these as volume properties when they mount, and
        // path lookups depend on them.
        Frontend::Winfsp | Frontend::Dokan => {
            let differs = [
                (old.case_sensitive != new.case_sensitive, "case sensitivity"),
                (old.case_preserving != new.case_preserving, "case preservation"),
                (old.max_name_len != new.max_name_len, "the longest name"),
            ];
            let what: Vec<&str> = differs.iter().filter(|(d, _)| *d).map(|(_, w)| *w).collect();
            (!what.is_empty()).then(|| {
                format!(
                    "the {frontend} frontend reported {} when it mounted, and the new plugin differs",
                    what.join(", ")
                )
            })
        }
    }
}

/// What a shutdown released through the plugin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Released {
    /// Open files and directories released.
    pub released: usize,
    /// Of those, the releases the plugin failed (logged by the frontend).
    pub failed: usize,
}

/// A live mount, whichever frontend serves it.
pub enum Mounted {
    /// Served through FUSE.
    #[cfg(unix)]
    Fuse(plugfs_fuse::FuseMount),
}

impl Mounted {
    /// Starts serving `fs` at `mountpoint` as `section` says.
    pub fn start(fs: Arc<dyn FileSystem>, mountpoint: &Path, section: &MountSection) -> anyhow::Result<Mounted> {
        match resolve(section.frontend) {
            #[cfg(unix)]
            Frontend::Fuse => {
                let o = &section.options;
                let options = plugfs_fuse::FuseOptions {
                    read_only: section.read_only,
                    allow_other: o.allow_other,
                    auto_unmount: o.auto_unmount,
                    threads: o.threads,
                    fsname: o.fsname.clone().unwrap_or_else(|| format!("plugfs:{}", section.name)),
                    subtype: "plugfs".into(),
                    default_permissions: o.default_permissions,
                    passthrough: o.passthrough,
                };
                Ok(Mounted::Fuse(plugfs_fuse::mount(fs, mountpoint, &options)?))
            }
            other => {
                anyhow::bail!("{}", check_available(other).err().unwrap_or_else(|| format!("{other} unavailable")))
            }
        }
    }

    /// Whether the mount has ended on its own (unmounted from outside).
    pub fn is_finished(&self) -> bool {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.is_finished(),
        }
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.mountpoint(),
        }
    }

    /// What a backend swap needs from the frontend: invalidating the kernel's caches and
    /// listing its open handles. `None` when the session is gone.
    pub fn kernel(&self) -> Option<std::sync::Arc<dyn Kernel>> {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => {
                m.invalidator().map(|i| std::sync::Arc::new(FuseKernel(i)) as std::sync::Arc<dyn Kernel>)
            }
        }
    }

    /// Refuses new requests from now on, but those that release what callers hold.
    pub fn begin_shutdown(&self) {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.begin_shutdown(),
        }
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.in_flight(),
        }
    }

    /// Files and directories the kernel holds open on it.
    pub fn open_handles(&self) -> usize {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.open_handles(),
        }
    }

    /// Releases every handle still open through the plugin, then unmounts (lazily if busy).
    pub fn finish_shutdown(self) -> (Released, std::io::Result<()>) {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => {
                let (r, unmounted) = m.finish_shutdown();
                (Released { released: r.released, failed: r.failed }, unmounted)
            }
        }
    }
}

/// Detaches a mount left behind by a host that was killed.
pub fn force_unmount(mountpoint: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        plugfs_fuse::force_unmount(mountpoint)
    }
    #[cfg(not(unix))]
    {
        let _ = mountpoint;
        Err(std::io::Error::other("plugfs unmount is only needed for FUSE mounts"))
    }
}

/// [`Kernel`] over the FUSE frontend's invalidation handle.
#[cfg(unix)]
struct FuseKernel(plugfs_fuse::Invalidator);

#[cfg(unix)]
impl Kernel for FuseKernel {
    fn inval_entry(&self, parent: u64, name: &std::ffi::OsStr) -> std::io::Result<()> {
        self.0.inval_entry(parent, name)
    }

    fn inval_inode(&self, node: u64, offset: i64, len: i64) -> std::io::Result<()> {
        self.0.inval_inode(node, offset, len)
    }

    fn settle(&self, timeout: std::time::Duration) -> bool {
        self.0.wait_for_earlier_requests(timeout)
    }

    fn open_handles(&self) -> Vec<(crate::swap::HandleKind, u64)> {
        self.0
            .open_handles()
            .into_iter()
            .map(|(dir, h)| (if dir { crate::swap::HandleKind::Dir } else { crate::swap::HandleKind::File }, h))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_frontend_fixed_at_mount_time_refuses_a_swap() {
        let old = Capabilities { case_sensitive: true, case_preserving: true, max_name_len: 255, ..Default::default() };
        let fat =
            Capabilities { case_sensitive: false, case_preserving: true, max_name_len: 255, ..Default::default() };
        assert_eq!(swap_refusal(Frontend::Fuse, &old, &fat), None);
        let why = swap_refusal(Frontend::Winfsp, &old, &fat).unwrap();
        assert!(why.contains("case sensitivity") && !why.contains("case preservation"), "{why}");
        assert_eq!(swap_refusal(Frontend::Dokan, &old, &old), None);
    }
}
