//! The `sipward` command: parse the command line, load and validate the configuration, run.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

mod run;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sipward",
    version,
    about = "Sharded SIP authenticator for OAuth 2.0 bearer tokens"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log filter when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log line format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration (and the files it names) and exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let Some(path) = cli.config else {
        eprintln!("sipward: --config FILE is required");
        return ExitCode::from(2);
    };
    let cfg = match sipward::config::Config::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("sipward: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => match sipward::shard::Shared::from_config(&cfg) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sipward: {e}");
                ExitCode::FAILURE
            }
        },
        None => match run::run(&path, cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sipward: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
