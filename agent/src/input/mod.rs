//! Inputs of a real machine: where the agent reads use (a run signal, a current clamp, a smart
//! plug), badges, and the relay it drives.
//!
//! This module is the boundary between the hardware (or the smart plugs on the network) and the
//! runtime that hosts the firmware's device core: each source turns what it reads into a
//! [`Reading`] for one machine; the runtime stamps it with its own clock and hands it to the
//! device (`on_run_signal`, `on_sample`, `on_current`, `on_badge`).
//!
//! - [`plug`]: Shelly and Tasmota smart plugs over MQTT (a pure decoder + its connection);
//! - [`badge`]: UIDs typed as text (stdin, USB keyboard-wedge readers through evdev);
//! - [`hw`]: GPIO run signal, ADS1115 current clamp, MFRC522 badge reader and the relay, through
//!   linux-embedded-hal and the firmware's drivers.
//!
//! `docs/AGENT-INPUTS.md` describes every source, its config and its wiring.

pub mod badge;
pub mod hw;
pub mod plug;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One reading from an input source.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The level of the machine's run signal (true: running).
    RunSignal(bool),
    /// One ADC sample of a current clamp, in volts (the device computes the RMS current).
    Sample {
        /// Volts at the ADC input.
        volts: f32,
    },
    /// An RMS current measured by the source itself over its last `window_ms` (smart plugs).
    Current {
        /// Amperes.
        amps: f32,
        /// The span the value covers, ms.
        window_ms: u64,
    },
    /// A badge UID, bytes in transmission order.
    Badge(Vec<u8>),
}

/// A reading tagged with the index of the machine it belongs to (its position in the agent
/// config's machine list).
pub type Tagged = (usize, Reading);

/// An input that could not be set up or failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {problem}; {fix}")]
pub struct InputError {
    /// Which input (e.g. `machines.laser-1.usage`).
    pub what: String,
    /// What went wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

/// The inputs of one machine (`[machines.inputs]` of each machine in `agent.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsConfig {
    /// How use is sensed; none: the machine is reported off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageConfig>,
    /// The badge reader; none: no sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<BadgeConfig>,
    /// The relay that powers the machine; none: the machine is not switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayConfig>,
}

/// Where use comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UsageConfig {
    /// A run signal on a GPIO line.
    Gpio {
        /// GPIO character device, e.g. `/dev/gpiochip0`.
        chip: String,
        /// Line offset on that chip.
        line: u32,
        /// The machine runs when the line is low.
        #[serde(default)]
        active_low: bool,
    },
    /// A current clamp read through an ADS1115 ADC on I2C.
    Ads1115 {
        /// I2C bus device, e.g. `/dev/i2c-1`.
        bus: String,
        /// 7-bit address (0x48 by default wiring).
        address: u8,
    },
    /// A Shelly Gen2 plug publishing `<topic>/status/switch:0` on an MQTT broker.
    Shelly {
        /// The plug's topic prefix, e.g. `shellyplusplugs-a8032ab12345`.
        topic: String,
    },
    /// A Tasmota plug publishing `tele/<topic>/SENSOR` on an MQTT broker.
    Tasmota {
        /// The plug's topic, e.g. `tasmota_4F2A1C`.
        topic: String,
        /// On a multi-channel device, the channel (0-based) the machine is on; none: the sum of
        /// all channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<usize>,
    },
}

/// Where badges come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BadgeConfig {
    /// A USB keyboard-wedge reader through evdev, e.g. `/dev/input/by-id/...-event-kbd`.
    Evdev {
        /// The input device.
        device: String,
        /// Byte order of 10-digit decimal UIDs (`le`, the default, or `be`).
        #[serde(default)]
        decimal: badge::DecimalOrder,
    },
    /// One UID per line in hex on standard input (tests, scripts, a wedge reader on a console).
    Stdin,
    /// An MFRC522 on SPI.
    Mfrc522 {
        /// SPI device, e.g. `/dev/spidev0.0`.
        spi: String,
    },
}

/// The relay output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayConfig {
    /// A GPIO line driving the relay.
    Gpio {
        /// GPIO character device, e.g. `/dev/gpiochip0`.
        chip: String,
        /// Line offset on that chip.
        line: u32,
        /// The relay closes when the line is low.
        #[serde(default)]
        active_low: bool,
    },
}

/// What sources may need from the runtime.
#[derive(Clone, Default)]
pub struct SourceContext {
    /// The agent's own broker connection settings (TLS and credentials included); smart-plug
    /// sources open their own connection with a client id of their own.
    pub mqtt: Option<rumqttc::MqttOptions>,
}

/// Starts the sources of one machine. Each runs until `shutdown` and sends its readings, tagged
/// with `machine`, to `tx`. Must be called within a tokio runtime.
pub fn spawn_sources(
    machine: usize,
    cfg: &InputsConfig,
    ctx: &SourceContext,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, InputError> {
    let mut tasks = Vec::new();
    if let Some(usage) = &cfg.usage {
        let what = format!("machine {machine} usage");
        let plug = match usage {
            UsageConfig::Shelly { topic } => Some((plug::PlugKind::Shelly, topic)),
            UsageConfig::Tasmota { topic, channel } => {
                Some((plug::PlugKind::Tasmota { channel: *channel }, topic))
            }
            _ => None,
        };
        match plug {
            Some((kind, topic)) => {
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(InputError {
                        what,
                        problem: format!("plug topic {topic:?} is empty or has a wildcard"),
                        fix: "set topic to the plug's own topic (see docs/AGENT-INPUTS.md)".into(),
                    });
                }
                let opts = plug::plug_options(&what, ctx.mqtt.as_ref(), machine)?;
                let decoder = plug::PlugDecoder::new(kind, topic);
                tasks.push(tokio::spawn(plug::run_plug(
                    what,
                    opts,
                    decoder,
                    machine,
                    tx.clone(),
                    shutdown.clone(),
                )));
            }
            None => match usage {
                UsageConfig::Gpio {
                    chip,
                    line,
                    active_low,
                } => {
                    let pin = hw::open_line(&what, chip, *line, false, *active_low)?;
                    let (tx, shutdown) = (tx.clone(), shutdown.clone());
                    tasks.push(tokio::task::spawn_blocking(move || {
                        hw::run_signal_thread(what, pin, machine, tx, shutdown)
                    }));
                }
                UsageConfig::Ads1115 { bus, address } => {
                    let adc = hw::open_ads1115(&what, bus, *address)?;
                    let (tx, shutdown) = (tx.clone(), shutdown.clone());
                    tasks.push(tokio::task::spawn_blocking(move || {
                        hw::ads1115_thread(what, adc, machine, tx, shutdown)
                    }));
                }
                UsageConfig::Shelly { .. } | UsageConfig::Tasmota { .. } => {
                    unreachable!("plugs are handled above")
                }
            },
        }
    }
    if let Some(b) = &cfg.badge {
        let what = format!("machine {machine} badge");
        match b {
            BadgeConfig::Stdin => {
                let (tx, shutdown) = (tx.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move {
                    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
                    let stats =
                        badge::read_badge_lines(&what, stdin, machine, &tx, &shutdown).await;
                    tracing::info!(%what, badges = stats.badges, bad = stats.bad, "badge: stdin closed");
                }));
            }
            BadgeConfig::Evdev { device, decimal } => {
                let dev = badge::open_wedge(&what, device)?;
                tasks.push(tokio::spawn(badge::run_wedge(
                    what,
                    dev,
                    *decimal,
                    machine,
                    tx.clone(),
                    shutdown.clone(),
                )));
            }
            BadgeConfig::Mfrc522 { spi } => {
                let reader = hw::open_mfrc522(&what, spi)?;
                let (tx, shutdown) = (tx.clone(), shutdown.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    hw::mfrc522_thread(what, reader, machine, tx, shutdown)
                }));
            }
        }
    }
    Ok(tasks)
}

/// The relay of a machine: a GPIO line, or nothing.
#[derive(Default)]
pub enum Relay {
    /// No relay: switching does nothing.
    #[default]
    None,
    /// A GPIO output line (requested active-low when configured so: `set_high` closes the relay).
    Gpio(linux_embedded_hal::CdevPin),
}

impl Relay {
    /// Opens the relay output a machine's config names; the relay starts open (inactive).
    pub fn open(cfg: Option<&RelayConfig>) -> Result<Relay, InputError> {
        match cfg {
            None => Ok(Relay::None),
            Some(RelayConfig::Gpio {
                chip,
                line,
                active_low,
            }) => hw::open_relay_line("relay", chip, *line, *active_low).map(Relay::Gpio),
        }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Relay::None => f.write_str("Relay::None"),
            Relay::Gpio(pin) => write!(f, "Relay::Gpio(line {})", pin.0.line().offset()),
        }
    }
}

/// A relay output that failed.
#[derive(Debug, thiserror::Error)]
#[error("relay: {0}")]
pub struct RelayError(String);

impl embedded_hal::digital::Error for RelayError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::digital::ErrorType for Relay {
    type Error = RelayError;
}

impl embedded_hal::digital::OutputPin for Relay {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        match self {
            Relay::None => Ok(()),
            Relay::Gpio(pin) => pin.set_low().map_err(|e| RelayError(e.to_string())),
        }
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        match self {
            Relay::None => Ok(()),
            Relay::Gpio(pin) => pin.set_high().map_err(|e| RelayError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_examples_parse() {
        let cfg: InputsConfig = toml::from_str(
            r#"
            usage = { kind = "tasmota", topic = "tasmota_4F2A1C", channel = 1 }
            badge = { kind = "evdev", device = "/dev/input/by-id/usb-reader-event-kbd", decimal = "be" }
            relay = { kind = "gpio", chip = "/dev/gpiochip0", line = 23, active_low = true }
            "#,
        )
        .expect("parses");
        assert_eq!(
            cfg.usage,
            Some(UsageConfig::Tasmota {
                topic: "tasmota_4F2A1C".into(),
                channel: Some(1)
            })
        );
        assert_eq!(
            cfg.badge,
            Some(BadgeConfig::Evdev {
                device: "/dev/input/by-id/usb-reader-event-kbd".into(),
                decimal: badge::DecimalOrder::Be
            })
        );
        let cfg: InputsConfig = toml::from_str(
            r#"
            usage = { kind = "shelly", topic = "shellyplusplugs-a8032ab12345" }
            badge = { kind = "evdev", device = "/dev/input/event3" }
            "#,
        )
        .expect("parses");
        assert!(matches!(
            cfg.badge,
            Some(BadgeConfig::Evdev {
                decimal: badge::DecimalOrder::Le,
                ..
            })
        ));
        let e = toml::from_str::<InputsConfig>(
            r#"usage = { kind = "shelly", topic = "x", colour = 1 }"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn a_missing_relay_chip_is_named() {
        let e = Relay::open(Some(&RelayConfig::Gpio {
            chip: "/dev/gpiochip-none".into(),
            line: 23,
            active_low: false,
        }))
        .unwrap_err();
        assert!(
            e.to_string().contains("/dev/gpiochip-none does not exist"),
            "{e}"
        );
    }
}
