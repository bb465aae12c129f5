//! Medians, quartiles and percentiles of measured samples: pure, so the figures `kvmnet
//! bench` prints are checked here and not only on a host.
//!
//! Quantiles interpolate linearly between the two nearest ranks (the "type 7" estimator of R
//! and NumPy's default), so the median of an even count is the mean of the middle two, as in
//! BENCHMARKS.md.

/// A series reduced to what bench reports: its median and the middle half around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    /// First and third quartiles; `q3 - q1` is the interquartile range.
    pub q1: f64,
    pub q3: f64,
}

impl Summary {
    pub fn iqr(&self) -> f64 {
        self.q3 - self.q1
    }
}

/// The `q` quantile (0..=1) of samples already sorted ascending; `None` when there are none.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The samples sorted ascending (NaN, which no measurement gives, sorts last).
pub fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Median and quartiles of `samples`; `None` for an empty series.
pub fn summary(samples: &[f64]) -> Option<Summary> {
    let s = sorted(samples);
    Some(Summary {
        median: quantile_sorted(&s, 0.5)?,
        q1: quantile_sorted(&s, 0.25)?,
        q3: quantile_sorted(&s, 0.75)?,
    })
}

/// Whether a series has settled: its interquartile range is at most `relative` of its
/// median, or at most `absolute` (for figures near zero, such as a loss of 0.01 %, whose
/// relative spread says nothing).
pub fn settled(samples: &[f64], relative: f64, absolute: f64) -> bool {
    match summary(samples) {
        None => false,
        Some(s) => s.iqr() <= absolute || s.iqr() <= relative * s.median.abs(),
    }
}

/// Percentiles (0..=100) of round-trip times, in the order asked.
pub fn percentiles(samples: &[f64], ps: &[f64]) -> Vec<f64> {
    let s = sorted(samples);
    ps.iter()
        .map(|p| quantile_sorted(&s, p / 100.0).unwrap_or(f64::NAN))
        .collect()
}

/// The empirical distribution of `samples` in at most `points` steps: (value, fraction of
/// samples at or below it), for drawing a CDF without a point per sample.
pub fn cdf(samples: &[f64], points: usize) -> Vec<(f64, f64)> {
    let s = sorted(samples);
    let n = s.len();
    if n == 0 || points == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(points).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (s[i], (i + 1) as f64 / n as f64))
        .collect();
    if out.last().is_some_and(|&(_, f)| f < 1.0) {
        out.push((s[n - 1], 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(summary(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(summary(&[7.0]).unwrap().median, 7.0);
        assert!(summary(&[]).is_none());
    }

    #[test]
    fn quartiles_interpolate_between_ranks() {
        let s = summary(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((s.q1, s.median, s.q3), (2.0, 3.0, 4.0));
        assert_eq!(s.iqr(), 2.0);
        let s = summary(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((s.q1, s.q3), (1.75, 3.25));
        assert_eq!(summary(&[5.0]).unwrap().iqr(), 0.0);
    }

    #[test]
    fn settled_relative_or_absolute() {
        // IQR 0.2 of median 10: 2 %.
        assert!(settled(&[9.9, 10.0, 10.1], 0.05, 0.0));
        assert!(!settled(&[5.0, 10.0, 15.0], 0.05, 0.0));
        // Loss near zero: the absolute bound decides.
        assert!(settled(&[0.0, 0.01, 0.3], 0.05, 1.0));
        assert!(!settled(&[], 1.0, 1.0));
    }

    #[test]
    fn percentiles_of_a_thousand() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = percentiles(&v, &[50.0, 99.0, 99.9]);
        assert!((p[0] - 500.5).abs() < 1e-9);
        assert!((p[1] - 990.01).abs() < 1e-9);
        assert!((p[2] - 999.001).abs() < 1e-9);
        assert!(p[0] <= p[1] && p[1] <= p[2]);
    }

    #[test]
    fn cdf_ends_at_one_and_rises() {
        let v: Vec<f64> = (0..1001).map(|i| f64::from(1000 - i)).collect();
        let c = cdf(&v, 100);
        assert!(c.len() <= 102);
        assert_eq!(c.last().copied(), Some((1000.0, 1.0)));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert!(cdf(&[], 10).is_empty());
    }
}
