//! Command-line interface: `sockwarden run`, `check`, `features`, `status`,
//! `tuples`, `rules`, `detach` and `ca init`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::policy::PolicySet;

#[derive(Parser)]
#[command(
    name = "sockwarden",
    version = VERSION,
    about = "eBPF-first HTTP/1.1 egress policy enforcer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs, enforce the policies and run the proxy until
    /// SIGTERM or SIGINT. On exit the proxy drains and the programs stay
    /// attached (fail closed) until the next start takes them over or
    /// `sockwarden detach` removes them.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over from the sockwarden running with the same pin path:
        /// its listening sockets are handed over, it stops accepting and
        /// drains, and no connection is refused meanwhile (an upgrade).
        #[arg(long)]
        take_over: bool,
    },
    /// Validate a configuration file without touching the kernel.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Exit 1 on a warning too (a regex that is probably wrong, a
        /// policy whose hosts cannot be resolved, ...).
        #[arg(long)]
        strict: bool,
    },
    /// Probe the kernel features sockwarden needs and print them; exits 1
    /// if one is missing.
    Features,
    /// Report the running instance (from its admin listener: uptime, the
    /// configuration in force, each policy's mode, cgroup and counts, the
    /// pool, what is in flight), then the pinned links, the BPF LSM and each
    /// policy cgroup's processes; warn about processes that can open
    /// AF_PACKET sockets.
    /// Exits 0 when it ran (warnings or not), 1 when the configuration
    /// cannot be read.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the in-use source tuple map of a running instance.
    Tuples {
        /// The instance's configuration (for its pin path).
        #[arg(long, short, conflicts_with = "pin_path")]
        config: Option<PathBuf>,
        /// The pin path directly (default /sys/fs/bpf/sockwarden).
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Ask the running sockwarden (through its admin listener) to re-read
    /// its configuration and put it in force whole; prints the result. An
    /// invalid or refused configuration leaves the one in force, whole.
    /// SIGHUP does the same. Exits 0 only when the new one is in force.
    Reload {
        /// The instance's configuration (it names `admin.listen`).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove enforcement: detach every program a stopped sockwarden left
    /// attached and remove its pins, and say what was removed. Refuses while
    /// a sockwarden runs with that pin path.
    Detach {
        /// The instance's configuration (for its pin path).
        #[arg(long, short, conflicts_with = "pin_path")]
        config: Option<PathBuf>,
        /// The pin path directly (default /sys/fs/bpf/sockwarden).
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Print the kernel's rule table of a running instance in the
    /// configuration's terms: policy, protocol, destination, port, verdict.
    Rules {
        /// The instance's configuration (its pin path, its policies' names).
        #[arg(long, short, conflicts_with = "pin_path")]
        config: Option<PathBuf>,
        /// The pin path directly (default /sys/fs/bpf/sockwarden); policies
        /// are then shown by id.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Write the man pages (man1/) and the bash, zsh and fish completions
    /// (completions/) generated from these definitions into a directory;
    /// scripts/install.sh installs them.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// The node CA that signs the leaf certificates of intercepted TLS.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Generate the node CA (ECDSA P-256): the certificate (PEM, mode 0644)
    /// and its key (PEM, mode 0600); refuses to replace files without --force.
    Init {
        #[arg(long, default_value = "/etc/sockwarden/ca.crt")]
        cert: PathBuf,
        #[arg(long, default_value = "/etc/sockwarden/ca.key")]
        key: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// The certificate's common name (default: sockwarden CA <host name>).
        #[arg(long)]
        name: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = crate::tls::ca::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

/// `--version`: the version, the commit and the build date.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SOCKWARDEN_COMMIT"),
    ", built ",
    env!("SOCKWARDEN_BUILD_DATE"),
    ")"
);

/// The configuration `status` reads without `--config`.
const DEFAULT_CONFIG: &str = "/etc/sockwarden/config.yaml";

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, strict } => with_config(&config, |path, c| {
            // The files the configuration names (the node CA, the roots)
            // are read and checked as `run` would.
            if let Err(e) = crate::tls::TlsContext::from_config(c) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            let set = PolicySet::compile(c);
            print!("{}", summary(path, c, &set));
            let lints = c.lints(path);
            for l in &lints {
                eprintln!("{l}");
            }
            let warnings = set.warnings();
            for w in &warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            for n in crate::cgroup::missing_here(c) {
                eprintln!("{}: note: {n}", path.display());
            }
            let warned = lints.len() + warnings.len();
            if strict && warned > 0 {
                eprintln!(
                    "{}: {warned} warnings, and --strict makes them errors",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }),
        Command::Features => {
            let features = crate::features::probe();
            print!("{}", crate::features::table(&features));
            match crate::features::require(&features) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sockwarden: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { config } => with_config(&config, |path, c| {
            use crate::status::running;
            match running::fetch(c.admin.listen) {
                Ok(r) => print!("{}", running::report(&r, std::time::SystemTime::now())),
                Err(e) => println!(
                    "not running: the admin listener {} did not answer ({e}); the pins below say whether enforcement was left in place",
                    c.admin.listen
                ),
            }
            print!("{}", crate::status::report(&crate::status::gather(path, c)));
            ExitCode::SUCCESS
        }),
        Command::Reload { config } => {
            let text = match std::fs::read_to_string(&config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sockwarden: reload: reading {}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            let admin = crate::reload::admin_address(&text);
            match crate::reload::request(admin) {
                Ok((status, body)) => {
                    print!("{body}");
                    if (200..300).contains(&status) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!(
                        "sockwarden: reload: asking the admin listener {admin}: {e} (is sockwarden running?)"
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Detach { config, pin_path } => {
            let Some(pin_path) = pin_path_of(config, pin_path) else {
                return ExitCode::FAILURE;
            };
            match crate::bpf::detach(&pin_path) {
                Ok(d) => {
                    print!("{}", detach_report(&pin_path, &d));
                    ExitCode::SUCCESS
                }
                Err(crate::bpf::BpfError::InUse { .. }) => {
                    eprintln!(
                        "sockwarden: a sockwarden is running with pin path {}: stop it first (its enforcement stays in place when it stops; detach then removes it)",
                        pin_path.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("sockwarden: detach: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tuples { config, pin_path } => {
            let Some(pin_path) = pin_path_of(config, pin_path) else {
                return ExitCode::FAILURE;
            };
            show_pinned(&pin_path, |maps| tuples_table(maps.tuples()))
        }
        Command::Rules { config, pin_path } => crate::inspect::command(config, pin_path),
        Command::Ca { action } => ca_command(action),
        Command::Generate { out } => match generate(&out) {
            Ok(written) => {
                for p in written {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sockwarden: generate into {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config, take_over } => {
            init_tracing();
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // Before the runtime's threads: it takes NOTIFY_SOCKET out of
            // the environment.
            let notifier = crate::notify::Notifier::from_env();
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
            match runtime.block_on(crate::run::run(loaded, (config, take_over), notifier)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sockwarden: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes `out/man1/sockwarden.1`, one `sockwarden-<command>.1` per
/// command, and `out/completions/` for bash, zsh and fish; returns what it
/// wrote.
fn generate(out: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let cmd = Cli::command();
    let man = out.join("man1");
    std::fs::create_dir_all(&man)?;
    let mut written = Vec::new();
    let mut pages = vec![("sockwarden".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("sockwarden-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = man.join(format!("{name}.1"));
        let mut f = std::fs::File::create(&path)?;
        clap_mangen::Man::new(page).render(&mut f)?;
        written.push(path);
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd.clone(),
            "sockwarden",
            &completions,
        )?);
    }
    Ok(written)
}

/// The pin path of `--config FILE` or `--pin-path DIR`, or the default;
/// None (the error printed) when the configuration cannot be read.
fn pin_path_of(config: Option<PathBuf>, pin_path: Option<PathBuf>) -> Option<PathBuf> {
    match (config, pin_path) {
        (Some(c), _) => match Config::load(&c) {
            Ok(c) => Some(c.bpf.pin_path),
            Err(e) => {
                eprintln!("{e}");
                None
            }
        },
        (None, Some(p)) => Some(p),
        (None, None) => Some(PathBuf::from(crate::config::DEFAULT_PIN_PATH)),
    }
}

/// Prints what `show` makes of the maps pinned under `pin_path` (a running
/// or stopped instance's); exits 1 saying so when they cannot be opened.
pub(crate) fn show_pinned(
    pin_path: &std::path::Path,
    show: impl FnOnce(&crate::bpf::Maps) -> String,
) -> ExitCode {
    match crate::bpf::Maps::open_pinned(pin_path) {
        Ok(maps) => {
            print!("{}", show(&maps));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "sockwarden: {e} (is sockwarden running with pin path {}?)",
                pin_path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// What `detach` prints.
fn detach_report(pin_path: &std::path::Path, d: &crate::bpf::Detached) -> String {
    if d.dirs.is_empty() {
        return format!(
            "nothing to detach: no pins under {} (no sockwarden enforcement from that pin path)\n",
            pin_path.display()
        );
    }
    let mut out = String::new();
    for dir in &d.dirs {
        out.push_str(&format!("removed pins under {}\n", dir.display()));
    }
    out.push_str(&format!(
        "detached {} links (each took its program off the cgroup): {}\n",
        d.links.len(),
        d.links.join(", ")
    ));
    out
}

/// Runs `what` on the configuration at `path` and exits as it says; exits 1
/// with the configuration's error (file:line:column) when it cannot be read.
fn with_config(
    path: &std::path::Path,
    what: impl FnOnce(&std::path::Path, &Config) -> ExitCode,
) -> ExitCode {
    match Config::load(path) {
        Ok(c) => what(path, &c),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn ca_command(action: CaAction) -> ExitCode {
    let CaAction::Init {
        cert,
        key,
        force,
        name,
        days,
    } = action;
    let name = name.unwrap_or_else(|| crate::tls::ca::default_name(&crate::tls::ca::host_name()));
    let opts = crate::tls::ca::CaInit {
        cert,
        key,
        force,
        name,
        days,
    };
    match crate::tls::ca::init(&opts, std::time::SystemTime::now()) {
        Ok(written) => {
            print!("{}", crate::tls::ca::init_report(&opts, &written));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sockwarden: ca init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOCKWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stderr().is_terminal(), no_color.as_deref()))
        .with_writer(std::io::stderr)
        .init();
}

/// Whether the diagnostic log is coloured: only on a terminal, and not
/// when `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// What `check` prints for a valid file.
fn summary(path: &std::path::Path, c: &Config, set: &PolicySet) -> String {
    let mut out = format!(
        "{}: valid: {} policies; proxy {}, admin {}, pins under {}\n",
        path.display(),
        set.policies.len(),
        c.proxy.listen,
        c.admin.listen,
        c.bpf.pin_path.display()
    );
    for p in &set.policies {
        let l7 = p.rules.iter().filter(|r| r.l7()).count();
        out.push_str(&format!(
            "  policy {:?} on cgroup {}: {} egress rules ({} with http or tls, {} L4 only), at most {} redirected connections\n",
            p.name,
            p.cgroup,
            p.rules.len(),
            l7,
            p.rules.len() - l7,
            p.max_connections
        ));
    }
    out
}

/// The tuple map as a table, sorted by namespace, source and destination.
fn tuples_table(mut entries: Vec<crate::bpf::TupleEntry>) -> String {
    entries.sort_by_key(|e| (e.netns_cookie, e.src, e.dst));
    let mut out = format!(
        "{:<12} {:<46} {:<46} {:<12} {:<9} {:>8} {:>12}\n",
        "NETNS", "SOURCE", "DESTINATION", "STATE", "ROLE", "AGE", "COOKIE"
    );
    for e in &entries {
        let role = match e.role {
            crate::bpf::SockRole::Workload => "workload",
            crate::bpf::SockRole::Upstream => "upstream",
            crate::bpf::SockRole::Other => "other",
        };
        out.push_str(&format!(
            "{:<12} {:<46} {:<46} {:<12} {:<9} {:>7.1}s {:>12}\n",
            e.netns_cookie,
            e.src,
            e.dst,
            e.state,
            role,
            e.age.as_secs_f64(),
            e.cookie
        ));
    }
    out.push_str(&format!("{} tuples\n", entries.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn man_pages_and_completions_are_generated_for_every_command() {
        let dir = std::env::temp_dir().join(format!("sockwarden-gen-{}", std::process::id()));
        let written = generate(&dir).expect("generate");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "sockwarden.1",
            "sockwarden-run.1",
            "sockwarden-reload.1",
            "sockwarden-detach.1",
            "sockwarden.bash",
            "_sockwarden",
            "sockwarden.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let run = std::fs::read_to_string(dir.join("man1/sockwarden-run.1")).unwrap();
        assert!(run.contains("take\\-over"), "{run}");
        let bash = std::fs::read_to_string(dir.join("completions/sockwarden.bash")).unwrap();
        assert!(bash.contains("reload") && bash.contains("--take-over"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        use std::ffi::OsStr;
        let cases = [
            (true, None, true),
            (false, None, false),
            (true, Some("1"), false),
            (true, Some(""), true),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                colour(terminal, no_color.map(OsStr::new)),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_build_date() {
        let (version, rest) = VERSION.split_once(" (commit ").expect("commit");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        let (commit, rest) = rest.split_once(", built ").expect("build date");
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{commit}"
        );
        let date = rest.strip_suffix(')').expect(")");
        assert!(
            date == "unknown" || (date.len() == 10 && date.as_bytes()[4] == b'-'),
            "{date}"
        );
    }

    #[test]
    fn detach_says_what_it_removed_or_that_there_was_nothing() {
        let pin = Path::new("/sys/fs/bpf/sockwarden");
        assert_eq!(
            detach_report(pin, &crate::bpf::Detached::default()),
            "nothing to detach: no pins under /sys/fs/bpf/sockwarden (no sockwarden enforcement from that pin path)\n"
        );
        let d = crate::bpf::Detached {
            links: vec!["sw_connect4".into(), "sw_connect6".into()],
            dirs: vec![
                PathBuf::from("/sys/fs/bpf/sockwarden-previous-1"),
                PathBuf::from("/sys/fs/bpf/sockwarden"),
            ],
        };
        assert_eq!(
            detach_report(pin, &d),
            "removed pins under /sys/fs/bpf/sockwarden-previous-1\n\
             removed pins under /sys/fs/bpf/sockwarden\n\
             detached 2 links (each took its program off the cgroup): sw_connect4, sw_connect6\n"
        );
    }
}
