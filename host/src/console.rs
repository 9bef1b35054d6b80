//! Windows' counterpart of the SIGINT/SIGTERM handling in the supervisor: the console's
//! control events.
//!
//! - Ctrl-C or Ctrl-Break: the first asks for the clean shutdown (refuse new opens, wait
//!   for calls in flight, unmount, release what programs left open), the second ends the
//!   process at once with status 1. WinFSP and Dokan remove the volume of a process that
//!   ended, so nothing is left mounted either way.
//! - The console closing, the user logging off, the machine shutting down: Windows ends the
//!   process as soon as the handler returns (and after a few seconds in any case), so the
//!   handler asks for the shutdown and then waits for it to finish.
//!
//! Not the `ctrlc` crate: its handler returns at once for every event, so closing the
//! console would end plugfs without the shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::{error, info};
use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, CTRL_C_EVENT, SetConsoleCtrlHandler};
use windows_sys::core::BOOL;

/// Longer than Windows waits for a console handler (5 s for a closing console, 5 to 20 s
/// at logoff and shutdown): the wait ends when the shutdown is done or Windows ends it.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

struct State {
    stop: Arc<AtomicBool>,
    done: Mutex<bool>,
    finished: Condvar,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Held while the host serves. Dropping it, once the shutdown is over or on any early
/// return, lets a waiting close, logoff or shutdown event end the process.
pub struct Watch(());

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(s) = STATE.get() {
            *s.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
            s.finished.notify_all();
        }
    }
}

/// Installs the handler: console events set `stop`, as SIGINT and SIGTERM do elsewhere.
pub fn watch(stop: Arc<AtomicBool>) -> anyhow::Result<Watch> {
    STATE
        .set(State { stop, done: Mutex::new(false), finished: Condvar::new() })
        .map_err(|_| anyhow::anyhow!("the console handler is installed already"))?;
    // SAFETY: `handler` is a valid handler routine for the life of the process.
    if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
        return Err(anyhow::anyhow!("installing the console handler: {}", std::io::Error::last_os_error()));
    }
    Ok(Watch(()))
}

/// Runs on a thread Windows starts for each event.
unsafe extern "system" fn handler(event: u32) -> BOOL {
    let Some(s) = STATE.get() else { return 0 };
    let first = !s.stop.swap(true, Ordering::SeqCst);
    if event == CTRL_C_EVENT || event == CTRL_BREAK_EVENT {
        if !first {
            error!("second Ctrl-C: exiting now, without waiting for the shutdown to finish");
            // Not `exit`: other threads are still inside plugins (see watch_signals).
            // SAFETY: _exit ends the process at once; it has no preconditions.
            unsafe { libc::_exit(1) };
        }
        return 1;
    }
    info!(event, "the console is closing or the session is ending: shutting down");
    let done = s.done.lock().unwrap_or_else(|p| p.into_inner());
    let _ = s.finished.wait_timeout_while(done, CLOSE_WAIT, |done| !*done);
    1
}
