//! Tests of the mocked host itself, driven with tiny WAT modules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{data, escape, module, vm};
use wasm_tests::{
    Action, ContextKind, Effect, Error, Failure, HeaderMap, HeaderOp, LogLevel, MapType, MetricType, PeerType, Status,
    StreamType, Vm, VmConfig, WasmModule, abi,
};

/// A WAT callback that returns a host status as its action value.
fn status(s: Status) -> Action {
    Action::from(s as u32)
}

fn messages(vm: &Vm) -> Vec<String> {
    vm.logs().into_iter().map(|(_, m)| m).collect()
}

/// A callback export that logs `msg` and returns `ret` (if the callback has a result).
fn logging_cb(name: &str, params: usize, ret: Option<i32>, addr: u32, msg: &str) -> String {
    let params = "i32 ".repeat(params);
    let (result, value) = match ret {
        Some(v) => ("(result i32)".to_string(), format!("(i32.const {v})")),
        None => (String::new(), String::new()),
    };
    format!(
        "{}\n(func (export \"{name}\") (param {params}) {result} (drop (call $log (i32.const 2) (i32.const {addr}) (i32.const {}))) {value})",
        data(addr, msg),
        msg.len()
    )
}

#[test]
fn vm_and_module_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    assert_send::<Vm>();
    assert_send::<WasmModule>();
    assert_sync::<WasmModule>();
}

#[test]
fn http_lifecycle_follows_envoy_order() {
    let body = [
        logging_cb("proxy_on_context_create", 2, None, 1024, "create"),
        logging_cb("proxy_on_vm_start", 2, Some(1), 1040, "vm_start"),
        logging_cb("proxy_on_configure", 2, Some(1), 1056, "configure"),
        logging_cb("proxy_on_request_headers", 3, Some(0), 1072, "request_headers"),
        logging_cb("proxy_on_request_body", 3, Some(0), 1096, "request_body"),
        logging_cb("proxy_on_request_trailers", 2, Some(0), 1120, "request_trailers"),
        logging_cb("proxy_on_response_headers", 3, Some(0), 1144, "response_headers"),
        logging_cb("proxy_on_response_body", 3, Some(0), 1168, "response_body"),
        logging_cb("proxy_on_response_trailers", 2, Some(0), 1192, "response_trailers"),
        logging_cb("proxy_on_log", 1, None, 1216, "log"),
        logging_cb("proxy_on_done", 1, Some(1), 1232, "done"),
        logging_cb("proxy_on_delete", 1, None, 1248, "delete"),
    ]
    .join("\n");
    let mut vm = vm(&body);
    assert_eq!(vm.abi_version(), "0.2.1");
    let root = vm.start_root("r", b"cfg".to_vec()).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_ne!(h, root);
    assert_eq!(vm.on_request_headers(h, HeaderMap::from_pairs([(":path", "/")]), false).unwrap(), Action::Continue);
    vm.on_request_body(h, b"abc", false).unwrap();
    vm.on_request_trailers(h, HeaderMap::from_pairs([("t", "1")])).unwrap();
    vm.on_response_headers(h, HeaderMap::from_pairs([(":status", "200")]), false).unwrap();
    vm.on_response_body(h, b"xyz", false).unwrap();
    vm.on_response_trailers(h, HeaderMap::new()).unwrap();
    let state = vm.finish(h).unwrap();
    assert_eq!(state.kind, ContextKind::Http);
    assert_eq!(state.root_id, "r");
    assert!(vm.context(h).is_none(), "deleted contexts are forgotten");
    assert_eq!(
        messages(&vm),
        [
            "create",
            "vm_start",
            "configure",
            "create",
            "request_headers",
            "request_body",
            "request_trailers",
            "response_headers",
            "response_body",
            "response_trailers",
            "log",
            "done",
            "delete"
        ]
    );
    // Effects carry the context they happened in.
    let ctxs: Vec<u32> = vm
        .effects()
        .iter()
        .map(|e| match e {
            Effect::Log { context_id, .. } => *context_id,
            _ => 0,
        })
        .collect();
    assert_eq!(&ctxs[..4], &[root, root, root, h]);
    assert!(matches!(vm.finish(h), Err(Error::UnknownContext(_))));
    assert!(matches!(vm.on_request_headers(root, HeaderMap::new(), true), Err(Error::WrongContextKind { .. })));
}

#[test]
fn stream_lifecycle_and_data_buffers() {
    let body = format!(
        r#"{}{}
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))
        ;; Downstream data: pause on the first chunk, then log the whole buffer and prefix "P:".
        (global $seen (mut i32) (i32.const 0))
        (func (export "proxy_on_downstream_data") (param $id i32) (param $size i32) (param $eos i32) (result i32)
          (if (i32.eqz (global.get $seen)) (then (global.set $seen (i32.const 1)) (return (i32.const 1))))
          (drop (call $get_buf (i32.const 2) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          (drop (call $set_buf (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 2)))
          (i32.const 0))
        (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32)
          ;; returns the status of appending to the upstream buffer
          (call $set_buf (i32.const 3) (i32.const 1000) (i32.const 0) (i32.const 1040) (i32.const 1)))
        (func (export "proxy_on_downstream_connection_close") (param i32 i32)
          (drop (call $log (i32.const 2) (i32.const 1056) (i32.const 9))))
        (func (export "proxy_on_upstream_connection_close") (param i32 i32)
          (drop (call $log (i32.const 2) (i32.const 1072) (i32.const 9))))
        (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
        "#,
        data(1024, "P:"),
        data(1040, "!") + &data(1056, "ds_closed") + &data(1072, "us_closed"),
    );
    let mut vm = vm(&body);
    let root = vm.start_root("tcp", vec![]).unwrap();
    let s = vm.create_stream_context(root).unwrap();
    assert_eq!(vm.on_new_connection(s).unwrap(), Action::Continue);
    assert_eq!(vm.on_downstream_data(s, b"hel", false).unwrap(), Action::Pause);
    assert_eq!(vm.on_downstream_data(s, b"lo", false).unwrap(), Action::Continue);
    assert_eq!(vm.context(s).unwrap().downstream_data, b"P:hello");
    assert_eq!(vm.on_upstream_data(s, b"up", true).unwrap(), Action::Continue);
    assert_eq!(vm.context(s).unwrap().upstream_data, b"up!");
    vm.on_downstream_connection_close(s, PeerType::Remote).unwrap();
    vm.on_upstream_connection_close(s, PeerType::Local).unwrap();
    assert_eq!(messages(&vm), ["hello", "ds_closed", "us_closed"]);
    vm.finish(s).unwrap();
    assert!(
        vm.effects()
            .iter()
            .any(|e| matches!(e, Effect::BufferWrite { buffer: wasm_tests::BufferType::DownstreamData, .. }))
    );
}

#[test]
fn header_map_calls_and_binary_values() {
    // On request headers: copy x-bin to x-copy (add), replace x-a, remove x-gone,
    // then store the serialized pairs in property "pairs" so the test sees the exact bytes.
    let body = format!(
        r#"{}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (local $st i32)
          (local.set $st (call $get_hv (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 0) (i32.const 4)))
          (if (local.get $st) (then (return (local.get $st))))
          (drop (call $add_hv (i32.const 0) (i32.const 1040) (i32.const 6) (i32.load (i32.const 0)) (i32.load (i32.const 4))))
          (drop (call $rep_hv (i32.const 0) (i32.const 1056) (i32.const 3) (i32.const 1064) (i32.const 3)))
          (drop (call $rem_hv (i32.const 0) (i32.const 1072) (i32.const 6)))
          (drop (call $get_pairs (i32.const 0) (i32.const 0) (i32.const 4)))
          (drop (call $set_prop (i32.const 1088) (i32.const 5) (i32.load (i32.const 0)) (i32.load (i32.const 4))))
          ;; missing header -> NotFound (1) is returned as the action
          (call $get_hv (i32.const 0) (i32.const 1104) (i32.const 4) (i32.const 0) (i32.const 4)))
        "#,
        [
            data(1024, "X-Bin"),
            data(1040, "x-copy"),
            data(1056, "X-A"),
            data(1064, "new"),
            data(1072, "x-gone"),
            data(1088, "pairs"),
            data(1104, "nope")
        ]
        .join("")
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    let headers = HeaderMap::from_pairs([
        (&b":path"[..], &b"/p"[..]),
        (b"x-bin", &[0xff, 0x00, 0xfe]),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
        (b"x-gone", b"bye"),
    ]);
    let action = vm.on_request_headers(h, headers, true).unwrap();
    assert_eq!(action, status(Status::NotFound));
    let ctx = vm.context(h).unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = ctx.request_headers.pairs().clone();
    let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":path".to_vec(), b"/p".to_vec()),
        (b"x-bin".to_vec(), vec![0xff, 0x00, 0xfe]),
        (b"x-copy".to_vec(), vec![0xff, 0x00, 0xfe]),
        (b"x-a".to_vec(), b"new".to_vec()),
    ];
    assert_eq!(got, want, "replace drops every old value and appends (Envoy setCopy)");
    // The exact wire bytes the module received, built by hand here.
    let mut wire = Vec::new();
    wire.extend_from_slice(&4u32.to_le_bytes());
    for (k, v) in &want {
        wire.extend_from_slice(&(k.len() as u32).to_le_bytes());
        wire.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &want {
        wire.extend_from_slice(k);
        wire.push(0);
        wire.extend_from_slice(v);
        wire.push(0);
    }
    assert_eq!(vm.property(h, &["pairs"]).unwrap(), wire);
    let ops: Vec<&HeaderOp> = vm
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::HeaderMap { map: MapType::HttpRequestHeaders, op, .. } => Some(op),
            _ => None,
        })
        .collect();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[2], &HeaderOp::Remove { key: b"x-gone".to_vec() });
}

#[test]
fn set_header_map_pairs_replaces_the_map() {
    let pairs = abi::serialize_pairs(&[("A", "1"), ("b", "2")]);
    let body = format!(
        r#"(data (i32.const 1024) "{}")
        (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
          (drop (call $set_pairs (i32.const 2) (i32.const 1024) (i32.const {})))
          (drop (call $map_size (i32.const 2) (i32.const 0)))
          (i32.load (i32.const 0)))"#,
        escape(&pairs),
        pairs.len()
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    let action = vm.on_response_headers(h, HeaderMap::from_pairs([("old", "x")]), true).unwrap();
    assert_eq!(action, Action::Other(4), "byte size of a1 b2");
    assert_eq!(vm.context(h).unwrap().response_headers, HeaderMap::from_pairs([("a", "1"), ("b", "2")]));
}

#[test]
fn maps_are_only_reachable_while_envoy_holds_them() {
    // In every callback: return the status of reading request header "a".
    let cb = |name: &str, params: &str| {
        format!(
            r#"(func (export "{name}") (param {params}) (result i32)
                 (call $get_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4)))"#
        )
    };
    let body = [
        data(1024, "a"),
        cb("proxy_on_request_headers", "i32 i32 i32"),
        cb("proxy_on_response_headers", "i32 i32 i32"),
        // on_log: log the status as a one-char message "0" + status.
        r#"(data (i32.const 1100) "0")
           (func (export "proxy_on_log") (param i32)
             (i32.store8 (i32.const 1100) (i32.add (i32.const 48)
               (call $get_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4))))
             (drop (call $log (i32.const 2) (i32.const 1100) (i32.const 1)))
             (drop (call $get_hv (i32.const 1) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4)))
             (i32.store8 (i32.const 1100) (i32.add (i32.const 48)
               (call $get_hv (i32.const 1) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4))))
             (drop (call $log (i32.const 2) (i32.const 1100) (i32.const 1))))"#
            .to_string(),
    ]
    .join("\n");
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    let req = HeaderMap::from_pairs([("a", "1")]);
    assert_eq!(vm.on_request_headers(h, req, true).unwrap(), Action::Continue);
    // Request headers are gone after Continue: Envoy answers BadArgument (the SDK then panics).
    assert_eq!(vm.on_response_headers(h, HeaderMap::new(), true).unwrap(), status(Status::BadArgument));
    vm.on_log(h).unwrap();
    // Access-log phase: request headers readable again (Ok=0); request trailers NotFound (1).
    assert_eq!(messages(&vm), ["0", "1"]);
}

#[test]
fn properties_per_context_and_builtins_with_several_roots() {
    let body = format!(
        r#"{}
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $get_prop (i32.const 1024) (i32.const 14) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          ;; roots have no stream: set_property answers NotFound (recorded as an effect)
          (drop (call $set_prop (i32.const 1072) (i32.const 3) (i32.const 1072) (i32.const 3)))
          (i32.const 1))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (local $st i32)
          (drop (call $get_prop (i32.const 1024) (i32.const 14) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          (local.set $st (call $get_prop (i32.const 1040) (i32.const 12) (i32.const 0) (i32.const 4)))
          (if (local.get $st) (then (return (local.get $st))))
          (call $log_out (i32.const 2))
          (drop (call $set_prop (i32.const 1072) (i32.const 3) (i32.const 1080) (i32.const 5)))
          (i32.const 0))
        "#,
        [data(1024, "plugin_root_id"), data(1040, "request\0path"), data(1072, "out"), data(1080, "value")].join("")
    );
    let mut vm = vm(&body);
    let alpha = vm.start_root("alpha", vec![]).unwrap();
    let beta = vm.start_root("beta", vec![]).unwrap();
    assert_eq!(messages(&vm), ["alpha", "beta"]);
    assert!(vm.effects().iter().any(|e| matches!(e, Effect::PropertySet { status: Status::NotFound, .. })));

    vm.set_property(&["request", "path"], b"/global".to_vec());
    let h1 = vm.create_http_context(beta).unwrap();
    let h2 = vm.create_http_context(alpha).unwrap();
    vm.set_context_property(h1, &["request", "path"], b"/mine".to_vec()).unwrap();
    vm.take_effects();
    vm.on_request_headers(h1, HeaderMap::new(), true).unwrap();
    vm.on_request_headers(h2, HeaderMap::new(), true).unwrap();
    assert_eq!(messages(&vm), ["beta", "/mine", "alpha", "/global"]);
    assert_eq!(vm.property(h1, &["out"]).unwrap(), b"value");
    assert_eq!(vm.property(beta, &["out"]), None, "module-set properties are per stream");

    // Failure injection: the property read fails once, then works again.
    vm.inject(Failure::property(&["request", "path"], Status::InternalFailure).times(1));
    let h3 = vm.create_http_context(alpha).unwrap();
    assert_eq!(vm.on_request_headers(h3, HeaderMap::new(), true).unwrap(), Action::Other(10));
    assert_eq!(vm.on_request_headers(h3, HeaderMap::new(), true).unwrap(), Action::Continue);
    vm.remove_property(&["request", "path"]);
    assert_eq!(vm.on_request_headers(h3, HeaderMap::new(), true).unwrap(), status(Status::NotFound));
    assert!(vm.effects().iter().any(|e| matches!(
        e,
        Effect::InjectedFailure { hostcall: "proxy_get_property", status: Status::InternalFailure, .. }
    )));
}

#[test]
fn plugin_and_vm_configuration_buffers() {
    let body = r#"
        (func (export "proxy_on_vm_start") (param $id i32) (param $size i32) (result i32)
          (drop (call $get_buf (i32.const 6) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          (i32.const 1))
        (func (export "proxy_on_configure") (param $id i32) (param $size i32) (result i32)
          (drop (call $get_buf (i32.const 7) (i32.const 1) (i32.const 100) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          ;; reject an empty configuration
          (i32.ne (local.get $size) (i32.const 0)))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (call $get_buf (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 0) (i32.const 4)))
    "#;
    let module = module(body);
    let config = VmConfig { vm_configuration: b"vmconf".to_vec(), ..VmConfig::default() };
    let mut vm = Vm::new(&module, config).unwrap();
    let root = vm.start_root("r", b"{json}".to_vec()).unwrap();
    assert_eq!(messages(&vm), ["vmconf", "json}"]);
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), status(Status::NotFound));
    match vm.start_root("empty", vec![]) {
        Err(Error::Rejected { callback: "proxy_on_configure", root_id, .. }) => assert_eq!(root_id, "empty"),
        other => panic!("expected rejection, got {other:?}"),
    }
    vm.set_plugin_configuration(root, b"x2".to_vec()).unwrap();
    assert!(vm.on_configure(root).unwrap());
}

#[test]
fn metrics_follow_envoy_rules() {
    let body = format!(
        r#"{}
        (global $c (mut i32) (i32.const 0))
        (global $g (mut i32) (i32.const 0))
        (global $h (mut i32) (i32.const 0))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $def_metric (i32.const 0) (i32.const 1024) (i32.const 8) (i32.const 12)))
          (global.set $c (i32.load (i32.const 12)))
          (drop (call $def_metric (i32.const 1) (i32.const 1040) (i32.const 6) (i32.const 12)))
          (global.set $g (i32.load (i32.const 12)))
          (drop (call $def_metric (i32.const 2) (i32.const 1056) (i32.const 9) (i32.const 12)))
          (global.set $h (i32.load (i32.const 12)))
          (i32.const 1))
        ;; Returns a bitmask of unexpected statuses (0 = all as Envoy answers).
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (local $bad i32)
          (if (call $inc_metric (global.get $c) (i64.const 1)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 1)))))
          (if (i32.ne (call $inc_metric (global.get $c) (i64.const 0)) (i32.const 2)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 2)))))
          (if (call $inc_metric (global.get $g) (i64.const -3)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 4)))))
          (if (call $rec_metric (global.get $h) (i64.const 42)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 8)))))
          (if (i32.ne (call $inc_metric (global.get $h) (i64.const 1)) (i32.const 2)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 16)))))
          (if (i32.ne (call $get_metric (global.get $h) (i32.const 16)) (i32.const 2)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 32)))))
          (if (i32.ne (call $inc_metric (i32.const 400) (i64.const 1)) (i32.const 1)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 64)))))
          (if (call $get_metric (global.get $c) (i32.const 16)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 128)))))
          (if (i64.ne (i64.load (i32.const 16)) (i64.const 1)) (then (local.set $bad (i32.or (local.get $bad) (i32.const 256)))))
          (local.get $bad))
        "#,
        [data(1024, "requests"), data(1040, "active"), data(1056, "latency_s")].join("")
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), Action::Continue);
    let requests = vm.metric("requests").unwrap();
    assert_eq!((requests.metric_type, requests.value), (Some(MetricType::Counter), 1));
    assert_eq!(vm.metric("active").unwrap().value, -3);
    assert_eq!(vm.metric("latency_s").unwrap().samples, vec![42]);
    let defined: Vec<(u32, MetricType, String)> = vm
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::MetricDefined { id, metric_type, name, .. } => Some((*id, *metric_type, name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        defined,
        vec![
            (4, MetricType::Counter, "requests".into()),
            (5, MetricType::Gauge, "active".into()),
            (6, MetricType::Histogram, "latency_s".into()),
        ]
    );
    assert!(vm.effects().iter().any(|e| matches!(
        e,
        Effect::MetricIncremented { name, offset: 0, status: Status::BadArgument, .. } if name == "requests"
    )));
}

#[test]
fn shared_data_cas_through_the_abi() {
    let body = format!(
        r#"{}
        ;; returns: set(cas 0) | get | set(stale cas) must be CasMismatch | set(right cas)
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (local $cas i32)
          (if (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1032) (i32.const 2) (i32.const 0)) (then (return (i32.const 100))))
          (if (call $get_shared (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 8)) (then (return (i32.const 101))))
          (local.set $cas (i32.load (i32.const 8)))
          (call $log_out (i32.const 2))
          (if (i32.ne (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1040) (i32.const 2) (i32.add (local.get $cas) (i32.const 1))) (i32.const 8))
            (then (return (i32.const 102))))
          (if (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1040) (i32.const 2) (local.get $cas)) (then (return (i32.const 103))))
          ;; missing key -> NotFound
          (call $get_shared (i32.const 1048) (i32.const 7) (i32.const 0) (i32.const 4) (i32.const 8)))
        "#,
        [data(1024, "k"), data(1032, "v1"), data(1040, "v2"), data(1048, "missing")].join("")
    );
    let module = module(&body);
    let shared = wasm_tests::SharedData::default();
    let config = VmConfig { shared_data: shared.clone(), ..VmConfig::default() };
    let mut vm = Vm::new(&module, config).unwrap();
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), status(Status::NotFound));
    assert_eq!(messages(&vm), ["v1"]);
    assert_eq!(shared.get("k").unwrap().0, b"v2", "the handle sees the module's writes");
    let statuses: Vec<Status> = vm
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::SharedDataSet { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [Status::Ok, Status::CasMismatch, Status::Ok]);
}

#[test]
fn foreign_functions_are_pluggable_and_recorded() {
    let body = format!(
        r#"{}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (local $st i32)
          ;; (results pointer 0 would mean "no results wanted", as in Envoy)
          (local.set $st (call $foreign (i32.const 1024) (i32.const 7) (i32.const 1040) (i32.const 3) (i32.const 16) (i32.const 20)))
          (if (local.get $st) (then (return (local.get $st))))
          (drop (call $log (i32.const 2) (i32.load (i32.const 16)) (i32.load (i32.const 20))))
          (call $foreign (i32.const 1056) (i32.const 7) (i32.const 1040) (i32.const 3) (i32.const 0) (i32.const 4)))
        "#,
        [data(1024, "reverse"), data(1040, "abc"), data(1056, "unknown")].join("")
    );
    let mut vm = vm(&body);
    vm.register_foreign_function("reverse", |args| Ok(Some(args.iter().rev().copied().collect())));
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), status(Status::NotFound));
    assert_eq!(messages(&vm), ["cba"]);
    let calls: Vec<(String, Vec<u8>, Status)> = vm
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::ForeignCall { name, args, status, .. } => Some((name.clone(), args.clone(), *status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("reverse".to_string(), b"abc".to_vec(), Status::Ok),
            ("unknown".to_string(), b"abc".to_vec(), Status::NotFound),
        ]
    );
}

#[test]
fn local_response_and_stream_control_are_recorded() {
    let headers = abi::serialize_pairs(&[("X-Reason", "denied")]);
    let body = format!(
        r#"(data (i32.const 1024) "{}") {} {}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (drop (call $local_resp (i32.const 403) (i32.const 1200) (i32.const 6) (i32.const 1216) (i32.const 2)
                  (i32.const 1024) (i32.const {}) (i32.const -1)))
          (drop (call $close_stream (i32.const 1)))
          ;; continuing Upstream is unimplemented in Envoy
          (call $continue_stream (i32.const 3)))
        "#,
        escape(&headers),
        data(1200, "policy"),
        data(1216, "no"),
        headers.len()
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), status(Status::Unimplemented));
    let resp = vm.local_responses()[0].clone();
    assert_eq!(resp.status_code, 403);
    assert_eq!(resp.details, b"policy");
    assert_eq!(resp.body, b"no");
    assert_eq!(resp.headers, vec![(b"x-reason".to_vec(), b"denied".to_vec())]);
    assert_eq!(resp.grpc_status, -1);
    assert_eq!(vm.context(h).unwrap().local_response.as_ref(), Some(&resp));
    assert!(vm.effects().contains(&Effect::StreamClosed { context_id: h, stream: StreamType::HttpResponse }));
}

#[test]
fn traps_surface_as_errors_and_kill_the_vm() {
    // stderr text before the trap (where Rust's default panic hook writes) becomes `panic`.
    let body = format!(
        r#"{}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (i32.store (i32.const 0) (i32.const 1024))
          (i32.store (i32.const 4) (i32.const 15))
          (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
          unreachable)
        "#,
        data(1024, "panicked: boom\n")
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    match vm.on_request_headers(h, HeaderMap::new(), true) {
        Err(Error::Trap { callback, context_id, panic, trap }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert_eq!(context_id, h);
            assert_eq!(panic.as_deref(), Some("panicked: boom"));
            assert!(trap.contains("unreachable"), "{trap}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(vm.is_dead());
    assert_eq!(vm.stderr(), b"panicked: boom\n");
    assert!(vm.logs().contains(&(LogLevel::Error, "panicked: boom".to_string())));
    assert!(matches!(vm.create_http_context(root), Err(Error::VmDead(_))));
}

#[test]
fn bad_pointers_get_invalid_memory_access_not_a_host_panic() {
    let body = r#"
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          ;; message runs past the end of the 4-page memory
          (call $log (i32.const 2) (i32.const 262140) (i32.const 100)))
        (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
          ;; out-param pointer outside memory
          (call $get_pairs (i32.const 2) (i32.const -8) (i32.const 4)))
        (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
          ;; 4 GiB of random bytes: EFAULT (21), without the host allocating them
          (call $random (i32.const 0) (i32.const -1)))
    "#;
    let mut vm = vm(body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), Action::Other(6));
    assert_eq!(vm.on_response_headers(h, HeaderMap::new(), true).unwrap(), Action::Other(6));
    assert_eq!(vm.on_request_body(h, b"", true).unwrap(), Action::Other(21));
    assert!(!vm.is_dead());
    assert!(vm.effects().iter().any(|e| matches!(e, Effect::InvalidMemoryAccess { hostcall: "proxy_log", .. })));
}

#[test]
fn start_is_restricted_like_envoy() {
    let ok = format!(
        r#"{} (func (export "_initialize")
             (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 4)))
             (drop (call $random (i32.const 16) (i32.const 8))))"#,
        data(1024, "init")
    );
    let vm = vm(&ok);
    assert_eq!(messages(&vm), ["init"]);
    assert_eq!(vm.vm_hostcalls().get("proxy_log"), Some(&1));
    let bad = r#"(func (export "_initialize")
             (drop (call $def_metric (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 12))))"#;
    match Vm::new(&module(bad), VmConfig::default()) {
        Err(Error::Trap { callback, trap, .. }) => {
            assert_eq!(callback, "_initialize");
            assert!(trap.contains("restricted_callback"), "{trap}");
        }
        other => panic!("expected restricted_callback trap, got {:?}", other.err()),
    }
}

#[test]
fn modules_envoy_would_refuse_are_refused() {
    let no_abi = r#"(module (memory (export "memory") 1))"#;
    assert!(matches!(WasmModule::new(no_abi), Err(Error::MissingAbiVersion)));
    let unknown_import = r#"(module
        (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1")))"#;
    let m = WasmModule::new(unknown_import).unwrap();
    assert_eq!(m.imports(), vec![("wasi_snapshot_preview1".to_string(), "poll_oneoff".to_string())]);
    match Vm::new(&m, VmConfig::default()) {
        Err(Error::Instantiate(msg)) => assert!(msg.contains("poll_oneoff"), "{msg}"),
        other => panic!("expected link failure, got {:?}", other.err()),
    }
}

#[test]
fn wasi_clock_random_env_and_time() {
    let body = r#"
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 16)))
          (drop (call $now (i32.const 24)))
          (drop (call $random (i32.const 32) (i32.const 8)))
          (drop (call $env_sizes (i32.const 40) (i32.const 44)))
          (if (i64.ne (i64.load (i32.const 16)) (i64.load (i32.const 24))) (then (return (i32.const 90))))
          (if (i32.ne (i32.load (i32.const 40)) (i32.const 1)) (then (return (i32.const 91))))
          (if (i32.ne (i32.load (i32.const 44)) (i32.const 5)) (then (return (i32.const 92))))
          ;; unsupported clock id
          (call $clock (i32.const 2) (i64.const 1) (i32.const 16)))
        (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
          (drop (call $now (i32.const 24)))
          (i32.wrap_i64 (i64.div_u (i64.load (i32.const 24)) (i64.const 1000000000))))
    "#;
    let config = VmConfig { env: vec![("A".into(), "bc".into())], realtime_ns: 5_000_000_000, ..VmConfig::default() };
    let mut vm = Vm::new(&module(body), config).unwrap();
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), Action::Other(58));
    vm.advance_time(std::time::Duration::from_secs(2));
    assert_eq!(vm.on_response_headers(h, HeaderMap::new(), true).unwrap(), Action::Other(7));
}

#[test]
fn hostcalls_are_counted_per_context() {
    let body = r#"
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (drop (call $get_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4)))
          (drop (call $get_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 4)))
          (drop (call $add_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1024) (i32.const 1)))
          (i32.const 0))
    "#;
    let mut vm = vm(body);
    let root = vm.start_root("r", vec![]).unwrap();
    let done = vm.http_roundtrip(root, HeaderMap::new(), HeaderMap::new()).unwrap();
    assert_eq!(done.hostcalls.get("proxy_get_header_map_value"), Some(&2));
    assert_eq!(done.hostcalls.get("proxy_add_header_map_value"), Some(&1));
    assert_eq!(done.hostcall_total(), 3);
    assert_eq!(vm.context(root).unwrap().hostcall_total(), 0);
}

#[test]
fn effective_context_redirects_host_calls() {
    let body = format!(
        r#"{}
        (global $http (mut i32) (i32.const 0))
        (func (export "proxy_on_context_create") (param $id i32) (param $root i32)
          (if (local.get $root) (then (global.set $http (local.get $id)))))
        (func (export "proxy_on_tick") (param i32)
          (drop (call $set_effective (global.get $http)))
          (drop (call $add_hv (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1024) (i32.const 1))))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
        "#,
        data(1024, "z")
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), Action::Pause);
    vm.on_tick(root).unwrap();
    assert_eq!(vm.context(h).unwrap().request_headers.get_str("z").as_deref(), Some("z"));
    assert_eq!(vm.context(h).unwrap().hostcalls.get("proxy_add_header_map_value"), Some(&1));
}

#[test]
fn request_body_is_buffered_after_pause() {
    let body = r#"
        (func (export "proxy_on_request_body") (param $id i32) (param $size i32) (param $eos i32) (result i32)
          (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
          (drop (call $get_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
          (call $log_out (i32.const 2))
          ;; replace the first 3 bytes
          (drop (call $set_buf (i32.const 0) (i32.const 0) (i32.const 3) (i32.const 1024) (i32.const 1)))
          (i32.const 0))
        (data (i32.const 1024) "X")
    "#;
    let mut vm = vm(body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_body(h, b"abc", false).unwrap(), Action::Pause);
    assert_eq!(vm.on_request_body(h, b"def", true).unwrap(), Action::Continue);
    assert_eq!(messages(&vm), ["abcdef"]);
    assert_eq!(vm.context(h).unwrap().request_body, b"Xdef");
}

#[test]
fn root_done_waits_for_proxy_done_and_ticks_are_recorded() {
    let body = r#"
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $set_tick (i32.const 250)))
          (i32.const 1))
        (func (export "proxy_on_done") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_on_tick") (param i32) (drop (call $done)))
    "#;
    let mut vm = vm(body);
    let root = vm.start_root("r", vec![]).unwrap();
    assert_eq!(vm.context(root).unwrap().tick_period_ms, Some(250));
    assert!(!vm.on_done(root).unwrap());
    vm.on_tick(root).unwrap();
    assert!(vm.effects().contains(&Effect::Done { context_id: root }));
    vm.on_delete(root).unwrap();
}

#[test]
fn outbound_http_calls_are_recorded_and_refused() {
    let hdrs = abi::serialize_pairs(&[(":path", "/x")]);
    let body = format!(
        r#"(data (i32.const 1024) "{}") {}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (call $http_call (i32.const 1200) (i32.const 7) (i32.const 1024) (i32.const {}) (i32.const 0) (i32.const 0)
                (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 12)))
        "#,
        escape(&hdrs),
        data(1200, "cluster"),
        hdrs.len()
    );
    let mut vm = vm(&body);
    let root = vm.start_root("r", vec![]).unwrap();
    let h = vm.create_http_context(root).unwrap();
    assert_eq!(vm.on_request_headers(h, HeaderMap::new(), true).unwrap(), status(Status::BadArgument));
    assert!(vm.effects().iter().any(|e| matches!(
        e,
        Effect::HttpCall { upstream, timeout_ms: 500, headers, .. } if upstream == b"cluster" && headers.len() == 1
    )));
}
