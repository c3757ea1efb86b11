//! The WASI preview1 subset Envoy provides (same function set as proxy-wasm-cpp-host):
//! stdout/stderr become logs, no files, a controllable clock and deterministic randomness.
//! Imports outside this set fail to link, as they would in Envoy.

use wasmtime::Linker;

use crate::abi::LogLevel;
use crate::hostcalls::enter;
use crate::memory::{Ctx, HostErr, in_bounds, read, write, write_u32, write_u64};
use crate::state::{Effect, HostState};

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;

/// Like `hostcalls::run`, but results are WASI errno values; bad pointers give EFAULT.
fn run(
    c: &mut Ctx<'_>,
    name: &'static str,
    body: impl FnOnce(&mut Ctx<'_>) -> Result<i32, HostErr>,
) -> wasmtime::Result<i32> {
    if let Some(status) = enter(c, name)? {
        return Ok(status);
    }
    match body(c) {
        Ok(errno) => Ok(errno),
        Err(HostErr::Status(_)) => Ok(EFAULT),
        Err(HostErr::Trap(e)) => Err(e),
    }
}

const W: &str = "wasi_snapshot_preview1";

pub(crate) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(W, "fd_write", |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, nwritten: i32| {
        run(&mut c, "fd_write", |c| fd_write(c, fd, iovs, n, nwritten))
    })?;
    l.func_wrap(W, "fd_read", |mut c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| run(&mut c, "fd_read", |_| Ok(ENOSYS)))?;
    l.func_wrap(W, "fd_seek", |mut c: Ctx<'_>, _: i32, _: i64, _: i32, _: i32| {
        run(&mut c, "fd_seek", |_| Ok(ESUCCESS))
    })?;
    l.func_wrap(W, "fd_close", |mut c: Ctx<'_>, _: i32| run(&mut c, "fd_close", |_| Ok(ESUCCESS)))?;
    l.func_wrap(W, "fd_fdstat_get", |mut c: Ctx<'_>, fd: i32, ptr: i32| {
        run(&mut c, "fd_fdstat_get", |c| {
            if fd != 1 && fd != 2 {
                return Ok(EBADF);
            }
            // filetype/flags 0, rights_base = FD_WRITE (64), rights_inheriting 0.
            let mut stat = [0u8; 24];
            stat[8] = 64;
            write(c, "fd_fdstat_get", ptr, &stat)?;
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "fd_prestat_get", |mut c: Ctx<'_>, _: i32, _: i32| run(&mut c, "fd_prestat_get", |_| Ok(EBADF)))?;
    l.func_wrap(W, "fd_prestat_dir_name", |mut c: Ctx<'_>, _: i32, _: i32, _: i32| {
        run(&mut c, "fd_prestat_dir_name", |_| Ok(ENOSYS))
    })?;
    l.func_wrap(
        W,
        "path_open",
        |mut c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
            run(&mut c, "path_open", |_| Ok(ENOENT))
        },
    )?;
    l.func_wrap(W, "environ_sizes_get", |mut c: Ctx<'_>, count_ptr: i32, size_ptr: i32| {
        run(&mut c, "environ_sizes_get", |c| {
            let env = &c.data().env;
            let count = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            write_u32(c, "environ_sizes_get", count_ptr, count)?;
            write_u32(c, "environ_sizes_get", size_ptr, size as u32)?;
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "environ_get", |mut c: Ctx<'_>, mut array: i32, mut buf: i32| {
        run(&mut c, "environ_get", |c| {
            for (k, v) in c.data().env.clone() {
                let entry = format!("{k}={v}\0");
                write_u32(c, "environ_get", array, buf as u32)?;
                write(c, "environ_get", buf, entry.as_bytes())?;
                buf = buf.wrapping_add(entry.len() as i32);
                array = array.wrapping_add(4);
            }
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "args_sizes_get", |mut c: Ctx<'_>, argc: i32, size: i32| {
        run(&mut c, "args_sizes_get", |c| {
            write_u32(c, "args_sizes_get", argc, 0)?;
            write_u32(c, "args_sizes_get", size, 0)?;
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "args_get", |mut c: Ctx<'_>, _: i32, _: i32| run(&mut c, "args_get", |_| Ok(ESUCCESS)))?;
    l.func_wrap(W, "clock_time_get", |mut c: Ctx<'_>, id: i32, _precision: i64, ptr: i32| {
        run(&mut c, "clock_time_get", |c| {
            let now = match id {
                0 => c.data().realtime_ns,
                1 => c.data().monotonic_ns,
                _ => return Ok(ENOTSUP),
            };
            write_u64(c, "clock_time_get", ptr, now)?;
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "random_get", |mut c: Ctx<'_>, ptr: i32, len: i32| {
        run(&mut c, "random_get", |c| {
            if !in_bounds(c, ptr, len) {
                return Ok(EFAULT);
            }
            let bytes = c.data_mut().random_bytes(len as u32 as usize);
            write(c, "random_get", ptr, &bytes)?;
            Ok(ESUCCESS)
        })
    })?;
    l.func_wrap(W, "proc_exit", |mut c: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
        enter(&mut c, "proc_exit")?;
        Err(wasmtime::Error::msg(format!("proc_exit({code})")))
    })?;
    Ok(())
}

/// stdout/stderr are captured, and (like Envoy) each write becomes a log entry at
/// info (stdout) or error (stderr) level, without its trailing newline.
fn fd_write(c: &mut Ctx<'_>, fd: i32, iovs: i32, n: i32, nwritten: i32) -> Result<i32, HostErr> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(EBADF),
    };
    let mut text = Vec::new();
    for i in 0..n as u32 {
        let iov = read(c, "fd_write", iovs.wrapping_add(i.wrapping_mul(8) as i32), 8)?;
        let word = |at: usize| {
            let b: Option<[u8; 4]> = iov.get(at..at + 4).and_then(|b| b.try_into().ok());
            b.map_or(0, i32::from_le_bytes)
        };
        let (ptr, len) = (word(0), word(4));
        text.extend(read(c, "fd_write", ptr, len)?);
    }
    write_u32(c, "fd_write", nwritten, text.len() as u32)?;
    let st = c.data_mut();
    if fd == 1 {
        st.stdout.extend_from_slice(&text);
    } else {
        st.stderr.extend_from_slice(&text);
    }
    let message = String::from_utf8_lossy(text.strip_suffix(b"\n").unwrap_or(&text)).into_owned();
    if !message.is_empty() {
        if fd == 2 {
            st.panic_text.push(message.clone());
        }
        let context_id = st.active_id();
        st.record(Effect::Log { context_id, level, message });
    }
    Ok(ESUCCESS)
}
