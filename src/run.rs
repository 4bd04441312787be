//! `sockwarden run`: wires configuration, kernel, proxy and admin together.
//! On the way out it drains the proxy and leaves the kernel side in place:
//! enforcement outlives the process (fail closed) until the next start takes
//! it over or `sockwarden detach` removes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::accesslog::AccessLog;
use crate::admin::{self, AdminState, ReloadReply};
use crate::bpf::{Kernel, Maps, Programs, ProxyTarget, StaticPolicy};
use crate::cgroup::{self, CgroupError, Watcher};
use crate::config::Config;
use crate::live::Live;
use crate::metrics::ReloadResult;
use crate::notify::{self, Notifier};
use crate::policy::{assign_ids, kernel::rule_entries, PolicyId, PolicySet};
use crate::proxy::{default_max_connections, nofile_limit, KernelState, Proxy, ProxySettings};
use crate::reload::{self as decide, ReloadError};

/// How often expired TIME_WAIT entries are removed from the tuple map.
const TUPLE_EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A listening socket handed over by the instance this one takes over from.
fn adopt(l: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .context("adopting a handed-over listening socket")
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} {addr}"))
}

/// Runs until SIGTERM or SIGINT, telling systemd through `notifier`;
/// SIGHUP (or `POST /reload`) re-reads `path`.
pub async fn run(
    config: Config,
    (path, take_over): (PathBuf, bool),
    notifier: Option<Notifier>,
) -> anyhow::Result<()> {
    // An upgrade: the running instance's sockets and policy ids, once it
    // has stopped accepting and given up the pin path.
    let mut inherited = None;
    // When the running instance stopped accepting, for the log.
    let mut paused = None;
    if take_over {
        let mut i = crate::handoff::request(&config.bpf.pin_path).context("taking over")?;
        if let Some(why) = i.offer.mismatch(
            config.proxy.listen,
            config.proxy.listen_v6,
            config.admin.listen,
        ) {
            anyhow::bail!("taking over: {why}");
        }
        i.wait_released().context("taking over")?;
        paused = Some(std::time::Instant::now());
        tracing::info!(
            pid = i.offer.pid,
            "the running sockwarden handed over its listening sockets and stopped accepting"
        );
        inherited = Some(i);
    }
    let names: Vec<&str> = config
        .policies
        .iter()
        .map(|p| p.name.value.as_str())
        .collect();
    let ids = match &inherited {
        // Its policies keep their ids (the open-connection counts and the
        // counters in the shared maps are by id).
        Some(i) => {
            let previous: Vec<(&str, PolicyId)> = i
                .offer
                .policies
                .iter()
                .map(|(n, id)| (n.as_str(), *id))
                .collect();
            assign_ids(&previous, &names, |_| false).context("taking over: no policy id is free")?
        }
        None => (0..names.len() as PolicyId).collect(),
    };
    let policies = Arc::new(PolicySet::compile_with_ids(&config, &ids));
    // The policies whose counters start now: all of them, or on a take-over
    // those the running instance did not have.
    let handed: Option<Vec<PolicyId>> = inherited
        .as_ref()
        .map(|i| i.offer.policies.iter().map(|(_, id)| *id).collect());
    let new_ids: Vec<PolicyId> = ids
        .iter()
        .copied()
        .filter(|id| handed.as_ref().is_none_or(|h| !h.contains(id)))
        .collect();
    let start = if handed.is_some() {
        crate::bpf::Start::TakeOver
    } else {
        crate::bpf::Start::Fresh
    };
    for w in policies.warnings().into_iter().chain(config.lints(&path)) {
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
    let ktls_on = matches!(tls.ktls, crate::tls::ktls::Ktls::On);
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
    let (listener, listener_v6, admin_listener) = match inherited.take() {
        Some(i) => (
            adopt(i.listen)?,
            i.listen_v6.map(adopt).transpose()?,
            adopt(i.admin)?,
        ),
        None => (
            bind(config.proxy.listen, "proxy.listen").await?,
            match config.proxy.listen_v6 {
                Some(a) => Some(bind(a, "proxy.listen_v6").await?),
                None => None,
            },
            bind(config.admin.listen, "admin.listen").await?,
        ),
    };

    // The return path for preserve modes before the kernel is touched: a
    // start that cannot set it up leaves nothing attached.
    let mut return_path = if policies.needs_return_path() {
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
    let mut kernel = match Kernel::load(
        lock,
        (&config.bpf.pin_path, start),
        &root,
        &programs,
        StaticPolicy {
            rules: &rule_entries(&policies),
            cgroups: &cgroup::present(&root, &policies),
            limits: &policies.limits(),
            new_ids: &new_ids,
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
    let config_value = serde_json::to_value(&config).context("serializing the configuration")?;
    // What `auto` and the unset fields came to on this node.
    let resolved = serde_json::json!({
        "cgroup_root": root.display().to_string(),
        "forwarding_engine": config.forwarding.resolved_engine(),
        "ktls": ktls_on,
    });
    let policies = Live::new(policies);
    let mut reloader = Reloader {
        path,
        root,
        own,
        programs,
        transparent: return_path.is_some(),
        generation: 1,
        dump: Live::new(Arc::new(decide::dump(
            &config_value,
            1,
            &policies.get().ids(),
            &resolved,
        ))),
        resolved,
        config: config_value,
        maps: Live::new(kernel.maps()),
        watcher: None,
        // AF_PACKET where the BPF LSM cannot refuse it: warnings and gauges.
        net_raw: None,
        packet_open,
        policies,
        listen: config.proxy.listen,
        listen_v6: config.proxy.listen_v6,
        admin: config.admin.listen,
        notifier,
        paused,
    };
    reloader.watch();
    let result = serve(
        &config,
        (&mut kernel, &mut reloader),
        prometheus,
        (log, tls),
        listener,
        listener_v6,
        admin_listener,
    )
    .await;
    match result {
        // The process that took over owns the pins, the return path and
        // the sockets now.
        Ok(Stopped::HandedOver) => {
            tracing::info!("handed over: the new sockwarden enforces and accepts");
            Ok(())
        }
        result => {
            if let Some(mut rp) = return_path {
                rp.remove();
            }
            drop(kernel);
            tracing::info!(
                pin_path = %config.bpf.pin_path.display(),
                "stopped; enforcement stays in place: connects that need the proxy are refused and L4 rules apply until the next start takes over (`sockwarden detach` removes it)"
            );
            result.map(|_| ())
        }
    }
}

/// How serving ended.
enum Stopped {
    /// SIGTERM or SIGINT.
    Signal,
    /// A new sockwarden took over (`run --take-over`).
    HandedOver,
}

/// Listens for a take-over on the handoff socket of `pin_path` and passes
/// each connection to the serving loop. The task ends with the runtime.
fn listen_for_takeover(
    pin_path: &std::path::Path,
) -> anyhow::Result<mpsc::Receiver<std::os::unix::net::UnixStream>> {
    let path = crate::handoff::socket_path(pin_path);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the handoff socket {}", path.display()))?;
    // Only the owner (root, or the unit's user) may take over.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting the handoff socket {}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(stream) = stream
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s))
            else {
                continue;
            };
            if tx.send(stream).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// What a reload needs besides the kernel: what `run` started with, and
/// the values in force that it swaps.
struct Reloader {
    /// The configuration file.
    path: PathBuf,
    root: PathBuf,
    /// sockwarden's own cgroup (no policy may enforce it).
    own: String,
    programs: Programs,
    /// Whether the return path of preserve modes is set up.
    transparent: bool,
    /// The configuration in force, serialized, and its generation.
    config: serde_json::Value,
    generation: u64,
    dump: Live<serde_json::Value>,
    /// What `auto` and the unset fields came to (`/config_dump`'s `resolved`).
    resolved: serde_json::Value,
    policies: Live<PolicySet>,
    maps: Live<Maps>,
    /// The cgroup watcher of the policies in force.
    watcher: Option<JoinHandle<Result<(), CgroupError>>>,
    /// The CAP_NET_RAW watch of the policies in force.
    net_raw: Option<JoinHandle<()>>,
    packet_open: Option<String>,
    /// `proxy.listen` (for the STATUS= line and a take-over's offer), and
    /// the other listening addresses a take-over is offered.
    listen: SocketAddr,
    listen_v6: Option<SocketAddr>,
    admin: SocketAddr,
    notifier: Option<Notifier>,
    /// On a take-over, when the instance taken over stopped accepting.
    paused: Option<std::time::Instant>,
}

impl Reloader {
    /// (Re)starts the watchers of the policies in force: the cgroup
    /// watcher (policy_cgroups of this generation) and the CAP_NET_RAW watch.
    fn watch(&mut self) {
        if let Some(task) = self.net_raw.take() {
            task.abort();
        }
        if let Some(task) = self.watcher.take() {
            task.abort();
        }
        let policies = self.policies.get();
        let mut watcher = Watcher::new(&self.root, &policies, self.maps.get());
        watcher.sync();
        self.watcher = Some(tokio::spawn(watcher.run()));
        self.net_raw = Some(tokio::spawn(crate::status::watch_net_raw(
            policies,
            self.root.clone(),
            self.packet_open.clone(),
        )));
    }

    /// Re-reads the configuration and puts it in force whole (the kernel's
    /// generation first, then the proxy's policies), or leaves the one in
    /// force whole and says why.
    fn reload(&mut self, kernel: &mut Kernel) -> Result<String, ReloadError> {
        let invalid = |m: String| ReloadError::new(ReloadResult::Invalid, m);
        let config = Config::load(&self.path).map_err(|e| invalid(e.to_string()))?;
        let value = serde_json::to_value(&config)
            .map_err(|e| invalid(format!("serializing the configuration: {e}")))?;
        if let Some(e) = decide::rejection(&decide::restart_only_changes(&self.config, &value)) {
            return Err(e);
        }
        let old = self.policies.get();
        let maps = self.maps.get();
        let names: Vec<&str> = config
            .policies
            .iter()
            .map(|p| p.name.value.as_str())
            .collect();
        let ids = assign_ids(&old.ids(), &names, |id| maps.in_flight(id) > 0).ok_or_else(|| {
            ReloadError::new(
                ReloadResult::Rejected,
                "no policy id is free (removed policies still hold redirected connections): try again once they close",
            )
        })?;
        let set = PolicySet::compile_with_ids(&config, &ids);
        // A rule's own source or the `upstream.source` it inherits.
        if set.needs_return_path() && !self.transparent {
            return Err(ReloadError::new(
                ReloadResult::Rejected,
                "upstream.source preserve modes need the return path that is set up at start: restart to add the first one",
            ));
        }
        let named: Vec<_> = set
            .policies
            .iter()
            .map(|p| (p.name.clone(), p.cgroup.clone()))
            .collect();
        cgroup::check_not_self_enforced(&self.own, &named).map_err(|e| invalid(e.to_string()))?;
        for w in set.warnings() {
            tracing::warn!("{w}");
        }
        let new_ids: Vec<PolicyId> = ids
            .iter()
            .copied()
            .filter(|id| old.get(*id).is_none())
            .collect();
        let static_policy = StaticPolicy {
            rules: &rule_entries(&set),
            cgroups: &cgroup::present(&self.root, &set),
            limits: &set.limits(),
            new_ids: &new_ids,
        };
        tokio::task::block_in_place(|| kernel.reload(&self.programs, static_policy)).map_err(
            |e| {
                ReloadError::new(
                    ReloadResult::Failed,
                    format!("the kernel refused the new generation: {e}"),
                )
            },
        )?;
        self.generation += 1;
        let set = Arc::new(set);
        self.policies.set(Arc::clone(&set));
        self.maps.set(kernel.maps());
        self.dump.set(Arc::new(decide::dump(
            &value,
            self.generation,
            &set.ids(),
            &self.resolved,
        )));
        self.config = value;
        self.watch();
        Ok(format!(
            "reloaded: generation {}, {}, {} policies ({})\n",
            self.generation,
            decide::config_hash(&self.config),
            set.policies.len(),
            names.join(", ")
        ))
    }

    /// Answers a take-over request on `stream`: hands over the listening
    /// sockets `fds` and the policy ids; true once the new process has
    /// accepted (then this one stops accepting and gives up the pins).
    fn offer(&self, stream: &std::os::unix::net::UnixStream, fds: &[std::os::fd::RawFd]) -> bool {
        let mut stream_r = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "take-over: cloning the handoff connection");
                return false;
            }
        };
        if !crate::handoff::read_request(&mut stream_r) {
            tracing::warn!("take-over: not a take-over request on the handoff socket; ignored");
            return false;
        }
        let policies = self.policies.get();
        let offer = crate::handoff::Offer {
            pid: std::process::id(),
            listen: self.listen,
            listen_v6: self.listen_v6,
            admin: self.admin,
            policies: policies
                .ids()
                .into_iter()
                .map(|(n, id)| (n.to_string(), id))
                .collect(),
        };
        if let Err(e) = crate::handoff::send_offer(stream, &offer, fds) {
            tracing::warn!(error = %e, "take-over: handing over the listening sockets");
            return false;
        }
        let accepted = crate::handoff::accepted(stream);
        if !accepted {
            tracing::warn!("take-over: the new sockwarden did not accept the sockets; this one goes on serving");
        }
        accepted
    }

    /// READY=1 with the one-line status of what is in force.
    fn notify_ready(&self) {
        if let Some(n) = &self.notifier {
            n.ready(&notify::enforcing(
                self.policies.get().policies.len(),
                self.listen,
            ));
        }
    }

    /// A reload, logged, counted and told to systemd (RELOADING=1, then
    /// READY=1 whatever the result: the configuration in force serves),
    /// and its answer for `sockwarden reload`.
    fn reload_logged(&mut self, kernel: &mut Kernel, why: &str) -> ReloadReply {
        if let Some(n) = &self.notifier {
            n.reloading(&format!("reloading the configuration ({why})"));
        }
        let result = self.reload(kernel);
        self.notify_ready();
        match result {
            Ok(text) => {
                crate::metrics::config_reload(ReloadResult::Ok);
                tracing::info!(trigger = why, generation = self.generation, hash = %decide::config_hash(&self.config), "configuration reloaded");
                (axum::http::StatusCode::OK, text)
            }
            Err(e) => {
                crate::metrics::config_reload(e.result);
                tracing::error!(
                    trigger = why,
                    result = e.result.label(),
                    "reload: {}; the configuration in force is unchanged",
                    e.message
                );
                (e.status(), e.text())
            }
        }
    }
}

async fn serve(
    config: &Config,
    (kernel, reloader): (&mut Kernel, &mut Reloader),
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    (log, tls): (AccessLog, crate::tls::TlsContext),
    listener: TcpListener,
    listener_v6: Option<TcpListener>,
    admin_listener: TcpListener,
) -> anyhow::Result<Stopped> {
    let maps = kernel.maps();
    crate::events::spawn(&maps, reloader.policies.clone(), config, log.clone())?;
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

    crate::metrics::config_reloads_init();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<ReloadReply>>(4);
    let ready = Arc::new(AtomicBool::new(false));
    // The state maps (original destinations, tuples, socket roles) outlive
    // every reload: the proxy keeps the handles it starts with.
    let kernel_state: Arc<dyn KernelState> = maps;
    let max_connections = connection_limit(config.proxy.max_connections);
    let proxy = Proxy::new(
        reloader.policies.clone(),
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
    let state = AdminState {
        prometheus,
        ready: Arc::clone(&ready),
        config: reloader.dump.clone(),
        kernel: Some((reloader.maps.clone(), reloader.policies.clone())),
        reload: Some(reload_tx),
        proxy: Some(Arc::clone(&proxy)),
    };
    // What a take-over gets, in the handoff's order: proxy, proxy v6, admin
    // (valid while the tasks that own them run: until a take-over stops them).
    let fds: Vec<std::os::fd::RawFd> =
        [Some(&listener), listener_v6.as_ref(), Some(&admin_listener)]
            .into_iter()
            .flatten()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
    let admin_task = tokio::spawn(admin::serve(admin_listener, state, shutdown_rx.clone()));

    let mut tasks = vec![tokio::spawn(
        Arc::clone(&proxy).serve(listener, shutdown_rx.clone()),
    )];
    if let Some(l) = listener_v6 {
        tasks.push(tokio::spawn(
            Arc::clone(&proxy).serve(l, shutdown_rx.clone()),
        ));
    }
    ready.store(true, Ordering::Release);
    reloader.notify_ready();
    tracing::info!(listen = %config.proxy.listen, admin = %config.admin.listen, "ready");
    if let Some(t) = reloader.paused.take() {
        tracing::info!(
            window_ms = t.elapsed().as_millis() as u64,
            "accepting on the handed-over sockets: for this long no connection was accepted (they waited in the sockets' backlog)"
        );
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let handoff_path = crate::handoff::socket_path(&config.bpf.pin_path);
    let mut takeovers = listen_for_takeover(&config.bpf.pin_path)?;
    let mut handed = None;
    let why = loop {
        let watcher = async {
            match reloader.watcher.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                reloader.reload_logged(kernel, "SIGHUP");
            }
            Some(reply) = reload_rx.recv() => {
                let answer = reloader.reload_logged(kernel, "sockwarden reload");
                let _ = reply.send(answer);
            }
            Some(stream) = takeovers.recv() => {
                if tokio::task::block_in_place(|| reloader.offer(&stream, &fds)) {
                    handed = Some(stream);
                    break "a take-over";
                }
            }
            r = watcher => {
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
    if let Some(n) = &reloader.notifier {
        n.stopping(&format!("stopping ({why}): draining connections"));
    }
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&handoff_path);
    if let Some(stream) = &handed {
        // Nothing is accepted here any more: the pins are the new one's.
        kernel.release();
        if let Err(e) = crate::handoff::send_released(stream) {
            tracing::error!(error = %e, "telling the new sockwarden the pin lock is free");
        }
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
    Ok(if handed.is_some() {
        Stopped::HandedOver
    } else {
        Stopped::Signal
    })
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
