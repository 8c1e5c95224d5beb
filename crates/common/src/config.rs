//! Configuration from environment variables. Every variable has a default that works on a
//! developer machine with PostgreSQL and RabbitMQ on localhost; README lists them all.

use std::{str::FromStr, time::Duration};

/// Reads `name`, or `default` when unset or empty. A value that does not parse is an error
/// naming the variable, so a typo stops start-up instead of being silently ignored.
pub fn env_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
        _ => Ok(default),
    }
}

pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

pub fn env_millis(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    env_or(name, default_ms).map(Duration::from_millis)
}

pub fn env_secs(name: &str, default_s: u64) -> anyhow::Result<Duration> {
    env_or(name, default_s).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsable_value_is_an_error_naming_the_variable() {
        // SAFETY: a variable no other test reads.
        unsafe { std::env::set_var("LMT_TEST_BATCH_SIZE", "lots") };
        let err = env_or::<i64>("LMT_TEST_BATCH_SIZE", 200)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LMT_TEST_BATCH_SIZE") && err.contains("lots"),
            "{err}"
        );
        assert_eq!(env_or::<i64>("LMT_TEST_UNSET_VARIABLE", 200).unwrap(), 200);
    }
}
