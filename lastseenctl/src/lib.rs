//! Operator commands for a running pipeline, behind the `lastseenctl` binary.

pub mod replay;
