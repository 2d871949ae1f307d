//! Tests of pin on demand.
