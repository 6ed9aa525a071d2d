//! `sipward-load`: the load generator and benchmark tools (issue #4). Not written yet; this binary
//! only says so, so that nobody mistakes it for a measurement.

fn main() -> std::process::ExitCode {
    eprintln!("sipward-load: not implemented yet (see issue #4: register, mock-as, as-bench)");
    std::process::ExitCode::from(2)
}
