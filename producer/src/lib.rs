//! The producer: `POST /callback` takes a batch of object ids, splits it into check
//! messages and answers 202 only once RabbitMQ has confirmed and routed every one, or,
//! when RabbitMQ cannot, once they are committed to the local durable spool.

mod config;
mod dashboard;
mod drain;
mod http;
mod publisher;
mod spool;
mod startup;

use lastseen::domain::callback;

pub use callback::{BodyError, CallbackRequest, check_messages};
pub use config::Config;
pub use publisher::{CallbackPublisher, PublishError};
pub use spool::{Spool, SpoolError};
pub use startup::{Application, STOP_LIMIT};
