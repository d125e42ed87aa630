//! The names devices and metrics may have: the one alphabet that is safe in
//! MQTT topics, URLs, file names, Prometheus labels and HTML alike.
//!
//! A leaf: it imports nothing of the crate, and every layer may use it.
//! The rule itself is `app::model::valid_name`, shared with the dashboard.

// The rule lives with the shared types, so the dashboard checks a device
// id in its URL exactly as the server does.
pub use app::model::{valid_name, MAX_NAME_LEN};

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
