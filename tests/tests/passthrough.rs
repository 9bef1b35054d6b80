//! Kernel FUSE passthrough with durable-io: the plugin hands its backing descriptors over,
//! the FUSE frontend registers them, and file data then bypasses the daemon. The mounts
//! are made in this process (as the host makes them) so the frontend's request counts can
//! be read. Needs root (CAP_SYS_ADMIN) and a kernel with FUSE passthrough (6.9 or later).

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};

use plugfs_tests::DurableMount;

/// durable-io with `durability` set, through the frontend in this process.
fn mounted(durability: &str, passthrough: bool) -> DurableMount {
    DurableMount::new(&format!("durability = {durability:?}"), passthrough)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// Writes 3 MiB in 1 MiB blocks, rewrites a piece in the middle, reads it all back through
/// a fresh open, and returns what was read.
fn write_and_read_back(m: &DurableMount) -> Vec<u8> {
    let data = pattern(3 << 20);
    let mut f = std::fs::File::create(m.mnt("f")).unwrap();
    for block in data.chunks(1 << 20) {
        f.write_all(block).unwrap();
    }
    f.write_all_at(b"middle", 1_500_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut back = Vec::new();
    std::fs::File::open(m.mnt("f")).unwrap().read_to_end(&mut back).unwrap();
    back
}

#[test]
fn reads_and_writes_of_a_passthrough_file_never_reach_the_frontend_and_the_data_is_the_same() {
    let mut expected = pattern(3 << 20);
    expected[1_500_000..1_500_006].copy_from_slice(b"middle");

    let on = mounted("close", true);
    let through = write_and_read_back(&on);
    assert!(through == expected, "passthrough read back other data");
    assert!(std::fs::read(on.data("f")).unwrap() == expected, "passthrough wrote other data to the backing file");
    let counts = on.mount().data_requests();
    assert_eq!((counts.reads, counts.writes), (0, 0), "{counts:?}");
    assert!(counts.passthrough_opens >= 2, "{counts:?}");
    on.wait_released();
    assert_eq!(on.mount().backing_files(), 0, "backing ids outlive their handles");

    let off = mounted("close", false);
    let served = write_and_read_back(&off);
    assert!(served == expected, "the daemon read back other data");
    assert!(std::fs::read(off.data("f")).unwrap() == expected);
    let counts = off.mount().data_requests();
    assert!(counts.reads > 0 && counts.writes > 0 && counts.passthrough_opens == 0, "{counts:?}");
}

#[test]
fn under_always_durability_writes_go_through_the_plugin_not_passthrough() {
    // The kernel would open its own backing file with the caller's flags, without the
    // O_DSYNC that makes each write durable; so durable-io hands no descriptor over.
    let m = mounted("always", true);
    std::fs::write(m.mnt("f"), b"synced on every write").unwrap();
    let counts = m.mount().data_requests();
    assert!(counts.writes > 0 && counts.passthrough_opens == 0, "{counts:?}");
    assert_eq!(std::fs::read(m.data("f")).unwrap(), b"synced on every write");
}

#[test]
fn two_opens_of_one_file_share_a_backing_file_that_closes_with_the_last() {
    let m = mounted("kernel", true);
    std::fs::write(m.mnt("f"), b"0123456789").unwrap();
    m.wait_released();
    let a = std::fs::File::open(m.mnt("f")).unwrap();
    let b = std::fs::OpenOptions::new().write(true).open(m.mnt("f")).unwrap();
    b.write_all_at(b"ab", 2).unwrap();
    let mut buf = [0u8; 10];
    a.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"01ab456789");
    assert_eq!(m.mount().backing_files(), 1);
    drop(a);
    let counts = m.mount().data_requests();
    assert_eq!((counts.reads, counts.writes), (0, 0), "{counts:?}");
    // Still registered while `b` is open.
    assert_eq!(m.mount().backing_files(), 1);
    drop(b);
    m.wait_released();
    assert_eq!(m.mount().backing_files(), 0);
}

#[test]
fn mmap_of_a_passthrough_file_reads_and_writes_the_backing_file() {
    let m = mounted("close", true);
    let len = 64 * 1024;
    std::fs::write(m.mnt("f"), pattern(len)).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.mnt("f")).unwrap();
    // SAFETY: a fresh shared mapping of `len` bytes of an open file, unmapped below; the
    // slice is used only while it is mapped.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let map = std::slice::from_raw_parts_mut(p as *mut u8, len);
        assert!(map[..] == pattern(len)[..], "mapped other data");
        map[100..105].copy_from_slice(b"mmap!");
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, len), 0);
    }
    drop(f);
    let backing = std::fs::read(m.data("f")).unwrap();
    assert_eq!(&backing[100..105], b"mmap!");
    assert_eq!(&backing[..100], &pattern(len)[..100]);
    let counts = m.mount().data_requests();
    assert_eq!((counts.reads, counts.writes), (0, 0), "{counts:?}");
    assert!(counts.passthrough_opens >= 2, "{counts:?}");
}

#[test]
fn without_passthrough_writes_cost_no_security_capability_lookup_and_still_clear_suid() {
    // Without passthrough the frontend asks for FUSE_HANDLE_KILLPRIV_V2 and clears
    // privileges itself, so the kernel sends no GETXATTR of security.capability before
    // each write(2). With passthrough it cannot (the kernel writes the backing file as
    // the mounter), and the kernel asks before every write.
    for passthrough in [false, true] {
        let m = mounted("kernel", passthrough);
        let mut f = std::fs::File::create(m.mnt("f")).unwrap();
        for block in pattern(16 << 16).chunks(1 << 16) {
            f.write_all(block).unwrap();
        }
        drop(f);
        let counts = m.mount().data_requests();
        if passthrough {
            assert!(counts.getxattrs >= 16, "{counts:?}");
        } else {
            assert!(counts.writes >= 16 && counts.getxattrs <= 1, "{counts:?}");
        }
        assert_eq!(std::fs::read(m.data("f")).unwrap(), pattern(16 << 16));

        // A file capability goes with the first write by anyone (root here), as the
        // kernel does it: a capability set (version 2, CAP_NET_RAW permitted) on the
        // backing file, written through the mount.
        let caps: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        xattr_set(&m.data("f"), "security.capability", &caps);
        let f = std::fs::OpenOptions::new().write(true).open(m.mnt("f")).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        drop(f);
        assert!(!xattr_has(&m.data("f"), "security.capability"), "passthrough = {passthrough}");

        // root (CAP_FSETID) keeps set-user-ID when it writes, as on a local filesystem.
        std::fs::set_permissions(m.mnt("f"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(m.mnt("f")).unwrap();
        f.write_all_at(b"y", 0).unwrap();
        drop(f);
        let mode = std::fs::metadata(m.data("f")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o4755, "passthrough = {passthrough}");
    }
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) {
    let (p, n) = (cstr(path.as_os_str().as_encoded_bytes()), cstr(name.as_bytes()));
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn xattr_has(path: &std::path::Path, name: &str) -> bool {
    let (p, n) = (cstr(path.as_os_str().as_encoded_bytes()), cstr(name.as_bytes()));
    // SAFETY: valid NUL-terminated strings; a size query (no buffer).
    unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

fn cstr(bytes: &[u8]) -> std::ffi::CString {
    std::ffi::CString::new(bytes).unwrap()
}

#[test]
fn durable_io_passes_the_conformance_suite_through_fuse_with_and_without_passthrough() {
    for passthrough in [true, false] {
        let m = mounted("close", passthrough);
        let caps = m.library().info().capabilities;
        let report = plugfs_conformance::run_mounted(&m.mnt(""), &caps, Some((65534, 65534)));
        assert!(report.ok(), "passthrough = {passthrough}: {}", report.summary());
        let counts = m.mount().data_requests();
        assert_eq!(counts.passthrough_opens > 0, passthrough, "passthrough = {passthrough}: {counts:?}");
    }
}

#[test]
fn concurrent_opens_and_releases_of_one_file_share_its_backing_file_and_close_it_at_the_end() {
    // The table of backing ids is locked per shard of nodes and not across replies: a
    // release racing a new open of the same node must neither close the id under it nor
    // leave it registered.
    let m = mounted("kernel", true);
    std::fs::write(m.mnt("shared"), b"0123456789").unwrap();
    for i in 0..8 {
        std::fs::write(m.mnt(&format!("own{i}")), format!("file {i}")).unwrap();
    }
    std::thread::scope(|s| {
        for i in 0..8 {
            let m = &m;
            s.spawn(move || {
                for _ in 0..150 {
                    assert_eq!(std::fs::read(m.mnt("shared")).unwrap(), b"0123456789");
                    assert_eq!(std::fs::read(m.mnt(&format!("own{i}"))).unwrap(), format!("file {i}").as_bytes());
                }
            });
        }
    });
    m.wait_released();
    assert_eq!(m.mount().backing_files(), 0, "backing ids outlive their handles");
    let counts = m.mount().data_requests();
    assert_eq!((counts.reads, counts.writes), (0, 0), "{counts:?}");
    assert!(counts.passthrough_opens >= 8 * 300, "{counts:?}");
}
