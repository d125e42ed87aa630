//! Tests of `codec`: table-driven where the inputs vary.

use super::*;

#[test]
fn a_connect_names_its_version() {
    let mut buf = BytesMut::new();
    v4::Packet::Connect(v4::Connect::new("A"))
        .write(&mut buf, usize::MAX)
        .expect("encodes");
    assert_eq!(Version::of_connect(&buf), Ok(Version::V4));
    assert_eq!(Version::of_connect(&[0x10]), Err(None));
}

#[test]
fn both_versions_read_what_clients_write() {
    for version in [Version::V4, Version::V5] {
        let mut buf = BytesMut::new();
        match version {
            Version::V4 => {
                let mut c = v4::Connect::new("dev");
                c.set_login("dev", "s3cret");
                v4::Packet::Connect(c)
                    .write(&mut buf, usize::MAX)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Version::V5 => v5::Packet::Connect(
                v5::Connect {
                    keep_alive: 30,
                    client_id: "dev".into(),
                    clean_start: true,
                    properties: None,
                },
                None,
                Some(v5::Login::new("dev", "s3cret")),
            )
            .write(&mut buf, None)
            .map(drop)
            .map_err(|e| e.to_string()),
        }
        .expect("encodes");
        assert_eq!(Version::of_connect(&buf), Ok(version));
        let Ok(Inbound::Connect(info)) = version.read(&mut buf, 1024) else {
            panic!("{version:?}: not a CONNECT");
        };
        assert_eq!(
            (
                info.client_id.as_str(),
                info.user.as_str(),
                info.password.as_deref()
            ),
            ("dev", "dev", Some("s3cret")),
            "{version:?}"
        );
        assert_eq!(version.read(&mut buf, 1024), Err(ReadError::Incomplete));
    }
}

#[test]
fn a_bad_length_inside_a_whole_frame_is_malformed_not_incomplete() {
    // A PUBLISH frame of 3 bytes whose topic claims 200 bytes.
    for version in [Version::V4, Version::V5] {
        let mut buf = BytesMut::from(&[0x30, 0x03, 0x00, 0xC8, b'a'][..]);
        assert!(
            matches!(version.read(&mut buf, 1024), Err(ReadError::Malformed(_))),
            "{version:?}"
        );
    }
}

#[test]
fn only_mqtt5_hears_why_it_was_disconnected() {
    let goodbye = || Outbound::Disconnect(Goodbye::RateTooHigh, "too fast".into());
    let mut out = BytesMut::new();
    Version::V4.write(&mut out, goodbye()).expect("encodes");
    assert!(out.is_empty());
    Version::V5.write(&mut out, goodbye()).expect("encodes");
    match v5::Packet::read(&mut out, None) {
        Ok(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::MessageRateTooHigh);
            assert_eq!(
                d.properties.and_then(|p| p.reason_string).as_deref(),
                Some("too fast")
            );
        }
        other => panic!("not a DISCONNECT: {other:?}"),
    }
    assert!(out.is_empty(), "exactly one packet, nothing left over");
}
