//! The fat plugin end to end: images made by mkfs.fat and filled by mtools read through a
//! real FUSE mount, what is written through the mount reads back with mtools and passes
//! `fsck.fat -n`, and the conformance suite passes for what FAT can represent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use plugfs_plugin_api::Capabilities;
use plugfs_plugin_api::host::PluginLibrary;
use plugfs_tests::{Host, plugin_library, target_dir};

fn run_ok(tool: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): install dosfstools and mtools"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
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

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// An image made by mkfs.fat with `args`, `kib` KiB.
    fn mkfs(&self, args: &[&str], kib: u64) -> PathBuf {
        let img = self.path("fat.img");
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["-C".into(), img.to_str().unwrap().into(), kib.to_string()]);
        run_ok("mkfs.fat", &all.iter().map(String::as_str).collect::<Vec<_>>());
        img
    }
    /// Mounts `img` with `tz = "UTC"` and extra config lines.
    fn mount(&self, img: &Path, extra: &str) -> (Host, PathBuf) {
        self.mount_with(img, &format!("tz = \"UTC\"\n{extra}"), |_| {})
    }
    /// Mounts `img` with these config lines (after `image`), the host's command changed by
    /// `customize` (its environment, ...).
    fn mount_with(&self, img: &Path, extra: &str, customize: impl FnOnce(&mut Command)) -> (Host, PathBuf) {
        let mnt = self.path("mnt");
        let config = self.path("plugfs.toml");
        std::fs::write(
            &config,
            format!(
                "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"fat\"\nplugin = \"fat\"\nmountpoint = \"mnt\"\n\
                 create_mountpoint = true\n[mount.config]\nimage = {:?}\n{extra}\n",
                target_dir().to_str().unwrap(),
                img.to_str().unwrap()
            ),
        )
        .unwrap();
        (Host::start_with(&config, &[&mnt], customize), mnt)
    }
}

fn stop(mut host: Host) {
    let status = host.signal_and_wait(libc::SIGTERM).expect("plugfs exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
}

/// Every file and directory under `root`: relative path -> contents (None: directory).
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                stack.push(e.path());
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn sample(dir: &Path) {
    std::fs::create_dir_all(dir.join("Sub Dir/deeper")).unwrap();
    std::fs::write(dir.join("readme.txt"), b"hello\n").unwrap();
    std::fs::write(dir.join("MiXeD Case Name.Data"), pattern(70_000, 1)).unwrap();
    std::fs::write(dir.join("Ünïcødé straße.txt"), pattern(1234, 2)).unwrap();
    std::fs::write(dir.join("日本語のファイル名.bin"), pattern(5000, 3)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("Sub Dir/deeper/big.bin"), pattern(1_000_000, 4)).unwrap();
    std::fs::write(dir.join("Sub Dir/x"), pattern(10, 5)).unwrap();
}

#[test]
fn an_mtools_filled_image_reads_identical_through_the_mount() {
    for (args, kib) in
        [(&[][..], 1440), (&["-F", "16"][..], 64 * 1024), (&["-F", "32", "-S", "4096", "-s", "1"][..], 512 * 1024)]
    {
        let s = Setup::new();
        let img = s.mkfs(args, kib);
        let src = s.path("src");
        sample(&src);
        let entries: Vec<String> =
            std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path().to_str().unwrap().to_string()).collect();
        let mut mcopy = vec!["-s", "-i", img.to_str().unwrap()];
        mcopy.extend(entries.iter().map(String::as_str));
        mcopy.push("::/");
        run_ok("mcopy", &mcopy);
        // Directories made by mmd, one empty, one filled afterwards by mcopy.
        run_ok("mmd", &["-i", img.to_str().unwrap(), "::/Empty Dir Ünï", "::/Sub Dir/made by mmd"]);
        run_ok(
            "mcopy",
            &["-i", img.to_str().unwrap(), src.join("readme.txt").to_str().unwrap(), "::/Sub Dir/made by mmd/"],
        );
        std::fs::create_dir_all(src.join("Empty Dir Ünï")).unwrap();
        std::fs::create_dir_all(src.join("Sub Dir/made by mmd")).unwrap();
        std::fs::copy(src.join("readme.txt"), src.join("Sub Dir/made by mmd/readme.txt")).unwrap();
        let (host, mnt) = s.mount(&img, "read_only = true");
        assert_eq!(tree(&mnt), tree(&src), "mkfs.fat {args:?}");
        // Case-insensitive, case-preserving lookups.
        assert_eq!(std::fs::read(mnt.join("README.TXT")).unwrap(), b"hello\n");
        assert!(std::fs::write(mnt.join("new"), b"x").is_err(), "a read-only mount refuses writes");
        stop(host);
    }
}

#[test]
fn files_written_through_the_mount_read_identical_with_mtools_and_pass_fsck() {
    for (args, kib) in [(&[][..], 1440), (&["-F", "16"][..], 64 * 1024), (&["-F", "32", "-s", "1"][..], 128 * 1024)] {
        let s = Setup::new();
        let img = s.mkfs(args, kib);
        let src = s.path("src");
        sample(&src);
        if kib == 1440 {
            std::fs::remove_file(src.join("Sub Dir/deeper/big.bin")).unwrap();
        }
        let (host, mnt) = s.mount(&img, "");
        let status = Command::new("cp").arg("-r").arg(format!("{}/.", src.display())).arg(&mnt).status().unwrap();
        assert!(status.success());
        std::fs::rename(mnt.join("Sub Dir/x"), mnt.join("moved x")).unwrap();
        std::fs::rename(src.join("Sub Dir/x"), src.join("moved x")).unwrap();
        assert_eq!(tree(&mnt), tree(&src));
        // The dirty bit (bit 0 of the boot sector's state byte) is set while mounted and
        // cleared by a clean unmount.
        let state_at = if args.contains(&"32") { 65 } else { 37 };
        assert_eq!(std::fs::read(&img).unwrap()[state_at] & 1, 1, "dirty while mounted");
        stop(host);
        assert_eq!(std::fs::read(&img).unwrap()[state_at] & 1, 0, "clean after unmount");
        run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
        let out = s.path("out");
        std::fs::create_dir(&out).unwrap();
        run_ok("mcopy", &["-s", "-n", "-i", img.to_str().unwrap(), "::/*", out.to_str().unwrap()]);
        assert_eq!(tree(&out), tree(&src), "mkfs.fat {args:?}");
        let names: std::collections::BTreeSet<String> = tree(&src).into_keys().collect();
        assert_eq!(mdir_tree(&img), names, "mdir lists other names (mkfs.fat {args:?})");
    }
}

/// Every check that runs passes, except that FAT keeps access times to the day only: the
/// atime set by utimens reads back as midnight of its day (documented in docs/fat.md).
fn assert_conformant_but_for_atime_resolution(report: &plugfs_conformance::Report) {
    // FAT's coarse times (mtime to 2 s, atime a date) are what `nanosecond_times = false`
    // tells the suite to expect.
    assert!(report.ok() && !report.passed.is_empty(), "{}", report.summary());
    // Directories count their links as vfat does (2 + subdirectories), so the check that
    // only runs for such plugins runs, and passes.
    assert!(report.passed.contains(&"directory_link_counts_follow_subdirectories"), "{}", report.summary());
}

fn fat_capabilities() -> Capabilities {
    let lib = plugfs_plugin_api::host::PluginLibrary::load(&plugin_library("plugfs-fat")).unwrap();
    lib.info().capabilities
}

#[test]
fn the_conformance_suite_passes_through_a_mount_for_what_fat_can_represent() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "32", "-s", "1"], 128 * 1024);
    let (host, mnt) = s.mount(&img, "");
    let caps = fat_capabilities();
    let report = plugfs_conformance::run_mounted(&mnt, &caps, None);
    assert_conformant_but_for_atime_resolution(&report);
    for skipped in [
        "symlinks_store_their_target_verbatim",
        "hard_links_share_data_and_count_links",
        "chmod_changes_permission_bits",
    ] {
        assert!(report.skipped.iter().any(|(name, _)| *name == skipped), "{}", report.summary());
    }
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
}

#[test]
fn the_conformance_suite_passes_directly() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "16"], 64 * 1024);
    let config = format!("image = {:?}\ntz = \"UTC\"\n", img.to_str().unwrap());
    let report = plugfs_conformance::run_direct(&plugin_library("plugfs-fat"), &config).unwrap();
    assert_conformant_but_for_atime_resolution(&report);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
}

#[test]
fn what_fat_cannot_store_is_refused_with_vfat_errnos() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, mnt) = s.mount(&img, "");
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error().unwrap();
    std::fs::write(mnt.join("file"), b"x").unwrap();
    assert_eq!(errno(std::os::unix::fs::symlink("file", mnt.join("link"))), libc::EPERM);
    assert_eq!(errno(std::fs::hard_link(mnt.join("file"), mnt.join("hard"))), libc::EPERM);
    assert_eq!(errno(std::fs::write(mnt.join("a:b"), b"x")), libc::EINVAL);
    assert_eq!(errno(std::fs::write(mnt.join("x".repeat(255) + "é"), b"x")), libc::ENAMETOOLONG);
    let chown = std::os::unix::fs::chown(mnt.join("file"), Some(12345), None);
    assert_eq!(errno(chown), libc::EPERM);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(errno(std::fs::set_permissions(mnt.join("file"), std::fs::Permissions::from_mode(0o4755))), libc::EPERM);
    // Clearing the write bits sets the read-only attribute, which mtools shows.
    std::fs::set_permissions(mnt.join("file"), std::fs::Permissions::from_mode(0o555)).unwrap();
    assert_eq!(std::fs::metadata(mnt.join("file")).unwrap().permissions().mode() & 0o777, 0o555);
    // Case-insensitive: a second name differing only in case is the same file.
    assert_eq!(std::fs::read(mnt.join("FILE")).unwrap(), b"x");
    let st = nix_statfs(&mnt);
    assert_eq!(st.0, 255);
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let attrs = run_ok("mattrib", &["-i", img.to_str().unwrap(), "::/file"]);
    assert!(String::from_utf8_lossy(&attrs).contains('R'), "{}", String::from_utf8_lossy(&attrs));
}

fn nix_statfs(p: &Path) -> (u64,) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_namemax as u64,)
}

#[test]
fn quiet_makes_chmod_and_chown_succeed_silently() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, mnt) = s.mount(&img, "quiet = true");
    std::fs::write(mnt.join("file"), b"x").unwrap();
    std::os::unix::fs::chown(mnt.join("file"), Some(12345), None).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(mnt.join("file"), std::fs::Permissions::from_mode(0o4700)).unwrap();
    stop(host);
}

#[test]
fn a_second_host_cannot_mount_the_same_image_read_write() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, _mnt) = s.mount(&img, "");
    let lib = plugfs_plugin_api::host::PluginLibrary::load(&plugin_library("plugfs-fat")).unwrap();
    let err = lib.open(&format!("image = {:?}\n", img.to_str().unwrap()), &Default::default()).err().expect("locked");
    assert!(err.to_string().contains("in use"), "{err}");
    stop(host);
}

fn plugfs_fat(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(plugfs_tests::binary("plugfs-fat")).args(args).output().expect("run plugfs-fat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugfs_fat_mkfs_makes_images_that_fsck_and_mtools_accept_and_info_describes() {
    let cases: [(&[&str], &str); 5] = [
        (&["--size", "1440K"], "FAT12"),
        (&["--size", "64M"], "FAT16"),
        (&["--size", "600M"], "FAT32"),
        (&["--size", "64M", "--fat", "32", "--cluster-size", "512", "--label", "Backup"], "FAT32"),
        (&["--size", "64M", "--fat", "16", "--sector-size", "4096"], "FAT16"),
    ];
    for (args, want) in cases {
        let s = Setup::new();
        // A directory that does not exist yet is created, as the README's command needs.
        let img = s.path("demo/fat.img");
        let mut all = vec!["mkfs", img.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, out, err) = plugfs_fat(&all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains(want), "{args:?}: {out}");
        run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
        run_ok("mdir", &["-i", img.to_str().unwrap(), "::/"]);
        let (code, info, err) = plugfs_fat(&["info", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(info.contains(&format!("type:                {want}")), "{info}");
        if args.contains(&"Backup") {
            assert!(info.contains("label:               BACKUP"), "{info}");
        }
    }
}

#[test]
fn the_plugins_format_makes_images_by_size_that_fsck_and_mtools_accept() {
    let lib = PluginLibrary::load(&plugin_library("plugfs-fat")).unwrap();
    assert!(lib.info().capabilities.format, "the fat plugin declares format");
    for (size, want) in [(1440u64 << 10, "FAT12"), (64 << 20, "FAT16"), (600 << 20, "FAT32")] {
        let s = Setup::new();
        let img = s.path("new.img");
        let config = format!("image = {:?}\ntz = \"UTC\"\n", img.to_str().unwrap());
        lib.format(&config, size).unwrap_or_else(|e| panic!("format {size}: {e}"));
        assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
        run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
        let (code, info, err) = plugfs_fat(&["info", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(info.contains(&format!("type:                {want}")), "{size}: {info}");
        // mtools reads it and can write to it, and fsck.fat still agrees.
        let file = s.path("data.bin");
        let data = pattern(100_000, size as u32);
        std::fs::write(&file, &data).unwrap();
        let i = img.to_str().unwrap();
        run_ok("mcopy", &["-i", i, file.to_str().unwrap(), "::/data.bin"]);
        let listing = String::from_utf8(run_ok("mdir", &["-i", i, "::/"])).unwrap();
        assert!(listing.contains("data") && listing.contains("100000"), "{listing}");
        run_ok("mcopy", &["-i", i, "::/data.bin", s.path("back.bin").to_str().unwrap()]);
        assert!(std::fs::read(s.path("back.bin")).unwrap() == data, "{size}: mcopy read back other bytes");
        run_ok("fsck.fat", &["-n", i]);

        // An existing file is refused, naming the key, and left as it was.
        let before = std::fs::read(&img).unwrap();
        let err = lib.format(&config, size).expect_err("an existing image must be refused");
        assert_eq!(err.key.as_deref(), Some("image"), "{err}");
        assert!(err.to_string().contains("exists"), "{err}");
        assert!(std::fs::read(&img).unwrap() == before, "a refused format changed the image");
    }
    // A size no FAT layout fits is refused and leaves no file behind.
    let s = Setup::new();
    let img = s.path("tiny.img");
    let err = lib.format(&format!("image = {:?}\n", img.to_str().unwrap()), 4096).expect_err("4 KiB is too small");
    assert!(!img.exists(), "a failed format left {}: {err}", img.display());
    // Unknown keys are refused as for a mount.
    let err = lib.format(&format!("image = {:?}\nbogus = 1\n", img.to_str().unwrap()), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("bogus") || err.key.as_deref() == Some("bogus"), "{err}");
    assert!(!img.exists());
}

#[test]
fn plugfs_fat_label_reads_and_sets_the_label_that_mtools_sees() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "32", "-s", "1", "-n", "OLDNAME"], 128 * 1024);
    let i = img.to_str().unwrap();
    assert_eq!(plugfs_fat(&["label", i]).1.trim(), "OLDNAME");
    let (code, out, err) = plugfs_fat(&["label", i, "New Label"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(plugfs_fat(&["label", i]).1.trim(), "NEW LABEL");
    let shown = run_ok("mlabel", &["-s", "-i", i, "::"]);
    assert!(String::from_utf8_lossy(&shown).contains("NEW LABEL"), "{}", String::from_utf8_lossy(&shown));
    // fsck.fat exits 0 over a backup boot sector that differs from the boot sector, so
    // its words are checked too: the label reaches the FAT32 backup as well.
    let fsck = String::from_utf8_lossy(&run_ok("fsck.fat", &["-n", "-v", i])).into_owned();
    assert!(!fsck.to_lowercase().contains("differences"), "{fsck}");
    let (code, _, err) = plugfs_fat(&["label", i, "far too long a label"]);
    assert_eq!(code, 1);
    assert!(err.contains("label"), "{err}");
    // Bytes above 0x7F read in the code page asked for: 0x9B is ¢ in 437, ø in 850.
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes.windows(11).rposition(|w| w == b"NEW LABEL  ").expect("the label entry");
    bytes[at] = 0x9B;
    std::fs::write(&img, &bytes).unwrap();
    assert_eq!(plugfs_fat(&["label", i]).1.trim(), "¢EW LABEL");
    assert_eq!(plugfs_fat(&["label", i, "--codepage", "850"]).1.trim(), "øEW LABEL");
    assert!(plugfs_fat(&["info", i, "--codepage", "850"]).1.contains("øEW LABEL"));
    let (code, _, err) = plugfs_fat(&["info", i, "--codepage", "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("--codepage 999") && err.contains("850"), "{err}");
}

#[test]
fn the_readme_commands_make_and_mount_the_example_image_of_config_fat_toml() {
    // A checkout-like layout: config/fat.toml with its relative image and mount point.
    let s = Setup::new();
    std::fs::create_dir(s.path("config")).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fat.toml");
    let config = s.path("config/fat.toml");
    std::fs::copy(&example, &config).unwrap();
    let img = s.path("demo/fat.img");
    let (code, out, err) = plugfs_fat(&["mkfs", img.to_str().unwrap(), "--size", "64M"]);
    assert_eq!(code, 0, "{out}{err}");
    let mnt = s.path("demo/fat-mnt");
    let host = Host::start(&config, &[&mnt]);
    std::fs::write(mnt.join("Written Through plugfs.txt"), b"hello").unwrap();
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let names = run_ok("mdir", &["-b", "-i", img.to_str().unwrap(), "::/"]);
    assert!(
        String::from_utf8_lossy(&names).contains("Written Through plugfs.txt"),
        "{}",
        String::from_utf8_lossy(&names)
    );
}

#[test]
fn plugfs_fat_mkfs_refuses_impossible_layouts_with_the_reason() {
    let s = Setup::new();
    let img = s.path("x.img");
    let (code, _, err) = plugfs_fat(&["mkfs", img.to_str().unwrap(), "--size", "1M", "--fat", "32"]);
    assert_eq!(code, 1);
    assert!(err.contains("too few"), "{err}");
    assert!(!img.exists(), "nothing is created for a layout that cannot be made");
    let (code, _, err) = plugfs_fat(&["info", s.path("missing.img").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.img"), "{err}");
}

#[test]
fn an_image_made_by_plugfs_fat_mounts_and_round_trips() {
    let s = Setup::new();
    let img = s.path("fat.img");
    let (code, out, err) = plugfs_fat(&["mkfs", img.to_str().unwrap(), "--size", "32M"]);
    assert_eq!(code, 0, "{out}{err}");
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("Hello World.txt"), b"hi").unwrap();
    // Files advertise a whole FUSE request as their IO size (cp and cat size their
    // buffers from it); directories keep the cluster size.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(mnt.join("Hello World.txt")).unwrap().blksize(), 1 << 20);
    assert!(std::fs::metadata(&mnt).unwrap().blksize() < 1 << 20);
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    assert_eq!(run_ok("mcopy", &["-n", "-i", img.to_str().unwrap(), "::/Hello World.txt", "-"]), b"hi");
}

/// A small deterministic generator, so a failing run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// The outcome of one operation, comparable between the two sides.
fn outcome<T>(r: std::io::Result<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    f.write_all_at(data, offset)
}

fn truncate(path: &Path, size: u64) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(size)
}

/// Relative paths of every directory (with "" for the root) and file under `root`.
fn dirs_and_files(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut dirs = vec![String::new()];
    let mut files = Vec::new();
    for (path, content) in tree(root) {
        if content.is_some() { files.push(path) } else { dirs.push(path) }
    }
    (dirs, files)
}

/// Every path `mdir -/ -b` lists in the image, relative, directories without their
/// trailing slash: what mtools sees, to compare with a directory's tree.
fn mdir_tree(img: &Path) -> std::collections::BTreeSet<String> {
    let out = run_ok("mdir", &["-/", "-b", "-i", img.to_str().unwrap(), "::/"]);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .map(|l| l.trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn a_randomized_workload_on_fat12_matches_a_native_directory_and_fsck_passes() {
    randomized_workload(&["-F", "12"], 4 * 1024, 0xF12, 1500);
}

#[test]
fn a_randomized_workload_on_fat16_matches_a_native_directory_and_fsck_passes() {
    randomized_workload(&["-F", "16"], 64 * 1024, 0x5EED_F00D, 3000);
}

#[test]
fn a_randomized_workload_on_fat32_matches_a_native_directory_and_fsck_passes() {
    // 512-byte clusters: 64 MiB makes a FAT32 volume, and directories grow often.
    randomized_workload(&["-F", "32", "-s", "1"], 64 * 1024, 0xF32, 1500);
}

/// `steps` random operations (create, write at offsets, truncate, rename, unlink, mkdir,
/// rmdir, read) run side by side on a native directory and on a mount of a fresh image;
/// every outcome and the final trees must agree, and afterwards fsck.fat passes, mcopy
/// reads the same bytes and mdir lists the same names.
fn randomized_workload(mkfs_args: &[&str], kib: u64, seed: u64, steps: usize) {
    let s = Setup::new();
    let img = s.mkfs(mkfs_args, kib);
    let native = s.path("native");
    std::fs::create_dir(&native).unwrap();
    let (host, mnt) = s.mount(&img, "");
    // Names that differ case-insensitively, so the case-sensitive native side agrees.
    let names = [
        "a",
        "B.TXT",
        "readme.md",
        "Long File Name One.data",
        "long file name two.data",
        "Ünïcødé",
        "日本語",
        "x.y.z",
        "spaces in name",
        "UPPER CASE DIR",
        "lower.c",
        "Mixed.Case.Ext",
    ];
    let mut rng = Rng(seed);
    let mut succeeded: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let (dirs, files) = dirs_and_files(&native);
        let dir = rng.pick(&dirs).clone();
        let new_path = |rng: &mut Rng| {
            let n = rng.pick(&names);
            if dir.is_empty() { n.to_string() } else { format!("{dir}/{n}") }
        };
        let existing_file = |rng: &mut Rng| if files.is_empty() { new_path(rng) } else { rng.pick(&files).clone() };
        let (what, a, b): (&str, String, String) = match rng.below(100) {
            0..=34 => ("write", existing_file(&mut rng), String::new()),
            35..=44 => ("truncate", existing_file(&mut rng), String::new()),
            45..=54 => ("unlink", existing_file(&mut rng), String::new()),
            55..=64 => ("mkdir", new_path(&mut rng), String::new()),
            65..=72 => ("rmdir", rng.pick(&dirs).clone(), String::new()),
            73..=89 => {
                let from = if rng.below(3) == 0 { rng.pick(&dirs).clone() } else { existing_file(&mut rng) };
                let to_dir = rng.pick(&dirs).clone();
                let n = rng.pick(&names);
                ("rename", from, if to_dir.is_empty() { n.to_string() } else { format!("{to_dir}/{n}") })
            }
            _ => ("read", existing_file(&mut rng), String::new()),
        };
        let offset = rng.below(40_000);
        let len = rng.below(20_000) as usize;
        let data = pattern(len, rng.next() as u32);
        let size = rng.below(60_000);
        let on = |root: &Path| -> Result<(), i32> {
            let (pa, pb) = (root.join(&a), root.join(&b));
            match what {
                "write" => outcome(write_at(&pa, offset, &data)),
                "truncate" => outcome(truncate(&pa, size)),
                "unlink" => outcome(std::fs::remove_file(&pa)),
                "mkdir" => outcome(std::fs::create_dir(&pa)),
                "rmdir" if a.is_empty() => Ok(()),
                "rmdir" => outcome(std::fs::remove_dir(&pa)),
                "rename" if a.is_empty() => Ok(()),
                "rename" => outcome(std::fs::rename(&pa, &pb)),
                _ => outcome(std::fs::read(&pa)),
            }
        };
        let want = on(&native);
        let got = on(&mnt);
        assert_eq!(got, want, "step {step} (seed {seed:#x}): {what} {a:?} {b:?}");
        if want.is_ok() {
            *succeeded.entry(what).or_default() += 1;
        }
        if what == "read" && want.is_ok() {
            assert!(std::fs::read(mnt.join(&a)).unwrap() == std::fs::read(native.join(&a)).unwrap(), "step {step}");
        }
    }
    // The workload must really exercise every operation, not mostly fail.
    for op in ["write", "truncate", "unlink", "mkdir", "rmdir", "rename", "read"] {
        assert!(succeeded.get(op).copied().unwrap_or(0) >= 10, "too few successful {op}s: {succeeded:?}");
    }
    eprintln!("operations that succeeded: {succeeded:?}");
    assert!(tree(&mnt) == tree(&native), "the trees differ after the workload");
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let out = s.path("out");
    std::fs::create_dir(&out).unwrap();
    if std::fs::read_dir(&native).unwrap().next().is_some() {
        run_ok("mcopy", &["-s", "-n", "-i", img.to_str().unwrap(), "::/*", out.to_str().unwrap()]);
    }
    assert!(tree(&out) == tree(&native), "mtools reads the image differently from the native directory");
    let native_names: std::collections::BTreeSet<String> = tree(&native).into_keys().collect();
    assert_eq!(mdir_tree(&img), native_names, "mdir lists other names (mkfs.fat {mkfs_args:?})");
}

#[test]
fn many_readers_and_a_writer_at_once_all_see_the_right_bytes() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "32", "-s", "1"], 128 * 1024);
    let (host, mnt) = s.mount(&img, "");
    for i in 0..4 {
        std::fs::write(mnt.join(format!("file {i}")), pattern(300_000 + i * 1000, i as u32)).unwrap();
    }
    std::thread::scope(|scope| {
        for i in 0..4usize {
            let mnt = &mnt;
            scope.spawn(move || {
                use std::os::unix::fs::FileExt;
                let want = pattern(300_000 + i * 1000, i as u32);
                let f = std::fs::File::open(mnt.join(format!("file {i}"))).unwrap();
                for round in 0..200usize {
                    let off = (round * 7919) % want.len();
                    let mut buf = vec![0u8; 10_000.min(want.len() - off)];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(buf == want[off..off + buf.len()], "file {i} round {round}");
                }
            });
        }
        let mnt = &mnt;
        scope.spawn(move || {
            for round in 0..50u32 {
                std::fs::write(mnt.join("written meanwhile"), pattern(50_000, round)).unwrap();
            }
        });
    });
    assert_eq!(std::fs::read(mnt.join("written meanwhile")).unwrap(), pattern(50_000, 49));
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
}

#[test]
fn parallel_writers_of_different_files_and_a_creator_through_the_mount_leave_a_clean_image() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "32", "-s", "1"], 128 * 1024);
    let (host, mnt) = s.mount(&img, "");
    std::fs::create_dir(mnt.join("shared dir")).unwrap();
    let dir = mnt.join("shared dir");
    std::thread::scope(|scope| {
        for i in 0..4u32 {
            let dir = &dir;
            scope.spawn(move || {
                use std::io::Write;
                // Pieces of odd sizes, so writes and allocations of the 4 files interleave.
                let want = pattern(700_000 + i as usize * 1000, 100 + i);
                let mut f = std::fs::File::create(dir.join(format!("parallel writer {i}.bin"))).unwrap();
                for piece in want.chunks(7_777 + i as usize * 1000) {
                    f.write_all(piece).unwrap();
                }
            });
        }
        let dir = &dir;
        scope.spawn(move || {
            for n in 0..60u32 {
                let p = dir.join(format!("churn {n} with a long name.txt"));
                std::fs::write(&p, pattern(3000, n)).unwrap();
                if n % 3 != 0 {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        });
    });
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let i = img.to_str().unwrap();
    for n in 0..4u32 {
        let got = run_ok("mcopy", &["-n", "-i", i, &format!("::/shared dir/parallel writer {n}.bin"), "-"]);
        assert!(got == pattern(700_000 + n as usize * 1000, 100 + n), "mcopy reads writer {n}'s file differently");
    }
    for n in (0..60u32).filter(|n| n % 3 == 0) {
        let got = run_ok("mcopy", &["-n", "-i", i, &format!("::/shared dir/churn {n} with a long name.txt"), "-"]);
        assert!(got == pattern(3000, n), "churn {n}");
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.to_str().unwrap()).unwrap()
}

/// utimensat(2) with whole seconds.
fn set_times(p: &Path, atime: i64, mtime: i64) -> std::io::Result<()> {
    let ts = [libc::timespec { tv_sec: atime, tv_nsec: 0 }, libc::timespec { tv_sec: mtime, tv_nsec: 0 }];
    match unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), ts.as_ptr(), 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().expect("refused").raw_os_error().unwrap()
}

/// Names through the mount behave as on vfat: trailing dots are dropped (`foo.` is `foo`,
/// for create and lookup alike), a trailing space is EINVAL, a name of only dots ENOENT.
#[test]
fn trailing_dots_are_dropped_and_trailing_spaces_refused_through_the_mount() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("foo."), b"dots").unwrap();
    assert_eq!(std::fs::read(mnt.join("foo")).unwrap(), b"dots");
    assert_eq!(std::fs::read(mnt.join("FOO...")).unwrap(), b"dots");
    assert_eq!(errno_of(std::fs::read(mnt.join("foo "))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::write(mnt.join("bar "), b"x")), libc::EINVAL);
    assert_eq!(errno_of(std::fs::create_dir(mnt.join("dir ."))), libc::EINVAL);
    assert_eq!(errno_of(std::fs::rename(mnt.join("foo"), mnt.join("baz "))), libc::EINVAL);
    assert_eq!(errno_of(std::fs::create_dir(mnt.join("..."))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::write(mnt.join("...."), b"x")), libc::ENOENT);
    let names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["foo"]);
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let listed = String::from_utf8(run_ok("mdir", &["-b", "-i", img.to_str().unwrap(), "::/"])).unwrap();
    assert_eq!(listed.trim(), "::/foo");
}

/// A short entry holding byte 0x8E (made by mcopy, then patched) lists through the mount
/// as mdir shows it: `Ä`, code page 437, vfat's default; `codepage = 850` reads it too.
#[test]
fn short_names_list_through_the_mount_as_mdir_shows_them() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let i = img.to_str().unwrap();
    let src = s.path("x");
    std::fs::write(&src, b"apples").unwrap();
    run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/XPFEL.TXT"]);
    let mut bytes = std::fs::read(&img).unwrap();
    let root = 19 * 512; // FAT12 floppy: 1 reserved sector, 2 FATs of 9
    let slot = (0..224).find(|s| &bytes[root + s * 32..root + s * 32 + 11] == b"XPFEL   TXT").unwrap();
    bytes[root + slot * 32] = 0x8E;
    std::fs::write(&img, &bytes).unwrap();
    let mdir = String::from_utf8(run_ok("mdir", &["-b", "-i", i, "::/"])).unwrap();
    assert_eq!(mdir.trim(), "::/ÄPFEL.TXT");
    for config in ["read_only = true", "read_only = true\ncodepage = 850"] {
        let (host, mnt) = s.mount(&img, config);
        let names: Vec<String> =
            std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["ÄPFEL.TXT"], "{config}");
        assert_eq!(std::fs::read(mnt.join("äpfel.txt")).unwrap(), b"apples");
        stop(host);
    }
}

/// chmod as vfat's `fat_setattr` answers it: bits beyond 0o777 are EPERM; a mode FAT
/// cannot hold (other read or execute bits, some write bits but not all, a directory's
/// write bits) is ignored and succeeds; a file's write bits, all or none, are the
/// read-only attribute. `quiet` makes the EPERM a silent success too.
#[test]
fn chmod_of_files_and_directories_answers_as_vfat() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, mnt) = s.mount(&img, "");
    let (file, dir) = (mnt.join("file"), mnt.join("dir"));
    std::fs::write(&file, b"x").unwrap();
    std::fs::create_dir(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    assert_eq!((mode(&file), mode(&dir)), (0o755, 0o755));
    // Files: the umask's bits do not count; the write bits set all or none.
    chmod(&file, 0o777).unwrap();
    assert_eq!(mode(&file), 0o755);
    chmod(&file, 0o555).unwrap();
    assert_eq!(mode(&file), 0o555);
    chmod(&file, 0o700).unwrap(); // other r/x bits: ignored
    assert_eq!(mode(&file), 0o555);
    chmod(&file, 0o755).unwrap();
    assert_eq!(mode(&file), 0o755);
    chmod(&file, 0o644).unwrap(); // x bits gone: ignored
    assert_eq!(mode(&file), 0o755);
    assert_eq!(errno_of(chmod(&file, 0o4755)), libc::EPERM);
    assert_eq!(errno_of(chmod(&file, 0o1755)), libc::EPERM);
    // Directories hold no read-only attribute (vfat without `rodir`): no change at all.
    chmod(&dir, 0o555).unwrap();
    assert_eq!(mode(&dir), 0o755);
    chmod(&dir, 0o777).unwrap();
    assert_eq!(mode(&dir), 0o755);
    chmod(&dir, 0o700).unwrap();
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(errno_of(chmod(&dir, 0o2755)), libc::EPERM);
    std::fs::write(dir.join("inside"), b"still writable").unwrap();
    chmod(&file, 0o555).unwrap();
    stop(host);
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    let attrs = String::from_utf8(run_ok("mattrib", &["-i", img.to_str().unwrap(), "::/file", "::/dir"])).unwrap();
    let flags = |name: &str| attrs.lines().find(|l| l.contains(name)).unwrap().split("::").next().unwrap().to_string();
    assert!(flags("/file").contains('R'), "{attrs}");
    assert!(!flags("/dir").contains('R'), "{attrs}");
    // quiet: the EPERM cases succeed, changing nothing.
    let (host, mnt) = s.mount(&img, "quiet = true");
    chmod(&mnt.join("dir"), 0o4755).unwrap();
    assert_eq!(mode(&mnt.join("dir")), 0o755);
    chmod(&mnt.join("file"), 0o4777).unwrap();
    assert_eq!(mode(&mnt.join("file")), 0o555);
    stop(host);
}

/// Reads update a stale access date (relatime, at FAT's one-day resolution) on a
/// read-write mount; `noatime = true` and read-only mounts leave it.
#[test]
fn reads_update_the_access_date_unless_noatime() {
    use std::os::unix::fs::MetadataExt;
    let s = Setup::new();
    let img = s.mkfs(&["-F", "16"], 32 * 1024);
    let y2001 = 978_307_200; // 2001-01-01 00:00 UTC, a midnight as FAT keeps access dates
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let today = now - now % 86400;
    let atime = |mnt: &Path| {
        // Past the attribute TTL (1 s), so the kernel asks plugfs again.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        std::fs::metadata(mnt.join("data.bin")).unwrap().atime()
    };
    // The first mount makes the file; the read-only one finds its access date in 2001.
    for (config, updated) in [("noatime = true", false), ("read_only = true", false), ("", true)] {
        let (host, mnt) = s.mount(&img, config);
        if !mnt.join("data.bin").exists() {
            std::fs::write(mnt.join("data.bin"), pattern(10_000, 7)).unwrap();
        }
        if config != "read_only = true" {
            set_times(&mnt.join("data.bin"), y2001, y2001).unwrap();
            assert_eq!(atime(&mnt), y2001);
        }
        assert_eq!(std::fs::read(mnt.join("data.bin")).unwrap(), pattern(10_000, 7));
        let want = if updated { today } else { y2001 };
        assert_eq!(atime(&mnt), want, "{config:?}");
        stop(host);
        run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
    }
}

/// `tz = "local"` with the host in UTC+5:30 (a POSIX TZ string, no tzdata needed): FAT
/// holds wall-clock times of that zone, as mtools writes and shows them with the same TZ.
#[test]
fn tz_local_stores_and_reads_the_local_wall_clock_as_mtools_does() {
    use std::os::unix::fs::MetadataExt;
    const TZ: &str = "XYZ-5:30";
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let i = img.to_str().unwrap();
    // mtools writes a file whose modification time is 2021-03-04 10:20:30 UTC, in TZ.
    let src = s.path("from mtools.txt");
    std::fs::write(&src, b"mtools").unwrap();
    set_times(&src, 1_614_853_230, 1_614_853_230).unwrap();
    let out = Command::new("mcopy")
        .args(["-m", "-i", i, src.to_str().unwrap(), "::/from mtools.txt"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", TZ)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (host, mnt) = s.mount_with(&img, "tz = \"local\"", |c| {
        c.env("TZ", TZ);
    });
    assert_eq!(std::fs::metadata(mnt.join("from mtools.txt")).unwrap().mtime(), 1_614_853_230);
    // Written through the mount with a modification time of 2020-06-15 12:00:00 UTC.
    std::fs::write(mnt.join("through plugfs.txt"), b"plugfs").unwrap();
    set_times(&mnt.join("through plugfs.txt"), 1_592_222_400, 1_592_222_400).unwrap();
    stop(host);
    let out = Command::new("mdir")
        .args(["-i", i, "::/"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", TZ)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    // mdir shows the stored wall clock: 17:30 and 15:50 in UTC+5:30.
    let line = |name: &str| listing.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
    assert!(line("through plugfs").contains("2020-06-15  17:30"), "{listing}");
    assert!(line("from mtools").contains("2021-03-04  15:50"), "{listing}");
    run_ok("fsck.fat", &["-n", i]);
}

/// FAT has no xattrs: get, set and remove answer EOPNOTSUPP and the list is empty, as
/// docs/fat.md says (vfat answers the same).
#[test]
fn xattr_calls_answer_the_documented_errnos() {
    let s = Setup::new();
    let img = s.mkfs(&[], 1440);
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("file"), b"x").unwrap();
    for p in [mnt.join("file"), mnt.clone()] {
        let c = cpath(&p);
        let name = c"user.test";
        let mut buf = [0u8; 64];
        let r = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EOPNOTSUPP)), "{p:?}");
        let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EOPNOTSUPP)), "{p:?}");
        let r = unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EOPNOTSUPP)), "{p:?}");
        let r = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(r, 0, "{p:?}: listxattr lists nothing");
    }
    stop(host);
}

/// Patches a FAT16 image made by mkfs.fat: `f(bytes, root directory offset, FAT offsets)`.
fn patch_fat16(img: &Path, f: impl FnOnce(&mut Vec<u8>, usize, &[usize])) {
    let mut b = std::fs::read(img).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let (bps, reserved, fats, fat_sectors) = (u16_at(&b, 11), u16_at(&b, 14), b[16] as usize, u16_at(&b, 22));
    let fat_offsets: Vec<usize> = (0..fats).map(|n| (reserved + n * fat_sectors) * bps).collect();
    let root = (reserved + fats * fat_sectors) * bps;
    f(&mut b, root, &fat_offsets);
    std::fs::write(img, &b).unwrap();
}

/// Byte offset of the root directory entry with short name `short`.
fn entry_at(b: &[u8], root: usize, short: &[u8; 11]) -> usize {
    (0..512).map(|s| root + s * 32).find(|&at| &b[at..at + 11] == short).expect("entry")
}

/// fsck.fat -n's report on `img`.
fn fsck_report(img: &Path) -> String {
    let out = Command::new("fsck.fat").args(["-n", img.to_str().unwrap()]).output().expect("fsck.fat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The damage rule through a real mount: two files sharing clusters (B's entry names A's
/// first cluster) and a file whose size is larger than its chain. Truncating, writing or
/// extending either answers EIO with a log line in the host's stderr saying what is wrong;
/// unlinking the cross-linked file leaves its clusters to the other, so a file created
/// afterwards never lands in them (before, `truncate -s 0 A.BIN` freed them and the next
/// file's data became B's).
#[test]
fn damaged_files_answer_eio_through_the_mount_and_the_damage_never_spreads() {
    let s = Setup::new();
    let img = s.mkfs(&["-F", "16", "-s", "4"], 64 * 1024);
    let i = img.to_str().unwrap();
    let src = s.path("src");
    for (name, data) in [("A.BIN", pattern(10_000, 1)), ("B.BIN", pattern(3_000, 2)), ("F.BIN", pattern(1_000, 3))] {
        std::fs::write(&src, data).unwrap();
        run_ok("mcopy", &["-i", i, src.to_str().unwrap(), &format!("::/{name}")]);
    }
    patch_fat16(&img, |b, root, _| {
        let a = entry_at(b, root, b"A       BIN");
        let first_of_a = [b[a + 26], b[a + 27]];
        let bb = entry_at(b, root, b"B       BIN");
        b[bb + 26..bb + 28].copy_from_slice(&first_of_a);
        let f = entry_at(b, root, b"F       BIN");
        b[f + 28..f + 32].copy_from_slice(&(3 * 2048u32 + 100).to_le_bytes());
    });
    let before = fsck_report(&img);
    assert!(before.contains("share clusters"), "{before}");
    let b_before = run_ok("mcopy", &["-n", "-i", i, "::/B.BIN", "-"]);
    assert!(b_before == pattern(10_000, 1)[..3_000]);

    let (host, mnt) = s.mount(&img, "");
    let eio = |what: &str, r: std::io::Result<()>| {
        assert_eq!(r.as_ref().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "{what}: {r:?}");
    };
    // A is looked up and read first; B's chain is never walked before the truncate.
    assert_eq!(std::fs::read(mnt.join("A.BIN")).unwrap(), pattern(10_000, 1));
    eio("truncate -s 0 A.BIN", truncate(&mnt.join("A.BIN"), 0));
    eio("overwrite A.BIN", write_at(&mnt.join("A.BIN"), 0, b"spread"));
    eio("extend B.BIN", truncate(&mnt.join("B.BIN"), 50_000));
    eio("append to F.BIN", write_at(&mnt.join("F.BIN"), 1_000, b"stale?"));
    eio("truncate F.BIN", truncate(&mnt.join("F.BIN"), 100));
    eio("read F.BIN", std::fs::read(mnt.join("F.BIN")).map(|_| ()));
    // Unlinking succeeds; the shared clusters stay B's.
    std::fs::remove_file(mnt.join("A.BIN")).unwrap();
    std::fs::write(mnt.join("C.BIN"), pattern(40_000, 4)).unwrap();
    let logged = plugfs_tests::wait_until(std::time::Duration::from_secs(10), || {
        let log = host.stderr();
        log.contains("cross-linked") && log.contains("A.BIN") && log.contains("larger than its 1 clusters")
    });
    assert!(logged, "{}", host.stderr());
    stop(host);

    let after = fsck_report(&img);
    assert!(!after.contains("C.BIN") && !after.contains("share"), "before:\n{before}\nafter:\n{after}");
    assert!(run_ok("mcopy", &["-n", "-i", i, "::/B.BIN", "-"]) == b_before);
    assert!(run_ok("mcopy", &["-n", "-i", i, "::/C.BIN", "-"]) == pattern(40_000, 4));
}
