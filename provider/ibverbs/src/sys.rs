//! rdma-core 44's `<infiniband/verbs.h>`, as bindgen translates it
//! (`scripts/gen-bindings.sh` regenerates `sys/bindings.rs`).
//!
//! Only the types and constants are used: the functions it declares are
//! the ones this library itself exports.

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!("sys/bindings.rs");
