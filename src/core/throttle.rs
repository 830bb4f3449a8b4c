//! One rule for warnings that one message can cause and many messages can
//! repeat (a refused Redis payload, a dropped client command, a full
//! mailbox): the count goes on for every occurrence, and the log gets a
//! warning at the 1st, 2nd, 4th, 8th… occurrence, each carrying the running
//! total, and a debug line for the others. A flood of 60,000 bad messages
//! is then 16 warnings instead of 60,000, and the operator still sees both
//! that it started and how big it grew.

/// Whether occurrence `n` (counting from 1) of a repeated warning is
/// logged at warn level: 1, 2, 4, 8, …
pub const fn due(n: u64) -> bool {
    n.is_power_of_two()
}

/// Logs a repeated warning by the [`due`] rule: at warn level when `total`
/// (the occurrences so far, this one included) is due, else at debug. The
/// rest of the arguments are `tracing::warn!`'s, and `total` is added to the
/// event's fields.
#[macro_export]
macro_rules! warn_throttled {
    ($total:expr, $($arg:tt)+) => {{
        let total: u64 = $total;
        if $crate::core::throttle::due(total) {
            ::tracing::warn!(total, $($arg)+)
        } else {
            ::tracing::debug!(total, $($arg)+)
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_occurrences_log_ten_warnings() {
        let logged: Vec<u64> = (1..=1000).filter(|&n| due(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert!(!due(0));
    }
}
