//! Writes the seed corpora of the fuzz targets from the examples of docs/PROTOCOL.md:
//! `cargo run -p fabmeter-protocol --features fixtures --example fuzz_seeds [OUT_DIR]`
//! (default `protocol/fuzz/corpus`). The seeds are derived, so they are not committed.

use std::path::PathBuf;

use fabmeter_protocol::{fixtures, Channel};

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
        PathBuf::from,
    );
    let decode_dir = out.join("decode");
    let topic_dir = out.join("topic");
    std::fs::create_dir_all(&decode_dir)?;
    std::fs::create_dir_all(&topic_dir)?;
    let mut n = 0;
    for f in fixtures::all() {
        let selector = Channel::ALL
            .iter()
            .position(|c| *c == f.channel)
            .unwrap_or_default() as u8;
        let mut bytes = vec![selector];
        bytes.extend_from_slice(f.json.as_bytes());
        std::fs::write(decode_dir.join(format!("doc-line-{}", f.line)), bytes)?;
        n += 1;
    }
    for (i, channel) in Channel::ALL.iter().enumerate() {
        let topic = format!("fabmeter/v1/atelier-lyon/laser-{i}/{channel}");
        std::fs::write(topic_dir.join(format!("{channel}")), topic)?;
    }
    for (i, bad) in [
        "fabmeter/v1/s/m",
        "fabmeter/v2/s/m/event",
        "fabmeter/v1/+/m/event",
        "fabmeter/v1/S/m/cmd",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(topic_dir.join(format!("bad-{i}")), bad)?;
    }
    println!(
        "wrote {n} decoder seeds and {} topic seeds under {}",
        Channel::ALL.len() + 4,
        out.display()
    );
    Ok(())
}
