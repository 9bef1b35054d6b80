//! WinFSP is loaded lazily (`DELAYLOAD`), so a plugfs built with it still starts on a
//! machine without WinFSP and can fall back to Dokan; winfsp-rs supports only this linkage.

fn main() {
    #[cfg(windows)]
    if std::env::var_os("CARGO_FEATURE_WINFSP").is_some() {
        winfsp::build::winfsp_link_delayload();
    }
}
