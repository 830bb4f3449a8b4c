//! Channel names and kinds.
