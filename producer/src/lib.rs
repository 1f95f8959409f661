//! The producer: `POST /callback` takes a batch of object ids, splits it into check
//! messages and answers 202 only once RabbitMQ has confirmed and routed every one.

mod callback;
mod config;
mod publisher;
mod routes;
mod startup;

pub use callback::{CallbackRequest, check_messages};
pub use config::Config;
pub use publisher::{CallbackPublisher, PublishError};
pub use startup::Application;
