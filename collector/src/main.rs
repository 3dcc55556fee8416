//! `fabmeter-collector`: not implemented yet (the collector issue).
fn main() {
    eprintln!("fabmeter-collector: not implemented yet");
    std::process::exit(2);
}
