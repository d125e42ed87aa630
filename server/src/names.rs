//! The names devices and metrics may have: the one alphabet that is safe in
//! MQTT topics, URLs, file names, Prometheus labels and HTML alike.
//!
//! A leaf: it imports nothing of the crate, and every layer may use it.

/// The longest device id or metric name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may be a device id or a metric name: 1 to
/// [`MAX_NAME_LEN`] characters from `A-Z a-z 0-9 _ - . :`. Names made only
/// of dots are refused because browsers collapse `.` and `..` in URLs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.bytes().all(|b| b == b'.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_a_safe_alphabet() {
        for ok in [
            "Device001",
            "a",
            "x.y",
            "sensor:1",
            "a-b_c",
            &"n".repeat(64),
        ] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "<script>",
            "ü",
            &"n".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
