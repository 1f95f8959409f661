//! The pipeline's plain data, with no I/O: object ids, check messages and notification
//! payloads (`messages`, re-exported here), and the callback body as read from outside
//! (`callback`). `lastseen` re-exports this crate as `lastseen::domain`; the fuzz target
//! (`fuzz/`) builds on it alone, not on the services.

pub mod callback;
#[cfg(feature = "oracle")]
pub mod id_oracle;
mod messages;

pub use messages::*;
