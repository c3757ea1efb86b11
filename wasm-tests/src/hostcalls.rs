//! The `env.proxy_*` host functions of ABI 0.2.1, with Envoy 1.40's observable behaviour.

use wasmtime::Linker;

use crate::abi::{BufferType, LogLevel, MapType, MetricType, Status, StreamType, deserialize_pairs};
use crate::headers::HeaderMap;
use crate::memory::{Ctx, HostErr, HostResult, copy_out, copy_out_allocated, read, write, write_u32, write_u64};
use crate::state::{ContextKind, Effect, HeaderOp, HostState, LocalResponse};

/// Host calls Envoy allows while the VM starts (`_initialize` / `main` / `_start`); any other
/// host call during start traps with `restricted_callback`.
const ALLOWED_DURING_START: &[&str] = &[
    "proxy_log",
    "fd_write",
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "clock_time_get",
    "random_get",
];

/// Bookkeeping shared by every host function: count it, enforce the start-time restriction,
/// fire injected failures, then run `body`.
pub(crate) fn enter(c: &mut Ctx<'_>, name: &'static str) -> Result<Option<i32>, wasmtime::Error> {
    let st = c.data_mut();
    st.count(name);
    if st.restricted && !ALLOWED_DURING_START.contains(&name) {
        return Err(wasmtime::Error::msg(format!("restricted_callback: {name} called during VM start")));
    }
    Ok(st.injected(name, None).map(|s| s as i32))
}

fn run(c: &mut Ctx<'_>, name: &'static str, body: impl FnOnce(&mut Ctx<'_>) -> HostResult) -> wasmtime::Result<i32> {
    if let Some(status) = enter(c, name)? {
        return Ok(status);
    }
    match body(c) {
        Ok(()) => Ok(Status::Ok as i32),
        Err(HostErr::Status(s)) => Ok(s as i32),
        Err(HostErr::Trap(e)) => Err(e),
    }
}

/// Fires a failure injected for this key (property path, header name, ...).
fn injected_for(c: &mut Ctx<'_>, name: &'static str, key: &[u8]) -> HostResult {
    match c.data_mut().injected(name, Some(key)) {
        Some(status) => Err(status.into()),
        None => Ok(()),
    }
}

fn unimplemented(c: &mut Ctx<'_>, hostcall: &'static str, status: Status) -> HostResult {
    let context_id = c.data().active_id();
    c.data_mut().record(Effect::Unimplemented { context_id, hostcall });
    Err(status.into())
}

fn map_type(t: i32) -> Result<MapType, Status> {
    MapType::from_u32(t as u32).ok_or(Status::BadArgument)
}

pub(crate) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Logging, time, ticks.
    l.func_wrap("env", "proxy_log", |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| {
        run(&mut c, "proxy_log", |c| log(c, level, ptr, len))
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: Ctx<'_>, ptr: i32| {
        run(&mut c, "proxy_get_log_level", |c| {
            let level = c.data().log_level as u32;
            write_u32(c, "proxy_get_log_level", ptr, level)
        })
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Ctx<'_>, ptr: i32| {
        run(&mut c, "proxy_get_current_time_nanoseconds", |c| {
            let now = c.data().realtime_ns;
            write_u64(c, "proxy_get_current_time_nanoseconds", ptr, now)
        })
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Ctx<'_>, period: i32| {
        run(&mut c, "proxy_set_tick_period_milliseconds", |c| {
            let st = c.data_mut();
            let context_id = st.active_id();
            let period_ms = period as u32;
            let root = match st.active() {
                Some(ctx) if ctx.root_context_id != 0 => ctx.root_context_id,
                _ => context_id,
            };
            if let Some(ctx) = st.contexts.get_mut(&root) {
                ctx.tick_period_ms = Some(period_ms);
            }
            st.record(Effect::TickPeriod { context_id, period_ms });
            Ok(())
        })
    })?;

    // Buffers.
    l.func_wrap("env", "proxy_get_buffer_bytes", |mut c: Ctx<'_>, t: i32, start: i32, max: i32, pp: i32, sp: i32| {
        run(&mut c, "proxy_get_buffer_bytes", |c| get_buffer_bytes(c, t, start, max, pp, sp))
    })?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, t: i32, start: i32, len: i32, ptr: i32, size: i32| {
            run(&mut c, "proxy_set_buffer_bytes", |c| set_buffer_bytes(c, t, start, len, ptr, size))
        },
    )?;
    l.func_wrap("env", "proxy_get_buffer_status", |mut c: Ctx<'_>, t: i32, len_ptr: i32, flags_ptr: i32| {
        run(&mut c, "proxy_get_buffer_status", |c| {
            let len = buffer_snapshot(c, t)?.len() as u32;
            write_u32(c, "proxy_get_buffer_status", len_ptr, len)?;
            write_u32(c, "proxy_get_buffer_status", flags_ptr, 0)
        })
    })?;

    // Header maps.
    l.func_wrap("env", "proxy_get_header_map_pairs", |mut c: Ctx<'_>, t: i32, pp: i32, sp: i32| {
        run(&mut c, "proxy_get_header_map_pairs", |c| {
            let map = map_type(t)?;
            let wire = match c.data_mut().active().and_then(|ctx| ctx.const_map(map)) {
                Some(m) if !m.is_empty() => m.to_wire(),
                _ => Vec::new(),
            };
            copy_out(c, "proxy_get_header_map_pairs", &wire, pp, sp)
        })
    })?;
    l.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Ctx<'_>, t: i32, ptr: i32, size: i32| {
        run(&mut c, "proxy_set_header_map_pairs", |c| {
            let map = map_type(t)?;
            let data = read(c, "proxy_set_header_map_pairs", ptr, size)?;
            let pairs = deserialize_pairs(&data).ok_or(Status::BadArgument)?;
            let fresh = HeaderMap::from_pairs(pairs.iter().map(|(k, v)| (k, v)));
            mutate_map(c, map, HeaderOp::SetPairs { pairs: fresh.pairs().clone() }, |m| *m = fresh)
        })
    })?;
    l.func_wrap("env", "proxy_get_header_map_value", |mut c: Ctx<'_>, t: i32, kp: i32, ks: i32, pp: i32, sp: i32| {
        run(&mut c, "proxy_get_header_map_value", |c| {
            let map = map_type(t)?;
            let key = read(c, "proxy_get_header_map_value", kp, ks)?;
            injected_for(c, "proxy_get_header_map_value", &key)?;
            let value = {
                let ctx = c.data_mut().active().ok_or(Status::BadArgument)?;
                let log_phase = ctx.live.access_log_phase;
                match ctx.const_map(map) {
                    Some(m) => m.get(&key).map(<[u8]>::to_vec).ok_or(Status::NotFound)?,
                    None if log_phase => return Err(Status::NotFound.into()),
                    None => return Err(Status::BadArgument.into()),
                }
            };
            copy_out(c, "proxy_get_header_map_value", &value, pp, sp)
        })
    })?;
    l.func_wrap("env", "proxy_add_header_map_value", |mut c: Ctx<'_>, t: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
        run(&mut c, "proxy_add_header_map_value", |c| {
            let map = map_type(t)?;
            let key = read(c, "proxy_add_header_map_value", kp, ks)?;
            let value = read(c, "proxy_add_header_map_value", vp, vs)?;
            injected_for(c, "proxy_add_header_map_value", &key)?;
            let op = HeaderOp::Add { key: key.to_ascii_lowercase(), value: value.clone() };
            mutate_map(c, map, op, |m| m.add(&key, &value))
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>, t: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            run(&mut c, "proxy_replace_header_map_value", |c| {
                let map = map_type(t)?;
                let key = read(c, "proxy_replace_header_map_value", kp, ks)?;
                let value = read(c, "proxy_replace_header_map_value", vp, vs)?;
                injected_for(c, "proxy_replace_header_map_value", &key)?;
                let op = HeaderOp::Replace { key: key.to_ascii_lowercase(), value: value.clone() };
                mutate_map(c, map, op, |m| m.replace(&key, &value))
            })
        },
    )?;
    l.func_wrap("env", "proxy_remove_header_map_value", |mut c: Ctx<'_>, t: i32, kp: i32, ks: i32| {
        run(&mut c, "proxy_remove_header_map_value", |c| {
            let map = map_type(t)?;
            let key = read(c, "proxy_remove_header_map_value", kp, ks)?;
            injected_for(c, "proxy_remove_header_map_value", &key)?;
            let op = HeaderOp::Remove { key: key.to_ascii_lowercase() };
            mutate_map(c, map, op, |m| m.remove(&key))
        })
    })?;
    l.func_wrap("env", "proxy_get_header_map_size", |mut c: Ctx<'_>, t: i32, ptr: i32| {
        run(&mut c, "proxy_get_header_map_size", |c| {
            let map = map_type(t)?;
            let ctx = c.data_mut().active().ok_or(Status::BadArgument)?;
            let size = ctx.mut_map(map).ok_or(Status::BadArgument)?.byte_size() as u32;
            write_u32(c, "proxy_get_header_map_size", ptr, size)
        })
    })?;

    // Properties.
    l.func_wrap("env", "proxy_get_property", |mut c: Ctx<'_>, pp: i32, ps: i32, rp: i32, rs: i32| {
        run(&mut c, "proxy_get_property", |c| {
            let path = read(c, "proxy_get_property", pp, ps)?;
            injected_for(c, "proxy_get_property", &path)?;
            let id = c.data().active_id();
            let value = c.data().property(id, &path).ok_or(Status::NotFound)?;
            copy_out(c, "proxy_get_property", &value, rp, rs)
        })
    })?;
    l.func_wrap("env", "proxy_set_property", |mut c: Ctx<'_>, pp: i32, ps: i32, vp: i32, vs: i32| {
        run(&mut c, "proxy_set_property", |c| {
            let path = read(c, "proxy_set_property", pp, ps)?;
            let value = read(c, "proxy_set_property", vp, vs)?;
            injected_for(c, "proxy_set_property", &path)?;
            let st = c.data_mut();
            let context_id = st.active_id();
            // Envoy stores it in the stream's filter state: root contexts have none.
            let status = match st.active() {
                Some(ctx) if ctx.kind != ContextKind::Root => {
                    ctx.properties.insert(path.clone(), value.clone());
                    Status::Ok
                }
                _ => Status::NotFound,
            };
            st.record(Effect::PropertySet { context_id, path, value, status });
            status_result(status)
        })
    })?;

    // Shared data and queues.
    l.func_wrap("env", "proxy_get_shared_data", |mut c: Ctx<'_>, kp: i32, ks: i32, vpp: i32, vsp: i32, casp: i32| {
        run(&mut c, "proxy_get_shared_data", |c| {
            let key = read(c, "proxy_get_shared_data", kp, ks)?;
            injected_for(c, "proxy_get_shared_data", &key)?;
            let (value, cas) = c.data().shared.get(&key).ok_or(Status::NotFound)?;
            copy_out(c, "proxy_get_shared_data", &value, vpp, vsp)?;
            write_u32(c, "proxy_get_shared_data", casp, cas)
        })
    })?;
    l.func_wrap("env", "proxy_set_shared_data", |mut c: Ctx<'_>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32| {
        run(&mut c, "proxy_set_shared_data", |c| {
            let key = read(c, "proxy_set_shared_data", kp, ks)?;
            let value = read(c, "proxy_set_shared_data", vp, vs)?;
            injected_for(c, "proxy_set_shared_data", &key)?;
            let st = c.data_mut();
            let status = st.shared.set(&key, &value, cas as u32);
            let context_id = st.active_id();
            st.record(Effect::SharedDataSet { context_id, key, value, cas: cas as u32, status });
            status_result(status)
        })
    })?;
    l.func_wrap("env", "proxy_register_shared_queue", |mut c: Ctx<'_>, np: i32, ns: i32, idp: i32| {
        run(&mut c, "proxy_register_shared_queue", |c| {
            let name = read(c, "proxy_register_shared_queue", np, ns)?;
            let st = c.data();
            let id = st.shared.register_queue(st.vm_id.as_bytes(), &name);
            write_u32(c, "proxy_register_shared_queue", idp, id)
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, vp: i32, vs: i32, np: i32, ns: i32, idp: i32| {
            run(&mut c, "proxy_resolve_shared_queue", |c| {
                let vm_id = read(c, "proxy_resolve_shared_queue", vp, vs)?;
                let name = read(c, "proxy_resolve_shared_queue", np, ns)?;
                let id = c.data().shared.resolve_queue(&vm_id, &name).ok_or(Status::NotFound)?;
                write_u32(c, "proxy_resolve_shared_queue", idp, id)
            })
        },
    )?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", |mut c: Ctx<'_>, id: i32, vp: i32, vs: i32| {
        run(&mut c, "proxy_enqueue_shared_queue", |c| {
            let value = read(c, "proxy_enqueue_shared_queue", vp, vs)?;
            let st = c.data_mut();
            let status = st.shared.enqueue(id as u32, value.clone());
            if status == Status::Ok {
                let context_id = st.active_id();
                st.record(Effect::QueueEnqueued { context_id, queue_id: id as u32, value });
            }
            status_result(status)
        })
    })?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", |mut c: Ctx<'_>, id: i32, pp: i32, sp: i32| {
        run(&mut c, "proxy_dequeue_shared_queue", |c| {
            let value = c.data().shared.dequeue(id as u32)?;
            copy_out(c, "proxy_dequeue_shared_queue", &value, pp, sp)
        })
    })?;

    // Metrics.
    l.func_wrap("env", "proxy_define_metric", |mut c: Ctx<'_>, t: i32, np: i32, ns: i32, idp: i32| {
        run(&mut c, "proxy_define_metric", |c| {
            let metric_type = MetricType::from_u32(t as u32).ok_or(Status::BadArgument)?;
            let name = read(c, "proxy_define_metric", np, ns)?;
            injected_for(c, "proxy_define_metric", &name)?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let st = c.data_mut();
            let id = st.metrics.define(metric_type, &name);
            let context_id = st.active_id();
            st.record(Effect::MetricDefined { context_id, id, metric_type, name });
            write_u32(c, "proxy_define_metric", idp, id)
        })
    })?;
    l.func_wrap("env", "proxy_increment_metric", |mut c: Ctx<'_>, id: i32, offset: i64| {
        run(&mut c, "proxy_increment_metric", |c| increment_metric(c.data_mut(), id as u32, offset))
    })?;
    l.func_wrap("env", "proxy_record_metric", |mut c: Ctx<'_>, id: i32, value: i64| {
        run(&mut c, "proxy_record_metric", |c| record_metric(c.data_mut(), id as u32, value as u64))
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: Ctx<'_>, id: i32, ptr: i32| {
        run(&mut c, "proxy_get_metric", |c| {
            let id = id as u32;
            if id & 3 > 1 {
                return Err(Status::BadArgument.into()); // histograms cannot be read back
            }
            let value = c.data_mut().metrics.get_mut(id).ok_or(Status::NotFound)?.value;
            write_u64(c, "proxy_get_metric", ptr, value as u64)
        })
    })?;

    // Stream control.
    l.func_wrap("env", "proxy_continue_stream", |mut c: Ctx<'_>, t: i32| {
        run(&mut c, "proxy_continue_stream", |c| {
            let stream = StreamType::from_u32(t as u32).ok_or(Status::BadArgument)?;
            let st = c.data_mut();
            let context_id = st.active_id();
            st.record(Effect::StreamContinued { context_id, stream });
            match stream {
                StreamType::Upstream => Err(Status::Unimplemented.into()),
                StreamType::Downstream => Ok(()),
                // Envoy forgets the request-side maps on either HTTP continue.
                StreamType::HttpRequest | StreamType::HttpResponse => {
                    if let Some(ctx) = st.active() {
                        ctx.live.request_headers = false;
                        ctx.live.request_body = false;
                        ctx.live.request_trailers = false;
                    }
                    Ok(())
                }
            }
        })
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: Ctx<'_>, t: i32| {
        run(&mut c, "proxy_close_stream", |c| {
            let stream = StreamType::from_u32(t as u32).ok_or(Status::BadArgument)?;
            let context_id = c.data().active_id();
            c.data_mut().record(Effect::StreamClosed { context_id, stream });
            Ok(())
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>, code: i32, dp: i32, ds: i32, bp: i32, bs: i32, hp: i32, hs: i32, grpc: i32| {
            run(&mut c, "proxy_send_local_response", |c| {
                let details = read(c, "proxy_send_local_response", dp, ds)?;
                let body = read(c, "proxy_send_local_response", bp, bs)?;
                let headers = read(c, "proxy_send_local_response", hp, hs)?;
                let headers = deserialize_pairs(&headers).ok_or(Status::BadArgument)?;
                let headers = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
                let st = c.data_mut();
                let context_id = st.active_id();
                let response =
                    LocalResponse { context_id, status_code: code as u32, details, body, headers, grpc_status: grpc };
                if let Some(ctx) = st.active() {
                    ctx.local_response = Some(response.clone());
                }
                st.record(Effect::LocalResponse(response));
                Ok(())
            })
        },
    )?;

    // Contexts and foreign functions.
    l.func_wrap("env", "proxy_set_effective_context", |mut c: Ctx<'_>, id: i32| {
        run(&mut c, "proxy_set_effective_context", |c| {
            let st = c.data_mut();
            if !st.contexts.contains_key(&(id as u32)) {
                return Err(Status::BadArgument.into());
            }
            st.effective = Some(id as u32);
            Ok(())
        })
    })?;
    l.func_wrap("env", "proxy_done", |mut c: Ctx<'_>| {
        run(&mut c, "proxy_done", |c| {
            let st = c.data_mut();
            let context_id = st.active_id();
            let pos = st.pending_done.iter().position(|&id| id == context_id).ok_or(Status::NotFound)?;
            st.pending_done.remove(pos);
            st.record(Effect::Done { context_id });
            Ok(())
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Ctx<'_>, np: i32, ns: i32, ap: i32, asz: i32, rp: i32, rs: i32| {
            run(&mut c, "proxy_call_foreign_function", |c| call_foreign_function(c, np, ns, ap, asz, rp, rs))
        },
    )?;

    // Outbound calls: recorded, never performed.
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         up: i32,
         us: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         tp: i32,
         ts: i32,
         timeout: i32,
         tok: i32| {
            run(&mut c, "proxy_http_call", |c| {
                let upstream = read(c, "proxy_http_call", up, us)?;
                let headers = read(c, "proxy_http_call", hp, hs)?;
                let body = read(c, "proxy_http_call", bp, bs)?;
                let trailers = read(c, "proxy_http_call", tp, ts)?;
                write_u32(c, "proxy_http_call", tok, 0)?;
                let st = c.data_mut();
                let context_id = st.active_id();
                st.record(Effect::HttpCall {
                    context_id,
                    upstream,
                    headers: deserialize_pairs(&headers).unwrap_or_default(),
                    body,
                    trailers: deserialize_pairs(&trailers).unwrap_or_default(),
                    timeout_ms: timeout as u32,
                });
                // Envoy's answer for a cluster it does not know.
                Err(Status::BadArgument.into())
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Ctx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            run(&mut c, "proxy_grpc_call", |c| unimplemented(c, "proxy_grpc_call", Status::InternalFailure))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            run(&mut c, "proxy_grpc_stream", |c| unimplemented(c, "proxy_grpc_stream", Status::InternalFailure))
        },
    )?;
    l.func_wrap("env", "proxy_grpc_send", |mut c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| {
        run(&mut c, "proxy_grpc_send", |c| unimplemented(c, "proxy_grpc_send", Status::NotFound))
    })?;
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: Ctx<'_>, _: i32| {
        run(&mut c, "proxy_grpc_cancel", |c| unimplemented(c, "proxy_grpc_cancel", Status::NotFound))
    })?;
    l.func_wrap("env", "proxy_grpc_close", |mut c: Ctx<'_>, _: i32| {
        run(&mut c, "proxy_grpc_close", |c| unimplemented(c, "proxy_grpc_close", Status::NotFound))
    })?;
    l.func_wrap("env", "proxy_get_status", |mut c: Ctx<'_>, code_ptr: i32, pp: i32, sp: i32| {
        run(&mut c, "proxy_get_status", |c| {
            write_u32(c, "proxy_get_status", code_ptr, 0)?;
            copy_out(c, "proxy_get_status", &[], pp, sp)
        })
    })?;
    Ok(())
}

fn status_result(status: Status) -> HostResult {
    match status {
        Status::Ok => Ok(()),
        s => Err(s.into()),
    }
}

fn log(c: &mut Ctx<'_>, level: i32, ptr: i32, len: i32) -> HostResult {
    let level = LogLevel::from_u32(level as u32).ok_or(Status::BadArgument)?;
    let message = read(c, "proxy_log", ptr, len)?;
    let message = String::from_utf8_lossy(&message).into_owned();
    let st = c.data_mut();
    if level == LogLevel::Critical {
        st.panic_text.push(message.clone());
    }
    let context_id = st.active_id();
    st.record(Effect::Log { context_id, level, message });
    Ok(())
}

/// Applies `f` to a header map Envoy would let the module change right now.
fn mutate_map(c: &mut Ctx<'_>, map: MapType, op: HeaderOp, f: impl FnOnce(&mut HeaderMap)) -> HostResult {
    let st = c.data_mut();
    let context_id = st.active_id();
    let m = st.active().and_then(|ctx| ctx.mut_map(map)).ok_or(Status::BadArgument)?;
    f(m);
    st.record(Effect::HeaderMap { context_id, map, op });
    Ok(())
}

/// Current content of a buffer as Envoy would expose it (`NotFound` when it has none).
fn buffer_snapshot(c: &mut Ctx<'_>, t: i32) -> Result<Vec<u8>, Status> {
    let ty = BufferType::from_u32(t as u32).ok_or(Status::BadArgument)?;
    let st = c.data_mut();
    match ty {
        BufferType::VmConfiguration => Ok(st.vm_configuration.clone()),
        BufferType::PluginConfiguration => st.plugin_configuration.clone().ok_or(Status::NotFound),
        BufferType::CallData => Ok(Vec::new()),
        BufferType::HttpCallResponseBody | BufferType::GrpcReceiveBuffer => Err(Status::NotFound),
        _ => {
            let ctx = st.active().ok_or(Status::NotFound)?;
            let (buf, live) = ctx.buffer_mut(ty).ok_or(Status::NotFound)?;
            Ok(if live { buf.clone() } else { Vec::new() })
        }
    }
}

fn get_buffer_bytes(c: &mut Ctx<'_>, t: i32, start: i32, max: i32, pp: i32, sp: i32) -> HostResult {
    let data = buffer_snapshot(c, t)?;
    let start = start as u32 as usize;
    let end = start.saturating_add(max as u32 as usize).min(data.len());
    match data.get(start..end) {
        Some(bytes) if !bytes.is_empty() => copy_out(c, "proxy_get_buffer_bytes", bytes, pp, sp),
        // Envoy writes nothing for an empty range; the SDK then sees no bytes.
        _ => Ok(()),
    }
}

fn set_buffer_bytes(c: &mut Ctx<'_>, t: i32, start: i32, len: i32, ptr: i32, size: i32) -> HostResult {
    let buffer = BufferType::from_u32(t as u32).ok_or(Status::BadArgument)?;
    let data = read(c, "proxy_set_buffer_bytes", ptr, size)?;
    let (start, length) = (start as u32, len as u32);
    let st = c.data_mut();
    let context_id = st.active_id();
    let (buf, live) = st.active().and_then(|ctx| ctx.buffer_mut(buffer)).ok_or(Status::NotFound)?;
    if !live {
        return Err(Status::NotFound.into());
    }
    // Envoy's Buffer::copyFrom: replace a prefix, or append at/after the end.
    if start == 0 {
        let drained = (length as usize).min(buf.len());
        buf.splice(0..drained, data.iter().copied());
    } else if start as usize >= buf.len() {
        buf.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    st.record(Effect::BufferWrite { context_id, buffer, start, length, data });
    Ok(())
}

fn metric_name(st: &mut HostState, id: u32) -> String {
    st.metrics.get_mut(id).map(|m| m.name.clone()).unwrap_or_default()
}

/// Envoy: counters only go up by a positive offset; gauges move either way; histograms refuse.
fn increment_metric(st: &mut HostState, id: u32, offset: i64) -> HostResult {
    let status = match (id & 3, st.metrics.get_mut(id)) {
        (0, Some(_)) if offset <= 0 => Status::BadArgument,
        (0 | 1, Some(m)) => {
            m.value = m.value.wrapping_add(offset);
            Status::Ok
        }
        (0 | 1, None) => Status::NotFound,
        _ => Status::BadArgument,
    };
    let (context_id, name) = (st.active_id(), metric_name(st, id));
    st.record(Effect::MetricIncremented { context_id, id, name, offset, status });
    status_result(status)
}

/// Envoy: counters add, gauges are set, histograms record a sample.
fn record_metric(st: &mut HostState, id: u32, value: u64) -> HostResult {
    let status = match (id & 3, st.metrics.get_mut(id)) {
        (0, Some(m)) => {
            m.value = m.value.wrapping_add(value as i64);
            Status::Ok
        }
        (1, Some(m)) => {
            m.value = value as i64;
            Status::Ok
        }
        (2, Some(m)) => {
            m.samples.push(value);
            Status::Ok
        }
        _ => Status::NotFound,
    };
    let (context_id, name) = (st.active_id(), metric_name(st, id));
    st.record(Effect::MetricRecorded { context_id, id, name, value, status });
    status_result(status)
}

fn call_foreign_function(c: &mut Ctx<'_>, np: i32, ns: i32, ap: i32, asz: i32, rp: i32, rs: i32) -> HostResult {
    const NAME: &str = "proxy_call_foreign_function";
    let name = read(c, NAME, np, ns)?;
    let args = read(c, NAME, ap, asz)?;
    injected_for(c, NAME, &name)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let st = c.data_mut();
    let result = match st.foreign.get_mut(&name) {
        Some(f) => f(&args),
        None => Err(Status::NotFound),
    };
    let context_id = st.active_id();
    let status = result.as_ref().err().copied().unwrap_or(Status::Ok);
    st.record(Effect::ForeignCall { context_id, name, args, status });
    let bytes = result?;
    match bytes {
        Some(b) if rp != 0 => copy_out_allocated(c, NAME, &b, rp, rs),
        _ => {
            if rp != 0 {
                write(c, NAME, rp, &0u32.to_le_bytes())?;
            }
            if rs != 0 {
                write_u32(c, NAME, rs, 0)?;
            }
            Ok(())
        }
    }
}
