//! The driver: load a module, start it like Envoy does and run contexts through their life.

use std::collections::BTreeMap;
use std::time::Duration;

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, WasmParams, WasmResults};

use crate::abi::{Action, LogLevel, PeerType, property_path};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::state::{
    ContextKind, ContextState, Effect, Failure, ForeignFunction, HostState, LocalResponse, Metric, Metrics, SharedData,
};
use crate::{hostcalls, wasi};

/// A compiled module. Compile once and create many [`Vm`]s from it (compiling is the slow part).
#[derive(Clone)]
pub struct WasmModule {
    engine: Engine,
    module: Module,
    abi_version: String,
}

impl WasmModule {
    /// Compiles a wasm binary, or WAT text. Fails if the module exports no supported
    /// `proxy_abi_version_0_2_*` marker (Envoy refuses such modules too).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self> {
        let engine = Engine::new(&Config::new()).map_err(|e| Error::Compile(format!("{e:?}")))?;
        let module = Module::new(&engine, bytes.as_ref()).map_err(|e| Error::Compile(format!("{e:?}")))?;
        let abi_version = module
            .exports()
            .map(|e| e.name())
            .find(|n| *n == "proxy_abi_version_0_2_1" || *n == "proxy_abi_version_0_2_0")
            .ok_or(Error::MissingAbiVersion)?
            .trim_start_matches("proxy_abi_version_")
            .replace('_', ".");
        Ok(Self { engine, module, abi_version })
    }

    /// Reads and compiles a `.wasm` (or `.wat`) file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::new(std::fs::read(path)?)
    }

    /// The ABI version the module declares, e.g. `"0.2.1"`.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    /// `(module, name)` of every function the module imports.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.module.imports().map(|i| (i.module().to_string(), i.name().to_string())).collect()
    }
}

/// VM-wide settings (what Envoy's `vm_config` and the worker provide).
#[derive(Clone)]
pub struct VmConfig {
    /// `vm_config.vm_id`; visible as property `plugin_vm_id` and scopes shared queues.
    pub vm_id: String,
    /// `vm_config.configuration`, passed to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// What `proxy_get_log_level` answers (Envoy's default is info). All logs are recorded anyway.
    pub log_level: LogLevel,
    /// `vm_config.environment_variables`, for WASI `environ_get`.
    pub env: Vec<(String, String)>,
    /// Wall-clock time in ns since the epoch (fixed unless the test moves it).
    pub realtime_ns: u64,
    /// Seed of the deterministic WASI `random_get`.
    pub random_seed: u64,
    /// Shared data/queues; pass the same handle to several VMs to model worker threads.
    pub shared_data: SharedData,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            log_level: LogLevel::Info,
            env: Vec::new(),
            realtime_ns: 1_700_000_000_000_000_000,
            random_seed: 0x5eed,
            shared_data: SharedData::default(),
        }
    }
}

/// One instantiated proxy-wasm VM plus its mocked Envoy host.
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    next_context_id: u32,
    dead: Option<String>,
    abi_version: String,
}

impl Vm {
    /// Instantiates `module` and starts it as Envoy does: `_initialize` (then `main` if
    /// exported) or `_start`, with host calls restricted to logging, clock, random, args and env.
    pub fn new(module: &WasmModule, config: VmConfig) -> Result<Self> {
        let mut linker = Linker::new(&module.engine);
        hostcalls::add_to_linker(&mut linker).map_err(|e| Error::Instantiate(format!("{e:?}")))?;
        wasi::add_to_linker(&mut linker).map_err(|e| Error::Instantiate(format!("{e:?}")))?;
        let state = HostState {
            vm_id: config.vm_id,
            log_level: config.log_level,
            env: config.env,
            vm_configuration: config.vm_configuration,
            plugin_configuration: None,
            contexts: BTreeMap::new(),
            current: 0,
            effective: None,
            restricted: true,
            properties: BTreeMap::new(),
            effects: Vec::new(),
            metrics: Metrics::default(),
            shared: config.shared_data,
            foreign: Default::default(),
            failures: Vec::new(),
            vm_hostcalls: BTreeMap::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            panic_text: Vec::new(),
            realtime_ns: config.realtime_ns,
            monotonic_ns: 1_000_000_000,
            rng: config.random_seed,
            pending_done: Vec::new(),
        };
        let mut store = Store::new(&module.engine, state);
        let instance =
            linker.instantiate(&mut store, &module.module).map_err(|e| Error::Instantiate(format!("{e:?}")))?;
        let mut vm = Self { store, instance, next_context_id: 1, dead: None, abi_version: module.abi_version.clone() };
        if vm.has_export("_initialize") {
            vm.call::<(), ()>("_initialize", 0, ())?;
            vm.call::<(i32, i32), i32>("main", 0, (0, 0))?;
        } else {
            vm.call::<(), ()>("_start", 0, ())?;
        }
        vm.store.data_mut().restricted = false;
        Ok(vm)
    }

    /// The ABI version the module declared.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls export `name` on behalf of `context_id`. A missing export is `Ok(None)` (Envoy
    /// skips callbacks a module does not export). A trap kills the VM.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        context_id: u32,
        params: P,
    ) -> Result<Option<R>> {
        if let Some(reason) = &self.dead {
            return Err(Error::VmDead(reason.clone()));
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let typed = func
            .typed::<P, R>(&self.store)
            .map_err(|e| Error::BadExport { name: name.to_string(), message: e.to_string() })?;
        let st = self.store.data_mut();
        st.current = context_id;
        st.effective = None;
        st.panic_text.clear();
        let result = typed.call(&mut self.store, params);
        let st = self.store.data_mut();
        st.current = 0;
        st.effective = None;
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let panic = (!st.panic_text.is_empty()).then(|| st.panic_text.join("\n"));
                let trap = format!("{e:?}");
                self.dead = Some(format!("trap in {name}: {e}"));
                Err(Error::Trap { callback: name.to_string(), context_id, panic, trap })
            }
        }
    }

    fn call_action(&mut self, name: &'static str, id: u32, params: (i32, i32, i32)) -> Result<Action> {
        Ok(self.call::<_, i32>(name, id, params)?.map_or(Action::Continue, |v| Action::from(v as u32)))
    }

    fn call_action2(&mut self, name: &'static str, id: u32, params: (i32, i32)) -> Result<Action> {
        Ok(self.call::<_, i32>(name, id, params)?.map_or(Action::Continue, |v| Action::from(v as u32)))
    }

    fn ctx_mut(&mut self, id: u32, kind: ContextKind) -> Result<&mut ContextState> {
        let ctx = self.store.data_mut().contexts.get_mut(&id).ok_or(Error::UnknownContext(id))?;
        if ctx.kind != kind {
            return Err(Error::WrongContextKind { id, expected: kind.name(), actual: ctx.kind.name() });
        }
        Ok(ctx)
    }

    fn new_context(&mut self, root: u32, kind: ContextKind) -> Result<u32> {
        let root_id = self.ctx_mut(root, ContextKind::Root)?.root_id.clone();
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.store.data_mut().contexts.insert(id, ContextState::new(id, root, root_id, kind));
        self.call::<(i32, i32), ()>("proxy_on_context_create", id, (id as i32, root as i32))?;
        Ok(id)
    }

    // ---- root contexts -------------------------------------------------------------------

    /// Creates a root context for plugin `root_id` with its plugin configuration
    /// (`proxy_on_context_create(id, 0)`). Returns the new context id.
    pub fn create_root_context(&mut self, root_id: &str, plugin_configuration: impl Into<Vec<u8>>) -> Result<u32> {
        let id = self.next_context_id;
        self.next_context_id += 1;
        let mut ctx = ContextState::new(id, 0, root_id.to_string(), ContextKind::Root);
        ctx.plugin_configuration = plugin_configuration.into();
        self.store.data_mut().contexts.insert(id, ctx);
        self.with_plugin_configuration(id, |vm| {
            vm.call::<(i32, i32), ()>("proxy_on_context_create", id, (id as i32, 0))
        })?;
        Ok(id)
    }

    /// Runs `f` with the root's plugin configuration readable (Envoy exposes it during the
    /// root's create / vm_start / configure callbacks only).
    fn with_plugin_configuration<T>(&mut self, root: u32, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let config = self.ctx_mut(root, ContextKind::Root)?.plugin_configuration.clone();
        self.store.data_mut().plugin_configuration = Some(config);
        let result = f(self);
        self.store.data_mut().plugin_configuration = None;
        result
    }

    /// `proxy_on_vm_start(root, vm_configuration_size)`.
    pub fn on_vm_start(&mut self, root: u32) -> Result<bool> {
        let size = self.store.data().vm_configuration.len() as i32;
        let r = self.with_plugin_configuration(root, |vm| {
            vm.call::<(i32, i32), i32>("proxy_on_vm_start", root, (root as i32, size))
        })?;
        Ok(r.is_none_or(|v| v != 0))
    }

    /// `proxy_on_configure(root, plugin_configuration_size)` with the root's current configuration.
    pub fn on_configure(&mut self, root: u32) -> Result<bool> {
        let size = self.ctx_mut(root, ContextKind::Root)?.plugin_configuration.len() as i32;
        let r = self.with_plugin_configuration(root, |vm| {
            vm.call::<(i32, i32), i32>("proxy_on_configure", root, (root as i32, size))
        })?;
        Ok(r.is_none_or(|v| v != 0))
    }

    /// Replaces a root's plugin configuration (call [`Vm::on_configure`] afterwards to reconfigure).
    pub fn set_plugin_configuration(&mut self, root: u32, configuration: impl Into<Vec<u8>>) -> Result<()> {
        self.ctx_mut(root, ContextKind::Root)?.plugin_configuration = configuration.into();
        Ok(())
    }

    /// What Envoy does per plugin: create the root context, `on_vm_start`, `on_configure`.
    /// Either returning false is [`Error::Rejected`].
    pub fn start_root(&mut self, root_id: &str, plugin_configuration: impl Into<Vec<u8>>) -> Result<u32> {
        let id = self.create_root_context(root_id, plugin_configuration)?;
        let rejected = |callback| Error::Rejected { callback, context_id: id, root_id: root_id.to_string() };
        if !self.on_vm_start(id)? {
            return Err(rejected("proxy_on_vm_start"));
        }
        if !self.on_configure(id)? {
            return Err(rejected("proxy_on_configure"));
        }
        Ok(id)
    }

    /// `proxy_on_tick(root)`.
    pub fn on_tick(&mut self, root: u32) -> Result<()> {
        self.ctx_mut(root, ContextKind::Root)?;
        self.call::<i32, ()>("proxy_on_tick", root, root as i32)?;
        Ok(())
    }

    // ---- HTTP contexts -------------------------------------------------------------------

    /// Creates an HTTP context under `root` (`proxy_on_context_create(id, root)`).
    pub fn create_http_context(&mut self, root: u32) -> Result<u32> {
        self.new_context(root, ContextKind::Http)
    }

    /// Delivers request headers. They stay readable/writable until the callback returns
    /// `Continue` (or the module continues the stream), as in Envoy.
    pub fn on_request_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Http)?;
        let n = headers.len() as i32;
        ctx.request_headers = headers;
        ctx.live.request_headers = true;
        let action = self.call_action("proxy_on_request_headers", id, (id as i32, n, end_of_stream as i32))?;
        if action == Action::Continue {
            self.ctx_mut(id, ContextKind::Http)?.live.request_headers = false;
        }
        Ok(action)
    }

    /// Delivers a request body chunk. After a `Pause` (StopIterationAndBuffer) the next chunk
    /// is appended to the buffered body, as Envoy buffers it.
    pub fn on_request_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(id, true, chunk, end_of_stream)
    }

    /// Delivers request trailers.
    pub fn on_request_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Http)?;
        let n = trailers.len() as i32;
        ctx.request_trailers = trailers;
        ctx.live.request_trailers = true;
        let action = self.call_action2("proxy_on_request_trailers", id, (id as i32, n))?;
        if action == Action::Continue {
            self.ctx_mut(id, ContextKind::Http)?.live.request_trailers = false;
        }
        Ok(action)
    }

    /// Delivers response headers.
    pub fn on_response_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Http)?;
        let n = headers.len() as i32;
        ctx.response_headers = headers;
        ctx.live.response_headers = true;
        let action = self.call_action("proxy_on_response_headers", id, (id as i32, n, end_of_stream as i32))?;
        if action == Action::Continue {
            self.ctx_mut(id, ContextKind::Http)?.live.response_headers = false;
        }
        Ok(action)
    }

    /// Delivers a response body chunk (same buffering rule as requests).
    pub fn on_response_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(id, false, chunk, end_of_stream)
    }

    /// Delivers response trailers.
    pub fn on_response_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Http)?;
        let n = trailers.len() as i32;
        ctx.response_trailers = trailers;
        ctx.live.response_trailers = true;
        let action = self.call_action2("proxy_on_response_trailers", id, (id as i32, n))?;
        if action == Action::Continue {
            self.ctx_mut(id, ContextKind::Http)?.live.response_trailers = false;
        }
        Ok(action)
    }

    fn body(&mut self, id: u32, request: bool, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Http)?;
        let live = &mut ctx.live;
        let (buf, buffering, name) = if request {
            live.request_body = true;
            (&mut ctx.request_body, &mut live.buffering_request_body, "proxy_on_request_body")
        } else {
            live.response_body = true;
            (&mut ctx.response_body, &mut live.buffering_response_body, "proxy_on_response_body")
        };
        if !*buffering {
            buf.clear();
        }
        buf.extend_from_slice(chunk);
        *buffering = false;
        let size = buf.len() as i32;
        let action = self.call_action(name, id, (id as i32, size, end_of_stream as i32))?;
        let live = &mut self.ctx_mut(id, ContextKind::Http)?.live;
        let (is_live, buffering) = if request {
            (&mut live.request_body, &mut live.buffering_request_body)
        } else {
            (&mut live.response_body, &mut live.buffering_response_body)
        };
        match action {
            Action::Continue => *is_live = false,
            Action::Pause => *buffering = true,
            Action::Other(_) => {}
        }
        Ok(action)
    }

    /// `proxy_on_log(id)` in Envoy's access-log phase: request/response headers and response
    /// trailers are readable (read-only) again; request trailers are not.
    pub fn on_log(&mut self, id: u32) -> Result<()> {
        self.context(id).ok_or(Error::UnknownContext(id))?;
        self.store.data_mut().contexts.get_mut(&id).ok_or(Error::UnknownContext(id))?.live.access_log_phase = true;
        let r = self.call::<i32, ()>("proxy_on_log", id, id as i32);
        if let Some(ctx) = self.store.data_mut().contexts.get_mut(&id) {
            ctx.live.access_log_phase = false;
        }
        r.map(|_| ())
    }

    /// `proxy_on_done(id)`. For a root context that answers false, the host then waits for the
    /// module's `proxy_done()`.
    pub fn on_done(&mut self, id: u32) -> Result<bool> {
        let kind = self.context(id).ok_or(Error::UnknownContext(id))?.kind;
        let done = self.call::<i32, i32>("proxy_on_done", id, id as i32)?.is_none_or(|v| v != 0);
        if kind == ContextKind::Root && !done {
            self.store.data_mut().pending_done.push(id);
        }
        Ok(done)
    }

    /// `proxy_on_delete(id)`; the host forgets the context and hands its final state back.
    pub fn on_delete(&mut self, id: u32) -> Result<ContextState> {
        self.context(id).ok_or(Error::UnknownContext(id))?;
        self.call::<i32, ()>("proxy_on_delete", id, id as i32)?;
        self.store.data_mut().contexts.remove(&id).ok_or(Error::UnknownContext(id))
    }

    /// Ends a context in Envoy's order: HTTP `on_log, on_done, on_delete`; stream (TCP)
    /// `on_done, on_log, on_delete`; root `on_done, on_delete`. Returns the final state.
    pub fn finish(&mut self, id: u32) -> Result<ContextState> {
        match self.context(id).ok_or(Error::UnknownContext(id))?.kind {
            ContextKind::Http => {
                self.on_log(id)?;
                self.on_done(id)?;
            }
            ContextKind::Stream => {
                self.on_done(id)?;
                self.on_log(id)?;
            }
            ContextKind::Root => {
                self.on_done(id)?;
            }
        }
        self.on_delete(id)
    }

    /// A whole header-only exchange on a new HTTP context: request headers (end of stream),
    /// response headers (end of stream), then [`Vm::finish`]. Returns the final context state
    /// (headers as modified, host-call counts, local response).
    pub fn http_roundtrip(&mut self, root: u32, request: HeaderMap, response: HeaderMap) -> Result<ContextState> {
        let id = self.create_http_context(root)?;
        self.on_request_headers(id, request, true)?;
        self.on_response_headers(id, response, true)?;
        self.finish(id)
    }

    // ---- stream (TCP) contexts -----------------------------------------------------------

    /// Creates a stream (network filter) context under `root`.
    pub fn create_stream_context(&mut self, root: u32) -> Result<u32> {
        self.new_context(root, ContextKind::Stream)
    }

    /// `proxy_on_new_connection(id)`.
    pub fn on_new_connection(&mut self, id: u32) -> Result<Action> {
        self.ctx_mut(id, ContextKind::Stream)?;
        Ok(self
            .call::<i32, i32>("proxy_on_new_connection", id, id as i32)?
            .map_or(Action::Continue, |v| Action::from(v as u32)))
    }

    /// Delivers downstream bytes (appended to what a paused callback left in the buffer).
    pub fn on_downstream_data(&mut self, id: u32, data: &[u8], end_of_stream: bool) -> Result<Action> {
        self.stream_data(id, true, data, end_of_stream)
    }

    /// Delivers upstream bytes.
    pub fn on_upstream_data(&mut self, id: u32, data: &[u8], end_of_stream: bool) -> Result<Action> {
        self.stream_data(id, false, data, end_of_stream)
    }

    fn stream_data(&mut self, id: u32, downstream: bool, data: &[u8], end_of_stream: bool) -> Result<Action> {
        let ctx = self.ctx_mut(id, ContextKind::Stream)?;
        let (buf, live, name) = if downstream {
            (&mut ctx.downstream_data, &mut ctx.live.downstream_data, "proxy_on_downstream_data")
        } else {
            (&mut ctx.upstream_data, &mut ctx.live.upstream_data, "proxy_on_upstream_data")
        };
        if !*live {
            buf.clear();
        }
        buf.extend_from_slice(data);
        *live = true;
        let size = buf.len() as i32;
        let action = self.call_action(name, id, (id as i32, size, end_of_stream as i32))?;
        if action == Action::Continue {
            let live = &mut self.ctx_mut(id, ContextKind::Stream)?.live;
            *(if downstream { &mut live.downstream_data } else { &mut live.upstream_data }) = false;
        }
        Ok(action)
    }

    /// `proxy_on_downstream_connection_close(id, peer)`.
    pub fn on_downstream_connection_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        self.ctx_mut(id, ContextKind::Stream)?;
        self.call::<(i32, i32), ()>("proxy_on_downstream_connection_close", id, (id as i32, peer as i32))?;
        Ok(())
    }

    /// `proxy_on_upstream_connection_close(id, peer)`.
    pub fn on_upstream_connection_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        self.ctx_mut(id, ContextKind::Stream)?;
        self.call::<(i32, i32), ()>("proxy_on_upstream_connection_close", id, (id as i32, peer as i32))?;
        Ok(())
    }

    // ---- host-side state -----------------------------------------------------------------

    /// A live context's state (headers, bodies, properties, host-call counts, ...).
    pub fn context(&self, id: u32) -> Option<&ContextState> {
        self.store.data().contexts.get(&id)
    }

    /// Mutable access to a live context's state (e.g. to edit headers between callbacks).
    pub fn context_mut(&mut self, id: u32) -> Option<&mut ContextState> {
        self.store.data_mut().contexts.get_mut(&id)
    }

    /// Sets a VM-wide property, e.g. `set_property(&["node", "id"], b"n1")`.
    pub fn set_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.store.data_mut().properties.insert(property_path(path), value.into());
    }

    /// Removes a VM-wide property.
    pub fn remove_property(&mut self, path: &[&str]) {
        self.store.data_mut().properties.remove(&property_path(path));
    }

    /// Sets a property for one context only (Envoy properties are per stream); shadows VM-wide ones.
    pub fn set_context_property(&mut self, id: u32, path: &[&str], value: impl Into<Vec<u8>>) -> Result<()> {
        let ctx = self.context_mut(id).ok_or(Error::UnknownContext(id))?;
        ctx.properties.insert(property_path(path), value.into());
        Ok(())
    }

    /// The property as the module would read it from context `id` (including what the module set).
    pub fn property(&self, id: u32, path: &[&str]) -> Option<Vec<u8>> {
        self.store.data().property(id, &property_path(path))
    }

    /// Makes `proxy_call_foreign_function(name, ...)` run `f` (unknown names answer NotFound).
    pub fn register_foreign_function(
        &mut self,
        name: &str,
        f: impl FnMut(&[u8]) -> std::result::Result<Option<Vec<u8>>, crate::Status> + Send + 'static,
    ) {
        let f: ForeignFunction = Box::new(f);
        self.store.data_mut().foreign.insert(name.to_string(), f);
    }

    /// Adds a failure rule (see [`Failure`]).
    pub fn inject(&mut self, failure: Failure) {
        self.store.data_mut().failures.push(failure);
    }

    /// Removes all failure rules.
    pub fn clear_failures(&mut self) {
        self.store.data_mut().failures.clear();
    }

    /// Everything the module did through the host, in order.
    pub fn effects(&self) -> &[Effect] {
        &self.store.data().effects
    }

    /// Returns and clears the recorded effects.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.store.data_mut().effects)
    }

    /// All log lines (proxy_log and stdout/stderr) as `(level, message)`, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.effects()
            .iter()
            .filter_map(|e| match e {
                Effect::Log { level, message, .. } => Some((*level, message.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every `proxy_send_local_response`, in order.
    pub fn local_responses(&self) -> Vec<&LocalResponse> {
        self.effects()
            .iter()
            .filter_map(|e| match e {
                Effect::LocalResponse(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// All metrics the module defined.
    pub fn metrics(&self) -> &[Metric] {
        &self.store.data().metrics.list
    }

    /// The metric called `name` (first one, if several types share the name).
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics().iter().find(|m| m.name == name)
    }

    /// The shared-data store of this VM (a handle; clones see the same data).
    pub fn shared_data(&self) -> SharedData {
        self.store.data().shared.clone()
    }

    /// Host calls made while no context was current (e.g. during `_initialize`).
    pub fn vm_hostcalls(&self) -> &BTreeMap<&'static str, u64> {
        &self.store.data().vm_hostcalls
    }

    /// Everything the module wrote to stdout.
    pub fn stdout(&self) -> &[u8] {
        &self.store.data().stdout
    }

    /// Everything the module wrote to stderr.
    pub fn stderr(&self) -> &[u8] {
        &self.store.data().stderr
    }

    /// Moves both the wall clock and the monotonic clock forward.
    pub fn advance_time(&mut self, by: Duration) {
        let st = self.store.data_mut();
        let ns = by.as_nanos() as u64;
        st.realtime_ns = st.realtime_ns.saturating_add(ns);
        st.monotonic_ns = st.monotonic_ns.saturating_add(ns);
    }

    /// Changes what `proxy_get_log_level` answers.
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.store.data_mut().log_level = level;
    }

    /// True once a trap killed the VM.
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// Why the VM died, if it did.
    pub fn dead_reason(&self) -> Option<&str> {
        self.dead.as_deref()
    }
}
