//! The tester: our stand-in for the outside world, in tests, `make run` and the
//! harnesses. A status service simulator (`serve`) and a callback driver (`drive`), both
//! compatible with the original challenge tester; a webhook receiver standing in for a
//! user's endpoint.

pub mod callback;
pub mod drive;
pub mod serve;
pub mod tls_listener;
pub mod webhook_receiver;
