//! Conversions between the author-facing types and their `#[repr(C)]` forms in [`crate::abi`].
//! The plugin side (export shims) and the host side (loader) both use these, so the two
//! can never disagree on an encoding.

use std::ffi::OsStr;
use std::time::Duration;

use crate::abi::*;
use crate::error::{Errno, Error, Result};
use crate::types::*;

pub(crate) fn ts_to_raw(t: Timestamp) -> RawTimestamp {
    RawTimestamp { secs: t.secs, nanos: t.nanos, reserved: 0 }
}

pub(crate) fn ts_from_raw(t: RawTimestamp) -> Timestamp {
    Timestamp::new(t.secs, t.nanos)
}

fn ttl_to_raw(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn attr_to_raw(a: &Attr) -> RawAttr {
    RawAttr {
        struct_size: std::mem::size_of::<RawAttr>(),
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: ts_to_raw(a.atime),
        mtime: ts_to_raw(a.mtime),
        ctime: ts_to_raw(a.ctime),
        crtime: ts_to_raw(a.crtime),
        kind: a.kind.mode_bits(),
        perm: u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        reserved: 0,
    }
}

/// A plugin that reports a node type we cannot name gets `EIO` rather than a guess.
pub(crate) fn attr_from_raw(a: &RawAttr) -> Result<Attr> {
    let kind = FileKind::from_mode(a.kind).ok_or_else(|| {
        Error::with_message(Errno::EIO, format!("plugin reported an unknown file type {:#o}", a.kind))
    })?;
    Ok(Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: ts_from_raw(a.atime),
        mtime: ts_from_raw(a.mtime),
        ctime: ts_from_raw(a.ctime),
        crtime: ts_from_raw(a.crtime),
        kind,
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
    })
}

pub(crate) fn entry_to_raw(e: &Entry) -> (RawEntry, RawAttr) {
    let raw = RawEntry {
        struct_size: std::mem::size_of::<RawEntry>(),
        node: e.node,
        generation: e.generation,
        entry_ttl_ns: ttl_to_raw(e.entry_ttl),
        attr_ttl_ns: ttl_to_raw(e.attr_ttl),
    };
    (raw, attr_to_raw(&e.attr))
}

pub(crate) fn ttl_ns(d: Duration) -> u64 {
    ttl_to_raw(d)
}

fn set_time_to_raw(t: Option<SetTime>) -> RawSetTime {
    match t {
        None => RawSetTime { how: SET_TIME_OMIT, ..RawSetTime::default() },
        Some(SetTime::Now) => RawSetTime { how: SET_TIME_NOW, ..RawSetTime::default() },
        Some(SetTime::At(ts)) => RawSetTime { how: SET_TIME_AT, reserved: 0, at: ts_to_raw(ts) },
    }
}

fn set_time_from_raw(t: RawSetTime) -> Option<SetTime> {
    match t.how {
        SET_TIME_NOW => Some(SetTime::Now),
        SET_TIME_AT => Some(SetTime::At(ts_from_raw(t.at))),
        _ => None,
    }
}

pub(crate) fn setattr_to_raw(s: &SetAttr) -> RawSetAttr {
    let mut valid = 0;
    let mut flag = |present: bool, bit: u32| {
        if present {
            valid |= bit;
        }
    };
    flag(s.mode.is_some(), SETATTR_MODE);
    flag(s.uid.is_some(), SETATTR_UID);
    flag(s.gid.is_some(), SETATTR_GID);
    flag(s.size.is_some(), SETATTR_SIZE);
    flag(s.ctime.is_some(), SETATTR_CTIME);
    flag(s.handle.is_some(), SETATTR_HANDLE);
    RawSetAttr {
        struct_size: std::mem::size_of::<RawSetAttr>(),
        valid,
        mode: s.mode.unwrap_or(0),
        uid: s.uid.unwrap_or(0),
        gid: s.gid.unwrap_or(0),
        size: s.size.unwrap_or(0),
        atime: set_time_to_raw(s.atime),
        mtime: set_time_to_raw(s.mtime),
        ctime: ts_to_raw(s.ctime.unwrap_or_default()),
        handle: s.handle.unwrap_or(0),
    }
}

pub(crate) fn setattr_from_raw(s: &RawSetAttr) -> SetAttr {
    let has = |bit: u32| s.valid & bit != 0;
    SetAttr {
        mode: has(SETATTR_MODE).then_some(s.mode),
        uid: has(SETATTR_UID).then_some(s.uid),
        gid: has(SETATTR_GID).then_some(s.gid),
        size: has(SETATTR_SIZE).then_some(s.size),
        atime: set_time_from_raw(s.atime),
        mtime: set_time_from_raw(s.mtime),
        ctime: has(SETATTR_CTIME).then(|| ts_from_raw(s.ctime)),
        handle: has(SETATTR_HANDLE).then_some(s.handle),
    }
}

pub(crate) fn opened_to_raw(o: &Opened) -> RawOpened {
    let mut flags = 0;
    if o.direct_io {
        flags |= OPENED_DIRECT_IO;
    }
    if o.keep_cache {
        flags |= OPENED_KEEP_CACHE;
    }
    if o.nonseekable {
        flags |= OPENED_NONSEEKABLE;
    }
    if o.backing_fd.is_some() {
        flags |= OPENED_BACKING_FD;
    }
    if o.no_flush {
        flags |= OPENED_NO_FLUSH;
    }
    RawOpened {
        struct_size: std::mem::size_of::<RawOpened>(),
        handle: o.handle,
        flags,
        backing_fd: o.backing_fd.unwrap_or(-1),
    }
}

pub(crate) fn opened_from_raw(o: &RawOpened) -> Opened {
    Opened {
        handle: o.handle,
        direct_io: o.flags & OPENED_DIRECT_IO != 0,
        keep_cache: o.flags & OPENED_KEEP_CACHE != 0,
        nonseekable: o.flags & OPENED_NONSEEKABLE != 0,
        backing_fd: (o.flags & OPENED_BACKING_FD != 0).then_some(o.backing_fd),
        no_flush: o.flags & OPENED_NO_FLUSH != 0,
    }
}

pub(crate) fn statfs_to_raw(s: &StatFs) -> RawStatFs {
    RawStatFs {
        struct_size: std::mem::size_of::<RawStatFs>(),
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
        reserved: 0,
    }
}

pub(crate) fn statfs_from_raw(s: &RawStatFs) -> StatFs {
    StatFs {
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
    }
}

/// Reads one capability flag.
type CapFlag = fn(&Capabilities) -> bool;

const CAP_BITS: [(u64, CapFlag); 17] = [
    (CAP_WRITABLE, |c| c.writable),
    (CAP_SYMLINKS, |c| c.symlinks),
    (CAP_HARD_LINKS, |c| c.hard_links),
    (CAP_SPECIAL_FILES, |c| c.special_files),
    (CAP_XATTRS, |c| c.xattrs),
    (CAP_PERMISSIONS, |c| c.permissions),
    (CAP_FALLOCATE, |c| c.fallocate),
    (CAP_PUNCH_HOLE, |c| c.punch_hole),
    (CAP_RENAME_NOREPLACE, |c| c.rename_noreplace),
    (CAP_RENAME_EXCHANGE, |c| c.rename_exchange),
    (CAP_SPARSE_FILES, |c| c.sparse_files),
    (CAP_CASE_SENSITIVE, |c| c.case_sensitive),
    (CAP_CASE_PRESERVING, |c| c.case_preserving),
    (CAP_NANOSECOND_TIMES, |c| c.nanosecond_times),
    (CAP_CHECKS_PERMISSIONS, |c| c.checks_permissions),
    (CAP_BACKING_FILES, |c| c.backing_files),
    (CAP_FORMAT, |c| c.format),
];

pub(crate) fn caps_to_raw(c: &Capabilities) -> RawCapabilities {
    let flags = CAP_BITS.iter().filter(|(_, get)| get(c)).fold(0, |acc, (bit, _)| acc | bit);
    RawCapabilities {
        struct_size: std::mem::size_of::<RawCapabilities>(),
        flags,
        max_name_len: c.max_name_len,
        reserved: 0,
        max_file_size: c.max_file_size,
        negative_ttl_ns: ttl_to_raw(c.negative_entry_ttl),
    }
}

pub(crate) fn caps_from_raw(r: &RawCapabilities) -> Capabilities {
    let has = |bit: u64| r.flags & bit != 0;
    Capabilities {
        writable: has(CAP_WRITABLE),
        symlinks: has(CAP_SYMLINKS),
        hard_links: has(CAP_HARD_LINKS),
        special_files: has(CAP_SPECIAL_FILES),
        xattrs: has(CAP_XATTRS),
        permissions: has(CAP_PERMISSIONS),
        fallocate: has(CAP_FALLOCATE),
        punch_hole: has(CAP_PUNCH_HOLE),
        rename_noreplace: has(CAP_RENAME_NOREPLACE),
        rename_exchange: has(CAP_RENAME_EXCHANGE),
        sparse_files: has(CAP_SPARSE_FILES),
        case_sensitive: has(CAP_CASE_SENSITIVE),
        case_preserving: has(CAP_CASE_PRESERVING),
        nanosecond_times: has(CAP_NANOSECOND_TIMES),
        checks_permissions: has(CAP_CHECKS_PERMISSIONS),
        backing_files: has(CAP_BACKING_FILES),
        format: has(CAP_FORMAT),
        max_name_len: r.max_name_len,
        max_file_size: r.max_file_size,
        negative_entry_ttl: Duration::from_nanos(r.negative_ttl_ns),
    }
}

/// Names cross the boundary as bytes. On Unix any bytes are a valid name; elsewhere names
/// must be UTF-8 (the Windows frontends convert from UTF-16).
pub(crate) fn os_str_from_bytes(bytes: &[u8]) -> Result<&OsStr> {
    #[cfg(unix)]
    {
        Ok(std::os::unix::ffi::OsStrExt::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(OsStr::new)
            .map_err(|_| Error::with_message(Errno::EINVAL, "a name that is not UTF-8"))
    }
}

pub(crate) fn os_str_bytes(s: &OsStr) -> &[u8] {
    s.as_encoded_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setattr_round_trips() {
        let s = SetAttr {
            mode: Some(0o4755),
            uid: None,
            gid: Some(7),
            size: Some(0),
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::At(Timestamp::new(-3, 999_999_999))),
            ctime: None,
            handle: Some(42),
        };
        assert_eq!(setattr_from_raw(&setattr_to_raw(&s)), s);
    }

    #[test]
    fn capabilities_round_trip() {
        for c in [
            Capabilities::NONE,
            Capabilities::POSIX,
            Capabilities { xattrs: false, ..Capabilities::POSIX },
            Capabilities { negative_entry_ttl: Duration::from_secs(3600), ..Capabilities::POSIX },
        ] {
            assert_eq!(caps_from_raw(&caps_to_raw(&c)), c);
        }
    }

    #[test]
    fn an_unknown_file_type_is_an_io_error() {
        let raw = RawAttr { kind: 0o777, ..RawAttr::default() };
        assert_eq!(attr_from_raw(&raw).unwrap_err().errno(), Errno::EIO);
    }
}
