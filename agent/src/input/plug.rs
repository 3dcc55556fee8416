//! Smart plugs over MQTT: Shelly Gen2/Gen3 and Tasmota plugs report their power, the source turns
//! each report into a [`Reading::Current`].
//!
//! The parsing and the conversion are a pure, clock-free [`PlugDecoder`]: a message and the time it
//! was received in, a reading (or nothing, or a problem) out. [`run_plug`] is the thin MQTT part
//! around it: its own rumqttc connection (the agent's broker settings with a client id of its own),
//! subscriptions made again at every (re)connection, a growing backoff after failures.
//!
//! Formats:
//! - **Shelly Gen2/Gen3** (Plus Plug S, Plug S Gen3, Plus 1PM …): the component status of
//!   `switch:0` (<https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Switch#status>)
//!   on `<topic>/status/switch:0` ("Generic status update over MQTT"), and the `NotifyStatus`
//!   notifications on `<topic>/events/rpc` ("RPC status notifications", on by default), which carry
//!   only what changed and are overlaid on the last known status
//!   (<https://shelly-api-docs.shelly.cloud/gen2/General/Notifications>). A plug with both options on
//!   reports each change twice: the second report covers a window of ~0 ms and changes nothing.
//! - **Tasmota**: the `ENERGY` object of `tele/<topic>/SENSOR` (every `TelePeriod`) and of the
//!   `stat/<topic>/STATUS10` answer (`StatusSNS`) (<https://tasmota.github.io/docs/MQTT/>,
//!   <https://tasmota.github.io/docs/Power-Monitoring-Calibration/>). On multi-channel devices
//!   `Power`, `Current` and `Voltage` are arrays: the configured `channel`, or the sum of all
//!   channels when none is configured (the machine draws what all channels draw).
//!
//! Conversion: the reported current when present, else power / voltage (230 V when no voltage is
//! reported); a switched-off output, or a plug that went offline (its last will: Shelly
//! `<topic>/online` `false`, Tasmota `tele/<topic>/LWT` `Offline`), is 0 A.
//!
//! Plugs report on change (Shelly) or every `TelePeriod` (Tasmota), and a reported value holds
//! until the next report. So a report first closes the previous value's span — a reading of the
//! previous current over the time since the previous report, at most [`MAX_WINDOW_MS`] (a plug
//! silent for a day does not book a day of its last power) — then opens the new value with a
//! reading of 0 ms (for the state, no energy yet). The device's energy is then the reported power
//! integrated over time, and a state change is seen at the report that shows it. Shelly's
//! `aenergy`-only notifications (every minute) close the span of the unchanged value.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{InputError, Reading, Tagged};

/// The longest span one value may cover, ms (10 minutes: a Tasmota's `TelePeriod` is at most 1 h
/// but 300 s by default; docs/AGENT-INPUTS.md recommends 10 to 60 s).
pub const MAX_WINDOW_MS: u64 = 600_000;

/// Mains voltage assumed when a plug reports power without voltage.
pub const DEFAULT_MAINS_V: f32 = 230.0;

/// Which firmware the plug runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlugKind {
    /// Shelly Gen2/Gen3, switch component 0.
    Shelly,
    /// Tasmota; `channel`: which channel of a multi-channel device (none: all, summed).
    Tasmota {
        /// Channel index (0-based) in the `ENERGY` arrays.
        channel: Option<usize>,
    },
}

/// Turns a plug's messages into readings; keeps what a report needs from the previous ones.
#[derive(Debug, Clone)]
pub struct PlugDecoder {
    kind: PlugKind,
    topic: String,
    /// When the last value was reported, and that value (amperes).
    last: Option<(u64, f32)>,
    /// Shelly: the last known `switch:0` status, overlaid by partial notifications.
    shelly: ShellyStatus,
    malformed: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ShellyStatus {
    output: Option<bool>,
    apower: Option<f64>,
    voltage: Option<f64>,
    current: Option<f64>,
}

impl PlugDecoder {
    /// A decoder for the plug with this topic (the Shelly's prefix, or the Tasmota `%topic%`).
    pub fn new(kind: PlugKind, topic: &str) -> PlugDecoder {
        PlugDecoder {
            kind,
            topic: topic.trim_matches('/').to_string(),
            last: None,
            shelly: ShellyStatus::default(),
            malformed: 0,
        }
    }

    /// The MQTT topic filters to subscribe to.
    pub fn topics(&self) -> Vec<String> {
        let t = &self.topic;
        match self.kind {
            PlugKind::Shelly => vec![
                format!("{t}/status/switch:0"),
                format!("{t}/events/rpc"),
                format!("{t}/online"),
            ],
            PlugKind::Tasmota { .. } => vec![
                format!("tele/{t}/SENSOR"),
                format!("stat/{t}/STATUS10"),
                format!("tele/{t}/LWT"),
            ],
        }
    }

    /// Malformed payloads seen so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Decodes one message received at `received_at` (ms, any monotonic origin) into the readings
    /// it implies: none, the previous value over its span, and/or the new value (0 ms).
    ///
    /// Empty: a valid message that carries no power (another component, a sensor without
    /// `ENERGY`, a status before any power is known). `Err`: the payload is malformed; it is
    /// counted, and the previous state is kept.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_at: u64,
    ) -> Result<Vec<Reading>, String> {
        let amps = match self.amps(topic, payload) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => {
                self.malformed += 1;
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(2);
        if let Some((at, prev)) = self.last {
            out.push(Reading::Current {
                amps: prev,
                window_ms: received_at.saturating_sub(at).min(MAX_WINDOW_MS),
            });
        }
        if self.last.map(|(_, prev)| prev) != Some(amps) {
            out.push(Reading::Current { amps, window_ms: 0 });
        }
        self.last = Some((received_at, amps));
        Ok(out)
    }

    fn amps(&mut self, topic: &str, payload: &[u8]) -> Result<Option<f32>, String> {
        let t = &self.topic;
        match self.kind {
            PlugKind::Shelly => {
                if topic == format!("{t}/online") {
                    // The last will (`false`) or the birth (`true`).
                    if payload.trim_ascii() == b"false" {
                        self.shelly = ShellyStatus::default();
                        return Ok(Some(0.0));
                    }
                    Ok(None)
                } else if topic == format!("{t}/status/switch:0") {
                    let v = json(payload)?;
                    // A full status: what it lacks is not known any more.
                    self.shelly = shelly_overlay(ShellyStatus::default(), &v)?;
                    Ok(self.shelly_amps())
                } else if topic == format!("{t}/events/rpc") {
                    let v = json(payload)?;
                    if v.get("method").and_then(Value::as_str) != Some("NotifyStatus") {
                        return Ok(None);
                    }
                    let Some(sw) = v.get("params").and_then(|p| p.get("switch:0")) else {
                        return Ok(None);
                    };
                    // Any notification of switch:0 (power, or the minute's energy) reports the
                    // value as it stands.
                    self.shelly = shelly_overlay(self.shelly, sw)?;
                    Ok(self.shelly_amps())
                } else {
                    Ok(None)
                }
            }
            PlugKind::Tasmota { channel } => {
                let energy = if topic == format!("tele/{t}/LWT") {
                    // The last will (`Offline`) or the birth (`Online`).
                    return Ok((payload.trim_ascii() == b"Offline").then_some(0.0));
                } else if topic == format!("tele/{t}/SENSOR") {
                    let v = json(payload)?;
                    v.get("ENERGY").cloned()
                } else if topic == format!("stat/{t}/STATUS10") {
                    let v = json(payload)?;
                    v.get("StatusSNS").and_then(|s| s.get("ENERGY")).cloned()
                } else {
                    return Ok(None);
                };
                match energy {
                    None => Ok(None),
                    Some(e) => tasmota_amps(&e, channel).map(Some),
                }
            }
        }
    }

    fn shelly_amps(&self) -> Option<f32> {
        let s = self.shelly;
        if s.output == Some(false) {
            return Some(0.0);
        }
        if let Some(i) = s.current {
            return Some(i as f32);
        }
        s.apower.map(|p| amps_of(p, s.voltage))
    }
}

/// `status` with the fields `sw` carries; unchanged on error (a malformed payload changes nothing).
fn shelly_overlay(mut status: ShellyStatus, sw: &Value) -> Result<ShellyStatus, String> {
    if !sw.is_object() {
        return Err("switch:0 is not an object".into());
    }
    if let Some(o) = sw.get("output") {
        status.output = Some(o.as_bool().ok_or("output is not a boolean")?);
    }
    for (key, slot) in [
        ("apower", &mut status.apower),
        ("voltage", &mut status.voltage),
        ("current", &mut status.current),
    ] {
        if let Some(x) = sw.get(key) {
            *slot = Some(number(x, key)?);
        }
    }
    Ok(status)
}

fn json(payload: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Some(x) => Err(format!("{key} is {x}, not a non-negative number")),
        None => Err(format!("{key} is {v}, not a number")),
    }
}

fn amps_of(power_w: f64, voltage: Option<f64>) -> f32 {
    let v = voltage
        .filter(|v| *v > 1.0)
        .unwrap_or(f64::from(DEFAULT_MAINS_V));
    (power_w / v) as f32
}

/// A Tasmota `ENERGY` field: a number, or an array with one number per channel.
fn channels(energy: &Value, key: &str) -> Result<Option<Vec<f64>>, String> {
    match energy.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| number(x, key))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(x) => number(x, key).map(|n| Some(vec![n])),
    }
}

fn tasmota_amps(energy: &Value, channel: Option<usize>) -> Result<f32, String> {
    if !energy.is_object() {
        return Err("ENERGY is not an object".into());
    }
    let current = channels(energy, "Current")?;
    let power = channels(energy, "Power")?;
    let voltage = channels(energy, "Voltage")?;
    let pick = |values: &[f64]| -> Result<Vec<(usize, f64)>, String> {
        match channel {
            None => Ok(values.iter().copied().enumerate().collect()),
            Some(c) => values
                .get(c)
                .map(|x| vec![(c, *x)])
                .ok_or_else(|| format!("no channel {c}: the device reports {}", values.len())),
        }
    };
    if let Some(i) = current {
        return Ok(pick(&i)?.iter().map(|(_, x)| *x as f32).sum());
    }
    let Some(p) = power else {
        return Err("ENERGY has neither Current nor Power".into());
    };
    let volts_of = |c: usize| {
        voltage
            .as_ref()
            .and_then(|v| v.get(c).or_else(|| v.first()).copied())
    };
    Ok(pick(&p)?
        .iter()
        .map(|(c, w)| amps_of(*w, volts_of(*c)))
        .sum())
}

/// Runs one plug's MQTT connection until `shutdown`: subscribes at every connection, decodes every
/// message with `decoder`, sends the readings tagged with `machine`. `what` names the input in logs.
pub async fn run_plug(
    what: String,
    mut opts: MqttOptions,
    mut decoder: PlugDecoder,
    machine: usize,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) {
    opts.set_clean_session(true);
    let origin = tokio::time::Instant::now();
    let topics = decoder.topics();
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let mut backoff = Duration::from_millis(200);
    'run: loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(%what, ?topics, "plug: connected, subscribing");
                subscribe(&client, &topics, &what);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = origin.elapsed().as_millis() as u64;
                match decoder.decode(&p.topic, &p.payload, now) {
                    Ok(readings) => {
                        for r in readings {
                            if tx.send((machine, r)).await.is_err() {
                                break 'run;
                            }
                        }
                    }
                    Err(problem) => tracing::warn!(
                        %what,
                        topic = %p.topic,
                        %problem,
                        malformed = decoder.malformed(),
                        "plug: malformed payload ignored"
                    ),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%what, error = %e, retry_in = ?backoff, "plug: broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    let _ = client.try_disconnect();
}

fn subscribe(client: &AsyncClient, topics: &[String], what: &str) {
    for t in topics {
        if let Err(e) = client.try_subscribe(t.clone(), QoS::AtMostOnce) {
            tracing::warn!(%what, topic = %t, error = %e, "plug: subscribe not queued");
        }
    }
}

/// The connection settings of a plug source: the agent's, with the client id `<id>-plug-<machine>`.
pub fn plug_options(
    what: &str,
    base: Option<&MqttOptions>,
    machine: usize,
) -> Result<MqttOptions, InputError> {
    let Some(base) = base else {
        return Err(InputError {
            what: what.into(),
            problem: "a smart plug is read over MQTT, and the agent has no broker".into(),
            fix: "configure the agent's broker (the plugs must publish to it, or be bridged to it)"
                .into(),
        });
    };
    let mut opts = base.clone();
    opts.set_client_id(format!("{}-plug-{machine}", base.client_id()));
    Ok(opts)
}

#[cfg(test)]
mod tests;
