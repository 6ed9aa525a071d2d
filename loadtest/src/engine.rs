//! The transport-independent core of `register`: builds each request, remembers what is in flight,
//! matches responses to requests by Call-ID, expires requests that go unanswered, and counts.
//!
//! It owns no socket and never reads the clock itself: the UDP and TCP drivers pass `now` in, so the
//! same bookkeeping serves both and stays testable. Only requests *sent* inside the measured period
//! count; responses to warm-up requests are matched (to free their window slot) and then ignored.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report;
use crate::sip::{self, Template, Who};
use crate::tokens::{self, Choice, Mix};

/// When a run sends, measures and must stop.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// `measure_end + timeout`: by then every measured request is answered or timed out.
    pub hard_end: Instant,
}

impl Schedule {
    pub fn new(start: Instant, warmup: Duration, duration: Duration, timeout: Duration) -> Self {
        let measure_start = start + warmup;
        let measure_end = measure_start + duration;
        Schedule {
            start,
            measure_start,
            measure_end,
            hard_end: measure_end + timeout,
        }
    }

    fn measured(&self, sent: Instant) -> bool {
        sent >= self.measure_start && sent < self.measure_end
    }
}

/// How much load to offer.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Closed loop: this many requests in flight in total.
    Window(u64),
    /// Open loop: this many requests per second, whatever the answers.
    Rate(f64),
}

/// What the driver itself counted (the engine counts the rest).
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Send or receive calls that failed with ECONNREFUSED (ICMP port unreachable: nobody listens).
    pub refused: u64,
    /// Open loop: requests due that the socket buffer would not take.
    pub dropped: u64,
    /// Datagrams larger than the receive buffer.
    pub truncated: u64,
    /// TCP connections that broke (closed by the peer, reset, or unframeable).
    pub broken: u64,
    /// Requests sent in total, warm-up included (for the achieved rate).
    pub sent_total: u64,
}

/// Sequence numbers are already unique and dense, so a multiply is hash enough; SipHash would be a
/// visible share of the per-request cost at a few hundred thousand requests per second.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sent: Instant,
    /// The socket or connection whose window slot this request holds.
    conn: u32,
}

/// Counters over the measured period.
#[derive(Debug)]
pub struct Stats {
    pub sent: u64,
    pub received: u64,
    /// Indexed by status code.
    pub status: Vec<u64>,
    pub timeouts: u64,
    /// Provisional (1xx) responses; they do not complete a request.
    pub provisional: u64,
    /// Responses to no request in flight: late (after their timeout), duplicated, or from another run.
    pub stray: u64,
    /// Datagrams or stream messages that are not a SIP response with a Call-ID.
    pub malformed: u64,
    pub latency: Histogram<u64>,
}

pub struct Engine {
    pub run: u64,
    schedule: Schedule,
    timeout: Duration,
    mix: Mix,
    who: Vec<Who>,
    tokens: Vec<Vec<u8>>,
    encoded_users: Vec<String>,
    token_buf: Vec<u8>,
    next_seq: u64,
    pending: HashMap<u64, Pending, BuildHasherDefault<SeqHasher>>,
    /// Deadlines in send order; the timeout is fixed, so this is sorted.
    deadlines: VecDeque<(Instant, u64)>,
    pending_measured: u64,
    pub stats: Stats,
}

impl Engine {
    /// `rows` are `(who, user, token)` for each token row.
    pub fn new(
        run: u64,
        schedule: Schedule,
        timeout: Duration,
        mix: Mix,
        rows: Vec<(Who, String, String)>,
    ) -> Engine {
        let mut who = Vec::with_capacity(rows.len());
        let mut toks = Vec::with_capacity(rows.len());
        let mut encoded = Vec::with_capacity(rows.len());
        for (w, user, token) in rows {
            who.push(w);
            encoded.push(tokens::encode_user(&user));
            toks.push(token.into_bytes());
        }
        Engine {
            run,
            schedule,
            timeout,
            mix,
            who,
            tokens: toks,
            encoded_users: encoded,
            token_buf: Vec::with_capacity(128),
            next_seq: 0,
            pending: HashMap::default(),
            deadlines: VecDeque::new(),
            pending_measured: 0,
            stats: Stats {
                sent: 0,
                received: 0,
                status: vec![0; 700],
                timeouts: 0,
                provisional: 0,
                stray: 0,
                malformed: 0,
                latency: report::histogram(),
            },
        }
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Renders the next request into `out` and returns its sequence number. It is not in flight until
    /// [`Engine::commit`]: a request the socket refused is simply never committed.
    pub fn build(&mut self, tpl: &Template, out: &mut Vec<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let choice = self.mix.pick();
        let row = choice.row();
        let token: &[u8] = match choice {
            Choice::Known { .. } => &self.tokens[row],
            Choice::New { n, .. } => {
                self.token_buf.clear();
                tokens::write_new_token(&mut self.token_buf, &self.encoded_users[row], self.run, n);
                &self.token_buf
            }
            Choice::Invalid { n, .. } => {
                self.token_buf.clear();
                tokens::write_invalid_token(&mut self.token_buf, n);
                &self.token_buf
            }
        };
        tpl.render(out, self.run, seq, &self.who[row], token);
        seq
    }

    /// Marks request `seq`, handed to the kernel at `now` on `conn`, as in flight.
    pub fn commit(&mut self, seq: u64, conn: u32, now: Instant) {
        self.pending.insert(seq, Pending { sent: now, conn });
        self.deadlines.push_back((now + self.timeout, seq));
        if self.schedule.measured(now) {
            self.stats.sent += 1;
            self.pending_measured += 1;
        }
    }

    /// Handles one received message; returns the connection whose window slot it frees, if any.
    pub fn on_message(&mut self, msg: &[u8], now: Instant) -> Option<u32> {
        let Some(resp) = sip::parse_response(msg) else {
            self.stats.malformed += 1;
            return None;
        };
        let seq = match sip::parse_call_id(resp.call_id) {
            Some((run, seq)) if run == self.run => seq,
            _ => {
                self.stats.stray += 1;
                return None;
            }
        };
        if resp.status < 200 {
            self.stats.provisional += 1;
            return None;
        }
        let Some(p) = self.pending.remove(&seq) else {
            self.stats.stray += 1;
            return None;
        };
        if self.schedule.measured(p.sent) {
            self.pending_measured -= 1;
            self.stats.received += 1;
            self.stats.status[usize::from(resp.status)] += 1;
            report::record(
                &mut self.stats.latency,
                now.saturating_duration_since(p.sent),
            );
        }
        Some(p.conn)
    }

    /// Times out every request whose deadline is past, calling `freed` with its connection.
    pub fn expire(&mut self, now: Instant, mut freed: impl FnMut(u32)) {
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.remove(&seq) {
                if self.schedule.measured(p.sent) {
                    self.pending_measured -= 1;
                    self.stats.timeouts += 1;
                }
                freed(p.conn);
            }
        }
    }

    /// The earliest deadline of a request still in flight.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        // Answered requests leave their deadline behind; drop them here so that an idle driver does
        // not wake up for them.
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if self.pending.contains_key(&seq) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Measured requests still waiting for an answer.
    pub fn pending_measured(&self) -> u64 {
        self.pending_measured
    }

    /// Forgets every request in flight on `conn` (its connection broke); measured ones count as
    /// timeouts, since they will never be answered. Returns how many there were.
    pub fn drop_conn(&mut self, conn: u32) -> u64 {
        let schedule = self.schedule;
        let mut dropped = 0;
        let mut measured = 0;
        self.pending.retain(|_, p| {
            if p.conn != conn {
                return true;
            }
            dropped += 1;
            if schedule.measured(p.sent) {
                measured += 1;
            }
            false
        });
        self.pending_measured -= measured;
        self.stats.timeouts += measured;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::sip::Method;

    fn engine(start: Instant, new_share: f64) -> Engine {
        let schedule = Schedule::new(
            start,
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        let rows = vec![(
            Who::new("alice", None, "example.com"),
            "alice".to_owned(),
            "tok-a".to_owned(),
        )];
        let mix = Mix::new(1, new_share, 0.0, Rng::seeded(1)).unwrap();
        Engine::new(0xfeed, schedule, Duration::from_secs(2), mix, rows)
    }

    fn answer(req: &[u8], status: u16) -> Vec<u8> {
        let s = std::str::from_utf8(req).unwrap();
        let call_id = s.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap();
        format!("SIP/2.0 {status} X\r\ni: {call_id}\r\n\r\n").into_bytes()
    }

    #[test]
    fn match_measure_and_ignore_warmup() {
        let t0 = Instant::now();
        let mut e = engine(t0, 0.0);
        let tpl = Template::new(Method::Register, "UDP", "127.0.0.1:1".parse().unwrap());
        let mut buf = Vec::new();

        // Warm-up request: matched, frees its slot, not counted.
        let s = e.build(&tpl, &mut buf);
        e.commit(s, 3, t0);
        assert_eq!(e.on_message(&answer(&buf, 200), t0), Some(3));
        assert_eq!((e.stats.sent, e.stats.received), (0, 0));

        // Measured request.
        let t1 = t0 + Duration::from_secs(2);
        let s = e.build(&tpl, &mut buf);
        e.commit(s, 1, t1);
        assert_eq!(e.pending_measured(), 1);
        let resp = answer(&buf, 401);
        assert_eq!(
            e.on_message(b"SIP/2.0 100 Trying\r\nCall-ID: x\r\n\r\n", t1),
            None
        );
        assert_eq!(e.stats.stray, 1);
        let trying = String::from_utf8(resp.clone())
            .unwrap()
            .replace("401", "100");
        assert_eq!(e.on_message(trying.as_bytes(), t1), None);
        assert_eq!(e.stats.provisional, 1);
        assert_eq!(e.on_message(&resp, t1 + Duration::from_micros(50)), Some(1));
        assert_eq!((e.stats.sent, e.stats.received), (1, 1));
        assert_eq!(e.stats.status[401], 1);
        assert_eq!(e.pending_measured(), 0);
        // A duplicate is a stray.
        assert_eq!(e.on_message(&resp, t1), None);
        assert_eq!(e.stats.stray, 2);
        assert_eq!(e.on_message(b"garbage", t1), None);
        assert_eq!(e.stats.malformed, 1);
    }

    #[test]
    fn timeouts_free_slots_and_late_answers_are_strays() {
        let t0 = Instant::now();
        let mut e = engine(t0, 1.0);
        let tpl = Template::new(Method::Register, "UDP", "127.0.0.1:1".parse().unwrap());
        let mut buf = Vec::new();
        let t1 = t0 + Duration::from_secs(2);
        let s = e.build(&tpl, &mut buf);
        assert!(String::from_utf8_lossy(&buf).contains("Bearer new.alice.feed.1\r\n"));
        e.commit(s, 7, t1);
        assert_eq!(e.next_deadline(), Some(t1 + Duration::from_secs(2)));
        let mut freed = Vec::new();
        e.expire(t1 + Duration::from_millis(1999), |c| freed.push(c));
        assert!(freed.is_empty());
        e.expire(t1 + Duration::from_secs(2), |c| freed.push(c));
        assert_eq!(freed, vec![7]);
        assert_eq!(e.stats.timeouts, 1);
        assert_eq!(e.next_deadline(), None);
        assert_eq!(e.on_message(&answer(&buf, 200), t1), None);
        assert_eq!(e.stats.stray, 1);
    }

    #[test]
    fn dropping_a_connection_times_out_its_requests() {
        let t0 = Instant::now();
        let mut e = engine(t0, 0.0);
        let tpl = Template::new(Method::Register, "TCP", "127.0.0.1:1".parse().unwrap());
        let mut buf = Vec::new();
        let t1 = t0 + Duration::from_secs(2);
        for conn in [0, 1, 1] {
            let s = e.build(&tpl, &mut buf);
            e.commit(s, conn, t1);
        }
        assert_eq!(e.drop_conn(1), 2);
        assert_eq!(e.stats.timeouts, 2);
        assert_eq!(e.pending_measured(), 1);
    }
}
