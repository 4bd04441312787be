//! Config::parse on arbitrary UTF-8: never panics, and every error Displays.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sockwarden::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("fuzz.yaml")) {
        let _ = e.to_string();
    }
});
