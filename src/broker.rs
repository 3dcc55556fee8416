//! The embedded MQTT broker of the demo (rumqttd), on its own thread.
//!
//! For the demo only: production sites use Mosquitto, EMQX or another broker (docs/DEPLOY.md).
//! rumqttd 0.20 keeps each subscription's log in memory in segments; its defaults (100 MB x 10
//! segments) grew to about 1 GB after a million messages, and 1 MB x 10 stalled delivery when a
//! fast publisher outran a subscriber. At demo rates (a few hundred messages a second at most) 8 MiB
//! x 4 segments bounds memory at 32 MiB per filter and never stalls.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Segment size of a subscription log, bytes.
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// Segments kept per subscription log.
pub const SEGMENTS: usize = 4;

/// The broker's configuration for `listen`.
pub fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 500,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("demo".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Picks the MQTT port: `preferred` if free, else a free one (and says why).
pub fn pick_port(preferred: u16) -> (u16, Option<String>) {
    match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(l) => {
            drop(l);
            (preferred, None)
        }
        Err(e) => {
            let free = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_or(0, |a| a.port());
            (
                free,
                Some(format!(
                    "port {preferred} is taken ({e}; a Mosquitto may already run there): the demo broker uses {free} instead. \
                     Pass --mqtt-port to choose, or stop the other broker."
                )),
            )
        }
    }
}

/// Starts the broker on its own thread (`Broker::start` blocks and spawns its own runtimes).
pub fn start(listen: SocketAddr) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config(listen));
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
}
