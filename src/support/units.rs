//! # Sizes and ratios, for recipes, flags and people

use std::fmt;

use serde::{Deserialize, Serialize};

/// A size in bytes, written with a unit in recipes and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;

    /// `"450MiB"`, `"1.5GiB"`, `"256KiB"`, `"2GB"` (decimal), `"1000"` (bytes).
    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (num, unit) = (t[..split].trim(), t[split..].trim());
        let n: f64 = num.parse().map_err(|_| {
            format!("{s:?} is not a size: expected a number and a unit, e.g. \"450MiB\"")
        })?;
        if n < 0.0 || !n.is_finite() {
            return Err(format!("{s:?}: a size cannot be negative"));
        }
        let mult: f64 = match unit {
            "" | "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0f64.powi(4),
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?}; use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
                ));
            }
        };
        let bytes = n * mult;
        if bytes >= u64::MAX as f64 {
            return Err(format!("{s:?} is too large"));
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human(self.0))
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `350.2 MiB`.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A fraction for people: `99.01%`.
pub fn percent(f: f64) -> String {
    format!("{:.2}%", f * 100.0)
}

/// A ratio in 0..=1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!(
            "{r} is outside 0–1 (a fraction of each image's bytes)"
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        for (s, want) in [
            ("450MiB", 450 << 20),
            ("1.5GiB", 3 << 29),
            ("256KiB", 256 << 10),
            ("2GB", 2_000_000_000),
            ("1000", 1000),
            (" 1 KiB ", 1024),
        ] {
            assert_eq!(s.parse::<Size>(), Ok(Size(want)), "{s}");
        }
        for bad in ["", "x", "-1MiB", "1 parsecs", "1e30TiB", "NaN"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(350 << 20), "350.0 MiB");
        assert_eq!(percent(0.990123), "99.01%");
    }
}
