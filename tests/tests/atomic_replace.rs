//! durable-io's `atomic_replace`, through a real `plugfs mount`: a file opened for writing
//! with `O_TRUNC` is replaced by a new inode at the last release, readers of the old file
//! keep the old content, a killed host leaves the old content, and a file with several
//! hard links is truncated in place.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugfs_tests::{Host, target_dir, wait_until};

// The host is dropped (and unmounted) before the scratch directory goes.
struct Setup {
    host: Host,
    scratch: tempfile::TempDir,
    mnt: PathBuf,
    root: PathBuf,
}

fn config(scratch: &Path) -> PathBuf {
    let config = scratch.join("plugfs.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nplugin_dirs = [{:?}]\nlog = \"info\"\n[[mount]]\nname = \"d\"\nplugin = \"durable-io\"\n\
             mountpoint = \"mnt\"\ncreate_mountpoint = true\n[mount.config]\nroot = \"data\"\ncreate_root = true\n\
             atomic_replace = true\n",
            target_dir().to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

fn mount() -> Setup {
    let scratch = tempfile::tempdir().unwrap();
    let host = Host::start(&config(scratch.path()), &[&scratch.path().join("mnt")]);
    let (mnt, root) = (scratch.path().join("mnt"), scratch.path().join("data"));
    Setup { host, scratch, mnt, root }
}

/// Names in `dir` that look like replace temporaries.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".plugfs-replace-"))
        .collect()
}

#[test]
fn readers_of_the_old_file_keep_it_and_new_opens_see_the_new_one() {
    let s = mount();
    let path = s.mnt.join("config");
    std::fs::write(&path, b"old content, rather long").unwrap();
    let old_ino = std::fs::metadata(s.root.join("config")).unwrap().ino();

    let mut reader = std::fs::File::open(&path).unwrap();
    let mut first = [0u8; 3];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"old");

    let mut writer = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    writer.write_all(b"new").unwrap();
    // Nothing replaced yet: the old content is still under the name.
    assert_eq!(std::fs::read(s.root.join("config")).unwrap(), b"old content, rather long");
    writer.write_all(b" content").unwrap();
    drop(writer);

    // The replace happens at the release, which the kernel sends just after the close.
    let replaced = wait_until(Duration::from_secs(5), || std::fs::read(&path).unwrap() == b"new content");
    assert!(
        replaced,
        "a new open reads the new content: {:?}",
        String::from_utf8_lossy(&std::fs::read(&path).unwrap())
    );
    assert_ne!(std::fs::metadata(s.root.join("config")).unwrap().ino(), old_ino, "a new inode");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 11);

    // The reader still has the old file.
    let mut rest = Vec::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"old content, rather long");

    assert!(temporaries(&s.root).is_empty(), "{:?}", temporaries(&s.root));
    assert!(temporaries(&s.mnt).is_empty());
    // A second replace of the new file works the same way.
    std::fs::write(&path, b"third").unwrap();
    assert!(wait_until(Duration::from_secs(5), || std::fs::read(&path).unwrap() == b"third"));
    drop(s.host);
    drop(s.scratch);
}

#[test]
fn a_killed_host_leaves_the_old_content_and_no_temporaries() {
    let mut s = mount();
    let path = s.mnt.join("doc");
    std::fs::write(&path, b"the old version").unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    writer.write_all(b"half of the ne").unwrap();
    s.host.signal_and_wait(libc::SIGKILL).expect("plugfs dies");
    drop(writer);
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&s.mnt)
        .stderr(std::process::Stdio::null())
        .status();

    assert_eq!(std::fs::read(s.root.join("doc")).unwrap(), b"the old version");
    // A leftover of a crash between link and rename is removed when the plugin opens.
    std::fs::write(s.root.join(".plugfs-replace-1-2-3"), b"half").unwrap();
    let host = Host::start(&config(s.scratch.path()), &[&s.mnt]);
    assert_eq!(std::fs::read(&path).unwrap(), b"the old version");
    assert!(temporaries(&s.root).is_empty(), "{:?}", temporaries(&s.root));
    assert!(temporaries(&s.mnt).is_empty());
    drop(host);
}

#[test]
fn a_file_with_two_links_is_truncated_in_place() {
    let s = mount();
    let path = s.mnt.join("a");
    std::fs::write(&path, b"shared old").unwrap();
    std::fs::hard_link(&path, s.mnt.join("b")).unwrap();
    let ino = std::fs::metadata(s.root.join("a")).unwrap().ino();
    std::fs::write(&path, b"shared new").unwrap();
    assert_eq!(std::fs::read(s.mnt.join("b")).unwrap(), b"shared new", "the other link sees it at once");
    assert_eq!(std::fs::metadata(s.root.join("a")).unwrap().ino(), ino, "the same inode");
    assert_eq!(std::fs::metadata(s.root.join("a")).unwrap().nlink(), 2);
}
