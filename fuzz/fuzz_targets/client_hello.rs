//! tls::hello::parse on arbitrary bytes: it never panics, and its answers
//! hold together as bytes arrive. A Complete hello lies within the input
//! (len ≤ input), is decided by its own records alone, and its last record
//! is needed (one byte less is Incomplete); a name it reports is lowercase
//! ASCII within the length bound. Incomplete is only said under the bound.
//! Any answer other than Incomplete for a prefix is the whole input's
//! answer too (what peek decides on a prefix never changes later).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::tls::hello::{parse, Parse, MAX_CLIENT_HELLO, MAX_SERVER_NAME};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        Parse::Complete(h) => {
            assert!(h.len <= data.len(), "len {} of {}", h.len, data.len());
            assert_eq!(parse(&data[..h.len]), whole, "not decided by its records");
            assert_eq!(parse(&data[..h.len - 1]), Parse::Incomplete);
            if let Some(name) = &h.sni {
                assert!(name.len() <= MAX_SERVER_NAME);
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()));
            }
        }
        Parse::Incomplete => assert!(data.len() < MAX_CLIENT_HELLO),
        Parse::NotTls => assert!(data[0] != 0x16 || data[1] != 0x03),
        Parse::Malformed(m) => assert!(!m.to_string().is_empty()),
    }
    for cut in [data.len() / 2, data.len() * 7 / 8, data.len().saturating_sub(1)] {
        let prefix = parse(&data[..cut]);
        if prefix != Parse::Incomplete {
            assert_eq!(prefix, whole, "prefix of {cut} bytes decided otherwise");
        }
    }
});
