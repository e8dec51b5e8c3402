//! The `kapso-exporter` binary: parse, validate, log, run; errors become one line and an exit
//! code (64 for bad configuration, 69 when it cannot start: a port in use, an unusable
//! `--storage.path`).

use std::process::ExitCode;

use clap::Parser;
use kapso_exporter::config::{self, Cli, Config};
use kapso_exporter::{app, logging};

/// mimalloc returns freed memory to the system promptly; with glibc's allocator the large
/// transient buffers of a poll and a scrape at scale L stayed resident (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Gives memory a thread freed back to the system at once rather than after mimalloc's delay.
/// With the delay, pages a scrape or a poll had just freed on one thread stayed resident while
/// another thread allocated afresh: at M, a poll during scrapes took peak RSS from 48 to 68.5
/// MiB; with no delay the same run peaked at 44.6 MiB (docs/benchmarks.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still decides when it is set.
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options by its documented index; mimalloc reads its
        // options at any time and allows them to be set from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Exit code of a usage or configuration error (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a valid configuration cannot start: a port in use, a storage directory that
/// cannot be written (sysexits EX_UNAVAILABLE).
const EXIT_START: u8 = 69;

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kapso-exporter: {}", config::usage_error_line(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.config_check {
        return check(&cli);
    }
    let config = match Config::load_all(&cli, &|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(problems) => {
            let more = match problems.len().saturating_sub(1) {
                0 => String::new(),
                n => format!(" (and {n} more: see --config.check)"),
            };
            let first = problems
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            eprintln!("kapso-exporter: {first}{more}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(config.log_level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kapso-exporter: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in the log's format (the log goes to stderr).
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_START)
        }
    }
}

/// `--config.check`: every problem and their count on stderr, the effective settings (of what
/// is valid) on stdout; exit 0 only without a problem.
fn check(cli: &Cli) -> ExitCode {
    let check = Config::check(cli, &|name| std::env::var(name).ok());
    for e in &check.problems {
        eprintln!("kapso-exporter: {e}");
    }
    for line in &check.settings {
        println!("{line}");
    }
    match check.problems.len() {
        0 => {
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        n => {
            let s = if n == 1 { "" } else { "s" };
            eprintln!("kapso-exporter: {n} problem{s} in the configuration");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
