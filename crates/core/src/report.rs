//! Turns what the recognizers decided into the messages face-edge publishes: one payload per track
//! event, and where each enrolled person is across all cameras (`Presence`).

use crate::events::{EventBuilder, EventType, FaceEvent, Message, Presence, Topics};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

#[derive(Debug)]
pub struct Reporter {
    builder: EventBuilder,
    presence: Presence,
    /// Display names by person id.
    names: BTreeMap<String, String>,
}

impl Reporter {
    /// `started` makes event ids unique across restarts; a person unseen for `absence` is not_home.
    pub fn new(topics: Topics, model: &str, started: SystemTime, absence: Duration) -> Reporter {
        Reporter {
            builder: EventBuilder::new(topics.clone(), model, started),
            presence: Presence::new(topics, absence),
            names: BTreeMap::new(),
        }
    }

    /// The embedder named in events changed (models reloaded).
    pub fn set_model(&mut self, model: &str) {
        self.builder.set_model(model);
    }

    /// The enrolled people (id -> display name); returns the state of each new person and an empty
    /// retained message for each removed one.
    pub fn set_people(&mut self, names: BTreeMap<String, String>) -> Vec<Message> {
        let ids: Vec<String> = names.keys().cloned().collect();
        self.names = names;
        self.presence.set_people(&ids)
    }

    pub fn names(&self) -> &BTreeMap<String, String> {
        &self.names
    }

    /// A track event: the person's new presence (if it changed) first, then the event messages.
    pub fn track_event(&mut self, e: &FaceEvent) -> Vec<Message> {
        let mut out = vec![];
        match (e.kind, &e.person) {
            (EventType::Recognized, Some(p)) => {
                out.extend(self.presence.recognized(p, &e.camera, e.score, e.at));
            }
            (EventType::Left, Some(p)) => self.presence.track_ended(p, e.at),
            _ => {}
        }
        out.extend(self.builder.messages(e, &self.names));
        out
    }

    /// A recognised person is still in view.
    pub fn still_seen(&mut self, person: &str, at: SystemTime) -> Option<Message> {
        self.presence.still_seen(person, at)
    }

    /// People out of view for the absence time become not_home.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Message> {
        self.presence.tick(now)
    }

    /// Every person's state (Home Assistant restarted).
    pub fn all_states(&self) -> Vec<Message> {
        self.presence.all()
    }
}
