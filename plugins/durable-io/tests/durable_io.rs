//! Behaviour of durable-io through the `FileSystem` trait, called in-process over a temp
//! directory. Several tests need root (ownership, device nodes, trusted.* xattrs); they
//! check and skip the root-only parts otherwise.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use plugfs_durable_io::{Durability, DurableIoPlugin, EXCLUSIVE_TTL, TTL};
use plugfs_plugin_api::{
    Errno, FileKind, FileSystem, MountOptions, Plugin, ROOT_ID, RenameFlags, Request, SetAttr, SetTime, Timestamp,
    Whence, fallocate_mode, open_flags, xattr_flags,
};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn errno<T: std::fmt::Debug>(r: plugfs_plugin_api::Result<T>) -> Errno {
    r.unwrap_err().errno()
}

// ---------------------------------------------------------------------------------------
// Config

#[test]
fn bad_root_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    for (root, why) in [
        (dir.path().join("missing"), "does not exist"),
        (file.clone(), "is not a directory"),
        ("relative/dir/that/does/not/exist".into(), "does not exist"),
    ] {
        let Err(e) = DurableIoPlugin::open(&config(&root, "close"), &MountOptions::default()) else {
            panic!("{root:?} was accepted");
        };
        assert_eq!(e.key.as_deref(), Some("root"), "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    let Err(e) = DurableIoPlugin::open(&plugfs_plugin_api::ConfigTable::from_toml(""), &MountOptions::default()) else {
        panic!("a config without root was accepted");
    };
    assert!(e.message.contains("root"), "{e}");
}

#[test]
fn create_root_makes_a_missing_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/c");
    let toml = format!("root = {:?}\ncreate_root = true\n", root.to_str().unwrap());
    DurableIoPlugin::open(&plugfs_plugin_api::ConfigTable::from_toml(toml), &MountOptions::default()).unwrap();
    assert!(root.is_dir());
}

#[test]
fn unknown_config_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("root = {:?}\ndurabilty = \"always\"\n", dir.path().to_str().unwrap());
    let Err(e) = DurableIoPlugin::open(&plugfs_plugin_api::ConfigTable::from_toml(toml), &MountOptions::default())
    else {
        panic!("a misspelt key was accepted");
    };
    assert_eq!(e.key.as_deref(), Some("durabilty"), "{e}");
}

#[test]
fn bad_durability_mode_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let Err(e) = DurableIoPlugin::open(&config(dir.path(), "sometimes"), &MountOptions::default()) else {
        panic!("an unknown mode was accepted");
    };
    assert_eq!(e.key.as_deref(), Some("durability"), "{e}");
}

#[test]
fn durability_defaults_to_close_and_all_modes_parse() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("root = {:?}\n", dir.path().to_str().unwrap());
    let fs = DurableIoPlugin::open(&plugfs_plugin_api::ConfigTable::from_toml(toml), &MountOptions::default()).unwrap();
    assert_eq!(fs.durability(), Durability::Close);
    for (name, mode) in [("kernel", Durability::Kernel), ("close", Durability::Close), ("always", Durability::Always)] {
        let fs = DurableIoPlugin::open(&config(dir.path(), name), &MountOptions::default()).unwrap();
        assert_eq!(fs.durability(), mode);
    }
}

#[test]
fn plugin_info_describes_a_posix_filesystem() {
    let info = DurableIoPlugin::info();
    assert_eq!(info.name, "durable-io");
    let posix = plugfs_plugin_api::Capabilities {
        checks_permissions: true,
        backing_files: true,
        ..plugfs_plugin_api::Capabilities::POSIX
    };
    assert_eq!(info.capabilities, posix);
    assert!(info.config_help.lines().any(|l| l.starts_with("root = ")));
    assert!(info.config_help.lines().any(|l| l.starts_with("durability = ")));
}

// ---------------------------------------------------------------------------------------
// Confinement

#[test]
fn dotdot_names_are_refused() {
    let m = mount();
    let fs = &m.fs;
    for bad in ["..", ".", "a/b", "../etc", "/etc", ""] {
        assert_eq!(errno(fs.lookup(&ROOT_REQ, ROOT_ID, os(bad))), Errno::EINVAL, "lookup {bad:?}");
        assert_eq!(errno(fs.mkdir(&ROOT_REQ, ROOT_ID, os(bad), 0o755)), Errno::EINVAL, "mkdir {bad:?}");
        assert_eq!(
            errno(fs.create(&ROOT_REQ, ROOT_ID, os(bad), 0o644, open_flags::O_RDWR)),
            Errno::EINVAL,
            "create {bad:?}"
        );
        assert_eq!(errno(fs.unlink(&ROOT_REQ, ROOT_ID, os(bad))), Errno::EINVAL, "unlink {bad:?}");
        assert_eq!(errno(fs.symlink(&ROOT_REQ, ROOT_ID, os(bad), os("x"))), Errno::EINVAL, "symlink {bad:?}");
    }
    write_file(fs, ROOT_ID, "f", b"x");
    assert_eq!(errno(fs.rename(&ROOT_REQ, ROOT_ID, os("f"), ROOT_ID, os("../f"), RenameFlags::empty())), Errno::EINVAL);
    assert!(!m.dir.path().parent().unwrap().join("f").exists());
}

#[test]
fn symlink_pointing_outside_root_is_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    let m = mount();
    let fs = &m.fs;
    std::os::unix::fs::symlink("/", m.path("to-root")).unwrap();
    std::os::unix::fs::symlink(outside.path(), m.path("to-outside")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), m.path("to-secret")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("new"), m.path("to-new")).unwrap();

    let e = lookup(fs, ROOT_ID, "to-root");
    assert_eq!(e.attr.kind, FileKind::Symlink);
    let mut buf = vec![0u8; 4096];
    let n = fs.readlink(&ROOT_REQ, e.node, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"/", "targets are returned verbatim");
    assert_eq!(errno(fs.lookup(&ROOT_REQ, e.node, os("etc"))), Errno::ENOTDIR);
    assert_eq!(errno(fs.opendir(&ROOT_REQ, e.node, 0)), Errno::ENOTDIR);
    assert_eq!(errno(fs.open(&ROOT_REQ, e.node, open_flags::O_RDONLY)), Errno::ELOOP);

    let e = lookup(fs, ROOT_ID, "to-outside");
    assert_eq!(errno(fs.lookup(&ROOT_REQ, e.node, os("secret"))), Errno::ENOTDIR);

    let e = lookup(fs, ROOT_ID, "to-secret");
    assert_eq!(e.attr.kind, FileKind::Symlink);
    assert_eq!(errno(fs.open(&ROOT_REQ, e.node, open_flags::O_RDONLY)), Errno::ELOOP);
    assert_eq!(errno(fs.open(&ROOT_REQ, e.node, open_flags::O_WRONLY | open_flags::O_TRUNC)), Errno::ELOOP);
    // Creating over a dangling or live symlink must not create or truncate its target.
    assert_eq!(errno(fs.create(&ROOT_REQ, ROOT_ID, os("to-new"), 0o644, open_flags::O_RDWR)), Errno::ELOOP);
    assert_eq!(
        errno(fs.create(&ROOT_REQ, ROOT_ID, os("to-secret"), 0o644, open_flags::O_RDWR | open_flags::O_TRUNC)),
        Errno::ELOOP
    );
    assert!(!outside.path().join("new").exists());
    assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"secret");
    // Attribute changes on the symlink node stay on the symlink.
    let set = SetAttr { size: Some(0), ..SetAttr::default() };
    assert_eq!(errno(fs.setattr(&ROOT_REQ, e.node, &set)), Errno::EINVAL);
    let set = SetAttr { mode: Some(0o600), ..SetAttr::default() };
    assert_eq!(errno(fs.setattr(&ROOT_REQ, e.node, &set)), Errno::EOPNOTSUPP);
    assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"secret");
    assert_ne!(fs::metadata(outside.path().join("secret")).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_name_swapped_for_a_symlink_to_root_is_seen_as_the_symlink() {
    let m = mount();
    let fs = &m.fs;
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
    write_file(fs, d.node, "inside", b"inside");
    // Someone renames the directory away and plants a symlink to / under its name.
    fs::rename(m.path("d"), m.path("d-moved")).unwrap();
    std::os::unix::fs::symlink("/", m.path("d")).unwrap();

    let swapped = lookup(fs, ROOT_ID, "d");
    assert_eq!(swapped.attr.kind, FileKind::Symlink);
    assert_ne!(swapped.node, d.node);
    assert_eq!(errno(fs.lookup(&ROOT_REQ, swapped.node, os("etc"))), Errno::ENOTDIR);
    assert_eq!(errno(fs.opendir(&ROOT_REQ, swapped.node, 0)), Errno::ENOTDIR);
    assert_eq!(errno(fs.open(&ROOT_REQ, swapped.node, open_flags::O_RDONLY)), Errno::ELOOP);
    // The node looked up before keeps naming the moved directory, never the symlink.
    let inside = lookup(fs, d.node, "inside");
    assert_eq!(read_all(fs, inside.node), b"inside");
    assert_eq!(errno(fs.lookup(&ROOT_REQ, d.node, os("etc"))), Errno::ENOENT);
    let names: Vec<_> = list(fs, d.node, 100).into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&"inside".to_string()) && !names.contains(&"etc".to_string()), "{names:?}");
}

#[test]
fn root_dotdot_shows_the_root_itself() {
    let m = mount();
    let root_ino = m.fs.getattr(&ROOT_REQ, ROOT_ID, None).unwrap().attr.ino;
    let entries = list(&m.fs, ROOT_ID, 100);
    let dotdot = entries.iter().find(|(n, _, _)| n == "..").unwrap();
    assert_eq!(dotdot.2, root_ino);
}

// ---------------------------------------------------------------------------------------
// Nodes

#[test]
fn hard_links_share_a_node_id() {
    let m = mount();
    let fs = &m.fs;
    let a = write_file(fs, ROOT_ID, "a", b"shared");
    let sub = fs.mkdir(&ROOT_REQ, ROOT_ID, os("sub"), 0o755).unwrap();
    let b = fs.link(&ROOT_REQ, a.node, sub.node, os("b")).unwrap();
    assert_eq!(b.node, a.node);
    assert_eq!(b.attr.nlink, 2);
    assert_eq!(lookup(fs, sub.node, "b").node, a.node);
    assert_eq!(b.attr.ino, fs::metadata(m.path("a")).unwrap().ino(), "ino is the backing inode number");
    assert_eq!(read_all(fs, b.node), b"shared");
    // Hard links to symlinks work and stay symlinks.
    let s = fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os("/nowhere")).unwrap();
    let s2 = fs.link(&ROOT_REQ, s.node, ROOT_ID, os("s2")).unwrap();
    assert_eq!(s2.node, s.node);
    assert!(fs::symlink_metadata(m.path("s2")).unwrap().file_type().is_symlink());
    assert_eq!(errno(fs.link(&ROOT_REQ, sub.node, ROOT_ID, os("dirlink"))), Errno::EPERM);
}

#[test]
fn forgotten_nodes_are_released_and_come_back_with_a_new_generation() {
    let m = mount();
    let fs = &m.fs;
    let a = write_file(fs, ROOT_ID, "a", b"x"); // one reference from create
    let again = lookup(fs, ROOT_ID, "a"); // and one from lookup
    assert_eq!(again.node, a.node);
    fs.forget(a.node, 1);
    assert!(fs.getattr(&ROOT_REQ, a.node, None).is_ok());
    fs.forget(a.node, 1);
    assert_eq!(errno(fs.getattr(&ROOT_REQ, a.node, None)), Errno::ESTALE);
    let fresh = lookup(fs, ROOT_ID, "a");
    assert_eq!(fresh.node, a.node, "the id is the backing inode number");
    assert_ne!(fresh.generation, a.generation, "(id, generation) never repeats");
    fs.forget(ROOT_ID, 100);
    assert!(fs.getattr(&ROOT_REQ, ROOT_ID, None).is_ok(), "the root is never forgotten");
}

#[test]
fn entries_carry_the_documented_ttls() {
    let m = mount();
    let e = write_file(&m.fs, ROOT_ID, "f", b"");
    assert_eq!((e.entry_ttl, e.attr_ttl), (TTL, TTL));
    assert_eq!(m.fs.getattr(&ROOT_REQ, e.node, None).unwrap().ttl, TTL);
}

#[test]
fn an_exclusive_mount_gives_long_ttls_and_metadata_ttl_sets_them() {
    let dir = tempfile::tempdir().unwrap();
    let open = |extra: &str| {
        let toml = format!("root = {:?}\n{extra}", dir.path().to_str().unwrap());
        DurableIoPlugin::open(&plugfs_plugin_api::ConfigTable::from_toml(toml), &MountOptions::default())
    };
    let ttls = |fs: &plugfs_durable_io::DurableIo, name: &str| {
        let e = write_file(fs, ROOT_ID, name, b"");
        let attr = fs.getattr(&ROOT_REQ, e.node, None).unwrap().ttl;
        (e.entry_ttl, e.attr_ttl, attr)
    };
    let fs = open("exclusive = true\n").unwrap();
    assert!(fs.is_exclusive());
    assert_eq!(fs.capabilities().negative_entry_ttl, EXCLUSIVE_TTL, "missing names are cached as long");
    assert_eq!(ttls(&fs, "a"), (EXCLUSIVE_TTL, EXCLUSIVE_TTL, EXCLUSIVE_TTL));
    let fs = open("exclusive = true\nmetadata_ttl = 60\n").unwrap();
    let minute = Duration::from_secs(60);
    assert_eq!(ttls(&fs, "b"), (minute, minute, minute));
    let fs = open("metadata_ttl = 0\n").unwrap();
    assert!(!fs.is_exclusive());
    assert_eq!(fs.capabilities().negative_entry_ttl, Duration::ZERO, "no negative entries unless exclusive");
    assert_eq!(ttls(&fs, "c"), (Duration::ZERO, Duration::ZERO, Duration::ZERO));
    // An atomic replace renames files at a release, unseen by the kernel: their names keep
    // the short TTL, directories and attributes get the long one.
    let fs = open("exclusive = true\natomic_replace = true\n").unwrap();
    assert_eq!(ttls(&fs, "d"), (TTL, EXCLUSIVE_TTL, EXCLUSIVE_TTL));
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, OsStr::new("dir"), 0o755).unwrap();
    assert_eq!(d.entry_ttl, EXCLUSIVE_TTL);
    let Err(e) = open("metadata_ttl = 100000000\n") else { panic!("a TTL of years was accepted") };
    assert_eq!(e.key.as_deref(), Some("metadata_ttl"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Namespace

#[test]
fn rename_noreplace_refuses_existing_target() {
    let m = mount();
    let fs = &m.fs;
    write_file(fs, ROOT_ID, "a", b"a");
    write_file(fs, ROOT_ID, "b", b"b");
    let flags = RenameFlags(RenameFlags::NOREPLACE);
    assert_eq!(errno(fs.rename(&ROOT_REQ, ROOT_ID, os("a"), ROOT_ID, os("b"), flags)), Errno::EEXIST);
    assert_eq!(fs::read(m.path("a")).unwrap(), b"a");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"b");
    fs.rename(&ROOT_REQ, ROOT_ID, os("a"), ROOT_ID, os("c"), flags).unwrap();
    assert_eq!(fs::read(m.path("c")).unwrap(), b"a");
    fs.rename(&ROOT_REQ, ROOT_ID, os("c"), ROOT_ID, os("b"), RenameFlags::empty()).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"a");
    assert!(!m.path("c").exists());
}

#[test]
fn rename_exchange_swaps() {
    let m = mount();
    let fs = &m.fs;
    write_file(fs, ROOT_ID, "file", b"file");
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("dir"), 0o755).unwrap();
    write_file(fs, d.node, "x", b"x");
    let flags = RenameFlags(RenameFlags::EXCHANGE);
    fs.rename(&ROOT_REQ, ROOT_ID, os("file"), ROOT_ID, os("dir"), flags).unwrap();
    assert_eq!(fs::read(m.path("dir")).unwrap(), b"file");
    assert!(m.path("file/x").exists());
    assert_eq!(lookup(fs, ROOT_ID, "file").node, d.node, "the node follows its inode");
    assert_eq!(errno(fs.rename(&ROOT_REQ, ROOT_ID, os("file"), ROOT_ID, os("missing"), flags)), Errno::ENOENT);
}

#[test]
fn rename_with_unsupported_flags_is_einval() {
    let m = mount();
    write_file(&m.fs, ROOT_ID, "a", b"a");
    for flags in [RenameFlags::WHITEOUT, 0x80, RenameFlags::NOREPLACE | RenameFlags::EXCHANGE] {
        let r = m.fs.rename(&ROOT_REQ, ROOT_ID, os("a"), ROOT_ID, os("b"), RenameFlags(flags));
        assert_eq!(errno(r), Errno::EINVAL, "flags {flags:#x}");
    }
    assert!(m.path("a").exists());
}

#[test]
fn unlink_and_rmdir_follow_posix() {
    let m = mount();
    let fs = &m.fs;
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
    write_file(fs, d.node, "f", b"x");
    assert_eq!(errno(fs.rmdir(&ROOT_REQ, ROOT_ID, os("d"))), Errno::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(&ROOT_REQ, ROOT_ID, os("d"))), Errno::EISDIR);
    assert_eq!(errno(fs.rmdir(&ROOT_REQ, d.node, os("f"))), Errno::ENOTDIR);
    fs.unlink(&ROOT_REQ, d.node, os("f")).unwrap();
    fs.rmdir(&ROOT_REQ, ROOT_ID, os("d")).unwrap();
    assert!(!m.path("d").exists());
    assert_eq!(errno(fs.unlink(&ROOT_REQ, ROOT_ID, os("d"))), Errno::ENOENT);
}

#[test]
fn mknod_makes_every_kind_of_node() {
    let m = mount();
    let fs = &m.fs;
    let fifo = fs.mknod(&ROOT_REQ, ROOT_ID, os("fifo"), 0o010644, 0).unwrap();
    assert_eq!(fifo.attr.kind, FileKind::Fifo);
    assert!(fs::symlink_metadata(m.path("fifo")).unwrap().file_type().is_fifo());
    let sock = fs.mknod(&ROOT_REQ, ROOT_ID, os("sock"), 0o140644, 0).unwrap();
    assert_eq!(sock.attr.kind, FileKind::Socket);
    let reg = fs.mknod(&ROOT_REQ, ROOT_ID, os("reg"), 0o100600, 0).unwrap();
    assert_eq!((reg.attr.kind, reg.attr.perm), (FileKind::File, 0o600));
    let reg0 = fs.mknod(&ROOT_REQ, ROOT_ID, os("reg0"), 0o600, 0).unwrap();
    assert_eq!(reg0.attr.kind, FileKind::File);
    assert_eq!(errno(fs.mknod(&ROOT_REQ, ROOT_ID, os("dir"), 0o040755, 0)), Errno::EPERM);
    assert_eq!(errno(fs.mknod(&ROOT_REQ, ROOT_ID, os("fifo"), 0o010644, 0)), Errno::EEXIST);
    // Special files are served by the kernel, never opened by the plugin.
    assert_eq!(errno(fs.open(&ROOT_REQ, fifo.node, open_flags::O_RDONLY)), Errno::ENXIO);
    if is_root() {
        // /dev/null is 1:3, 0x103 in FUSE's encoding.
        let null = fs.mknod(&ROOT_REQ, ROOT_ID, os("null"), 0o020666, 0x103).unwrap();
        assert_eq!((null.attr.kind, null.attr.rdev), (FileKind::CharDevice, 0x103));
        let md = fs::symlink_metadata(m.path("null")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), fs::metadata("/dev/null").unwrap().rdev());
        let blk = fs.mknod(&ROOT_REQ, ROOT_ID, os("blk"), 0o060600, (8 << 8) | 17).unwrap();
        assert_eq!((blk.attr.kind, blk.attr.rdev), (FileKind::BlockDevice, (8 << 8) | 17));
        assert_eq!(errno(fs.open(&ROOT_REQ, null.node, open_flags::O_RDONLY)), Errno::ENXIO);
    } else {
        eprintln!("skipped: the root-only part of this test (device nodes, ownership) needs root");
    }
}

#[test]
fn created_files_belong_to_the_caller() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let m = mount();
    let fs = &m.fs;
    let open = fs.mkdir(&ROOT_REQ, ROOT_ID, os("open"), 0o777).unwrap();
    let user = Request { uid: 1234, gid: 5678, pid: 1 };
    let owned = |rel: &str| {
        let md = fs::symlink_metadata(m.path(rel)).unwrap();
        (md.uid(), md.gid())
    };
    let (f, o) = fs.create(&user, open.node, os("file"), 0o644, open_flags::O_RDWR).unwrap();
    assert_eq!((f.attr.uid, f.attr.gid), (1234, 5678));
    assert_eq!(owned("open/file"), (1234, 5678));
    fs.release(&user, f.node, o.handle, 0, true).unwrap();
    fs.mkdir(&user, open.node, os("dir"), 0o755).unwrap();
    assert_eq!(owned("open/dir"), (1234, 5678));
    fs.mknod(&user, open.node, os("fifo"), 0o010644, 0).unwrap();
    assert_eq!(owned("open/fifo"), (1234, 5678));
    fs.symlink(&user, open.node, os("link"), os("file")).unwrap();
    assert_eq!(owned("open/link"), (1234, 5678));
    // The backing filesystem checks permissions as the caller: the root dir is 0755 root's.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(errno(fs.mkdir(&user, ROOT_ID, os("nope"), 0o755)), Errno::EACCES);
    assert_eq!(errno(fs.create(&user, ROOT_ID, os("nope"), 0o644, open_flags::O_RDWR)), Errno::EACCES);
    // ...and gets no root powers through us.
    assert_eq!(errno(fs.mknod(&user, open.node, os("null"), 0o020666, 0x103)), Errno::EPERM);
    // The thread is root again afterwards.
    fs.mkdir(&ROOT_REQ, ROOT_ID, os("mine"), 0o755).unwrap();
    assert_eq!(owned("mine"), (0, 0));
}

#[test]
fn umask_of_the_host_does_not_strip_requested_bits() {
    let m = mount();
    let fs = &m.fs;
    // Whatever the process umask is (typically 022), the caller's mode (already masked by
    // the caller's own umask) is what the node gets.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o775).unwrap();
    assert_eq!(d.attr.perm, 0o775);
    assert_eq!(fs::metadata(m.path("d")).unwrap().mode() & 0o7777, 0o775);
    let (f, o) = fs.create(&ROOT_REQ, ROOT_ID, os("f"), 0o666, open_flags::O_RDWR).unwrap();
    fs.release(&ROOT_REQ, f.node, o.handle, 0, true).unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().mode() & 0o7777, 0o666);
    let p = fs.mknod(&ROOT_REQ, ROOT_ID, os("p"), 0o010662, 0).unwrap();
    assert_eq!(p.attr.perm, 0o662);
}

#[test]
fn create_honours_o_excl_and_never_opens_special_files() {
    let m = mount();
    let fs = &m.fs;
    write_file(fs, ROOT_ID, "f", b"old contents");
    let excl = open_flags::O_RDWR | open_flags::O_EXCL;
    assert_eq!(errno(fs.create(&ROOT_REQ, ROOT_ID, os("f"), 0o644, excl)), Errno::EEXIST);
    // Without O_EXCL an existing file is opened (and O_TRUNC truncates it).
    let (e, o) = fs.create(&ROOT_REQ, ROOT_ID, os("f"), 0o600, open_flags::O_RDWR | open_flags::O_TRUNC).unwrap();
    assert_eq!(e.attr.size, 0);
    assert_eq!(e.attr.perm, 0o644, "an existing file keeps its mode");
    fs.release(&ROOT_REQ, e.node, o.handle, 0, true).unwrap();
    // An existing FIFO must not be opened: that would block the calling thread.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        m.path("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let start = Instant::now();
    assert_eq!(errno(fs.create(&ROOT_REQ, ROOT_ID, os("fifo"), 0o644, open_flags::O_WRONLY)), Errno::ENXIO);
    assert!(start.elapsed() < Duration::from_secs(5));
    fs::create_dir(m.path("dir")).unwrap();
    assert_eq!(errno(fs.create(&ROOT_REQ, ROOT_ID, os("dir"), 0o644, open_flags::O_RDONLY)), Errno::EISDIR);
}

// ---------------------------------------------------------------------------------------
// Data

#[test]
fn written_data_reads_back_and_lands_in_the_backing_file() {
    let m = mount();
    let fs = &m.fs;
    let (e, h) = create(fs, ROOT_ID, "f");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs.write(&ROOT_REQ, e.node, h, 0, &data, open_flags::O_RDWR).unwrap(), data.len());
    assert_eq!(fs.write(&ROOT_REQ, e.node, h, 300_000, b"tail", open_flags::O_RDWR).unwrap(), 4);
    let mut buf = vec![0u8; 10];
    assert_eq!(fs.read(&ROOT_REQ, e.node, h, 199_995, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..5], &data[199_995..]);
    assert_eq!(&buf[5..], &[0; 5], "the gap reads as zeroes");
    assert_eq!(fs.read(&ROOT_REQ, e.node, h, 300_002, &mut buf).unwrap(), 2, "short read at end of file");
    assert_eq!(fs.read(&ROOT_REQ, e.node, h, 1 << 40, &mut buf).unwrap(), 0);
    fs.flush(&ROOT_REQ, e.node, h, 0).unwrap();
    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
    let backing = fs::read(m.path("f")).unwrap();
    assert_eq!(backing.len(), 300_004);
    assert_eq!(&backing[..data.len()], &data[..]);
    assert_eq!(errno(fs.read(&ROOT_REQ, e.node, h, 0, &mut buf)), Errno::EBADF, "released handles are gone");
}

#[test]
fn append_writes_land_at_the_end() {
    let m = mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "log", b"first\n");
    let h = fs.open(&ROOT_REQ, e.node, open_flags::O_WRONLY | open_flags::O_APPEND).unwrap().handle;
    // Someone else grows the file meanwhile; the append must still land after that.
    fs::write(m.path("log"), b"first\nsecond\n").unwrap();
    fs.write(&ROOT_REQ, e.node, h, 0, b"third\n", open_flags::O_WRONLY | open_flags::O_APPEND).unwrap();
    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
    assert_eq!(fs::read(m.path("log")).unwrap(), b"first\nsecond\nthird\n");
}

#[test]
fn direct_io_works_with_unaligned_caller_buffers() {
    let m = mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "d", b"");
    let flags = open_flags::O_RDWR | open_flags::O_DIRECT;
    let h = match fs.open(&ROOT_REQ, e.node, flags) {
        Ok(o) => o.handle,
        Err(err) if err.errno() == Errno::EINVAL => {
            eprintln!("skipped: the temp filesystem has no O_DIRECT");
            return;
        }
        Err(err) => panic!("{err:?}"),
    };
    let mut storage = vec![7u8; 8192 + 1];
    let unaligned = if storage.as_ptr().align_offset(4096) == 0 { &mut storage[1..] } else { &mut storage[..8192] };
    let unaligned = &mut unaligned[..8192];
    assert_eq!(fs.write(&ROOT_REQ, e.node, h, 0, unaligned, flags).unwrap(), 8192);
    unaligned.fill(0);
    assert_eq!(fs.read(&ROOT_REQ, e.node, h, 0, unaligned).unwrap(), 8192);
    assert!(unaligned.iter().all(|&b| b == 7));
    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
}

#[test]
fn punch_hole_is_visible_to_seek_hole() {
    let m = mount();
    let fs = &m.fs;
    let (e, h) = create(fs, ROOT_ID, "sparse");
    const MIB: u64 = 1 << 20;
    let data = vec![0xabu8; 3 * MIB as usize];
    fs.write(&ROOT_REQ, e.node, h, 0, &data, open_flags::O_RDWR).unwrap();
    fs.fsync(&ROOT_REQ, e.node, h, false).unwrap();
    let mode = fallocate_mode::PUNCH_HOLE | fallocate_mode::KEEP_SIZE;
    fs.fallocate(&ROOT_REQ, e.node, h, MIB, MIB, mode).unwrap();
    assert_eq!(fs.lseek(&ROOT_REQ, e.node, h, 0, Whence::Hole).unwrap(), MIB);
    assert_eq!(fs.lseek(&ROOT_REQ, e.node, h, MIB as i64, Whence::Data).unwrap(), 2 * MIB);
    assert_eq!(fs.lseek(&ROOT_REQ, e.node, h, 2 * MIB as i64, Whence::Hole).unwrap(), 3 * MIB);
    assert_eq!(errno(fs.lseek(&ROOT_REQ, e.node, h, 3 * MIB as i64, Whence::Data)), Errno::ENXIO);
    assert_eq!(errno(fs.lseek(&ROOT_REQ, e.node, h, -1, Whence::Data)), Errno::EINVAL);
    assert_eq!(errno(fs.lseek(&ROOT_REQ, e.node, h, 0, Whence::End)), Errno::EINVAL);
    let mut buf = vec![1u8; 16];
    fs.read(&ROOT_REQ, e.node, h, MIB + 100, &mut buf).unwrap();
    assert_eq!(buf, vec![0; 16]);
    assert_eq!(fs.getattr(&ROOT_REQ, e.node, Some(h)).unwrap().attr.size, 3 * MIB);
    // Plain allocation grows the file; KEEP_SIZE does not.
    fs.fallocate(&ROOT_REQ, e.node, h, 3 * MIB, MIB, 0).unwrap();
    assert_eq!(fs.getattr(&ROOT_REQ, e.node, Some(h)).unwrap().attr.size, 4 * MIB);
    fs.fallocate(&ROOT_REQ, e.node, h, 4 * MIB, MIB, fallocate_mode::KEEP_SIZE).unwrap();
    assert_eq!(fs.getattr(&ROOT_REQ, e.node, Some(h)).unwrap().attr.size, 4 * MIB);
    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
}

#[test]
fn copy_file_range_copies_between_handles() {
    let m = mount();
    let fs = &m.fs;
    let src = write_file(fs, ROOT_ID, "src", b"0123456789");
    let hin = fs.open(&ROOT_REQ, src.node, open_flags::O_RDONLY).unwrap().handle;
    let (dst, hout) = create(fs, ROOT_ID, "dst");
    assert_eq!(fs.copy_file_range(&ROOT_REQ, src.node, hin, 2, dst.node, hout, 1, 5, 0).unwrap(), 5);
    assert_eq!(errno(fs.copy_file_range(&ROOT_REQ, src.node, hin, 0, dst.node, hout, 0, 1, 1)), Errno::EINVAL);
    fs.release(&ROOT_REQ, src.node, hin, 0, true).unwrap();
    fs.release(&ROOT_REQ, dst.node, hout, 0, true).unwrap();
    assert_eq!(fs::read(m.path("dst")).unwrap(), b"\x0023456");
}

#[test]
fn setattr_changes_mode_owner_and_size() {
    let m = mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "f", b"0123456789");
    let out = fs.setattr(&ROOT_REQ, e.node, &SetAttr { mode: Some(0o4751), ..SetAttr::default() }).unwrap();
    assert_eq!(out.attr.perm, 0o4751);
    assert_eq!(fs::metadata(m.path("f")).unwrap().mode() & 0o7777, 0o4751);
    let out = fs.setattr(&ROOT_REQ, e.node, &SetAttr { size: Some(4), ..SetAttr::default() }).unwrap();
    assert_eq!(out.attr.size, 4);
    // Through a handle (ftruncate).
    let h = fs.open(&ROOT_REQ, e.node, open_flags::O_RDWR).unwrap().handle;
    let set = SetAttr { size: Some(2), handle: Some(h), ..SetAttr::default() };
    assert_eq!(fs.setattr(&ROOT_REQ, e.node, &set).unwrap().attr.size, 2);
    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"01");
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
    assert_eq!(errno(fs.setattr(&ROOT_REQ, d.node, &SetAttr { size: Some(0), ..SetAttr::default() })), Errno::EISDIR);
    if is_root() {
        let set = SetAttr { uid: Some(1234), gid: Some(5678), ..SetAttr::default() };
        let out = fs.setattr(&ROOT_REQ, e.node, &set).unwrap();
        assert_eq!((out.attr.uid, out.attr.gid), (1234, 5678));
        // chown of a symlink changes the symlink, not its target.
        let s = fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os("f")).unwrap();
        let set = SetAttr { uid: Some(42), ..SetAttr::default() };
        assert_eq!(fs.setattr(&ROOT_REQ, s.node, &set).unwrap().attr.uid, 42);
        assert_eq!(fs::symlink_metadata(m.path("s")).unwrap().uid(), 42);
        assert_eq!(fs::metadata(m.path("f")).unwrap().uid(), 1234);
    } else {
        eprintln!("skipped: the root-only part of this test (device nodes, ownership) needs root");
    }
}

#[test]
fn times_keep_nanoseconds() {
    let m = mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "f", b"x");
    let atime = Timestamp::new(1_600_000_000, 123_456_789);
    let mtime = Timestamp::new(1_700_000_000, 987_654_321);
    let set = SetAttr { atime: Some(SetTime::At(atime)), mtime: Some(SetTime::At(mtime)), ..SetAttr::default() };
    let out = fs.setattr(&ROOT_REQ, e.node, &set).unwrap();
    assert_eq!((out.attr.atime, out.attr.mtime), (atime, mtime));
    let md = fs::metadata(m.path("f")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 987_654_321));
    // Only mtime to now: atime stays (UTIME_OMIT).
    let before = Timestamp::now();
    let set = SetAttr { mtime: Some(SetTime::Now), ..SetAttr::default() };
    let out = fs.setattr(&ROOT_REQ, e.node, &set).unwrap();
    assert_eq!(out.attr.atime, atime);
    assert!(out.attr.mtime >= Timestamp::new(before.secs - 1, 0));
    // Times before the epoch too.
    let old = Timestamp::new(-1_000, 5);
    let out = fs.setattr(&ROOT_REQ, e.node, &SetAttr { mtime: Some(SetTime::At(old)), ..SetAttr::default() });
    assert_eq!(out.unwrap().attr.mtime, old);
    // On a symlink the link's own times change, not the target's.
    let s = fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os("f")).unwrap();
    let t = Timestamp::new(1_500_000_000, 42);
    let out = fs.setattr(&ROOT_REQ, s.node, &SetAttr { mtime: Some(SetTime::At(t)), ..SetAttr::default() }).unwrap();
    assert_eq!(out.attr.mtime, t);
    assert_eq!(fs::symlink_metadata(m.path("s")).unwrap().mtime_nsec(), 42);
    assert_eq!(fs::metadata(m.path("f")).unwrap().mtime(), -1_000);
    // On a directory.
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
    let out = fs.setattr(&ROOT_REQ, d.node, &SetAttr { atime: Some(SetTime::At(t)), ..SetAttr::default() }).unwrap();
    assert_eq!(out.attr.atime, t);
}

#[test]
fn readlink_answers_erange_when_the_target_does_not_fit() {
    let m = mount();
    let fs = &m.fs;
    let target = "a/../b/c/../../".repeat(10);
    let s = fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os(&target)).unwrap();
    assert_eq!(s.attr.kind, FileKind::Symlink);
    assert_eq!(fs::read_link(m.path("s")).unwrap().to_str().unwrap(), target, "stored verbatim");
    let mut exact = vec![0u8; target.len()];
    assert_eq!(fs.readlink(&ROOT_REQ, s.node, &mut exact).unwrap(), target.len());
    assert_eq!(exact, target.as_bytes());
    let mut small = vec![0u8; target.len() - 1];
    assert_eq!(errno(fs.readlink(&ROOT_REQ, s.node, &mut small)), Errno::ERANGE);
    let f = write_file(fs, ROOT_ID, "f", b"");
    assert_eq!(errno(fs.readlink(&ROOT_REQ, f.node, &mut exact)), Errno::EINVAL);
}

#[test]
fn xattrs_round_trip() {
    let m = mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "f", b"x");
    let name = os("user.durable-io.test");
    match fs.setxattr(&ROOT_REQ, e.node, name, b"value", 0) {
        Ok(()) => {}
        Err(err) if err.errno() == Errno::ENOTSUP => {
            eprintln!("skipped: the temp filesystem has no user xattrs");
            return;
        }
        Err(err) => panic!("{err:?}"),
    }
    assert_eq!(fs.getxattr(&ROOT_REQ, e.node, name, &mut []).unwrap(), 5, "size query");
    let mut buf = [0u8; 64];
    let n = fs.getxattr(&ROOT_REQ, e.node, name, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"value");
    assert_eq!(errno(fs.getxattr(&ROOT_REQ, e.node, name, &mut [0u8; 2])), Errno::ERANGE);
    let len = fs.listxattr(&ROOT_REQ, e.node, &mut []).unwrap();
    let mut list = vec![0u8; len];
    assert_eq!(fs.listxattr(&ROOT_REQ, e.node, &mut list).unwrap(), len);
    assert!(list.split(|&b| b == 0).any(|n| n == b"user.durable-io.test"), "{list:?}");
    let create = xattr_flags::XATTR_CREATE;
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, e.node, name, b"other", create)), Errno::EEXIST);
    let replace = xattr_flags::XATTR_REPLACE;
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, e.node, os("user.none"), b"v", replace)), Errno::ENODATA);
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, e.node, name, b"v", 0x100)), Errno::EINVAL);
    fs.removexattr(&ROOT_REQ, e.node, name).unwrap();
    assert_eq!(errno(fs.getxattr(&ROOT_REQ, e.node, name, &mut buf)), Errno::ENODATA);
    assert_eq!(errno(fs.removexattr(&ROOT_REQ, e.node, name)), Errno::ENODATA);
    // Directories too.
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
    fs.setxattr(&ROOT_REQ, d.node, name, b"dir", 0).unwrap();
    let n = fs.getxattr(&ROOT_REQ, d.node, name, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"dir");
    // A symlink's xattrs are its own, never its target's; Linux refuses user.* on it.
    let s = fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os("f")).unwrap();
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, s.node, name, b"v", 0)), Errno::EPERM);
    if is_root() {
        let trusted = os("trusted.durable-io");
        fs.setxattr(&ROOT_REQ, s.node, trusted, b"link", 0).unwrap();
        let n = fs.getxattr(&ROOT_REQ, s.node, trusted, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"link");
        assert_eq!(errno(fs.getxattr(&ROOT_REQ, e.node, trusted, &mut buf)), Errno::ENODATA);
        // FIFOs are not opened to reach their xattrs (that would block).
        let p = fs.mknod(&ROOT_REQ, ROOT_ID, os("p"), 0o010644, 0).unwrap();
        fs.setxattr(&ROOT_REQ, p.node, trusted, b"fifo", 0).unwrap();
        let n = fs.getxattr(&ROOT_REQ, p.node, trusted, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"fifo");
    } else {
        eprintln!("skipped: the root-only part of this test (device nodes, ownership) needs root");
    }
}

#[test]
fn statfs_reports_the_backing_filesystem() {
    let m = mount();
    let st = m.fs.statfs(&ROOT_REQ, ROOT_ID).unwrap();
    assert!(st.blocks > 0 && st.bsize > 0 && st.frsize > 0);
    assert_eq!(st.namelen, 255);
}

// ---------------------------------------------------------------------------------------
// Directories

#[test]
fn readdir_resumes_from_cookie_after_full_sink() {
    let m = mount();
    let fs = &m.fs;
    let mut expected: Vec<String> = (0..150).map(|i| format!("file-{i:03}")).collect();
    for name in &expected {
        fs::write(m.path(name), b"").unwrap();
    }
    fs::create_dir(m.path("subdir")).unwrap();
    std::os::unix::fs::symlink("x", m.path("link")).unwrap();
    expected.extend(["subdir", "link", ".", ".."].map(String::from));
    expected.sort();
    for page in [1, 7, 1000] {
        let entries = list(fs, ROOT_ID, page);
        let mut names: Vec<String> = entries.iter().map(|(n, _, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names, expected, "page size {page}");
        let kind = |n: &str| entries.iter().find(|(name, _, _)| name == n).unwrap().1;
        assert_eq!(kind("subdir"), FileKind::Directory);
        assert_eq!(kind("link"), FileKind::Symlink);
        assert_eq!(kind("file-000"), FileKind::File);
        let ino = entries.iter().find(|(name, _, _)| name == "file-007").unwrap().2;
        assert_eq!(ino, fs::metadata(m.path("file-007")).unwrap().ino());
    }
    // A sink that is full right away takes nothing and the listing can still start over.
    let h = fs.opendir(&ROOT_REQ, ROOT_ID, 0).unwrap().handle;
    let mut none = Collect { cap: 0, got: Vec::new() };
    fs.readdir(&ROOT_REQ, ROOT_ID, h, 0, &mut none).unwrap();
    assert!(none.got.is_empty());
    // Re-reading from an earlier cookie repeats exactly what followed it.
    let mut first = Collect { cap: 20, got: Vec::new() };
    fs.readdir(&ROOT_REQ, ROOT_ID, h, 0, &mut first).unwrap();
    let mut again = Collect { cap: 10, got: Vec::new() };
    fs.readdir(&ROOT_REQ, ROOT_ID, h, first.got[9].2, &mut again).unwrap();
    assert_eq!(again.got, first.got[10..20]);
    assert!(first.got.iter().all(|e| e.2 != 0), "cookies are never 0");
    fs.releasedir(&ROOT_REQ, ROOT_ID, h).unwrap();
    assert_eq!(errno(fs.releasedir(&ROOT_REQ, ROOT_ID, h)), Errno::EBADF);
}

#[test]
fn opendir_refuses_files_and_fsyncdir_syncs() {
    let m = mount();
    let fs = &m.fs;
    let f = write_file(fs, ROOT_ID, "f", b"");
    assert_eq!(errno(fs.opendir(&ROOT_REQ, f.node, 0)), Errno::ENOTDIR);
    let h = fs.opendir(&ROOT_REQ, ROOT_ID, 0).unwrap().handle;
    fs.fsyncdir(&ROOT_REQ, ROOT_ID, h, false).unwrap();
    fs.fsyncdir(&ROOT_REQ, ROOT_ID, h, true).unwrap();
    assert_eq!(fs.getattr(&ROOT_REQ, ROOT_ID, Some(h)).unwrap().attr.kind, FileKind::Directory);
    fs.releasedir(&ROOT_REQ, ROOT_ID, h).unwrap();
}

// ---------------------------------------------------------------------------------------
// Read-only mounts and durability modes

#[test]
fn read_only_mount_refuses_changes_with_erofs() {
    let m = mount_with("close", MountOptions { read_only: true });
    let fs = &m.fs;
    fs::write(m.path("f"), b"data").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let f = lookup(fs, ROOT_ID, "f");
    let rofs = Errno::EROFS;
    assert_eq!(errno(fs.create(&ROOT_REQ, ROOT_ID, os("n"), 0o644, open_flags::O_RDWR)), rofs);
    assert_eq!(errno(fs.mkdir(&ROOT_REQ, ROOT_ID, os("n"), 0o755)), rofs);
    assert_eq!(errno(fs.mknod(&ROOT_REQ, ROOT_ID, os("n"), 0o010644, 0)), rofs);
    assert_eq!(errno(fs.symlink(&ROOT_REQ, ROOT_ID, os("n"), os("f"))), rofs);
    assert_eq!(errno(fs.link(&ROOT_REQ, f.node, ROOT_ID, os("n"))), rofs);
    assert_eq!(errno(fs.unlink(&ROOT_REQ, ROOT_ID, os("f"))), rofs);
    assert_eq!(errno(fs.rmdir(&ROOT_REQ, ROOT_ID, os("d"))), rofs);
    assert_eq!(errno(fs.rename(&ROOT_REQ, ROOT_ID, os("f"), ROOT_ID, os("g"), RenameFlags::empty())), rofs);
    assert_eq!(errno(fs.open(&ROOT_REQ, f.node, open_flags::O_WRONLY)), rofs);
    assert_eq!(errno(fs.open(&ROOT_REQ, f.node, open_flags::O_RDWR)), rofs);
    assert_eq!(errno(fs.open(&ROOT_REQ, f.node, open_flags::O_RDONLY | open_flags::O_TRUNC)), rofs);
    assert_eq!(errno(fs.setattr(&ROOT_REQ, f.node, &SetAttr { size: Some(0), ..SetAttr::default() })), rofs);
    assert_eq!(errno(fs.setattr(&ROOT_REQ, f.node, &SetAttr { mode: Some(0o600), ..SetAttr::default() })), rofs);
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, f.node, os("user.x"), b"v", 0)), rofs);
    assert_eq!(errno(fs.removexattr(&ROOT_REQ, f.node, os("user.x"))), rofs);
    // Reading works, and so does a no-op setattr.
    assert_eq!(read_all(fs, f.node), b"data");
    let h = fs.open(&ROOT_REQ, f.node, open_flags::O_RDONLY).unwrap().handle;
    assert_eq!(errno(fs.write(&ROOT_REQ, f.node, h, 0, b"x", 0)), rofs);
    assert_eq!(errno(fs.fallocate(&ROOT_REQ, f.node, h, 0, 10, 0)), rofs);
    fs.release(&ROOT_REQ, f.node, h, 0, false).unwrap();
    assert!(fs.setattr(&ROOT_REQ, f.node, &SetAttr::default()).is_ok());
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
}

/// The open-file flags of the process's writable fds for `path`, from /proc/self/fdinfo.
fn backing_open_flags(path: &std::path::Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if fs::read_link(entry.path()).ok().as_deref() == Some(path) {
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_str().unwrap()));
            let Ok(info) = info else { continue };
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            // Only fds opened for writing (node fds are O_PATH, read handles O_RDONLY).
            if flags & open_flags::O_ACCMODE as u32 != 0 && flags & libc::O_PATH as u32 == 0 {
                found.push(flags);
            }
        }
    }
    found
}

#[test]
fn every_durability_mode_serves_all_operations() {
    for mode in ["kernel", "close", "always"] {
        let m = mount_with(mode, MountOptions::default());
        let fs = &m.fs;
        let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap();
        let (f, h) = create(fs, d.node, "f");
        fs.write(&ROOT_REQ, f.node, h, 0, b"hello", open_flags::O_RDWR).unwrap();
        let dsync = open_flags::O_DSYNC as u32;
        let writable_fds = backing_open_flags(&m.path("d/f"));
        assert!(!writable_fds.is_empty(), "{mode}");
        for flags in writable_fds {
            assert_eq!(flags & dsync == dsync, mode == "always", "{mode}: backing flags {flags:o}");
            assert_eq!(flags & libc::O_SYNC as u32 & !dsync, 0, "{mode}: O_DSYNC, not O_SYNC: {flags:o}");
        }
        fs.flush(&ROOT_REQ, f.node, h, 0).unwrap();
        fs.fsync(&ROOT_REQ, f.node, h, true).unwrap();
        fs.fsync(&ROOT_REQ, f.node, h, false).unwrap();
        fs.setattr(&ROOT_REQ, f.node, &SetAttr { size: Some(4), ..SetAttr::default() }).unwrap();
        fs.fallocate(&ROOT_REQ, f.node, h, 0, 8192, fallocate_mode::KEEP_SIZE).unwrap();
        fs.release(&ROOT_REQ, f.node, h, 0, true).unwrap();
        fs.link(&ROOT_REQ, f.node, ROOT_ID, os("hard")).unwrap();
        fs.symlink(&ROOT_REQ, ROOT_ID, os("s"), os("d/f")).unwrap();
        fs.mknod(&ROOT_REQ, ROOT_ID, os("p"), 0o010644, 0).unwrap();
        fs.rename(&ROOT_REQ, d.node, os("f"), ROOT_ID, os("g"), RenameFlags::empty()).unwrap();
        fs.rename(&ROOT_REQ, ROOT_ID, os("g"), ROOT_ID, os("h"), RenameFlags::empty()).unwrap();
        fs.setxattr(&ROOT_REQ, f.node, os("user.k"), b"v", 0).ok();
        fs.unlink(&ROOT_REQ, ROOT_ID, os("hard")).unwrap();
        fs.rmdir(&ROOT_REQ, ROOT_ID, os("d")).unwrap();
        let h = fs.open(&ROOT_REQ, f.node, open_flags::O_WRONLY | open_flags::O_TRUNC).unwrap().handle;
        fs.write(&ROOT_REQ, f.node, h, 0, b"again", 0).unwrap();
        fs.release(&ROOT_REQ, f.node, h, 0, true).unwrap();
        assert_eq!(fs::read(m.path("h")).unwrap(), b"again", "{mode}");
        assert_eq!(fs::read_link(m.path("s")).unwrap().to_str(), Some("d/f"));
    }
}

#[test]
fn fsync_mode_always_syncs_parent_directory() {
    for mode in ["kernel", "close", "always"] {
        let m = mount_with(mode, MountOptions::default());
        let fs = &m.fs;
        let (always, close) = (mode == "always", mode == "close");
        // Checks that `op` made (file, dir) syncs, as counted by the plugin.
        let expect = |what: &str, files: u64, dirs: u64, op: &mut dyn FnMut()| {
            let (f0, d0) = fs.sync_counts();
            op();
            let (f1, d1) = fs.sync_counts();
            assert_eq!((f1 - f0, d1 - d0), (files, dirs), "{mode}: {what}");
        };
        let a = |n: u64| if always { n } else { 0 };
        let mut d = None;
        expect("mkdir syncs the new dir and its parent", 0, a(2), &mut || {
            d = Some(fs.mkdir(&ROOT_REQ, ROOT_ID, os("d"), 0o755).unwrap());
        });
        let d = d.unwrap();
        let mut fh = None;
        expect("create syncs the new file and its parent", a(1), a(1), &mut || fh = Some(create(fs, d.node, "f")));
        let (f, h) = fh.unwrap();
        expect("writes go through O_DSYNC, no extra sync", 0, 0, &mut || {
            fs.write(&ROOT_REQ, f.node, h, 0, b"data", 0).unwrap();
        });
        expect("a caller's fsync always syncs", 1, 0, &mut || fs.fsync(&ROOT_REQ, f.node, h, true).unwrap());
        let c = u64::from(close);
        // The handle's descriptor was handed over for passthrough (not under `always`), so
        // writes may bypass the plugin: `close` mode syncs it on every close regardless.
        expect("a passthrough handle is synced on close even after fsync", c, 0, &mut || {
            fs.flush(&ROOT_REQ, f.node, h, 0).unwrap()
        });
        fs.write(&ROOT_REQ, f.node, h, 4, b"more", 0).unwrap();
        // Again at release: a shared mapping can still write after the last close.
        expect("close mode syncs a written file on close and on release", 2 * c, 0, &mut || {
            fs.flush(&ROOT_REQ, f.node, h, 0).unwrap();
            fs.release(&ROOT_REQ, f.node, h, 0, true).unwrap();
        });
        expect("setattr syncs the inode", a(1), 0, &mut || {
            fs.setattr(&ROOT_REQ, f.node, &SetAttr { size: Some(2), ..SetAttr::default() }).unwrap();
        });
        expect("rename syncs both parents", 0, a(2), &mut || {
            fs.rename(&ROOT_REQ, d.node, os("f"), ROOT_ID, os("g"), RenameFlags::empty()).unwrap();
        });
        expect("rename within one directory syncs it once", 0, a(1), &mut || {
            fs.rename(&ROOT_REQ, ROOT_ID, os("g"), ROOT_ID, os("h"), RenameFlags::empty()).unwrap();
        });
        expect("link syncs the inode and the new parent", a(1), a(1), &mut || {
            fs.link(&ROOT_REQ, f.node, d.node, os("hard")).unwrap();
        });
        expect("symlink syncs the parent", 0, a(1), &mut || {
            fs.symlink(&ROOT_REQ, d.node, os("s"), os("h")).unwrap();
        });
        expect("mknod syncs the parent", 0, a(1), &mut || {
            fs.mknod(&ROOT_REQ, d.node, os("p"), 0o010644, 0).unwrap();
        });
        expect("unlink syncs the parent", 0, a(1), &mut || fs.unlink(&ROOT_REQ, d.node, os("hard")).unwrap());
        let hd = fs.opendir(&ROOT_REQ, d.node, 0).unwrap().handle;
        expect("a caller's fsyncdir always syncs", 0, 1, &mut || fs.fsyncdir(&ROOT_REQ, d.node, hd, false).unwrap());
        fs.releasedir(&ROOT_REQ, d.node, hd).unwrap();
        expect("read-only opens and closes sync nothing", 0, 0, &mut || {
            read_all(fs, f.node);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency

#[test]
fn many_threads_at_once() {
    let m = mount();
    let fs = &m.fs;
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                let d = fs.mkdir(&ROOT_REQ, ROOT_ID, OsStr::new(&format!("t{t}")), 0o755).unwrap();
                for i in 0..50 {
                    let name = format!("f{i}");
                    let (e, h) = create(fs, d.node, &name);
                    let data = format!("{t}:{i}");
                    fs.write(&ROOT_REQ, e.node, h, 0, data.as_bytes(), 0).unwrap();
                    fs.release(&ROOT_REQ, e.node, h, 0, true).unwrap();
                    assert_eq!(read_all(fs, lookup(fs, d.node, &name).node), data.as_bytes());
                    // A shared file everyone looks up and forgets.
                    if let Ok(e) = fs.lookup(&ROOT_REQ, ROOT_ID, os("t0")) {
                        fs.getattr(&ROOT_REQ, e.node, None).unwrap();
                        fs.forget(e.node, 1);
                    }
                }
                assert_eq!(list(fs, d.node, 13).len(), 52);
            });
        }
    });
}

// ---------------------------------------------------------------------------------------
// Crash durability: a child process writes and fsyncs through the trait in `always` mode,
// reports back, and is SIGKILLed; what it was told is durable must be in the backing dir.

const CRASH_DIR_ENV: &str = "DURABLE_IO_CRASH_DIR";

#[test]
#[ignore = "helper: run by data_written_before_sigkill_is_in_the_backing_directory in a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else { return };
    let dir = std::path::PathBuf::from(dir);
    let fs = DurableIoPlugin::open(&config(&dir, "always"), &MountOptions::default()).unwrap();
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("sub"), 0o755).unwrap();
    let (e, o) = fs.create(&ROOT_REQ, d.node, os("data"), 0o644, open_flags::O_RDWR).unwrap();
    let payload = vec![0x5au8; 1 << 20];
    fs.write(&ROOT_REQ, e.node, o.handle, 0, &payload, 0).unwrap();
    fs.fsync(&ROOT_REQ, e.node, o.handle, false).unwrap();
    // Written (durable on return in `always` mode) but never fsynced or closed.
    let (e2, o2) = fs.create(&ROOT_REQ, d.node, os("unclosed"), 0o644, open_flags::O_RDWR).unwrap();
    fs.write(&ROOT_REQ, e2.node, o2.handle, 0, b"unclosed", 0).unwrap();
    println!("DURABLE-IO-READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn data_written_before_sigkill_is_in_the_backing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("DURABLE-IO-READY"));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(ready, "the child never got ready (status {status:?})");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let data = fs::read(dir.path().join("sub/data")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert!(data.iter().all(|&b| b == 0x5a));
    assert_eq!(fs::read(dir.path().join("sub/unclosed")).unwrap(), b"unclosed");
}

#[test]
fn open_files_are_handed_over_for_passthrough_except_under_always() {
    for mode in ["kernel", "close", "always"] {
        let m = mount_with(mode, MountOptions::default());
        let fs = &m.fs;
        let pass = mode != "always";
        assert_eq!(fs.capabilities().backing_files, pass, "{mode}");
        let (e, o) = fs.create(&ROOT_REQ, ROOT_ID, os("f"), 0o644, open_flags::O_RDWR).unwrap();
        let opened = fs.open(&ROOT_REQ, e.node, open_flags::O_RDONLY).unwrap();
        for (what, o) in [("create", o), ("open", opened)] {
            assert_eq!(o.backing_fd.is_some(), pass, "{mode}: {what}");
            if let Some(fd) = o.backing_fd {
                // The descriptor is of the very file, readable as long as the handle lives.
                let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
                assert_eq!(link, m.path("f"), "{mode}: {what}");
            }
            fs.release(&ROOT_REQ, e.node, o.handle, 0, true).unwrap();
        }
    }
}
