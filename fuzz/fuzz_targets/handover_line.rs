//! Any line a hand-over peer sends gives a message or a reason, never a
//! panic, and what decodes encodes to one line that decodes to the same
//! message.
#![no_main]

use foo_proxy::handover::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A line as `Link` hands it over: up to its newline, without it.
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Ok(msg) = Msg::decode(line) {
        let text = msg.encode();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        let again = Msg::decode(text.trim_end_matches('\n').as_bytes());
        assert_eq!(again.as_ref(), Ok(&msg), "{text:?}");
    }
});
