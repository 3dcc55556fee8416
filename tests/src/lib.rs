//! Real-services test harness for fabmeter's end-to-end suites.
//!
//! Every test starts its own services on free ports of `127.0.0.1`, each with its own
//! temp dir, so suites run in parallel and never touch a system broker (e.g. the one on
//! 1883):
//!
//! * [`Mosquitto`] — the Debian `/usr/sbin/mosquitto` broker (package `mosquitto`), with
//!   optional persistence, password file, ACL and TLS listener; stop/kill/start again on
//!   the same port and data dir.
//! * [`VictoriaMetrics`] — the Debian `victoria-metrics` binary (package `victoria-metrics`),
//!   with line-protocol writes, `force_flush` and `/api/v1/export` parsing.
//! * [`MqttCli`] / [`Subscription`] — MQTT clients on top of `mosquitto_pub` / `mosquitto_sub`
//!   (package `mosquitto-clients`).
//! * [`TestPki`] — throw-away CA, server and client certificates via `openssl`.
//! * [`wait_until`], [`poll_until`], [`wait_for_exit`], [`free_port`] — waiting is always
//!   polling against a deadline, never a fixed sleep.
//!
//! Missing executables give an error naming the apt package to install, see [`Tool`];
//! each can be overridden by an environment variable such as `FABMETER_MOSQUITTO_BIN`.
//! Set `FABMETER_E2E_KEEP_TMP=1` to keep the services' temp dirs (configs, logs) after a run.
//!
//! ```no_run
//! use std::time::Duration;
//! use fabmeter_e2e::{Mosquitto, VictoriaMetrics};
//!
//! let broker = Mosquitto::builder().persistence(true).start().expect("mosquitto");
//! let mut sub = broker.client().subscribe(&["fab/#"], 1).expect("subscribe");
//! broker.client().publish("fab/x", "hello", 1, false).expect("publish");
//! let msg = sub.recv_timeout(Duration::from_secs(5)).expect("message");
//! assert_eq!(msg.payload_str(), "hello");
//!
//! let vm = VictoriaMetrics::start().expect("victoria-metrics");
//! vm.write_line_protocol("m,site=a f=1 1700000000000000000");
//! vm.force_flush();
//! assert_eq!(vm.export("m_f")[0].values, vec![1.0]);
//! ```
#![deny(missing_docs)]

pub mod docs;
mod error;
pub mod http;
mod mosquitto;
mod mqtt_cli;
mod postgres;
mod process;
mod tls;
mod tools;
mod util;
mod victoria;

pub use error::HarnessError;
pub use mosquitto::{
    hand_to_broker_user, write_acl_file, write_password_file, Mosquitto, MosquittoBuilder,
    TlsListener, DEFAULT_MAX_QUEUED_MESSAGES, LOCALHOST,
};
pub use mqtt_cli::{MqttCli, ReceivedMessage, Subscription};
pub use postgres::{pg_bin_dir, Postgres, PG_USER};
pub use tls::TestPki;
pub use tools::{is_executable_file, Tool, FALLBACK_DIRS};
pub use util::{
    free_port, has_exited, poll_until, port_accepts_connections, send_signal, tail_of_file,
    try_free_port, try_wait_until, wait_for_exit, wait_until, KillOnDrop, Signal,
};
pub use victoria::{ExportedSeries, VictoriaMetrics, VictoriaMetricsBuilder};
