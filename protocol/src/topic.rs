//! The topic grammar: `fabmeter/v1/{site}/{machine}/{channel}`.

use core::fmt::{self, Write as _};

use crate::id::{Id, IdError, ID_MAX_LEN};

/// First topic level of every fabmeter topic.
pub const TOPIC_ROOT: &str = "fabmeter";
/// Second topic level: the major protocol version. A breaking change gets a new level (`v2`).
pub const TOPIC_VERSION: &str = "v1";
/// Longest topic that [`Topic::to_string_buf`] can produce, in bytes.
pub const TOPIC_MAX_LEN: usize =
    TOPIC_ROOT.len() + 1 + TOPIC_VERSION.len() + 1 + 2 * (ID_MAX_LEN + 1) + 9;

/// What a topic carries. Each channel has one direction, one QoS and one retain flag
/// (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Device to collector, retained, QoS 1: the birth message, and the LWT "offline".
    Status,
    /// Device to collector, QoS 1, not retained: journaled usage events.
    Event,
    /// Device to collector, QoS 0: periodic samples, may be lost.
    Telemetry,
    /// Collector to device, retained, QoS 1: the device's configuration.
    Config,
    /// Collector to device, QoS 1, not retained: commands.
    Cmd,
    /// Collector out, QoS 1: alerts for people and other systems.
    Alert,
    /// Collector to device, QoS 0, not retained: confirmations that events are in the ledger.
    /// A device forgets an event only when a confirmation covers it.
    Ack,
}

/// Who publishes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Published by the device, read by the collector.
    DeviceToCollector,
    /// Published by the collector, read by the device.
    CollectorToDevice,
    /// Published by the collector for anyone else.
    CollectorOut,
}

impl Channel {
    /// Every channel, in the order of the protocol document.
    pub const ALL: [Channel; 7] = [
        Channel::Status,
        Channel::Event,
        Channel::Telemetry,
        Channel::Config,
        Channel::Cmd,
        Channel::Alert,
        Channel::Ack,
    ];

    /// The topic level naming this channel.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Event => "event",
            Channel::Telemetry => "telemetry",
            Channel::Config => "config",
            Channel::Cmd => "cmd",
            Channel::Alert => "alert",
            Channel::Ack => "ack",
        }
    }

    /// Parses a channel level.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The MQTT QoS to publish with (0 or 1).
    pub const fn qos(self) -> u8 {
        match self {
            Channel::Telemetry | Channel::Ack => 0,
            _ => 1,
        }
    }

    /// Whether messages on this channel are published retained.
    pub const fn retained(self) -> bool {
        matches!(self, Channel::Status | Channel::Config)
    }

    /// Who publishes on this channel.
    pub const fn direction(self) -> Direction {
        match self {
            Channel::Status | Channel::Event | Channel::Telemetry => Direction::DeviceToCollector,
            Channel::Config | Channel::Cmd | Channel::Ack => Direction::CollectorToDevice,
            Channel::Alert => Direction::CollectorOut,
        }
    }

    /// The largest payload accepted on this channel, checked before any parsing.
    pub const fn max_payload(self) -> usize {
        match self {
            Channel::Config => crate::MAX_CONFIG_PAYLOAD,
            _ => crate::MAX_PAYLOAD,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed topic: which site, which machine, which channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The workshop.
    pub site: Id,
    /// The machine within the site (not the device attached to it).
    pub machine: Id,
    /// What the topic carries.
    pub channel: Channel,
}

/// Why a topic is not a fabmeter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// The topic does not start with `fabmeter/`.
    WrongRoot,
    /// The version level is not `v1`.
    UnsupportedVersion,
    /// The topic does not have exactly five levels.
    WrongLevelCount {
        /// How many levels it has.
        found: usize,
    },
    /// The topic contains an MQTT wildcard (`+` or `#`); a topic name never does.
    Wildcard,
    /// The site level is not a valid identifier.
    BadSite(IdError),
    /// The machine level is not a valid identifier.
    BadMachine(IdError),
    /// The last level is not one of the channels.
    UnknownChannel,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHAPE: &str = "expected fabmeter/v1/{site}/{machine}/{channel}";
        match self {
            TopicError::WrongRoot => write!(f, "topic does not start with \"fabmeter/\"; {SHAPE}"),
            TopicError::UnsupportedVersion => {
                write!(f, "topic version level is not \"v1\"; {SHAPE}")
            }
            TopicError::WrongLevelCount { found } => {
                write!(f, "topic has {found} levels instead of 5; {SHAPE}")
            }
            TopicError::Wildcard => write!(f, "topic contains a wildcard (+ or #); {SHAPE}"),
            TopicError::BadSite(e) => write!(f, "site id {e}"),
            TopicError::BadMachine(e) => write!(f, "machine id {e}"),
            TopicError::UnknownChannel => write!(
                f,
                "unknown channel; use one of status, event, telemetry, config, cmd, alert, ack"
            ),
        }
    }
}

/// A topic string built without allocation.
pub type TopicBuf = heapless::String<TOPIC_MAX_LEN>;

impl Topic {
    /// Builds a topic from already validated parts. Cannot fail.
    pub fn new(site: Id, machine: Id, channel: Channel) -> Self {
        Topic {
            site,
            machine,
            channel,
        }
    }

    /// Parses a topic name (not a filter) into typed ids and channel.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        if topic.contains(['+', '#']) {
            return Err(TopicError::Wildcard);
        }
        let found = topic.split('/').count();
        let mut levels = topic.split('/');
        if levels.next() != Some(TOPIC_ROOT) {
            return Err(TopicError::WrongRoot);
        }
        if found != 5 {
            return Err(TopicError::WrongLevelCount { found });
        }
        if levels.next() != Some(TOPIC_VERSION) {
            return Err(TopicError::UnsupportedVersion);
        }
        let (Some(site), Some(machine), Some(channel)) =
            (levels.next(), levels.next(), levels.next())
        else {
            return Err(TopicError::WrongLevelCount { found });
        };
        let site = Id::new(site).map_err(TopicError::BadSite)?;
        let machine = Id::new(machine).map_err(TopicError::BadMachine)?;
        let channel = Channel::parse(channel).ok_or(TopicError::UnknownChannel)?;
        Ok(Topic {
            site,
            machine,
            channel,
        })
    }

    /// The topic as a fixed-capacity string (no allocation; the capacity fits every topic).
    ///
    /// Joined by hand rather than with `write!`, so that a device links no formatting code.
    pub fn to_string_buf(&self) -> TopicBuf {
        let mut s = TopicBuf::new();
        for part in [
            TOPIC_ROOT,
            "/",
            TOPIC_VERSION,
            "/",
            self.site.as_str(),
            "/",
            self.machine.as_str(),
            "/",
            self.channel.as_str(),
        ] {
            // Cannot fail: TOPIC_MAX_LEN is computed from the longest possible parts.
            let _ = s.push_str(part);
        }
        s
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_buf())
    }
}

/// A subscription filter for one channel of one site (all machines), or of every site.
///
/// `filter(Some(site), Channel::Event)` is `fabmeter/v1/{site}/+/event`;
/// `filter(None, Channel::Event)` is `fabmeter/v1/+/+/event`.
pub fn filter(site: Option<&Id>, channel: Channel) -> TopicBuf {
    let mut s = TopicBuf::new();
    let site = site.map_or("+", Id::as_str);
    // Cannot fail: shorter than the longest topic.
    let _ = write!(s, "{TOPIC_ROOT}/{TOPIC_VERSION}/{site}/+/{channel}");
    s
}

/// A broker URL, `mqtt://host[:port]` (plain TCP, port 1883 by default) or `mqtts://host[:port]`
/// (TLS, 8883), as devices, agents and the collector write it: `(host, port, tls)`, or `None` if it
/// is not such a URL. IPv6 hosts may be written in brackets.
#[cfg(feature = "std")]
pub fn parse_broker_url(url: &str) -> Option<(std::string::String, u16, bool)> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else {
        (url.strip_prefix("mqtt://")?, false)
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return None;
    }
    Some((host.trim_matches(['[', ']']).into(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).expect("valid id")
    }

    #[test]
    fn builds_and_parses_every_channel() {
        for channel in Channel::ALL {
            let t = Topic::new(id("atelier-lyon"), id("laser-1"), channel);
            let s = t.to_string_buf();
            assert_eq!(
                s.as_str(),
                std::format!("fabmeter/v1/atelier-lyon/laser-1/{channel}")
            );
            assert_eq!(std::format!("{t}"), s.as_str());
            assert_eq!(Topic::parse(&s), Ok(t.clone()));
            assert!(s.ends_with(channel.as_str()));
        }
    }

    #[test]
    fn longest_topic_fits() {
        let long = "a".repeat(ID_MAX_LEN);
        let t = Topic::new(id(&long), id(&long), Channel::Telemetry);
        assert_eq!(t.to_string_buf().len(), TOPIC_MAX_LEN);
        assert_eq!(Topic::parse(&t.to_string_buf()), Ok(t));
    }

    #[test]
    fn rejections_are_specific() {
        use TopicError::*;
        let cases: [(&str, TopicError); 11] = [
            ("fabmetr/v1/s/m/event", WrongRoot),
            ("fabmeter/v2/s/m/event", UnsupportedVersion),
            ("fabmeter/v1/s/m", WrongLevelCount { found: 4 }),
            ("fabmeter/v1/s/m/event/x", WrongLevelCount { found: 6 }),
            ("fabmeter/v1/+/m/event", Wildcard),
            ("fabmeter/v1/s/#", Wildcard),
            (
                "fabmeter/v1/S/m/event",
                BadSite(IdError::BadFirstChar { ch: 'S' }),
            ),
            ("fabmeter/v1//m/event", BadSite(IdError::Empty)),
            (
                "fabmeter/v1/s/m_1/event",
                BadMachine(IdError::BadChar { ch: '_', at: 1 }),
            ),
            ("fabmeter/v1/s/m/events", UnknownChannel),
            ("", WrongRoot),
        ];
        for (topic, want) in cases {
            assert_eq!(Topic::parse(topic), Err(want), "{topic}");
        }
    }

    #[test]
    fn filters() {
        assert_eq!(
            filter(Some(&id("s1")), Channel::Event).as_str(),
            "fabmeter/v1/s1/+/event"
        );
        assert_eq!(
            filter(None, Channel::Status).as_str(),
            "fabmeter/v1/+/+/status"
        );
    }

    #[test]
    fn channel_properties() {
        assert_eq!(Channel::Telemetry.qos(), 0);
        assert!(Channel::Status.retained() && Channel::Config.retained());
        assert!(!Channel::Event.retained() && Channel::Event.qos() == 1);
        assert_eq!(Channel::Config.direction(), Direction::CollectorToDevice);
        assert_eq!(Channel::parse("cmd"), Some(Channel::Cmd));
        assert_eq!(Channel::parse("CMD"), None);
        assert_eq!(Channel::Ack.qos(), 0);
        assert!(!Channel::Ack.retained());
        assert_eq!(Channel::Ack.direction(), Direction::CollectorToDevice);
        assert_eq!(Channel::parse("ack"), Some(Channel::Ack));
    }
}
