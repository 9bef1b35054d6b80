//! The plugin side of the ABI: `extern "C"` shims that turn raw calls into
//! [`FileSystem`] calls, and the [`crate::export_plugin!`] macro that exports them.
//!
//! Every shim runs the plugin's code inside `catch_unwind`: a panic becomes
//! [`STATUS_PANICKED`] with the panic text in the caller's message buffer, never an unwind
//! across the boundary (which would abort the host).

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::*;
use crate::convert::*;
use crate::error::{Errno, Error, Result};
use crate::fs::FileSystem;
use crate::plugin::{ConfigTable, Plugin};
use crate::types::*;

/// Exports a [`Plugin`] from a `cdylib` so plugfs hosts can load it. Use it once, in the
/// crate root:
///
/// ```ignore
/// plugfs_plugin_api::export_plugin!(MyPlugin);
/// ```
///
/// It defines the two symbols a host looks for: the ABI tag (read from the file before
/// loading) and the entry function. Its declaration also takes the host's log sink (ABI
/// 2.1), so the plugin's `tracing` events reach the host's log without a subscriber of the
/// plugin's own.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugfs ABI tag of this library, read by hosts before loading it.
        #[unsafe(no_mangle)]
        #[used]
        pub static PLUGFS_ABI_TAG: $crate::abi::AbiTag = $crate::abi::CURRENT_TAG;

        /// The plugfs entry point: returns this plugin's declaration.
        #[unsafe(no_mangle)]
        pub extern "C" fn plugfs_plugin_entry() -> *const $crate::abi::PluginDecl {
            $crate::__private::declaration::<$plugin>()
        }
    };
}

/// The declaration [`crate::export_plugin!`] returns for plugin `P`.
pub fn declaration<P: Plugin>() -> *const PluginDecl {
    install_quiet_panic_hook();
    &Decl::<P>::DECL
}

std::thread_local! {
    /// Where the last panic on this thread happened, for the host's log line.
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A cdylib carries its own copy of std, with its own panic hook, whose default prints a
/// message (and maybe a backtrace) to stderr on every panic. The host already logs each
/// panic once, with the plugin and operation, so this hook stays quiet and only records
/// the location for that log line. A plugin may still set its own hook in `open`.
fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = at);
        }))
    });
}

fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(|p| p.borrow_mut().take())
}

struct Decl<P>(P);

impl<P: Plugin> Decl<P> {
    const DECL: PluginDecl = PluginDecl {
        struct_size: std::mem::size_of::<PluginDecl>(),
        tag: CURRENT_TAG,
        info: Some(info::<P>),
        open: Some(open::<P>),
        ops: &VTable::<P::Fs>::TABLE,
        format: Some(format::<P>),
        attach_host: Some(crate::log_bridge::attach_host),
    };
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic with a non-string payload"
    }
}

fn write_message(ctx: &mut CallCtx, msg: &str) {
    // SAFETY: the host passes a buffer it owns for the duration of the call.
    let buf = unsafe { ctx.msg.as_mut() };
    let mut n = msg.len().min(buf.len());
    while n > 0 && !msg.is_char_boundary(n) {
        n -= 1;
    }
    buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
    ctx.msg_len = n;
}

/// Runs one plugin call: credentials in, status and message out, panics caught.
fn guarded(ctx: *mut CallCtx, f: impl FnOnce(&Request) -> Result<()>) -> i32 {
    // SAFETY: the host always passes a valid, exclusive context. Its caller fields are
    // read only as far as the host's version has them.
    let fields = unsafe { copy_prefix(CallCtx::EMPTY, ctx) };
    let ctx = unsafe { &mut *ctx };
    let req = Request { uid: fields.uid, gid: fields.gid, pid: fields.pid };
    match catch_unwind(AssertUnwindSafe(|| f(&req))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            if let Some(m) = e.message() {
                write_message(ctx, m);
            }
            // A plugin must never report "success" or a negative number through an error.
            if e.errno().0 > 0 { e.errno().0 } else { Errno::EIO.0 }
        }
        Err(payload) => {
            let text = panic_text(payload.as_ref());
            match take_panic_location() {
                Some(at) => write_message(ctx, &format!("{text} (at {at})")),
                None => write_message(ctx, text),
            }
            STATUS_PANICKED
        }
    }
}

unsafe extern "C" fn info<P: Plugin>(out: *mut RawPluginInfo, caps: *mut RawCapabilities) {
    let Ok(i) = catch_unwind(P::info) else { return };
    let raw = RawPluginInfo {
        struct_size: std::mem::size_of::<RawPluginInfo>(),
        name: RawStr::new(i.name.as_bytes()),
        version: RawStr::new(i.version.as_bytes()),
        description: RawStr::new(i.description.as_bytes()),
        config_help: RawStr::new(i.config_help.as_bytes()),
    };
    // SAFETY: the host passes out-structs sized for its version.
    unsafe {
        write_out(out, &raw);
        write_out(caps, &caps_to_raw(&i.capabilities));
    }
}

unsafe extern "C" fn open<P: Plugin>(
    ctx: *mut CallCtx,
    config: RawStr,
    options: *const RawMountOptions,
    key: RawBuf,
    key_len: *mut usize,
    out_this: *mut *mut c_void,
) -> i32 {
    guarded(ctx, |_req| {
        // SAFETY: the host passes valid pointers for the duration of the call.
        let text = std::str::from_utf8(unsafe { config.as_bytes() })
            .map_err(|_| Error::with_message(Errno::EINVAL, "config text is not UTF-8"))?;
        let raw_opts = unsafe { copy_prefix(RawMountOptions::default(), options) };
        let opts = MountOptions { read_only: raw_opts.flags & MOUNT_READ_ONLY != 0 };
        match P::open(&ConfigTable::from_toml(text), &opts) {
            Ok(fs) => {
                unsafe { *out_this = Box::into_raw(Box::new(fs)) as *mut c_void };
                Ok(())
            }
            Err(e) => {
                unsafe { write_key(key, key_len, e.key.as_deref()) };
                Err(Error::with_message(Errno::EINVAL, e.message))
            }
        }
    })
}

/// Hands the offending config key of a refusal to the host.
///
/// # Safety
/// `key` and `key_len` are the host's, valid for the call.
unsafe fn write_key(key: RawBuf, key_len: *mut usize, k: Option<&str>) {
    if let Some(k) = k {
        let buf = unsafe { key.as_mut() };
        let n = k.len().min(buf.len());
        buf[..n].copy_from_slice(&k.as_bytes()[..n]);
        unsafe { *key_len = n };
    }
}

unsafe extern "C" fn format<P: Plugin>(
    ctx: *mut CallCtx,
    config: RawStr,
    size: u64,
    key: RawBuf,
    key_len: *mut usize,
) -> i32 {
    guarded(ctx, |_req| {
        // SAFETY: the host passes valid pointers for the duration of the call.
        let text = std::str::from_utf8(unsafe { config.as_bytes() })
            .map_err(|_| Error::with_message(Errno::EINVAL, "config text is not UTF-8"))?;
        P::format(&ConfigTable::from_toml(text), size).map_err(|e| {
            unsafe { write_key(key, key_len, e.key.as_deref()) };
            Error::with_message(Errno::EINVAL, e.message)
        })
    })
}

struct VTable<F>(F);

/// # Safety (for every shim below)
/// `this` is the `Box<F>` made by `open`, alive until `destroy`; every pointer argument
/// is valid for the duration of the call, as the host guarantees.
unsafe fn fs<'a, F>(this: *const c_void) -> &'a F {
    unsafe { &*(this as *const F) }
}

fn name<'a>(raw: RawStr) -> Result<&'a std::ffi::OsStr> {
    os_str_from_bytes(unsafe { raw.as_bytes() })
}

impl<F: FileSystem> VTable<F> {
    const TABLE: FsVTable = FsVTable {
        struct_size: std::mem::size_of::<FsVTable>(),
        destroy: Some(Self::destroy),
        lookup: Some(Self::lookup),
        forget: Some(Self::forget),
        getattr: Some(Self::getattr),
        setattr: Some(Self::setattr),
        readlink: Some(Self::readlink),
        mknod: Some(Self::mknod),
        mkdir: Some(Self::mkdir),
        unlink: Some(Self::unlink),
        rmdir: Some(Self::rmdir),
        symlink: Some(Self::symlink),
        link: Some(Self::link),
        rename: Some(Self::rename),
        open: Some(Self::open),
        create: Some(Self::create),
        read: Some(Self::read),
        write: Some(Self::write),
        flush: Some(Self::flush),
        release: Some(Self::release),
        fsync: Some(Self::fsync),
        opendir: Some(Self::opendir),
        readdir: Some(Self::readdir),
        releasedir: Some(Self::releasedir),
        fsyncdir: Some(Self::fsyncdir),
        statfs: Some(Self::statfs),
        setxattr: Some(Self::setxattr),
        getxattr: Some(Self::getxattr),
        listxattr: Some(Self::listxattr),
        removexattr: Some(Self::removexattr),
        fallocate: Some(Self::fallocate),
        copy_file_range: Some(Self::copy_file_range),
        lseek: Some(Self::lseek),
        readdirplus: Some(Self::readdirplus),
        capabilities: Some(Self::capabilities),
    };

    unsafe extern "C" fn destroy(this: *mut c_void) {
        // A panicking Drop cannot be reported anywhere useful; it must not unwind out.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(this as *mut F) })));
    }

    unsafe extern "C" fn lookup(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
    ) -> i32 {
        guarded(ctx, |req| {
            let e = unsafe { fs::<F>(this) }.lookup(req, parent, name(n)?)?;
            unsafe { write_entry(out_entry, out_attr, &e) };
            Ok(())
        })
    }

    unsafe extern "C" fn forget(this: *const c_void, ctx: *mut CallCtx, node: u64, nlookup: u64) -> i32 {
        guarded(ctx, |_| {
            unsafe { fs::<F>(this) }.forget(node, nlookup);
            Ok(())
        })
    }

    unsafe extern "C" fn getattr(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        has_handle: u8,
        handle: u64,
        out_attr: *mut RawAttr,
        out_ttl_ns: *mut u64,
    ) -> i32 {
        guarded(ctx, |req| {
            let a = unsafe { fs::<F>(this) }.getattr(req, node, (has_handle != 0).then_some(handle))?;
            unsafe { write_attr(out_attr, out_ttl_ns, &a) };
            Ok(())
        })
    }

    unsafe extern "C" fn setattr(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        set: *const RawSetAttr,
        out_attr: *mut RawAttr,
        out_ttl_ns: *mut u64,
    ) -> i32 {
        guarded(ctx, |req| {
            let set = setattr_from_raw(&unsafe { copy_prefix(RawSetAttr::default(), set) });
            let a = unsafe { fs::<F>(this) }.setattr(req, node, &set)?;
            unsafe { write_attr(out_attr, out_ttl_ns, &a) };
            Ok(())
        })
    }

    unsafe extern "C" fn readlink(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        buf: RawBuf,
        len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let n = unsafe { fs::<F>(this) }.readlink(req, node, unsafe { buf.as_mut() })?;
            unsafe { *len = n.min(buf.len) };
            Ok(())
        })
    }

    unsafe extern "C" fn mknod(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        mode: u32,
        rdev: u32,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
    ) -> i32 {
        guarded(ctx, |req| {
            let e = unsafe { fs::<F>(this) }.mknod(req, parent, name(n)?, mode, rdev)?;
            unsafe { write_entry(out_entry, out_attr, &e) };
            Ok(())
        })
    }

    unsafe extern "C" fn mkdir(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        mode: u32,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
    ) -> i32 {
        guarded(ctx, |req| {
            let e = unsafe { fs::<F>(this) }.mkdir(req, parent, name(n)?, mode)?;
            unsafe { write_entry(out_entry, out_attr, &e) };
            Ok(())
        })
    }

    unsafe extern "C" fn unlink(this: *const c_void, ctx: *mut CallCtx, parent: u64, n: RawStr) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.unlink(req, parent, name(n)?))
    }

    unsafe extern "C" fn rmdir(this: *const c_void, ctx: *mut CallCtx, parent: u64, n: RawStr) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.rmdir(req, parent, name(n)?))
    }

    unsafe extern "C" fn symlink(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        target: RawStr,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
    ) -> i32 {
        guarded(ctx, |req| {
            let e = unsafe { fs::<F>(this) }.symlink(req, parent, name(n)?, name(target)?)?;
            unsafe { write_entry(out_entry, out_attr, &e) };
            Ok(())
        })
    }

    unsafe extern "C" fn link(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        new_parent: u64,
        new_name: RawStr,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
    ) -> i32 {
        guarded(ctx, |req| {
            let e = unsafe { fs::<F>(this) }.link(req, node, new_parent, name(new_name)?)?;
            unsafe { write_entry(out_entry, out_attr, &e) };
            Ok(())
        })
    }

    unsafe extern "C" fn rename(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        new_parent: u64,
        new_name: RawStr,
        flags: u32,
    ) -> i32 {
        guarded(ctx, |req| {
            unsafe { fs::<F>(this) }.rename(req, parent, name(n)?, new_parent, name(new_name)?, RenameFlags(flags))
        })
    }

    unsafe extern "C" fn open(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        flags: i32,
        out: *mut RawOpened,
    ) -> i32 {
        guarded(ctx, |req| {
            let o = unsafe { fs::<F>(this) }.open(req, node, flags)?;
            unsafe { write_out(out, &opened_to_raw(&o)) };
            Ok(())
        })
    }

    unsafe extern "C" fn create(
        this: *const c_void,
        ctx: *mut CallCtx,
        parent: u64,
        n: RawStr,
        mode: u32,
        flags: i32,
        out_entry: *mut RawEntry,
        out_attr: *mut RawAttr,
        out_opened: *mut RawOpened,
    ) -> i32 {
        guarded(ctx, |req| {
            let (e, o) = unsafe { fs::<F>(this) }.create(req, parent, name(n)?, mode, flags)?;
            unsafe {
                write_entry(out_entry, out_attr, &e);
                write_out(out_opened, &opened_to_raw(&o));
            }
            Ok(())
        })
    }

    unsafe extern "C" fn read(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        offset: u64,
        buf: RawBuf,
        len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let n = unsafe { fs::<F>(this) }.read(req, node, handle, offset, unsafe { buf.as_mut() })?;
            unsafe { *len = n.min(buf.len) };
            Ok(())
        })
    }

    unsafe extern "C" fn write(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        offset: u64,
        data: RawStr,
        flags: i32,
        len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let n = unsafe { fs::<F>(this) }.write(req, node, handle, offset, unsafe { data.as_bytes() }, flags)?;
            unsafe { *len = n.min(data.len) };
            Ok(())
        })
    }

    unsafe extern "C" fn flush(this: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, owner: u64) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.flush(req, node, handle, owner))
    }

    unsafe extern "C" fn release(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        flags: i32,
        flush: u8,
    ) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.release(req, node, handle, flags, flush != 0))
    }

    unsafe extern "C" fn fsync(this: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, datasync: u8) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.fsync(req, node, handle, datasync != 0))
    }

    unsafe extern "C" fn opendir(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        flags: i32,
        out: *mut RawOpened,
    ) -> i32 {
        guarded(ctx, |req| {
            let o = unsafe { fs::<F>(this) }.opendir(req, node, flags)?;
            unsafe { write_out(out, &opened_to_raw(&o)) };
            Ok(())
        })
    }

    unsafe extern "C" fn readdir(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        cookie: u64,
        sink: *mut c_void,
        add: DirAddFn,
    ) -> i32 {
        struct HostSink {
            sink: *mut c_void,
            add: DirAddFn,
        }
        impl DirSink for HostSink {
            fn add(&mut self, e: &DirEntry<'_>) -> bool {
                let raw = RawDirEntry {
                    struct_size: std::mem::size_of::<RawDirEntry>(),
                    ino: e.ino,
                    kind: e.kind.mode_bits(),
                    reserved: 0,
                    name: RawStr::new(e.name),
                    cookie: e.cookie,
                };
                // SAFETY: the host's sink and callback are valid during this readdir call.
                unsafe { (self.add)(self.sink, &raw) != 0 }
            }
        }
        guarded(ctx, |req| unsafe { fs::<F>(this) }.readdir(req, node, handle, cookie, &mut HostSink { sink, add }))
    }

    unsafe extern "C" fn releasedir(this: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.releasedir(req, node, handle))
    }

    unsafe extern "C" fn fsyncdir(this: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, datasync: u8) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.fsyncdir(req, node, handle, datasync != 0))
    }

    unsafe extern "C" fn statfs(this: *const c_void, ctx: *mut CallCtx, node: u64, out: *mut RawStatFs) -> i32 {
        guarded(ctx, |req| {
            let s = unsafe { fs::<F>(this) }.statfs(req, node)?;
            unsafe { write_out(out, &statfs_to_raw(&s)) };
            Ok(())
        })
    }

    unsafe extern "C" fn setxattr(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        n: RawStr,
        value: RawStr,
        flags: i32,
    ) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.setxattr(req, node, name(n)?, unsafe { value.as_bytes() }, flags))
    }

    unsafe extern "C" fn getxattr(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        n: RawStr,
        buf: RawBuf,
        len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let got = unsafe { fs::<F>(this) }.getxattr(req, node, name(n)?, unsafe { buf.as_mut() })?;
            unsafe { *len = got };
            Ok(())
        })
    }

    unsafe extern "C" fn listxattr(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        buf: RawBuf,
        len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let got = unsafe { fs::<F>(this) }.listxattr(req, node, unsafe { buf.as_mut() })?;
            unsafe { *len = got };
            Ok(())
        })
    }

    unsafe extern "C" fn removexattr(this: *const c_void, ctx: *mut CallCtx, node: u64, n: RawStr) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.removexattr(req, node, name(n)?))
    }

    unsafe extern "C" fn fallocate(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> i32 {
        guarded(ctx, |req| unsafe { fs::<F>(this) }.fallocate(req, node, handle, offset, length, mode))
    }

    unsafe extern "C" fn copy_file_range(
        this: *const c_void,
        ctx: *mut CallCtx,
        node_in: u64,
        handle_in: u64,
        offset_in: u64,
        node_out: u64,
        handle_out: u64,
        offset_out: u64,
        len: u64,
        flags: u32,
        out_len: *mut usize,
    ) -> i32 {
        guarded(ctx, |req| {
            let n = unsafe { fs::<F>(this) }
                .copy_file_range(req, node_in, handle_in, offset_in, node_out, handle_out, offset_out, len, flags)?;
            unsafe { *out_len = n };
            Ok(())
        })
    }

    unsafe extern "C" fn lseek(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        offset: i64,
        whence: u32,
        out: *mut u64,
    ) -> i32 {
        guarded(ctx, |req| {
            let whence = Whence::from_raw(whence).ok_or(Error::new(Errno::EINVAL))?;
            let pos = unsafe { fs::<F>(this) }.lseek(req, node, handle, offset, whence)?;
            unsafe { *out = pos };
            Ok(())
        })
    }

    unsafe extern "C" fn readdirplus(
        this: *const c_void,
        ctx: *mut CallCtx,
        node: u64,
        handle: u64,
        cookie: u64,
        sink: *mut c_void,
        add: DirPlusAddFn,
    ) -> i32 {
        struct HostSink {
            sink: *mut c_void,
            add: DirPlusAddFn,
        }
        impl DirPlusSink for HostSink {
            fn add(&mut self, e: &DirEntry<'_>, entry: &Entry) -> bool {
                let dirent = RawDirEntry {
                    struct_size: std::mem::size_of::<RawDirEntry>(),
                    ino: e.ino,
                    kind: e.kind.mode_bits(),
                    reserved: 0,
                    name: RawStr::new(e.name),
                    cookie: e.cookie,
                };
                let (raw_entry, raw_attr) = entry_to_raw(entry);
                // SAFETY: the host's sink and callback are valid during this call.
                unsafe { (self.add)(self.sink, &dirent, &raw_entry, &raw_attr) != 0 }
            }
        }
        guarded(ctx, |req| unsafe { fs::<F>(this) }.readdirplus(req, node, handle, cookie, &mut HostSink { sink, add }))
    }

    unsafe extern "C" fn capabilities(this: *const c_void, ctx: *mut CallCtx, out: *mut RawCapabilities) -> i32 {
        guarded(ctx, |_| match unsafe { fs::<F>(this) }.capabilities() {
            Some(caps) => {
                unsafe { write_out(out, &caps_to_raw(&caps)) };
                Ok(())
            }
            // "Use the declared ones": not an error worth a log line.
            None => Err(Errno::ENOENT.into()),
        })
    }
}

/// Fills an entry and its attributes.
///
/// # Safety
/// Both pointers are the host's out-structs for this call.
unsafe fn write_entry(out_entry: *mut RawEntry, out_attr: *mut RawAttr, e: &Entry) {
    let (entry, attr) = entry_to_raw(e);
    unsafe {
        write_out(out_entry, &entry);
        write_out(out_attr, &attr);
    }
}

/// Fills attributes and their time to live.
///
/// # Safety
/// Both pointers are the host's out-params for this call.
unsafe fn write_attr(out_attr: *mut RawAttr, out_ttl_ns: *mut u64, a: &AttrOut) {
    unsafe {
        write_out(out_attr, &attr_to_raw(&a.attr));
        *out_ttl_ns = ttl_ns(a.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    struct Minimal;
    impl FileSystem for Minimal {
        fn lookup(&self, _: &Request, _: NodeId, _: &OsStr) -> Result<Entry> {
            Err(Errno::ENOENT.into())
        }
        fn getattr(&self, _: &Request, _: NodeId, _: Option<Handle>) -> Result<AttrOut> {
            Err(Errno::ENOENT.into())
        }
        fn read(&self, _: &Request, _: NodeId, _: Handle, _: u64, _: &mut [u8]) -> Result<usize> {
            Ok(0)
        }
        fn readdir(&self, _: &Request, _: NodeId, _: Handle, _: u64, _: &mut dyn DirSink) -> Result<()> {
            Ok(())
        }
    }

    /// Adding an entry to `FsVTable` without an export shim leaves it `None` here.
    #[test]
    fn export_table_has_every_operation() {
        const WORDS: usize = std::mem::size_of::<FsVTable>() / std::mem::size_of::<usize>();
        let table = VTable::<Minimal>::TABLE;
        // SAFETY: the table is a size followed by nullable function pointers, all one word.
        let words: [usize; WORDS] = unsafe { std::mem::transmute(table) };
        assert_eq!(words[0], std::mem::size_of::<FsVTable>());
        for (i, w) in words.iter().enumerate().skip(1) {
            assert_ne!(*w, 0, "entry {i} of FsVTable has no export shim");
        }
    }
}
