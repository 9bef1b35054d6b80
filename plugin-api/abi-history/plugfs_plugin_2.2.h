/*
 * plugfs plugin ABI, for plugins written in C.
 *
 * GENERATED from plugin-api/src/abi.rs by plugin-api/tests/c_header.rs (cbindgen, with
 * plugin-api/cbindgen.toml). Do not edit: change abi.rs and regenerate with
 *   PLUGFS_BLESS=1 cargo test -p plugfs-plugin-api --test c_header
 * The rules (sized structs, statuses, buffers) are in docs/abi.md; an example plugin is
 * plugins/hello-c.
 */

#ifndef PLUGFS_PLUGIN_H
#define PLUGFS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

// The bytes PlugfsAbiTag.magic holds (abi.rs MAGIC), as an initializer.
#define PLUGFS_MAGIC { 'P', 'L', 'U', 'G', 'F', 'S', 0, 1 }

// The ABI's major version. Plugins of another major are refused.
#define PLUGFS_ABI_MAJOR 2

// The ABI's minor version. Plugins with a newer minor are refused; older ones load.
#define PLUGFS_ABI_MINOR 2

// Returned by a call whose plugin code panicked. The message buffer holds the panic text.
// It is `INT32_MIN` so that it can never be mistaken for a `-errno`.
#define PLUGFS_STATUS_PANICKED INT32_MIN

// The largest errno a status may carry; anything beyond is a plugin bug (Linux's kernel
// rejects FUSE replies with an error of 4096 or more without completing the request).
#define PLUGFS_ERRNO_MAX 4095

// Leave the time as it is.
#define PLUGFS_SET_TIME_OMIT 0

// Set the time to now.
#define PLUGFS_SET_TIME_NOW 1

// Set the time to `at`.
#define PLUGFS_SET_TIME_AT 2

// [`RawSetAttr::valid`]: `mode` is set.
#define PLUGFS_SETATTR_MODE (1 << 0)

// [`RawSetAttr::valid`]: `uid` is set.
#define PLUGFS_SETATTR_UID (1 << 1)

// [`RawSetAttr::valid`]: `gid` is set.
#define PLUGFS_SETATTR_GID (1 << 2)

// [`RawSetAttr::valid`]: `size` is set (truncate or extend).
#define PLUGFS_SETATTR_SIZE (1 << 3)

// [`RawSetAttr::valid`]: `ctime` is set.
#define PLUGFS_SETATTR_CTIME (1 << 4)

// [`RawSetAttr::valid`]: `handle` is the open file the change comes through.
#define PLUGFS_SETATTR_HANDLE (1 << 5)

// [`crate::Opened::direct_io`].
#define PLUGFS_OPENED_DIRECT_IO 1

// [`crate::Opened::keep_cache`].
#define PLUGFS_OPENED_KEEP_CACHE 2

// [`crate::Opened::nonseekable`].
#define PLUGFS_OPENED_NONSEEKABLE 4

// [`crate::Opened::backing_fd`]: `backing_fd` is a descriptor of a local file holding
// exactly this file's bytes, which the plugin keeps open until the handle is released.
#define PLUGFS_OPENED_BACKING_FD 8

// [`crate::Opened::no_flush`] (since 2.2): the plugin's `flush` of this handle does
// nothing, so the frontend may spare the kernel the request on every `close(2)`.
#define PLUGFS_OPENED_NO_FLUSH 16

// Files can be created and changed.
#define PLUGFS_CAP_WRITABLE (1 << 0)

// Symbolic links.
#define PLUGFS_CAP_SYMLINKS (1 << 1)

// Hard links.
#define PLUGFS_CAP_HARD_LINKS (1 << 2)

// Devices, FIFOs and sockets.
#define PLUGFS_CAP_SPECIAL_FILES (1 << 3)

// Extended attributes.
#define PLUGFS_CAP_XATTRS (1 << 4)

// Modes and owners are stored and reported.
#define PLUGFS_CAP_PERMISSIONS (1 << 5)

// `fallocate` reserving space.
#define PLUGFS_CAP_FALLOCATE (1 << 6)

// `fallocate` punching holes.
#define PLUGFS_CAP_PUNCH_HOLE (1 << 7)

// `RENAME_NOREPLACE`.
#define PLUGFS_CAP_RENAME_NOREPLACE (1 << 8)

// `RENAME_EXCHANGE`.
#define PLUGFS_CAP_RENAME_EXCHANGE (1 << 9)

// Holes read as zeros without taking space.
#define PLUGFS_CAP_SPARSE_FILES (1 << 10)

// Names that differ only in case are different files.
#define PLUGFS_CAP_CASE_SENSITIVE (1 << 11)

// The case a name was created with is kept.
#define PLUGFS_CAP_CASE_PRESERVING (1 << 12)

// Times are kept to the nanosecond.
#define PLUGFS_CAP_NANOSECOND_TIMES (1 << 13)

// The plugin checks permissions itself, as the caller, on every operation, so a mount may
// run without the kernel's `default_permissions`.
#define PLUGFS_CAP_CHECKS_PERMISSIONS (1 << 14)

// `open` may hand over a backing file descriptor ([`OPENED_BACKING_FD`]) for the kernel's
// FUSE passthrough.
#define PLUGFS_CAP_BACKING_FILES (1 << 15)

// The declaration's `format` creates new images.
#define PLUGFS_CAP_FORMAT (1 << 16)

// [`RawMountOptions::flags`]: the mount is read-only.
#define PLUGFS_MOUNT_READ_ONLY 1

// Log levels, as [`RawLogRecord::level`] and [`RawHost::log_max_level`] use them (since
// 2.1): `tracing`'s levels, most severe first. [`LOG_OFF`] is only a maximum: nothing.
#define PLUGFS_LOG_OFF 0

// Something failed.
#define PLUGFS_LOG_ERROR 1

// Something is wrong but the call goes on.
#define PLUGFS_LOG_WARN 2

// Normal operation worth a line.
#define PLUGFS_LOG_INFO 3

// Detail for debugging.
#define PLUGFS_LOG_DEBUG 4

// Very verbose detail.
#define PLUGFS_LOG_TRACE 5

// Identifies a plugin library and the ABI version it was built against.
typedef struct PlugfsAbiTag {
    // Always [`MAGIC`].
    uint8_t magic[8];
    // ABI major version.
    uint32_t major;
    // ABI minor version.
    uint32_t minor;
} PlugfsAbiTag;

// A borrowed byte string.
typedef struct PlugfsStr {
    // Start of the bytes (may dangle when `len` is 0).
    const uint8_t *ptr;
    // Number of bytes.
    size_t len;
} PlugfsStr;

// [`crate::PluginInfo`] on the wire (an out-struct). The strings point into the plugin's
// static data, which lives as long as the process (libraries are never unloaded).
typedef struct PlugfsPluginInfo {
    size_t struct_size;
    struct PlugfsStr name;
    struct PlugfsStr version;
    struct PlugfsStr description;
    struct PlugfsStr config_help;
} PlugfsPluginInfo;

// [`crate::Capabilities`] on the wire (an out-struct): `CAP_*` bits and limits.
typedef struct PlugfsCapabilities {
    size_t struct_size;
    uint64_t flags;
    uint32_t max_name_len;
    uint32_t reserved;
    uint64_t max_file_size;
    // Since 2.2: nanoseconds a frontend may remember that a name does not exist after
    // `lookup` answered `ENOENT` for it (a negative entry); 0, as a 2.0 or 2.1 plugin
    // leaves it, caches nothing.
    uint64_t negative_ttl_ns;
} PlugfsCapabilities;

// A borrowed, writable buffer.
typedef struct PlugfsBuf {
    // Start of the buffer (may dangle when `len` is 0).
    uint8_t *ptr;
    // Capacity in bytes.
    size_t len;
} PlugfsBuf;

// Per-call context: who is calling, and where to put a message for logs. An in-struct
// for the caller's fields, and the plugin writes `msg_len`.
typedef struct PlugfsCallCtx {
    // `size_of::<CallCtx>()` as the host was built.
    size_t struct_size;
    // Caller's uid.
    uint32_t uid;
    // Caller's gid.
    uint32_t gid;
    // Caller's pid (0 when unknown, e.g. for kernel writeback).
    uint32_t pid;
    // Reserved, zero.
    uint32_t reserved;
    // The message buffer, owned by the host.
    struct PlugfsBuf msg;
    // How many bytes of `msg` the plugin wrote.
    size_t msg_len;
} PlugfsCallCtx;

// [`crate::MountOptions`] on the wire (an in-struct).
typedef struct PlugfsMountOptions {
    size_t struct_size;
    uint64_t flags;
} PlugfsMountOptions;

// [`crate::Entry`] on the wire, without its attributes (an out-struct; the attributes
// come in a [`RawAttr`] beside it). TTLs in nanoseconds.
typedef struct PlugfsEntry {
    size_t struct_size;
    uint64_t node;
    uint64_t generation;
    uint64_t entry_ttl_ns;
    uint64_t attr_ttl_ns;
} PlugfsEntry;

// A timestamp: seconds and nanoseconds since the Unix epoch. A value type.
typedef struct PlugfsTimestamp {
    // Seconds (negative before 1970).
    int64_t secs;
    // Nanoseconds, `0..1e9`.
    uint32_t nanos;
    // Reserved, zero.
    uint32_t reserved;
} PlugfsTimestamp;

// [`crate::Attr`] on the wire (an out-struct). `kind` is the `S_IFMT` bits of a mode,
// `perm` the lower 12 bits.
typedef struct PlugfsAttr {
    size_t struct_size;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    struct PlugfsTimestamp atime;
    struct PlugfsTimestamp mtime;
    struct PlugfsTimestamp ctime;
    struct PlugfsTimestamp crtime;
    uint32_t kind;
    uint32_t perm;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint32_t rdev;
    uint32_t blksize;
    uint32_t reserved;
} PlugfsAttr;

// A time to set: [`SET_TIME_OMIT`], [`SET_TIME_NOW`] or [`SET_TIME_AT`]. A value type.
typedef struct PlugfsSetTime {
    uint32_t how;
    uint32_t reserved;
    struct PlugfsTimestamp at;
} PlugfsSetTime;

// [`crate::SetAttr`] on the wire (an in-struct).
typedef struct PlugfsSetAttr {
    size_t struct_size;
    uint32_t valid;
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint64_t size;
    struct PlugfsSetTime atime;
    struct PlugfsSetTime mtime;
    struct PlugfsTimestamp ctime;
    uint64_t handle;
} PlugfsSetAttr;

// [`crate::Opened`] on the wire (an out-struct); `flags` is a set of `OPENED_*` bits.
// `backing_fd` counts only with [`OPENED_BACKING_FD`].
typedef struct PlugfsOpened {
    size_t struct_size;
    uint64_t handle;
    uint32_t flags;
    int32_t backing_fd;
} PlugfsOpened;

// [`crate::DirEntry`] on the wire (an in-struct: the plugin fills it and hands it to the
// host's sink).
typedef struct PlugfsDirEntry {
    size_t struct_size;
    uint64_t ino;
    uint32_t kind;
    uint32_t reserved;
    struct PlugfsStr name;
    uint64_t cookie;
} PlugfsDirEntry;

// The host's directory sink for `readdir`: returns 1 if the entry was taken, 0 if the page
// is full (then the plugin stops and returns 0).
typedef uint8_t (*PlugfsDirAddFn)(void *sink, const struct PlugfsDirEntry *entry);

// [`crate::StatFs`] on the wire (an out-struct).
typedef struct PlugfsStatFs {
    size_t struct_size;
    uint64_t blocks;
    uint64_t bfree;
    uint64_t bavail;
    uint64_t files;
    uint64_t ffree;
    uint32_t bsize;
    uint32_t namelen;
    uint32_t frsize;
    uint32_t reserved;
} PlugfsStatFs;

// The host's directory sink for `readdirplus`: like [`DirAddFn`], with the entry's lookup
// result. The plugin counts one lookup reference on `entry.node` for each call that
// returns 1, none for a call that returns 0, and none for `.` and `..`.
typedef uint8_t (*PlugfsDirPlusAddFn)(void *sink,
                                      const struct PlugfsDirEntry *dirent,
                                      const struct PlugfsEntry *entry,
                                      const struct PlugfsAttr *attr);

// The operations of an opened filesystem. Entries are appended, never reordered; see the
// module docs for versions. `object` is what `open` made.
typedef struct PlugfsFsVTable {
    // `size_of::<FsVTable>()` as the plugin was built.
    size_t struct_size;
    // Frees the plugin's object. Called once, after the last operation.
    void (*destroy)(void *object);
    int32_t (*lookup)(const void *object,
                      struct PlugfsCallCtx *ctx,
                      uint64_t parent,
                      struct PlugfsStr name,
                      struct PlugfsEntry *out_entry,
                      struct PlugfsAttr *out_attr);
    int32_t (*forget)(const void *object, struct PlugfsCallCtx *ctx, uint64_t node, uint64_t nlookup);
    int32_t (*getattr)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t node,
                       uint8_t has_handle,
                       uint64_t handle,
                       struct PlugfsAttr *out_attr,
                       uint64_t *out_ttl_ns);
    int32_t (*setattr)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t node,
                       const struct PlugfsSetAttr *set,
                       struct PlugfsAttr *out_attr,
                       uint64_t *out_ttl_ns);
    int32_t (*readlink)(const void *object,
                        struct PlugfsCallCtx *ctx,
                        uint64_t node,
                        struct PlugfsBuf buf,
                        size_t *out_len);
    int32_t (*mknod)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t parent,
                     struct PlugfsStr name,
                     uint32_t mode,
                     uint32_t rdev,
                     struct PlugfsEntry *out_entry,
                     struct PlugfsAttr *out_attr);
    int32_t (*mkdir)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t parent,
                     struct PlugfsStr name,
                     uint32_t mode,
                     struct PlugfsEntry *out_entry,
                     struct PlugfsAttr *out_attr);
    int32_t (*unlink)(const void *object, struct PlugfsCallCtx *ctx, uint64_t parent, struct PlugfsStr name);
    int32_t (*rmdir)(const void *object, struct PlugfsCallCtx *ctx, uint64_t parent, struct PlugfsStr name);
    int32_t (*symlink)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t parent,
                       struct PlugfsStr name,
                       struct PlugfsStr target,
                       struct PlugfsEntry *out_entry,
                       struct PlugfsAttr *out_attr);
    int32_t (*link)(const void *object,
                    struct PlugfsCallCtx *ctx,
                    uint64_t node,
                    uint64_t new_parent,
                    struct PlugfsStr new_name,
                    struct PlugfsEntry *out_entry,
                    struct PlugfsAttr *out_attr);
    int32_t (*rename)(const void *object,
                      struct PlugfsCallCtx *ctx,
                      uint64_t parent,
                      struct PlugfsStr name,
                      uint64_t new_parent,
                      struct PlugfsStr new_name,
                      uint32_t flags);
    int32_t (*open)(const void *object,
                    struct PlugfsCallCtx *ctx,
                    uint64_t node,
                    int32_t flags,
                    struct PlugfsOpened *out);
    int32_t (*create)(const void *object,
                      struct PlugfsCallCtx *ctx,
                      uint64_t parent,
                      struct PlugfsStr name,
                      uint32_t mode,
                      int32_t flags,
                      struct PlugfsEntry *out_entry,
                      struct PlugfsAttr *out_attr,
                      struct PlugfsOpened *out_opened);
    int32_t (*read)(const void *object,
                    struct PlugfsCallCtx *ctx,
                    uint64_t node,
                    uint64_t handle,
                    uint64_t offset,
                    struct PlugfsBuf buf,
                    size_t *out_len);
    int32_t (*write)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t node,
                     uint64_t handle,
                     uint64_t offset,
                     struct PlugfsStr data,
                     int32_t flags,
                     size_t *out_len);
    int32_t (*flush)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t node,
                     uint64_t handle,
                     uint64_t lock_owner);
    int32_t (*release)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t node,
                       uint64_t handle,
                       int32_t flags,
                       uint8_t flush);
    int32_t (*fsync)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t node,
                     uint64_t handle,
                     uint8_t datasync);
    int32_t (*opendir)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t node,
                       int32_t flags,
                       struct PlugfsOpened *out);
    int32_t (*readdir)(const void *object,
                       struct PlugfsCallCtx *ctx,
                       uint64_t node,
                       uint64_t handle,
                       uint64_t cookie,
                       void *sink,
                       PlugfsDirAddFn add);
    int32_t (*releasedir)(const void *object, struct PlugfsCallCtx *ctx, uint64_t node, uint64_t handle);
    int32_t (*fsyncdir)(const void *object,
                        struct PlugfsCallCtx *ctx,
                        uint64_t node,
                        uint64_t handle,
                        uint8_t datasync);
    int32_t (*statfs)(const void *object, struct PlugfsCallCtx *ctx, uint64_t node, struct PlugfsStatFs *out);
    int32_t (*setxattr)(const void *object,
                        struct PlugfsCallCtx *ctx,
                        uint64_t node,
                        struct PlugfsStr name,
                        struct PlugfsStr value,
                        int32_t flags);
    int32_t (*getxattr)(const void *object,
                        struct PlugfsCallCtx *ctx,
                        uint64_t node,
                        struct PlugfsStr name,
                        struct PlugfsBuf buf,
                        size_t *out_len);
    int32_t (*listxattr)(const void *object,
                         struct PlugfsCallCtx *ctx,
                         uint64_t node,
                         struct PlugfsBuf buf,
                         size_t *out_len);
    int32_t (*removexattr)(const void *object, struct PlugfsCallCtx *ctx, uint64_t node, struct PlugfsStr name);
    int32_t (*fallocate)(const void *object,
                         struct PlugfsCallCtx *ctx,
                         uint64_t node,
                         uint64_t handle,
                         uint64_t offset,
                         uint64_t length,
                         int32_t mode);
    int32_t (*copy_file_range)(const void *object,
                               struct PlugfsCallCtx *ctx,
                               uint64_t node_in,
                               uint64_t handle_in,
                               uint64_t offset_in,
                               uint64_t node_out,
                               uint64_t handle_out,
                               uint64_t offset_out,
                               uint64_t len,
                               uint32_t flags,
                               size_t *out_len);
    int32_t (*lseek)(const void *object,
                     struct PlugfsCallCtx *ctx,
                     uint64_t node,
                     uint64_t handle,
                     int64_t offset,
                     uint32_t whence,
                     uint64_t *out);
    // Lists a directory with each entry's lookup result, in one pass where the plugin can
    // (see [`DirPlusAddFn`] for the reference counting). Without it the host lists with
    // `readdir` and looks entries up one by one, no more than the reply can carry.
    int32_t (*readdirplus)(const void *object,
                           struct PlugfsCallCtx *ctx,
                           uint64_t node,
                           uint64_t handle,
                           uint64_t cookie,
                           void *sink,
                           PlugfsDirPlusAddFn add);
    // This mount's capabilities, where they depend on the backing store (probed at open).
    // Without it, or when it fails, the plugin's declared capabilities apply.
    int32_t (*capabilities)(const void *object, struct PlugfsCallCtx *ctx, struct PlugfsCapabilities *out);
} PlugfsFsVTable;

// One log event of a plugin, handed to the host's [`RawHost::log`] (an in-struct, since 2.1:
// the host reads it as far as its `struct_size` says). Strings are borrowed for the
// call only and need not be NUL-terminated; the host replaces invalid UTF-8.
typedef struct PlugfsLogRecord {
    // `size_of::<RawLogRecord>()` as the plugin was built.
    size_t struct_size;
    // One of `LOG_ERROR..=LOG_TRACE`; anything else is dropped.
    uint32_t level;
    // The line in `file`, 0 when unknown.
    uint32_t line;
    // Where the event comes from, for filtering (`RUST_LOG=target=level`): a Rust
    // plugin's module path such as `plugfs_wfs::engine`, by `tracing`'s convention. Empty
    // means the plugin's name.
    struct PlugfsStr target;
    // The text: the event's message followed by its fields as `name=value`. Empty when
    // the plugin asks [`RawHost::log_enabled`].
    struct PlugfsStr message;
    // The module the event is in (may be empty).
    struct PlugfsStr module_path;
    // The source file the event is in (may be empty).
    struct PlugfsStr file;
} PlugfsLogRecord;

// What the host offers a plugin library, handed to [`PluginDecl::attach_host`] (an
// in-struct, since 2.1). Every entry may be `NULL`: the host offers nothing there.
typedef struct PlugfsHost {
    // `size_of::<RawHost>()` as the host was built.
    size_t struct_size;
    // The host's pointer for this library, passed back to every callback; valid for the
    // life of the process.
    void *host_data;
    // The host's log sink: re-emits `record` into the host's log, naming the plugin.
    // Callable from any thread, at any time after `attach_host`, concurrently; it never
    // unwinds into the plugin.
    void (*log)(void *host_data, const struct PlugfsLogRecord *record);
    // Whether the host would log events of a call site: `record` has the site's level,
    // target, module, file and line, and an empty message; returns 1 or 0. The answer is
    // stable for a call site while the host runs, so a plugin asks once per site. Without
    // it, every event up to `log_max_level` is worth sending.
    uint8_t (*log_enabled)(void *host_data, const struct PlugfsLogRecord *record);
    // The most verbose level the host's log filter can enable ([`LOG_OFF`]..=[`LOG_TRACE`]):
    // events beyond it are dropped, so a plugin need not even format them.
    uint32_t log_max_level;
    // Reserved, zero.
    uint32_t reserved;
} PlugfsHost;

// What [`ENTRY_SYMBOL`] returns: a table in the plugin's static data.
typedef struct PlugfsPluginDecl {
    // `size_of::<PluginDecl>()` as the plugin was built.
    size_t struct_size;
    // A copy of the exported [`AbiTag`].
    struct PlugfsAbiTag tag;
    // Describes the plugin: fills `out` and the capabilities every mount of it has unless
    // the opened filesystem's `capabilities` operation says otherwise.
    void (*info)(struct PlugfsPluginInfo *out, struct PlugfsCapabilities *caps);
    // Opens a filesystem from TOML text and stores the plugin's object (passed back as
    // `object` to every operation) in `out_object`. On failure the message goes to `ctx.msg`
    // and the offending config key (a dotted path), if any, to `key` with its length in
    // `key_len`.
    int32_t (*open)(struct PlugfsCallCtx *ctx,
                    struct PlugfsStr config_toml,
                    const struct PlugfsMountOptions *options,
                    struct PlugfsBuf key,
                    size_t *key_len,
                    void **out_object);
    // The operations of every filesystem this plugin opens. Validated at load.
    const struct PlugfsFsVTable *ops;
    // Creates a new, empty image of `size` bytes where the config text says (for plugins
    // that own an image format, with [`CAP_FORMAT`]). Errors as for `open`.
    int32_t (*format)(struct PlugfsCallCtx *ctx,
                      struct PlugfsStr config_toml,
                      uint64_t size,
                      struct PlugfsBuf key,
                      size_t *key_len);
    // Since 2.1: receives what the host offers (its log sink). A host of 2.1 or later calls
    // it once per load of the library, after `info` and before any `open` or `format`; a
    // library loaded twice is attached twice, and the later call wins. `host` is valid for
    // the call only: copy it (as far as its `struct_size` says). An older host never calls
    // it, and the plugin's log lines then go nowhere.
    void (*attach_host)(const struct PlugfsHost *host);
} PlugfsPluginDecl;

// Hand-written in plugin-api/cbindgen.toml (tests/c_header.rs checks them): the two symbols
// a plugin library exports, and an initializer for the first. The tag must be a constant
// in read-only data: the host reads it from the file before it loads the library.
#define PLUGFS_ABI_TAG_INIT { PLUGFS_MAGIC, PLUGFS_ABI_MAJOR, PLUGFS_ABI_MINOR }
extern const PlugfsAbiTag PLUGFS_ABI_TAG;
const PlugfsPluginDecl *plugfs_plugin_entry(void);

#endif /* PLUGFS_PLUGIN_H */
