/*
 * hello-c: a read-only in-memory filesystem, written in C against plugfs_plugin.h alone.
 *
 *   /hello.txt         "Hello from C!\n"
 *   /docs/             a directory
 *   /docs/readme.txt   a second file
 *   /link              a symlink to hello.txt
 *
 * It shows the rules of the ABI (docs/abi.md): export PLUGFS_ABI_TAG and
 * plugfs_plugin_entry and nothing else; write at most struct_size bytes of every
 * out-struct and set struct_size to what was written; answer 0 or a negative errno.
 * Node ids are fixed (root is 1), so lookup counts no references and forget has nothing
 * to free. Operations left NULL answer as POSIX expects of a read-only filesystem.
 */

#define _POSIX_C_SOURCE 200809L /* S_IF* under -std=c11 */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "plugfs_plugin.h"

#define EXPORT __attribute__((visibility("default")))
#define ROOT 1
#define TTL_NS 1000000000u /* nothing changes, so the kernel may cache for a second */
#define NAME_MAX_LEN 255
#define MTIME 1700000000 /* 2023-11-14, for every node */

struct node {
    uint64_t id;
    uint64_t parent;
    const char *name;
    uint32_t kind; /* S_IFDIR, S_IFREG or S_IFLNK */
    const char *data; /* file contents or link target */
};

static const struct node nodes[] = {
    {ROOT, ROOT, "", S_IFDIR, NULL},
    {2, ROOT, "hello.txt", S_IFREG, "Hello from C!\n"},
    {3, ROOT, "docs", S_IFDIR, NULL},
    {4, 3, "readme.txt", S_IFREG, "A plugfs plugin in about 200 lines of C.\n"},
    {5, ROOT, "link", S_IFLNK, "hello.txt"},
};
#define NODE_COUNT (sizeof nodes / sizeof nodes[0])

static const struct node *find(uint64_t id) {
    for (size_t i = 0; i < NODE_COUNT; i++)
        if (nodes[i].id == id) return &nodes[i];
    return NULL;
}

/* Fills an out-struct the host allocated: at most its struct_size bytes, then the size written. */
static void write_out(void *dst, const void *src, size_t size) {
    size_t cap;
    memcpy(&cap, dst, sizeof cap);
    size_t n = cap < size ? cap : size;
    if (n < sizeof(size_t)) return;
    memcpy(dst, src, n);
    memcpy(dst, &n, sizeof n);
}

/* A message for the host's log, cut to its buffer. */
static void set_msg(PlugfsCallCtx *ctx, const char *msg) {
    size_t n = strlen(msg);
    if (n > ctx->msg.len) n = ctx->msg.len;
    if (n > 0) memcpy(ctx->msg.ptr, msg, n);
    ctx->msg_len = n;
}

static PlugfsStr str(const char *s) {
    PlugfsStr out = {(const uint8_t *)s, strlen(s)};
    return out;
}

static uint32_t nlink_of(const struct node *n) {
    if (n->kind != S_IFDIR) return 1;
    uint32_t links = 2;
    for (size_t i = 0; i < NODE_COUNT; i++)
        if (nodes[i].parent == n->id && nodes[i].id != ROOT && nodes[i].kind == S_IFDIR) links++;
    return links;
}

static void fill_attr(const struct node *n, PlugfsAttr *out) {
    PlugfsTimestamp t = {MTIME, 0, 0};
    uint64_t size = n->data ? strlen(n->data) : 0;
    PlugfsAttr a = {
        .struct_size = sizeof a,
        .ino = n->id,
        .size = size,
        .blocks = (size + 511) / 512,
        .atime = t,
        .mtime = t,
        .ctime = t,
        .crtime = t,
        .kind = n->kind,
        .perm = n->kind == S_IFDIR ? 0555 : n->kind == S_IFLNK ? 0777 : 0444,
        .nlink = nlink_of(n),
        .blksize = 4096,
    };
    write_out(out, &a, sizeof a);
}

static int32_t hello_lookup(const void *fs, PlugfsCallCtx *ctx, uint64_t parent, PlugfsStr name,
                            PlugfsEntry *out_entry, PlugfsAttr *out_attr) {
    (void)fs, (void)ctx;
    const struct node *dir = find(parent);
    if (!dir) return -ENOENT;
    if (dir->kind != S_IFDIR) return -ENOTDIR;
    if (name.len > NAME_MAX_LEN) return -ENAMETOOLONG;
    for (size_t i = 0; i < NODE_COUNT; i++) {
        const struct node *n = &nodes[i];
        if (n->id == ROOT || n->parent != parent) continue;
        if (strlen(n->name) == name.len && memcmp(n->name, name.ptr, name.len) == 0) {
            PlugfsEntry e = {sizeof e, n->id, 0, TTL_NS, TTL_NS};
            write_out(out_entry, &e, sizeof e);
            fill_attr(n, out_attr);
            return 0;
        }
    }
    return -ENOENT;
}

static int32_t hello_forget(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint64_t nlookup) {
    (void)fs, (void)ctx, (void)node, (void)nlookup;
    return 0; /* fixed nodes: nothing to count or free */
}

static int32_t hello_getattr(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint8_t has_handle,
                             uint64_t handle, PlugfsAttr *out_attr, uint64_t *out_ttl_ns) {
    (void)fs, (void)ctx, (void)has_handle, (void)handle;
    const struct node *n = find(node);
    if (!n) return -ENOENT;
    fill_attr(n, out_attr);
    *out_ttl_ns = TTL_NS;
    return 0;
}

static int32_t hello_readlink(const void *fs, PlugfsCallCtx *ctx, uint64_t node, PlugfsBuf buf,
                              size_t *out_len) {
    (void)fs, (void)ctx;
    const struct node *n = find(node);
    if (!n) return -ENOENT;
    if (n->kind != S_IFLNK) return -EINVAL;
    size_t len = strlen(n->data);
    if (len > buf.len) return -ERANGE;
    memcpy(buf.ptr, n->data, len);
    *out_len = len;
    return 0;
}

static int32_t open_node(uint64_t node, int32_t flags, uint32_t kind, PlugfsOpened *out) {
    const struct node *n = find(node);
    if (!n) return -ENOENT;
    if (kind == S_IFDIR && n->kind != S_IFDIR) return -ENOTDIR;
    if (kind != S_IFDIR && n->kind == S_IFDIR) return -EISDIR;
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) return -EROFS;
    PlugfsOpened o = {sizeof o, node, 0, 0}; /* the handle is the node id: nothing to keep */
    write_out(out, &o, sizeof o);
    return 0;
}

static int32_t hello_open(const void *fs, PlugfsCallCtx *ctx, uint64_t node, int32_t flags, PlugfsOpened *out) {
    (void)fs, (void)ctx;
    return open_node(node, flags, S_IFREG, out);
}

static int32_t hello_opendir(const void *fs, PlugfsCallCtx *ctx, uint64_t node, int32_t flags,
                             PlugfsOpened *out) {
    (void)fs, (void)ctx;
    return open_node(node, flags, S_IFDIR, out);
}

static int32_t hello_read(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint64_t handle, uint64_t offset,
                          PlugfsBuf buf, size_t *out_len) {
    (void)fs, (void)ctx, (void)handle;
    const struct node *n = find(node);
    if (!n) return -ENOENT;
    if (n->kind != S_IFREG) return -EISDIR;
    size_t size = strlen(n->data), len = 0;
    if (offset < size) {
        len = size - (size_t)offset;
        if (len > buf.len) len = buf.len;
        memcpy(buf.ptr, n->data + offset, len);
    }
    *out_len = len;
    return 0;
}

static int32_t hello_release(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint64_t handle, int32_t flags,
                             uint8_t flush) {
    (void)fs, (void)ctx, (void)node, (void)handle, (void)flags, (void)flush;
    return 0;
}

/* Lists `.`, `..` and the children in table order; an entry's cookie is its position + 1. */
static int32_t hello_readdir(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint64_t handle, uint64_t cookie,
                             void *sink, PlugfsDirAddFn add) {
    (void)fs, (void)ctx, (void)handle;
    const struct node *dir = find(node);
    if (!dir) return -ENOENT;
    if (dir->kind != S_IFDIR) return -ENOTDIR;
    uint64_t pos = 0;
    for (size_t i = 0; i < NODE_COUNT + 2; i++) {
        const struct node *n = i == 0 ? dir : i == 1 ? find(dir->parent) : &nodes[i - 2];
        const char *name = i == 0 ? "." : i == 1 ? ".." : n->name;
        if (i >= 2 && (n->id == ROOT || n->parent != node)) continue;
        if (++pos <= cookie) continue;
        PlugfsDirEntry e = {sizeof e, n->id, n->kind, 0, str(name), pos};
        if (!add(sink, &e)) break; /* the host's page is full; it asks again from e's cookie */
    }
    return 0;
}

static int32_t hello_releasedir(const void *fs, PlugfsCallCtx *ctx, uint64_t node, uint64_t handle) {
    (void)fs, (void)ctx, (void)node, (void)handle;
    return 0;
}

static int32_t hello_statfs(const void *fs, PlugfsCallCtx *ctx, uint64_t node, PlugfsStatFs *out) {
    (void)fs, (void)ctx, (void)node;
    PlugfsStatFs s = {.struct_size = sizeof s, .blocks = 1, .files = NODE_COUNT, .bsize = 4096,
                      .namelen = NAME_MAX_LEN, .frsize = 4096};
    write_out(out, &s, sizeof s);
    return 0;
}

static const PlugfsFsVTable ops = {
    .struct_size = sizeof(PlugfsFsVTable),
    .lookup = hello_lookup,
    .forget = hello_forget,
    .getattr = hello_getattr,
    .readlink = hello_readlink,
    .open = hello_open,
    .read = hello_read,
    .release = hello_release,
    .opendir = hello_opendir,
    .readdir = hello_readdir,
    .releasedir = hello_releasedir,
    .statfs = hello_statfs,
};

static void hello_info(PlugfsPluginInfo *out, PlugfsCapabilities *caps) {
    PlugfsPluginInfo info = {sizeof info, str("hello-c"), str("0.1.0"),
                             str("a read-only in-memory filesystem written in C (the C example plugin)"),
                             str("no settings")};
    write_out(out, &info, sizeof info);
    /* Honest for a read-only tree: no PLUGFS_CAP_WRITABLE, no PLUGFS_CAP_PERMISSIONS.
     * Designated initializers: fields a later minor appends (2.2's negative_ttl_ns) are 0. */
    PlugfsCapabilities c = {
        .struct_size = sizeof c,
        .flags = PLUGFS_CAP_SYMLINKS | PLUGFS_CAP_CASE_SENSITIVE | PLUGFS_CAP_CASE_PRESERVING,
        .max_name_len = NAME_MAX_LEN,
        .max_file_size = 1 << 20,
    };
    write_out(caps, &c, sizeof c);
}

/*
 * The host's log (ABI 2.1): attach_host hands over a callback; a host of 2.0 never calls
 * it, and then the plugin logs nothing. Read the offer only as far as its struct_size. The
 * fields are written once, at load, before any open.
 */
static PlugfsHost host = {0};

static void hello_attach_host(const PlugfsHost *offer) {
    PlugfsHost h = {0};
    size_t n;
    memcpy(&n, offer, sizeof n);
    memcpy(&h, offer, n < sizeof h ? n : sizeof h);
    host = h;
}

static void log_line(uint32_t level, const char *message) {
    if (!host.log || level > host.log_max_level) return;
    PlugfsLogRecord r = {.struct_size = sizeof r, .level = level, .line = (uint32_t)__LINE__};
    r.target = (PlugfsStr){(const uint8_t *)"hello_c", 7};
    r.message = (PlugfsStr){(const uint8_t *)message, strlen(message)};
    r.file = (PlugfsStr){(const uint8_t *)__FILE__, strlen(__FILE__)};
    host.log(host.host_data, &r);
}

static const char the_fs = 0; /* all state is static; `object` only has to be non-NULL */

static int32_t hello_open_fs(PlugfsCallCtx *ctx, PlugfsStr config_toml, const PlugfsMountOptions *options,
                             PlugfsBuf key, size_t *key_len, void **out_object) {
    (void)options, (void)key, (void)key_len;
    for (size_t i = 0; i < config_toml.len; i++) {
        uint8_t c = config_toml.ptr[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            set_msg(ctx, "hello-c takes no settings; leave [mount.config] empty");
            return -EINVAL;
        }
    }
    *out_object = (void *)&the_fs;
    log_line(PLUGFS_LOG_INFO, "hello-c: opened, serving hello.txt, docs/ and link");
    return 0;
}

static const PlugfsPluginDecl decl = {
    .struct_size = sizeof(PlugfsPluginDecl),
    .tag = PLUGFS_ABI_TAG_INIT,
    .info = hello_info,
    .open = hello_open_fs,
    .ops = &ops,
    .attach_host = hello_attach_host,
};

EXPORT const PlugfsAbiTag PLUGFS_ABI_TAG = PLUGFS_ABI_TAG_INIT;

EXPORT const PlugfsPluginDecl *plugfs_plugin_entry(void) {
    return &decl;
}
