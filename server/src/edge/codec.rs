//! The two MQTT versions the edge speaks, 3.1.1 and 5, behind one small set
//! of packet types, so that the session logic is written once.
//!
//! Parsing and encoding are rumqttc's (`mqttbytes::v4` and
//! `v5::mqttbytes::v5`); this module only translates. What MQTT 5 adds and
//! the edge uses is the reason codes: a refused subscription says "not
//! authorized", a rejected payload's PUBACK says "payload format invalid",
//! and the server says why it closes a connection with a DISCONNECT.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::{Error as Error4, QoS};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as Error5, QoS as QoS5};

/// Which protocol a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// A Last Will, as the session keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
}

/// What a CONNECT says, in either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectInfo {
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5).
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    /// Empty when the client sent no user name.
    pub user: String,
    /// `None` when the client sent no password.
    pub password: Option<String>,
    /// MQTT 5's session expiry interval, in seconds; `None` when absent
    /// (and always in 3.1.1, where the clean session flag says it all).
    pub session_expiry: Option<u32>,
    /// MQTT 5's Receive Maximum: how many QoS 1 and 2 messages the client
    /// takes unacknowledged at once; `None` when absent (65,535).
    pub receive_max: Option<u16>,
}

/// A packet from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Connect(ConnectInfo),
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        pkid: u16,
        /// Set on a QoS 1 or 2 publish the client sends again.
        dup: bool,
        /// MQTT 5 correlation data: on an answer, the command it answers.
        correlation: Option<Bytes>,
    },
    PubRel(u16),
    /// Each filter with the QoS the device asked for.
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// DISCONNECT; MQTT 5 lets the client ask for its will anyway.
    Disconnect {
        with_will: bool,
    },
    /// The device acknowledged a QoS 1 message the server sent.
    PubAck(u16),
    /// Any other acknowledgement of something the server sent.
    Ack,
    /// A packet a client must not send to a server.
    Unexpected(&'static str),
}

/// Why a packet could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More bytes are needed.
    Incomplete,
    /// The packet is larger than the limit.
    TooLarge,
    /// Not a valid packet.
    Malformed(String),
}

/// How a CONNECT is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted,
    BadClientId,
    ServerUnavailable,
    BadCredentials,
    NotAuthorized,
    /// The device already holds its most connections.
    QuotaExceeded,
}

/// Why the server closes a connection; MQTT 5 clients are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goodbye {
    NotAuthorized,
    RateTooHigh,
    PacketTooLarge,
    KeepAliveTimeout,
    SessionTakenOver,
    ShuttingDown,
    ProtocolError,
}

/// A packet to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// `assigned_id` is the client id the server chose for a client that
    /// sent an empty one; MQTT 5 clients are told it.
    ConnAck {
        code: ConnectCode,
        assigned_id: Option<String>,
        /// The keep-alive the server uses, when it is not the one the
        /// client asked for; MQTT 5 clients are told (Server Keep Alive).
        keep_alive: Option<u16>,
        /// Whether the server resumed a stored session.
        session_present: bool,
        /// The session expiry the server uses, when it is not the one the
        /// MQTT 5 client asked for.
        session_expiry: Option<u32>,
    },
    /// `stored` is false when none of the message could be used (MQTT 5
    /// then says "payload format invalid"; 3.1.1 has no way to say it).
    PubAck {
        pkid: u16,
        stored: bool,
    },
    PubRec {
        pkid: u16,
        stored: bool,
    },
    PubComp(u16),
    /// One entry per filter: the QoS granted, or refused.
    SubAck {
        pkid: u16,
        granted: Vec<Option<QoS>>,
    },
    /// One entry per filter: whether it was subscribed before.
    UnsubAck {
        pkid: u16,
        existed: Vec<bool>,
    },
    PingResp,
    /// `pkid` is 0 at QoS 0. `reply` is MQTT 5's request/response pair:
    /// the topic to answer on and the correlation data to answer with;
    /// 3.1.1 has no place for it.
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        pkid: u16,
        /// Set on a retained message sent because of a new subscription.
        retain: bool,
        /// Set on a QoS 1 message sent again after a reconnect.
        dup: bool,
        reply: Option<(String, Bytes)>,
    },
    /// Only MQTT 5 has a server-sent DISCONNECT, with a reason code and a
    /// human-readable reason; for 3.1.1 nothing is sent.
    Disconnect(Goodbye, String),
}

impl Version {
    /// The version a buffered CONNECT frame asks for, from its protocol
    /// level; `Err` carries a level the edge does not speak.
    pub fn of_connect(frame: &[u8]) -> Result<Self, Option<u8>> {
        // One type byte, then a remaining length of one to four bytes, each
        // but the last with its top bit set; then the protocol name "MQTT"
        // (two length bytes and four letters) and the level.
        let length_bytes = frame
            .iter()
            .skip(1)
            .take(4)
            .position(|b| b & 0x80 == 0)
            .ok_or(None)?
            + 1;
        match frame.get(1 + length_bytes + 6) {
            Some(4) => Ok(Self::V4),
            Some(5) => Ok(Self::V5),
            other => Err(other.copied()),
        }
    }

    /// Reads the next whole packet from `buf`.
    pub fn read(self, buf: &mut BytesMut, max: usize) -> Result<Inbound, ReadError> {
        // Whether a whole frame is buffered is decided from the fixed header
        // first: once the codec has taken a frame off the buffer, any error
        // means the frame itself is bad, even one the codec words as
        // "insufficient bytes" (a length inside the frame that overruns it).
        let framed = match self {
            Self::V4 => rumqttc::mqttbytes::check(buf.iter(), max)
                .map(|h| h.frame_length())
                .map_err(|e| match e {
                    Error4::InsufficientBytes(_) => ReadError::Incomplete,
                    Error4::PayloadSizeLimitExceeded(_) => ReadError::TooLarge,
                    e => ReadError::Malformed(e.to_string()),
                }),
            Self::V5 => v5::check(buf.iter(), Some(u32::try_from(max).unwrap_or(u32::MAX)))
                .map(|h| h.frame_length())
                .map_err(|e| match e {
                    Error5::InsufficientBytes(_) => ReadError::Incomplete,
                    Error5::PayloadSizeLimitExceeded { .. } => ReadError::TooLarge,
                    e => ReadError::Malformed(e.to_string()),
                }),
        }?;
        if buf.len() < framed {
            return Err(ReadError::Incomplete);
        }
        match self {
            Self::V4 => v4::Packet::read(buf, max)
                .map(from_v4)
                .map_err(|e| ReadError::Malformed(e.to_string())),
            Self::V5 => {
                let max = u32::try_from(max).unwrap_or(u32::MAX);
                v5::Packet::read(buf, Some(max))
                    .map_err(|e| ReadError::Malformed(e.to_string()))
                    .and_then(from_v5)
            }
        }
    }

    /// Appends `packet` to `out`.
    pub fn write(self, out: &mut BytesMut, packet: Outbound) -> Result<(), String> {
        match self {
            Self::V4 => match to_v4(packet) {
                Some(p) => p
                    .write(out, usize::MAX)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Self::V5 => to_v5(packet)
                .write(out, None)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

fn from_v4(packet: v4::Packet) -> Inbound {
    match packet {
        v4::Packet::Connect(c) => Inbound::Connect(ConnectInfo {
            client_id: c.client_id,
            clean: c.clean_session,
            keep_alive: c.keep_alive,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
            }),
            user: c
                .login
                .as_ref()
                .map(|l| l.username.clone())
                .unwrap_or_default(),
            password: c.login.map(|l| l.password).filter(|p| !p.is_empty()),
            session_expiry: None,
            receive_max: None,
        }),
        v4::Packet::Publish(p) => Inbound::Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            pkid: p.pkid,
            dup: p.dup,
            correlation: None,
        },
        v4::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| (f.path, f.qos)).collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect { with_will: false },
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(_) | v4::Packet::PubComp(_) => Inbound::Ack,
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(packet: v5::Packet) -> Result<Inbound, ReadError> {
    let text = |b: Bytes, what: &str| {
        String::from_utf8(b.to_vec())
            .map_err(|_| ReadError::Malformed(format!("{what} is not UTF-8")))
    };
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => Inbound::Connect(ConnectInfo {
            client_id: c.client_id,
            clean: c.clean_start,
            keep_alive: c.keep_alive,
            will: match will {
                Some(w) => Some(Will {
                    topic: text(w.topic, "the will topic")?,
                    payload: w.message,
                }),
                None => None,
            },
            user: login
                .as_ref()
                .map(|l| l.username.clone())
                .unwrap_or_default(),
            password: login.map(|l| l.password).filter(|p| !p.is_empty()),
            session_expiry: c
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval),
            receive_max: c.properties.as_ref().and_then(|p| p.receive_maximum),
        }),
        v5::Packet::Publish(p) => {
            // The edge advertises no topic aliases, so a publish must name
            // its topic.
            if p.topic.is_empty() {
                return Ok(Inbound::Unexpected("a topic alias"));
            }
            Inbound::Publish {
                topic: text(p.topic, "the topic")?,
                payload: p.payload,
                qos: from_qos5(p.qos),
                pkid: p.pkid,
                dup: p.dup,
                correlation: p.properties.and_then(|p| p.correlation_data),
            }
        }
        v5::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, from_qos5(f.qos)))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(_) | v5::Packet::PubComp(_) => Inbound::Ack,
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    })
}

fn from_qos5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn to_qos5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn to_v4(packet: Outbound) -> Option<v4::Packet> {
    use v4::ConnectReturnCode as Code;
    Some(match packet {
        Outbound::ConnAck {
            code,
            session_present,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            match code {
                ConnectCode::Accepted => Code::Success,
                ConnectCode::BadClientId => Code::BadClientId,
                ConnectCode::ServerUnavailable => Code::ServiceUnavailable,
                ConnectCode::BadCredentials => Code::BadUserNamePassword,
                ConnectCode::NotAuthorized => Code::NotAuthorized,
                // MQTT 3.1.1 has no code for a quota.
                ConnectCode::QuotaExceeded => Code::ServiceUnavailable,
            },
            session_present,
        )),
        Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Outbound::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
            pkid,
            granted
                .into_iter()
                .map(|granted| match granted {
                    Some(qos) => v4::SubscribeReasonCode::Success(qos),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Publish {
            topic,
            payload,
            qos,
            pkid,
            retain,
            dup,
            ..
        } => {
            let mut p = v4::Publish::from_bytes(topic, qos, payload);
            p.pkid = pkid;
            p.retain = retain;
            p.dup = dup;
            v4::Packet::Publish(p)
        }
        Outbound::Disconnect(..) => return None,
    })
}

fn to_v5(packet: Outbound) -> v5::Packet {
    use v5::ConnectReturnCode as Code;
    match packet {
        Outbound::ConnAck {
            code,
            assigned_id,
            keep_alive,
            session_present,
            session_expiry,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present,
            code: match code {
                ConnectCode::Accepted => Code::Success,
                ConnectCode::BadClientId => Code::ClientIdentifierNotValid,
                ConnectCode::ServerUnavailable => Code::ServerBusy,
                ConnectCode::BadCredentials => Code::BadUserNamePassword,
                ConnectCode::NotAuthorized => Code::NotAuthorized,
                ConnectCode::QuotaExceeded => Code::QuotaExceeded,
            },
            // Say what the edge does not do, so that clients do not try:
            // no shared subscriptions, no subscription identifiers, and (by
            // leaving the topic alias maximum out, which means 0) no
            // topic aliases.
            properties: (code == ConnectCode::Accepted).then(|| v5::ConnAckProperties {
                session_expiry_interval: session_expiry,
                receive_max: None,
                max_qos: None,
                retain_available: None,
                max_packet_size: None,
                assigned_client_identifier: assigned_id,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outbound::PubAck { pkid, stored } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: if stored {
                v5::PubAckReason::Success
            } else {
                v5::PubAckReason::PayloadFormatInvalid
            },
            properties: None,
        }),
        Outbound::PubRec { pkid, stored } => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: if stored {
                v5::PubRecReason::Success
            } else {
                v5::PubRecReason::PayloadFormatInvalid
            },
            properties: None,
        }),
        Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp {
            pkid,
            reason: v5::PubCompReason::Success,
            properties: None,
        }),
        Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: granted
                .into_iter()
                .map(|granted| match granted {
                    Some(qos) => v5::SubscribeReasonCode::Success(to_qos5(qos)),
                    None => v5::SubscribeReasonCode::NotAuthorized,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, existed } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: existed
                .into_iter()
                .map(|was| {
                    if was {
                        v5::UnsubAckReason::Success
                    } else {
                        v5::UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::Publish {
            topic,
            payload,
            qos,
            pkid,
            retain,
            dup,
            reply,
        } => v5::Packet::Publish(v5::Publish {
            dup,
            qos: to_qos5(qos),
            retain,
            topic: Bytes::from(topic),
            pkid,
            payload,
            properties: reply.map(|(topic, correlation)| v5::PublishProperties {
                response_topic: Some(topic),
                correlation_data: Some(correlation),
                ..v5::PublishProperties::default()
            }),
        }),
        // The reason string is not only for people: rumqttc 0.25 encodes a
        // DISCONNECT with a reason code but no properties with a remaining
        // length one byte short, which corrupts the stream for the client.
        Outbound::Disconnect(why, text) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: match why {
                Goodbye::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                Goodbye::RateTooHigh => v5::DisconnectReasonCode::MessageRateTooHigh,
                Goodbye::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                Goodbye::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                Goodbye::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                Goodbye::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
                Goodbye::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
            },
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(if text.is_empty() {
                    "closed".into()
                } else {
                    text
                }),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }),
    }
}

#[cfg(test)]
mod tests;
