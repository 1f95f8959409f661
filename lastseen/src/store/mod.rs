//! All SQL of the pipeline, one module per table.

pub mod notifications;
pub mod objects;
