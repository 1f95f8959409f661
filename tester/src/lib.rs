//! The tester: our stand-in for the outside world, in tests, `make run` and the
//! harnesses. A status service simulator (`serve`) and a callback driver (`drive`), both
//! compatible with the original challenge tester; a webhook receiver standing in for a
//! user's endpoint; and an id oracle that judges, without the producer's parser, what an
//! outside body means.

pub mod callback;
pub mod drive;
pub mod id_oracle;
pub mod serve;
pub mod tls_listener;
pub mod webhook_receiver;
