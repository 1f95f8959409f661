//! The sweeper: marks objects stale and deletes them at their deadlines, records their
//! notifications in the same transaction, relays notifications to RabbitMQ and, if set,
//! to a webhook.

mod config;
mod expiry;
mod lagging;
mod relay;
mod retention;
mod stale;
mod startup;
mod watermark;
pub mod webhook;

pub use config::Config;
pub use startup::Application;
