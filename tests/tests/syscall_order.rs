//! Durability proven by the system calls durable-io makes: strace records this process
//! (the mount is served from it) while operations run through a real FUSE mount, and for
//! each durability setting the syncs it promises must have been issued, on the right
//! files, in the right order, before the operation returned to its caller.
//!
//! Operations are separated by lookups of marker names: a marker's lookup reaches the
//! plugin only after the previous operation was answered, so whatever the trace shows
//! before it happened before that answer. Needs root (ptrace, FUSE) and strace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use plugfs_fuse::{FuseMount, FuseOptions};
use plugfs_plugin_api::MountOptions;
use plugfs_plugin_api::host::PluginLibrary;
use plugfs_tests::{plugin_library, wait_until};

/// One recorded event on the backing directory, or a marker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// `fsync` or `fdatasync` of the backing path (relative to the backing root; "" is it).
    Sync {
        data_only: bool,
        path: String,
    },
    /// A rename in the backing directory.
    Rename,
    Marker(String),
}

struct Traced {
    mount: Option<FuseMount>,
    strace: Child,
    trace: PathBuf,
    dir: tempfile::TempDir,
    _lib: PluginLibrary,
}

impl Traced {
    fn new(durability: &str) -> Traced {
        let dir = tempfile::tempdir().unwrap();
        let (data, mnt, trace) = (dir.path().join("data"), dir.path().join("mnt"), dir.path().join("trace"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let lib = PluginLibrary::load(&plugin_library("plugfs-durable-io")).unwrap();
        let config = format!("root = {:?}\ndurability = {durability:?}\n", data.to_str().unwrap());
        let fs = lib.open(&config, &MountOptions::default()).unwrap();
        let mount = plugfs_fuse::mount(Arc::new(fs), &mnt, &FuseOptions::default()).unwrap();
        // -f with -p attaches every thread of this process (the FUSE workers included);
        // -y prints the path behind each descriptor.
        let strace = Command::new("strace")
            .args(["-f", "-y", "-qq", "-s", "256", "-o"])
            .arg(&trace)
            .args(["-e", "trace=fsync,fdatasync,openat,openat2,renameat,renameat2,rename", "-p"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("strace is installed");
        let t = Traced { mount: Some(mount), strace, trace, dir, _lib: lib };
        // Attached once a marker looked up now shows in the trace.
        let mut n = 0;
        let attached = wait_until(Duration::from_secs(20), || {
            n += 1;
            let _ = std::fs::metadata(t.mnt(&format!("MARK-attach-{n}")));
            std::fs::read_to_string(&t.trace).is_ok_and(|s| s.contains("MARK-attach-"))
        });
        assert!(attached, "strace did not attach");
        t
    }

    fn mnt(&self, rel: &str) -> PathBuf {
        self.dir.path().join("mnt").join(rel)
    }

    /// Looks up a name that does not exist: a marker in the trace.
    fn mark(&self, name: &str) {
        assert!(std::fs::metadata(self.mnt(&format!("MARK-{name}"))).is_err());
    }

    /// Stops tracing and returns the events, in order.
    fn finish(mut self) -> Vec<Event> {
        self.mark("end");
        // SIGINT makes strace detach and exit; the process it traced goes on.
        unsafe { libc::kill(self.strace.id() as i32, libc::SIGINT) };
        self.strace.wait().unwrap();
        let data = self.dir.path().join("data");
        let text = std::fs::read_to_string(&self.trace).unwrap();
        parse(&text, &data)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.strace.kill();
        let _ = self.strace.wait();
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

fn parse(text: &str, data: &Path) -> Vec<Event> {
    let data = data.to_str().unwrap();
    let mut events = Vec::new();
    for line in text.lines() {
        if let Some(i) = line.find("\"MARK-") {
            let name = &line[i + 6..];
            let name = &name[..name.find('"').unwrap_or(name.len())];
            if !name.starts_with("attach") {
                events.push(Event::Marker(name.to_string()));
            }
            continue;
        }
        for (call, data_only) in [("fsync(", false), ("fdatasync(", true)] {
            // `12</backing/path>`: -y's rendering of a descriptor.
            let Some(i) = line.find(call) else { continue };
            let args = &line[i + call.len()..];
            let (Some(open), Some(close)) = (args.find('<'), args.find('>')) else { continue };
            let path = &args[open + 1..close];
            if let Some(rel) = path.strip_prefix(data) {
                events.push(Event::Sync { data_only, path: rel.trim_start_matches('/').to_string() });
            }
        }
        if (line.contains("renameat") || line.contains(" rename(")) && line.contains(data) {
            events.push(Event::Rename);
        }
    }
    events
}

/// The events between the markers `from` and `to`.
fn between<'a>(events: &'a [Event], from: &str, to: &str) -> &'a [Event] {
    let at = |m: &str| {
        events.iter().position(|e| *e == Event::Marker(m.into())).unwrap_or_else(|| panic!("marker {m}: {events:?}"))
    };
    &events[at(from) + 1..at(to)]
}

fn syncs_of(events: &[Event], path: &str) -> Vec<(usize, bool)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Sync { data_only, path: p } if p == path => Some((i, *data_only)),
            _ => None,
        })
        .collect()
}

/// Runs the workload; returns its events.
fn workload(durability: &str) -> Vec<Event> {
    use std::io::Write;
    let t = Traced::new(durability);
    t.mark("0");
    std::fs::create_dir(t.mnt("d")).unwrap();
    t.mark("mkdir");
    let mut f = std::fs::File::create(t.mnt("d/f")).unwrap();
    f.write_all(b"data").unwrap();
    drop(f);
    t.mark("create-write-close");
    let f = std::fs::OpenOptions::new().append(true).open(t.mnt("d/f")).unwrap();
    f.sync_all().unwrap();
    t.mark("fsync");
    drop(f);
    t.mark("close-clean");
    std::fs::rename(t.mnt("d/f"), t.mnt("g")).unwrap();
    t.mark("rename");
    t.finish()
}

#[test]
fn every_durability_setting_issues_its_promised_syncs_before_answering() {
    for mode in ["kernel", "close", "always"] {
        let ev = workload(mode);
        let always = mode == "always";

        // mkdir: under `always`, the new directory and then its parent.
        let mk = between(&ev, "0", "mkdir");
        assert_eq!(!syncs_of(mk, "d").is_empty(), always, "{mode}: mkdir synced d: {mk:?}");
        assert_eq!(!syncs_of(mk, "").is_empty(), always, "{mode}: mkdir synced the root: {mk:?}");
        if always {
            assert!(syncs_of(mk, "d")[0].0 < syncs_of(mk, "")[0].0, "{mode}: new dir before parent: {mk:?}");
        }

        // create + write + close: `always` syncs the new file, then its directory (the
        // write itself goes through O_DSYNC); `close` fdatasyncs the file on close.
        let cw = between(&ev, "mkdir", "create-write-close");
        let (file, parent) = (syncs_of(cw, "d/f"), syncs_of(cw, "d"));
        match mode {
            "kernel" => assert!(cw.is_empty(), "{mode}: no syncs: {cw:?}"),
            "close" => {
                assert!(file.iter().any(|(_, data_only)| *data_only), "{mode}: fdatasync on close: {cw:?}");
                assert!(parent.is_empty(), "{mode}: close does not sync directories: {cw:?}");
            }
            _ => {
                assert!(!file.is_empty() && !parent.is_empty(), "{mode}: file and parent: {cw:?}");
                assert!(file[0].0 < parent[0].0, "{mode}: the file before its parent: {cw:?}");
            }
        }

        // A caller's fsync is a real fsync of the file in every mode.
        let fs = between(&ev, "create-write-close", "fsync");
        assert!(syncs_of(fs, "d/f").iter().any(|(_, data_only)| !data_only), "{mode}: fsync: {fs:?}");

        // rename: `always` syncs both parents after renaming, nothing else does.
        let rn = between(&ev, "close-clean", "rename");
        let renamed = rn.iter().position(|e| *e == Event::Rename).expect("the rename is traced");
        let after = &rn[renamed..];
        assert_eq!(!syncs_of(after, "d").is_empty(), always, "{mode}: rename synced the old parent: {rn:?}");
        assert_eq!(!syncs_of(after, "").is_empty(), always, "{mode}: rename synced the new parent: {rn:?}");
        if !always {
            assert!(!rn.iter().any(|e| matches!(e, Event::Sync { .. })), "{mode}: no syncs: {rn:?}");
        }
    }
}
