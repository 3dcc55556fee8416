//! The one-command demo's binary (`fabmeter`, run as `cargo run --release -- demo`): every command
//! the documentation shows exists with the flags it uses.

use std::path::Path;

#[test]
fn every_documented_command_and_flag_exists() {
    let checked =
        fabmeter_e2e::docs::check_all(Path::new(env!("CARGO_BIN_EXE_fabmeter")), "fabmeter")
            .unwrap_or_else(|problems| panic!("documented commands that do not work:\n{problems}"));
    assert!(checked >= 1, "only {checked} documented commands found");
}
