//! The s3 plugin end to end, against a real S3 server (moto, started per test on a free
//! 127.0.0.1 port and killed on drop) through real FUSE mounts made by the plugfs binary:
//! the conformance suite, interop with boto3 both ways, listings without a request per
//! file, the server cut mid-upload, a crashed host, and the errors a mount gives.
//!
//! Needs the venv of scripts/setup-s3-test-server.sh (scripts/test.sh makes it). Client
//! timeouts are short and every wait is bounded, so a broken server fails a test rather
//! than hanging it.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use plugfs_plugin_api::host::PluginLibrary;
use plugfs_plugin_api::open_flags::{O_EXCL, O_WRONLY};
use plugfs_plugin_api::{Errno, FileSystem, MountOptions, Request};
use plugfs_tests::moto::{Moto, Proxy};
use plugfs_tests::{Host, plugfs, plugin_library, target_dir, wait_until};

/// Settings every test mount uses: short timeouts and few retries, so failures are quick.
const FAST: &str = "connect_timeout = 1\nrequest_timeout = 10\nretries = 2\npart_size = \"5MiB\"\nconcurrency = 4\n";

/// [`FAST`] without the keys `extra` sets itself.
fn fast_except(extra: &str) -> String {
    FAST.lines()
        .filter(|l| !extra.lines().any(|e| e.split('=').next().map(str::trim) == l.split('=').next().map(str::trim)))
        .map(|l| format!("{l}\n"))
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    moto: Moto,
}

impl Setup {
    fn new(bucket: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        // The unprivileged user of the permission checks must be able to reach the mount.
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let moto = Moto::start();
        let (code, out) = moto.python("s3.create_bucket(Bucket=sys.argv[1])", &[bucket]);
        assert_eq!(code, 0, "create_bucket: {out}");
        Setup { dir, moto }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, endpoint: &str, bucket: &str, extra: &str) -> (PathBuf, PathBuf) {
        let mnt = self.path("mnt");
        let config = self.path("plugfs.toml");
        std::fs::write(
            &config,
            format!(
                "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"s3\"\nplugin = \"s3\"\nmountpoint = \"mnt\"\n\
                 create_mountpoint = true\n[mount.options]\nallow_other = true\n[mount.config]\nbucket = {bucket:?}\n\
                 endpoint = {endpoint:?}\nallow_http = true\npath_style = true\naccess_key_id = \"test\"\n\
                 secret_access_key = \"sekrit-never-shown\"\n{}{extra}\n",
                target_dir().to_str().unwrap(),
                fast_except(extra),
            ),
        )
        .unwrap();
        (config, mnt)
    }

    /// Mounts `bucket` through `endpoint` (moto itself, or a proxy in front of it).
    fn mount_at(&self, endpoint: &str, bucket: &str, extra: &str) -> (Host, PathBuf) {
        let (config, mnt) = self.config(endpoint, bucket, extra);
        (Host::start(&config, &[&mnt]), mnt)
    }

    fn mount(&self, bucket: &str, extra: &str) -> (Host, PathBuf) {
        self.mount_at(&self.moto.endpoint(), bucket, extra)
    }

    fn py(&self, code: &str, args: &[&str]) -> String {
        let (status, out) = self.moto.python(code, args);
        assert_eq!(status, 0, "python failed:\n{out}");
        out
    }
}

fn stop(mut host: Host) {
    let status = host.signal_and_wait(libc::SIGTERM).expect("plugfs exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn md5_of(s: &Setup, bucket: &str, key: &str) -> String {
    s.py("import hashlib; print(hashlib.md5(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read()).hexdigest())", &[bucket, key])
        .trim()
        .to_string()
}

fn md5_local(data: &[u8]) -> String {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn the_conformance_suite_passes_through_a_mount_as_root_and_as_an_unprivileged_user() {
    let s = Setup::new("conformance");
    let (host, mnt) = s.mount("conformance", "metadata_ttl = 1");
    let caps = PluginLibrary::load(&plugin_library("plugfs-s3")).unwrap().info().capabilities;
    let report = plugfs_conformance::run_mounted(&mnt, &caps, Some((65534, 65534)));
    assert!(report.ok() && !report.passed.is_empty(), "{}", report.summary());
    for (name, why) in &report.skipped {
        // Directories report one link (S3 cannot count subdirectories without listing).
        assert!(
            why.contains("capabilities") || why.contains("links"),
            "{name} was skipped ({why}):\n{}",
            report.summary()
        );
    }
    for check in plugfs_conformance::permissions::all() {
        if (check.applies)(&caps) {
            assert!(report.passed.contains(&check.name), "{} did not pass:\n{}", check.name, report.summary());
        }
    }
    stop(host);
}

#[test]
fn the_conformance_suite_passes_directly_through_the_plugin_api() {
    let s = Setup::new("direct");
    let config = format!(
        "bucket = \"direct\"\nendpoint = {:?}\nallow_http = true\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n\
         metadata_ttl = 1\n{FAST}",
        s.moto.endpoint()
    );
    let report = plugfs_conformance::run_direct(&plugin_library("plugfs-s3"), &config).unwrap();
    assert!(report.ok() && !report.passed.is_empty(), "{}", report.summary());
}

#[test]
fn objects_and_directories_made_by_boto3_appear_through_the_mount() {
    let s = Setup::new("interop");
    s.py(
        "b = 'interop'\n\
         s3.put_object(Bucket=b, Key='marked/', Body=b'', Metadata={'mode': '16877', 'uid': '1234', 'gid': '2345', 'mtime': '1500000000'})\n\
         s3.put_object(Bucket=b, Key='marked/inside.txt', Body=b'in a marked dir')\n\
         s3.put_object(Bucket=b, Key='implicit/deeper/leaf.txt', Body=b'no markers at all')\n\
         s3.put_object(Bucket=b, Key='s3fs.txt', Body=b'owned', Metadata={'mode': '33152', 'uid': '1234', 'gid': '2345', 'mtime': '1600000000'})\n\
         s3.put_object(Bucket=b, Key='plain.bin', Body=bytes(range(256)) * 40)\n\
         s3.put_object(Bucket=b, Key='with space & plus+.txt', Body=b'odd name')\n\
         s3.put_object(Bucket=b, Key='link', Body=b'marked/inside.txt', Metadata={'mode': '41471'})\n",
        &[],
    );
    let (host, mnt) = s.mount("interop", "metadata_ttl = 60\nfile_mode = 0o640\nuid = 77\ngid = 88");
    // Stat before listing: a lookup reads the object's own metadata.
    let m = std::fs::metadata(mnt.join("s3fs.txt")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o600, 1234, 2345, 1_600_000_000));
    let d = std::fs::metadata(mnt.join("marked")).unwrap();
    assert!(d.is_dir());
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o755, 1234, 2345), "16877 is 0o40755: S_IFDIR and 0o755");
    // Objects without metadata take the configured defaults.
    let p = std::fs::metadata(mnt.join("plain.bin")).unwrap();
    assert_eq!((p.mode() & 0o7777, p.uid(), p.gid(), p.len()), (0o640, 77, 88, 10_240));
    assert!(std::fs::metadata(mnt.join("implicit")).unwrap().is_dir(), "a prefix without a marker is a directory");
    assert!(std::fs::metadata(mnt.join("implicit/deeper")).unwrap().is_dir());
    assert_eq!(std::fs::read(mnt.join("implicit/deeper/leaf.txt")).unwrap(), b"no markers at all");
    assert_eq!(std::fs::read(mnt.join("marked/inside.txt")).unwrap(), b"in a marked dir");
    assert_eq!(std::fs::read(mnt.join("with space & plus+.txt")).unwrap(), b"odd name");
    // s3fs's symlink: the target as content, 41471 = 0o120777.
    assert_eq!(std::fs::read_link(mnt.join("link")).unwrap(), PathBuf::from("marked/inside.txt"));
    assert_eq!(std::fs::read(mnt.join("link")).unwrap(), b"in a marked dir");
    std::os::unix::fs::symlink("s3fs.txt", mnt.join("made-here")).unwrap();
    assert_eq!(std::fs::read(mnt.join("plain.bin")).unwrap(), (0..=255u8).cycle().take(10_240).collect::<Vec<_>>());
    let mut names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["implicit", "link", "made-here", "marked", "plain.bin", "s3fs.txt", "with space & plus+.txt"]);
    let kinds: Vec<bool> =
        std::fs::read_dir(mnt.join("marked")).unwrap().map(|e| e.unwrap().file_type().unwrap().is_file()).collect();
    assert_eq!(kinds, [true], "the marker itself is not listed as an entry");
    // The last file of a marker-less directory goes, and the directory stays.
    std::fs::remove_file(mnt.join("implicit/deeper/leaf.txt")).unwrap();
    assert!(std::fs::metadata(mnt.join("implicit/deeper")).unwrap().is_dir());
    std::fs::remove_dir(mnt.join("implicit/deeper")).unwrap();
    assert_eq!(std::fs::remove_dir(mnt.join("marked")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    stop(host);
    // The symlink the mount made, as s3fs stores one.
    let made = s.py(
        "o = s3.get_object(Bucket='interop', Key='made-here')\nprint(o['Body'].read().decode(), o['Metadata']['mode'])",
        &[],
    );
    assert_eq!(made.trim(), "s3fs.txt 41471");
}

#[test]
fn what_the_mount_writes_reads_back_through_boto3() {
    let s = Setup::new("written");
    let (host, mnt) = s.mount("written", "metadata_ttl = 1");
    std::fs::write(mnt.join("small.txt"), b"hello from the mount").unwrap();
    // Multipart: 13 MiB in 5 MiB parts.
    let big = pattern(13 << 20, 1);
    std::fs::write(mnt.join("big.bin"), &big).unwrap();
    // Random writes, an overwrite inside, an append and a truncate on an existing object.
    let mut edited = pattern(300_000, 2);
    std::fs::write(mnt.join("edited.bin"), &edited).unwrap();
    {
        let f = std::fs::OpenOptions::new().write(true).open(mnt.join("edited.bin")).unwrap();
        f.write_all_at(b"OVERWRITE", 1000).unwrap();
        f.write_all_at(b"PAST THE END", 400_000).unwrap();
        f.sync_all().unwrap();
    }
    edited[1000..1009].copy_from_slice(b"OVERWRITE");
    edited.resize(400_000, 0);
    edited.extend_from_slice(b"PAST THE END");
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("edited.bin")).unwrap();
        f.write_all(b"+appended").unwrap();
    }
    edited.extend_from_slice(b"+appended");
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(mnt.join("small.txt")).unwrap();
        f.set_len(5).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"!").unwrap();
    }
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::create_dir(mnt.join("dir/sub")).unwrap();
    std::fs::write(mnt.join("dir/sub/f"), b"in a subdirectory").unwrap();
    std::fs::set_permissions(mnt.join("small.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(mnt.join("to-rename"), b"renamed").unwrap();
    std::fs::rename(mnt.join("to-rename"), mnt.join("dir/renamed")).unwrap();
    std::fs::rename(mnt.join("dir"), mnt.join("moved")).unwrap();

    let listing = s.py(
        "r = s3.list_objects_v2(Bucket='written')\n\
         for o in r['Contents']:\n\
         \x20   m = s3.head_object(Bucket='written', Key=o['Key'])['Metadata']\n\
         \x20   print(o['Key'], o['Size'], m.get('mode'), m.get('uid'), m.get('gid'))\n",
        &[],
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines,
        [
            "big.bin 13631488 33188 0 0",
            "edited.bin 400021 33188 0 0",
            "moved/ 0 16877 0 0",
            "moved/renamed 7 33188 0 0",
            "moved/sub/ 0 16877 0 0",
            "moved/sub/f 17 33188 0 0",
            "small.txt 6 33152 0 0",
        ],
        "{listing}"
    );
    assert_eq!(md5_of(&s, "written", "big.bin"), md5_local(&big));
    assert_eq!(md5_of(&s, "written", "edited.bin"), md5_local(&edited));
    assert_eq!(md5_of(&s, "written", "small.txt"), md5_local(b"hello!"));
    // And the mount reads back what it wrote, from the store (a new mount: nothing cached).
    stop(host);
    let (host, mnt) = s.mount("written", "");
    // Seeks back and forth (ranged GETs), then a sequential read to the end (a streamed GET).
    let f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    for off in [9 << 20, 17, 12 << 20, 3 << 20, (13 << 20) - 100] {
        let mut got = vec![0u8; 70_000];
        let n = f.read_at(&mut got, off as u64).unwrap();
        let want = &big[off..(off + 70_000).min(big.len())];
        assert_eq!(&got[..n], want, "pread at {off}");
    }
    drop(f);
    assert_eq!(std::fs::read(mnt.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(mnt.join("edited.bin")).unwrap(), edited);
    assert_eq!(std::fs::read(mnt.join("moved/sub/f")).unwrap(), b"in a subdirectory");
    stop(host);
}

#[test]
fn ls_l_of_a_large_directory_makes_no_request_per_file() {
    let s = Setup::new("large");
    s.py(
        "import concurrent.futures as cf\n\
         with cf.ThreadPoolExecutor(16) as ex:\n\
         \x20   list(ex.map(lambda i: s3.put_object(Bucket='large', Key='d/f%04d' % i, Body=b'x' * i), range(1500)))\n",
        &[],
    );
    let proxy = Proxy::start(s.moto.port);
    let (host, mnt) = s.mount_at(&proxy.endpoint(), "large", "metadata_ttl = 30");
    let before = proxy.requests();
    // What `ls -l` does: list, then stat every entry.
    let mut seen = 0;
    for e in std::fs::read_dir(mnt.join("d")).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let i: u64 = e.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(m.len(), i, "size from the listing");
        seen += 1;
    }
    assert_eq!(seen, 1500);
    let used = proxy.requests() - before;
    // A lookup of `d` (up to 3 requests) and two listing pages of 1,000 keys.
    assert!(used <= 8, "ls -l of 1,500 files took {used} requests");
    stop(host);
}

#[test]
fn a_server_cut_mid_upload_gives_errors_then_recovers_without_losing_fsynced_data() {
    let s = Setup::new("faults");
    let proxy = Proxy::start(s.moto.port);
    let (mut host, mnt) = s.mount_at(&proxy.endpoint(), "faults", "metadata_ttl = 0");
    let kept = pattern(7 << 20, 3);
    {
        let mut f = std::fs::File::create(mnt.join("kept")).unwrap();
        f.write_all(&kept).unwrap();
        f.sync_all().unwrap();
    }
    let pending = pattern(12 << 20, 4);
    let mut f = std::fs::File::create(mnt.join("pending")).unwrap();
    f.write_all(&pending[..6 << 20]).unwrap();
    proxy.cut();
    f.write_all(&pending[6 << 20..]).unwrap();
    let started = std::time::Instant::now();
    let err = f.sync_all().expect_err("fsync cannot succeed while the server is unreachable");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the failure took {:?}", started.elapsed());
    assert!(std::fs::metadata(mnt.join("kept")).is_err() || host.is_running(), "the host keeps serving");
    proxy.restore();
    // The same open file stores its data once the server is back.
    f.sync_all().expect("fsync after the server came back");
    drop(f);
    assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), kept);
    assert_eq!(std::fs::read(mnt.join("pending")).unwrap(), pending);
    assert!(host.stderr().contains("cannot reach"), "the cause is in the log:\n{}", host.stderr());
    // A close that fails keeps the changes in the local cache, and the background retry
    // stores them once the server is back.
    let later = pattern(1 << 20, 7);
    let mut g = std::fs::File::create(mnt.join("later")).unwrap();
    g.write_all(&later).unwrap();
    proxy.cut();
    // SAFETY: a descriptor we own, closed once (into_raw_fd gives it up).
    let closed = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(g)) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((closed, errno), (-1, Some(libc::EIO)), "close reports the failed upload");
    proxy.restore();
    let want = md5_local(&later);
    assert!(
        wait_until(Duration::from_secs(30), || md5_of(&s, "faults", "later") == want),
        "the retry did not store the file:\n{}",
        host.stderr()
    );
    stop(host);
    assert_eq!(md5_of(&s, "faults", "kept"), md5_local(&kept));
    assert_eq!(md5_of(&s, "faults", "pending"), md5_local(&pending));
}

#[test]
fn a_killed_host_loses_nothing_fsynced_and_the_next_mount_of_its_cache_works() {
    let s = Setup::new("crash");
    let cache = s.path("cache");
    let extra = format!("cache_dir = {:?}\nmetadata_ttl = 0", cache.to_str().unwrap());
    let (mut host, mnt) = s.mount("crash", &extra);
    let synced = pattern(3 << 20, 5);
    {
        let mut f = std::fs::File::create(mnt.join("synced")).unwrap();
        f.write_all(&synced).unwrap();
        f.sync_all().unwrap();
    }
    // Written, never fsynced nor closed, when the host dies.
    let mut open = std::fs::File::create(mnt.join("unsynced")).unwrap();
    open.write_all(&pattern(1 << 20, 6)).unwrap();
    host.signal_and_wait(libc::SIGKILL);
    drop(open);
    let _ = std::process::Command::new("fusermount3").args(["-u", "-z"]).arg(&mnt).status();
    drop(host);
    let (host, mnt) = s.mount("crash", &extra);
    assert_eq!(std::fs::read(mnt.join("synced")).unwrap(), synced);
    // Created (an empty object) but its data never stored: empty, as documented.
    assert_eq!(std::fs::metadata(mnt.join("unsynced")).unwrap().len(), 0);
    std::fs::write(mnt.join("after"), b"the remount is writable").unwrap();
    stop(host);
}

#[test]
fn a_concurrent_creator_wins_and_create_says_eexist() {
    let s = Setup::new("race");
    let lib = PluginLibrary::load(&plugin_library("plugfs-s3")).unwrap();
    let config = format!(
        "bucket = \"race\"\nendpoint = {:?}\nallow_http = true\npath_style = true\naccess_key_id = \"t\"\n\
         secret_access_key = \"t\"\n{FAST}",
        s.moto.endpoint()
    );
    let fs = lib.open(&config, &MountOptions::default()).unwrap();
    let req = Request { uid: 0, gid: 0, pid: std::process::id() };
    // The mount has not seen the name; another client makes it; our exclusive create
    // must not clobber it.
    s.py("s3.put_object(Bucket='race', Key='contested', Body=b'the other client')", &[]);
    let e = fs.create(&req, 1, "contested".as_ref(), 0o644, libc::O_CREAT | O_EXCL | O_WRONLY).unwrap_err();
    assert_eq!(e.errno(), Errno::EEXIST);
    assert_eq!(md5_of(&s, "race", "contested"), md5_local(b"the other client"));
    drop(fs);
}

#[test]
fn mount_errors_are_one_clear_line_and_never_show_the_secret() {
    let s = Setup::new("exists");
    let check = |endpoint: &str, bucket: &str| {
        let (config, _) = s.config(endpoint, bucket, "");
        let (code, out, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(!err.contains("sekrit-never-shown") && !out.contains("sekrit-never-shown"), "{err}");
        err
    };
    let missing = check(&s.moto.endpoint(), "no-such-bucket");
    assert!(missing.contains("no-such-bucket") && missing.contains("does not exist"), "{missing}");
    // Nothing listens on a port we just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = check(&format!("http://127.0.0.1:{port}"), "exists");
    assert!(unreachable.contains("cannot reach"), "{unreachable}");
    let (config, _) = s.config(&s.moto.endpoint(), "exists", "cache_size = 1024");
    let (code, _, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cache_size"), "{err}");
}

#[test]
fn a_stopped_server_is_eio_within_the_timeouts_and_the_mount_recovers_when_it_resumes() {
    let s = Setup::new("stopped");
    s.py("s3.put_object(Bucket='stopped', Key='f', Body=b'before')", &[]);
    let (host, mnt) = s.mount("stopped", "metadata_ttl = 0\nrequest_timeout = 2\nretries = 1");
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"before");
    s.moto.pause();
    let started = std::time::Instant::now();
    let stalled = std::fs::metadata(mnt.join("f"));
    let took = started.elapsed();
    s.moto.resume();
    assert_eq!(stalled.unwrap_err().raw_os_error(), Some(libc::EIO));
    // Two attempts of 2 s and a backoff: bounded, not hung.
    assert!(took < Duration::from_secs(15), "a stopped server held a stat for {took:?}");
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"before");
    std::fs::write(mnt.join("g"), b"after").unwrap();
    stop(host);
    assert_eq!(md5_of(&s, "stopped", "g"), md5_local(b"after"));
}

#[test]
fn renaming_an_object_above_the_copy_threshold_copies_it_in_parts() {
    let s = Setup::new("bigcopy");
    // 13 MiB with owner metadata, renamed with multipart copies of 6 MiB and more.
    let data = pattern(13 << 20, 9);
    let src = s.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    s.py(
        "s3.upload_file(sys.argv[1], 'bigcopy', 'dir/big', ExtraArgs={'Metadata': {'mode': '33216', 'uid': '7', 'gid': '8'}})",
        &[src.to_str().unwrap()],
    );
    let (host, mnt) = s.mount("bigcopy", "multipart_copy_threshold = \"6MiB\"");
    std::fs::rename(mnt.join("dir/big"), mnt.join("moved")).unwrap();
    let m = std::fs::metadata(mnt.join("moved")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777, m.uid(), m.gid()), (13 << 20, 0o700, 7, 8));
    stop(host);
    assert_eq!(md5_of(&s, "bigcopy", "moved"), md5_local(&data));
    let meta = s.py("print(s3.head_object(Bucket='bigcopy', Key='moved')['Metadata']['mode'])", &[]);
    assert_eq!(meta.trim(), "33216", "the metadata travels with a multipart copy");
    let gone = s.py("print(s3.list_objects_v2(Bucket='bigcopy', Prefix='dir/big').get('KeyCount'))", &[]);
    assert_eq!(gone.trim(), "0");
}

#[test]
fn a_closed_file_is_read_again_from_the_cache_until_another_client_changes_it() {
    let s = Setup::new("cached");
    let proxy = Proxy::start(s.moto.port);
    let (host, mnt) = s.mount_at(&proxy.endpoint(), "cached", "metadata_ttl = 1");
    let first = pattern(3 << 20, 10);
    std::fs::write(mnt.join("f"), &first).unwrap();
    let before = proxy.requests();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), first);
    assert_eq!(proxy.requests() - before, 0, "read back from the copy kept after close");
    // Another client replaces it; once the cached attributes expire the copy is stale.
    let second = pattern(2 << 20, 11);
    let src = s.path("second");
    std::fs::write(&src, &second).unwrap();
    s.py("s3.upload_file(sys.argv[1], 'cached', 'f')", &[src.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), second);
    stop(host);
}

/// Nodes in the mount's table, as its statfs reports them (inodes "used").
fn nodes_in_table(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {path:?}");
    st.f_files - st.f_ffree
}

/// Makes the kernel forget every dentry and inode it does not need (FUSE FORGETs).
fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches (tests run as root)");
}

#[test]
fn a_walk_of_many_names_keeps_the_node_table_within_max_nodes_and_reads_everything() {
    const DIRS: usize = 8;
    const FILES: usize = 150;
    const MAX: u64 = 64;
    let s = Setup::new("walk");
    s.py(
        "import concurrent.futures as cf\n\
         keys = ['d%d/f%04d' % (d, i) for d in range(8) for i in range(150)]\n\
         with cf.ThreadPoolExecutor(16) as ex:\n\
         \x20   list(ex.map(lambda k: s3.put_object(Bucket='walk', Key=k, Body=k.encode()), keys))\n",
        &[],
    );
    let (host, mnt) = s.mount("walk", "metadata_ttl = 30\nmax_nodes = 64");
    // Held open through the walk: its node stays, and so does its inode number.
    let held = std::fs::File::open(mnt.join("d0/f0000")).unwrap();
    let held_ino = held.metadata().unwrap().ino();
    let mut peak = 0;
    for round in 0..2 {
        for d in 0..DIRS {
            let dir = mnt.join(format!("d{d}"));
            let mut names: Vec<String> =
                std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert_eq!(names.len(), FILES, "round {round}, d{d}");
            for (i, name) in names.iter().enumerate() {
                assert_eq!(name, &format!("f{i:04}"));
                let key = format!("d{d}/{name}");
                assert_eq!(std::fs::read(dir.join(name)).unwrap(), key.as_bytes(), "{key}");
            }
            drop_kernel_caches();
            // A stat after the kernel forgot: the next use trims the table.
            std::fs::metadata(mnt.join(format!("d{d}/f0001"))).unwrap();
            let n = nodes_in_table(&mnt);
            peak = peak.max(n);
            // The bound, the held file, the root and what the kernel still holds (the
            // directory walked and the file just stat'ed, with its parent).
            assert!(n <= MAX + 8, "round {round}, d{d}: {n} nodes in the table, max_nodes = {MAX}");
        }
    }
    assert!(peak > 0);
    // Directories larger than the bound lost names they had listed: a name that is not in
    // the table any more is still found (no "listed whole, so missing" answer).
    for d in 0..DIRS {
        for i in [0, FILES / 2, FILES - 1] {
            let key = format!("d{d}/f{i:04}");
            assert_eq!(std::fs::read(mnt.join(&key)).unwrap(), key.as_bytes());
        }
    }
    // Writes still go where they should after eviction.
    std::fs::write(mnt.join("d3/new"), b"new").unwrap();
    assert_eq!(s.py("print(s3.get_object(Bucket='walk', Key='d3/new')['Body'].read().decode())", &[]).trim(), "new");
    assert_eq!(std::fs::metadata(mnt.join("d0/f0000")).unwrap().ino(), held_ino, "a node held open keeps its number");
    assert_eq!(held.metadata().unwrap().ino(), held_ino);
    drop(held);
    stop(host);
}

#[test]
fn an_append_to_a_large_object_sends_only_its_tail_and_copies_the_rest_server_side() {
    let s = Setup::new("append");
    let proxy = Proxy::start(s.moto.port);
    let (host, mnt) = s.mount_at(&proxy.endpoint(), "append", "");
    let mut expect = pattern(24 << 20, 20);
    std::fs::write(mnt.join("big"), &expect).unwrap();
    // An append: the 20 MiB of whole 5 MiB parts before the old end are copied.
    let before = proxy.bytes_sent();
    let tail = pattern(100_000, 21);
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("big")).unwrap();
    f.write_all(&tail).unwrap();
    f.sync_all().unwrap();
    let sent = proxy.bytes_sent() - before;
    expect.extend_from_slice(&tail);
    assert_eq!(md5_of(&s, "append", "big"), md5_local(&expect), "after the append's fsync");
    assert!(sent < 6 << 20, "an append to 24 MiB sent {sent} bytes");
    // A small overwrite at 7 MiB: the first part is copied, the rest sent.
    drop(f);
    let before = proxy.bytes_sent();
    let f = std::fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
    f.write_all_at(b"overwritten", 7 << 20).unwrap();
    drop(f);
    let sent = proxy.bytes_sent() - before;
    expect[7 << 20..(7 << 20) + 11].copy_from_slice(b"overwritten");
    assert_eq!(md5_of(&s, "append", "big"), md5_local(&expect), "after the overwrite's close");
    assert!(sent < 20 << 20, "an overwrite at 7 MiB sent {sent} bytes");
    // Another client replaces the object while this mount holds a copy of the old one: the
    // copied parts would be theirs, so the condition fails and the file goes up whole.
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("big")).unwrap();
    f.write_all(b"x").unwrap();
    expect.push(b'x');
    let other = s.path("other");
    std::fs::write(&other, pattern(26 << 20, 22)).unwrap();
    s.py("s3.upload_file(sys.argv[1], 'append', 'big')", &[other.to_str().unwrap()]);
    f.write_all(b"y").unwrap();
    expect.push(b'y');
    drop(f);
    assert_eq!(md5_of(&s, "append", "big"), md5_local(&expect), "the last close wins, whole");
    stop(host);
}
