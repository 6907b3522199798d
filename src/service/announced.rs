//! What face-edge has left on the broker, remembered in the state directory across restarts: the Home
//! Assistant components it announced (`discovery.json`) and the people whose retained state it
//! published (`published-people.json`). People removed from the gallery while face-edge was stopped
//! are then still removed from Home Assistant, and their retained state cleared, at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const DISCOVERED_FILE: &str = "discovery.json";
const PEOPLE_FILE: &str = "published-people.json";

/// Components of the last discovery document (key -> platform).
pub fn load_discovered(state_dir: &Path) -> BTreeMap<String, &'static str> {
    load::<BTreeMap<String, String>>(state_dir, DISCOVERED_FILE)
        .into_iter()
        .filter_map(|(k, p)| crate::events::platform(&p).map(|p| (k, p)))
        .collect()
}

pub fn save_discovered(state_dir: &Path, components: &BTreeMap<String, &'static str>) {
    save(
        state_dir,
        DISCOVERED_FILE,
        components,
        "Home Assistant components",
    );
}

/// Ids of the people whose retained state is on the broker.
pub fn load_published_people(state_dir: &Path) -> BTreeSet<String> {
    load(state_dir, PEOPLE_FILE)
}

pub fn save_published_people(state_dir: &Path, people: &BTreeSet<String>) {
    save(
        state_dir,
        PEOPLE_FILE,
        people,
        "people with a published state",
    );
}

/// The file's content; a missing file is empty, an unreadable one is ignored with a warning (the
/// worst outcome is a stale entity or retained state, which the user can delete).
fn load<T: serde::de::DeserializeOwned + Default>(state_dir: &Path, name: &str) -> T {
    let path = state_dir.join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return T::default();
    };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        log::warn!("{}: unreadable ({e}), ignored", path.display());
        T::default()
    })
}

fn save(state_dir: &Path, name: &str, value: &impl serde::Serialize, what: &str) {
    let json = serde_json::to_vec(value).expect("sets and maps of strings serialise");
    if let Err(e) = crate::store::write_atomically(state_dir, name, &json) {
        log::warn!("cannot remember the {what} announced on the broker: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_components_and_people_and_ignores_garbage() {
        let dir = std::env::temp_dir().join(format!("face-edge-announced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_published_people(&dir).is_empty(), "nothing yet");
        let people: BTreeSet<String> = ["alice".to_string(), "bob".to_string()].into();
        save_published_people(&dir, &people);
        assert_eq!(load_published_people(&dir), people);
        let components = BTreeMap::from([("alice_presence".to_string(), "binary_sensor")]);
        save_discovered(&dir, &components);
        assert_eq!(load_discovered(&dir), components);
        std::fs::write(dir.join(PEOPLE_FILE), b"{not json").unwrap();
        assert!(load_published_people(&dir).is_empty());
        std::fs::write(dir.join(DISCOVERED_FILE), br#"{"x": "no_such_platform"}"#).unwrap();
        assert!(load_discovered(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
