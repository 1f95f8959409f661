//! Operator commands for a running pipeline, behind the `lastseenctl` binary.

pub mod broker;
pub mod dead_letters;
pub mod doctor;
pub mod lookup;
pub mod replay;
pub mod spool;
