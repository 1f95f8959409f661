//! All SQL of the pipeline, one module per table.

pub mod day_partitions;
pub mod history;
pub mod holds;
pub mod notifications;
pub mod objects;
pub mod reporters;
