//! What one client may hold or ask for in the media core: plain numbers, handed to the
//! [`Engine`](super::Engine) by the shard (from the `limits.*` settings); the media core
//! never reads the configuration itself.
//!
//! Each cap is checked where its resource is created, and a request over one is refused
//! with [`SfuError::Limit`], whose text names the setting. Nothing is created for a
//! refused request, and the client's session and room carry on.

use super::SfuError;

/// The caps of one shard's media core. The defaults are those of the configuration table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Transports one session (peer) may hold (`limits.transports_per_session`).
    pub transports_per_session: usize,
    /// Producers one session may hold (`limits.producers_per_session`).
    pub producers_per_session: usize,
    /// Producers on one transport (`limits.producers_per_transport`).
    pub producers_per_transport: usize,
    /// Consumers one session may hold (`limits.consumers_per_session`).
    pub consumers_per_session: usize,
    /// Sessions of one user id in one room (`limits.sessions_per_user`).
    pub sessions_per_user: usize,
    /// Sessions in one room (`limits.members_per_room`).
    pub members_per_room: usize,
    /// Rooms of one shard (`limits.rooms_per_shard`).
    pub rooms_per_shard: usize,
    /// Entries of `rtpParameters.encodings` (`limits.encodings_per_request`).
    pub encodings_per_request: usize,
    /// Entries of a codec list (`rtpParameters.codecs`, `rtpCapabilities.codecs`), and of
    /// each codec's `rtcpFeedback` (`limits.codecs_per_request`).
    pub codecs_per_request: usize,
    /// Entries of `rtpParameters.headerExtensions` (`limits.header_extensions_per_request`).
    pub header_extensions_per_request: usize,
    /// Media sections (`m=` lines) of one SDP offer (`limits.media_sections_per_offer`).
    pub media_sections_per_offer: usize,
    /// Bytes of any one string a client gives: a CNAME, mid, rid, MIME type, format
    /// parameters, header extension URI, DTLS fingerprint, ICE candidate, or one line of
    /// an SDP document (`limits.max_string_bytes`).
    pub max_string_bytes: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            transports_per_session: 64,
            producers_per_session: 32,
            producers_per_transport: 16,
            consumers_per_session: 256,
            sessions_per_user: 16,
            members_per_room: 1000,
            rooms_per_shard: 10_000,
            encodings_per_request: 8,
            codecs_per_request: 64,
            header_extensions_per_request: 32,
            media_sections_per_offer: 64,
            max_string_bytes: 512,
        }
    }
}

/// The error of a request over a cap: what was too many or too long, the cap, and the
/// setting that sets it.
pub fn over(what: impl Into<String>, limit: usize, setting: &'static str) -> SfuError {
    SfuError::Limit {
        what: what.into(),
        limit,
        setting,
    }
}

impl Caps {
    /// `Err` when `count` more than the cap (a count of entries a client sent).
    pub(super) fn count(
        &self,
        what: &str,
        count: usize,
        limit: usize,
        setting: &'static str,
    ) -> Result<(), SfuError> {
        if count > limit {
            return Err(over(format!("{what} has {count} entries"), limit, setting));
        }
        Ok(())
    }

    /// `Err` when a client's string is longer than `limits.max_string_bytes`.
    pub(super) fn string(&self, what: &str, value: &str) -> Result<(), SfuError> {
        if value.len() > self.max_string_bytes {
            return Err(over(
                format!("{what} is {} bytes long", value.len()),
                self.max_string_bytes,
                "limits.max_string_bytes",
            ));
        }
        Ok(())
    }

    /// `Err` when a session already holds `held` of something capped at `limit`.
    pub(super) fn room_for(
        &self,
        what: &str,
        held: usize,
        limit: usize,
        setting: &'static str,
    ) -> Result<(), SfuError> {
        if held >= limit {
            return Err(over(format!("{what} ({held} held)"), limit, setting));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_limit() {
        let caps = Caps::default();
        let e = caps
            .room_for(
                "too many transports in this session",
                64,
                64,
                "limits.transports_per_session",
            )
            .unwrap_err();
        assert_eq!(e.code(), "limit_exceeded");
        let text = e.to_string();
        assert!(
            text.contains("limits.transports_per_session") && text.contains("64"),
            "{text}"
        );
        assert!(caps
            .room_for("x", 63, 64, "limits.transports_per_session")
            .is_ok());
        let e = caps.string("rtcp.cname", &"c".repeat(513)).unwrap_err();
        assert!(e.to_string().contains("limits.max_string_bytes"), "{e}");
        assert!(e.to_string().contains("513 bytes"), "{e}");
        assert!(caps.string("rtcp.cname", &"c".repeat(512)).is_ok());
        assert!(caps
            .count("codecs", 65, 64, "limits.codecs_per_request")
            .is_err());
        assert!(caps
            .count("codecs", 64, 64, "limits.codecs_per_request")
            .is_ok());
    }
}
