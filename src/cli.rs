//! Command-line interface: `sockwarden run` and `sockwarden check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::policy::PolicySet;

#[derive(Parser)]
#[command(
    name = "sockwarden",
    version,
    about = "eBPF-first HTTP/1.1 egress policy enforcer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs, enforce the policies and run the proxy until
    /// SIGTERM or SIGINT; everything attached is detached on exit.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file without touching the kernel.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", summary(&config, &c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            init_tracing();
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sockwarden: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::run::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sockwarden: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOCKWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// What `check` prints for a valid file.
fn summary(path: &std::path::Path, c: &Config) -> String {
    let set = PolicySet::compile(c);
    let mut out = format!(
        "{}: valid: {} policies; proxy {}, admin {}, pins under {}\n",
        path.display(),
        set.policies.len(),
        c.proxy.listen,
        c.admin.listen,
        c.bpf.pin_path.display()
    );
    for p in &set.policies {
        let l7 = p.rules.iter().filter(|r| r.http.is_some()).count();
        out.push_str(&format!(
            "  policy {:?} on cgroup {}: {} egress rules ({} with http, {} L4 only)\n",
            p.name,
            p.cgroup,
            p.rules.len(),
            l7,
            p.rules.len() - l7
        ));
    }
    out
}
