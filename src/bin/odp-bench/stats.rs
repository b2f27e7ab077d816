//! Figures over repeated runs: every cell a benchmark prints is min / median / max over its
//! runs, never one run's number; and the tables they go in.
use std::time::Duration;

/// min / median / max of one figure over the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return Self {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        Self {
            min: v[0],
            median: median_sorted(&v),
            max: v[v.len() - 1],
        }
    }

    /// Milliseconds from durations.
    pub fn ms(values: impl IntoIterator<Item = Duration>) -> Self {
        Self::of(values.into_iter().map(|d| d.as_secs_f64() * 1e3))
    }

    /// "a / b / c unit", each with `decimals` decimals.
    pub fn show(&self, decimals: usize, unit: &str) -> String {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if self.min == self.max {
            return format!("{:.decimals$}{unit}", self.min);
        }
        format!(
            "{:.decimals$} / {:.decimals$} / {:.decimals$}{unit}",
            self.min, self.median, self.max
        )
    }
}

fn median_sorted(v: &[f64]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The median of durations (zero for none).
pub fn median(values: impl IntoIterator<Item = Duration>) -> Duration {
    let s = Spread::of(values.into_iter().map(|d| d.as_secs_f64()));
    if s.median.is_nan() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(s.median)
    }
}

/// The value at quantile `q` (0..=1) of durations, nearest rank (zero for none).
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A Markdown table: the first column left-aligned (names), the others right (figures).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                format!(":{}", "-".repeat(w + 1))
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_is_min_median_max_and_an_even_median_is_the_mean_of_the_middle() {
        let s = Spread::of([5.0, 1.0, 3.0, 4.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.5, 5.0));
        assert_eq!(s.show(1, "ms"), "1.0 / 3.5 / 5.0 ms");
        assert_eq!(Spread::of([2.0, 2.0]).show(0, ""), "2");
        assert!(Spread::of([]).median.is_nan());
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        assert_eq!(median(ms[..3].iter().copied()), Duration::from_millis(2));
    }
}
