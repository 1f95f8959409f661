//! The tester: a status service simulator and a callback driver, our stand-ins for the
//! outside world in tests, `make run` and load generation.

pub mod bench;
pub mod drive;
pub mod load;
pub mod serve;
