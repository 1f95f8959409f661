//! Shared library of the last-seen pipeline: configuration, telemetry, AMQP topology,
//! database access, domain types and shutdown, used by every binary of the workspace.

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod contract;
pub mod db;
pub mod limits;
pub mod ops;
pub mod pem;
pub mod progress;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topology;

/// The plain data of the pipeline (the `lastseen-domain` crate).
pub use lastseen_domain as domain;
pub use lastseen_domain::{CheckMessage, ObjectId};
