//! The POSIX-semantics checks. Each runs in its own directory under the filesystem's root,
//! through any [`Client`], and is chosen by the plugin's declared [`Capabilities`].

use plugfs_plugin_api::{Capabilities, Errno, FileKind, Timestamp, Whence, fallocate_mode, xattr_flags};

use crate::client::{Client, R, TimeArg};

/// A failed expectation, for the report (or, made by [`skip`], a reason to leave the check
/// out that only shows when it runs).
pub type Outcome = Result<(), String>;

/// One check.
pub struct Check {
    /// A name that says the behaviour (`rename_noreplace_refuses_an_existing_target`).
    pub name: &'static str,
    /// Whether a plugin with these capabilities must pass it.
    pub applies: fn(&Capabilities) -> bool,
    /// What else it needs beyond the capabilities.
    pub needs: Needs,
    /// The check, given its own empty directory.
    pub run: fn(&dyn Client, &str, &Capabilities) -> Outcome,
}

/// What a check needs from the way the filesystem is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Any client will do.
    Nothing,
    /// The kernel in the loop (a mount): the check is of what the kernel does on the
    /// plugin's behalf, such as resolving symlinks or clearing set-id bits on chown.
    Kernel,
}

/// What a skipped outcome starts with; see [`skip`].
pub(crate) const SKIP_MARK: &str = "\0skipped: ";

/// The outcome of a check that finds, when it runs, that it cannot apply: reported as
/// skipped with `reason`, not as passed.
pub fn skip(reason: &str) -> Outcome {
    Err(format!("{SKIP_MARK}{reason}"))
}

const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_RDWR: i32 = 2;
const O_CREAT: i32 = 0o100;
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;
const O_APPEND: i32 = 0o2000;

/// Turns an errno from a step that must succeed into a readable failure.
fn step<T>(what: &str, r: R<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected {e:?}"))
}

/// A step that must fail with `want`.
fn expect_err<T: std::fmt::Debug>(what: &str, r: R<T>, want: Errno) -> Outcome {
    match r {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("{what}: expected {want:?}, got {e:?}")),
        Ok(v) => Err(format!("{what}: expected {want:?}, but it succeeded ({v:?})")),
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg()) }
}

fn write_file(c: &dyn Client, path: &str, data: &[u8]) -> Outcome {
    let fd = step(&format!("create {path}"), c.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644))?;
    let n = step(&format!("write {path}"), c.write(fd, 0, data))?;
    step(&format!("close {path}"), c.close(fd))?;
    ensure(n == data.len(), || format!("write {path}: wrote {n} of {} bytes", data.len()))
}

fn read_file(c: &dyn Client, path: &str) -> Result<Vec<u8>, String> {
    let fd = step(&format!("open {path}"), c.open(path, O_RDONLY, 0))?;
    let size = step(&format!("stat {path}"), c.stat(path))?.size as usize;
    let data = step(&format!("read {path}"), c.read(fd, 0, size + 4096));
    step(&format!("close {path}"), c.close(fd))?;
    data
}

fn names(c: &dyn Client, dir: &str) -> Result<Vec<String>, String> {
    let mut n: Vec<String> = step(&format!("readdir {dir}"), c.readdir(dir))?
        .into_iter()
        .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    n.sort();
    Ok(n)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn writable(c: &Capabilities) -> bool {
    c.writable
}

/// Every check, in the order they run.
pub fn all() -> Vec<Check> {
    macro_rules! check {
        ($name:ident, $applies:expr) => {
            Check { name: stringify!($name), applies: $applies, needs: Needs::Nothing, run: $name }
        };
        ($name:ident, $applies:expr, $needs:expr) => {
            Check { name: stringify!($name), applies: $applies, needs: $needs, run: $name }
        };
    }
    vec![
        check!(root_is_a_directory, |_| true),
        check!(missing_names_are_enoent, |_| true),
        check!(statfs_reports_the_name_limit, |_| true),
        check!(written_data_reads_back, writable),
        check!(large_writes_at_offsets_read_back, writable),
        check!(writing_past_the_end_fills_the_gap_with_zeroes, writable),
        check!(truncate_shrinks_and_extends_with_zeroes, writable),
        check!(o_trunc_empties_a_file, writable),
        check!(o_append_writes_at_the_end, writable),
        check!(o_excl_refuses_an_existing_name, writable),
        check!(mkdir_and_rmdir, writable),
        check!(mkdir_of_an_existing_name_is_eexist, writable),
        check!(rmdir_of_a_non_empty_directory_is_enotempty, writable),
        check!(unlink_of_a_directory_is_refused, writable),
        check!(rmdir_of_a_file_is_enotdir, writable),
        check!(readdir_lists_every_entry_of_a_large_directory, writable),
        check!(readdir_reports_entry_types, writable),
        check!(unlinked_names_disappear_from_readdir, writable),
        check!(an_unlinked_open_file_stays_readable, writable),
        check!(rename_moves_a_file_between_directories, writable),
        check!(rename_replaces_an_existing_file, writable),
        check!(rename_of_a_directory_over_a_non_empty_one_is_enotempty, writable),
        check!(rename_of_a_file_over_a_directory_is_eisdir, writable),
        check!(rename_of_a_directory_over_a_file_is_enotdir, writable),
        check!(rename_into_its_own_subtree_is_einval, writable),
        check!(rename_noreplace_refuses_an_existing_target, |c| c.writable && c.rename_noreplace),
        check!(rename_exchange_swaps_two_names, |c| c.writable && c.rename_exchange),
        check!(names_longer_than_the_limit_are_enametoolong, writable),
        check!(writing_updates_mtime_and_size, writable),
        check!(utimens_sets_times, writable),
        check!(fsync_succeeds_on_written_files, writable),
        check!(copy_file_range_copies_bytes, writable),
        check!(symlinks_store_their_target_verbatim, |c| c.writable && c.symlinks),
        check!(hard_links_share_data_and_count_links, |c| c.writable && c.hard_links),
        check!(chmod_changes_permission_bits, |c| c.writable && c.permissions),
        check!(chown_changes_the_owner, |c| c.writable && c.permissions),
        check!(fifos_can_be_created, |c| c.writable && c.special_files),
        check!(xattrs_round_trip, |c| c.writable && c.xattrs),
        check!(xattr_create_and_replace_flags_are_honoured, |c| c.writable && c.xattrs),
        check!(xattrs_are_refused_when_unsupported, |c| c.writable && !c.xattrs),
        check!(fallocate_reserves_space, |c| c.writable && c.fallocate),
        check!(punched_holes_read_as_zeroes, |c| c.writable && c.punch_hole),
        check!(seek_hole_and_seek_data_find_holes, |c| c.writable && c.sparse_files && c.punch_hole),
        check!(seek_data_treats_a_dense_file_as_all_data, writable),
        check!(utime_now_and_utime_omit, writable),
        check!(renaming_a_link_onto_another_link_of_the_same_file_does_nothing, |c| c.writable && c.hard_links),
        check!(directory_link_counts_follow_subdirectories, writable),
        check!(a_file_used_as_a_directory_is_enotdir, writable),
        check!(a_directory_opened_for_writing_or_truncated_is_eisdir, writable),
        check!(symlink_loops_and_o_nofollow_are_eloop, |c| c.writable && c.symlinks, Needs::Kernel),
        check!(every_creating_call_refuses_an_existing_name_with_eexist, writable),
        check!(truncating_a_file_open_elsewhere_shows_the_new_size_there, writable),
        check!(offsets_near_2_pow_63_follow_linux, writable),
        check!(two_handles_writing_disjoint_ranges_both_land, writable),
        check!(setgid_directories_pass_on_their_group, |c| c.writable && c.permissions),
        check!(chown_clears_suid_and_sgid, |c| c.writable && c.permissions, Needs::Kernel),
    ]
}

fn root_is_a_directory(c: &dyn Client, _: &str, _: &Capabilities) -> Outcome {
    let st = step("stat /", c.stat(""))?;
    ensure(st.kind == FileKind::Directory, || format!("root is a {:?}", st.kind))?;
    let entries = step("readdir /", c.readdir(""))?;
    ensure(entries.iter().any(|(n, _)| n == b".") && entries.iter().any(|(n, _)| n == b".."), || {
        "readdir of the root lacks . or ..".into()
    })
}

fn missing_names_are_enoent(c: &dyn Client, _: &str, _: &Capabilities) -> Outcome {
    expect_err("stat of a missing name", c.stat("no-such-name-here"), Errno::ENOENT)?;
    expect_err("open of a missing name", c.open("no-such-name-here", O_RDONLY, 0), Errno::ENOENT)
}

fn statfs_reports_the_name_limit(c: &dyn Client, _: &str, caps: &Capabilities) -> Outcome {
    let (namelen, bsize) = step("statfs", c.statfs())?;
    ensure(namelen == caps.max_name_len, || {
        format!("statfs namelen {namelen}, capabilities say {}", caps.max_name_len)
    })?;
    ensure(bsize > 0, || "statfs block size is 0".into())
}

fn written_data_reads_back(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let data = pattern(10_000, 7);
    write_file(c, &format!("{d}/f"), &data)?;
    let back = read_file(c, &format!("{d}/f"))?;
    ensure(back == data, || format!("read back {} bytes that differ from the {} written", back.len(), data.len()))?;
    let st = step("stat", c.stat(&format!("{d}/f")))?;
    ensure(st.kind == FileKind::File && st.size == 10_000, || format!("stat shows {:?} of {} bytes", st.kind, st.size))
}

fn large_writes_at_offsets_read_back(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/big");
    let fd = step("create", c.open(&path, O_RDWR | O_CREAT, 0o644))?;
    let a = pattern(1 << 20, 1);
    let b = pattern(600_000, 2);
    step("write 1 MiB", c.write(fd, 0, &a))?;
    // Overlaps the end of the first write and extends the file past it.
    step("write at 700000", c.write(fd, 700_000, &b))?;
    let back = step("read", c.read(fd, 0, 2 << 20))?;
    step("close", c.close(fd))?;
    let mut want = a[..700_000].to_vec();
    want.extend_from_slice(&b);
    ensure(back == want, || format!("read {} bytes, want {}; contents differ", back.len(), want.len()))
}

fn writing_past_the_end_fills_the_gap_with_zeroes(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/gap");
    let fd = step("create", c.open(&path, O_RDWR | O_CREAT, 0o644))?;
    step("write", c.write(fd, 0, b"head"))?;
    step("write past the end", c.write(fd, 8192, b"tail"))?;
    let back = step("read", c.read(fd, 0, 9000))?;
    step("close", c.close(fd))?;
    ensure(back.len() == 8196, || format!("size {} after writing at 8192", back.len()))?;
    ensure(&back[..4] == b"head" && back[4..8192].iter().all(|b| *b == 0) && &back[8192..] == b"tail", || {
        "the gap does not read as zeroes".into()
    })
}

fn truncate_shrinks_and_extends_with_zeroes(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/t");
    write_file(c, &path, &pattern(5000, 3))?;
    step("truncate to 100", c.truncate(&path, 100))?;
    ensure(step("stat", c.stat(&path))?.size == 100, || "size after truncate to 100".into())?;
    step("truncate to 3000", c.truncate(&path, 3000))?;
    let back = read_file(c, &path)?;
    ensure(back.len() == 3000 && back[..100] == pattern(100, 3)[..] && back[100..].iter().all(|b| *b == 0), || {
        "data after shrinking and extending is wrong (stale bytes must not come back)".into()
    })
}

fn o_trunc_empties_a_file(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/t");
    write_file(c, &path, b"some content")?;
    let fd = step("open O_TRUNC", c.open(&path, O_WRONLY | O_TRUNC, 0))?;
    step("close", c.close(fd))?;
    ensure(step("stat", c.stat(&path))?.size == 0, || "size after O_TRUNC".into())
}

fn o_append_writes_at_the_end(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/log");
    write_file(c, &path, b"one\n")?;
    let fd = step("open O_APPEND", c.open(&path, O_WRONLY | O_APPEND, 0))?;
    step("append", c.write(fd, 0, b"two\n"))?;
    step("close", c.close(fd))?;
    let back = read_file(c, &path)?;
    ensure(back == b"one\ntwo\n", || format!("after appending: {:?}", String::from_utf8_lossy(&back)))
}

fn o_excl_refuses_an_existing_name(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/x");
    let fd = step("create O_EXCL", c.open(&path, O_WRONLY | O_CREAT | O_EXCL, 0o600))?;
    step("close", c.close(fd))?;
    expect_err("second O_CREAT|O_EXCL", c.open(&path, O_WRONLY | O_CREAT | O_EXCL, 0o600), Errno::EEXIST)
}

fn mkdir_and_rmdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/sub");
    step("mkdir", c.mkdir(&path, 0o755))?;
    let st = step("stat", c.stat(&path))?;
    ensure(st.kind == FileKind::Directory, || format!("mkdir made a {:?}", st.kind))?;
    ensure(names(c, &path)?.is_empty(), || "a new directory is not empty".into())?;
    step("rmdir", c.rmdir(&path))?;
    expect_err("stat after rmdir", c.stat(&path), Errno::ENOENT)
}

fn mkdir_of_an_existing_name_is_eexist(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/a"), 0o755))?;
    expect_err("mkdir again", c.mkdir(&format!("{d}/a"), 0o755), Errno::EEXIST)?;
    write_file(c, &format!("{d}/f"), b"x")?;
    expect_err("mkdir over a file", c.mkdir(&format!("{d}/f"), 0o755), Errno::EEXIST)
}

fn rmdir_of_a_non_empty_directory_is_enotempty(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/full"), 0o755))?;
    write_file(c, &format!("{d}/full/f"), b"x")?;
    expect_err("rmdir of a non-empty directory", c.rmdir(&format!("{d}/full")), Errno::ENOTEMPTY)
}

fn unlink_of_a_directory_is_refused(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    match c.unlink(&format!("{d}/dir")) {
        // Linux says EISDIR; POSIX allows EPERM.
        Err(Errno::EISDIR) | Err(Errno::EPERM) => Ok(()),
        other => Err(format!("unlink of a directory: expected EISDIR, got {other:?}")),
    }
}

fn rmdir_of_a_file_is_enotdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/f"), b"x")?;
    expect_err("rmdir of a file", c.rmdir(&format!("{d}/f")), Errno::ENOTDIR)
}

fn readdir_lists_every_entry_of_a_large_directory(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let count = 1500;
    for i in 0..count {
        let fd = step("create", c.open(&format!("{d}/entry-with-a-longish-name-{i:05}"), O_WRONLY | O_CREAT, 0o644))?;
        step("close", c.close(fd))?;
    }
    let listed = names(c, d)?;
    ensure(listed.len() == count, || format!("readdir listed {} of {count} entries", listed.len()))?;
    let mut want: Vec<String> = (0..count).map(|i| format!("entry-with-a-longish-name-{i:05}")).collect();
    want.sort();
    ensure(listed == want, || "readdir listed the wrong names or duplicates".into())?;
    let raw = step("readdir", c.readdir(d))?;
    let dots = raw.iter().filter(|(n, _)| n == b"." || n == b"..").count();
    ensure(dots == 2, || format!("readdir listed {dots} of . and .."))
}

fn readdir_reports_entry_types(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/file"), b"x")?;
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    if caps.symlinks {
        step("symlink", c.symlink("file", &format!("{d}/link")))?;
    }
    for (name, kind) in step("readdir", c.readdir(d))? {
        let want = match &name[..] {
            b"file" => FileKind::File,
            b"dir" | b"." | b".." => FileKind::Directory,
            b"link" => FileKind::Symlink,
            other => return Err(format!("unexpected entry {:?}", String::from_utf8_lossy(other))),
        };
        ensure(kind == want, || format!("{} listed as {kind:?}", String::from_utf8_lossy(&name)))?;
    }
    Ok(())
}

fn unlinked_names_disappear_from_readdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    for n in ["a", "b", "c"] {
        write_file(c, &format!("{d}/{n}"), n.as_bytes())?;
    }
    step("unlink", c.unlink(&format!("{d}/b")))?;
    let listed = names(c, d)?;
    ensure(listed == ["a", "c"], || format!("after unlinking b: {listed:?}"))?;
    expect_err("stat after unlink", c.stat(&format!("{d}/b")), Errno::ENOENT)
}

fn an_unlinked_open_file_stays_readable(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/ghost");
    write_file(c, &path, b"still here")?;
    let fd = step("open", c.open(&path, O_RDWR, 0))?;
    step("unlink", c.unlink(&path))?;
    step("write after unlink", c.write(fd, 10, b"!"))?;
    let back = step("read after unlink", c.read(fd, 0, 100))?;
    step("close", c.close(fd))?;
    ensure(back == b"still here!", || format!("read {:?}", String::from_utf8_lossy(&back)))?;
    expect_err("stat after unlink", c.stat(&path), Errno::ENOENT)
}

fn rename_moves_a_file_between_directories(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/from"), 0o755))?;
    step("mkdir", c.mkdir(&format!("{d}/to"), 0o755))?;
    write_file(c, &format!("{d}/from/f"), b"moving")?;
    let ino = step("stat", c.stat(&format!("{d}/from/f")))?.ino;
    step("rename", c.rename(&format!("{d}/from/f"), &format!("{d}/to/g"), 0))?;
    expect_err("old name", c.stat(&format!("{d}/from/f")), Errno::ENOENT)?;
    let st = step("stat new name", c.stat(&format!("{d}/to/g")))?;
    ensure(st.ino == ino, || "rename changed the inode number".into())?;
    ensure(read_file(c, &format!("{d}/to/g"))? == b"moving", || "contents changed by rename".into())
}

fn rename_replaces_an_existing_file(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/new"), b"new")?;
    write_file(c, &format!("{d}/old"), b"old contents")?;
    step("rename over", c.rename(&format!("{d}/new"), &format!("{d}/old"), 0))?;
    ensure(read_file(c, &format!("{d}/old"))? == b"new", || "target does not have the new contents".into())?;
    ensure(names(c, d)? == ["old"], || "both names still listed".into())
}

fn rename_of_a_directory_over_a_non_empty_one_is_enotempty(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/a"), 0o755))?;
    step("mkdir", c.mkdir(&format!("{d}/b"), 0o755))?;
    write_file(c, &format!("{d}/b/f"), b"x")?;
    match c.rename(&format!("{d}/a"), &format!("{d}/b"), 0) {
        Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {}
        other => return Err(format!("rename over a non-empty directory: expected ENOTEMPTY, got {other:?}")),
    }
    step("mkdir", c.mkdir(&format!("{d}/empty"), 0o755))?;
    step("rename over an empty directory", c.rename(&format!("{d}/a"), &format!("{d}/empty"), 0))
}

fn rename_of_a_file_over_a_directory_is_eisdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/f"), b"x")?;
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    expect_err("rename file over directory", c.rename(&format!("{d}/f"), &format!("{d}/dir"), 0), Errno::EISDIR)
}

fn rename_of_a_directory_over_a_file_is_enotdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/f"), b"x")?;
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    expect_err("rename directory over file", c.rename(&format!("{d}/dir"), &format!("{d}/f"), 0), Errno::ENOTDIR)
}

fn rename_into_its_own_subtree_is_einval(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mkdir", c.mkdir(&format!("{d}/p"), 0o755))?;
    step("mkdir", c.mkdir(&format!("{d}/p/child"), 0o755))?;
    expect_err("rename into own subtree", c.rename(&format!("{d}/p"), &format!("{d}/p/child/p"), 0), Errno::EINVAL)
}

fn rename_noreplace_refuses_an_existing_target(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/a"), b"a")?;
    write_file(c, &format!("{d}/b"), b"b")?;
    expect_err("RENAME_NOREPLACE", c.rename(&format!("{d}/a"), &format!("{d}/b"), 1), Errno::EEXIST)?;
    ensure(read_file(c, &format!("{d}/b"))? == b"b", || "target was replaced".into())?;
    step("RENAME_NOREPLACE to a free name", c.rename(&format!("{d}/a"), &format!("{d}/c"), 1))
}

fn rename_exchange_swaps_two_names(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/a"), b"was a")?;
    step("mkdir", c.mkdir(&format!("{d}/b"), 0o755))?;
    step("RENAME_EXCHANGE", c.rename(&format!("{d}/a"), &format!("{d}/b"), 2))?;
    ensure(step("stat a", c.stat(&format!("{d}/a")))?.kind == FileKind::Directory, || "a is not the directory".into())?;
    ensure(read_file(c, &format!("{d}/b"))? == b"was a", || "b does not hold a's data".into())?;
    expect_err(
        "RENAME_EXCHANGE with a missing target",
        c.rename(&format!("{d}/a"), &format!("{d}/zz"), 2),
        Errno::ENOENT,
    )
}

fn names_longer_than_the_limit_are_enametoolong(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    let fits = "n".repeat(caps.max_name_len as usize);
    write_file(c, &format!("{d}/{fits}"), b"x")?;
    let long = format!("{d}/{}", "n".repeat(caps.max_name_len as usize + 1));
    let fits = format!("{d}/{fits}");
    let too_long =
        |what: &str, r: R<()>| expect_err(&format!("{what} with a name over the limit"), r, Errno::ENAMETOOLONG);
    too_long("create", c.open(&long, O_WRONLY | O_CREAT, 0o644).map(|_| ()))?;
    too_long("lookup", c.stat(&long).map(|_| ()))?;
    too_long("mkdir", c.mkdir(&long, 0o755))?;
    too_long("rename", c.rename(&fits, &long, 0))?;
    if caps.symlinks {
        too_long("symlink", c.symlink("target", &long))?;
    }
    if caps.hard_links {
        too_long("link", c.link(&fits, &long))?;
    }
    if caps.special_files {
        too_long("mknod", c.mknod(&long, 0o010644, 0))?;
    }
    ensure(names(c, d)?.len() == 1, || "a refused name was created after all".into())
}

fn writing_updates_mtime_and_size(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/m");
    write_file(c, &path, b"1")?;
    let old = Timestamp::new(1_000_000_000, 0);
    step("utimens", c.utimens(&path, old, old))?;
    let fd = step("open", c.open(&path, O_WRONLY, 0))?;
    step("write", c.write(fd, 1, b"23"))?;
    step("close", c.close(fd))?;
    let st = step("stat", c.stat(&path))?;
    ensure(st.size == 3, || format!("size {} after writing 3 bytes", st.size))?;
    ensure(st.mtime > old, || "a write did not update mtime".into())
}

fn utimens_sets_times(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    let path = format!("{d}/t");
    write_file(c, &path, b"x")?;
    let (nanos_a, nanos_m) = if caps.nanosecond_times { (123_456_789, 987_654_321) } else { (0, 0) };
    let atime = Timestamp::new(1_500_000_000, nanos_a);
    let mtime = Timestamp::new(1_600_000_000, nanos_m);
    step("utimens", c.utimens(&path, atime, mtime))?;
    let st = step("stat", c.stat(&path))?;
    ensure(stored(caps, st.mtime, mtime, false), || format!("mtime {:?}, set {mtime:?}", st.mtime))?;
    ensure(stored(caps, st.atime, atime, true), || format!("atime {:?}, set {atime:?}", st.atime))
}

/// Whether a time read back is the one set, at the plugin's resolution: exact with
/// `nanosecond_times`; otherwise the stored value may be rounded down, by up to 2 s for
/// mtime and a day for atime (FAT keeps mtime to 2 s and atime as a date).
fn stored(caps: &Capabilities, got: Timestamp, set: Timestamp, atime: bool) -> bool {
    if caps.nanosecond_times {
        return got == set;
    }
    let granularity = if atime { 86_400 } else { 2 };
    got <= set && set.secs - got.secs < granularity
}

fn fsync_succeeds_on_written_files(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let fd = step("create", c.open(&format!("{d}/f"), O_WRONLY | O_CREAT, 0o644))?;
    step("write", c.write(fd, 0, b"durable"))?;
    step("fsync", c.fsync(fd))?;
    step("close", c.close(fd))
}

fn copy_file_range_copies_bytes(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let src = pattern(100_000, 9);
    write_file(c, &format!("{d}/src"), &src)?;
    let a = step("open src", c.open(&format!("{d}/src"), O_RDONLY, 0))?;
    let b = step("create dst", c.open(&format!("{d}/dst"), O_RDWR | O_CREAT, 0o644))?;
    let mut done = 0usize;
    let result = loop {
        match c.copy_file_range(a, 1000 + done as u64, b, 10 + done as u64, (50_000 - done) as u64) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                done += n;
                if done >= 50_000 {
                    break Ok(());
                }
            }
            // Directly, a plugin without the operation answers as POSIX allows; the kernel
            // then copies by reading and writing, which the mount checks.
            Err(Errno::EOPNOTSUPP) | Err(Errno::EXDEV) if done == 0 => break Err(None),
            Err(e) => break Err(Some(e)),
        }
    };
    let back = step("read dst", c.read(b, 0, 100_000));
    step("close", c.close(a))?;
    step("close", c.close(b))?;
    match result {
        Err(None) => Ok(()),
        Err(Some(e)) => Err(format!("copy_file_range: unexpected {e:?}")),
        Ok(()) => {
            let back = back?;
            ensure(done == 50_000 && back.len() == 50_010, || format!("copied {done}, file is {} bytes", back.len()))?;
            ensure(back[..10].iter().all(|b| *b == 0) && back[10..] == src[1000..51_000], || {
                "copied bytes differ".into()
            })
        }
    }
}

fn symlinks_store_their_target_verbatim(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let link = format!("{d}/link");
    for target in ["../somewhere/else", "/absolute/target", "dangling"] {
        let _ = c.unlink(&link);
        step("symlink", c.symlink(target, &link))?;
        let back = step("readlink", c.readlink(&link))?;
        ensure(back == target.as_bytes(), || {
            format!("readlink gave {:?} for {target:?}", String::from_utf8_lossy(&back))
        })?;
    }
    let st = step("lstat", c.stat(&link))?;
    ensure(st.kind == FileKind::Symlink && st.size == "dangling".len() as u64, || {
        format!("lstat shows {:?} size {}", st.kind, st.size)
    })?;
    write_file(c, &format!("{d}/file"), b"x")?;
    expect_err("readlink of a file", c.readlink(&format!("{d}/file")), Errno::EINVAL)
}

fn hard_links_share_data_and_count_links(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/a"), b"shared")?;
    step("link", c.link(&format!("{d}/a"), &format!("{d}/b")))?;
    let (sa, sb) = (step("stat a", c.stat(&format!("{d}/a")))?, step("stat b", c.stat(&format!("{d}/b")))?);
    ensure(sa.ino == sb.ino && sa.nlink == 2 && sb.nlink == 2, || {
        format!("after link: ino {}/{} nlink {}/{}", sa.ino, sb.ino, sa.nlink, sb.nlink)
    })?;
    let fd = step("open b", c.open(&format!("{d}/b"), O_WRONLY | O_APPEND, 0))?;
    step("append via b", c.write(fd, 0, b"!"))?;
    step("close", c.close(fd))?;
    ensure(read_file(c, &format!("{d}/a"))? == b"shared!", || {
        "a write through one link is not seen through the other".into()
    })?;
    step("unlink a", c.unlink(&format!("{d}/a")))?;
    ensure(step("stat b", c.stat(&format!("{d}/b")))?.nlink == 1, || "nlink after unlinking one name".into())?;
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    match c.link(&format!("{d}/dir"), &format!("{d}/dirlink")) {
        Err(Errno::EPERM) => Ok(()),
        other => Err(format!("link of a directory: expected EPERM, got {other:?}")),
    }
}

fn chmod_changes_permission_bits(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"x")?;
    for mode in [0o600, 0o4755, 0o2755, 0o1777, 0o640] {
        step("chmod", c.chmod(&path, mode))?;
        let perm = step("stat", c.stat(&path))?.perm;
        ensure(perm == mode, || format!("chmod {mode:o} left {perm:o}"))?;
    }
    Ok(())
}

fn chown_changes_the_owner(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"x")?;
    step("chown", c.chown(&path, 4321, 8765))?;
    let st = step("stat", c.stat(&path))?;
    ensure((st.uid, st.gid) == (4321, 8765), || format!("owner {}:{} after chown 4321:8765", st.uid, st.gid))
}

fn fifos_can_be_created(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    step("mknod fifo", c.mknod(&format!("{d}/pipe"), 0o010644, 0))?;
    let st = step("stat", c.stat(&format!("{d}/pipe")))?;
    ensure(st.kind == FileKind::Fifo && st.perm == 0o644, || format!("mknod made {:?} {:o}", st.kind, st.perm))
}

fn xattrs_round_trip(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"x")?;
    let value = pattern(300, 4);
    step("setxattr", c.setxattr(&path, "user.one", &value, 0))?;
    step("setxattr", c.setxattr(&path, "user.two", b"", 0))?;
    ensure(step("getxattr size", c.getxattr(&path, "user.one", 0))?.len() == 300, || "size probe".into())?;
    ensure(step("getxattr", c.getxattr(&path, "user.one", 1000))? == value, || "value differs".into())?;
    expect_err("getxattr into a small buffer", c.getxattr(&path, "user.one", 10), Errno::ERANGE)?;
    let mut listed = step("listxattr", c.listxattr(&path))?;
    listed.retain(|n| n.starts_with("user."));
    listed.sort();
    ensure(listed == ["user.one", "user.two"], || format!("listxattr: {listed:?}"))?;
    step("removexattr", c.removexattr(&path, "user.one"))?;
    expect_err("getxattr after remove", c.getxattr(&path, "user.one", 1000), Errno::ENODATA)?;
    expect_err("removexattr of a missing name", c.removexattr(&path, "user.one"), Errno::ENODATA)
}

fn xattr_create_and_replace_flags_are_honoured(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"x")?;
    expect_err(
        "XATTR_REPLACE of a missing name",
        c.setxattr(&path, "user.k", b"1", xattr_flags::XATTR_REPLACE),
        Errno::ENODATA,
    )?;
    step("XATTR_CREATE", c.setxattr(&path, "user.k", b"1", xattr_flags::XATTR_CREATE))?;
    expect_err(
        "XATTR_CREATE of an existing name",
        c.setxattr(&path, "user.k", b"2", xattr_flags::XATTR_CREATE),
        Errno::EEXIST,
    )?;
    step("XATTR_REPLACE", c.setxattr(&path, "user.k", b"3", xattr_flags::XATTR_REPLACE))?;
    ensure(step("getxattr", c.getxattr(&path, "user.k", 10))? == b"3", || "value after replace".into())
}

fn xattrs_are_refused_when_unsupported(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"x")?;
    expect_err("setxattr without xattr support", c.setxattr(&path, "user.k", b"1", 0), Errno::ENOTSUP)?;
    let listed = step("listxattr", c.listxattr(&path))?;
    ensure(listed.iter().all(|n| !n.starts_with("user.")), || format!("listxattr lists {listed:?}"))
}

fn fallocate_reserves_space(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    let fd = step("create", c.open(&path, O_RDWR | O_CREAT, 0o644))?;
    step("fallocate", c.fallocate(fd, 0, 0, 100_000))?;
    ensure(step("stat", c.stat(&path))?.size == 100_000, || "fallocate mode 0 must extend the size".into())?;
    step("fallocate KEEP_SIZE", c.fallocate(fd, fallocate_mode::KEEP_SIZE, 100_000, 100_000))?;
    ensure(step("stat", c.stat(&path))?.size == 100_000, || "KEEP_SIZE changed the size".into())?;
    let back = step("read", c.read(fd, 0, 200_000))?;
    step("close", c.close(fd))?;
    ensure(back.len() == 100_000 && back.iter().all(|b| *b == 0), || "preallocated space must read as zeroes".into())
}

fn punched_holes_read_as_zeroes(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    let data = pattern(64 * 1024, 5);
    write_file(c, &path, &data)?;
    let fd = step("open", c.open(&path, O_RDWR, 0))?;
    step("punch", c.fallocate(fd, fallocate_mode::PUNCH_HOLE | fallocate_mode::KEEP_SIZE, 8192, 16384))?;
    let back = step("read", c.read(fd, 0, 128 * 1024))?;
    step("close", c.close(fd))?;
    ensure(back.len() == data.len(), || "punching a hole changed the size".into())?;
    ensure(
        back[..8192] == data[..8192] && back[8192..24576].iter().all(|b| *b == 0) && back[24576..] == data[24576..],
        || "the hole does not read as zeroes, or data around it changed".into(),
    )
}

fn seek_hole_and_seek_data_find_holes(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/sparse");
    let fd = step("create", c.open(&path, O_RDWR | O_CREAT, 0o644))?;
    let block = 1 << 20;
    step("write", c.write(fd, 0, &pattern(block, 1)))?;
    step("write", c.write(fd, 4 * block as u64, &pattern(block, 2)))?;
    let hole = step("SEEK_HOLE", c.lseek(fd, 0, Whence::Hole))?;
    let data = step("SEEK_DATA", c.lseek(fd, block as i64 + 1, Whence::Data))?;
    let end = step("SEEK_HOLE at the last extent", c.lseek(fd, 4 * block as i64, Whence::Hole))?;
    let past = c.lseek(fd, 5 * block as i64, Whence::Data);
    step("close", c.close(fd))?;
    ensure(hole >= block as u64 && hole < 4 * block as u64, || format!("SEEK_HOLE from 0 found {hole}"))?;
    ensure(data > block as u64 && data <= 4 * block as u64, || format!("SEEK_DATA found {data}"))?;
    ensure(end == 5 * block as u64, || format!("SEEK_HOLE in the last extent found {end}, the end is a hole"))?;
    expect_err("SEEK_DATA at the end", past, Errno::ENXIO)
}

fn seek_data_treats_a_dense_file_as_all_data(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/dense");
    write_file(c, &path, &pattern(10_000, 6))?;
    let fd = step("open", c.open(&path, O_RDONLY, 0))?;
    let data = c.lseek(fd, 100, Whence::Data);
    let hole = c.lseek(fd, 100, Whence::Hole);
    let past = c.lseek(fd, 10_000, Whence::Data);
    step("close", c.close(fd))?;
    ensure(step("SEEK_DATA", data)? == 100, || "SEEK_DATA in data must return the offset".into())?;
    ensure(step("SEEK_HOLE", hole)? == 10_000, || "SEEK_HOLE in a dense file must find the end".into())?;
    expect_err("SEEK_DATA at the end", past, Errno::ENXIO)
}

fn utime_now_and_utime_omit(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    let path = format!("{d}/t");
    write_file(c, &path, b"x")?;
    let (a, m) = (Timestamp::new(1_100_000_000, 0), Timestamp::new(1_200_000_000, 0));
    step("utimens", c.utimens(&path, a, m))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs() as i64);
    let recent = |t: Timestamp| (t.secs - now).abs() < 120;
    // Without nanosecond times an atime may be kept as a date (FAT).
    let recent_atime =
        |t: Timestamp| if caps.nanosecond_times { recent(t) } else { (t.secs - now).abs() < 86_400 + 120 };

    step("UTIME_OMIT, UTIME_NOW", c.set_times(&path, TimeArg::Omit, TimeArg::Now))?;
    let st = step("stat", c.stat(&path))?;
    ensure(stored(caps, st.atime, a, true), || format!("UTIME_OMIT changed atime to {:?}", st.atime))?;
    ensure(recent(st.mtime), || format!("UTIME_NOW set mtime to {:?}, not about now ({now})", st.mtime))?;
    let m_now = st.mtime;

    step("UTIME_NOW, UTIME_OMIT", c.set_times(&path, TimeArg::Now, TimeArg::Omit))?;
    let st = step("stat", c.stat(&path))?;
    ensure(recent_atime(st.atime), || format!("UTIME_NOW set atime to {:?}, not about now ({now})", st.atime))?;
    ensure(st.mtime == m_now, || format!("UTIME_OMIT changed mtime from {m_now:?} to {:?}", st.mtime))?;

    step("exact atime, UTIME_OMIT", c.set_times(&path, TimeArg::At(a), TimeArg::Omit))?;
    step("both UTIME_OMIT", c.set_times(&path, TimeArg::Omit, TimeArg::Omit))?;
    let st = step("stat", c.stat(&path))?;
    ensure(stored(caps, st.atime, a, true) && st.mtime == m_now, || {
        format!("after setting atime alone: atime {:?} (set {a:?}), mtime {:?} (was {m_now:?})", st.atime, st.mtime)
    })
}

fn renaming_a_link_onto_another_link_of_the_same_file_does_nothing(
    c: &dyn Client,
    d: &str,
    _: &Capabilities,
) -> Outcome {
    write_file(c, &format!("{d}/a"), b"one inode")?;
    step("link", c.link(&format!("{d}/a"), &format!("{d}/b")))?;
    // POSIX: if both names are links to the same file, rename does nothing and succeeds.
    step("rename a onto b", c.rename(&format!("{d}/a"), &format!("{d}/b"), 0))?;
    let listed = names(c, d)?;
    ensure(listed == ["a", "b"], || format!("after renaming a link onto its twin, the directory lists {listed:?}"))?;
    let (sa, sb) = (step("stat a", c.stat(&format!("{d}/a")))?, step("stat b", c.stat(&format!("{d}/b")))?);
    ensure(sa.ino == sb.ino && sa.nlink == 2, || format!("ino {}/{}, nlink {}", sa.ino, sb.ino, sa.nlink))?;
    ensure(read_file(c, &format!("{d}/b"))? == b"one inode", || "the data changed".into())
}

/// Only for plugins whose directories count their links the Unix way (2 + subdirectories):
/// probed by the root reporting at least 2 links, since no capability says it and FAT-like
/// or object-store plugins may report 1 for every directory, as btrfs does.
fn directory_link_counts_follow_subdirectories(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let root = step("stat /", c.stat(""))?;
    if root.nlink < 2 {
        return skip(&format!("the root reports {} links, so directories do not count their links", root.nlink));
    }
    let nlink = |p: &str| step(&format!("stat {p}"), c.stat(p)).map(|s| s.nlink);
    let (p1, p2) = (format!("{d}/p1"), format!("{d}/p2"));
    let base = nlink(d)?;
    ensure(base == 2, || format!("an empty directory has {base} links, not 2"))?;
    step("mkdir", c.mkdir(&p1, 0o755))?;
    step("mkdir", c.mkdir(&p2, 0o755))?;
    write_file(c, &format!("{d}/file"), b"x")?;
    ensure(nlink(d)? == 4, || "two subdirectories (and a file) must make 4 links".into())?;
    step("mkdir", c.mkdir(&format!("{p1}/sub"), 0o755))?;
    let counts = (nlink(&p1)?, nlink(&p2)?, nlink(&format!("{p1}/sub"))?);
    ensure(counts == (3, 2, 2), || format!("after mkdir p1/sub: p1, p2, sub have {counts:?} links, want (3, 2, 2)"))?;
    step("rename p1/sub to p2/sub", c.rename(&format!("{p1}/sub"), &format!("{p2}/sub"), 0))?;
    let counts = (nlink(&p1)?, nlink(&p2)?, nlink(&format!("{p2}/sub"))?);
    ensure(counts == (2, 3, 2), || {
        format!("after moving sub to p2: p1, p2, sub have {counts:?} links, want (2, 3, 2)")
    })?;
    step("mkdir", c.mkdir(&format!("{p1}/empty"), 0o755))?;
    step("rename p2/sub over p1/empty", c.rename(&format!("{p2}/sub"), &format!("{p1}/empty"), 0))?;
    let counts = (nlink(&p1)?, nlink(&p2)?);
    ensure(counts == (3, 2), || format!("after replacing p1/empty: p1, p2 have {counts:?} links, want (3, 2)"))?;
    step("rmdir", c.rmdir(&format!("{p1}/empty")))?;
    step("rmdir", c.rmdir(&p2))?;
    let counts = (nlink(&p1)?, nlink(d)?);
    ensure(counts == (2, 3), || format!("after the rmdirs: p1 and the parent have {counts:?} links, want (2, 3)"))
}

fn a_file_used_as_a_directory_is_enotdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let f = format!("{d}/f");
    write_file(c, &f, b"x")?;
    expect_err("stat f/x", c.stat(&format!("{f}/x")), Errno::ENOTDIR)?;
    expect_err("open f/x", c.open(&format!("{f}/x"), O_RDONLY, 0), Errno::ENOTDIR)?;
    expect_err("create f/x", c.open(&format!("{f}/x"), O_WRONLY | O_CREAT, 0o644), Errno::ENOTDIR)?;
    expect_err("mkdir f/x", c.mkdir(&format!("{f}/x"), 0o755), Errno::ENOTDIR)?;
    expect_err("rename to f/x", c.rename(&f, &format!("{f}/x"), 0), Errno::ENOTDIR)?;
    expect_err("readdir of a file", c.readdir(&f), Errno::ENOTDIR)
}

fn a_directory_opened_for_writing_or_truncated_is_eisdir(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let dir = format!("{d}/dir");
    step("mkdir", c.mkdir(&dir, 0o755))?;
    expect_err("open of a directory O_WRONLY", c.open(&dir, O_WRONLY, 0), Errno::EISDIR)?;
    expect_err("open of a directory O_RDWR", c.open(&dir, O_RDWR, 0), Errno::EISDIR)?;
    expect_err("truncate of a directory", c.truncate(&dir, 0), Errno::EISDIR)?;
    let fd = step("open of a directory O_RDONLY", c.open(&dir, O_RDONLY, 0))?;
    step("close", c.close(fd))
}

fn symlink_loops_and_o_nofollow_are_eloop(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    const O_NOFOLLOW: i32 = 0o400000;
    step("symlink", c.symlink("b", &format!("{d}/a")))?;
    step("symlink", c.symlink("a", &format!("{d}/b")))?;
    step("symlink", c.symlink("self", &format!("{d}/self")))?;
    expect_err("open of a two-link loop", c.open(&format!("{d}/a"), O_RDONLY, 0), Errno::ELOOP)?;
    expect_err("open of a link to itself", c.open(&format!("{d}/self"), O_RDONLY, 0), Errno::ELOOP)?;
    expect_err("stat through a loop", c.stat(&format!("{d}/a/x")), Errno::ELOOP)?;
    write_file(c, &format!("{d}/file"), b"x")?;
    step("symlink", c.symlink("file", &format!("{d}/to-file")))?;
    expect_err(
        "open O_NOFOLLOW of a symlink",
        c.open(&format!("{d}/to-file"), O_RDONLY | O_NOFOLLOW, 0),
        Errno::ELOOP,
    )?;
    let fd = step("open through a symlink", c.open(&format!("{d}/to-file"), O_RDONLY, 0))?;
    step("close", c.close(fd))
}

fn every_creating_call_refuses_an_existing_name_with_eexist(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    write_file(c, &format!("{d}/file"), b"x")?;
    step("mkdir", c.mkdir(&format!("{d}/dir"), 0o755))?;
    let mut existing = vec!["file", "dir"];
    if caps.symlinks {
        step("symlink", c.symlink("nowhere", &format!("{d}/dangling")))?;
        existing.push("dangling");
    }
    if caps.special_files {
        step("mknod", c.mknod(&format!("{d}/fifo"), 0o010644, 0))?;
        existing.push("fifo");
    }
    for name in existing {
        let path = format!("{d}/{name}");
        let exists = |what: &str, r: R<()>| expect_err(&format!("{what} over the {name}"), r, Errno::EEXIST);
        exists("mkdir", c.mkdir(&path, 0o755))?;
        exists("O_CREAT|O_EXCL", c.open(&path, O_WRONLY | O_CREAT | O_EXCL, 0o644).map(|_| ()))?;
        if caps.special_files {
            exists("mkfifo", c.mknod(&path, 0o010644, 0))?;
        }
        if caps.symlinks {
            exists("symlink", c.symlink("target", &path))?;
        }
        if caps.hard_links {
            exists("link", c.link(&format!("{d}/file"), &path))?;
        }
    }
    if caps.symlinks {
        // The dangling link is not followed: nothing was made where it points.
        expect_err("stat of the dangling link's target", c.stat(&format!("{d}/nowhere")), Errno::ENOENT)?;
    }
    ensure(read_file(c, &format!("{d}/file"))? == b"x", || "the existing file changed".into())
}

fn truncating_a_file_open_elsewhere_shows_the_new_size_there(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, &pattern(20_000, 8))?;
    let reader = step("open for reading", c.open(&path, O_RDONLY, 0))?;
    let writer = step("open for writing", c.open(&path, O_RDWR, 0))?;
    // Read first, so anything cached for the handle is stale after the truncate.
    let before = step("read", c.read(reader, 0, 30_000));
    let truncated = c.truncate(&path, 100);
    let head = c.read(reader, 0, 30_000);
    let past = c.read(reader, 5_000, 100);
    let through_writer = c.read(writer, 0, 30_000);
    let extended = c.write(writer, 300, b"end");
    let after = c.read(reader, 0, 30_000);
    step("close", c.close(reader))?;
    step("close", c.close(writer))?;
    ensure(before?.len() == 20_000, || "the first read".into())?;
    step("truncate to 100 while open", truncated)?;
    let head = step("read after truncate", head)?;
    ensure(head.len() == 100 && head == pattern(100, 8), || format!("the other handle reads {} bytes", head.len()))?;
    let past = step("read past the new end", past)?;
    ensure(past.is_empty(), || format!("a read past the new end returned {} bytes", past.len()))?;
    ensure(step("read via the writer", through_writer)?.len() == 100, || {
        "the writer's handle sees the old size".into()
    })?;
    step("write at 300", extended)?;
    let after = step("read after extending", after)?;
    ensure(after.len() == 303 && after[100..300].iter().all(|b| *b == 0) && &after[300..] == b"end", || {
        format!("after truncating to 100 and writing at 300, the other handle reads {} bytes", after.len())
    })
}

/// Linux local filesystems refuse what they cannot hold: a write at or past their largest
/// size is EFBIG (ext4, xfs), a write whose end overflows `loff_t` EINVAL; tmpfs, whose
/// limit is 2^63 - 1, takes a byte at 2^63 - 2 as a sparse file. Reads there return 0.
/// A store that cannot keep sparse files may also answer ENOSPC.
fn offsets_near_2_pow_63_follow_linux(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    let path = format!("{d}/far");
    write_file(c, &path, b"small")?;
    let max = caps.max_file_size.min(i64::MAX as u64);
    let fd = step("open", c.open(&path, O_RDWR, 0))?;
    let near = (i64::MAX - 1) as u64;
    let read_far = c.read(fd, near, 1);
    // Only the kernel answers SEEK_SET; a plugin is asked for SEEK_DATA and SEEK_HOLE.
    let seek_set = if c.through_kernel() { c.lseek(fd, near as i64, Whence::Set) } else { Ok(near) };
    let seek_data = c.lseek(fd, near as i64, Whence::Data);
    let write_near = c.write(fd, near, b"z");
    let write_at_max = c.write(fd, max, b"z");
    let size = c.stat(&path).map(|s| s.size);
    step("close", c.close(fd))?;

    let far = step("pread at 2^63 - 2 of a small file", read_far)?;
    ensure(far.is_empty(), || format!("pread at 2^63 - 2 of a 5-byte file returned {} bytes", far.len()))?;
    ensure(step("SEEK_SET to 2^63 - 2", seek_set)? == near, || "SEEK_SET to 2^63 - 2 landed elsewhere".into())?;
    expect_err("SEEK_DATA at 2^63 - 2 of a small file", seek_data, Errno::ENXIO)?;
    match write_near {
        Ok(1) if near < max => {}
        Ok(n) => return Err(format!("pwrite of a byte at 2^63 - 2 wrote {n} bytes, the limit being {max}")),
        Err(Errno::EFBIG) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOSPC) if !caps.sparse_files => {}
        Err(e) => return Err(format!("pwrite of a byte at 2^63 - 2: expected EFBIG (or success as tmpfs), got {e:?}")),
    }
    match write_at_max {
        Err(Errno::EFBIG) | Err(Errno::EINVAL) => {}
        other => return Err(format!("pwrite at the largest file size {max}: expected EFBIG, got {other:?}")),
    }
    let size = step("stat", size)?;
    let want = if matches!(write_near, Ok(1)) { near + 1 } else { 5 };
    ensure(size == want, || format!("size {size} after writing near 2^63, want {want}"))
}

fn two_handles_writing_disjoint_ranges_both_land(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/shared");
    let block = 64 * 1024;
    let (a_data, b_data) = (pattern(block, 11), pattern(block, 12));
    let a = step("create", c.open(&path, O_WRONLY | O_CREAT, 0o644))?;
    let b = step("open a second writer", c.open(&path, O_RDWR, 0))?;
    // Interleaved, each past the other's end, and closed in the other order: a handle
    // that writes back a whole cached copy of the file on close loses the other's data.
    let writes = [
        c.write(a, 0, &a_data),
        c.write(b, block as u64, &b_data),
        c.write(a, 2 * block as u64, &a_data),
        c.write(b, 3 * block as u64, &b_data),
    ];
    let closed = (c.close(b), c.close(a));
    for (i, w) in writes.into_iter().enumerate() {
        ensure(step(&format!("write {i}"), w)? == block, || format!("write {i} was short"))?;
    }
    step("close the second writer", closed.0)?;
    step("close the first writer", closed.1)?;
    let back = read_file(c, &path)?;
    let want = [&a_data[..], &b_data, &a_data, &b_data].concat();
    ensure(back.len() == want.len(), || format!("the file is {} bytes, want {}", back.len(), want.len()))?;
    for (i, (got, w)) in back.chunks(block).zip(want.chunks(block)).enumerate() {
        ensure(got == w, || format!("block {i} (written through the {} handle) was lost", ["first", "second"][i % 2]))?;
    }
    Ok(())
}

/// As root (gid 0), so the group the new entries get can only come from the directory.
fn setgid_directories_pass_on_their_group(c: &dyn Client, d: &str, caps: &Capabilities) -> Outcome {
    const GROUP: u32 = 4242;
    let sg = format!("{d}/sg");
    step("mkdir", c.mkdir(&sg, 0o755))?;
    step("chown", c.chown(&sg, 0, GROUP))?;
    step("chmod 2777", c.chmod(&sg, 0o2777))?;
    let perm = step("stat", c.stat(&sg))?.perm;
    ensure(perm == 0o2777, || format!("chmod 2777 left {perm:o}"))?;
    write_file(c, &format!("{sg}/file"), b"x")?;
    step("mkdir", c.mkdir(&format!("{sg}/sub"), 0o755))?;
    let mut made = vec!["file", "sub"];
    if caps.symlinks {
        step("symlink", c.symlink("file", &format!("{sg}/link")))?;
        made.push("link");
    }
    if caps.special_files {
        step("mknod", c.mknod(&format!("{sg}/fifo"), 0o010644, 0))?;
        made.push("fifo");
    }
    for name in made {
        let st = step(&format!("stat {name}"), c.stat(&format!("{sg}/{name}")))?;
        ensure(st.gid == GROUP, || format!("{name} made in a setgid directory of group {GROUP} has group {}", st.gid))?;
        let setgid = st.perm & 0o2000 != 0;
        let want = st.kind == FileKind::Directory;
        ensure(setgid == want, || format!("{name} ({:?}) made in a setgid directory has mode {:o}", st.kind, st.perm))?;
    }
    step("mkdir", c.mkdir(&format!("{sg}/sub/deeper"), 0o755))?;
    let st = step("stat", c.stat(&format!("{sg}/sub/deeper")))?;
    ensure(st.gid == GROUP && st.perm & 0o2000 != 0, || {
        format!("a directory two levels down has group {} and mode {:o}", st.gid, st.perm)
    })?;
    // Without the bit, the creator's group.
    step("chmod 777", c.chmod(&sg, 0o777))?;
    write_file(c, &format!("{sg}/plain"), b"x")?;
    let gid = step("stat", c.stat(&format!("{sg}/plain")))?.gid;
    ensure(gid == 0, || format!("a file root made in a plain directory of group {GROUP} has group {gid}, not 0"))
}

/// Linux clears the set-user-ID bit, and the set-group-ID bit of a group-executable file,
/// when the owner or group changes, even when root changes it. Through FUSE the kernel
/// asks the plugin for the new mode.
fn chown_clears_suid_and_sgid(c: &dyn Client, d: &str, _: &Capabilities) -> Outcome {
    let path = format!("{d}/f");
    write_file(c, &path, b"#!/bin/sh\n")?;
    for (mode, after) in [(0o6755, 0o755), (0o4700, 0o700), (0o2750, 0o750)] {
        step("chmod", c.chmod(&path, mode))?;
        step("chown", c.chown(&path, 1234, 5678))?;
        let perm = step("stat", c.stat(&path))?.perm;
        ensure(perm == after, || format!("chown of a {mode:o} file left mode {perm:o}, want {after:o}"))?;
    }
    Ok(())
}
