//! The developer harnesses: they run the real binaries against the real PostgreSQL and
//! RabbitMQ, load them, break them and report figures. `make bench`, `make chaos`,
//! `make expiry-bench` and `make latency` call them; the product's binaries never link
//! them.

pub mod bench;
pub mod broker_admin;
pub mod chaos;
pub mod cluster;
pub mod database;
pub mod expiry_bench;
pub mod failover;
pub mod load;
pub mod pipeline;
pub mod process;
