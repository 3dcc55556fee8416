//! `fabmeter`: the one-command demo. Parses arguments and calls [`fabmeter::demo::run`].

use clap::{Parser, Subcommand};

/// fabmeter: fair metering of shared workshop machines.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A whole workshop on this machine: embedded broker, collector, web page and simulated machines.
    Demo(fabmeter::demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fabmeter=info,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(fabmeter::demo::run(args))
        }
    }
}
