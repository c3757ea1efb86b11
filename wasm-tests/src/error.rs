//! The crate's single error type.

/// Everything the host or driver can report to a test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid wasm (or WAT) module for this engine.
    #[error("cannot compile module: {0}")]
    Compile(String),
    /// Instantiation failed (typically an import the host does not provide).
    #[error("cannot instantiate module: {0}")]
    Instantiate(String),
    /// The module exports no `proxy_abi_version_*` function, so Envoy would refuse it.
    #[error("module exports no proxy_abi_version_* function")]
    MissingAbiVersion,
    /// The module exports a function the driver must call, with an unexpected signature.
    #[error("export `{name}` has an unexpected signature: {message}")]
    BadExport { name: String, message: String },
    /// The module trapped (a Rust panic is a trap) inside `callback`. The VM is now dead.
    /// `panic` holds the panic text the module printed or logged just before, if any.
    #[error("module trapped in {callback} (context {context_id}): {panic:?}; trap: {trap}")]
    Trap { callback: String, context_id: u32, panic: Option<String>, trap: String },
    /// A previous trap killed the VM; like Envoy, it runs nothing more.
    #[error("VM is dead after an earlier failure: {0}")]
    VmDead(String),
    /// The driver was asked to use a context that does not exist (or was deleted).
    #[error("unknown context id {0}")]
    UnknownContext(u32),
    /// The context exists but is of the wrong kind for this call (e.g. HTTP call on a root).
    #[error("context {id} is a {actual} context, expected {expected}")]
    WrongContextKind { id: u32, expected: &'static str, actual: &'static str },
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false.
    #[error("{callback} returned false for root context {context_id} (root_id {root_id:?})")]
    Rejected { callback: &'static str, context_id: u32, root_id: String },
    /// Reading the wasm file failed.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
