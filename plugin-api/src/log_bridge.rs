//! The log bridge (ABI 2.1): a plugin's `tracing` events, in the host's log.
//!
//! A plugin library links its own copy of `tracing`, whose global dispatcher the host's
//! subscriber never sees. So the host hands each library a [`RawHost`] through the
//! declaration's `attach_host`, and:
//!
//! - **the plugin side** ([`attach_host`], exported by [`crate::export_plugin!`]) installs,
//!   once per library, a small subscriber in the plugin's copy of `tracing`. For each call
//!   site it asks the host once whether it would log it (`log_enabled`), so disabled sites
//!   cost what they cost without any subscriber; its maximum level is the host's
//!   (`log_max_level`), so `tracing`'s level check skips the rest. An enabled event's
//!   message and fields are formatted into one string and sent with its level, target,
//!   module, file and line (`log`). Spans are not bridged.
//! - **the host side** (`host` feature, [`host_offer`]) re-emits each record into the
//!   host's `tracing` as an event with the plugin's original target, module, file and line,
//!   and a `plugin` field naming the plugin, so `RUST_LOG=plugfs_wfs=debug` filters plugin
//!   lines as if the plugin were linked into the host. A panic in the host's subscriber is
//!   caught there and never unwinds into the plugin.

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::subscriber::{Interest, Subscriber};
use tracing_core::{Event, Level, LevelFilter, Metadata};

use crate::abi::*;

/// [`RawHost::log`].
type LogFn = unsafe extern "C" fn(host_data: *mut c_void, record: *const RawLogRecord);
/// [`RawHost::log_enabled`].
type LogEnabledFn = unsafe extern "C" fn(host_data: *mut c_void, record: *const RawLogRecord) -> u8;

/// The host's offer, as the plugin keeps it.
#[derive(Clone, Copy)]
struct Host {
    data: *mut c_void,
    log: LogFn,
    enabled: Option<LogEnabledFn>,
}

// SAFETY: the host promises its callbacks and their data are usable from any thread.
unsafe impl Send for Host {}
unsafe impl Sync for Host {}

/// The host this library is attached to, if any.
static HOST: RwLock<Option<Host>> = RwLock::new(None);
/// The host's `log_max_level`.
static MAX_LEVEL: AtomicU32 = AtomicU32::new(LOG_OFF);

std::thread_local! {
    /// Set while this thread is inside the bridge, so an event the host's side raises (if
    /// both sides ever share one copy of `tracing`) is dropped instead of looping.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` unless this thread is already inside the bridge.
fn outside<R>(f: impl FnOnce() -> R) -> Option<R> {
    if INSIDE.with(|i| i.replace(true)) {
        return None;
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INSIDE.with(|i| i.set(false));
        }
    }
    let _reset = Reset;
    Some(f())
}

/// `tracing`'s level as the ABI numbers it.
pub(crate) fn level_to_raw(level: Level) -> u32 {
    match level {
        Level::ERROR => LOG_ERROR,
        Level::WARN => LOG_WARN,
        Level::INFO => LOG_INFO,
        Level::DEBUG => LOG_DEBUG,
        Level::TRACE => LOG_TRACE,
    }
}

/// The ABI's level as `tracing`'s, `None` for anything else.
#[cfg_attr(not(feature = "host"), allow(dead_code))]
pub(crate) fn level_from_raw(level: u32) -> Option<Level> {
    Some(match level {
        LOG_ERROR => Level::ERROR,
        LOG_WARN => Level::WARN,
        LOG_INFO => Level::INFO,
        LOG_DEBUG => Level::DEBUG,
        LOG_TRACE => Level::TRACE,
        _ => return None,
    })
}

fn max_level() -> LevelFilter {
    match MAX_LEVEL.load(Ordering::Relaxed) {
        LOG_OFF => LevelFilter::OFF,
        LOG_ERROR => LevelFilter::ERROR,
        LOG_WARN => LevelFilter::WARN,
        LOG_INFO => LevelFilter::INFO,
        LOG_DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn host() -> Option<Host> {
    *HOST.read().unwrap_or_else(|e| e.into_inner())
}

/// A record of `meta` with `message`, borrowing both.
fn record(meta: &Metadata<'_>, message: &str) -> RawLogRecord {
    RawLogRecord {
        struct_size: std::mem::size_of::<RawLogRecord>(),
        level: level_to_raw(*meta.level()),
        line: meta.line().unwrap_or(0),
        target: RawStr::new(meta.target().as_bytes()),
        message: RawStr::new(message.as_bytes()),
        module_path: RawStr::new(meta.module_path().unwrap_or("").as_bytes()),
        file: RawStr::new(meta.file().unwrap_or("").as_bytes()),
    }
}

/// Whether the host would log events of `meta`'s call site.
fn host_enabled(meta: &Metadata<'_>) -> bool {
    if !meta.is_event() || max_level() < *meta.level() {
        return false;
    }
    let Some(host) = host() else { return false };
    let Some(enabled) = host.enabled else { return true };
    // SAFETY: the host's callback, with a record valid for the call.
    outside(|| unsafe { enabled(host.data, &record(meta, "")) } != 0).unwrap_or(false)
}

/// The subscriber installed in the plugin's copy of `tracing`.
struct Bridge;

impl Subscriber for Bridge {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if host_enabled(meta) { Interest::always() } else { Interest::never() }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        host_enabled(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(max_level())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are never enabled (`register_callsite`), so this is hardly ever called.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(host) = host() else { return };
        outside(|| {
            let mut text = Text::default();
            event.record(&mut text);
            let message = text.finish();
            // SAFETY: the host's callback, with a record valid for the call.
            unsafe { (host.log)(host.data, &record(event.metadata(), &message)) };
        });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Formats an event as `tracing-subscriber`'s default format does: the message, then
/// `name=value` for every other field (strings and `Debug` values as `Debug`, errors and
/// `%` values as `Display`).
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn field(&mut self, field: &Field) -> &mut String {
        let name = field.name();
        if name != "message" {
            self.fields.push(' ');
            self.fields.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.fields.push('=');
            &mut self.fields
        } else {
            &mut self.message
        }
    }

    fn finish(self) -> String {
        if self.message.is_empty() { self.fields.trim_start().to_string() } else { self.message + &self.fields }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.field(field), "{value:?}");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.field(field), "{value}");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name().starts_with("log.") {
            return; // the `log` crate's metadata, already in the record
        }
        let _ = write!(self.field(field), "{value:?}");
    }
}

/// The declaration's `attach_host`: keeps what the host offers and, the first time it
/// offers a log sink, installs [`Bridge`] as this library's global `tracing` subscriber.
/// If the plugin set a global subscriber of its own first, that one stays and nothing is
/// bridged.
pub(crate) unsafe extern "C" fn attach_host(offer: *const RawHost) {
    if offer.is_null() {
        return;
    }
    // SAFETY: the host passes an in-struct valid for the call.
    let offer = unsafe { copy_prefix(RawHost::EMPTY, offer) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let host = offer.log.map(|log| Host { data: offer.host_data, log, enabled: offer.log_enabled });
        MAX_LEVEL.store(if host.is_some() { offer.log_max_level.min(LOG_TRACE) } else { LOG_OFF }, Ordering::Relaxed);
        let offered = host.is_some();
        *HOST.write().unwrap_or_else(|e| e.into_inner()) = host;
        static INSTALL: std::sync::Once = std::sync::Once::new();
        if offered {
            INSTALL.call_once(|| {
                let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Bridge));
            });
        }
        // Call sites seen before (or under an earlier attach) ask again; the global maximum
        // level follows `max_level_hint`.
        tracing_core::callsite::rebuild_interest_cache();
    }));
}

#[cfg(feature = "host")]
pub(crate) use host_side::host_offer;

#[cfg(feature = "host")]
mod host_side {
    use std::collections::HashMap;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Mutex, OnceLock};

    use tracing_core::callsite::{Callsite, Identifier};
    use tracing_core::field::{FieldSet, Value};
    use tracing_core::metadata::Kind;

    use super::*;

    /// What the host keeps per attached library: the plugin's name, for every line.
    struct Attached {
        plugin: Box<str>,
    }

    /// What the host offers a plugin named `plugin`: its log sink, with the maximum level
    /// of the host's current subscriber. The data is leaked: libraries are never unloaded.
    pub(crate) fn host_offer(plugin: &str) -> RawHost {
        let data = Box::leak(Box::new(Attached { plugin: plugin.into() }));
        let max = match LevelFilter::current().into_level() {
            Some(level) => level_to_raw(level),
            None => LOG_OFF,
        };
        RawHost {
            host_data: data as *mut Attached as *mut c_void,
            log: Some(log),
            log_enabled: Some(log_enabled),
            log_max_level: max,
            ..RawHost::EMPTY
        }
    }

    const FIELDS: &[&str] = &["message", "plugin"];

    /// A plugin's call site, as the host's `tracing` sees it: `tracing` events need
    /// `'static` metadata, so each distinct site (level, target, module, file, line) a
    /// plugin logs from gets one, made and registered the first time and kept.
    struct Site {
        meta: OnceLock<&'static Metadata<'static>>,
    }

    impl Callsite for Site {
        fn set_interest(&self, _: Interest) {}

        fn metadata(&self) -> &'static Metadata<'static> {
            self.meta.get().expect("a site's metadata is set before it is registered")
        }
    }

    type Key = (u32, Box<str>, Box<str>, Box<str>, u32);

    /// Sites by their key. Bounded: past this many, a plugin that makes up targets on the
    /// fly logs through one shared site per level.
    const MAX_SITES: usize = 4096;
    static SITES: Mutex<Option<HashMap<Key, &'static Site>>> = Mutex::new(None);

    fn leak(s: &str) -> &'static str {
        Box::leak(s.into())
    }

    fn text(s: RawStr) -> String {
        // SAFETY: the plugin's strings are valid for the call.
        String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned()
    }

    /// The host-side site of a plugin record.
    fn site(r: &RawLogRecord, plugin: &str) -> Option<&'static Site> {
        let level = level_from_raw(r.level)?;
        let mut target = text(r.target);
        if target.is_empty() {
            target = plugin.to_string();
        }
        let (module, file) = (text(r.module_path), text(r.file));
        let key: Key = (r.level, target.into(), module.into(), file.into(), r.line);
        let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
        let sites = sites.get_or_insert_with(HashMap::new);
        if let Some(site) = sites.get(&key) {
            return Some(site);
        }
        let key =
            if sites.len() < MAX_SITES { key } else { (r.level, "plugfs::plugin".into(), "".into(), "".into(), 0) };
        if let Some(site) = sites.get(&key) {
            return Some(site);
        }
        let site: &'static Site = Box::leak(Box::new(Site { meta: OnceLock::new() }));
        let opt = |s: &str| (!s.is_empty()).then(|| leak(s));
        let meta: &'static Metadata<'static> = Box::leak(Box::new(Metadata::new(
            "plugin event",
            leak(&key.1),
            level,
            opt(&key.3),
            (key.4 != 0).then_some(key.4),
            opt(&key.2),
            FieldSet::new(FIELDS, Identifier(site)),
            Kind::EVENT,
        )));
        let _ = site.meta.set(meta);
        sites.insert(key, site);
        // Registered outside the lock would be nicer, but registering calls only the host's
        // own subscribers, which never log through a plugin.
        tracing_core::callsite::register(site);
        Some(site)
    }

    /// [`RawHost::log_enabled`]: whether the host's subscriber is interested in this site.
    unsafe extern "C" fn log_enabled(data: *mut c_void, record: *const RawLogRecord) -> u8 {
        catch_unwind(AssertUnwindSafe(|| {
            if data.is_null() || record.is_null() {
                return 0;
            }
            // SAFETY: `data` is an `Attached` this host leaked; the record is the plugin's,
            // valid for the call, read as far as its size says.
            let attached = unsafe { &*(data as *const Attached) };
            let r = unsafe { copy_prefix(RawLogRecord::EMPTY, record) };
            let Some(site) = site(&r, &attached.plugin) else { return 0 };
            tracing_core::dispatcher::get_default(|d| d.enabled(site.metadata())) as u8
        }))
        .unwrap_or(0)
    }

    /// [`RawHost::log`]: re-emits a plugin's record as the host's event.
    unsafe extern "C" fn log(data: *mut c_void, record: *const RawLogRecord) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            if data.is_null() || record.is_null() {
                return;
            }
            // SAFETY: as in `log_enabled`.
            let attached = unsafe { &*(data as *const Attached) };
            let r = unsafe { copy_prefix(RawLogRecord::EMPTY, record) };
            let Some(site) = site(&r, &attached.plugin) else { return };
            let meta = site.metadata();
            let message = String::from_utf8_lossy(unsafe { r.message.as_bytes() });
            let fields = meta.fields();
            let (Some(message_field), Some(plugin_field)) = (fields.field("message"), fields.field("plugin")) else {
                return;
            };
            let message = tracing_core::field::display(&*message);
            let plugin = tracing_core::field::display(&*attached.plugin);
            let values: [(&Field, Option<&dyn Value>); 2] =
                [(&message_field, Some(&message as &dyn Value)), (&plugin_field, Some(&plugin as &dyn Value))];
            let values = fields.value_set(&values);
            tracing_core::dispatcher::get_default(|d| {
                if d.enabled(meta) {
                    d.event(&Event::new(meta, &values));
                }
            });
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static RECORDS: Mutex<Vec<(u32, String, String, u32)>> = Mutex::new(Vec::new());
    /// Both sides share this test binary's one copy of `tracing`: one test at a time.
    static SERIAL: Mutex<()> = Mutex::new(());
    static ASKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    unsafe extern "C" fn log(data: *mut c_void, r: *const RawLogRecord) {
        assert_eq!(data as usize, 0x5eed);
        let r = unsafe { copy_prefix(RawLogRecord::EMPTY, r) };
        let s = |x: RawStr| String::from_utf8(unsafe { x.as_bytes() }.to_vec()).unwrap();
        RECORDS.lock().unwrap().push((r.level, s(r.target), s(r.message), r.line));
    }

    unsafe extern "C" fn enabled(_: *mut c_void, r: *const RawLogRecord) -> u8 {
        let r = unsafe { copy_prefix(RawLogRecord::EMPTY, r) };
        let message = unsafe { r.message.as_bytes() };
        assert!(message.is_empty(), "a site is asked about without a message");
        let target = String::from_utf8(unsafe { r.target.as_bytes() }.to_vec()).unwrap();
        ASKED.lock().unwrap().push(target.clone());
        // The host would drop this module's `quiet` target.
        (target != "quiet") as u8
    }

    /// One test: the bridge is this test binary's global subscriber.
    #[test]
    fn events_reach_the_host_formatted_and_filtered() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Before the host attaches, nothing is sent, and nothing breaks.
        tracing::warn!("before the attach");
        let offer = RawHost {
            host_data: 0x5eed as *mut c_void,
            log: Some(log),
            log_enabled: Some(enabled),
            log_max_level: LOG_INFO,
            ..RawHost::EMPTY
        };
        unsafe { attach_host(&offer) };
        for i in 0..3 {
            tracing::warn!(count = i, path = "a/b", "hello {}", "there");
        }
        tracing::info!(target: "quiet", "dropped by the host's answer");
        tracing::debug!("beyond the host's maximum level");
        let err = std::io::Error::other("disk on fire");
        tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
        let _span = tracing::info_span!("a span").entered();
        std::thread::spawn(|| tracing::info!(r#type = "thread", "from another thread")).join().unwrap();

        let records = RECORDS.lock().unwrap().clone();
        let me = module_path!();
        assert_eq!(records.len(), 5, "{records:?}");
        assert_eq!(records[0].0, LOG_WARN);
        assert_eq!(records[0].1, me);
        assert_eq!(records[0].2, "hello there count=0 path=\"a/b\"");
        assert!(records[0].3 > 0);
        assert_eq!(records[2].2, "hello there count=2 path=\"a/b\"");
        assert_eq!((records[3].0, records[3].2.as_str()), (LOG_ERROR, "failed error=disk on fire"));
        assert_eq!((records[4].0, records[4].2.as_str()), (LOG_INFO, "from another thread type=\"thread\""));
        // A site is asked about once (and again only when the attach or the set of
        // subscribers changes), not per event.
        let quiet_asked = || ASKED.lock().unwrap().iter().filter(|t| *t == "quiet").count();
        let before = quiet_asked();
        assert!(before >= 1);
        for _ in 0..100 {
            tracing::info!(target: "quiet", "dropped by the host's answer");
        }
        assert_eq!(quiet_asked(), before + 1, "one new call site, a hundred events");
        assert_eq!(RECORDS.lock().unwrap().len(), 5);

        // A later attach (the library loaded again) wins; a host without a sink gets silence.
        unsafe { attach_host(&RawHost::EMPTY) };
        tracing::warn!("after a host without a sink");
        assert_eq!(RECORDS.lock().unwrap().len(), 5);
    }

    /// The host's side of the sink: a panic in the host's subscriber stays on the host's
    /// side of the boundary (the callback returns normally), for `log` and `log_enabled`.
    #[cfg(feature = "host")]
    #[test]
    fn a_panic_in_the_hosts_subscriber_never_unwinds_into_the_plugin() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        use tracing_core::span::Current;
        struct Panics;
        impl Subscriber for Panics {
            fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
                Interest::always()
            }
            fn enabled(&self, meta: &Metadata<'_>) -> bool {
                if meta.target() == "panics-in-enabled" {
                    panic!("the host's filter panicked");
                }
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, _: &Event<'_>) {
                panic!("the host's subscriber panicked");
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
            fn current_span(&self) -> Current {
                Current::none()
            }
        }
        let offer = host_offer("panicky");
        let (log, enabled) = (offer.log.unwrap(), offer.log_enabled.unwrap());
        let record = |target: &'static str, message: &'static str| RawLogRecord {
            level: LOG_WARN,
            target: RawStr::new(target.as_bytes()),
            message: RawStr::new(message.as_bytes()),
            ..RawLogRecord::EMPTY
        };
        tracing_core::dispatcher::with_default(&tracing_core::Dispatch::new(Panics), || {
            // Each returns instead of unwinding (an unwind out of `extern "C"` would abort).
            unsafe { log(offer.host_data, &record("panics-in-event", "boom")) };
            assert_eq!(unsafe { enabled(offer.host_data, &record("panics-in-enabled", "")) }, 0);
            unsafe { log(offer.host_data, &record("panics-in-enabled", "boom")) };
        });
    }
}
