//! Requests that arrive on `face-edge/<node>/request/<command>`, parsed and validated in one place into a
//! typed `Command`, and the typed errors a request is answered with. (The MQTT command is spelt
//! `enroll`, as documented; the code says enrol.)

use crate::events::{Request, is_valid_id};
use serde_json::Value;

/// Most photos one `enroll` request may take.
pub const MAX_ENROLMENT_FRAMES: usize = 50;
/// Photos an `enroll` request takes when it does not say.
pub const DEFAULT_ENROLMENT_FRAMES: usize = 5;
/// How long an enrolment waits for its frames when the request does not say, and at most.
pub const DEFAULT_ENROLMENT_TIMEOUT_S: u64 = 30;
pub const MAX_ENROLMENT_TIMEOUT_S: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Re-read the configuration's gallery and sync the store.
    ReloadGallery,
    /// Collect the next `frames` frames of `camera` showing exactly one usable face and, if they pass
    /// the poisoning checks, save them as photos of `person` (replacing the photos earlier enrolments
    /// saved, with `replace`); give up after `timeout_s`.
    Enrol {
        person: String,
        camera: String,
        frames: usize,
        replace: bool,
        timeout_s: u64,
    },
    /// Publish the camera's newest face crop.
    Snapshot { camera: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0:?} (reload_gallery, enroll, snapshot)")]
    Unknown(String),
    #[error("{command} needs \"{field}\"")]
    Missing {
        command: &'static str,
        field: &'static str,
    },
    #[error("enroll needs \"camera\" when there are several")]
    CameraNotNamed,
    #[error("{0:?} is not a valid person id (lowercase letters, digits, '_', '-')")]
    InvalidPerson(String),
    #[error("no camera {0:?}")]
    NoCamera(String),
    #[error("frames must be 1 to {MAX_ENROLMENT_FRAMES}")]
    Frames,
    #[error("timeout_s must be 1 to {MAX_ENROLMENT_TIMEOUT_S}")]
    Timeout,
    #[error("replace must be true or false")]
    Replace,
    #[error("an enrolment is already running")]
    Busy,
    #[error(
        "no usable face for {seconds} s ({collected} of {wanted} frames collected); nothing was saved"
    )]
    TimedOut {
        seconds: u64,
        collected: usize,
        wanted: usize,
    },
    /// The enrolment's frames failed a poisoning check.
    #[error("{0}")]
    Refused(String),
    #[error("snapshots are off ([mqtt] snapshots = false)")]
    SnapshotsOff,
    #[error("camera {0:?} has seen no face yet")]
    NoFaceYet(String),
    #[error("the service is stopping")]
    Stopping,
    #[error("not authorised: {0}")]
    NotAuthorised(&'static str),
    #[error("{0} is turned off in the configuration ([mqtt.requests] {0} = false)")]
    Disabled(String),
    #[error(
        "a retained request is never run (it would run again at every reconnect); clear it with an empty retained message"
    )]
    Retained,
    #[error("the request is {0} bytes; at most {max} are read", max = crate::authorise::MAX_REQUEST_BYTES)]
    TooLarge(usize),
    /// The work itself failed (a configuration that does not load, a store that cannot be written).
    #[error("{0}")]
    Failed(String),
}

impl Command {
    /// The command a request asks for, checked against the running `cameras`.
    pub fn parse(request: &Request, cameras: &[&str]) -> Result<Command, CommandError> {
        let body = &request.body;
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
        let known_camera = |camera: String| {
            if cameras.contains(&camera.as_str()) {
                Ok(camera)
            } else {
                Err(CommandError::NoCamera(camera))
            }
        };
        match request.command.as_str() {
            "reload_gallery" => Ok(Command::ReloadGallery),
            "enroll" => {
                let person =
                    text("person")
                        .or_else(|| text("name"))
                        .ok_or(CommandError::Missing {
                            command: "enroll",
                            field: "person",
                        })?;
                let camera = match (text("camera"), cameras) {
                    (Some(camera), _) => camera,
                    (None, [only]) => only.to_string(),
                    (None, _) => return Err(CommandError::CameraNotNamed),
                };
                if !is_valid_id(&person) {
                    return Err(CommandError::InvalidPerson(person));
                }
                let camera = known_camera(camera)?;
                let frames = match body.get("frames") {
                    None => DEFAULT_ENROLMENT_FRAMES,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=MAX_ENROLMENT_FRAMES as u64).contains(n))
                        .ok_or(CommandError::Frames)? as usize,
                };
                let timeout_s = match body.get("timeout_s") {
                    None => DEFAULT_ENROLMENT_TIMEOUT_S,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=MAX_ENROLMENT_TIMEOUT_S).contains(n))
                        .ok_or(CommandError::Timeout)?,
                };
                let replace = match body.get("replace") {
                    None => false,
                    Some(v) => v.as_bool().ok_or(CommandError::Replace)?,
                };
                Ok(Command::Enrol {
                    person,
                    camera,
                    frames,
                    replace,
                    timeout_s,
                })
            }
            "snapshot" => {
                let camera = text("camera").ok_or(CommandError::Missing {
                    command: "snapshot",
                    field: "camera",
                })?;
                Ok(Command::Snapshot {
                    camera: known_camera(camera)?,
                })
            }
            other => Err(CommandError::Unknown(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_request;

    fn parse(command: &str, body: &str, cameras: &[&str]) -> Result<Command, CommandError> {
        Command::parse(&parse_request(command, body.as_bytes()).unwrap(), cameras)
    }

    #[test]
    fn enrol_defaults_to_the_only_camera_and_five_frames() {
        assert_eq!(
            parse("enroll", r#"{"person":"obama"}"#, &["hall"]),
            Ok(Command::Enrol {
                person: "obama".into(),
                camera: "hall".into(),
                frames: 5,
                replace: false,
                timeout_s: 30,
            })
        );
        assert_eq!(
            parse(
                "enroll",
                r#"{"name":"obama","camera":"door","frames":2,"replace":true,"timeout_s":5}"#,
                &["hall", "door"]
            ),
            Ok(Command::Enrol {
                person: "obama".into(),
                camera: "door".into(),
                frames: 2,
                replace: true,
                timeout_s: 5,
            })
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let two = ["hall", "door"];
        assert_eq!(
            parse("enroll", r#"{"person":"obama"}"#, &two),
            Err(CommandError::CameraNotNamed)
        );
        assert_eq!(
            parse("enroll", r#"{"person":"Obama"}"#, &["hall"]),
            Err(CommandError::InvalidPerson("Obama".into()))
        );
        assert_eq!(
            parse("enroll", r#"{"person":"a","frames":0}"#, &["hall"]),
            Err(CommandError::Frames)
        );
        assert_eq!(
            parse("enroll", r#"{"person":"a","frames":51}"#, &["hall"]),
            Err(CommandError::Frames)
        );
        assert_eq!(
            parse("enroll", r#"{"person":"a","timeout_s":0}"#, &["hall"]),
            Err(CommandError::Timeout)
        );
        assert_eq!(
            parse("enroll", r#"{"person":"a","replace":"yes"}"#, &["hall"]),
            Err(CommandError::Replace)
        );
        assert_eq!(
            parse("enroll", "{}", &["hall"]).unwrap_err().to_string(),
            "enroll needs \"person\""
        );
        assert_eq!(
            parse("snapshot", r#"{"camera":"attic"}"#, &two),
            Err(CommandError::NoCamera("attic".into()))
        );
        assert_eq!(
            parse("reboot", "{}", &two).unwrap_err().to_string(),
            "unknown command \"reboot\" (reload_gallery, enroll, snapshot)"
        );
        assert_eq!(
            parse("reload_gallery", "", &two),
            Ok(Command::ReloadGallery)
        );
    }
}
