//! Tests of `model`: the wire types round-trip and check their input.

use super::*;

#[test]
fn typed_params_must_be_json() {
    assert_eq!(parse_params("  "), Ok(serde_json::json!({})));
    assert_eq!(parse_params("{\"ms\":5}"), Ok(serde_json::json!({"ms": 5})));
    assert!(parse_params("{ms:5}")
        .expect_err("refused")
        .contains("not valid JSON"));
}

#[test]
fn a_command_request_needs_only_a_name() {
    let r: CommandRequest = serde_json::from_str(r#"{"name":"ping"}"#).expect("valid");
    assert!(r.two_way && !r.persistent);
    assert_eq!(r.params, serde_json::json!({}));
}

#[test]
fn server_messages_use_a_type_tag() {
    let msg = ServerMsg::Readings {
        readings: vec![Reading {
            device: "D1".into(),
            metric: "temp".into(),
            ts: 5,
            value: 22.0,
        }],
    };
    let text = serde_json::to_string(&msg).expect("serialisable");
    assert_eq!(
        text,
        r#"{"type":"readings","readings":[{"d":"D1","m":"temp","t":5,"v":22.0}]}"#
    );
    let back: ServerMsg = serde_json::from_str(&text).expect("round trip");
    assert_eq!(back, msg);
}

#[test]
fn client_messages_parse() {
    let msg: ClientMsg =
        serde_json::from_str(r#"{"type":"subscribe","devices":["a"]}"#).expect("valid");
    assert_eq!(
        msg,
        ClientMsg::Subscribe {
            devices: vec!["a".into()]
        }
    );
}
