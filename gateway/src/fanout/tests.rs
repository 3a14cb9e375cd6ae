//! Unit tests of the event stream: numbering, the ring, leads, idle trimming and the budget.

use super::stream::IDLE_TAIL_BYTES;
use super::*;
use crate::buffer_budget::BufferBudget;
use std::sync::Arc;
use tokio::sync::Notify;

fn stream(events: usize) -> EventStream {
    EventStream::new(
        Some(Arc::from("s")),
        ReplayCaps {
            events,
            bytes: 1 << 20,
            lead_timeout: Duration::from_secs(3600),
            departed_grace: Duration::from_secs(60),
        },
        &BufferBudget::unlimited(),
    )
}

fn publish(stream: &EventStream, n: usize) {
    for _ in 0..n {
        stream.publish(Event::new(EventKind::Stdout, Some("e".into()), "x"));
    }
}

#[test]
fn a_lossy_reader_behind_the_ring_gets_a_gap_then_the_rest() {
    let s = stream(3);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
    let mut out = Vec::new();
    for _ in 0..5 {
        publish(&s, 1);
        s.take(1, s.head() - 1, usize::MAX, &mut out);
    }
    out.clear();
    let taken = s.take(2, 0, usize::MAX, &mut out);
    assert_eq!(taken.gap, Some((1, 3)));
    assert_eq!((taken.cursor, out.len()), (5, 3));
}

#[test]
fn frames_the_lead_has_not_taken_are_kept_and_producers_wait() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    publish(&s, 2);
    assert!(!s.has_room());
    publish(&s, 1);
    let mut out = Vec::new();
    let taken = s.take(1, 0, usize::MAX, &mut out);
    assert_eq!((taken.gap, out.len()), (None, 3));
    assert!(s.has_room());
}

#[test]
fn publishing_with_room_stops_where_the_lead_pins_a_full_ring() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    let mut pending: std::collections::VecDeque<Event> = ["a", "b", "c"]
        .into_iter()
        .map(|data| Event::new(EventKind::Stdout, Some("e".into()), data))
        .collect();
    assert_eq!(s.publish_with_room(&mut pending), 2);
    assert_eq!(s.head(), 2);
    assert_eq!(pending.front().map(|e| e.data.as_str()), Some("c"));
    let mut out = Vec::new();
    s.take(1, 0, usize::MAX, &mut out);
    assert_eq!(s.publish_with_room(&mut pending), 1);
    assert!(pending.is_empty());
    out.clear();
    s.take(1, 2, usize::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert!(
        out[0].as_str().contains(r#""data":"c""#),
        "{}",
        out[0].as_str()
    );
}

#[test]
fn an_acknowledging_lead_keeps_what_it_has_taken_but_not_acknowledged() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.ack(1, 0);
    publish(&s, 3);
    let mut out = Vec::new();
    assert_eq!(s.take(1, 0, usize::MAX, &mut out).cursor, 3);
    assert!(!s.has_room(), "taken is not received");
    s.ack(1, 2);
    assert!(s.has_room());
    // A new lead inherits acknowledging, from where it attached.
    s.remove_reader(1);
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 2);
    publish(&s, 1);
    out.clear();
    assert_eq!(s.take(2, 2, usize::MAX, &mut out).gap, None);
    assert_eq!(out.len(), 2);
}

#[test]
fn an_acknowledging_reader_takes_the_lead_from_one_that_does_not() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.ack(1, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
    publish(&s, 2);
    // The acknowledging lead leaves; the observer inherits the lead, never acks.
    s.remove_reader(1);
    s.add_reader(3, Arc::new(Notify::new()), Lead::May, 0);
    assert!(!s.has_room());
    // The client, reconnected as reader 3, acknowledges: it leads again.
    s.ack(3, 2);
    let mut out = Vec::new();
    s.take(3, 0, usize::MAX, &mut out);
    assert!(s.has_room(), "reader 3's acknowledgements pace the stream");
}

#[test]
fn a_reconnected_client_that_acknowledged_before_the_old_socket_left_is_not_kept_waiting() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.ack(1, 0);
    publish(&s, 2);
    // The client is back on socket 2 before the gateway noticed socket 1 is gone: it
    // reads and acknowledges everything, which does not count while 1 leads.
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
    let mut out = Vec::new();
    s.take(2, 0, usize::MAX, &mut out);
    s.ack(2, 2);
    assert!(!s.has_room());
    // Socket 1 goes: the new lead's acknowledgements free the ring at once, with no
    // further `ack` (the client has nothing more to acknowledge until it gets more).
    s.remove_reader(1);
    assert!(s.has_room());
}

#[test]
fn when_the_lead_leaves_another_reader_leads() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
    publish(&s, 2);
    assert!(!s.has_room());
    s.remove_reader(1);
    let mut out = Vec::new();
    s.take(2, 0, usize::MAX, &mut out);
    assert!(s.has_room(), "the remaining reader paces the stream now");
}

#[test]
fn without_a_lead_the_ring_holds_for_the_next_one() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    publish(&s, 2);
    s.remove_reader(1);
    assert!(!s.has_room());
    s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
    let mut out = Vec::new();
    assert_eq!(s.take(2, 0, usize::MAX, &mut out).cursor, 2);
    assert!(s.has_room());
}

#[test]
fn a_reader_that_only_attached_leads_only_while_the_seat_is_vacant() {
    let s = stream(2);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
    s.ack(2, 0);
    publish(&s, 3);
    let mut out = Vec::new();
    s.take(1, 0, usize::MAX, &mut out);
    assert!(
        s.has_room(),
        "the observer's ack took nothing from the lead"
    );
    s.remove_reader(1);
    publish(&s, 2);
    assert!(
        !s.has_room(),
        "the seat is vacant: the attached reader leads, and what it has not taken is pinned"
    );
    s.take(2, 0, usize::MAX, &mut out);
    assert!(s.has_room(), "its pace frees the ring");
}

#[tokio::test]
async fn a_lead_that_frees_no_room_within_the_timeout_loses_the_lead() {
    let s = EventStream::new(
        Some(Arc::from("s")),
        ReplayCaps {
            events: 2,
            bytes: 1 << 20,
            lead_timeout: Duration::from_millis(50),
            departed_grace: Duration::from_secs(60),
        },
        &BufferBudget::unlimited(),
    );
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    publish(&s, 2);
    assert!(!s.has_room());
    // Nobody takes anything: the wait ends only by the lead timeout firing.
    s.room().await;
    assert!(s.has_room());
    publish(&s, 10);
    assert!(s.has_room(), "nothing is pinned any more");
    // The demoted reader cannot take the lead back by acknowledging.
    s.ack(1, 0);
    publish(&s, 10);
    assert!(s.has_room());
}

#[test]
fn an_idle_stream_keeps_a_tail_and_what_readers_still_need() {
    let s = EventStream::new(
        Some(Arc::from("s")),
        ReplayCaps {
            events: 100_000,
            bytes: 64 << 20,
            lead_timeout: Duration::from_secs(3600),
            departed_grace: Duration::from_secs(60),
        },
        &BufferBudget::unlimited(),
    );
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
    let big = "x".repeat(64 * 1024);
    for _ in 0..32 {
        s.publish(Event::new(EventKind::Stdout, Some("e".into()), big.clone()));
    }
    let mut out = Vec::new();
    s.take(1, 0, usize::MAX, &mut out);
    s.set_idle(true);
    assert!(
        s.buffered_bytes() > 2 << 20,
        "reader 2 has taken nothing yet"
    );
    s.take(2, 0, usize::MAX, &mut out);
    let kept = s.buffered_bytes();
    assert!(
        (IDLE_TAIL_BYTES..IDLE_TAIL_BYTES + 70 * 1024).contains(&kept),
        "{kept}"
    );
}

#[test]
fn an_idle_stream_keeps_what_a_departed_acknowledging_reader_has_not_acknowledged() {
    let s = stream(100_000);
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
    let big = "x".repeat(64 * 1024);
    for _ in 0..16 {
        s.publish(Event::new(EventKind::Stdout, Some("e".into()), big.clone()));
    }
    let mut out = Vec::new();
    s.take(1, 0, usize::MAX, &mut out);
    s.take(2, 0, usize::MAX, &mut out);
    s.ack(2, 1);
    // The observer's connection drops; it will be back, resuming after 1.
    s.remove_reader(2);
    s.set_idle(true);
    let mut resumed = Vec::new();
    s.add_reader(3, Arc::new(Notify::new()), Lead::IfVacant, 1);
    assert_eq!(s.take(3, 1, usize::MAX, &mut resumed).gap, None);
    assert_eq!(resumed.len(), 15);
}

#[test]
fn while_the_budget_is_spent_frames_the_lead_took_are_evicted() {
    let budget = BufferBudget::new(4096, 100);
    let s = EventStream::new(
        Some(Arc::from("s")),
        ReplayCaps {
            events: 1000,
            bytes: 1 << 20,
            lead_timeout: Duration::from_secs(3600),
            departed_grace: Duration::from_secs(60),
        },
        &budget,
    );
    s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
    let line = "y".repeat(1000);
    for _ in 0..10 {
        s.publish(Event::new(
            EventKind::Stdout,
            Some("e".into()),
            line.clone(),
        ));
    }
    assert!(
        budget.is_spent(),
        "the lead's frames are kept, over the budget"
    );
    let mut out = Vec::new();
    s.take(1, 0, usize::MAX, &mut out);
    s.publish(Event::new(
        EventKind::Stdout,
        Some("e".into()),
        line.clone(),
    ));
    assert!(!budget.is_spent(), "taken frames were evicted");
    assert!(s.buffered_bytes() < 4096, "{}", s.buffered_bytes());
    assert_eq!(budget.used(), s.buffered_bytes());
    s.close();
    assert_eq!(budget.used(), 0);
}
