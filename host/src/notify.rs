//! Telling a service manager how the host is doing: systemd's `sd_notify` protocol, one
//! datagram to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without that variable nothing is sent.
//!
//! Elsewhere (Windows) both calls do nothing: the Windows service manager has a protocol of
//! its own, which plugfs does not speak yet, so a service wrapper has to start it there.

#[cfg(unix)]
use std::os::unix::net::UnixDatagram;

#[cfg(unix)]
use tracing::{debug, warn};

/// Sends `state` (e.g. `READY=1\nSTATUS=serving 2 mounts`).
#[cfg(not(unix))]
pub fn notify(_state: &str) {}

/// `RELOADING=1`.
#[cfg(not(unix))]
pub fn reloading() {}

/// Sends `state` (e.g. `READY=1\nSTATUS=serving 2 mounts`).
#[cfg(unix)]
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|datagram| {
        let bytes = socket.as_encoded_bytes();
        #[cfg(target_os = "linux")]
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return datagram.send_to_addr(state.as_bytes(), &addr);
        }
        datagram.send_to(state.as_bytes(), std::path::Path::new(&socket))
    });
    match sent {
        Ok(_) => debug!(state, "notified the service manager"),
        Err(e) => warn!("cannot notify the service manager at {}: {e}", socket.to_string_lossy()),
    }
}

/// `RELOADING=1` with the monotonic time systemd asks for since version 253.
#[cfg(unix)]
pub fn reloading() {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
