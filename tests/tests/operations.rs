//! Operating a running host: reload (command and SIGHUP), status, unmount by name, through
//! real FUSE mounts and the control socket.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugfs_tests::{Host, is_fuse_mount, plugfs, target_dir, wait_until};

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
    fn config_path(&self) -> PathBuf {
        self.path("plugfs.toml")
    }
    fn write_config(&self, mounts: &str) -> PathBuf {
        let text =
            format!("[host]\nplugin_dirs = [{:?}]\ndrain_timeout = 600\n{mounts}", target_dir().to_str().unwrap());
        std::fs::write(self.config_path(), text).unwrap();
        self.config_path()
    }
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config_path();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        plugfs(&all)
    }
    fn status(&self) -> Vec<serde_json::Value> {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["mounts"].as_array().cloned().unwrap_or_default()
    }
}

fn memfs(name: &str) -> String {
    format!("\n[[mount]]\nname = \"{name}\"\nplugin = \"memfs\"\nmountpoint = \"{name}\"\ncreate_mountpoint = true\n")
}

fn durable_io(name: &str, root: &str) -> String {
    format!(
        "\n[[mount]]\nname = \"{name}\"\nplugin = \"durable-io\"\nmountpoint = \"{name}\"\ncreate_mountpoint = true\n\
         [mount.config]\nroot = \"{root}\"\ncreate_root = true\n"
    )
}

fn find<'a>(status: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    status.iter().find(|m| m["name"] == name)
}

fn mounted(p: &Path) -> bool {
    wait_until(Duration::from_secs(20), || is_fuse_mount(p))
}

fn unmounted(p: &Path) -> bool {
    wait_until(Duration::from_secs(20), || !is_fuse_mount(p))
}

#[test]
fn reload_adds_removes_and_changes_mounts_while_a_file_open_on_an_unchanged_mount_reads_on() {
    let s = Setup::new();
    let config = s.write_config(&format!("{}{}{}", durable_io("keep", "keep-data"), memfs("gone"), memfs("change")));
    let (keep, gone, change, added) = (s.path("keep"), s.path("gone"), s.path("change"), s.path("added"));
    let mut host = Host::start(&config, &[&keep, &gone, &change]);

    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(keep.join("big"), &content).unwrap();
    let mut open = std::fs::File::open(keep.join("big")).unwrap();
    let mut first = vec![0u8; 100_000];
    open.read_exact(&mut first).unwrap();
    std::fs::write(change.join("old-backend"), b"memfs").unwrap();
    std::fs::create_dir_all(s.path("change-data")).unwrap();
    std::fs::write(s.path("change-data/new-backend"), b"durable-io").unwrap();

    let status = s.status();
    assert_eq!(find(&status, "keep").unwrap()["open_handles"], 1, "{status:?}");
    let keep_requests = find(&status, "keep").unwrap()["requests"].as_u64().unwrap();
    assert!(keep_requests > 0, "{status:?}");

    s.write_config(&format!(
        "{}{}{}",
        durable_io("keep", "keep-data"),
        durable_io("change", "change-data"),
        memfs("added")
    ));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", host.stderr());
    for want in ["keep: unchanged", "gone: removed", "change: changed", "added: added"] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }

    assert!(unmounted(&gone), "a removed mount without open files is unmounted:\n{}", host.stderr());
    assert!(mounted(&added), "{}", host.stderr());
    assert!(
        wait_until(Duration::from_secs(20), || change.join("new-backend").exists()),
        "the changed mount serves its new backend:\n{}",
        host.stderr()
    );
    assert!(!change.join("old-backend").exists());
    std::fs::write(added.join("x"), b"y").unwrap();

    // The file opened before the reload reads on, on the same open file description.
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert_eq!([first, rest].concat(), content);
    open.seek(SeekFrom::Start(7)).unwrap();
    let mut byte = [0u8; 1];
    open.read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], content[7]);

    let status = s.status();
    let names: Vec<&str> = status.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names.len(), 3, "{status:?}");
    for name in ["keep", "change", "added"] {
        assert_eq!(find(&status, name).unwrap()["state"], "mounted", "{status:?}");
    }
    let keep_now = find(&status, "keep").unwrap();
    assert!(keep_now["requests"].as_u64().unwrap() > keep_requests, "the unchanged mount kept its counters");
    assert_eq!(find(&status, "change").unwrap()["plugin"], "durable-io");
    drop(open);
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    for p in [&keep, &change, &added] {
        assert!(!is_fuse_mount(p));
    }
}

/// Asks the kernel to drop unused dentries and inodes, which makes it forget nodes.
fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (needs root)");
}

fn dev_of(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().dev()
}

#[test]
fn a_backend_swap_keeps_the_mountpoint_and_a_file_open_before_keeps_the_old_backend() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let config = s.write_config(&memfs("data"));
    let data = s.path("data");
    let mut host = Host::start(&config, &[&data]);
    std::fs::write(data.join("f"), b"memfs data").unwrap();
    std::fs::create_dir(data.join("only-in-memfs")).unwrap();
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/x"), b"old sub").unwrap();
    let dev = dev_of(&data);
    let mut old = std::fs::File::open(data.join("f")).unwrap();
    let root = s.path("data-dir");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("f"), b"durable-io data").unwrap();
    std::fs::write(root.join("sub/x"), b"new sub").unwrap();
    // A process whose working directory is inside the mount: it reads ./x when told to,
    // then changes directory through the mountpoint and reads ./x again.
    let mut inside = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cd {0}/sub && echo ready && read _ && cat x && echo && cd {0}/sub && cat x", data.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut inside_out = std::io::BufReader::new(inside.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut inside_out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_ne!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o750, "memfs's root differs");

    s.write_config(&durable_io("data", "data-dir"));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", host.stderr());
    assert!(out.contains("data: changed: backend swapped in place"), "{out}");
    assert!(is_fuse_mount(&data));
    assert_eq!(dev_of(&data), dev, "the mountpoint stayed mounted: the same device");

    // The root and a fresh listing are the new backend's.
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o750);
    let mut names: Vec<String> =
        std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["f", "sub"], "a fresh listing shows the new backend only");
    assert!(!data.join("only-in-memfs").exists());
    // A new open of the same path sees the new backend; the file opened before reads on
    // from the old one, on the same open file description.
    assert_eq!(std::fs::read(data.join("f")).unwrap(), b"durable-io data");
    let mut text = String::new();
    old.read_to_string(&mut text).unwrap();
    assert_eq!(text, "memfs data");
    old.seek(SeekFrom::Start(0)).unwrap();
    text.clear();
    old.read_to_string(&mut text).unwrap();
    assert_eq!(text, "memfs data");

    // The working directory stays in the old backend; through the mountpoint again, the new.
    std::io::Write::write_all(inside.stdin.as_mut().unwrap(), b"go\n").unwrap();
    drop(inside.stdin.take());
    let exited = wait_until(Duration::from_secs(20), || inside.try_wait().unwrap().is_some());
    if !exited {
        let _ = inside.kill();
    }
    assert!(exited, "the process inside the mount finished");
    let mut seen = String::new();
    inside_out.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "old sub\nnew sub");

    let status = s.status();
    let m = find(&status, "data").unwrap();
    assert_eq!(m["state"], "mounted", "{status:?}");
    assert_eq!(m["plugin"], "durable-io", "{status:?}");
    assert_eq!(m["swaps"], 1, "{status:?}");
    assert_eq!(m["backends"], 2, "memfs still serves the open file: {status:?}");

    drop(old);
    let released = wait_until(Duration::from_secs(20), || {
        drop_kernel_caches();
        find(&s.status(), "data").unwrap()["backends"] == 1
    });
    assert!(
        released,
        "memfs is released once its file is closed and its nodes forgotten: {:?}\n{}",
        s.status(),
        host.stderr()
    );
    assert!(host.stderr().contains("released the earlier backend memfs"), "{}", host.stderr());

    std::fs::write(data.join("g"), b"new").unwrap();
    assert_eq!(std::fs::read(root.join("g")).unwrap(), b"new");
    assert_eq!(dev_of(&data), dev);
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn readers_busy_during_a_swap_see_one_backend_or_the_other_and_never_an_error() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = Setup::new();
    let config = s.write_config(&memfs("data"));
    let data = s.path("data");
    let mut host = Host::start(&config, &[&data]);
    std::fs::write(data.join("f"), b"memfs data").unwrap();
    std::fs::write(data.join("only-memfs"), b"").unwrap();
    let root = s.path("data-dir");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("f"), b"durable-io data").unwrap();
    std::fs::write(root.join("only-durable"), b"").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let new_seen = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (data, stop, new_seen) = (data.clone(), Arc::clone(&stop), Arc::clone(&new_seen));
            std::thread::spawn(move || -> Result<usize, String> {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut rounds = 0;
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    let text = std::fs::read(data.join("f")).map_err(|e| format!("read: {e}"))?;
                    let mut names: Vec<String> = std::fs::read_dir(&data)
                        .map_err(|e| format!("opendir: {e}"))?
                        .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("readdir: {e}"))?;
                    names.sort();
                    match &text[..] {
                        b"memfs data" => {}
                        b"durable-io data" => {
                            new_seen.fetch_add(1, Ordering::SeqCst);
                        }
                        other => return Err(format!("neither backend's data: {other:?}")),
                    }
                    if names != ["f", "only-memfs"] && names != ["f", "only-durable"] {
                        return Err(format!("a listing mixing backends: {names:?}"));
                    }
                    rounds += 1;
                }
                Ok(rounds)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    s.write_config(&durable_io("data", "data-dir"));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", host.stderr());
    assert!(out.contains("data: changed: backend swapped in place"), "{out}");
    // Once the reload has answered, nothing of the old backend is visible from the root.
    assert!(!data.join("only-memfs").exists());
    assert_eq!(std::fs::read(data.join("f")).unwrap(), b"durable-io data");
    let caught_up = wait_until(Duration::from_secs(20), || new_seen.load(Ordering::SeqCst) >= 30);
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let rounds = r.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", host.stderr()));
        assert!(rounds > 0);
    }
    assert!(caught_up, "the readers see the new backend after the swap");
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn a_swap_whose_new_settings_are_refused_leaves_the_old_backend_serving() {
    let s = Setup::new();
    let config = s.write_config(&memfs("data"));
    let data = s.path("data");
    let mut host = Host::start(&config, &[&data]);
    std::fs::write(data.join("f"), b"memfs data").unwrap();
    let mut open = std::fs::File::open(data.join("f")).unwrap();

    // durable-io refuses a root that is a file.
    s.write_config(&durable_io("data", "plugfs.toml"));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("nothing changed") && err.contains("plugin `durable-io` refused its settings"), "{err}");
    assert!(err.contains("plugfs.toml:") && err.contains("mount[0]"), "the error is located: {err}");
    assert!(host.stderr().contains("the old backend serves on"), "{}", host.stderr());

    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "memfs data");
    assert_eq!(std::fs::read(data.join("f")).unwrap(), b"memfs data", "new opens still reach memfs");
    let status = s.status();
    let m = find(&status, "data").unwrap();
    assert_eq!((m["plugin"].as_str(), m["swaps"].as_u64(), m["backends"].as_u64()), (Some("memfs"), Some(0), Some(1)));
    drop(open);
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn a_change_that_cannot_be_swapped_is_remounted_and_the_log_says_why() {
    let s = Setup::new();
    let config = s.write_config(&memfs("data"));
    let data = s.path("data");
    let mut host = Host::start(&config, &[&data]);
    std::fs::write(data.join("f"), b"memfs data").unwrap();

    s.write_config(&format!("{}read_only = true\n", memfs("data")));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", host.stderr());
    assert!(out.contains("data: changed: remounting"), "{out}");
    assert!(
        host.stderr().contains("rather than swapping its backend in place, because its read_only changed"),
        "{}",
        host.stderr()
    );
    // The device number may come back the same for the new mount; the log and the empty
    // new memfs tell the remount.
    let remounted = wait_until(Duration::from_secs(20), || {
        host.stderr().contains(&format!("unmounted {}", data.display()))
            && host.stderr().matches("mount `data`: plugin memfs").count() == 2
            && is_fuse_mount(&data)
    });
    assert!(remounted, "a new mount serves it: {}", host.stderr());
    assert!(!data.join("f").exists());
    let err = std::fs::write(data.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn a_broken_config_on_reload_is_refused_whole_and_sighup_applies_a_good_one() {
    let s = Setup::new();
    let config = s.write_config(&memfs("one"));
    let (one, two) = (s.path("one"), s.path("two"));
    let mut host = Host::start(&config, &[&one]);
    std::fs::write(one.join("kept"), b"still here").unwrap();

    // Removes `one`, adds `two`, and has an unknown key: none of it may happen.
    let broken = format!("{}bogus = 1\n", memfs("two"));
    s.write_config(&broken);
    let bogus_line = std::fs::read_to_string(&config).unwrap().lines().position(|l| l == "bogus = 1").unwrap() + 1;
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    let located = format!("plugfs.toml:{bogus_line}:1: key `mount[0].bogus`");
    assert!(err.contains(&located) && err.contains("nothing changed"), "{located:?} missing from:\n{err}");
    assert!(host.stderr().contains(&located), "the log names the error too:\n{}", host.stderr());

    // A plugin refusing its settings is found before anything changes, too.
    s.write_config(&format!("{}{}", memfs("two"), durable_io("three", "plugfs.toml")));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");

    // The same through SIGHUP: logged, and nothing changes.
    s.write_config(&broken);
    unsafe { libc::kill(host.pid(), libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(20), || host.stderr().matches(&located).count() >= 2), "{}", host.stderr());
    assert!(is_fuse_mount(&one) && !is_fuse_mount(&two));
    assert_eq!(std::fs::read(one.join("kept")).unwrap(), b"still here");
    let status = s.status();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(find(&status, "one").unwrap()["state"], "mounted");

    s.write_config(&format!("{}{}", memfs("one"), memfs("two")));
    unsafe { libc::kill(host.pid(), libc::SIGHUP) };
    assert!(mounted(&two), "{}", host.stderr());
    assert_eq!(std::fs::read(one.join("kept")).unwrap(), b"still here", "the unchanged mount kept its files");
    assert!(host.is_running());
}

#[test]
fn unmount_by_name_waits_for_the_open_files_then_unmounts() {
    let s = Setup::new();
    let config = s.write_config(&format!("{}{}", memfs("busy"), memfs("other")));
    let (busy, other) = (s.path("busy"), s.path("other"));
    let mut host = Host::start(&config, &[&busy, &other]);
    std::fs::write(busy.join("f"), b"open while unmounting").unwrap();
    let mut open = std::fs::File::open(busy.join("f")).unwrap();

    let (code, out, err) = s.cli(&["unmount", "busy"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = s.status();
    assert_eq!(find(&status, "busy").unwrap()["state"], "draining", "{status:?}");
    assert!(is_fuse_mount(&busy), "a draining mount still serves its open files");
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "open while unmounting");
    drop(open);
    assert!(unmounted(&busy), "{}", host.stderr());
    assert!(is_fuse_mount(&other));

    let (code, _, err) = s.cli(&["unmount", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no mount named `nosuch`"), "{err}");
    let (code, out, _) = s.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("NAME") && out.contains("other") && !out.contains("busy"), "{out}");
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn status_without_a_running_host_says_how_to_start_one() {
    let s = Setup::new();
    s.write_config(&memfs("x"));
    let (code, _, err) = s.cli(&["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach a running plugfs") && err.contains("plugfs.sock"), "{err}");
}

/// Fetches `http://addr/metrics` and returns its series as `name{labels}` → value.
fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn metrics_count_a_known_workload() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let panics = plugfs_tests::plugin_library("plugfs-fixture-panics");
    let config = s.write_config(&format!(
        "metrics_listen = \"{addr}\"\n{}\n[[mount]]\nname = \"p\"\nplugin = {:?}\nmountpoint = \"p\"\n\
         create_mountpoint = true\n",
        memfs("m"),
        panics.to_str().unwrap()
    ));
    let (m, p) = (s.path("m"), s.path("p"));
    let mut host = Host::start(&config, &[&m, &p]);
    let err = std::fs::create_dir(p.join("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "the fixture's mkdir panics");

    let data = vec![7u8; 10_000];
    std::fs::write(m.join("f"), &data).unwrap();
    assert_eq!(std::fs::read(m.join("f")).unwrap(), data);
    for d in ["a", "b", "c"] {
        std::fs::create_dir(m.join(d)).unwrap();
    }
    assert!(std::fs::metadata(m.join("missing")).is_err());
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");

    let metrics = scrape(&addr);
    let get = |k: &str| *metrics.get(k).unwrap_or_else(|| panic!("no {k} in {metrics:#?}"));
    let labels = |op: &str| format!("{{mount=\"m\",plugin=\"memfs\",op=\"{op}\"}}");
    assert_eq!(get(&format!("plugfs_requests_total{}", labels("mkdir"))), 3.0);
    assert_eq!(get(&format!("plugfs_request_duration_seconds_count{}", labels("mkdir"))), 3.0);
    assert_eq!(
        get("plugfs_request_duration_seconds_bucket{le=\"+Inf\",mount=\"m\",plugin=\"memfs\",op=\"mkdir\"}"),
        3.0
    );
    assert_eq!(get("plugfs_written_bytes_total{mount=\"m\",plugin=\"memfs\"}"), 10_000.0);
    assert_eq!(get("plugfs_read_bytes_total{mount=\"m\",plugin=\"memfs\"}"), 10_000.0);
    assert!(get(&format!("plugfs_request_errors_total{}", labels("lookup"))) >= 1.0);
    assert!(get("plugfs_errors_by_errno_total{mount=\"m\",plugin=\"memfs\",errno=\"2\"}") >= 1.0);
    assert_eq!(get("plugfs_mounts"), 2.0);
    assert_eq!(get("plugfs_reloads_total{result=\"applied\"}"), 1.0);
    assert_eq!(get("plugfs_reloads_total{result=\"refused\"}"), 0.0);
    assert_eq!(get("plugfs_plugin_panics_total"), 1.0);
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn metrics_go_on_across_a_backend_swap_under_the_new_plugin_name() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let config = s.write_config(&format!("metrics_listen = \"{addr}\"\n{}", memfs("m")));
    let m = s.path("m");
    let mut host = Host::start(&config, &[&m]);
    std::fs::write(m.join("f"), vec![1u8; 1000]).unwrap();
    s.write_config(&format!("metrics_listen = \"{addr}\"\n{}", durable_io("m", "m-data")));
    let (code, out, err) = s.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("m: changed: backend swapped in place"), "{out}");
    std::fs::write(m.join("g"), vec![2u8; 500]).unwrap();

    let metrics = scrape(&addr);
    let get = |k: &str| *metrics.get(k).unwrap_or_else(|| panic!("no {k} in {metrics:#?}"));
    assert_eq!(get("plugfs_backend_swaps_total"), 1.0);
    assert_eq!(get("plugfs_written_bytes_total{mount=\"m\",plugin=\"durable-io\"}"), 1500.0, "counted on");
    assert!(!metrics.keys().any(|k| k.contains("plugin=\"memfs\"")), "one series per mount");
    assert_eq!(get("plugfs_mounts"), 1.0);
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

/// A volume made by hand the way `plugfs volume create` would: a FAT image from mkfs.fat
/// and its metadata beside it (no first-party plugin formats images yet on this branch).
fn hand_made_fat_volume(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.join(format!("{name}.img"));
    let out = std::process::Command::new("mkfs.fat")
        .args(["-C", "-F", "16", "-n", "HANDMADE"])
        .arg(&image)
        .arg("16384")
        .output()
        .expect("mkfs.fat (dosfstools) must be installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("plugin = \"fat\"\nsize = {}\ncreated = 1\nlabel = \"HANDMADE\"\n", 16384 * 1024),
    )
    .unwrap();
}

#[test]
fn a_volume_mounts_by_name_is_listed_and_inspected_and_rm_refuses_it_while_mounted() {
    let s = Setup::new();
    let volumes = s.path("volumes");
    hand_made_fat_volume(&volumes, "photos");
    let config = s.write_config(
        "volumes_dir = \"volumes\"\n\n[[mount]]\nname = \"pics\"\nvolume = \"photos\"\nmountpoint = \"pics\"\n\
         create_mountpoint = true\n",
    );
    let c = config.to_str().unwrap();

    let (code, out, err) = plugfs(&["volume", "inspect", "photos", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("plugin:   fat") && out.contains("mounted:  no"), "{out}");
    assert!(out.contains("free of 16.0 MiB") && out.contains("the plugin's statfs"), "{out}");

    let pics = s.path("pics");
    let mut host = Host::start(&config, &[&pics]);
    std::fs::write(pics.join("a.txt"), vec![1u8; 1 << 20]).unwrap();

    let (code, out, err) = plugfs(&["volume", "list", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out.lines().find(|l| l.starts_with("photos")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("fat") && line.contains("16.0 MiB") && line.contains("yes"), "{line}");

    let (code, out, err) = plugfs(&["volume", "inspect", "photos", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("mounted:  yes, at {}", pics.display())) && out.contains("the mount's statfs"),
        "{out}"
    );

    let (code, out, err) = plugfs(&["volume", "rm", "photos", "--config", c]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is mounted at"), "{err}");
    assert!(volumes.join("photos.img").exists());

    // A second mount of the same volume is refused where the config names it.
    s.write_config(
        "volumes_dir = \"volumes\"\n\n[[mount]]\nname = \"pics\"\nvolume = \"photos\"\nmountpoint = \"pics\"\n\
         create_mountpoint = true\n\n[[mount]]\nname = \"again\"\nvolume = \"photos\"\nmountpoint = \"again\"\n\
         create_mountpoint = true\n",
    );
    let (code, _, err) = s.cli(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("key `mount[1].volume`") && err.contains("mounted already"), "{err}");

    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    let fsck = std::process::Command::new("fsck.fat").arg("-n").arg(volumes.join("photos.img")).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    let (code, out, err) = plugfs(&["volume", "rm", "photos", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!volumes.join("photos.img").exists() && !volumes.join("photos.toml").exists());
    let (_, out, _) = plugfs(&["volume", "list", "--config", c]);
    assert!(!out.contains("photos"), "{out}");
}

#[test]
fn volume_create_refuses_a_plugin_without_the_format_capability_and_a_mount_of_a_missing_volume_is_located() {
    let s = Setup::new();
    let config = s.write_config(
        "volumes_dir = \"volumes\"\n\n[[mount]]\nname = \"x\"\nvolume = \"nosuch\"\nmountpoint = \"x\"\n\
         create_mountpoint = true\n",
    );
    let c = config.to_str().unwrap();
    let (code, out, err) = plugfs(&["volume", "create", "v", "--plugin", "memfs", "--size", "1M", "--config", c]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("cannot create images"), "{err}");
    assert!(!s.path("volumes/v.img").exists() && !s.path("volumes/v.toml").exists());
    let (code, _, err) = plugfs(&["volume", "create", "../v", "--plugin", "memfs", "--size", "1M", "--config", c]);
    assert_eq!(code, 1);
    assert!(err.contains("not a volume name"), "{err}");

    let (code, out, err) = plugfs(&["check", "--config", c]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("plugfs.toml:8:1: key `mount[0].volume`: no volume `nosuch`"), "{err}");
}

#[test]
fn volume_create_makes_a_fat_image_that_passes_fsck_and_mounts_by_name() {
    let s = Setup::new();
    let config = s.write_config(
        "volumes_dir = \"volumes\"\n\n[[mount]]\nname = \"v\"\nvolume = \"v\"\nmountpoint = \"v\"\ncreate_mountpoint = true\n",
    );
    let c = config.to_str().unwrap();
    let (code, out, err) =
        plugfs(&["volume", "create", "v", "--plugin", "fat", "--size", "32M", "--label", "TEST", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    let image = s.path("volumes/v.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 32 << 20);
    let fsck = std::process::Command::new("fsck.fat").arg("-n").arg(&image).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    let meta = std::fs::read_to_string(s.path("volumes/v.toml")).unwrap();
    assert!(meta.contains("plugin = \"fat\"") && meta.contains("label = \"TEST\""), "{meta}");
    let v = s.path("v");
    let mut host = Host::start(&config, &[&v]);
    std::fs::write(v.join("f"), b"on a new volume").unwrap();
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    let fsck = std::process::Command::new("fsck.fat").arg("-n").arg(&image).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn volume_create_makes_a_wfs_image_that_passes_fsck_mounts_by_name_and_is_removed() {
    let s = Setup::new();
    let config = s.write_config(
        "volumes_dir = \"volumes\"\n\n[[mount]]\nname = \"w\"\nvolume = \"w\"\nmountpoint = \"w\"\ncreate_mountpoint = true\n",
    );
    let c = config.to_str().unwrap();
    let (code, out, err) = plugfs(&["volume", "create", "w", "--plugin", "wfs", "--size", "64M", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    let image = s.path("volumes/w.img");
    let wfs_fsck = |image: &std::path::Path| {
        let out =
            std::process::Command::new(plugfs_tests::binary("plugfs-wfs")).arg("fsck").arg(image).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    wfs_fsck(&image);
    let (code, out, err) = plugfs(&["volume", "list", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with('w') && l.contains("wfs")), "{out}");

    let w = s.path("w");
    let mut host = Host::start(&config, &[&w]);
    std::fs::write(w.join("f"), b"on a new wfs volume").unwrap();
    let (code, out, err) = plugfs(&["volume", "inspect", "w", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wfs"), "{out}");
    let (code, _, err) = plugfs(&["volume", "rm", "w", "--config", c]);
    assert_ne!(code, 0, "rm of a mounted volume must be refused");
    assert!(err.contains("mounted"), "{err}");
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    wfs_fsck(&image);

    let (code, out, err) = plugfs(&["volume", "rm", "w", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!image.exists());
}
