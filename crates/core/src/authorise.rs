//! Who may command face-edge over MQTT. Anyone who can publish on the broker can reach the request
//! topics, and a request can enrol a face or publish one, so each request must carry a shared token and
//! name a command the configuration turns on. The token is kept only as its SHA-256 digest and compared
//! in constant time; it is taken out of the request before anything else sees the request, so it is
//! never logged or echoed.

use crate::command::CommandError;
use crate::events::Request;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Requests longer than this are refused unread: every command fits in a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// A shorter token could be guessed by trying; 16 random characters cannot.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The commands accepted at all. Enrolment changes who is recognised, so it is off unless turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedCommands {
    pub reload_gallery: bool,
    pub snapshot: bool,
    pub enroll: bool,
}

impl Default for AllowedCommands {
    fn default() -> AllowedCommands {
        AllowedCommands {
            reload_gallery: true,
            snapshot: true,
            enroll: false,
        }
    }
}

impl AllowedCommands {
    /// Whether `command` is turned on; a command face-edge does not know passes (it is refused later,
    /// by name).
    fn allows(&self, command: &str) -> bool {
        match command {
            "reload_gallery" => self.reload_gallery,
            "snapshot" => self.snapshot,
            "enroll" => self.enroll,
            _ => true,
        }
    }
}

/// The shared secret requests must carry, kept as its digest.
#[derive(Clone)]
pub struct RequestToken([u8; 32]);

impl std::fmt::Debug for RequestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestToken(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request token must be at least {MIN_TOKEN_CHARS} characters (it has {0})")]
pub struct TokenTooShort(pub usize);

impl RequestToken {
    pub fn new(secret: &str) -> Result<RequestToken, TokenTooShort> {
        let chars = secret.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(TokenTooShort(chars));
        }
        Ok(RequestToken(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Compares digests, so neither the length nor the first differing byte of the secret shows in
    /// the time taken.
    fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// The request gate: the token (when one is configured every request needs it; without one no request
/// is accepted), then the per-command switch.
#[derive(Debug, Clone)]
pub struct Authoriser {
    token: Option<RequestToken>,
    allowed: AllowedCommands,
}

impl Authoriser {
    pub fn new(token: Option<RequestToken>, allowed: AllowedCommands) -> Authoriser {
        Authoriser { token, allowed }
    }

    /// Whether any request can be accepted at all (for a warning at start).
    pub fn accepts_requests(&self) -> bool {
        self.token.is_some()
    }

    /// Takes the token out of `request` and says whether the request may run.
    pub fn check(&self, request: &mut Request) -> Result<(), CommandError> {
        let given = request
            .body
            .as_object_mut()
            .and_then(|body| body.remove("token"));
        let token = self.token.as_ref().ok_or(CommandError::NotAuthorised(
            "no request token is configured ([mqtt.requests] token_file), so requests are off",
        ))?;
        match given {
            Some(Value::String(s)) if token.matches(&s) => {}
            None => {
                return Err(CommandError::NotAuthorised(
                    "the request carries no \"token\"",
                ));
            }
            Some(_) => return Err(CommandError::NotAuthorised("wrong token")),
        }
        if self.allowed.allows(&request.command) {
            Ok(())
        } else {
            Err(CommandError::Disabled(request.command.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_request;

    const SECRET: &str = "correct-horse-battery";

    fn gate(allowed: AllowedCommands) -> Authoriser {
        Authoriser::new(Some(RequestToken::new(SECRET).unwrap()), allowed)
    }

    fn check(gate: &Authoriser, command: &str, body: &str) -> Result<Request, CommandError> {
        let mut r = parse_request(command, body.as_bytes()).unwrap();
        gate.check(&mut r).map(|_| r)
    }

    #[test]
    fn the_right_token_passes_and_is_removed_from_the_request() {
        let body = format!(r#"{{"token":"{SECRET}","camera":"hall"}}"#);
        let r = check(&gate(AllowedCommands::default()), "snapshot", &body).unwrap();
        assert_eq!(r.body, serde_json::json!({"camera": "hall"}));
    }

    #[test]
    fn missing_wrong_or_unconfigured_tokens_are_refused() {
        let g = gate(AllowedCommands::default());
        let refused = |body: &str| check(&g, "reload_gallery", body).unwrap_err().to_string();
        assert_eq!(
            refused("{}"),
            "not authorised: the request carries no \"token\""
        );
        assert_eq!(
            refused(r#"{"token":"correct-horse-battery!"}"#),
            "not authorised: wrong token"
        );
        assert_eq!(
            refused(r#"{"token":["correct-horse-battery"]}"#),
            "not authorised: wrong token"
        );
        let open = Authoriser::new(None, AllowedCommands::default());
        let body = format!(r#"{{"token":"{SECRET}"}}"#);
        let e = check(&open, "reload_gallery", &body).unwrap_err();
        assert!(matches!(e, CommandError::NotAuthorised(_)), "{e}");
        assert!(!open.accepts_requests());
    }

    #[test]
    fn a_refusal_never_contains_the_token() {
        let g = gate(AllowedCommands::default());
        for body in [
            r#"{"token":"correct-horse-batterY"}"#.to_string(),
            format!(r#"{{"token":"{SECRET}","person":"x"}}"#),
        ] {
            if let Err(e) = check(&g, "enroll", &body) {
                assert!(!e.to_string().contains("horse"), "{e}");
            }
        }
    }

    #[test]
    fn commands_turned_off_are_refused_by_name() {
        let body = format!(r#"{{"token":"{SECRET}","person":"x"}}"#);
        let e = check(&gate(AllowedCommands::default()), "enroll", &body).unwrap_err();
        assert_eq!(
            e.to_string(),
            "enroll is turned off in the configuration ([mqtt.requests] enroll = false)"
        );
        let all = AllowedCommands {
            enroll: true,
            ..AllowedCommands::default()
        };
        assert!(check(&gate(all), "enroll", &body).is_ok());
        let none = AllowedCommands {
            reload_gallery: false,
            snapshot: false,
            enroll: false,
        };
        assert!(check(&gate(none), "snapshot", &body).is_err());
        // An unknown command passes the gate and is refused by name when parsed.
        assert!(check(&gate(none), "reboot", &body).is_ok());
    }

    #[test]
    fn short_tokens_are_refused() {
        assert_eq!(
            RequestToken::new("hunter2").unwrap_err().to_string(),
            "the request token must be at least 16 characters (it has 7)"
        );
        assert!(format!("{:?}", RequestToken::new(SECRET).unwrap()) == "RequestToken(..)");
    }
}
