//! rdma-core 44's `<infiniband/verbs.h>`, as bindgen translates it
//! (`scripts/gen-bindings.sh` regenerates `src/bindings.rs` and
//! `src/static_fns.c`).
//!
//! Two users, two ways:
//! - `provider/ibverbs` implements `libibverbs.so.1` itself: it uses the
//!   types and constants only, and must not enable `link`.
//! - The provider's backend for real verbs devices (feature `rdma-core` of
//!   `provider`) calls the functions: with feature `link` the crate links
//!   the system's `libibverbs` and compiles `src/static_fns.c`, the
//!   wrappers through which bindgen makes the header's static inline verbs
//!   (`ibv_post_send`, `ibv_poll_cq`, `ibv_query_device_ex`, ...) callable.

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

include!("bindings.rs");
