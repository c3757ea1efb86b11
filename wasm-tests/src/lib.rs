//! A small mocked proxy-wasm host (ABI 0.2.1, behaving like Envoy 1.40) on wasmtime, for
//! testing proxy-wasm filters without Envoy.
//!
//! ```no_run
//! use wasm_tests::{Action, HeaderMap, Vm, VmConfig, WasmModule};
//! # fn main() -> wasm_tests::Result<()> {
//! let module = WasmModule::from_file("filter.wasm")?;        // compile once
//! let mut vm = Vm::new(&module, VmConfig::default())?;        // _initialize
//! let root = vm.start_root("my_root_id", b"{}".to_vec())?;    // create + vm_start + configure
//! let http = vm.create_http_context(root)?;
//! vm.set_context_property(http, &["request", "path"], b"/".to_vec())?;
//! let action = vm.on_request_headers(http, HeaderMap::from_pairs([(":path", "/")]), true)?;
//! assert_eq!(action, Action::Continue);
//! let done = vm.finish(http)?;                                // log, done, delete
//! println!("{:?} host calls: {}", done.request_headers, done.hostcall_total());
//! # Ok(()) }
//! ```
//!
//! Modules: [`abi`] (enums, wire formats), [`headers`] (header map), `state` (contexts,
//! effects, failures, metrics, shared data), `memory` (guest memory), `hostcalls` (`env.proxy_*`),
//! `wasi` (WASI preview1 subset), `vm` (the driver).

pub mod abi;
mod error;
pub mod headers;
mod hostcalls;
mod memory;
mod state;
mod vm;
mod wasi;

pub use abi::{Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType};
pub use error::{Error, Result};
pub use headers::HeaderMap;
pub use state::{
    ContextKind, ContextState, Effect, Failure, ForeignFunction, HeaderOp, LocalResponse, Metric, SharedData,
};
pub use vm::{Vm, VmConfig, WasmModule};
