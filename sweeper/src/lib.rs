//! The sweeper: deletes objects not seen online for their TTL, records one notification
//! per expiry in the same transaction, and relays notifications to RabbitMQ.

mod config;
mod expiry;
mod relay;
mod startup;

pub use config::Config;
pub use startup::Application;
