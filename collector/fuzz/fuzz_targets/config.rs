//! Site-file loader fuzz target: any text gives a configuration or an error naming a key, never a
//! panic; a configuration that validates prints back (`print-config`) to one that parses and
//! validates to the same value.
#![no_main]

use fabmeter_collector::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Err(e) => assert!(!e.key.is_empty(), "an error names a key: {e}"),
        Ok(c) => {
            if c.validate().is_ok() {
                let again = Config::from_toml(&c.to_toml()).expect("printed config parses");
                assert_eq!(again.validate(), Ok(()));
                assert_eq!(again, c, "print-config round-trips");
            }
        }
    }
});
