//! API keys for `POST /callback`: `Authorization: Bearer <key>`. Off unless keys are set
//! (`CALLBACK_API_KEYS`, `CALLBACK_API_KEYS_FILE`), so the original challenge tester,
//! which sends no header, works as it did. Several keys may be valid at once, so one can
//! be rotated: add the new one, move the clients, remove the old one. Only SHA-256
//! hashes of the keys are kept, and a presented key is compared with every one in
//! constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use lastseen::config::Misconfigured;

use super::error::CallbackError;

/// Shortest key taken: a short key can be guessed.
pub const MIN_KEY_LENGTH: usize = 16;

/// The keys' hashes; empty when keys are off.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// The keys of `CALLBACK_API_KEYS` (comma-separated) and of the lines of
    /// `CALLBACK_API_KEYS_FILE` (blank lines and `#` comments skipped). Refused, naming
    /// the setting but never the key: a key shorter than [`MIN_KEY_LENGTH`] or with
    /// anything but visible ASCII, and a setting that is given but holds no key (which
    /// would otherwise leave the callbacks open).
    pub fn new(listed: Option<&str>, file: Option<&str>) -> Result<Self, Misconfigured> {
        let refuse = |setting: &'static str, reason: String| Misconfigured { setting, reason };
        let mut hashes = Vec::new();
        let mut take = |key: &str, setting: &'static str| {
            if key.chars().count() < MIN_KEY_LENGTH || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(refuse(
                    setting,
                    format!(
                        "a key is shorter than {MIN_KEY_LENGTH} characters or holds a character other than visible ASCII"
                    ),
                ));
            }
            hashes.push(hash(key));
            Ok(())
        };
        if let Some(listed) = listed {
            let keys: Vec<&str> = listed
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                return Err(refuse("CALLBACK_API_KEYS", "set, but holds no key".into()));
            }
            for key in keys {
                take(key, "CALLBACK_API_KEYS")?;
            }
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                refuse("CALLBACK_API_KEYS_FILE", format!("cannot read {path}: {e}"))
            })?;
            let mut found = 0;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    take(line, "CALLBACK_API_KEYS_FILE")?;
                    found += 1;
                }
            }
            if found == 0 {
                return Err(refuse(
                    "CALLBACK_API_KEYS_FILE",
                    format!("{path} holds no key"),
                ));
            }
        }
        Ok(Self(Arc::new(hashes)))
    }

    /// True when callbacks need a key.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `key` is one of the keys, in a time that depends on neither the key nor
    /// which one matched.
    fn admits(&self, key: &str) -> bool {
        let presented = hash(key);
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&presented)
            })
            .into()
    }
}

/// Lets a callback through only with a valid key, when keys are on: 401 with the JSON
/// error body and `WWW-Authenticate: Bearer` otherwise, before its body is read.
pub async fn authenticate(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.required() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let refused = match presented {
        None => CallbackError::MissingApiKey,
        Some(key) if keys.admits(key) => return next.run(request).await,
        Some(_) => CallbackError::InvalidApiKey,
    };
    let mut response = refused.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_admitted_only_when_listed() {
        let keys = ApiKeys::new(Some("old-key-0123456789, new-key-0123456789"), None).unwrap();
        assert!(keys.required());
        assert!(keys.admits("old-key-0123456789"));
        assert!(keys.admits("new-key-0123456789"));
        assert!(!keys.admits("new-key-012345678"));
        assert!(!keys.admits(""));
        assert!(!ApiKeys::new(None, None).unwrap().required());
    }

    #[test]
    fn a_short_key_is_refused_without_showing_it() {
        let err = ApiKeys::new(Some("short"), None).unwrap_err();
        assert_eq!(err.setting, "CALLBACK_API_KEYS");
        assert!(!err.to_string().contains("short\""), "{err}");
        assert!(!err.reason.contains("short "), "{err}");
    }

    #[test]
    fn a_keys_file_takes_one_key_a_line_and_skips_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# rotated in on 1 Dec\nfile-key-0123456789\n\n").unwrap();
        let keys = ApiKeys::new(None, Some(path.to_str().unwrap())).unwrap();
        assert!(keys.admits("file-key-0123456789"));
        std::fs::write(&path, "# none\n").unwrap();
        let err = ApiKeys::new(None, Some(path.to_str().unwrap())).unwrap_err();
        assert_eq!(err.setting, "CALLBACK_API_KEYS_FILE");
    }

    #[test]
    fn keys_set_but_empty_are_refused_not_taken_as_keys_off() {
        for listed in ["", " , ", ","] {
            let refused = ApiKeys::new(Some(listed), None);
            assert!(refused.is_err(), "{listed:?} left the callbacks open");
        }
        let err = ApiKeys::new(Some("kéy-with-non-ascii-0123"), None).unwrap_err();
        assert_eq!(err.setting, "CALLBACK_API_KEYS");
    }
}
