//! `sipward-load`: the load generator and benchmark tools for sipward (issue #4).
//!
//! - `register` offers SIP load (UDP with batched system calls, or TCP) carrying bearer tokens from a
//!   file, mixed with never-seen and invalid tokens, closed loop (a window) or open loop (a rate),
//!   and reports throughput, status codes, timeouts and latency percentiles.
//! - `mock-as` is an RFC 7662 introspection and userinfo endpoint with a fixed token rule, latency,
//!   jitter and injected errors, for runs that must not depend on a real authorization server.
//! - `as-bench` measures an introspection endpoint alone.
//! - `bare-responder` answers every UDP datagram with a minimal 200 and does nothing else: the
//!   packet-rate ceiling of a setup, to put server figures in proportion.
//!
//! It deliberately does not depend on the `sipward` crate: it sees the server only from the wire.

mod as_bench;
mod bare;
mod engine;
mod form;
mod mock_as;
mod register;
mod report;
mod rng;
mod sip;
mod tcp;
mod tokens;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::engine::Load;
use crate::register::Transport;
use crate::sip::Method;

#[derive(Parser)]
#[command(
    name = "sipward-load",
    version,
    about = "Load generator and benchmark tools for sipward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send SIP requests with bearer tokens at a server and measure the answers.
    Register(RegisterArgs),
    /// Run a mock RFC 7662 introspection / userinfo endpoint until SIGINT or SIGTERM.
    MockAs(MockAsArgs),
    /// Hammer an introspection endpoint directly with keep-alive connections.
    AsBench(AsBenchArgs),
    /// Answer every UDP datagram with a minimal 200 carrying its Call-ID, until SIGINT or SIGTERM.
    BareResponder(BareArgs),
}

fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0.0 and 1.0".into())
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 86400".into())
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("load").required(true).args(["window", "rate"])))]
struct RegisterArgs {
    /// Server address (IP:port).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// Token file: `user;token` or `user;domain;token` lines (SIPp injection format).
    #[arg(long)]
    tokens: PathBuf,
    /// Share of requests that carry a never-sent `new.<user>.<run>.<n>` token.
    #[arg(long, default_value = "0", value_parser = share)]
    new_share: f64,
    /// Share of requests that carry an `invalid.<n>` token.
    #[arg(long, default_value = "0", value_parser = share)]
    invalid_share: f64,
    /// Closed loop: requests in flight in total.
    #[arg(long)]
    window: Option<u64>,
    /// Open loop: requests per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, value_parser = seconds)]
    duration_s: f64,
    /// Seconds of load before measuring, discarded.
    #[arg(long, default_value = "1", value_parser = seconds)]
    warmup_s: f64,
    /// UDP sockets, each with its own source port (SO_REUSEPORT spreads them over shards).
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// TCP connections (with --transport tcp).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, value_enum, ignore_case = true, default_value = "REGISTER")]
    method: Method,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// A request unanswered after this many milliseconds is a timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Domain of the AORs [default: the file's domain column, else example.com].
    #[arg(long)]
    domain: Option<String>,
    /// Seed of the token mix, for a reproducible sequence.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct MockAsArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Known tokens (same format as `register --tokens`).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Added to every introspection / userinfo answer (milliseconds).
    #[arg(long, default_value = "0", value_parser = seconds)]
    latency_ms: f64,
    /// Uniform jitter around --latency-ms (milliseconds).
    #[arg(long, default_value = "0", value_parser = seconds)]
    jitter_ms: f64,
    /// Share of answers that are 503.
    #[arg(long, default_value = "0", value_parser = share)]
    error_rate: f64,
    /// Require this client id (Basic or client_secret_post).
    #[arg(long, requires = "client_secret")]
    client_id: Option<String>,
    #[arg(long, requires = "client_id")]
    client_secret: Option<String>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args)]
struct AsBenchArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080/introspect")]
    url: String,
    /// Connections, each issuing requests back to back.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, value_parser = seconds)]
    duration_s: f64,
    /// Seconds of load before measuring, discarded.
    #[arg(long, default_value = "1", value_parser = seconds)]
    warmup_s: f64,
    #[arg(long, requires = "client_secret")]
    client_id: Option<String>,
    #[arg(long, requires = "client_id")]
    client_secret: Option<String>,
    /// Mint tokens for the users of this file (same format as `register --tokens`) [default: user `load`].
    #[arg(long)]
    new_tokens_for: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// A request unanswered after this many milliseconds is a timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args)]
struct BareArgs {
    /// UDP address to answer on (port 0 picks one; the startup line on stderr tells which).
    #[arg(long)]
    listen: SocketAddr,
    /// SO_RCVBUF and SO_SNDBUF to ask for, in bytes (capped by net.core.rmem_max / wmem_max).
    #[arg(long, default_value_t = 4 << 20)]
    buffer: usize,
    /// Copy each request's Via, From, To and CSeq lines into its response, as a SIP core behind
    /// a proxy answers.
    #[arg(long)]
    echo_headers: bool,
}

fn register(a: RegisterArgs) -> anyhow::Result<()> {
    if a.duration_s <= 0.0 {
        bail!("--duration-s must be positive");
    }
    if a.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    let load = match (a.window, a.rate) {
        (Some(w), _) => Load::Window(w),
        (None, Some(r)) => Load::Rate(r),
        (None, None) => bail!("one of --window or --rate is required"),
    };
    let report = register::run(register::Config {
        target: a.target,
        transport: a.transport,
        tokens: a.tokens,
        new_share: a.new_share,
        invalid_share: a.invalid_share,
        load,
        warmup: Duration::from_secs_f64(a.warmup_s),
        duration: Duration::from_secs_f64(a.duration_s),
        timeout: Duration::from_millis(a.timeout_ms),
        sockets: a.sockets.max(1),
        connections: a.connections.max(1),
        method: a.method,
        domain: a.domain,
        seed: a.seed,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

fn mock_as(a: MockAsArgs) -> anyhow::Result<()> {
    let tokens = match &a.tokens {
        Some(p) => tokens::load_csv(p)?
            .into_iter()
            .map(|r| (r.token, r.user))
            .collect(),
        None => Default::default(),
    };
    mock_as::run(mock_as::Config {
        listen: a.listen,
        tokens,
        latency: Duration::from_secs_f64(a.latency_ms / 1000.0),
        jitter: Duration::from_secs_f64(a.jitter_ms / 1000.0),
        error_rate: a.error_rate,
        client: a.client_id.zip(a.client_secret),
        threads: a.threads,
    })
}

fn as_bench(a: AsBenchArgs) -> anyhow::Result<()> {
    if a.duration_s <= 0.0 {
        bail!("--duration-s must be positive");
    }
    let users = match &a.new_tokens_for {
        Some(p) => tokens::load_csv(p)?.into_iter().map(|r| r.user).collect(),
        None => vec!["load".to_owned()],
    };
    let concurrency = a.concurrency;
    let out = as_bench::run(as_bench::Config {
        url: a.url.clone(),
        concurrency,
        warmup: Duration::from_secs_f64(a.warmup_s),
        duration: Duration::from_secs_f64(a.duration_s),
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        client: a.client_id.zip(a.client_secret),
        users,
        threads: a.threads,
    })
    .context("as-bench")?;
    if a.json {
        let mut v = serde_json::to_value(&out.summary)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("concurrency".into(), concurrency.into());
            o.insert("active".into(), out.active.into());
            o.insert("connects".into(), out.connects.into());
            o.insert("url".into(), a.url.into());
        }
        println!("{v}");
    } else {
        let title = format!(
            "sipward-load as-bench: {} with {concurrency} connections, {:.1} s measured",
            a.url, out.summary.duration_s
        );
        print!(
            "{}",
            out.summary.human(
                &title,
                &[
                    ("active", out.active.to_string()),
                    ("connects", out.connects.to_string()),
                ]
            )
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Register(a) => register(a),
        Command::MockAs(a) => mock_as(a),
        Command::AsBench(a) => as_bench(a),
        Command::BareResponder(a) => bare::run(bare::Config {
            listen: a.listen,
            buffer: a.buffer,
            echo_headers: a.echo_headers,
        })
        .map(drop),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipward-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
