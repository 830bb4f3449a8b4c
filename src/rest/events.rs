//! Trigger and batch trigger bodies.
