//! The tester: a status service simulator and a callback driver, our stand-ins for the
//! outside world in tests, `make run` and load generation.

pub mod bench;
pub mod chaos;
pub mod drive;
pub mod expiry_bench;
pub mod load;
pub mod replay;
pub mod serve;
