//! `sockwarden run`: wires configuration, kernel, proxy and admin together.
//! On the way out it drains the proxy and leaves the kernel side in place:
//! enforcement outlives the process (fail closed) until the next start takes
//! it over or `sockwarden detach` removes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::admin::{self, AdminState};
use crate::bpf::{Kernel, Programs, ProxyTarget, StaticPolicy};
use crate::cgroup::{self, Watcher};
use crate::config::Config;
use crate::notify::{self, Notifier};
use crate::policy::{kernel::rule_entries, PolicySet};
use crate::proxy::{default_max_connections, nofile_limit, KernelState, Proxy, ProxySettings};

/// How often expired TIME_WAIT entries are removed from the tuple map.
const TUPLE_EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} {addr}"))
}

/// Runs until SIGTERM or SIGINT, telling systemd through `notifier`.
pub async fn run(config: Config, notifier: Option<Notifier>) -> anyhow::Result<()> {
    let policies = Arc::new(PolicySet::compile(&config));
    for w in policies.warnings() {
        tracing::warn!("{w}");
    }
    let root = cgroup::cgroup2_root(config.bpf.cgroup_root.as_deref())?;
    let own = cgroup::own_cgroup()?;
    let named: Vec<_> = policies
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.cgroup.clone()))
        .collect();
    cgroup::check_not_self_enforced(&own, &named)?;

    // A kernel without what the programs need is refused in one sentence.
    crate::features::require(&crate::features::probe())?;
    // Before anything else that could collide with a running instance.
    let lock = crate::bpf::lock_pin_path(&config.bpf.pin_path)?;
    let prometheus = crate::metrics::install().context("installing the metrics recorder")?;
    let log =
        AccessLog::open(config.access_log.path.as_deref()).context("opening the access log")?;
    let tls = crate::tls::TlsContext::from_config(&config)?;
    if let Some(up) = &tls.upstream {
        let r = up.roots();
        tracing::info!(
            roots = r.loaded,
            skipped = r.skipped,
            errors = ?r.errors,
            "upstream TLS roots loaded"
        );
        match tls.ktls {
            crate::tls::ktls::Ktls::On => tracing::info!(
                "kTLS: on (the kernel encrypts intercepted and originated connections; bodies are spliced)"
            ),
            crate::tls::ktls::Ktls::Off(why) => tracing::info!(
                reason = why.as_str(),
                "kTLS: off (rustls encrypts in userspace; TLS bodies are copied)"
            ),
        }
    }

    // Listeners first: a taken address fails before the kernel is touched.
    let listener = bind(config.proxy.listen, "proxy.listen").await?;
    let listener_v6 = match config.proxy.listen_v6 {
        Some(a) => Some(bind(a, "proxy.listen_v6").await?),
        None => None,
    };
    let admin_listener = bind(config.admin.listen, "admin.listen").await?;

    // The return path for preserve modes before the kernel is touched: a
    // start that cannot set it up leaves nothing attached.
    let transparent = policies
        .policies
        .iter()
        .flat_map(|p| &p.rules)
        .any(|r| r.upstream.source.is_transparent());
    let mut return_path = if transparent {
        Some(
            crate::transparent::ReturnPath::install(&config.transparent)
                .context("setting up the return path for upstream.source preserve modes")?,
        )
    } else {
        None
    };
    let target = ProxyTarget {
        v4: config.proxy.listen,
        v6: config.proxy.listen_v6.unwrap_or(config.proxy.listen),
    };
    // Whether AF_PACKET can be refused here, probed once: it decides both
    // whether the LSM program is loaded and what the CAP_NET_RAW watch says.
    // (The program probe parses the kernel's BTF: off the async workers.)
    let packet_open = tokio::task::spawn_blocking(crate::status::packet_door)
        .await
        .unwrap_or_else(|e| Some(format!("probing the BPF LSM stopped: {e}")));
    let programs = Programs {
        proxy: target,
        sockmap: config
            .forwarding
            .sockmap()
            .then(crate::proxy::upstream::own_netns_cookie),
        egress_wall: !config.testing.skip_egress_wall,
        packet_lsm: packet_open.is_none(),
        exclusive: !config.testing.allow_other_enforcers,
    };
    let kernel = match Kernel::load(
        lock,
        &config.bpf.pin_path,
        &root,
        &programs,
        StaticPolicy {
            rules: &rule_entries(&policies),
            cgroups: &cgroup::present(&root, &policies),
            limits: &policies
                .policies
                .iter()
                .map(|p| p.max_connections)
                .collect::<Vec<_>>(),
        },
    ) {
        Ok(k) => k,
        Err(e) => {
            if let Some(rp) = return_path.as_mut() {
                rp.remove();
            }
            return Err(e.into());
        }
    };
    tracing::info!(
        pin_path = %config.bpf.pin_path.display(),
        cgroup_root = %root.display(),
        taken_over = kernel.taken_over,
        "eBPF programs attached"
    );
    // AF_PACKET where the BPF LSM cannot refuse it: warnings and gauges
    // (the task ends with the runtime).
    tokio::spawn(crate::status::watch_net_raw(
        Arc::clone(&policies),
        root.clone(),
        packet_open,
    ));
    let result = serve(
        &config,
        &root,
        &kernel,
        policies,
        prometheus,
        (log, tls),
        listener,
        listener_v6,
        admin_listener,
        notifier.as_ref(),
    )
    .await;
    if let Some(mut rp) = return_path {
        rp.remove();
    }
    drop(kernel);
    tracing::info!(
        pin_path = %config.bpf.pin_path.display(),
        "stopped; enforcement stays in place: connects that need the proxy are refused and L4 rules apply until the next start takes over (`sockwarden detach` removes it)"
    );
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    config: &Config,
    root: &std::path::Path,
    kernel: &Kernel,
    policies: Arc<PolicySet>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    (log, tls): (AccessLog, crate::tls::TlsContext),
    listener: TcpListener,
    listener_v6: Option<TcpListener>,
    admin_listener: TcpListener,
    notifier: Option<&Notifier>,
) -> anyhow::Result<()> {
    let maps = kernel.maps();
    let mut watcher = Watcher::new(root, &policies, Arc::clone(&maps));
    watcher.sync();
    let watcher_task = tokio::spawn(watcher.run());
    crate::events::spawn(&maps, Arc::clone(&policies), config, log.clone())?;
    // TIME_WAIT entries leave the tuple map once the period is over.
    let expiry_maps = Arc::clone(&maps);
    let expiry_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TUPLE_EXPIRY_INTERVAL);
        loop {
            tick.tick().await;
            let n = expiry_maps.expire_tuples();
            if n > 0 {
                crate::metrics::tuples_expired(n);
            }
        }
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let state = AdminState {
        prometheus,
        ready: Arc::clone(&ready),
        config: Arc::new(serde_json::to_value(config).context("serializing the configuration")?),
        kernel: Some((Arc::clone(&maps), Arc::clone(&policies))),
    };
    let admin_task = tokio::spawn(admin::serve(admin_listener, state, shutdown_rx.clone()));

    let status = notify::enforcing(policies.policies.len(), config.proxy.listen);
    let kernel_state: Arc<dyn KernelState> = maps;
    let max_connections = connection_limit(config.proxy.max_connections);
    let proxy = Proxy::new(
        policies,
        kernel_state,
        log,
        ProxySettings {
            client_idle_timeout: config.proxy.client_idle_timeout,
            request_head_timeout: config.proxy.request_head_timeout,
            handshake_timeout: config.tls.handshake_timeout,
            max_connections,
            skip_tuple_check: config.testing.skip_tuple_check,
            pipes: config.forwarding.pipe_sizes(),
            sockmap: config.forwarding.sockmap(),
        },
        tls,
    );
    let mut tasks = vec![tokio::spawn(
        Arc::clone(&proxy).serve(listener, shutdown_rx.clone()),
    )];
    if let Some(l) = listener_v6 {
        tasks.push(tokio::spawn(
            Arc::clone(&proxy).serve(l, shutdown_rx.clone()),
        ));
    }
    ready.store(true, Ordering::Release);
    notifier.inspect(|n| n.ready(&status));
    tracing::info!(listen = %config.proxy.listen, admin = %config.admin.listen, "ready");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut watcher_task = watcher_task;
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: live reload is not built yet; the configuration in force stays, whole (restart to apply a new one)"
            ),
            r = &mut watcher_task => {
                ready.store(false, Ordering::Release);
                let _ = shutdown_tx.send(true);
                return match r {
                    Ok(Err(e)) => Err(e).context("cgroup watcher"),
                    _ => Err(anyhow::anyhow!("cgroup watcher stopped")),
                };
            }
        }
    };
    tracing::info!(signal = why, drain_timeout = ?config.proxy.drain_timeout, "shutting down: draining");
    notifier.inspect(|n| n.stopping(&format!("stopping ({why}): draining connections")));
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let drained = proxy.drain(config.proxy.drain_timeout).await;
    tracing::info!(
        finished = drained.finished,
        cut = drained.cut,
        deadline = ?config.proxy.drain_timeout,
        "connections drained"
    );
    let _ = admin_task.await;
    expiry_task.abort();
    Ok(())
}

/// `proxy.max_connections`, or the default derived from RLIMIT_NOFILE;
/// logged either way, with a warning when the fd limit cannot hold it.
fn connection_limit(configured: Option<u32>) -> usize {
    let nofile = match nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "reading RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    let (max, from) = match configured {
        Some(n) => (n as usize, "proxy.max_connections"),
        None => (
            default_max_connections(nofile),
            "derived from RLIMIT_NOFILE",
        ),
    };
    tracing::info!(
        max_connections = max,
        rlimit_nofile = nofile,
        from,
        "connection limit"
    );
    if max as u64 >= nofile {
        tracing::warn!(
            max_connections = max,
            rlimit_nofile = nofile,
            "max_connections is at least RLIMIT_NOFILE: accept() will fail with EMFILE before the limit is reached"
        );
    }
    max
}
