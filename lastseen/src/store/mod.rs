//! All SQL of the pipeline, one module per table, and the read API's queries (`reads`).

pub mod day_partitions;
pub mod history;
pub mod holds;
pub mod notifications;
pub mod objects;
pub mod reads;
pub mod reporters;
