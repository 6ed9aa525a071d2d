//! Singleflight: concurrent misses for one token share one request to the source.
//!
//! The first caller for a key becomes the leader and starts the request on a detached task; every
//! caller, the leader included, then waits on the flight. A waiter that goes away (its client gave
//! up) therefore never cancels the flight for the others, and the result, success or failure, is
//! handed to everyone waiting when it lands. Landing removes the flight, so a failure is not
//! remembered: the next miss starts a new flight.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::auth::{SourceError, TokenFacts};

pub type FlightResult = Result<Arc<TokenFacts>, SourceError>;

enum State {
    InAir(Vec<Waker>),
    Landed(FlightResult),
}

pub struct Flight {
    state: Mutex<State>,
}

impl Flight {
    /// Waits for the flight to land.
    pub fn wait(self: &Arc<Self>) -> Wait {
        Wait {
            flight: self.clone(),
            slot: None,
        }
    }

    fn land(&self, result: FlightResult) {
        let wakers = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::replace(&mut *st, State::Landed(result)) {
                State::InAir(w) => w,
                State::Landed(_) => Vec::new(),
            }
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The future returned by [`Flight::wait`].
pub struct Wait {
    flight: Arc<Flight>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = FlightResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlightResult> {
        let flight = self.flight.clone();
        let mut st = flight.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *st {
            State::Landed(r) => Poll::Ready(r.clone()),
            State::InAir(wakers) => {
                match self.slot {
                    Some(i) if i < wakers.len() => {
                        if !wakers[i].will_wake(cx.waker()) {
                            wakers[i] = cx.waker().clone();
                        }
                    }
                    _ => {
                        self.slot = Some(wakers.len());
                        wakers.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// The flights in the air, by token key. Shared by all shards; the lock is held only to look up or
/// remove an entry, never across an await.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<u128, Arc<Flight>>>,
    /// Joins that found a flight in the air (a metric; only the miss path touches it).
    coalesced: std::sync::atomic::AtomicU64,
}

impl Flights {
    /// The flight for `key`, and whether the caller is its leader (and so must start it).
    pub fn join(&self, key: u128) -> (Arc<Flight>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&key) {
            self.coalesced
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (f.clone(), false);
        }
        let f = Arc::new(Flight {
            state: Mutex::new(State::InAir(Vec::new())),
        });
        map.insert(key, f.clone());
        (f, true)
    }

    /// Ends the flight for `key` with `result`, waking every waiter.
    pub fn land(&self, key: u128, flight: &Arc<Flight>, result: FlightResult) {
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                map.remove(&key);
            }
        }
        flight.land(result);
    }

    /// Joins so far that waited on a flight another lookup started.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Flights in the air now.
    pub fn in_air(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn one_leader_many_followers_one_result() {
        let flights = Flights::default();
        let (f1, lead1) = flights.join(7);
        let (f2, lead2) = flights.join(7);
        let (_, lead_other) = flights.join(8);
        assert!(lead1 && !lead2 && lead_other);
        assert_eq!(flights.in_air(), 2);
        let facts = Arc::new(TokenFacts::inactive());
        flights.land(7, &f1, Ok(facts.clone()));
        assert_eq!(flights.in_air(), 1);
        assert!(Arc::ptr_eq(&block_on(f2.wait()).unwrap(), &facts));
        assert!(Arc::ptr_eq(&block_on(f1.wait()).unwrap(), &facts));
    }

    #[test]
    fn failures_reach_every_waiter_and_are_forgotten() {
        let flights = Flights::default();
        let (f, _) = flights.join(1);
        let (g, _) = flights.join(1);
        flights.land(1, &f, Err(SourceError::Timeout));
        assert_eq!(block_on(g.wait()), Err(SourceError::Timeout));
        let (_, leader_again) = flights.join(1);
        assert!(leader_again, "a failure does not stay in the air");
    }

    #[test]
    fn waiters_on_other_threads_are_woken() {
        let flights = Arc::new(Flights::default());
        let (f, _) = flights.join(3);
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (g, leader) = flights.join(3);
                assert!(!leader);
                std::thread::spawn(move || block_on(g.wait()))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        flights.land(3, &f, Err(SourceError::Unreachable));
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(SourceError::Unreachable));
        }
    }

    #[test]
    fn a_dropped_waiter_does_not_disturb_the_others() {
        let flights = Flights::default();
        let (f, _) = flights.join(9);
        let (g, _) = flights.join(9);
        {
            let mut gone = Box::pin(g.wait());
            let waker = futures_noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(gone.as_mut().poll(&mut cx).is_pending());
        }
        let (h, _) = flights.join(9);
        flights.land(9, &f, Ok(Arc::new(TokenFacts::inactive())));
        assert!(block_on(h.wait()).is_ok());
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }
}
