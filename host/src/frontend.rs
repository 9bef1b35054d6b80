//! Choosing and starting the frontend that presents a mount to the operating system.
//! The frontends themselves live in their own crates; this is the switch between them.

use std::path::Path;
use std::sync::Arc;

use plugfs_plugin_api::{Capabilities, FileSystem};

use crate::config::{Frontend, MountSection};
use crate::swap::Kernel;

/// Whether this build has the WinFSP frontend (Windows, with this crate's `winfsp`
/// feature: the one that also adds [`Mounted::Winfsp`] and delay-loads the DLL).
const WINFSP_BUILT_IN: bool = cfg!(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")));

/// Whether `frontend` can run in this build on this platform; the reason if not. Whether
/// WinFSP or Dokan is *installed* is found out when mounting, not here.
pub fn check_available(frontend: Frontend) -> Result<(), String> {
    match frontend {
        Frontend::Auto => Ok(()),
        Frontend::Fuse if cfg!(unix) => Ok(()),
        Frontend::Fuse => Err("the fuse frontend needs Linux or macOS; use \"winfsp\", \"dokan\" or \"auto\"".into()),
        Frontend::Winfsp if cfg!(windows) && !WINFSP_BUILT_IN => {
            Err("this build of plugfs does not include the winfsp frontend: the winfsp crate is GPL-3.0, so it is \
             left out unless plugfs is built with `--features winfsp` (docs/windows.md); use \"dokan\" or \"auto\""
                .into())
        }
        Frontend::Winfsp | Frontend::Dokan if cfg!(windows) => Ok(()),
        Frontend::Winfsp | Frontend::Dokan => {
            Err(format!("the {frontend} frontend runs only on Windows; use \"fuse\" or \"auto\" here"))
        }
    }
}

/// What `auto` can choose from on Windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowsFrontends {
    /// This build has the WinFSP frontend.
    pub winfsp_built_in: bool,
    /// WinFSP is installed (its DLL loads).
    pub winfsp_installed: bool,
    /// Dokan is installed (its DLL loads and its driver answers).
    pub dokan_installed: bool,
}

/// What `auto` means: FUSE off Windows; on Windows WinFSP (the faster and better kept of
/// the two) when this build has it and it is installed, then Dokan; the reason if neither.
pub fn choose_auto(windows: bool, found: WindowsFrontends) -> Result<Frontend, String> {
    if !windows {
        return Ok(Frontend::Fuse);
    }
    match found {
        WindowsFrontends { winfsp_built_in: true, winfsp_installed: true, .. } => Ok(Frontend::Winfsp),
        WindowsFrontends { dokan_installed: true, .. } => Ok(Frontend::Dokan),
        WindowsFrontends { winfsp_built_in, winfsp_installed, .. } => Err(format!(
            "frontend = \"auto\" found no Windows frontend to use: {}, and Dokan is not installed \
             (https://github.com/dokan-dev/dokany/releases); docs/windows.md",
            match (winfsp_built_in, winfsp_installed) {
                (true, false) => "WinFSP is not installed (https://winfsp.dev/rel/)",
                _ => "this build has no WinFSP frontend (it is built with `--features winfsp`)",
            }
        )),
    }
}

/// The choice of `auto` here, found out once per process (it loads the frameworks' DLLs).
fn auto_choice() -> &'static Result<Frontend, String> {
    static CHOICE: std::sync::OnceLock<Result<Frontend, String>> = std::sync::OnceLock::new();
    CHOICE.get_or_init(|| {
        #[cfg(windows)]
        let found = WindowsFrontends {
            winfsp_built_in: WINFSP_BUILT_IN,
            winfsp_installed: winfsp_installed(),
            dokan_installed: plugfs_dokan::is_installed(),
        };
        #[cfg(not(windows))]
        let found = WindowsFrontends { winfsp_built_in: false, winfsp_installed: false, dokan_installed: false };
        choose_auto(cfg!(windows), found)
    })
}

#[cfg(windows)]
fn winfsp_installed() -> bool {
    #[cfg(any(feature = "winfsp", feature = "winfsp-cross-check"))]
    return plugfs_winfsp::is_installed();
    #[cfg(not(any(feature = "winfsp", feature = "winfsp-cross-check")))]
    false
}

/// The drive letter a Windows mountpoint names (`X:`, `X:\` or `X:/`), if it names one
/// rather than a directory.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn drive_letter(mountpoint: &str) -> Option<char> {
    let mut chars = mountpoint.chars();
    let letter = chars.next().filter(char::is_ascii_alphabetic)?;
    (chars.next() == Some(':') && matches!(chars.as_str(), "" | "\\" | "/")).then(|| letter.to_ascii_uppercase())
}

/// The mountpoint as WinFSP takes it: a drive exactly as `X:` (anything longer is taken
/// for a directory to create), and a directory that does not exist yet, since WinFSP creates
/// it (and removes it at unmount): an empty one left there, by an operator or an earlier
/// mount, is removed first.
#[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
fn winfsp_mountpoint(mountpoint: &Path) -> std::io::Result<std::path::PathBuf> {
    if let Some(letter) = mountpoint.to_str().and_then(drive_letter) {
        return Ok(std::path::PathBuf::from(format!("{letter}:")));
    }
    if mountpoint.is_dir() {
        std::fs::remove_dir(mountpoint)?;
    }
    Ok(mountpoint.to_path_buf())
}

/// The frontend `auto` means here; `auto` itself on Windows when neither WinFSP nor Dokan
/// can be used (mounting then fails with the reason).
pub fn resolve(frontend: Frontend) -> Frontend {
    match frontend {
        Frontend::Auto => auto_choice().clone().unwrap_or(Frontend::Auto),
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
        Frontend::Fuse => None,
        Frontend::Auto => Some("no frontend serves it".into()),
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
    /// Served through WinFSP.
    #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
    Winfsp(plugfs_winfsp::WinfspMount),
    /// Served through Dokan.
    #[cfg(windows)]
    Dokan(plugfs_dokan::DokanMount),
}

impl Mounted {
    /// Starts serving `fs` at `mountpoint` as `section` says. `caps` are the capabilities
    /// of its backend: the Windows frontends report some of them as volume properties.
    pub fn start(
        fs: Arc<dyn FileSystem>,
        caps: &Capabilities,
        mountpoint: &Path,
        section: &MountSection,
    ) -> anyhow::Result<Mounted> {
        let frontend = match section.frontend {
            Frontend::Auto => auto_choice().clone().map_err(|why| anyhow::anyhow!(why))?,
            other => other,
        };
        #[cfg(not(windows))]
        let _ = caps;
        match frontend {
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
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Frontend::Winfsp => {
                let options = windows_options(section);
                let label = volume_label(section);
                let mountpoint = winfsp_mountpoint(mountpoint)?;
                Ok(Mounted::Winfsp(plugfs_winfsp::mount(fs, *caps, &mountpoint, &label, options)?))
            }
            #[cfg(windows)]
            Frontend::Dokan => {
                let options = windows_options(section);
                let label = volume_label(section);
                Ok(Mounted::Dokan(plugfs_dokan::mount(fs, *caps, mountpoint, &label, options)?))
            }
            other => {
                let _ = (fs, mountpoint);
                anyhow::bail!("{}", check_available(other).err().unwrap_or_else(|| format!("{other} unavailable")))
            }
        }
    }

    /// Whether the mount has ended on its own (unmounted from outside).
    pub fn is_finished(&self) -> bool {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.is_finished(),
            // WinFSP volumes are removed only by the process serving them.
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(_) => false,
            #[cfg(windows)]
            Mounted::Dokan(m) => m.is_finished(),
        }
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.mountpoint(),
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(m) => m.mountpoint(),
            #[cfg(windows)]
            Mounted::Dokan(m) => m.mountpoint(),
        }
    }

    /// What a backend swap needs from the frontend: invalidating the kernel's caches and
    /// listing its open handles. The reason when it cannot be had.
    pub fn kernel(&self) -> Result<Arc<dyn Kernel>, String> {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m
                .invalidator()
                .map(|i| Arc::new(FuseKernel(i)) as Arc<dyn Kernel>)
                .ok_or_else(|| "the frontend's session is gone".to_string()),
            // The Windows core caches names and keeps plugin handles of its own, which a
            // swap would have to move over; it cannot yet (docs/windows.md).
            #[cfg(windows)]
            _ => Err("backend swaps under a live mount are not supported by the Windows frontends yet".into()),
        }
    }

    /// Refuses new requests from now on, but those that release what callers hold.
    pub fn begin_shutdown(&self) {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.begin_shutdown(),
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(m) => m.volume().begin_shutdown(),
            #[cfg(windows)]
            Mounted::Dokan(m) => m.volume().begin_shutdown(),
        }
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.in_flight(),
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(m) => m.volume().in_flight(),
            #[cfg(windows)]
            Mounted::Dokan(m) => m.volume().in_flight(),
        }
    }

    /// Files and directories programs hold open on it (on Windows: not yet cleaned up).
    pub fn open_handles(&self) -> usize {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => m.open_handles(),
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(m) => m.volume().active_handles(),
            #[cfg(windows)]
            Mounted::Dokan(m) => m.volume().active_handles(),
        }
    }

    /// Releases every handle still open through the plugin, then unmounts (lazily if busy).
    /// On Windows the volume is removed first, then what was left open is released.
    pub fn finish_shutdown(self) -> (Released, std::io::Result<()>) {
        match self {
            #[cfg(unix)]
            Mounted::Fuse(m) => {
                let (r, unmounted) = m.finish_shutdown();
                (Released { released: r.released, failed: r.failed }, unmounted)
            }
            #[cfg(all(windows, any(feature = "winfsp", feature = "winfsp-cross-check")))]
            Mounted::Winfsp(m) => {
                let r = m.unmount();
                (Released { released: r.released, failed: r.failed }, Ok(()))
            }
            #[cfg(windows)]
            Mounted::Dokan(m) => {
                let r = m.unmount();
                (Released { released: r.released, failed: r.failed }, Ok(()))
            }
        }
    }
}

/// The core's settings for a Windows mount.
#[cfg(windows)]
fn windows_options(section: &MountSection) -> plugfs_windows_core::VolumeOptions {
    plugfs_windows_core::VolumeOptions { read_only: section.read_only, ..plugfs_windows_core::VolumeOptions::default() }
}

/// The volume label Windows shows: the mount's name (WinFSP keeps 32 characters of it).
#[cfg(windows)]
fn volume_label(section: &MountSection) -> String {
    section.name.clone()
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
    fn auto_is_fuse_off_windows_and_winfsp_then_dokan_on_windows() {
        let none = WindowsFrontends { winfsp_built_in: false, winfsp_installed: false, dokan_installed: false };
        assert_eq!(choose_auto(false, none), Ok(Frontend::Fuse));
        let all = WindowsFrontends { winfsp_built_in: true, winfsp_installed: true, dokan_installed: true };
        assert_eq!(choose_auto(true, all), Ok(Frontend::Winfsp));
        // WinFSP installed but left out of this build (the GPL feature is off): Dokan.
        let no_feature = WindowsFrontends { winfsp_built_in: false, ..all };
        assert_eq!(choose_auto(true, no_feature), Ok(Frontend::Dokan));
        let only_dokan = WindowsFrontends { winfsp_installed: false, ..all };
        assert_eq!(choose_auto(true, only_dokan), Ok(Frontend::Dokan));
        let why = choose_auto(true, WindowsFrontends { dokan_installed: false, ..only_dokan }).unwrap_err();
        assert!(why.contains("WinFSP is not installed") && why.contains("Dokan is not installed"), "{why}");
        let why = choose_auto(true, none).unwrap_err();
        assert!(why.contains("--features winfsp"), "{why}");
        // This build, on this machine.
        assert_eq!(resolve(Frontend::Auto), if cfg!(windows) { resolve(Frontend::Auto) } else { Frontend::Fuse });
    }

    #[test]
    fn a_windows_mountpoint_is_a_drive_letter_or_a_directory() {
        assert_eq!(drive_letter("X:"), Some('X'));
        assert_eq!(drive_letter("p:\\"), Some('P'));
        assert_eq!(drive_letter("Q:/"), Some('Q'));
        for dir in ["C:\\mnt", "mnt", "\\\\server\\share", "1:", "X", ""] {
            assert_eq!(drive_letter(dir), None, "{dir}");
        }
    }

    #[test]
    fn the_windows_frontends_are_refused_off_windows_with_the_reason() {
        if cfg!(windows) {
            return;
        }
        for f in [Frontend::Winfsp, Frontend::Dokan] {
            let why = check_available(f).unwrap_err();
            assert!(why.contains("only on Windows"), "{why}");
        }
        assert_eq!(check_available(Frontend::Fuse), Ok(()));
        assert_eq!(check_available(Frontend::Auto), Ok(()));
    }

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
