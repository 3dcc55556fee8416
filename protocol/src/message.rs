//! The messages of each channel, as serde types that need no allocator.
//!
//! Every message is a JSON object whose first field is the schema version `v` (currently
//! [`SCHEMA_VERSION`](crate::SCHEMA_VERSION)). Within one schema version, fields are only ever added,
//! and consumers ignore fields they do not know; removing or changing the meaning of a field bumps `v`.
//! Enums travel as snake_case strings; a message with several kinds (an event, a command) names its
//! kind as the single key of an object (`"event":{"session_started":{...}}`).

use serde::{Deserialize, Serialize};

use crate::hash::{BadgeHash, ConfigHash};

/// Most badge hashes a config may carry in its allow-list.
pub const MAX_ALLOW_LIST: usize = 128;
/// Most capabilities a birth message may list.
pub const MAX_CAPABILITIES: usize = 8;
/// Longest free-text field of a device message (fault detail, lock reason, firmware version).
pub const SHORT_TEXT: usize = 64;
/// Longest free-text field of an alert.
pub const LONG_TEXT: usize = 200;

/// A bounded string that needs no allocator.
pub type Text<const N: usize> = heapless::String<N>;

/// What a machine is doing, as its device senses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// No power drawn (or below the idle threshold).
    Off,
    /// Powered, not working: heaters holding, spindle stopped, laser tube off.
    Idle,
    /// Working: cutting, printing, sawing.
    Busy,
}

impl MachineState {
    /// The wire name of the state.
    pub const fn as_str(self) -> &'static str {
        match self {
            MachineState::Off => "off",
            MachineState::Idle => "idle",
            MachineState::Busy => "busy",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// status

/// Whether the device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Birth message: the device connected.
    Online,
    /// Last will, or a clean shutdown: the device is gone.
    Offline,
}

/// What a device can do, announced in its birth message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Measures current with a clamp (RMS), so it can tell off, idle and busy.
    Current,
    /// Reads the machine's own run signal (busy or idle only).
    RunSignal,
    /// Reads badges.
    Badge,
    /// Drives a relay or contactor that enables the machine.
    Relay,
    /// Has a wall clock and sends `ts`.
    Clock,
    /// Power comes from a smart plug (Shelly, Tasmota) rather than a clamp.
    SmartPlug,
}

/// The retained message on `status`: the birth when online, the LWT when offline.
///
/// Birth: `{"v":1,"status":"online","boot":12,"uptime_ms":5210,"fw":"0.1.0","config_hash":"...",
/// "caps":["current","badge","relay"]}`. LWT: `{"v":1,"status":"offline","boot":12}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Schema version.
    pub v: u16,
    /// Online (birth) or offline (LWT, clean shutdown).
    pub status: Presence,
    /// The device's boot counter.
    pub boot: u32,
    /// Device uptime when the message was sent (birth only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Wall time in unix milliseconds, when the device has a clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Firmware or agent version (birth only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw: Option<Text<SHORT_TEXT>>,
    /// Hash of the config the device applied; absent before it received any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<ConfigHash>,
    /// What the device can do (birth only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<heapless::Vec<Capability, MAX_CAPABILITIES>>,
}

// ---------------------------------------------------------------------------------------------
// event

/// A journaled usage event, on `event`, QoS 1.
///
/// Identified by (site, machine, `boot`, `seq`): a consumer stores each key once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version.
    pub v: u16,
    /// The box (the electronics) that counted `boot`: a nonzero id the device draws once, when
    /// its boot counter starts, and keeps with it (docs/PROTOCOL.md "Identity, ordering,
    /// duplicates"). Lets a consumer tell a replacement box that counts its boots from 1 again
    /// from a resend. Optional: devices older than the field omit it. On the wire: `box`.
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub box_id: Option<u32>,
    /// Boot counter: persisted by the device, bumped at every start, starts at 1.
    pub boot: u32,
    /// Sequence number within the boot: 1 for the first event, +1 for each next one.
    pub seq: u32,
    /// Device uptime when the event happened.
    pub uptime_ms: u64,
    /// Device uptime when this copy was handed to the MQTT client (refreshed at every resend from
    /// the journal). With `uptime_ms` it lets a consumer date events of devices without a clock.
    pub sent_uptime_ms: u64,
    /// Wall time of the event in unix milliseconds, only when the device has a set clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// What happened.
    pub event: EventBody,
}

/// What happened, one of several kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    /// The sensed machine state changed (after hysteresis and dwell time).
    State {
        /// State before.
        from: MachineState,
        /// State now.
        to: MachineState,
    },
    /// An allowed badge opened a session. The session's id is this event's `seq`.
    SessionStarted {
        /// Who.
        badge: BadgeHash,
    },
    /// Running totals of an open session, every `progress_s` seconds. The last one received is
    /// where the collector closes a session whose end never came (device rebooted mid-session).
    SessionProgress {
        /// `seq` of the `session_started` event, same boot.
        session: u32,
        /// Busy seconds so far.
        busy_s: u32,
        /// Idle seconds so far.
        idle_s: u32,
        /// Energy so far, watt-hours.
        energy_wh: u32,
    },
    /// A session closed, with its totals.
    SessionEnded {
        /// `seq` of the `session_started` event, same boot.
        session: u32,
        /// Who.
        badge: BadgeHash,
        /// Busy seconds in total.
        busy_s: u32,
        /// Idle seconds in total.
        idle_s: u32,
        /// Energy in total, watt-hours.
        energy_wh: u32,
        /// Why it closed.
        reason: EndReason,
    },
    /// A badge was refused; the machine stayed disabled.
    AccessDenied {
        /// Who.
        badge: BadgeHash,
        /// Why.
        reason: DenyReason,
    },
    /// Something is wrong on the device.
    Fault {
        /// What kind of fault.
        code: FaultCode,
        /// Short human-readable detail.
        detail: Text<SHORT_TEXT>,
    },
    /// Lifetime counters of the device, monotonic across reboots.
    Counters {
        /// Seconds powered (idle or busy).
        on_s: u64,
        /// Seconds busy.
        busy_s: u64,
        /// Energy, watt-hours.
        energy_wh: u64,
        /// Events dropped from a full journal since the device was built (see the journal policy).
        journal_dropped: u32,
    },
    /// The outcome of a command received on `cmd`.
    CommandResult {
        /// The command's `id`.
        id: u32,
        /// What became of it.
        outcome: CommandOutcome,
    },
}

impl EventBody {
    /// The wire names of every kind, in declaration order.
    pub const KINDS: [&'static str; 8] = [
        "state",
        "session_started",
        "session_progress",
        "session_ended",
        "access_denied",
        "fault",
        "counters",
        "command_result",
    ];

    /// The wire name of the kind (`"session_started"`...).
    pub const fn kind(&self) -> &'static str {
        match self {
            EventBody::State { .. } => "state",
            EventBody::SessionStarted { .. } => "session_started",
            EventBody::SessionProgress { .. } => "session_progress",
            EventBody::SessionEnded { .. } => "session_ended",
            EventBody::AccessDenied { .. } => "access_denied",
            EventBody::Fault { .. } => "fault",
            EventBody::Counters { .. } => "counters",
            EventBody::CommandResult { .. } => "command_result",
        }
    }
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The member badged out (or badged in again).
    BadgeOut,
    /// Idle for longer than `idle_timeout_s` (the print finished at night).
    IdleTimeout,
    /// The machine lost power.
    PowerOff,
    /// The session reached `max_session_s`.
    MaxDuration,
    /// Cut short by the device itself (shutdown, `end_session` command, fault). A collector also uses
    /// this reason for a session it closes because the device rebooted before sending its end.
    Interrupted,
}

/// Why a badge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The badge is not on the allow-list.
    NotAllowed,
    /// The machine is locked for maintenance or out of order.
    MaintenanceLock,
    /// Another member's session is open.
    InUse,
    /// The device has no allow-list yet (never configured).
    NoAllowList,
}

/// Kinds of device fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultCode {
    /// A sensor does not answer or reads out of range.
    Sensor,
    /// Non-volatile storage failed.
    Storage,
    /// The journal was full and dropped events (see the journal policy).
    JournalOverflow,
    /// A config was received and refused; the detail says why.
    ConfigRejected,
    /// The wall clock jumped or is not set.
    Clock,
    /// The device restarted on a watchdog.
    Watchdog,
    /// Anything else.
    Other,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Carried out.
    Done,
    /// Understood and refused in the current state (e.g. `end_session` with no session open).
    Refused,
    /// Not supported by this device.
    Unsupported,
}

// ---------------------------------------------------------------------------------------------
// telemetry

/// A periodic sample, on `telemetry`, QoS 0 (may be lost; never billed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Schema version.
    pub v: u16,
    /// Boot counter.
    pub boot: u32,
    /// Device uptime at the sample.
    pub uptime_ms: u64,
    /// Wall time, when the device has a clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Sensed state at the sample.
    pub state: MachineState,
    /// RMS current in milliamperes, when measured (integer: devices need no float printing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_ma: Option<u32>,
    /// Active power in whole watts, when measured or estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// config

/// The retained device configuration, on `config`, published by the collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Schema version.
    pub v: u16,
    /// How the device turns its input into off/idle/busy.
    pub sensing: Sensing,
    /// Badge hashes allowed to start a session. Kept in non-volatile storage by the device.
    pub allow: heapless::Vec<BadgeHash, MAX_ALLOW_LIST>,
    /// Seconds between `session_progress` events (1 to 3600).
    #[serde(default = "default_progress_s")]
    pub progress_s: u32,
    /// Idle seconds after which a session closes (`idle_timeout`); 0 disables.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u32,
    /// Longest session in seconds (`max_duration`); 0 disables.
    #[serde(default = "default_max_session_s")]
    pub max_session_s: u32,
    /// Seconds between telemetry samples; 0 disables telemetry.
    #[serde(default)]
    pub telemetry_s: u32,
    /// When present, new sessions are refused with `maintenance_lock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
}

fn default_progress_s() -> u32 {
    60
}
fn default_idle_timeout_s() -> u32 {
    900
}
fn default_max_session_s() -> u32 {
    12 * 3600
}

/// A maintenance lock or out-of-order mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Shown to the member who is refused, and recorded.
    pub reason: Text<SHORT_TEXT>,
}

/// Sensing parameters, per machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensing {
    /// A current clamp: RMS current over a window, compared with two thresholds.
    ///
    /// Every quantity is an integer in the unit its name ends with (`_ma` milliamperes, `_ms`
    /// milliseconds, `_v` volts), so that a device decodes its config without a float parser.
    Current {
        /// At or above this RMS current (mA) the machine is idle (powered); below, off.
        idle_ma: u32,
        /// At or above this RMS current (mA) the machine is busy.
        busy_ma: u32,
        /// A state is left only when the current crosses its threshold by this margin (mA).
        hysteresis_ma: u32,
        /// A new state must hold this long before it is reported (ms): filters start spikes,
        /// laser pulses and heater cycling.
        dwell_ms: u32,
        /// RMS window (ms), at least one mains period (20 ms at 50 Hz).
        window_ms: u32,
        /// Calibration: milliamperes per volt at the ADC input (30000 for an SCT-013-030,
        /// 30 A at 1 V).
        ma_per_v: u32,
        /// Mains voltage used to estimate power and energy (V).
        mains_v: u32,
    },
    /// The machine's own run signal (spindle enable, exhaust on) through an optocoupler:
    /// active is busy, inactive is idle.
    RunSignal {
        /// The signal is active when the input is low.
        active_low: bool,
        /// A new state must hold this long before it is reported (ms).
        dwell_ms: u32,
    },
}

// ---------------------------------------------------------------------------------------------
// cmd

/// A command to one device, on `cmd`, QoS 1, not retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Schema version.
    pub v: u16,
    /// Chosen by the collector; echoed in the `command_result` event.
    pub id: u32,
    /// Wall time of issue; a device drops commands older than a minute when it has a clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// What to do.
    pub cmd: CommandBody,
}

/// What a command asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandBody {
    /// Close the open session now (reason `interrupted`).
    EndSession,
    /// Publish a `counters` event now.
    PublishCounters,
    /// Blink or beep so a person can find the box.
    Identify,
    /// Restart the device (a new boot).
    Reboot,
    /// Set the wall clock.
    SetTime {
        /// Unix milliseconds.
        ts: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// alert

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention soon (service due soon).
    Warning,
    /// Needs attention now (service overdue, device offline during opening hours).
    Critical,
}

/// An alert published by the collector on `alert` for people and other systems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Schema version.
    pub v: u16,
    /// Wall time, unix milliseconds.
    pub ts: u64,
    /// How urgent.
    pub severity: Severity,
    /// Stable machine-readable code, e.g. `maintenance_due`.
    pub code: Text<32>,
    /// Human-readable text.
    pub text: Text<LONG_TEXT>,
}

// ---------------------------------------------------------------------------------------------
// ack

/// A confirmation from the collector, on `ack`, QoS 0, not retained:
/// `{"v":1,"boot":12,"from":40,"to":57}` says that the events `from..=to` of boot `boot` of this
/// machine are durably in the ledger (accepted, duplicates, or kept as dead letters). The device may
/// then forget them; an event it has not seen confirmed it keeps and sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    /// Schema version.
    pub v: u16,
    /// The boot of the confirmed events.
    pub boot: u32,
    /// First confirmed `seq`.
    pub from: u32,
    /// Last confirmed `seq` (inclusive, at least `from`).
    pub to: u32,
}
