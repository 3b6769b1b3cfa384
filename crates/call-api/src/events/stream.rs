//! The live event stream: every replica tails the outbox (`events`) and hands each new event to
//! the streams (`GET /v1/calls/{id}/events`) open on it for that event's call, whichever
//! replica wrote it.
//!
//! One tail per replica reads the table, so the cost on the database does not grow with the
//! number of streams; a stream costs its replica a channel and a task. While a stream is open on
//! the replica, on PostgreSQL each commit of new events wakes the tail through `NOTIFY` on
//! [`CHANNEL`] (a trigger, migration `0011_events_notify`), and the tail reads every [`POLL`] in
//! any case. While none is, nobody waits for the tail: it reads every [`QUIET_POLL`], and the
//! catch-up list reads the outbox itself first ([`EventBus::fresh_settled`]).
//!
//! **Order and gaps.** Event rows are numbered as they are inserted, but on PostgreSQL two
//! transactions can commit out of order, so a row may appear after a higher-numbered one has
//! been read. The tail therefore keeps two marks: rows are handed out as soon as they are seen
//! (each once), and the *settled* mark advances only over a run of consecutive rows; a gap is
//! taken as final (a rolled-back insert) once the row after it is [`SETTLE`] old. The catch-up
//! list (`GET /v1/events`) reads only up to the settled mark, so a client that pages with
//! `after` never skips an event that commits late.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Database, DbError, events::Event};

/// How often the tail reads the outbox while a stream is open on this replica (on PostgreSQL it
/// is also woken by each commit of new events, [`CHANNEL`]).
pub const POLL: Duration = Duration::from_millis(200);
/// How often it reads while no stream is open (the settled mark for the list, which also reads
/// for itself).
pub const QUIET_POLL: Duration = Duration::from_secs(2);
/// The PostgreSQL notification channel on which commits of new events wake every tail
/// (migration `0011_events_notify`).
pub const CHANNEL: &str = "voice_call_events";
/// The least time between two reads when woken, so that a burst of commits costs one read.
const MIN_GAP: Duration = Duration::from_millis(5);
/// How old the row after a gap must be before the gap is taken as final.
pub const SETTLE: Duration = Duration::from_secs(5);
/// Rows read per query.
const PAGE: i64 = 1000;
/// Events a stream may fall behind by before it reads them again from the database.
const BUFFER: usize = 256;

/// An event with its JSON, rendered once however many streams send it.
#[derive(Debug)]
pub struct Rendered {
    pub event: Event,
    pub json: String,
}

impl Rendered {
    pub fn new(event: Event) -> Self {
        let json = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
        Self { event, json }
    }
}

/// The events of this replica's open streams, by call. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    calls: Mutex<HashMap<Uuid, broadcast::Sender<Arc<Rendered>>>>,
    /// Every event row up to this one is final; -1 until the tail first read the table.
    settled: AtomicI64,
    /// The tail's place, shared by its loop and the list's reads.
    tail: tokio::sync::Mutex<Tail>,
    /// A stream opened: the tail's loop takes the open streams' pace.
    opened: tokio::sync::Notify,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("settled", &self.settled()).finish()
    }
}

/// New events of one call, for one stream.
pub struct Subscription {
    bus: EventBus,
    call: Uuid,
    rx: Option<broadcast::Receiver<Arc<Rendered>>>,
}

impl Subscription {
    /// The next event; `Err(Lagged)` when this stream fell behind (read the database again).
    pub async fn recv(&mut self) -> Result<Arc<Rendered>, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut calls = self.bus.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.get(&self.call).is_some_and(|tx| tx.receiver_count() == 0) {
            calls.remove(&self.call);
        }
    }
}

impl EventBus {
    pub fn new(db: Database) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                calls: Mutex::new(HashMap::new()),
                settled: AtomicI64::new(-1),
                tail: tokio::sync::Mutex::new(Tail::default()),
                opened: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Every event row up to this one is final (`None` until the tail has read the table once).
    pub fn settled(&self) -> Option<i64> {
        let s = self.inner.settled.load(Ordering::Acquire);
        (s >= 0).then_some(s)
    }

    /// New events of `call` from now on. Subscribe before reading the call's past events, so
    /// that none falls between the two (a stream skips those it has sent already).
    pub fn subscribe(&self, call: Uuid) -> Subscription {
        let mut calls = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        let rx = calls.entry(call).or_insert_with(|| broadcast::channel(BUFFER).0).subscribe();
        drop(calls);
        self.inner.opened.notify_one();
        Subscription { bus: self.clone(), call, rx: Some(rx) }
    }

    /// The settled mark after reading the outbox now (unless it was read in the last few
    /// milliseconds): what the catch-up list may list up to, including what this replica has just
    /// written.
    pub async fn fresh_settled(&self) -> Option<i64> {
        let mut tail = self.inner.tail.lock().await;
        if tail.read_at.is_none_or(|at| at.elapsed() >= MIN_GAP)
            && let Err(e) = self.poll(&mut tail).await
        {
            tracing::warn!(error = %e, "could not read the event outbox for the list");
        }
        drop(tail);
        self.settled()
    }

    /// Calls with an open stream on this replica.
    pub fn watched_calls(&self) -> usize {
        self.inner.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn publish(&self, event: Event) {
        let calls = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = calls.get(&event.call_id) {
            // No receiver left: the last stream is closing and removes the entry.
            let _ = tx.send(Arc::new(Rendered::new(event)));
        }
    }

    /// Reads the table once to place the tail (call before serving, so the catch-up list has a
    /// settled mark at once), then tails it until `stop`.
    pub async fn start(&self, stop: CancellationToken) {
        if let Err(e) = self.poll(&mut *self.inner.tail.lock().await).await {
            tracing::warn!(error = %e, "could not read the event outbox; the event stream retries");
        }
        // On PostgreSQL, each commit of new events (and each new connection, notices meanwhile
        // being lost) wakes the tail at once.
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        // The same notices wake this replica's webhook worker (`Database::events_written`).
        let db = self.inner.db.clone();
        self.inner.db.spawn_follower(CHANNEL, "call-api-events", stop.clone(), move |_| {
            woken.notify_one();
            db.wake_event_readers();
        });
        let bus = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                // A notice while no stream is open stays pending until one opens.
                let watched = bus.watched_calls() > 0;
                let last = bus.inner.tail.lock().await.read_at.unwrap_or_else(Instant::now);
                let due = last + if watched { POLL } else { QUIET_POLL };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = wake.notified(), if watched => tokio::time::sleep(MIN_GAP).await,
                    () = bus.inner.opened.notified() => continue,
                }
                let mut tail = bus.inner.tail.lock().await;
                if tail.read_at.is_some_and(|at| at.elapsed() < MIN_GAP) {
                    // The list has just read it.
                    continue;
                }
                match bus.poll(&mut tail).await {
                    Ok(()) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("reading the event outbox again");
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "could not read the event outbox; retrying");
                        }
                    }
                }
            }
        });
    }

    /// One read of the outbox: hands out rows not seen before and advances the settled mark.
    async fn poll(&self, tail: &mut Tail) -> Result<(), DbError> {
        // An attempt counts, so a failing database is retried at the tail's pace, not at once.
        tail.read_at = Some(Instant::now());
        let db = &self.inner.db;
        let cursor = match tail.cursor {
            Some(c) => c,
            // From a little before the end: rows further back are long final.
            None => (db.last_event_seq().await? - PAGE).max(0),
        };
        let mut from = cursor;
        let mut rows = Vec::new();
        loop {
            let page = db.events_after(from, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            if let Some(last) = page.last() {
                from = last.seq;
            }
            rows.extend(page);
            if !full {
                break;
            }
        }
        let marks: Vec<(i64, DateTime<Utc>)> = rows.iter().map(|e| (e.seq, e.timestamp)).collect();
        let settled = settle(cursor, &marks, crate::model::now(), SETTLE);
        for event in rows {
            if tail.seen.insert(event.seq) {
                self.publish(event);
            }
        }
        tail.seen = tail.seen.split_off(&(settled + 1));
        tail.cursor = Some(settled);
        self.inner.settled.store(settled, Ordering::Release);
        Ok(())
    }
}

/// Where the tail is: the settled mark, and the rows after it already handed out.
#[derive(Default)]
struct Tail {
    cursor: Option<i64>,
    seen: BTreeSet<i64>,
    /// When the outbox was last read (or a read was tried).
    read_at: Option<Instant>,
}

/// The settled mark after `cursor`, given the rows read after it (`(row, created)`, in order):
/// it advances over consecutive rows, and over a gap once the row after the gap is `settle` old.
pub fn settle(cursor: i64, rows: &[(i64, DateTime<Utc>)], now: DateTime<Utc>, settle: Duration) -> i64 {
    let settle = chrono::Duration::from_std(settle).unwrap_or(chrono::Duration::MAX);
    let mut mark = cursor;
    for &(seq, created) in rows {
        if seq <= mark {
            continue;
        }
        if seq == mark + 1 || now - created >= settle {
            mark = seq;
        } else {
            break;
        }
    }
    mark
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: DateTime<Utc>, seconds_ago: i64) -> DateTime<Utc> {
        now - chrono::Duration::seconds(seconds_ago)
    }

    #[test]
    fn the_mark_advances_over_consecutive_rows() {
        let now = Utc::now();
        let rows = [(11, at(now, 0)), (12, at(now, 0)), (13, at(now, 0))];
        assert_eq!(settle(10, &rows, now, SETTLE), 13);
        assert_eq!(settle(10, &[], now, SETTLE), 10, "nothing new");
    }

    #[test]
    fn a_young_gap_holds_the_mark_and_an_old_one_does_not() {
        let now = Utc::now();
        // Row 12 is missing: its transaction may still commit.
        let young = [(11, at(now, 1)), (13, at(now, 1)), (14, at(now, 0))];
        assert_eq!(settle(10, &young, now, SETTLE), 11);
        // The row after the gap is older than SETTLE: 12 was rolled back.
        let old = [(11, at(now, 9)), (13, at(now, 6)), (14, at(now, 0))];
        assert_eq!(settle(10, &old, now, SETTLE), 14);
        // A gap right after the cursor holds it too.
        assert_eq!(settle(10, &[(12, at(now, 0))], now, SETTLE), 10);
    }

    #[test]
    fn rows_at_or_before_the_mark_are_ignored() {
        let now = Utc::now();
        assert_eq!(settle(12, &[(11, at(now, 0)), (12, at(now, 0)), (13, at(now, 0))], now, SETTLE), 13);
    }
}
