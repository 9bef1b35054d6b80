//! A plugin that gives invalid answers, mounted through the kernel by the `plugfs` binary
//! beside a well-behaved one: every bad answer reaches the caller as a prompt EIO, and the
//! host keeps serving other requests and the other mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugfs_tests::{Host, target_dir};

/// Runs `f` on its own thread and fails the test if it does not finish in time: a reply
/// the kernel rejects would leave the caller hanging, not failing.
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
}

fn errno_of<T>(what: &str, r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("{what} succeeded, but the plugin's answer was invalid"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("{what}: {e}")),
    }
}

fn getxattr(path: &Path, buf_len: usize) -> std::io::Result<usize> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; buf_len];
    let n = unsafe { libc::getxattr(c.as_ptr(), c"user.a".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

#[test]
fn every_bad_answer_through_a_mount_is_a_prompt_eio_and_the_host_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bad: PathBuf = dir.path().join("bad");
    let good: PathBuf = dir.path().join("good");
    let config = dir.path().join("plugfs.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nplugin_dirs = [{:?}, {:?}]\n\
             [[mount]]\nname = \"bad\"\nplugin = \"misbehaves-fixture\"\nmountpoint = \"bad\"\ncreate_mountpoint = true\n\
             [[mount]]\nname = \"good\"\nplugin = \"memfs\"\nmountpoint = \"good\"\ncreate_mountpoint = true\n",
            plugfs_tests::fixtures_dir().to_str().unwrap(),
            target_dir().to_str().unwrap()
        ),
    )
    .unwrap();
    let mut host = Host::start(&config, &[&bad, &good]);

    for (name, want) in [
        ("errno-512", libc::EIO),
        ("errno-4096", libc::EIO),
        ("errno-huge", libc::EIO),
        ("errno-negative", libc::EPERM),
        ("node-zero", libc::EIO),
        ("root-id", libc::EIO),
        ("bad-kind", libc::EIO),
        ("bad-time", libc::EIO),
    ] {
        let path = bad.join(name);
        let got = promptly(name, move || errno_of(name, std::fs::metadata(&path)));
        assert_eq!(got, want, "stat of {name}");
    }
    let overlong = bad.join("overlong");
    let p = overlong.clone();
    assert_eq!(promptly("read", move || errno_of("read", std::fs::read(&p))), libc::EIO);
    let p = overlong.clone();
    assert_eq!(promptly("getxattr", move || errno_of("getxattr", getxattr(&p, 16))), libc::EIO);
    let p = bad.join("bad-backing");
    assert_eq!(promptly("open", move || errno_of("open", std::fs::File::open(&p))), libc::EIO);
    let p = bad.join("link");
    assert_eq!(promptly("readlink", move || errno_of("readlink", std::fs::read_link(&p))), libc::EIO);

    // Names no directory may hold never reach the caller.
    let p = bad.clone();
    let mut names: Vec<String> = promptly("readdir", move || {
        std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    });
    names.sort();
    assert_eq!(names, ["forgets", "good", "overlong"]);

    // Still serving: the same mount's good file, many times, and the other mount.
    for _ in 0..20 {
        assert_eq!(std::fs::read(bad.join("good")).unwrap(), b"hello");
        assert_eq!(errno_of("stat", std::fs::metadata(bad.join("errno-512"))), libc::EIO);
    }
    std::fs::write(good.join("file"), b"written through memfs").unwrap();
    assert_eq!(std::fs::read(good.join("file")).unwrap(), b"written through memfs");
    assert!(host.is_running(), "{}", host.stderr());

    let log = host.stderr();
    assert!(log.contains("misbehaves-fixture") && log.contains("status 4096"), "{log}");
    assert!(log.contains("an errno the kernel does not accept"), "{log}");
    assert!(log.contains("entry dropped"), "{log}");
}
