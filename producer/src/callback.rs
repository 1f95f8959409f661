//! The callback body: parsing and validation, de-duplication, and the split of the ids
//! into check messages.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use lastseen::{CheckMessage, ObjectId};
use serde::Deserialize;

/// `{"object_ids":[1,2,3]}`: ids are integers from 0 to 2^63-1, duplicates allowed.
#[derive(Debug, Clone, Deserialize)]
pub struct CallbackRequest {
    pub object_ids: Vec<ObjectId>,
}

/// Why a body is not a valid callback.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all, or cut short.
    #[error("malformed JSON: {0}")]
    Syntax(serde_json::Error),
    /// JSON, but not of the callback's shape or with an id out of range.
    #[error("invalid callback: {0}")]
    Shape(serde_json::Error),
}

impl CallbackRequest {
    /// Parses a body, telling malformed JSON apart from a JSON of the wrong shape.
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        serde_json::from_slice(body).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => BodyError::Shape(err),
            _ => BodyError::Syntax(err),
        })
    }

    /// The ids without duplicates, in their first order of appearance.
    pub fn distinct_ids(&self) -> Vec<ObjectId> {
        let mut seen = HashSet::with_capacity(self.object_ids.len());
        self.object_ids
            .iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .collect()
    }
}

/// Splits ids into check messages of at most `per_message` ids each.
pub fn check_messages(
    ids: &[ObjectId],
    per_message: usize,
    accepted_at: DateTime<Utc>,
) -> Vec<CheckMessage> {
    ids.chunks(per_message.max(1))
        .map(|chunk| CheckMessage {
            object_ids: chunk.to_vec(),
            accepted_at,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[i64]) -> Vec<ObjectId> {
        v.iter().map(|&i| ObjectId::new(i).unwrap()).collect()
    }

    #[test]
    fn duplicates_are_removed_keeping_first_order() {
        let req = CallbackRequest::parse(br#"{"object_ids":[3,1,3,2,1]}"#).unwrap();
        assert_eq!(req.distinct_ids(), ids(&[3, 1, 2]));
    }

    #[test]
    fn syntax_and_shape_errors_are_told_apart() {
        assert!(matches!(
            CallbackRequest::parse(b"{\"object_ids\":[1,"),
            Err(BodyError::Syntax(_))
        ));
        assert!(matches!(
            CallbackRequest::parse(b"not json"),
            Err(BodyError::Syntax(_))
        ));
        for shape in [
            &br#"{"object_ids":"1"}"#[..],
            br#"{"ids":[1]}"#,
            br#"{"object_ids":[-1]}"#,
            br#"{"object_ids":[1.5]}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                matches!(CallbackRequest::parse(shape), Err(BodyError::Shape(_))),
                "{}",
                String::from_utf8_lossy(shape)
            );
        }
    }

    #[test]
    fn ids_are_split_into_messages_of_the_configured_size() {
        let now = Utc::now();
        let messages = check_messages(&ids(&[1, 2, 3, 4, 5]), 2, now);
        let sizes: Vec<usize> = messages.iter().map(|m| m.object_ids.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(check_messages(&[], 1, now).is_empty());
    }
}
