//! Parsing of the CLI's resource quantities.

/// Parses a memory size: plain bytes (`1048576`) or a number with a binary
/// unit (`512m`, `1g`, `1.5g`, `256Mi`, `2GiB`), as `docker run -m` does:
/// `k`, `m` and `g` are powers of 1024.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let cfg = parse_size::Config::new().with_binary();
    let bytes = cfg.parse_size(s.trim()).map_err(|e| {
        format!("{s:?} is not a size ({e}); use bytes or a unit, e.g. 512m, 1g, 1.5g")
    })?;
    i64::try_from(bytes).map_err(|_| format!("{s:?} is too large"))
}

/// Parses a CPU quantity into thousandths of a CPU: `0.5`, `2`, or
/// millicpus as in Kubernetes (`500m`).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a CPU quantity; use e.g. 0.5, 2 or 500m");
    let t = s.trim();
    let milli = if let Some(m) = t.strip_suffix('m') {
        m.parse::<i64>().map_err(|_| bad())?
    } else {
        let cpus: f64 = t.parse().map_err(|_| bad())?;
        if !cpus.is_finite() {
            return Err(bad());
        }
        let milli = cpus * 1000.0;
        if (milli - milli.round()).abs() > 1e-6 {
            return Err(format!("{s:?} is finer than 0.001 CPU"));
        }
        milli.round() as i64
    };
    if milli <= 0 {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(milli)
}

/// Formats bytes for tables: `512Mi`, `1.5Gi`.
pub fn format_bytes(b: i64) -> String {
    if b <= 0 {
        return "-".into();
    }
    const UNITS: [&str; 5] = ["B", "Ki", "Mi", "Gi", "Ti"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{}{}", v.round(), UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Formats thousandths of a CPU: `0.5`, `2`.
pub fn format_cpus(milli: i64) -> String {
    if milli <= 0 {
        return "-".into();
    }
    let s = format!("{:.3}", milli as f64 / 1000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_memory("256Mi").unwrap(), 256 << 20);
        for bad in ["", "12zz", "m", "-1g", "1.2.3g"] {
            let e = parse_memory(bad).unwrap_err();
            assert!(e.contains("512m"), "{bad}: {e}");
        }
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("500m").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert_eq!(parse_cpus("1.25").unwrap(), 1250);
        for bad in ["", "x", "0", "-1", "0.0001", "1.5m", "inf", "NaN"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(3 << 29), "1.5Gi");
        assert_eq!(format_bytes(0), "-");
        assert_eq!(format_cpus(500), "0.5");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(0), "-");
    }
}
