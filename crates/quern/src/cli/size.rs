//! Sizes and numbers as QEMU reads them: `512`, `512M`, `1.5G`, `0x1000`.

/// Parses a size with an optional binary suffix (B, K, M, G, T, P, E, either case);
/// a bare number is in `default_unit` bytes (MiB for `-m`). Fractions need a unit
/// larger than a byte and must come to a whole number of bytes.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a size: give a number with an optional suffix, like 512M or 1.5G");
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() && !t.starts_with("0x") => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return Err(bad()),
            };
            (&t[..i], 1u64 << shift)
        }
        Some(_) => (t, default_unit),
        None => return Err(bad()),
    };
    if num.starts_with("0x") || num.starts_with("0X") {
        let v = parse_u64(num).ok_or_else(bad)?;
        return v.checked_mul(unit).ok_or_else(|| format!("'{s}' is too large"));
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| format!("'{s}' is too large"))?;
    let mut bytes = whole.checked_mul(unit).ok_or_else(|| format!("'{s}' is too large"))?;
    if !frac.is_empty() {
        // Exact decimal fraction of the unit: frac / 10^len * unit, in u128.
        let digits = frac.len().min(18) as u32;
        let f: u128 = frac[..digits as usize].parse().map_err(|_| bad())?;
        let scale = 10u128.pow(digits);
        let part = f * unit as u128;
        if !part.is_multiple_of(scale) {
            return Err(format!("'{s}' is not a whole number of bytes"));
        }
        bytes = bytes.checked_add((part / scale) as u64).ok_or_else(|| format!("'{s}' is too large"))?;
    }
    Ok(bytes)
}

/// An unsigned number in decimal or with 0x in hex.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn suffixes_and_defaults() {
        assert_eq!(parse_size("512", M), Ok(512 * M));
        assert_eq!(parse_size("512M", M), Ok(512 * M));
        assert_eq!(parse_size("2g", M), Ok(2048 * M));
        assert_eq!(parse_size("65536k", M), Ok(64 * M));
        assert_eq!(parse_size("4096B", M), Ok(4096));
        assert_eq!(parse_size("1T", M), Ok(1 << 40));
        assert_eq!(parse_size("0x200", M), Ok(512 * M));
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_size("1.5G", M), Ok(1536 * M));
        assert_eq!(parse_size("0.5", M), Ok(M / 2));
        assert!(parse_size("1.0000001K", M).is_err(), "not whole bytes");
    }

    #[test]
    fn garbage_and_overflow() {
        for s in ["", "-5", "lots", "5X", "1..5G", ".5G", "1e3", "M", "16E", "99999999999999999999"] {
            assert!(parse_size(s, M).is_err(), "{s:?} accepted");
        }
    }
}
