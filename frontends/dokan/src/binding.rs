//! Dokan's callbacks over [`Volume`]. Every callback is one core call plus the copying of
//! its answer into Dokan's structures; the rules live in the core.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, mpsc};
use std::thread::JoinHandle;

use dokan::{
    CreateFileInfo, DiskSpaceInfo, FileInfo, FileSystemHandler, FileSystemMounter, FileTimeOperation, FillDataError,
    FillDataResult, FindData, IO_SECURITY_CONTEXT, MountFlags, MountOptions, OperationInfo, OperationResult,
    VolumeInfo,
};
use plugfs_plugin_api::{Capabilities, FileSystem};
use plugfs_windows_core::attributes::FILE_ATTRIBUTE_DIRECTORY;
use plugfs_windows_core::ntstatus::{STATUS_END_OF_FILE, STATUS_INVALID_PARAMETER};
use plugfs_windows_core::security::{UnixSids, descriptor_from_sddl};
use plugfs_windows_core::time::{filetime_to_system_time, system_time_to_filetime};
use plugfs_windows_core::{CreateAction, CreateRequest, FileId, Released, Volume, VolumeOptions};
use tracing::{debug, warn};
use widestring::{U16CStr, U16CString};

/// The NTSTATUS the core answered, in Dokan's type.
fn nt(status: u32) -> i32 {
    status as i32
}

/// A byte offset from Dokan, which passes them signed.
fn offset(value: i64) -> OperationResult<u64> {
    u64::try_from(value).map_err(|_| nt(STATUS_INVALID_PARAMETER))
}

/// A time to set: Dokan's "leave it", "stop updating" and "resume updating" all leave the
/// time as it is here, as 0 does for the core.
fn settable(op: FileTimeOperation) -> u64 {
    match op {
        FileTimeOperation::SetTime(t) => system_time_to_filetime(t),
        _ => 0,
    }
}

/// One open handle: the core's id for it.
pub struct Handle(FileId);

/// The handler Dokan calls.
struct Handler {
    volume: Arc<Volume>,
    label: String,
}

impl<'c, 'h: 'c> FileSystemHandler<'c, 'h> for Handler {
    type Context = Handle;

    fn create_file(
        &'h self,
        file_name: &U16CStr,
        _security_context: &IO_SECURITY_CONTEXT,
        desired_access: u32,
        file_attributes: u32,
        share_access: u32,
        create_disposition: u32,
        create_options: u32,
        _info: &mut OperationInfo<'c, 'h, Self>,
    ) -> OperationResult<CreateFileInfo<Handle>> {
        // Dokan passes IRP_MJ_CREATE's values as they are and leaves share access to the
        // file system, so the core checks it.
        let created = self
            .volume
            .create(&CreateRequest {
                path: file_name.as_slice(),
                access: desired_access,
                share: share_access,
                disposition: create_disposition,
                options: create_options,
                attributes: file_attributes,
            })
            .map_err(nt)?;
        Ok(CreateFileInfo {
            context: Handle(created.id),
            is_dir: created.info.attributes & FILE_ATTRIBUTE_DIRECTORY != 0,
            new_file_created: created.action == CreateAction::Created,
        })
    }

    fn cleanup(&'h self, _file_name: &U16CStr, info: &OperationInfo<'c, 'h, Self>, context: &'c Handle) {
        if info.delete_on_close() {
            // Marked through delete_file/delete_directory or FILE_DELETE_ON_CLOSE, which
            // the core already knows; this only makes sure.
            if let Err(status) = self.volume.set_delete_on_close(context.0, true) {
                debug!(status = format_args!("{status:#x}"), "delete at cleanup refused");
            }
        }
        if let Err(status) = self.volume.cleanup(context.0) {
            warn!(status = format_args!("{status:#x}"), "cleanup failed");
        }
    }

    fn close_file(&'h self, _file_name: &U16CStr, _info: &OperationInfo<'c, 'h, Self>, context: &'c Handle) {
        self.volume.close(context.0);
    }

    fn read_file(
        &'h self,
        _file_name: &U16CStr,
        offset_in: i64,
        buffer: &mut [u8],
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<u32> {
        match self.volume.read(context.0, offset(offset_in)?, buffer) {
            Ok(n) => Ok(n as u32),
            // Dokan wants a read at the end to succeed with nothing, as ReadFile does.
            Err(STATUS_END_OF_FILE) => Ok(0),
            Err(status) => Err(nt(status)),
        }
    }

    fn write_file(
        &'h self,
        _file_name: &U16CStr,
        offset_in: i64,
        buffer: &[u8],
        info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<u32> {
        let at = if info.write_to_eof() { None } else { Some(offset(offset_in)?) };
        // Paging IO never extends the file.
        let written = self.volume.write(context.0, at, buffer, info.paging_io()).map_err(nt)?;
        Ok(written as u32)
    }

    fn flush_file_buffers(
        &'h self,
        _file_name: &U16CStr,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.flush(context.0).map_err(nt)
    }

    fn get_file_information(
        &'h self,
        _file_name: &U16CStr,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<FileInfo> {
        let info = self.volume.file_info(context.0).map_err(nt)?;
        Ok(FileInfo {
            attributes: info.attributes,
            creation_time: filetime_to_system_time(info.creation_time),
            last_access_time: filetime_to_system_time(info.last_access_time),
            last_write_time: filetime_to_system_time(info.last_write_time),
            file_size: info.file_size,
            number_of_links: info.hard_links,
            file_index: info.index_number,
        })
    }

    fn find_files_with_pattern(
        &'h self,
        _file_name: &U16CStr,
        pattern: &U16CStr,
        mut fill_find_data: impl FnMut(&FindData) -> FillDataResult,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        // Dokan pages the answer itself, so the whole listing goes in one call.
        for entry in self.volume.read_directory(context.0, pattern.as_slice(), None).map_err(nt)? {
            let Ok(file_name) = U16CString::from_str(&entry.name) else { continue };
            let data = FindData {
                attributes: entry.info.attributes,
                creation_time: filetime_to_system_time(entry.info.creation_time),
                last_access_time: filetime_to_system_time(entry.info.last_access_time),
                last_write_time: filetime_to_system_time(entry.info.last_write_time),
                file_size: entry.info.file_size,
                file_name,
            };
            match fill_find_data(&data) {
                Ok(()) => {}
                Err(FillDataError::NameTooLong) => {
                    warn!(name = %entry.name, "a name longer than MAX_PATH is left out of the listing")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn set_file_attributes(
        &'h self,
        _file_name: &U16CStr,
        file_attributes: u32,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.set_basic_info(context.0, file_attributes, 0, 0).map(drop).map_err(nt)
    }

    fn set_file_time(
        &'h self,
        _file_name: &U16CStr,
        _creation_time: FileTimeOperation,
        last_access_time: FileTimeOperation,
        last_write_time: FileTimeOperation,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        // The creation time cannot be set through the plugin API (docs/windows.md).
        self.volume
            .set_basic_info(context.0, 0, settable(last_access_time), settable(last_write_time))
            .map(drop)
            .map_err(nt)
    }

    fn delete_file(
        &'h self,
        _file_name: &U16CStr,
        info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        // Only checks and marks; the delete happens at the last cleanup.
        self.volume.set_delete_on_close(context.0, info.delete_on_close()).map_err(nt)
    }

    fn delete_directory(
        &'h self,
        _file_name: &U16CStr,
        info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.set_delete_on_close(context.0, info.delete_on_close()).map_err(nt)
    }

    fn move_file(
        &'h self,
        _file_name: &U16CStr,
        new_file_name: &U16CStr,
        replace_if_existing: bool,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.rename(context.0, new_file_name.as_slice(), replace_if_existing, false).map_err(nt)
    }

    fn set_end_of_file(
        &'h self,
        _file_name: &U16CStr,
        offset_in: i64,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.set_file_size(context.0, offset(offset_in)?, false).map(drop).map_err(nt)
    }

    fn set_allocation_size(
        &'h self,
        _file_name: &U16CStr,
        alloc_size: i64,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<()> {
        self.volume.set_file_size(context.0, offset(alloc_size)?, true).map(drop).map_err(nt)
    }

    fn get_disk_free_space(&'h self, _info: &OperationInfo<'c, 'h, Self>) -> OperationResult<DiskSpaceInfo> {
        let info = self.volume.volume_info().map_err(nt)?;
        Ok(DiskSpaceInfo {
            byte_count: info.total_size,
            free_byte_count: info.free_size,
            available_byte_count: info.free_size,
        })
    }

    fn get_volume_information(&'h self, _info: &OperationInfo<'c, 'h, Self>) -> OperationResult<VolumeInfo> {
        let info = self.volume.volume_info().map_err(nt)?;
        Ok(VolumeInfo {
            name: U16CString::from_str(&self.label).unwrap_or_default(),
            // "plug": a fixed serial, so a volume keeps it across mounts.
            serial_number: 0x706c_7567,
            max_component_length: info.max_component_length,
            fs_flags: info.file_system_flags(),
            fs_name: U16CString::from_str(info.file_system_name).unwrap_or_default(),
        })
    }

    fn mounted(&'h self, _mount_point: &U16CStr, _info: &OperationInfo<'c, 'h, Self>) -> OperationResult<()> {
        Ok(())
    }

    fn unmounted(&'h self, _info: &OperationInfo<'c, 'h, Self>) -> OperationResult<()> {
        Ok(())
    }

    fn get_file_security(
        &'h self,
        _file_name: &U16CStr,
        _security_information: u32,
        security_descriptor: *mut std::ffi::c_void,
        buffer_length: u32,
        _info: &OperationInfo<'c, 'h, Self>,
        context: &'c Handle,
    ) -> OperationResult<u32> {
        let sddl = self.volume.security(context.0, &UnixSids).map_err(nt)?;
        let descriptor = descriptor_from_sddl(&sddl).map_err(nt)?;
        if descriptor.len() <= buffer_length as usize && !security_descriptor.is_null() {
            // SAFETY: Dokan's buffer holds `buffer_length` bytes, at least the descriptor's.
            unsafe {
                std::ptr::copy_nonoverlapping(descriptor.as_ptr(), security_descriptor.cast::<u8>(), descriptor.len())
            };
        }
        // A larger size than the buffer makes Dokan answer STATUS_BUFFER_OVERFLOW with it.
        Ok(descriptor.len() as u32)
    }
}

/// Dokan's library is initialised once per process.
static INIT: Once = Once::new();

/// The library Dokan installs (in System32). plugfs links it delay-loaded (host/build.rs),
/// so a plugfs without Dokan installed still starts, and this check must come before any
/// call into it: a delay-loaded call to a missing DLL ends the process.
const DOKAN_DLL: &str = "dokan2.dll";

/// Whether Dokan is installed: its library loads and its driver answers.
pub fn is_installed() -> bool {
    // SAFETY: loading Dokan's own library runs only its DllMain, which has no
    // preconditions; the handle is dropped at once (the library stays loaded for the
    // delay-load stubs, which load it again by name).
    let loads = unsafe { libloading::Library::new(DOKAN_DLL) }.is_ok();
    if !loads {
        debug!("{DOKAN_DLL} does not load: Dokan is not installed");
        return false;
    }
    INIT.call_once(dokan::init);
    dokan::get_driver_version() != 0
}

/// A mounted Dokan volume, served by a thread of its own. Dropping it unmounts.
pub struct DokanMount {
    mountpoint: U16CString,
    path: PathBuf,
    volume: Arc<Volume>,
    thread: Option<JoinHandle<()>>,
}

impl DokanMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.path
    }

    /// The core serving it: the host asks it for open handles and calls in flight, and
    /// tells it to refuse new opens while shutting down.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Whether Dokan stopped serving on its own (unmounted from outside, for example with
    /// `dokanctl /u`).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Unmounts, waits until Dokan has stopped serving, then releases through the plugin
    /// whatever Windows programs still had open.
    pub fn unmount(mut self) -> Released {
        self.stop();
        self.volume.release_all()
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if !thread.is_finished() && !dokan::unmount(&self.mountpoint) {
                warn!("Dokan refused to unmount {}", self.mountpoint.to_string_lossy());
            }
            let _ = thread.join();
        }
    }
}

impl Drop for DokanMount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mounts `fs` at `mountpoint` (a drive letter such as `X:\`, or an empty NTFS directory)
/// with the volume `label`, and serves it until the returned mount is dropped.
pub fn mount(
    fs: Arc<dyn FileSystem>,
    caps: Capabilities,
    mountpoint: &Path,
    label: &str,
    options: VolumeOptions,
) -> io::Result<DokanMount> {
    if !is_installed() {
        return Err(io::Error::other(format!(
            "Dokan is not installed ({DOKAN_DLL} does not load, or its driver does not answer)"
        )));
    }
    let point = U16CString::from_os_str(mountpoint.as_os_str())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount point contains a NUL character"))?;
    let mut flags = MountFlags::empty();
    if caps.case_sensitive {
        flags |= MountFlags::CASE_SENSITIVE;
    }
    if options.read_only {
        flags |= MountFlags::WRITE_PROTECT;
    }
    let volume = Arc::new(Volume::new(fs, caps, options));
    let handler = Handler { volume: Arc::clone(&volume), label: label.to_owned() };
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread_point = point.clone();
    // Dokan's file system borrows the handler and the mount point for as long as it is
    // mounted, so all three live on this thread; dropping the file system waits for the
    // unmount.
    let thread = std::thread::Builder::new().name("dokan".into()).spawn(move || {
        let options = MountOptions { flags, ..MountOptions::default() };
        let mut mounter = FileSystemMounter::new(&handler, &thread_point, &options);
        match mounter.mount() {
            Ok(file_system) => {
                let _ = ready_tx.send(Ok(()));
                drop(file_system);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            Ok(DokanMount { mountpoint: point, path: mountpoint.to_path_buf(), volume, thread: Some(thread) })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(io::Error::other(format!("Dokan could not mount at {}: {e}", mountpoint.display())))
        }
        Err(_) => Err(io::Error::other("the Dokan thread ended before mounting")),
    }
}
