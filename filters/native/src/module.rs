//! The module's filters: the role a filter configuration names, the per-worker state
//! the roles share, and the start-up self-check. Safe code only: [`crate::abi`] hands in
//! handles that are valid for the hook at hand.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use waypoint_core::PluginConfig;
use waypoint_core::roles::{self, RequestState};
use waypoint_core::worker::Worker;

use crate::abi::{self, Attribute, ConfigBeingCreated, LogLevel, Stream};
use crate::envoy::{self, Envoy, MetricIds};

use waypoint_core::contract::{
    ROLE_DOWNSTREAM as DOWNSTREAM, ROLE_NOOP as NOOP, ROLE_STATS as STATS, ROLE_UPSTREAM as UPSTREAM,
};

enum Role {
    Downstream(roles::Downstream),
    Upstream(roles::Upstream),
    Stats(roles::Stats),
    Noop,
}

/// One filter configuration: its role, the plugin configuration, its metric ids.
pub struct Config {
    role: Role,
    plugin: Option<PluginConfig>,
    metrics: MetricIds,
}

fn refuse(filter: &str, why: &str) {
    abi::log(LogLevel::Error, &format!("waypoint native module refuses filter {filter:?}: {why}"));
}

/// Builds a filter configuration; `None` (with one log line) refuses it, and Envoy
/// rejects the configuration.
pub fn new_config(name: &[u8], json: &[u8], creating: &ConfigBeingCreated<'_>) -> Option<Config> {
    let name = String::from_utf8_lossy(name);
    if name == NOOP {
        return Some(Config { role: Role::Noop, plugin: None, metrics: MetricIds::default() });
    }
    let plugin = match PluginConfig::from_json(json) {
        Ok(plugin) => plugin,
        Err(error) => {
            refuse(&name, &format!("bad plugin configuration: {error}"));
            return None;
        }
    };
    let role = match name.as_ref() {
        DOWNSTREAM => Role::Downstream(roles::Downstream::new(plugin.clone())),
        UPSTREAM => Role::Upstream(roles::Upstream::new(plugin.clone())),
        STATS => Role::Stats(roles::Stats::new(plugin.clone())),
        other => {
            refuse(other, &format!("unknown filter name (expected {DOWNSTREAM}, {UPSTREAM}, {STATS} or {NOOP})"));
            return None;
        }
    };
    // Self-check, half one: Envoy defines metrics with labels only now, at creation.
    let metrics = match envoy::define_metrics(creating, matches!(role, Role::Upstream(_))) {
        Ok(metrics) => metrics,
        Err(why) => {
            refuse(
                &name,
                &format!("{why}; this Envoy is not the 1.40 this module's ABI declarations were written for"),
            );
            return None;
        }
    };
    Some(Config { role, plugin: Some(plugin), metrics })
}

/// One stream, in its configuration's role.
pub enum Filter {
    /// A noop configuration, or a worker whose self-check failed.
    Pass,
    Downstream,
    Upstream {
        tunnel: Option<u64>,
    },
    Stats {
        state: RequestState,
        started: Instant,
    },
}

thread_local! {
    /// The worker's state, shared by the three roles' filters on this Envoy worker
    /// thread (Envoy runs a stream's filters, and the internal connections it opens,
    /// on one worker).
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// The self-check's verdict on this worker, once made.
    static CHECKED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Runs `f` on the worker state; does nothing if it is missing or busy.
fn with_worker<T: Default>(f: impl FnOnce(&mut Worker) -> T) -> T {
    WORKER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => slot.as_mut().map(f).unwrap_or_default(),
        Err(_) => T::default(),
    })
}

/// Self-check, half two, on a worker's first stream: one attribute read that every
/// stream has. A failure disables the module on that worker (traffic passes
/// unlabelled) with one log line.
fn worker_ready(config: &Config, stream: Stream<'_>) -> bool {
    if let Some(verdict) = CHECKED.get() {
        return verdict;
    }
    let verdict = stream.attribute_int(Attribute::ConnectionId).is_some();
    CHECKED.set(Some(verdict));
    if !verdict {
        abi::log(
            LogLevel::Error,
            "waypoint native module refuses to run on this worker: reading the attribute connection.id failed; \
             this Envoy is not the 1.40 this module's ABI declarations were written for",
        );
        return false;
    }
    if let Some(plugin) = &config.plugin {
        let mut worker = Worker::new(&plugin.limits);
        worker.announce_build(&Envoy::new(stream, &config.metrics));
        WORKER.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                *slot = Some(worker);
            }
        });
    }
    true
}

pub fn new_filter(config: &Config, stream: Option<Stream<'_>>) -> Filter {
    if matches!(config.role, Role::Noop) {
        return Filter::Pass;
    }
    let Some(stream) = stream else { return Filter::Pass };
    if !worker_ready(config, stream) {
        return Filter::Pass;
    }
    match config.role {
        Role::Downstream(_) => Filter::Downstream,
        Role::Upstream(_) => Filter::Upstream { tunnel: None },
        Role::Stats(_) => Filter::Stats { state: RequestState::default(), started: Instant::now() },
        Role::Noop => Filter::Pass,
    }
}

impl Filter {
    pub fn on_request_headers(&mut self, config: &Config, stream: Stream<'_>) {
        let host = Envoy::new(stream, &config.metrics);
        host.flush_deferred();
        match (self, &config.role) {
            (Filter::Downstream, Role::Downstream(role)) => with_worker(|w| role.on_connect_request(&host, w)),
            (Filter::Upstream { tunnel }, Role::Upstream(role)) => {
                *tunnel = with_worker(|w| role.on_connect_request(&host, w));
            }
            (Filter::Stats { state, .. }, Role::Stats(role)) => {
                with_worker(|w| role.on_request_headers(&host, w, state));
            }
            _ => {}
        }
    }

    pub fn on_response_headers(&mut self, config: &Config, stream: Stream<'_>) {
        let host = Envoy::new(stream, &config.metrics);
        match (self, &config.role) {
            (Filter::Downstream, Role::Downstream(role)) => with_worker(|w| role.on_connect_response(&host, w)),
            (Filter::Upstream { tunnel: Some(tunnel) }, Role::Upstream(role)) => {
                with_worker(|w| role.on_connect_response(&host, w, *tunnel));
            }
            (Filter::Stats { state, .. }, Role::Stats(role)) => {
                with_worker(|w| role.on_response_headers(&host, w, state));
            }
            _ => {}
        }
    }

    pub fn on_response_trailers(&mut self, config: &Config, stream: Stream<'_>) {
        if let (Filter::Stats { state, .. }, Role::Stats(role)) = (self, &config.role) {
            let host = Envoy::new(stream, &config.metrics);
            with_worker(|w| role.on_response_trailers(&host, w, state));
        }
    }

    /// The stream is over (Envoy calls this before the access logs): the stats role
    /// emits its metrics.
    pub fn on_stream_complete(&mut self, config: &Config, stream: Stream<'_>) {
        if let (Filter::Stats { state, started }, Role::Stats(role)) = (self, &config.role) {
            let host = Envoy::ending(stream, &config.metrics, *started);
            host.flush_deferred();
            with_worker(|w| {
                role.on_log(&host, w, state);
                role.on_done(w, state);
            });
        }
    }
}

/// The stream's filter is gone: the tunnel it carried closes, the peers it held are free.
pub fn destroy_filter(config: &Config, filter: Filter) {
    match (filter, &config.role) {
        (Filter::Upstream { tunnel: Some(tunnel) }, Role::Upstream(role)) => with_worker(|w| role.on_done(w, tunnel)),
        (Filter::Stats { mut state, .. }, Role::Stats(role)) => with_worker(|w| role.on_done(w, &mut state)),
        _ => {}
    }
}
