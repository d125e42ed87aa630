//! Why a session ended, and what that means for the device: whether its
//! Last Will is published, and what an MQTT 5 client is told.

use crate::edge::codec::Goodbye;

/// Why a session ended. Everything but a DISCONNECT from the device, a
/// newer connection of the same device, and server shutdown publishes the
/// device's Last Will.
#[derive(Debug)]
pub(super) enum End {
    /// The device sent DISCONNECT.
    Disconnect,
    /// The device sent an MQTT 5 DISCONNECT asking for its will anyway.
    DisconnectWithWill,
    /// The socket closed or failed without DISCONNECT.
    SocketClosed,
    /// Nothing arrived for 1.5 x the keep-alive the device asked for.
    KeepAlive,
    /// A new connection used the same client id; MQTT says the old one goes.
    TakenOver,
    /// An operator disabled the device.
    Disabled,
    /// The server is stopping.
    Shutdown,
    /// The device used a topic that is not its own.
    Denied,
    /// The device sent SUBSCRIBE or UNSUBSCRIBE faster than allowed.
    SubscribeFlood,
    /// The device sent a SUBSCRIBE with more filters than allowed.
    TooManyFilters,
    /// The device began a packet and did not finish it in time.
    PacketTimeout,
    /// A packet exceeded the size limit.
    TooLarge,
    /// A malformed packet or a protocol violation.
    Protocol(String),
    /// The device stopped reading what we sent it.
    WriteStalled,
}

impl End {
    /// In words, for the log and an MQTT 5 DISCONNECT.
    pub(super) fn reason(&self) -> String {
        match self {
            Self::Disconnect | Self::DisconnectWithWill => "disconnected".into(),
            Self::SocketClosed => "connection lost".into(),
            Self::KeepAlive => "keep-alive expired".into(),
            Self::TakenOver => "replaced by a new connection".into(),
            Self::Disabled => "device disabled".into(),
            Self::Shutdown => "server stopped".into(),
            Self::Denied => "refused: topic not allowed".into(),
            Self::SubscribeFlood => "refused: subscribe rate exceeded".into(),
            Self::TooManyFilters => "refused: too many filters in one SUBSCRIBE".into(),
            Self::PacketTimeout => "a packet was not finished in time".into(),
            Self::TooLarge => "refused: packet too large".into(),
            Self::Protocol(why) => format!("protocol error: {why}"),
            Self::WriteStalled => "stopped reading".into(),
        }
    }

    /// Whether the device's Last Will is published.
    pub(super) fn publishes_will(&self) -> bool {
        !matches!(
            self,
            Self::Disconnect | Self::TakenOver | Self::Shutdown | Self::Disabled
        )
    }

    /// What an MQTT 5 client is told when the server is the one closing.
    pub(super) fn goodbye(&self) -> Option<Goodbye> {
        match self {
            Self::KeepAlive => Some(Goodbye::KeepAliveTimeout),
            Self::TakenOver => Some(Goodbye::SessionTakenOver),
            Self::Shutdown => Some(Goodbye::ShuttingDown),
            Self::Denied | Self::Disabled => Some(Goodbye::NotAuthorized),
            Self::SubscribeFlood => Some(Goodbye::RateTooHigh),
            Self::TooManyFilters | Self::PacketTimeout => Some(Goodbye::ProtocolError),
            Self::TooLarge => Some(Goodbye::PacketTooLarge),
            Self::Protocol(_) => Some(Goodbye::ProtocolError),
            Self::Disconnect
            | Self::DisconnectWithWill
            | Self::SocketClosed
            | Self::WriteStalled => None,
        }
    }
}
