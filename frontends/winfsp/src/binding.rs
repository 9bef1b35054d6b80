//! WinFSP's callbacks over [`Volume`]. Every callback is one core call plus the copying of
//! its answer into WinFSP's structures; the rules live in the core.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugfs_plugin_api::{Capabilities, FileSystem};
// WinFSP resolves the disposition itself: it calls `open` for an existing file, `create`
// for a new one, and `overwrite` after `open` for the truncating dispositions.
use plugfs_windows_core::access::{FILE_CREATE, FILE_OPEN, FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE};
use plugfs_windows_core::attributes::FILE_ATTRIBUTE_NORMAL;
use plugfs_windows_core::security::{FILE_READ_ATTRIBUTES, READ_CONTROL, UnixSids, descriptor_from_sddl};
use plugfs_windows_core::{CreateRequest, FileId, Released, Volume, VolumeOptions};
use tracing::{debug, warn};
use winfsp::filesystem::{
    DirInfo, DirMarker, FileInfo, FileSecurity, FileSystemContext, OpenFileInfo, VolumeInfo, WideNameInfo,
};
use winfsp::host::{FileSystemHost, FineGuard, VolumeParams};
use winfsp::{FspError, FspInit, U16CStr};

/// Every share mode: WinFSP's driver checks share access itself, so the core is told
/// everything is shared and does not check twice.
const FILE_SHARE_ALL: u32 = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;

/// `Cleanup` flag: the file is to be deleted now.
const CLEANUP_DELETE: u32 = winfsp_sys::FspCleanupDelete as u32;

/// The NTSTATUS the core answered, as WinFSP's error.
fn nt(status: u32) -> FspError {
    FspError::NTSTATUS(status as i32)
}

/// The core's file information in WinFSP's layout.
fn file_info(out: &mut FileInfo, info: &plugfs_windows_core::FileInfo) {
    out.file_attributes = info.attributes;
    out.reparse_tag = info.reparse_tag;
    out.allocation_size = info.allocation_size;
    out.file_size = info.file_size;
    out.creation_time = info.creation_time;
    out.last_access_time = info.last_access_time;
    out.last_write_time = info.last_write_time;
    out.change_time = info.change_time;
    out.index_number = info.index_number;
    // WinFSP does not implement hard link counts and asks for 0.
    out.hard_links = 0;
    out.ea_size = 0;
}

/// Copies a security descriptor into WinFSP's buffer when it fits, and answers its size,
/// which is how WinFSP asks for the size first.
fn answer_descriptor(descriptor: &[u8], buffer: Option<&mut [c_void]>) -> u64 {
    if let Some(buffer) = buffer
        && buffer.len() >= descriptor.len()
    {
        // SAFETY: `buffer` holds at least `descriptor.len()` bytes (c_void is one byte) and
        // the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(descriptor.as_ptr(), buffer.as_mut_ptr().cast::<u8>(), descriptor.len())
        };
    }
    descriptor.len() as u64
}

/// One open handle: the core's id for it.
pub struct Handle(FileId);

/// The file system context WinFSP calls.
struct Context {
    volume: Arc<Volume>,
    label: String,
}

impl Context {
    fn descriptor(&self, id: FileId) -> winfsp::Result<Vec<u8>> {
        let sddl = self.volume.security(id, &UnixSids).map_err(nt)?;
        descriptor_from_sddl(&sddl).map_err(nt)
    }

    fn fill(&self, id: FileId, out: &mut FileInfo) -> winfsp::Result<()> {
        file_info(out, &self.volume.file_info(id).map_err(nt)?);
        Ok(())
    }
}

impl FileSystemContext for Context {
    type FileContext = Handle;

    fn get_security_by_name(
        &self,
        file_name: &U16CStr,
        security_descriptor: Option<&mut [c_void]>,
        _reparse_point_resolver: impl FnOnce(&U16CStr) -> Option<FileSecurity>,
    ) -> winfsp::Result<FileSecurity> {
        // An attribute-only open costs the plugin no `open` and takes no part in share checks.
        let opened = self
            .volume
            .create(&CreateRequest {
                path: file_name.as_slice(),
                access: FILE_READ_ATTRIBUTES | READ_CONTROL,
                share: FILE_SHARE_ALL,
                disposition: FILE_OPEN,
                options: 0,
                attributes: 0,
            })
            .map_err(nt)?;
        let descriptor = self.descriptor(opened.id);
        self.volume.close(opened.id);
        let descriptor = descriptor?;
        Ok(FileSecurity {
            reparse: false,
            sz_security_descriptor: answer_descriptor(&descriptor, security_descriptor),
            attributes: opened.info.attributes,
        })
    }

    fn open(
        &self,
        file_name: &U16CStr,
        create_options: u32,
        granted_access: u32,
        file_info_out: &mut OpenFileInfo,
    ) -> winfsp::Result<Handle> {
        let opened = self
            .volume
            .create(&CreateRequest {
                path: file_name.as_slice(),
                access: granted_access,
                share: FILE_SHARE_ALL,
                disposition: FILE_OPEN,
                options: create_options,
                attributes: 0,
            })
            .map_err(nt)?;
        file_info(file_info_out.as_mut(), &opened.info);
        Ok(Handle(opened.id))
    }

    fn close(&self, context: Handle) {
        self.volume.close(context.0);
    }

    fn create(
        &self,
        file_name: &U16CStr,
        create_options: u32,
        granted_access: u32,
        file_attributes: u32,
        _security_descriptor: Option<&[c_void]>,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        _extra_buffer_is_reparse_point: bool,
        file_info_out: &mut OpenFileInfo,
    ) -> winfsp::Result<Handle> {
        // The new file's mode comes from its attributes and the umask; a descriptor given
        // by the caller is not stored (docs/windows.md).
        let created = self
            .volume
            .create(&CreateRequest {
                path: file_name.as_slice(),
                access: granted_access,
                share: FILE_SHARE_ALL,
                disposition: FILE_CREATE,
                options: create_options,
                attributes: file_attributes,
            })
            .map_err(nt)?;
        file_info(file_info_out.as_mut(), &created.info);
        Ok(Handle(created.id))
    }

    fn cleanup(&self, context: &Handle, _file_name: Option<&U16CStr>, flags: u32) {
        if flags & CLEANUP_DELETE != 0 {
            // WinFSP asks for the delete on the last cleanup of a file marked through
            // `set_delete` (already marked in the core) or opened with
            // FILE_DELETE_ON_CLOSE (marked in the core when this handle was opened); this
            // only makes sure, and a refusal here leaves the file as Windows would.
            if let Err(status) = self.volume.set_delete_on_close(context.0, true) {
                debug!(status = format_args!("{status:#x}"), "delete at cleanup refused");
            }
        }
        // Cleanup cannot fail on Windows; a failed delete is logged by the core's caller.
        if let Err(status) = self.volume.cleanup(context.0) {
            warn!(status = format_args!("{status:#x}"), "cleanup failed");
        }
    }

    fn flush(&self, context: Option<&Handle>, file_info_out: &mut FileInfo) -> winfsp::Result<()> {
        // A volume flush (no handle) has nothing to sync in a plugin without handles.
        let Some(handle) = context else { return Ok(()) };
        self.volume.flush(handle.0).map_err(nt)?;
        self.fill(handle.0, file_info_out)
    }

    fn get_file_info(&self, context: &Handle, file_info_out: &mut FileInfo) -> winfsp::Result<()> {
        self.fill(context.0, file_info_out)
    }

    fn get_security(&self, context: &Handle, security_descriptor: Option<&mut [c_void]>) -> winfsp::Result<u64> {
        let descriptor = self.descriptor(context.0)?;
        Ok(answer_descriptor(&descriptor, security_descriptor))
    }

    fn overwrite(
        &self,
        context: &Handle,
        file_attributes: u32,
        replace_file_attributes: bool,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        file_info_out: &mut FileInfo,
    ) -> winfsp::Result<()> {
        self.volume.set_file_size(context.0, 0, false).map_err(nt)?;
        // FILE_SUPERSEDE replaces the attributes, FILE_OVERWRITE adds to them.
        let attributes = if replace_file_attributes {
            file_attributes
        } else {
            let current = self.volume.file_info(context.0).map_err(nt)?.attributes;
            current | file_attributes
        };
        if attributes != 0 {
            let info = self.volume.set_basic_info(context.0, attributes | FILE_ATTRIBUTE_NORMAL, 0, 0).map_err(nt)?;
            file_info(file_info_out, &info);
            return Ok(());
        }
        self.fill(context.0, file_info_out)
    }

    fn read_directory(
        &self,
        context: &Handle,
        pattern: Option<&U16CStr>,
        marker: DirMarker,
        buffer: &mut [u8],
    ) -> winfsp::Result<u32> {
        let pattern = pattern.map(U16CStr::as_slice).unwrap_or(&[]);
        let entries = self.volume.read_directory(context.0, pattern, marker.inner()).map_err(nt)?;
        let mut cursor = 0u32;
        for entry in entries {
            let mut dir_info: DirInfo = DirInfo::new();
            file_info(dir_info.file_info_mut(), &entry.info);
            if dir_info.set_name(&entry.name).is_err() {
                warn!(name = %entry.name, "a name longer than WinFSP's 255 units is left out of the listing");
                continue;
            }
            // A full buffer ends this answer without the end marker; WinFSP asks again
            // with the last name as the marker.
            if !dir_info.append_to_buffer(buffer, &mut cursor) {
                return Ok(cursor);
            }
        }
        DirInfo::<255>::finalize_buffer(buffer, &mut cursor);
        Ok(cursor)
    }

    fn rename(
        &self,
        context: &Handle,
        _file_name: &U16CStr,
        new_file_name: &U16CStr,
        replace_if_exists: bool,
    ) -> winfsp::Result<()> {
        self.volume.rename(context.0, new_file_name.as_slice(), replace_if_exists, false).map_err(nt)
    }

    fn set_basic_info(
        &self,
        context: &Handle,
        file_attributes: u32,
        _creation_time: u64,
        last_access_time: u64,
        last_write_time: u64,
        _last_change_time: u64,
        file_info_out: &mut FileInfo,
    ) -> winfsp::Result<()> {
        // INVALID_FILE_ATTRIBUTES means "leave them", as 0 does for the core.
        let attributes = if file_attributes == u32::MAX { 0 } else { file_attributes };
        let info = self.volume.set_basic_info(context.0, attributes, last_access_time, last_write_time).map_err(nt)?;
        file_info(file_info_out, &info);
        Ok(())
    }

    fn set_delete(&self, context: &Handle, _file_name: &U16CStr, delete_file: bool) -> winfsp::Result<()> {
        self.volume.set_delete_on_close(context.0, delete_file).map_err(nt)
    }

    fn set_file_size(
        &self,
        context: &Handle,
        new_size: u64,
        set_allocation_size: bool,
        file_info_out: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let info = self.volume.set_file_size(context.0, new_size, set_allocation_size).map_err(nt)?;
        file_info(file_info_out, &info);
        Ok(())
    }

    fn read(&self, context: &Handle, buffer: &mut [u8], offset: u64) -> winfsp::Result<u32> {
        Ok(self.volume.read(context.0, offset, buffer).map_err(nt)? as u32)
    }

    fn write(
        &self,
        context: &Handle,
        buffer: &[u8],
        offset: u64,
        write_to_eof: bool,
        constrained_io: bool,
        file_info_out: &mut FileInfo,
    ) -> winfsp::Result<u32> {
        let offset = (!write_to_eof).then_some(offset);
        let written = self.volume.write(context.0, offset, buffer, constrained_io).map_err(nt)?;
        self.fill(context.0, file_info_out)?;
        Ok(written as u32)
    }

    fn get_volume_info(&self, out_volume_info: &mut VolumeInfo) -> winfsp::Result<()> {
        let info = self.volume.volume_info().map_err(nt)?;
        out_volume_info.total_size = info.total_size;
        out_volume_info.free_size = info.free_size;
        out_volume_info.set_volume_label(&self.label);
        Ok(())
    }
}

/// Whether WinFSP is installed: its DLL loads. `frontend = "auto"` tries WinFSP first.
pub fn is_installed() -> bool {
    winfsp::winfsp_init().is_ok()
}

/// A mounted WinFSP volume. Dropping it unmounts.
pub struct WinfspMount {
    host: FileSystemHost<Context, FineGuard>,
    volume: Arc<Volume>,
    mountpoint: PathBuf,
    stopped: bool,
    _init: FspInit,
}

impl WinfspMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The core serving it: the host asks it for open handles and calls in flight, and
    /// tells it to refuse new opens while shutting down.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Unmounts and stops serving, then releases through the plugin whatever Windows
    /// programs still had open (WinFSP sends no `close` for those once it is stopped).
    pub fn unmount(mut self) -> Released {
        self.stop();
        self.volume.release_all()
    }

    fn stop(&mut self) {
        if !std::mem::replace(&mut self.stopped, true) {
            self.host.stop();
            self.host.unmount();
        }
    }
}

impl Drop for WinfspMount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mounts `fs` at `mountpoint` (a drive letter such as `X:`, or a directory that does not
/// exist yet) with the volume `label`, and serves it from WinFSP's threads until the
/// returned mount is dropped.
pub fn mount(
    fs: Arc<dyn FileSystem>,
    caps: Capabilities,
    mountpoint: &Path,
    label: &str,
    options: VolumeOptions,
) -> io::Result<WinfspMount> {
    let init = winfsp::winfsp_init().map_err(|_| io::Error::other("WinFSP is not installed (its DLL did not load)"))?;
    let volume = Volume::new(fs, caps, options);
    let info = volume
        .volume_info()
        .map_err(|status| io::Error::other(format!("the plugin's statfs failed (NTSTATUS {status:#x})")))?;

    let mut params = VolumeParams::new();
    params
        .filesystem_name(info.file_system_name)
        .sector_size(info.sector_size as u16)
        .sectors_per_allocation_unit((info.allocation_unit / info.sector_size).clamp(1, u16::MAX as u32) as u16)
        .max_component_length(info.max_component_length.min(255) as u16)
        .case_sensitive_search(info.case_sensitive_search)
        .case_preserved_names(info.case_preserved_names)
        .unicode_on_disk(true)
        .persistent_acls(info.persistent_acls)
        .read_only_volume(info.read_only)
        // The core answers queries with the pattern applied, and its markers are names.
        .pass_query_directory_pattern(true)
        .post_cleanup_when_modified_only(false)
        // Metadata is cached by WinFSP for a second, as the FUSE frontend's default TTL.
        .file_info_timeout(1000);

    let volume = Arc::new(volume);
    let context = Context { volume: Arc::clone(&volume), label: label.chars().take(32).collect() };
    // FineGuard: WinFSP calls from several threads at once; the core is Sync.
    let mut host: FileSystemHost<Context, FineGuard> =
        FileSystemHost::new(params, context).map_err(|e| io::Error::other(format!("WinFSP: {e:?}")))?;
    host.mount(mountpoint.as_os_str())
        .map_err(|e| io::Error::other(format!("WinFSP could not mount at {}: {e:?}", mountpoint.display())))?;
    if let Err(e) = host.start() {
        host.unmount();
        return Err(io::Error::other(format!("WinFSP could not start serving: {e:?}")));
    }
    Ok(WinfspMount { host, volume, mountpoint: mountpoint.to_path_buf(), stopped: false, _init: init })
}
