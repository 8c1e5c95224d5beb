//! Small statistics, the process's own CPU time and its peak RSS: enough to turn samples into the figures
//! the report prints, without a dependency.

use std::time::Duration;

/// The `p`th percentile (0–100) of `samples`, nearest rank; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, p)
}

/// [`percentile`] of samples already sorted.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The middle sample, or the mean of the two middle ones; NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`. The
/// services run as child processes, so this is the load generator's (and the bench's
/// bookkeeping's) CPU alone: the evidence that the generator is not what limits a figure.
pub fn own_cpu() -> Duration {
    crate::cpu::read("self").map_or(Duration::ZERO, |c| c.own)
}

/// A process's peak resident set (`VmHWM`) in MiB, from `/proc/<pid>/status`.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let hundred: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 51.0);
        assert_eq!(percentile(&hundred, 99.0), 100.0);
        assert_eq!(percentile(&hundred, 100.0), 101.0);
    }

    #[test]
    fn this_process_has_a_peak_rss_and_a_cpu_time() {
        assert!(peak_rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
        // Busy until the kernel has counted a tick: no wall-clock bound, nothing timed.
        while own_cpu() == Duration::ZERO {
            std::hint::black_box((0..10_000).sum::<u64>());
        }
    }
}
