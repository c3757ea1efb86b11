//! Guest-memory access for host functions. Every pointer from the module is bounds-checked:
//! a bad one yields `Status::InvalidMemoryAccess` (what Envoy returns), never a host panic.

use wasmtime::{Caller, Extern, Memory};

use crate::abi::Status;
use crate::state::{Effect, HostState};

/// Outcome of a host function body: a status for the module, or a trap that kills the VM.
pub(crate) enum HostErr {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HostErr {
    fn from(s: Status) -> Self {
        HostErr::Status(s)
    }
}

impl From<wasmtime::Error> for HostErr {
    fn from(e: wasmtime::Error) -> Self {
        HostErr::Trap(e)
    }
}

pub(crate) type HostResult<T = ()> = Result<T, HostErr>;

pub(crate) type Ctx<'a> = Caller<'a, HostState>;

fn memory(c: &mut Ctx<'_>) -> Result<Memory, Status> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(Status::InvalidMemoryAccess),
    }
}

fn bad_access(c: &mut Ctx<'_>, hostcall: &'static str) -> HostErr {
    let context_id = c.data().active_id();
    c.data_mut().record(Effect::InvalidMemoryAccess { context_id, hostcall });
    HostErr::Status(Status::InvalidMemoryAccess)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(c: &mut Ctx<'_>, hostcall: &'static str, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let mem = memory(c).map_err(|_| bad_access(c, hostcall))?;
    let bytes = ptr.checked_add(len).and_then(|end| mem.data(&*c).get(ptr..end)).map(<[u8]>::to_vec);
    bytes.ok_or_else(|| bad_access(c, hostcall))
}

/// Whether `len` bytes at `ptr` lie inside guest memory.
pub(crate) fn in_bounds(c: &mut Ctx<'_>, ptr: i32, len: i32) -> bool {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    match memory(c) {
        Ok(mem) => ptr.checked_add(len).is_some_and(|end| end <= mem.data_size(&*c)),
        Err(_) => false,
    }
}

/// Writes `bytes` at `ptr` in guest memory.
pub(crate) fn write(c: &mut Ctx<'_>, hostcall: &'static str, ptr: i32, bytes: &[u8]) -> HostResult {
    let ptr = ptr as u32 as usize;
    let mem = memory(c).map_err(|_| bad_access(c, hostcall))?;
    let ok = match ptr.checked_add(bytes.len()).and_then(|end| mem.data_mut(&mut *c).get_mut(ptr..end)) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    };
    if ok { Ok(()) } else { Err(bad_access(c, hostcall)) }
}

pub(crate) fn write_u32(c: &mut Ctx<'_>, hostcall: &'static str, ptr: i32, v: u32) -> HostResult {
    write(c, hostcall, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(c: &mut Ctx<'_>, hostcall: &'static str, ptr: i32, v: u64) -> HostResult {
    write(c, hostcall, ptr, &v.to_le_bytes())
}

/// Allocates `size` bytes inside the module with its exported allocator
/// (`proxy_on_memory_allocate`, or `malloc`), as Envoy does. A trap in the allocator traps.
pub(crate) fn alloc(c: &mut Ctx<'_>, hostcall: &'static str, size: usize) -> HostResult<i32> {
    let func =
        ["proxy_on_memory_allocate", "malloc"].iter().find_map(|name| c.get_export(name).and_then(Extern::into_func));
    let Some(func) = func else {
        return Err(bad_access(c, hostcall));
    };
    let typed = func.typed::<i32, i32>(&*c).map_err(|_| bad_access(c, hostcall))?;
    let ptr = typed.call(&mut *c, size as i32)?;
    if ptr == 0 && size > 0 {
        return Err(bad_access(c, hostcall));
    }
    Ok(ptr)
}

/// Envoy's `copyToPointerSize`: an empty value writes a null pointer and size 0; otherwise
/// the bytes are copied into module-allocated memory whose address and size are written to
/// `ptr_ptr` / `size_ptr` (the module then owns that allocation).
pub(crate) fn copy_out(
    c: &mut Ctx<'_>,
    hostcall: &'static str,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let ptr = if data.is_empty() { 0 } else { alloc(c, hostcall, data.len())? };
    if !data.is_empty() {
        write(c, hostcall, ptr, data)?;
    }
    write_u32(c, hostcall, ptr_ptr, ptr as u32)?;
    write_u32(c, hostcall, size_ptr, data.len() as u32)
}

/// Like [`copy_out`] but always allocates, even for empty data (used where Envoy's callee
/// allocated a result buffer explicitly).
pub(crate) fn copy_out_allocated(
    c: &mut Ctx<'_>,
    hostcall: &'static str,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let ptr = alloc(c, hostcall, data.len())?;
    write(c, hostcall, ptr, data)?;
    write_u32(c, hostcall, ptr_ptr, ptr as u32)?;
    write_u32(c, hostcall, size_ptr, data.len() as u32)
}
