//! Socket ids: `<a>.<b>`, two random 64-bit numbers (spec §3.2).
//!
//! Every server SDK checks `^\d+\.\d+$` before signing or excluding, and the
//! id is a bearer credential for private channel auth, so both halves come
//! from the operating system's CSPRNG.

use std::{fmt, str::FromStr};

/// A connection's public identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SocketId {
    /// Digits before the dot.
    pub hi: u64,
    /// Digits after the dot.
    pub lo: u64,
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.hi, self.lo)
    }
}

/// A string that is not `<digits>.<digits>` within 64-bit range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid socket id: expected <digits>.<digits>")]
pub struct InvalidSocketId;

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('.').ok_or(InvalidSocketId)?;
        let digits = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidSocketId);
            }
            p.parse::<u64>().map_err(|_| InvalidSocketId)
        };
        Ok(SocketId { hi: digits(hi)?, lo: digits(lo)? })
    }
}

/// Hands out socket ids from a buffer of OS randomness, refilled 4 KiB at a
/// time so that a connect storm costs one `getrandom` per 256 connections.
pub struct SocketIdSource {
    pool: Box<[u8; 4096]>,
    used: usize,
}

impl Default for SocketIdSource {
    fn default() -> Self {
        Self { pool: Box::new([0; 4096]), used: 4096 }
    }
}

impl SocketIdSource {
    /// A fresh, unguessable socket id.
    ///
    /// # Panics
    /// If the operating system cannot supply randomness, which leaves no
    /// safe way to issue credentials.
    pub fn next_id(&mut self) -> SocketId {
        if self.used + 16 > self.pool.len() {
            #[allow(clippy::expect_used)]
            getrandom::fill(&mut self.pool[..]).expect("the OS random source failed");
            self.used = 0;
        }
        let take = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.pool[at..at + 8]);
            u64::from_le_bytes(b)
        };
        // pusher-js and some SDKs pass ids through JavaScript numbers in logs;
        // keeping each half below 10^15 keeps them exact there too.
        let id = SocketId {
            hi: take(self.used) % 1_000_000_000_000_000,
            lo: take(self.used + 8) % 1_000_000_000_000_000,
        };
        self.used += 16;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_digits_dot_digits_and_round_trip() {
        let mut src = SocketIdSource::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = src.next_id();
            let s = id.to_string();
            let (a, b) = s.split_once('.').expect("a dot");
            assert!(a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()));
            assert_eq!(s.parse::<SocketId>(), Ok(id));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in ["", ".", "1.", ".1", "1.2.3", "a.1", "1.-1", "99999999999999999999.1", " 1.1"] {
            assert_eq!(bad.parse::<SocketId>(), Err(InvalidSocketId), "{bad:?}");
        }
    }
}
