//! Topic parser fuzz target: never panics; a parsed topic prints back to exactly its input.
#![no_main]

use fabmeter_protocol::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Topic::parse(s) {
        assert_eq!(t.to_string_buf().as_str(), s);
        assert_eq!(t.to_string(), s);
    }
});
