//! Cross-crate integration tests live in `tests/tests/`; this library holds
//! the rxe lab ([`lab`]): the project's tools against real perftest on a
//! real kernel rxe in a qemu guest.

pub mod lab;
