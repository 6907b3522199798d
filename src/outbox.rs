//! The queue of messages waiting for the broker. Bounded: when it is full the oldest *event* is dropped
//! and counted, while the newest value of every state topic is always kept (a newer state replaces the
//! queued one). Order is preserved otherwise. Messages handed to the connection stay here, in flight,
//! until the broker acknowledges their packet id; after a disconnect they go back to the front in their
//! original order.

use crate::events::{Message, MessageKind};
use std::collections::VecDeque;

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queued: VecDeque<Message>,
    /// (packet id once the connection has assigned one, message), in send order.
    in_flight: VecDeque<(Option<u16>, Message)>,
    dropped_events: u64,
}

impl Outbox {
    /// `capacity`: how many events may wait (state messages do not count against it).
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            capacity: capacity.max(1),
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            dropped_events: 0,
        }
    }

    pub fn push(&mut self, m: Message) {
        match m.kind {
            MessageKind::State => self
                .queued
                .retain(|q| !(q.kind == MessageKind::State && q.topic == m.topic)),
            MessageKind::Event => {
                let waiting = self
                    .queued
                    .iter()
                    .filter(|q| q.kind == MessageKind::Event)
                    .count();
                if waiting >= self.capacity
                    && let Some(oldest) = self
                        .queued
                        .iter()
                        .position(|q| q.kind == MessageKind::Event)
                {
                    self.queued.remove(oldest);
                    self.dropped_events += 1;
                }
            }
        }
        self.queued.push_back(m);
    }

    /// Queues a state message ahead of everything else (the birth messages of a new connection).
    pub fn push_front(&mut self, m: Message) {
        self.queued
            .retain(|q| !(q.kind == MessageKind::State && q.topic == m.topic));
        self.queued.push_front(m);
    }

    /// The message just taken with `next_to_send` could not be handed over: it goes back to the front.
    pub fn unsend_last(&mut self) {
        if let Some((None, m)) = self.in_flight.pop_back() {
            self.queued.push_front(m);
        }
    }

    /// Moves the next message to in-flight and returns it for sending.
    pub fn next_to_send(&mut self) -> Option<&Message> {
        let m = self.queued.pop_front()?;
        self.in_flight.push_back((None, m));
        self.in_flight.back().map(|(_, m)| m)
    }

    /// The connection wrote the next in-flight message with this packet id (writes follow send order).
    pub fn written(&mut self, packet_id: u16) {
        if let Some(entry) = self.in_flight.iter_mut().find(|(id, _)| id.is_none()) {
            entry.0 = Some(packet_id);
        }
    }

    /// The broker acknowledged a packet id.
    pub fn acknowledged(&mut self, packet_id: u16) -> Option<Message> {
        let pos = self
            .in_flight
            .iter()
            .position(|(id, _)| *id == Some(packet_id))?;
        self.in_flight.remove(pos).map(|(_, m)| m)
    }

    /// The connection dropped: unacknowledged messages are sent again first, in order. A state message
    /// superseded meanwhile by a queued newer one is not resent.
    pub fn requeue_in_flight(&mut self) {
        while let Some((_, m)) = self.in_flight.pop_back() {
            let superseded = m.kind == MessageKind::State
                && self
                    .queued
                    .iter()
                    .any(|q| q.kind == MessageKind::State && q.topic == m.topic);
            if !superseded {
                self.queued.push_front(m);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    pub fn is_queued(&self, topic: &str) -> bool {
        self.queued.iter().any(|q| q.topic == topic)
    }

    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: u32) -> Message {
        Message::event("e".into(), &json!(n))
    }
    fn state(topic: &str, v: &str) -> Message {
        Message::state(topic.into(), v.as_bytes().to_vec())
    }
    fn drain(o: &mut Outbox) -> Vec<String> {
        let mut out = vec![];
        while let Some(m) = o.next_to_send() {
            out.push(format!(
                "{}={}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            ));
        }
        out
    }

    #[test]
    fn full_queue_drops_oldest_events_but_keeps_latest_state() {
        let mut o = Outbox::new(3);
        o.push(state("s", "a"));
        for n in 1..=5 {
            o.push(event(n));
        }
        o.push(state("s", "b"));
        assert_eq!(o.dropped_events(), 2);
        assert_eq!(drain(&mut o), vec!["e=3", "e=4", "e=5", "s=b"]);
    }

    #[test]
    fn unacknowledged_messages_are_resent_first_in_order() {
        let mut o = Outbox::new(10);
        for n in 1..=4 {
            o.push(event(n));
        }
        for id in 1..=3 {
            o.next_to_send();
            o.written(id);
        }
        assert_eq!(o.acknowledged(2).unwrap().payload, b"2");
        assert!(o.acknowledged(2).is_none());
        o.push(event(5));
        o.requeue_in_flight();
        assert_eq!(o.in_flight(), 0);
        assert_eq!(drain(&mut o), vec!["e=1", "e=3", "e=4", "e=5"]);
    }

    #[test]
    fn a_superseded_state_is_not_resent() {
        let mut o = Outbox::new(10);
        o.push(state("s", "old"));
        o.next_to_send();
        o.push(state("s", "new"));
        o.requeue_in_flight();
        assert_eq!(drain(&mut o), vec!["s=new"]);
    }
}
