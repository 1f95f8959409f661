//! The consumer: takes check messages from the work queue, asks the status service about
//! each id, records online objects' `last_seen` in batches, and acks only after commit.

mod config;
mod deadlines;
mod delivery;
mod holds;
mod http1;
mod orphans;
mod redelivery;
mod retry;
mod startup;
mod status;
mod writer;

pub use config::Config;
pub use retry::{Retrier, RetryPolicy};
pub use startup::Application;
pub use status::{CheckError, StatusClient};
