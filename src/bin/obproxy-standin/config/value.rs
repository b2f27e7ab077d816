//! Parsing one item's value the way obproxy's item classes do (`src/share/config/ob_config.cpp` at v4.3.1), and checking it against the item's range.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::items::{ItemDef, Kind, KnobKind};

/// The text a valid value is stored and shown as: as given, except booleans, which
/// `ObConfigBoolItem::set` rewrites to `True`/`False` (ob_config.cpp:1047-1057).
pub fn normalize(def: &ItemDef, value: &str) -> Option<String> {
    match def.kind {
        Kind::Int => int(value)
            .filter(|v| in_range(def, *v))
            .map(|_| value.to_owned()),
        Kind::Time => time_us(value)
            .filter(|v| in_range(def, *v))
            .map(|_| value.to_owned()),
        Kind::Bool => boolean(value).map(|b| if b { "True" } else { "False" }.to_owned()),
        // DEF_STR_LIST only fails past 64 entries (ob_config.cpp:483-531).
        Kind::Str => Some(value.to_owned()),
        Kind::Knob(k) => knob_valid(k, value).then(|| value.to_owned()),
    }
}

/// C `strtol(s, &end, 0)`: leading white space, a sign, then hex (`0x`), octal (a leading
/// `0`) or decimal digits, saturating on overflow. Returns the value and the rest; with no
/// digits the value is 0 and the rest is all of `s`.
pub fn strtol(s: &str) -> (i64, &str) {
    let trimmed = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, body) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (radix, digits) = if (body.starts_with("0x") || body.starts_with("0X"))
        && body[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &body[2..])
    } else if body.starts_with('0') {
        (8, body)
    } else {
        (10, body)
    };
    let len = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if len == 0 {
        return (0, s);
    }
    let magnitude = i128::from_str_radix(&digits[..len], radix).unwrap_or(i128::MAX);
    let signed = if negative { -magnitude } else { magnitude };
    let value = signed.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    (value, &digits[len..])
}

/// `ObConfigIntItem::parse` (ob_config.cpp:935-953).
pub fn int(value: &str) -> Option<i64> {
    if value.is_empty() {
        return None;
    }
    match strtol(value) {
        (v, "") => Some(v),
        _ => None,
    }
}

/// `ObConfigTimeItem::parse` (ob_config.cpp:849-881), in microseconds: negative numbers
/// count as 0 and a bare number is seconds.
pub fn time_us(value: &str) -> Option<i64> {
    if value.is_empty() {
        return None;
    }
    let (v, unit) = strtol(value);
    let v = v.max(0);
    let scale: i64 = match unit.to_ascii_lowercase().as_str() {
        "us" => 1,
        "ms" => 1_000,
        "" | "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    Some(v.saturating_mul(scale))
}

pub fn time(value: &str) -> Option<Duration> {
    time_us(value).map(|us| Duration::from_micros(us as u64))
}

/// `ObConfigBoolItem::parse` (ob_config.cpp:1059-1100).
pub fn boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "t" | "1" => Some(true),
        "false" | "off" | "no" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// The range as `ObConfigIntegralItem::parse_range` reads it (ob_config.cpp:534-598): `(`
/// or `[` before the lower bound, `)` or `]` after the upper, either bound may be empty,
/// and the bounds are parsed like the item's values.
fn in_range(def: &ItemDef, v: i64) -> bool {
    let range = def.range;
    let (Some(open), Some(comma), Some(close)) = (
        range.find(['(', '[']),
        range.find(','),
        range.rfind([')', ']']),
    ) else {
        return true;
    };
    let parse = |text: &str| match def.kind {
        Kind::Time => time_us(text),
        _ => int(text.trim_start()),
    };
    let lower = &range[open + 1..comma];
    let upper = &range[comma + 1..close];
    let lower_ok = match parse(lower) {
        Some(bound) if range.as_bytes()[open] == b'(' => v > bound,
        Some(bound) => v >= bound,
        None => true,
    };
    let upper_ok = match parse(upper) {
        Some(bound) if range.as_bytes()[close] == b')' => v < bound,
        Some(bound) => v <= bound,
        None => true,
    };
    lower_ok && upper_ok
}

/// A knob value: what the stand-in has always accepted for it.
fn knob_valid(kind: KnobKind, value: &str) -> bool {
    match kind {
        KnobKind::Text => true,
        KnobKind::Duration => humantime::parse_duration(value).is_ok(),
        KnobKind::Flag => flag(value).is_some(),
        KnobKind::Address => value.is_empty() || address(value).is_some(),
    }
}

pub fn flag(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// HOST:PORT resolved once; `None` when it resolves to nothing.
pub fn address(value: &str) -> Option<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = value.to_socket_addrs().ok()?.collect();
    (!addrs.is_empty()).then_some(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::items::ITEMS;

    fn def(name: &str) -> &'static ItemDef {
        ITEMS.iter().rev().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn strtol_reads_like_c() {
        assert_eq!(strtol("42"), (42, ""));
        assert_eq!(strtol("  -7x"), (-7, "x"));
        assert_eq!(strtol("0x1F"), (31, ""));
        assert_eq!(strtol("010"), (8, ""));
        assert_eq!(strtol("08"), (0, "8"));
        assert_eq!(strtol("abc"), (0, "abc"));
        assert_eq!(strtol("5s"), (5, "s"));
    }

    #[test]
    fn int_items_take_plain_numbers_only_and_check_their_range() {
        let exit = def("hot_upgrade_exit_timeout");
        assert_eq!(normalize(exit, "30000000").as_deref(), Some("30000000"));
        assert_eq!(normalize(exit, "-1").as_deref(), Some("-1"));
        assert_eq!(normalize(exit, "0").as_deref(), Some("0"));
        assert_eq!(normalize(exit, "5s"), None, "DEF_INT has no units");
        assert_eq!(normalize(exit, "-2"), None);
        assert_eq!(normalize(exit, ""), None);
        let port = def("listen_port");
        assert_eq!(normalize(port, "1024"), None, "(1024,65536) is open");
        assert!(normalize(port, "1025").is_some());
        assert_eq!(normalize(def("ip_listen_mode"), "3").as_deref(), Some("3"));
        assert_eq!(normalize(def("ip_listen_mode"), "4"), None);
    }

    #[test]
    fn time_items_take_units_and_a_bare_number_is_seconds() {
        assert_eq!(time_us("100ms"), Some(100_000));
        assert_eq!(time_us("5"), Some(5_000_000));
        assert_eq!(time_us("2M"), Some(120_000_000));
        assert_eq!(time_us("1.5s"), None);
        let delay = def("delay_exit_time");
        assert!(normalize(delay, "200ms").is_some());
        assert_eq!(normalize(delay, "3s"), None, "above [100ms,500ms]");
        assert_eq!(normalize(delay, "50ms"), None);
        assert!(normalize(def("proxy_hot_upgrade_check_interval"), "1s").is_some());
        assert_eq!(
            normalize(def("proxy_hot_upgrade_check_interval"), "500ms"),
            None
        );
    }

    #[test]
    fn booleans_are_shown_as_obproxy_rewrites_them() {
        let rpc = def("enable_obproxy_rpc_service");
        assert_eq!(normalize(rpc, "false").as_deref(), Some("False"));
        assert_eq!(normalize(rpc, "ON").as_deref(), Some("True"));
        assert_eq!(normalize(rpc, "maybe"), None);
    }
}
