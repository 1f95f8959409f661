//! The integration tests: one test binary (one link), a module per area. Each test runs
//! the real producer, consumers and sweeper against the machine's PostgreSQL and
//! RabbitMQ on its own database and queue names (`e2e::TestEnv`).

mod admin;
mod analyst;
mod api_document;
mod api_keys;
mod broker_nodes;
mod callback_input;
mod config;
mod expiry_hold;
mod failures;
mod hostile_input;
mod lifecycle;
mod lock_waits;
mod logs;
mod memory;
mod notification_queue;
mod operations;
mod outages;
mod pipeline;
mod plans;
mod publishing;
mod queue_deleted;
mod reads;
mod refused_settings;
mod replay;
mod retention;
mod schema;
mod session_breaks;
mod slow_clients;
mod spool;
mod stale;
mod status_page;
mod stops;
mod teardown;
mod tls;
mod webhook;
