//! `register`: sends SIP requests carrying bearer tokens at a server and measures the answers.
//!
//! This module turns the options into an [`Engine`] and a [`Schedule`], hands them to a transport
//! driver, and summarises. The sending itself is in [`crate::udp`] and [`crate::tcp`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::engine::{Engine, Load, Schedule};
use crate::report::{self, Summary};
use crate::rng::Rng;
use crate::sip::{Method, Who};
use crate::tokens::{self, Mix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
}

pub struct Config {
    pub target: SocketAddr,
    pub transport: Transport,
    pub tokens: PathBuf,
    pub new_share: f64,
    pub invalid_share: f64,
    pub load: Load,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub sockets: usize,
    pub connections: usize,
    pub method: Method,
    pub domain: Option<String>,
    pub seed: Option<u64>,
}

/// The JSON object `register --json` prints.
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub summary: Summary,
    pub window: Option<u64>,
    pub rate: Option<f64>,
    pub transport: &'static str,
    pub method: &'static str,
    /// UDP sockets or TCP connections used.
    pub flows: usize,
    pub provisional: u64,
    pub stray: u64,
    pub malformed: u64,
    /// Open loop only: requests that were due but the socket would not take.
    pub dropped: u64,
    /// Requests per second actually sent during the whole run (warm-up included).
    pub send_rate_per_s: f64,
    pub run_id: String,
}

impl Report {
    pub fn human(&self) -> String {
        let load = match (self.window, self.rate) {
            (Some(w), _) => format!("window {w}"),
            (_, Some(r)) => format!("rate {r}/s"),
            _ => String::new(),
        };
        let title = format!(
            "sipward-load register: {} {} over {} {}, {load}, {:.1} s measured",
            self.method,
            self.transport,
            self.flows,
            if self.transport == "udp" {
                "sockets"
            } else {
                "connections"
            },
            self.summary.duration_s,
        );
        self.summary.human(
            &title,
            &[
                (
                    "other",
                    format!(
                        "provisional {}, stray {}, malformed {}, dropped {}",
                        self.provisional, self.stray, self.malformed, self.dropped
                    ),
                ),
                ("send rate", format!("{:.1}/s", self.send_rate_per_s)),
                ("run id", self.run_id.clone()),
            ],
        )
    }
}

pub fn run(cfg: Config) -> anyhow::Result<Report> {
    match cfg.load {
        Load::Window(0) => bail!("--window must be at least 1"),
        Load::Rate(r) if !(r > 0.0 && r.is_finite()) => bail!("--rate must be positive"),
        _ => {}
    }
    let rows = tokens::load_csv(&cfg.tokens)?;
    let fallback = cfg.domain.as_deref().unwrap_or("example.com");
    let rows: Vec<(Who, String, String)> = rows
        .into_iter()
        .map(|r| {
            // An explicit --domain wins over the file's domain column.
            let domain = if cfg.domain.is_some() {
                None
            } else {
                r.domain.as_deref()
            };
            (Who::new(&r.user, domain, fallback), r.user, r.token)
        })
        .collect();
    let rng = match cfg.seed {
        Some(s) => Rng::seeded(s),
        None => Rng::from_entropy(),
    };
    let mix = Mix::new(rows.len(), cfg.new_share, cfg.invalid_share, rng)?;
    // Short enough to read, long enough that two runs against one server never share Call-IDs.
    let run = Rng::from_entropy().next_u64() & 0xffff_ffff;
    let start = Instant::now();
    let schedule = Schedule::new(start, cfg.warmup, cfg.duration, cfg.timeout);
    let mut engine = Engine::new(run, schedule, cfg.timeout, mix, rows);
    let (flows, driver) = match cfg.transport {
        Transport::Udp => {
            let d = crate::udp::run(&mut engine, cfg.target, cfg.sockets, cfg.load, cfg.method)?;
            (cfg.sockets, d)
        }
        Transport::Tcp => {
            let d = crate::tcp::run(
                &mut engine,
                cfg.target,
                cfg.connections,
                cfg.load,
                cfg.method,
            )?;
            (cfg.connections, d)
        }
    };
    let elapsed = start.elapsed().min(cfg.warmup + cfg.duration);
    let st = &engine.stats;
    let errors = st.malformed + driver.refused + driver.truncated + driver.broken;
    let summary = Summary::new(
        st.sent,
        st.received,
        report::status_map(&st.status),
        st.timeouts,
        errors,
        &st.latency,
        cfg.duration,
    );
    let flows = match cfg.load {
        Load::Window(w) => flows.min(usize::try_from(w).unwrap_or(usize::MAX)),
        Load::Rate(_) => flows,
    };
    Ok(Report {
        summary,
        window: match cfg.load {
            Load::Window(w) => Some(w),
            Load::Rate(_) => None,
        },
        rate: match cfg.load {
            Load::Rate(r) => Some(r),
            Load::Window(_) => None,
        },
        transport: match cfg.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        },
        method: cfg.method.as_str(),
        flows,
        provisional: st.provisional,
        stray: st.stray,
        malformed: st.malformed,
        dropped: driver.dropped,
        send_rate_per_s: (driver.sent_total as f64 / elapsed.as_secs_f64().max(1e-9) * 10.0)
            .round()
            / 10.0,
        run_id: format!("{run:x}"),
    })
}
