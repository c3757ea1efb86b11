//! The roots and stream contexts of the three roles.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use waypoint_core::PluginConfig;
use waypoint_core::roles::{self, RequestState};
use waypoint_core::worker::Worker;

use crate::abi;
use crate::envoy::{self, Envoy};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

thread_local! {
    /// The worker's state, shared by every root of this VM (one VM per worker).
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Runs `f` on the worker state; does nothing if it is missing or busy, so a
/// surprise degrades the metrics instead of panicking the VM.
fn with_worker<T: Default>(f: impl FnOnce(&mut Worker) -> T) -> T {
    WORKER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => slot.as_mut().map(f).unwrap_or_default(),
        Err(_) => T::default(),
    })
}

#[derive(Clone)]
enum Role {
    Downstream(Rc<roles::Downstream>),
    Upstream(Rc<roles::Upstream>),
    Stats(Rc<roles::Stats>),
}

#[derive(Default)]
struct Root {
    role: Option<Role>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let root_id = envoy::root_id();
        let config = match abi::plugin_configuration() {
            Ok(bytes) => PluginConfig::from_json(&bytes).map_err(|e| e.to_string()),
            Err(status) => Err(format!("cannot read the plugin configuration (status {})", status.0)),
        };
        let config = match config {
            Ok(config) => config,
            Err(error) => {
                abi::log_error(&format!("waypoint root {root_id:?} refuses to start: {error}"));
                return false;
            }
        };
        WORKER.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut()
                && slot.is_none()
            {
                let mut worker = Worker::new(&config.limits);
                worker.announce_build(&Envoy);
                *slot = Some(worker);
            }
        });
        self.role = match root_id.as_str() {
            "downstream" => Some(Role::Downstream(Rc::new(roles::Downstream::new(config)))),
            "upstream" => Some(Role::Upstream(Rc::new(roles::Upstream::new(config)))),
            "stats" => Some(Role::Stats(Rc::new(roles::Stats::new(config)))),
            other => {
                abi::log_error(&format!(
                    "waypoint refuses to start: unknown root_id {other:?} (expected downstream, upstream or stats)"
                ));
                None
            }
        };
        self.role.is_some()
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let filter = match self.role.clone()? {
            Role::Downstream(role) => Filter::Downstream(role),
            Role::Upstream(role) => Filter::Upstream { role, tunnel: None },
            Role::Stats(role) => Filter::Stats { role, state: RequestState::default() },
        };
        Some(Box::new(filter))
    }
}

/// One stream, in one of the three roles.
enum Filter {
    Downstream(Rc<roles::Downstream>),
    Upstream { role: Rc<roles::Upstream>, tunnel: Option<u64> },
    Stats { role: Rc<roles::Stats>, state: RequestState },
}

impl Context for Filter {
    fn on_done(&mut self) -> bool {
        match self {
            Filter::Upstream { role, tunnel: Some(tunnel) } => with_worker(|worker| role.on_done(worker, *tunnel)),
            Filter::Stats { role, state } => with_worker(|worker| role.on_done(worker, state)),
            Filter::Downstream(_) | Filter::Upstream { tunnel: None, .. } => {}
        }
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self {
            Filter::Downstream(role) => with_worker(|worker| role.on_connect_request(&Envoy, worker)),
            Filter::Upstream { role, tunnel } => {
                *tunnel = with_worker(|worker| role.on_connect_request(&Envoy, worker))
            }
            Filter::Stats { role, state } => with_worker(|worker| role.on_request_headers(&Envoy, worker, state)),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self {
            Filter::Downstream(role) => with_worker(|worker| role.on_connect_response(&Envoy, worker)),
            Filter::Upstream { role, tunnel: Some(tunnel) } => {
                with_worker(|worker| role.on_connect_response(&Envoy, worker, *tunnel))
            }
            Filter::Upstream { tunnel: None, .. } => {}
            Filter::Stats { role, state } => with_worker(|worker| role.on_response_headers(&Envoy, worker, state)),
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Filter::Stats { role, state } = self {
            with_worker(|worker| role.on_response_trailers(&Envoy, worker, state));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Filter::Stats { role, state } = self {
            with_worker(|worker| {
                role.on_log(&Envoy, worker, state);
                role.on_done(worker, state);
            });
        }
    }
}
