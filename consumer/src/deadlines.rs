//! The deadlines a sighting gives its object: expiry after the TTL, and going stale after
//! the stale delay when one applies and is shorter than the TTL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lastseen::config::Misconfigured;
use lastseen::store::objects::Sighting;
use lastseen::{CheckMessage, ObjectId};

/// The TTL and stale delay of sightings whose message carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    ttl: Duration,
    stale_after: Option<Duration>,
}

impl Deadlines {
    /// `OBJECT_TTL_SECS` and `OBJECT_STALE_AFTER_SECS`; a stale delay not below the TTL is
    /// refused (an object would never go stale).
    pub fn new(ttl_secs: u32, stale_after_secs: Option<u32>) -> Result<Self, Misconfigured> {
        if let Some(stale) = stale_after_secs.filter(|stale| *stale >= ttl_secs) {
            return Err(Misconfigured {
                setting: "OBJECT_STALE_AFTER_SECS",
                reason: format!(
                    "{stale} is not below OBJECT_TTL_SECS ({ttl_secs}): objects would expire before going stale"
                ),
            });
        }
        Ok(Self {
            ttl: secs(ttl_secs),
            stale_after: stale_after_secs.map(secs),
        })
    }

    /// The deadlines of `message`'s sightings: its own TTL and stale delay, or these.
    pub fn of(&self, message: &CheckMessage) -> Self {
        Self {
            ttl: message.ttl_secs.map_or(self.ttl, secs),
            stale_after: message.stale_after_secs.map(secs).or(self.stale_after),
        }
    }

    /// A sighting of `id` at `seen_at`. A stale delay at or above the TTL gives no stale
    /// deadline: the object expires first (a callback's own `ttl_secs` may be shorter than
    /// the consumers' stale delay).
    pub fn sighting(&self, id: ObjectId, seen_at: DateTime<Utc>) -> Sighting {
        Sighting {
            id,
            seen_at,
            expires_at: seen_at + chrono_duration(self.ttl),
            stale_at: self
                .stale_after
                .filter(|stale| *stale < self.ttl)
                .map(|stale| seen_at + chrono_duration(stale)),
        }
    }
}

fn secs(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ttl_secs: Option<u32>, stale_after_secs: Option<u32>) -> CheckMessage {
        CheckMessage {
            object_ids: vec![],
            accepted_at: Utc::now(),
            request_id: None,
            ttl_secs,
            stale_after_secs,
        }
    }

    #[test]
    fn a_message_overrides_the_defaults_and_a_stale_delay_at_or_past_the_ttl_gives_none() {
        let id = ObjectId::new(1).unwrap();
        let at = Utc::now();
        let defaults = Deadlines::new(30, Some(10)).unwrap();
        let s = defaults.of(&message(None, None)).sighting(id, at);
        assert_eq!(s.expires_at - at, chrono::Duration::seconds(30));
        assert_eq!(
            s.stale_at.map(|t| t - at),
            Some(chrono::Duration::seconds(10))
        );
        let s = defaults.of(&message(Some(4), Some(2))).sighting(id, at);
        assert_eq!(s.expires_at - at, chrono::Duration::seconds(4));
        assert_eq!(
            s.stale_at.map(|t| t - at),
            Some(chrono::Duration::seconds(2))
        );
        // The callback's TTL is shorter than the consumers' stale delay: no stale state.
        let s = defaults.of(&message(Some(5), None)).sighting(id, at);
        assert_eq!(s.stale_at, None);
        let off = Deadlines::new(30, None).unwrap();
        assert_eq!(off.of(&message(None, None)).sighting(id, at).stale_at, None);
    }

    #[test]
    fn a_default_stale_delay_not_below_the_ttl_is_refused_naming_the_setting() {
        let refused = Deadlines::new(30, Some(30)).unwrap_err();
        assert_eq!(refused.setting, "OBJECT_STALE_AFTER_SECS");
        assert!(
            refused.reason.contains("OBJECT_TTL_SECS (30)"),
            "{}",
            refused.reason
        );
        assert!(Deadlines::new(30, Some(29)).is_ok());
    }
}
