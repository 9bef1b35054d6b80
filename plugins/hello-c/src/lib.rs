//! The C example plugin. The plugin is `hello.c` beside this crate, not Rust: `build.rs`
//! compiles it with the system C compiler (`-std=c11 -Wall -Wextra -Werror -pedantic`)
//! against `plugin-api/include/plugfs_plugin.h` into `libplugfs_hello_c.so` next to the
//! workspace's other plugins (`target/<profile>/`), where `plugfs plugins` finds it. This
//! crate exists so that `cargo build --workspace` builds it; it has no Rust code.
