//! The plugin ABI's promises, checked against real shared libraries: version rules, clear
//! refusals, panics turned into EIO, two plugins at once, old plugins in a new host.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use plugfs_plugin_api::host::{AbiVersion, LoadError, PluginLibrary};
use plugfs_plugin_api::*;
use plugfs_tests::plugin_library;

const HOST: &str = "2.2";

fn req() -> Request {
    Request { uid: 0, gid: 0, pid: std::process::id() }
}

fn load_err(path: &Path) -> String {
    let err = PluginLibrary::load(path).expect_err("loading must fail");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "the error must name the file: {msg}");
    assert!(!msg.contains('\n') && msg.len() < 400, "the error must be one short line, got: {msg}");
    msg
}

/// Collects a directory listing through the host's readdir, page by page.
struct Names(Vec<String>);
impl DirSink for Names {
    fn add(&mut self, e: &DirEntry<'_>) -> bool {
        self.0.push(String::from_utf8_lossy(e.name).into_owned());
        true
    }
}

#[test]
fn host_speaks_abi_2_1() {
    assert_eq!(AbiVersion::HOST.to_string(), HOST);
}

#[test]
fn memfs_loads_and_describes_itself_without_mounting() {
    let lib = PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap();
    let info = lib.info();
    assert_eq!(info.name, "memfs");
    assert_eq!(info.abi, AbiVersion::HOST);
    assert!(!info.version.is_empty() && !info.description.is_empty() && !info.config_help.is_empty());
    assert!(info.capabilities.writable && info.capabilities.symlinks);
}

#[test]
fn two_different_plugins_serve_side_by_side() {
    let mem = PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap();
    let other = PluginLibrary::load(&plugin_library("plugfs-fixture-panics")).unwrap();
    assert_eq!(mem.info().name, "memfs");
    assert_eq!(other.info().name, "panics-fixture");
    let mem_fs = mem.open("", &MountOptions::default()).unwrap();
    let other_fs = other.open("", &MountOptions::default()).unwrap();

    let (entry, opened) = mem_fs.create(&req(), ROOT_ID, OsStr::new("only-in-memfs"), 0o644, 2).unwrap();
    mem_fs.write(&req(), entry.node, opened.handle, 0, b"memfs data", 0).unwrap();

    assert_eq!(other_fs.lookup(&req(), ROOT_ID, OsStr::new("only-in-memfs")).unwrap_err().errno(), Errno::ENOENT);
    assert_eq!(mem_fs.lookup(&req(), ROOT_ID, OsStr::new("file")).unwrap_err().errno(), Errno::ENOENT);
    assert_eq!(other_fs.lookup(&req(), ROOT_ID, OsStr::new("file")).unwrap().attr.size, 10);
    let mut buf = [0u8; 64];
    let n = mem_fs.read(&req(), entry.node, opened.handle, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"memfs data");
    mem_fs.release(&req(), entry.node, opened.handle, 2, true).unwrap();
}

#[test]
fn the_frozen_abi_1_0_is_refused_naming_the_file_and_both_versions() {
    // Built against plugin-api/abi-history/v1_0.rs, before structs carried their size.
    let path = plugin_library("plugfs-fixture-abi-1-0");
    let msg = load_err(&path);
    assert!(msg.contains("plugin ABI 1.0") && msg.contains(&format!("host plugin ABI {HOST}")), "{msg}");
    assert!(msg.contains("rebuild the plugin against plugfs-plugin-api 2.x"), "{msg}");
    assert!(matches!(PluginLibrary::load(&path), Err(LoadError::Incompatible { .. })));
}

#[test]
fn a_wrong_major_is_refused_naming_the_file_and_both_versions() {
    let path = plugin_library("plugfs-fixture-abi-3-0");
    let msg = load_err(&path);
    assert!(msg.contains("plugin ABI 3.0") && msg.contains(&format!("host plugin ABI {HOST}")), "{msg}");
    assert!(matches!(PluginLibrary::load(&path), Err(LoadError::Incompatible { .. })));
}

#[test]
fn a_plugin_needing_a_newer_host_is_refused() {
    let msg = load_err(&plugin_library("plugfs-fixture-abi-2-99"));
    assert!(msg.contains("plugin ABI 2.99") && msg.contains(&format!("host plugin ABI {HOST}")), "{msg}");
    assert!(msg.contains("newer host"), "{msg}");
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_text_file_is_not_a_plugin() {
    let dir = scratch();
    let path = dir.path().join("libnotes.so");
    std::fs::write(&path, "these are notes, not code\n").unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("not a plugfs plugin") && msg.contains(HOST), "{msg}");
}

#[test]
fn a_shared_library_without_the_tag_is_not_a_plugin() {
    // Any real system library will do; libc is always there.
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("a system libc");
    let msg = load_err(&libc);
    assert!(msg.contains("exports no `PLUGFS_ABI_TAG`") && msg.contains(HOST), "{msg}");
}

#[test]
fn a_truncated_plugin_is_refused_without_loading_it() {
    let dir = scratch();
    let path = dir.path().join("libtruncated.so");
    let bytes = std::fs::read(plugin_library("plugfs-memfs")).unwrap();
    std::fs::File::create(&path).unwrap().write_all(&bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("truncated") && msg.contains(HOST), "{msg}");
}

#[test]
fn an_empty_file_is_refused() {
    let dir = scratch();
    let path = dir.path().join("libempty.so");
    std::fs::write(&path, b"").unwrap();
    load_err(&path);
}

/// A tracing writer that keeps what was logged, to check the panic log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything this test binary logs. One global subscriber: a per-test (thread-local) one
/// races with tests on other threads over tracing's per-callsite interest cache, and then
/// misses lines now and then.
fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
    .clone()
}

#[test]
fn a_panic_in_a_plugin_becomes_eio_with_a_log_line_and_the_plugin_keeps_serving() {
    let logs = captured_logs();
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-panics")).unwrap();
    let fs = lib.open("", &MountOptions::default()).unwrap();
    let file = fs.lookup(&req(), ROOT_ID, OsStr::new("file")).unwrap();

    let mut buf = [0u8; 16];
    let err = fs.read(&req(), file.node, 0, 0, &mut buf).unwrap_err();
    assert!(err.errno() == Errno::EIO && err.is_plugin_panic(), "{err}");
    assert_eq!(fs.readdir(&req(), ROOT_ID, 0, 0, &mut Names(Vec::new())).unwrap_err().errno(), Errno::EIO);
    assert_eq!(fs.mkdir(&req(), ROOT_ID, OsStr::new("d"), 0o755).unwrap_err().errno(), Errno::EIO);
    // Still serving, many times over.
    for _ in 0..100 {
        assert_eq!(fs.getattr(&req(), file.node, None).unwrap().attr.size, 10);
        assert_eq!(fs.read(&req(), file.node, 0, 0, &mut buf).unwrap_err().errno(), Errno::EIO);
    }

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("plugin panicked")).collect();
    assert!(lines.iter().any(|l| l.contains("panics-fixture") && l.contains("op=\"read\"")), "{text}");
    assert!(lines.iter().any(|l| l.contains("op=\"readdir\"") && l.contains("readdir is broken")), "{text}");
    assert!(lines.iter().any(|l| l.contains("op=\"mkdir\"") && l.contains("ERROR")), "{text}");
    // The plugin's panic hook stays quiet and hands the location to this one line.
    assert!(lines.iter().any(|l| l.contains("plugin-panics/src/lib.rs:")), "{text}");
}

#[test]
fn a_panic_while_opening_is_an_open_error() {
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-panics")).unwrap();
    let err = lib.open("panic_in_open = true", &MountOptions::default()).err().expect("open must fail");
    assert!(err.message.contains("panicked") && err.message.contains("asked to panic in open"), "{err}");
}

#[test]
fn a_bad_setting_is_refused_naming_the_key() {
    let lib = PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap();
    let err = lib.open("max_bytes = \"lots\"", &MountOptions::default()).err().expect("open must fail");
    assert_eq!(err.key.as_deref(), Some("max_bytes"), "{err}");
    let err = lib.open("max_bytse = 1", &MountOptions::default()).err().expect("open must fail");
    assert_eq!(err.key.as_deref(), Some("max_bytse"), "{err}");
}

#[test]
fn the_same_library_loaded_twice_opens_independent_filesystems() {
    let a = PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap().open("", &MountOptions::default()).unwrap();
    let b = PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap().open("", &MountOptions::default()).unwrap();
    a.mkdir(&req(), ROOT_ID, OsStr::new("in-a"), 0o755).unwrap();
    assert_eq!(b.lookup(&req(), ROOT_ID, OsStr::new("in-a")).unwrap_err().errno(), Errno::ENOENT);
}

/// A listing collected through the host's readdirplus.
struct PlusNames(Vec<String>);
impl DirPlusSink for PlusNames {
    fn add(&mut self, e: &DirEntry<'_>, _: &Entry) -> bool {
        self.0.push(String::from_utf8_lossy(e.name).into_owned());
        true
    }
}

/// Every check the loader makes on a plugin's answers, against a plugin that breaks each
/// rule on purpose (tests/fixtures/plugin-misbehaves, written against the raw ABI).
#[test]
fn every_invalid_answer_becomes_eio_with_a_log_line_and_counted_references_are_given_back() {
    let logs = captured_logs();
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-misbehaves")).unwrap();
    let fs = lib.open("", &MountOptions::default()).unwrap();
    let look = |n: &str| fs.lookup(&req(), ROOT_ID, OsStr::new(n));

    // Statuses: out of range is EIO; -errno is the errno, not a panic.
    for name in ["errno-4096", "errno-huge", "node-zero", "root-id", "bad-kind", "bad-time"] {
        assert_eq!(look(name).unwrap_err().errno(), Errno::EIO, "lookup of {name}");
    }
    assert_eq!(look("errno-negative").unwrap_err().errno(), Errno::EPERM);
    // Within the ABI's range, but beyond what Linux's FUSE accepts: the FUSE frontend's
    // business (see tests/tests/bad_plugins.rs).
    assert_eq!(look("errno-512").unwrap_err().errno(), Errno(512));
    assert_eq!(look("no-such-name").unwrap_err().errno(), Errno::ENOENT);

    // Lengths beyond the buffer are EIO, never clamped.
    let overlong = look("overlong").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(fs.read(&req(), overlong.node, 1, 0, &mut buf).unwrap_err().errno(), Errno::EIO);
    assert_eq!(fs.getxattr(&req(), overlong.node, OsStr::new("user.a"), &mut buf).unwrap_err().errno(), Errno::EIO);
    assert_eq!(fs.getxattr(&req(), overlong.node, OsStr::new("user.a"), &mut []).unwrap(), 10, "a size query");
    assert_eq!(fs.listxattr(&req(), overlong.node, &mut buf).unwrap_err().errno(), Errno::EIO);
    assert_eq!(fs.write(&req(), overlong.node, 1, 0, b"four", 0).unwrap_err().errno(), Errno::EIO);
    let err = fs.copy_file_range(&req(), overlong.node, 1, 0, overlong.node, 1, 50, 8, 0).unwrap_err();
    assert_eq!(err.errno(), Errno::EIO);
    assert_eq!(fs.lseek(&req(), overlong.node, 1, 0, Whence::Data).unwrap_err().errno(), Errno::EIO);
    let link = look("link").unwrap();
    assert_eq!(fs.readlink(&req(), link.node, &mut buf).unwrap_err().errno(), Errno::EIO);

    // A create answered with the root's id: EIO, the reference and the handle given back.
    assert_eq!(fs.create(&req(), ROOT_ID, OsStr::new("new"), 0o644, 0).unwrap_err().errno(), Errno::EIO);

    // A backing descriptor that is not open: EIO, and the handle is released again.
    let bad_backing = look("bad-backing").unwrap();
    assert_eq!(fs.open(&req(), bad_backing.node, 0).unwrap_err().errno(), Errno::EIO);

    let forgets = look("forgets").unwrap();
    let mut text = [0u8; 64];
    let n = fs.read(&req(), forgets.node, 1, 0, &mut text).unwrap();
    // root-id (lookup) and create each counted a reference on the root; bad-kind and
    // bad-time one each; overlong's was a good answer and is still held.
    assert_eq!(std::str::from_utf8(&text[..n]).unwrap(), "1:2 3:1 4:1 5:0 release77:1 release88:1\n");

    // Listed names no directory may hold are dropped; the rest arrive, by both listings.
    let mut names = Names(Vec::new());
    fs.readdir(&req(), ROOT_ID, 0, 0, &mut names).unwrap();
    assert_eq!(names.0, [".", "..", "good", "forgets", "overlong"]);
    let mut plus = PlusNames(Vec::new());
    fs.readdirplus(&req(), ROOT_ID, 0, 0, &mut plus).unwrap();
    assert_eq!(plus.0, [".", "..", "good", "forgets", "overlong"]);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let has = |needle: &str| text.lines().any(|l| l.contains("misbehaves-fixture") && l.contains(needle));
    assert!(has("status 4096, which is no errno"), "{text}");
    assert!(has("status 100000"), "{text}");
    assert!(has("returned node 0"), "{text}");
    assert!(has("root's id"), "{text}");
    assert!(has("reported 17 bytes for a buffer of 16"), "{text}");
    assert!(has("backing descriptor 987654, which is not open"), "{text}");
    assert!(has("a name with '/' or NUL") && has("an empty name") && has("longer than its declared limit"), "{text}");
    assert!(has("`.` or `..` as something other than a directory"), "{text}");
    assert!(!text.lines().any(|l| l.contains("misbehaves-fixture") && l.contains("plugin panicked")), "{text}");
}

#[test]
fn a_panic_in_the_hosts_directory_sink_is_caught_before_it_unwinds_through_the_plugin() {
    struct Broken;
    impl DirSink for Broken {
        fn add(&mut self, _: &DirEntry<'_>) -> bool {
            panic!("the sink is broken");
        }
    }
    struct BrokenPlus;
    impl DirPlusSink for BrokenPlus {
        fn add(&mut self, _: &DirEntry<'_>, _: &Entry) -> bool {
            panic!("the sink is broken");
        }
    }
    // Unwinding through the plugin's `extern "C"` frames would abort this whole process.
    // (The fixture has no readdirplus of its own: the host's default then calls the sink
    // from Rust, where a panic unwinds like any other.)
    for (plugin, has_readdirplus) in [("plugfs-fixture-misbehaves", false), ("plugfs-memfs", true)] {
        let fs = PluginLibrary::load(&plugin_library(plugin)).unwrap().open("", &MountOptions::default()).unwrap();
        let h = fs.opendir(&req(), ROOT_ID, 0).unwrap().handle;
        assert_eq!(fs.readdir(&req(), ROOT_ID, h, 0, &mut Broken).unwrap_err().errno(), Errno::EIO, "{plugin}");
        if has_readdirplus {
            let err = fs.readdirplus(&req(), ROOT_ID, h, 0, &mut BrokenPlus).unwrap_err();
            assert_eq!(err.errno(), Errno::EIO, "{plugin}");
        }
        let mut names = Names(Vec::new());
        fs.readdir(&req(), ROOT_ID, h, 0, &mut names).unwrap();
        assert!(names.0.contains(&"..".to_string()), "{plugin} still serves");
    }
}

#[test]
fn the_c_example_plugin_loads_with_abi_2_2_logs_through_the_host_and_its_negative_errnos_arrive_as_errnos() {
    // plugins/hello-c: written in C against plugfs_plugin.h alone, answering `-ENOENT`
    // style statuses as libfuse authors do.
    let logs = captured_logs();
    let lib = PluginLibrary::load(&plugin_library("plugfs-hello-c")).unwrap();
    let info = lib.info();
    assert_eq!(info.name, "hello-c");
    assert_eq!(info.abi, AbiVersion { major: 2, minor: 2 });
    assert!(!info.capabilities.writable && info.capabilities.symlinks, "{:?}", info.capabilities);
    // Its designated initializer leaves 2.2's field zero: no negative entries.
    assert_eq!(info.capabilities.negative_entry_ttl, std::time::Duration::ZERO);
    assert_eq!(info.capabilities.max_name_len, 255);
    let fs = lib.open("", &MountOptions::default()).unwrap();

    assert_eq!(fs.lookup(&req(), ROOT_ID, OsStr::new("missing")).unwrap_err().errno(), Errno::ENOENT);
    assert_eq!(fs.getattr(&req(), 999, None).unwrap_err().errno(), Errno::ENOENT);
    let file = fs.lookup(&req(), ROOT_ID, OsStr::new("hello.txt")).unwrap();
    assert_eq!((file.attr.kind, file.attr.size), (FileKind::File, 14));
    assert_eq!(fs.lookup(&req(), file.node, OsStr::new("x")).unwrap_err().errno(), Errno::ENOTDIR);
    assert_eq!(fs.open(&req(), file.node, libc::O_WRONLY).unwrap_err().errno(), Errno::EROFS);
    let opened = fs.open(&req(), file.node, libc::O_RDONLY).unwrap();
    let mut buf = [0u8; 64];
    let n = fs.read(&req(), file.node, opened.handle, 6, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"from C!\n");
    fs.release(&req(), file.node, opened.handle, libc::O_RDONLY, false).unwrap();

    let link = fs.lookup(&req(), ROOT_ID, OsStr::new("link")).unwrap();
    let mut target = [0u8; 4096];
    let n = fs.readlink(&req(), link.node, &mut target).unwrap();
    assert_eq!(&target[..n], b"hello.txt");

    let docs = fs.lookup(&req(), ROOT_ID, OsStr::new("docs")).unwrap();
    let dir = fs.opendir(&req(), docs.node, libc::O_RDONLY).unwrap();
    let mut names = Names(Vec::new());
    fs.readdir(&req(), docs.node, dir.handle, 0, &mut names).unwrap();
    assert_eq!(names.0, [".", "..", "readme.txt"]);
    fs.releasedir(&req(), docs.node, dir.handle).unwrap();
    // An operation the C table leaves NULL answers as a read-only filesystem must.
    assert_eq!(fs.mkdir(&req(), ROOT_ID, OsStr::new("d"), 0o755).unwrap_err().errno(), Errno::EROFS);

    let err = lib.open("colour = \"blue\"", &MountOptions::default()).err().expect("hello-c takes no settings");
    assert!(err.message.contains("takes no settings"), "{err}");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // Its one line of its own, through the log bridge (ABI 2.1), from C.
    let opened = |l: &&str| l.contains("hello-c: opened");
    let line = text.lines().find(opened).unwrap_or_else(|| panic!("hello-c's INFO line is missing:\n{text}"));
    assert!(line.contains(" INFO ") && line.contains("hello_c:") && line.contains("plugin=hello-c"), "{line}");
    let about_it: Vec<&str> = text.lines().filter(|l| l.contains("hello-c") && !opened(l)).collect();
    assert!(about_it.is_empty(), "a negative errno is an answer, not a panic or a bad answer: {about_it:?}");
}

/// The log lines of the `plugin-logs` fixtures opened with `label`.
fn lines_labelled(logs: &Captured, label: &str) -> Vec<String> {
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    text.lines().filter(|l| l.contains(&format!("label={label}"))).map(str::to_string).collect()
}

#[test]
fn a_plugins_tracing_lines_reach_the_hosts_log_with_its_name_and_target() {
    // The host's subscriber (this test binary's: INFO and above) is set before the load.
    let logs = captured_logs();
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-logs")).unwrap();
    assert_eq!(lib.info().abi, AbiVersion::HOST);
    let fs = lib.open("label = \"in-process\"", &MountOptions::default()).unwrap();
    let text = || String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();

    let opened = lines_labelled(&logs, "in-process");
    assert_eq!(opened.len(), 1, "one warning from open: {opened:?}\n{}", text());
    let line = &opened[0];
    for want in
        [" WARN ", "plugfs_fixture_logs::logs:", "logs-fixture opened: warning from open", "plugin=logs-fixture"]
    {
        assert!(line.contains(want), "{want:?} is missing from {line:?}");
    }
    // From a thread the plugin started, not the host's.
    assert!(
        text().lines().any(|l| l.contains("warning from a background thread") && l.contains("plugin=logs-fixture")),
        "{}",
        text()
    );
    // The filter is the host's: DEBUG is off here.
    assert!(!text().contains("debug detail from open"), "{}", text());

    // A call's warning, with its field.
    assert_eq!(fs.lookup(&req(), ROOT_ID, OsStr::new("warn-abc")).unwrap_err().errno(), Errno::ENOENT);
    assert!(
        text().lines().any(|l| l.contains("lookup of a missing name") && l.contains("name=\"warn-abc\"")),
        "{}",
        text()
    );
}

#[test]
fn a_plugin_of_abi_2_0_still_loads_and_serves_and_its_lines_go_nowhere() {
    let logs = captured_logs();
    // The logging plugin as a 2.0 build exports it: no `attach_host`.
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-logs-abi-2-0")).unwrap();
    assert_eq!(lib.info().abi, AbiVersion { major: 2, minor: 0 });
    assert_eq!(lib.info().name, "logs-fixture-2-0");
    let fs = lib.open("label = \"abi-2-0\"", &MountOptions::default()).unwrap();
    assert_eq!(fs.getattr(&req(), ROOT_ID, None).unwrap().attr.kind, FileKind::Directory);
    assert_eq!(fs.lookup(&req(), ROOT_ID, OsStr::new("warn-2-0")).unwrap_err().errno(), Errno::ENOENT);
    assert!(lines_labelled(&logs, "abi-2-0").is_empty(), "a 2.0 plugin has no log bridge");
    assert!(!String::from_utf8(logs.0.lock().unwrap().clone()).unwrap().contains("warn-2-0"));

    // The misbehaving fixture declares 2.0 with 2.0's declaration, written by hand.
    let lib = PluginLibrary::load(&plugin_library("plugfs-fixture-misbehaves")).unwrap();
    assert_eq!(lib.info().abi, AbiVersion { major: 2, minor: 0 });
    assert_eq!(lib.info().capabilities.negative_entry_ttl, std::time::Duration::ZERO, "2.0: no negative entries");
    let fs = lib.open("", &MountOptions::default()).unwrap();
    assert!(fs.lookup(&req(), ROOT_ID, OsStr::new("good")).is_ok());
}
