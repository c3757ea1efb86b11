//! `make bench`, part 1: the waypoint side by side in one run, in every variant of
//! [`variants`] on the same two-network mesh (the harness topology), only the
//! waypoint Envoy process measured:
//!
//! 1. instructions per request under valgrind's callgrind (the figure to trust on a
//!    shared machine): a warm-up, then [`COUNTED`] requests counted with the
//!    instrumentation on only around them, [`REPEATS`] times; the idle process's
//!    timers (the 1 s stats flush and others, which keep firing while valgrind runs
//!    the requests 50-100 times slower) are measured right after, in the same
//!    process, and subtracted. Where our module's instructions above the do-nothing
//!    module go is read from the same dumps: V8's generated code, host calls, VM
//!    entries, Envoy's own code;
//! 2. the wall clock without valgrind, [`ROUNDS`] rounds, the order of the variants
//!    rotating each round (noisy: medians, min-max): from the load generator
//!    ([`loadgen`], h2load) on keep-alive connections to the same client entry,
//!    requests/s at saturation with 1 and with 64 connections and the waypoint's CPU
//!    per request in both, p50/p99 at one fixed moderate rate for every variant
//!    ([`FIXED_RATE_SHARE`] of plain's one-connection saturation), plotted to
//!    `bench/latency.svg`; from the harness's own clients with a new connection every
//!    10 requests, CPU per request, requests/s and p99; the waypoint's RSS;
//! 3. with `TUNNEL_RESULT=<file>` (`make bench` runs `cargo bench -p host-shim --bench
//!    tunnel` first, which writes it): the HBONE tunnel against a plain rustls stream.
//!
//! The callgrind phase counts both for keep-alive clients and for a new client
//! connection (hence a new HBONE CONNECT and new tunnels) every 10 requests. Prints
//! markdown, ratios first (BENCHMARKS.md takes it as is), and writes
//! `bench/results.json`.
//!
//! `BENCH_VARIANTS=plain,native` measures only those variants.
//! `BENCH_PHASES=callgrind` or `=wall` runs one phase; `BENCH_REPEATS` overrides
//! [`REPEATS`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::callgrind::{self, Callgrind, Function, GENERATED, Profile};
use harness::http::Connection;
use harness::loadgen;
use harness::plot::{self, Series};
use harness::topology::{Engine, Options, Topology, workspace_root};
use harness::traffic;

/// Requests counted per callgrind dump.
const COUNTED: usize = 2_000;
/// Requests before the counting starts: VM start, V8's tier-up, label sets, pools.
const WARM_UP: usize = 600;
/// Requests once the instrumentation is on, before the counting.
const INSTRUMENTED_WARM_UP: usize = 100;
/// Counted dumps per variant and shape: their spread is the repeatability.
const REPEATS: usize = 3;
/// Single requests tried before the warm-up, see [`settle`].
const SETTLE_ATTEMPTS: usize = 10;
/// How long the idle process is counted to measure its timers' rate.
const IDLE: Duration = Duration::from_secs(5);
/// Wall-clock rounds per variant, the order rotating.
const ROUNDS: usize = 5;
/// The load generator's keep-alive connections for the two saturation figures.
const SATURATION_CONNECTIONS: [usize; 2] = [1, 64];
const SATURATION_RUN: Duration = Duration::from_secs(3);
/// The fixed rate, the same for every variant: this share of plain's requests/s with
/// one connection, measured once before the rounds.
const FIXED_RATE_SHARE: f64 = 0.4;
/// Connections the fixed rate is spread over.
const FIXED_RATE_CONNECTIONS: usize = 4;
const FIXED_RATE_RUN: Duration = Duration::from_secs(4);
/// The load generator's run on each mesh before the rounds: tunnels, pools, VM tier-up.
const WARM_UP_RUN: Duration = Duration::from_secs(2);
/// The harness's concurrent clients (callgrind, and the wall clock's churn rounds),
/// each making its share of a round's requests.
const CLIENTS: usize = 4;
const REQUESTS_PER_ROUND: usize = 1_600;

/// One waypoint to measure: a name, what it is, and the mesh options that make it.
struct Variant {
    name: &'static str,
    what: &'static str,
    options: Options,
}

/// The waypoints compared, the first one the baseline of every ratio.
fn variants(noop_wasm: &Path) -> Vec<Variant> {
    vec![
        Variant {
            name: "plain",
            what: "Istio's listener topology without this project's filters",
            options: Options { telemetry: false, ..Options::default() },
        },
        Variant {
            name: "noop-wasm",
            what: "our config, a do-nothing proxy-wasm module in the three places",
            options: Options { module: Some(noop_wasm.to_path_buf()), ..Options::with_engine(Engine::Wasm) },
        },
        Variant {
            name: "wasm",
            what: "our config with dist/waypoint.wasm",
            options: Options::with_engine(Engine::Wasm),
        },
        Variant {
            name: "noop-native",
            what: "our config, the native module's do-nothing filter in the three places",
            options: Options::with_engine(Engine::NativeNoop),
        },
        Variant {
            name: "native",
            what: "our config with dist/libwaypoint_native.so (the native engine)",
            options: Options::with_engine(Engine::Native),
        },
    ]
}

/// How clients use their connections.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// Keep-alive: the per-request cost (the stats role).
    KeepAlive,
    /// A new client connection, hence a new HBONE CONNECT and tunnel, every 10 requests.
    Churn,
}

const SHAPES: [Shape; 2] = [Shape::KeepAlive, Shape::Churn];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::KeepAlive => "keep-alive",
            Shape::Churn => "new connection every 10 requests",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Shape::KeepAlive => "keepalive",
            Shape::Churn => "churn",
        }
    }
    fn per_connection(self) -> usize {
        match self {
            Shape::KeepAlive => usize::MAX,
            Shape::Churn => 10,
        }
    }
}

/// One variant's callgrind figures for one shape.
struct Counted {
    /// Instructions per request of each repeat, the idle timers subtracted.
    per_request: Vec<f64>,
    /// The idle process's instructions per second (subtracted above).
    idle_rate: f64,
    /// The median repeat's profile per request, idle subtracted.
    profile: Profile,
}

/// One variant's wall-clock figures, one entry per round.
#[derive(Default)]
struct Timed {
    /// The waypoint's CPU per request at saturation, µs, per [`SATURATION_CONNECTIONS`].
    cpu_us: [Vec<f64>; 2],
    /// Requests/s at saturation, per [`SATURATION_CONNECTIONS`].
    rps: [Vec<f64>; 2],
    /// Latencies at the fixed rate: each round's p50 and p99, ms, and all of them.
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    fixed_rate_latencies: Vec<Duration>,
    /// The harness's clients, a new connection every 10 requests.
    churn_cpu_us: Vec<f64>,
    churn_rps: Vec<f64>,
    churn_p99_ms: Vec<f64>,
    /// The waypoint's resident memory after each round, MiB.
    rss_mib: Vec<f64>,
}

/// What the wall-clock phase measured, and at which fixed rate.
struct Wall {
    timed: BTreeMap<usize, Timed>,
    fixed_rate: u32,
    calibration_rps: f64,
    generator: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    let noop = std::env::var_os("NOOP_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/noop_filter.wasm"));
    if !noop.is_file() {
        bail!("{} is missing: cargo build --release -p noop-filter --target wasm32-wasip1", noop.display());
    }
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "callgrind,wall".to_owned());
    let repeats = std::env::var("BENCH_REPEATS").ok().and_then(|r| r.parse().ok()).unwrap_or(REPEATS);
    // `BENCH_VARIANTS=plain,native` measures only those (ratios need `plain`).
    let selected = std::env::var("BENCH_VARIANTS").ok();
    let variants: Vec<Variant> = variants(&noop)
        .into_iter()
        .filter(|v| selected.as_deref().is_none_or(|names| names.split(',').any(|name| name == v.name)))
        .collect();
    // Read first: a missing or broken file fails the run before the long phases.
    let tunnel = match std::env::var_os("TUNNEL_RESULT") {
        Some(file) => Some(Tunnel::read(Path::new(&file))?),
        None => None,
    };
    let mut details = String::new();
    let mut results = serde_json::Map::new();
    if phases.contains("callgrind") {
        let counted = count_instructions(&variants, repeats).await?;
        report_instructions(&mut details, &mut results, &variants, &counted, repeats);
        report_profile(&mut details, &variants, &counted);
    }
    if phases.contains("wall") {
        let wall = time_requests(&variants).await?;
        report_wall(&mut details, &mut results, &variants, &wall);
        let svg = root.join("bench/latency.svg");
        std::fs::create_dir_all(root.join("bench"))?;
        std::fs::write(&svg, latency_plot(&variants, &wall))?;
        let _ = writeln!(details, "Latency distributions at the fixed rate: [bench/latency.svg](bench/latency.svg).\n");
    }
    if let Some(tunnel) = &tunnel {
        report_tunnel(&mut details, &mut results, tunnel);
    }
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", machine());
    for v in &variants {
        let _ = writeln!(out, "- `{}`: {}", v.name, v.what);
    }
    report_ratios(&mut out, &results, &variants);
    out.push_str(&details);
    println!("{out}");
    let file = root.join("bench/results.json");
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::write(&file, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("(also in {})", file.display());
    Ok(())
}

// ------------------------------------------------------------------ instructions

async fn count_instructions(variants: &[Variant], repeats: usize) -> anyhow::Result<BTreeMap<(usize, Shape), Counted>> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    eprintln!("starting {} waypoints under callgrind (slow)", variants.len());
    let mut starting = Vec::new();
    for v in variants {
        let prefix = dir.join(format!("callgrind.{}", v.name));
        let options = Options { waypoint_under: Some(callgrind::command(&prefix)), ..v.options.clone() };
        starting.push((prefix, tokio::spawn(Topology::start(options))));
    }
    let mut meshes = Vec::new();
    for ((prefix, start), v) in starting.into_iter().zip(variants) {
        let mesh = start.await?.with_context(|| format!("starting the {} mesh under callgrind", v.name))?;
        let pid = mesh.waypoint_pid().context("the waypoint has no process")?;
        meshes.push((mesh, Callgrind::new(pid, &prefix)));
    }
    let mut counted = BTreeMap::new();
    for shape in SHAPES {
        for (i, ((mesh, cg), v)) in meshes.iter_mut().zip(variants).enumerate() {
            eprintln!("callgrind: {} {}", v.name, shape.name());
            settle(mesh).await?;
            load(mesh, shape, WARM_UP).await?;
            cg.instrument(true)?;
            // Valgrind translates all code again once instrumented: the first tunnels
            // can take longer than the waypoint's 5 s connect timeout to the gateway.
            for attempt in 1.. {
                match load(mesh, shape, INSTRUMENTED_WARM_UP).await {
                    Ok(_) => break,
                    Err(e) if attempt < SETTLE_ATTEMPTS => eprintln!("  instrumented warm-up {attempt}: {e}"),
                    Err(e) => return Err(e.context("the instrumented warm-up never succeeded")),
                }
            }
            let mut dumps = Vec::new();
            for _ in 0..repeats {
                cg.zero()?;
                let started = Instant::now();
                load(mesh, shape, COUNTED).await?;
                let wall = started.elapsed();
                dumps.push((cg.dump()?, wall));
            }
            cg.zero()?;
            let started = Instant::now();
            tokio::time::sleep(IDLE).await;
            let idle_wall = started.elapsed().as_secs_f64();
            let idle = cg.dump()?;
            cg.instrument(false)?;
            let mut corrected: Vec<Profile> =
                dumps.iter().map(|(p, wall)| p.minus(&idle, wall.as_secs_f64() / idle_wall)).collect();
            let per_request: Vec<f64> = corrected.iter().map(|p| p.total / COUNTED as f64).collect();
            corrected.sort_by(|a, b| a.total.total_cmp(&b.total));
            let median = corrected.swap_remove(corrected.len() / 2);
            let profile = median.scaled(1.0 / COUNTED as f64);
            counted.insert((i, shape), Counted { per_request, idle_rate: idle.total / idle_wall, profile });
        }
    }
    Ok(counted)
}

fn report_instructions(
    out: &mut String,
    results: &mut serde_json::Map<String, serde_json::Value>,
    variants: &[Variant],
    counted: &BTreeMap<(usize, Shape), Counted>,
    repeats: usize,
) {
    let _ = writeln!(
        out,
        "\n### Instructions per request (callgrind, the waypoint Envoy alone; {repeats} dumps of {COUNTED} requests \
         after {WARM_UP} of warm-up; idle timers subtracted)\n"
    );
    let _ = writeln!(out, "| variant | {} |", SHAPES.map(|s| format!("{} (min-max) | × plain", s.name())).join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|---:|".repeat(SHAPES.len()));
    for (i, v) in variants.iter().enumerate() {
        let mut row = format!("| {} |", v.name);
        for shape in SHAPES {
            let (Some(c), Some(plain)) = (counted.get(&(i, shape)), counted.get(&(0, shape))) else { continue };
            let ratio = median(&c.per_request) / median(&plain.per_request);
            let _ = write!(
                row,
                " {:.1} k ({:.1}-{:.1}, spread {:.2} %) | {ratio:.3} |",
                median(&c.per_request) / 1e3,
                min(&c.per_request) / 1e3,
                max(&c.per_request) / 1e3,
                spread(&c.per_request) * 100.0
            );
            results
                .insert(format!("{}_instructions_per_request_{}", v.name, shape.key()), median(&c.per_request).into());
            if i > 0 {
                results.insert(format!("{}_instructions_ratio_{}", v.name, shape.key()), ratio.into());
            }
        }
        let _ = writeln!(out, "{row}");
    }
    for shape in SHAPES {
        let rates: Vec<String> = variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some(format!("{} {:.2} M/s", v.name, counted.get(&(i, shape))?.idle_rate / 1e6)))
            .collect();
        let _ = writeln!(out, "\nIdle timers subtracted ({}): {}", shape.name(), rates.join(", "));
    }
    for (ours, floor) in [("wasm", "noop-wasm"), ("native", "noop-native")] {
        let (Some(o), Some(f)) = (position(variants, ours), position(variants, floor)) else { continue };
        for shape in SHAPES {
            let (Some(a), Some(b)) = (counted.get(&(o, shape)), counted.get(&(f, shape))) else { continue };
            let ratio = median(&a.per_request) / median(&b.per_request);
            let _ = writeln!(out, "\n{ours} / {floor}, {}: **{ratio:.3}×** (goal ≤ 1.10×)", shape.name());
            results.insert(format!("{ours}_over_floor_instructions_ratio_{}", shape.key()), ratio.into());
        }
    }
    // The names issue 11 asks for.
    let alias = |results: &mut serde_json::Map<String, serde_json::Value>, to: &str, from: &str| {
        if let Some(v) = results.get(from).cloned() {
            results.insert(to.to_owned(), v);
        }
    };
    alias(results, "waypoint_instructions_ratio", "wasm_instructions_ratio_keepalive");
    alias(results, "floor_instructions_ratio", "noop-wasm_instructions_ratio_keepalive");
    alias(results, "native_instructions_ratio", "native_instructions_ratio_keepalive");
    alias(results, "native_floor_instructions_ratio", "noop-native_instructions_ratio_keepalive");
}

/// Where our wasm module's instructions above the do-nothing module go, per
/// keep-alive request, from the median dumps.
fn report_profile(out: &mut String, variants: &[Variant], counted: &BTreeMap<(usize, Shape), Counted>) {
    let at = |name| position(variants, name).and_then(|i| counted.get(&(i, Shape::KeepAlive)));
    let (Some(noop), Some(wasm)) = (at("noop-wasm"), at("wasm")) else { return };
    let (n, w) = (&noop.profile, &wasm.profile);
    let envoy = main_object(w);
    let _ = writeln!(
        out,
        "\n### Where wasm's instructions above noop-wasm go (keep-alive, per request)\n\n\
         `{GENERATED}` is code with no file behind it: V8's generated code (the module compiled, its \
         wrappers). `{envoy}` is stripped, so its functions are addresses.\n"
    );
    let _ = writeln!(out, "| part | noop-wasm | wasm | wasm − noop-wasm |\n|---|---:|---:|---:|");
    let row = |out: &mut String, part: &str, a: f64, b: f64| {
        let _ = writeln!(out, "| {part} | {:.1} k | {:.1} k | {:+.1} k |", a / 1e3, b / 1e3, (b - a) / 1e3);
    };
    row(out, "all instructions", n.total, w.total);
    for object in objects(n, w) {
        let self_cost = |p: &Profile| p.by_object.get(&object).copied().unwrap_or(0.0);
        row(out, &format!("self cost in `{object}`"), self_cost(n), self_cost(w));
    }
    let (hn, hw) = (n.across(GENERATED, None), w.across(GENERATED, None));
    let (vn, vw) = (n.across(&envoy, Some(GENERATED)), w.across(&envoy, Some(GENERATED)));
    let _ = writeln!(
        out,
        "| host calls (`{GENERATED}` → other code), inclusive | {:.1} k | {:.1} k | {:+.1} k |",
        hn.inclusive / 1e3,
        hw.inclusive / 1e3,
        (hw.inclusive - hn.inclusive) / 1e3
    );
    let _ = writeln!(
        out,
        "| VM entries (`{envoy}` → `{GENERATED}`), inclusive, nested entries counted again | {:.1} k | {:.1} k | {:+.1} k |",
        vn.inclusive / 1e3,
        vw.inclusive / 1e3,
        (vw.inclusive - vn.inclusive) / 1e3
    );
    let _ = writeln!(
        out,
        "\nCalls per request: host calls {:.1} → {:.1}, VM entries {:.1} → {:.1}.",
        hn.count, hw.count, vn.count, vw.count
    );

    let _ = writeln!(
        out,
        "\nWhat the generated code calls in other objects (wasm, per request: calls, instructions inclusive), \
         three levels down:\n"
    );
    let mut entries: Vec<(Function, callgrind::Calls)> = w.entered_from(GENERATED).into_iter().collect();
    entries.sort_by(|a, b| b.1.inclusive.total_cmp(&a.1.inclusive));
    for (function, calls) in entries.iter().take(6) {
        call_tree(out, w, function, calls, 0);
    }

    let _ = writeln!(out, "\nThe functions whose own cost grew most (wasm − noop-wasm, per request):\n");
    let _ = writeln!(out, "| object | function | noop-wasm | wasm | Δ |\n|---|---|---:|---:|---:|");
    let mut grown: Vec<(&Function, f64, f64)> = w
        .by_function
        .iter()
        .map(|(f, b)| (f, n.by_function.get(f).copied().unwrap_or(0.0), *b))
        .filter(|(f, _, _)| f.0 != GENERATED)
        .collect();
    grown.sort_by(|a, b| (b.2 - b.1).total_cmp(&(a.2 - a.1)));
    for (f, a, b) in grown.iter().take(12) {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {:.1} k | {:.1} k | {:+.1} k |",
            f.0,
            short(&f.1),
            a / 1e3,
            b / 1e3,
            (b - a) / 1e3
        );
    }
    let generated = |p: &Profile| p.by_function.iter().filter(|(f, _)| f.0 == GENERATED).count();
    let _ = writeln!(
        out,
        "\nV8's generated code: {} functions with a cost in noop-wasm, {} in wasm.",
        generated(n),
        generated(w)
    );
}

/// One function and, indented, its costliest callees, down to the third level.
fn call_tree(out: &mut String, p: &Profile, function: &Function, calls: &callgrind::Calls, depth: usize) {
    let _ = writeln!(
        out,
        "{}- `{}` `{}`: {:.2}×, {:.1} k",
        "  ".repeat(depth),
        function.0,
        short(&function.1),
        calls.count,
        calls.inclusive / 1e3
    );
    if depth >= 2 {
        return;
    }
    let mut callees = p.callees(function);
    callees.sort_by(|a, b| b.1.inclusive.total_cmp(&a.1.inclusive));
    for (callee, c) in callees.iter().filter(|(_, c)| c.inclusive > 100.0).take(if depth == 0 { 8 } else { 3 }) {
        call_tree(out, p, callee, c, depth + 1);
    }
}

/// The object with the most self cost: Envoy's binary.
fn main_object(p: &Profile) -> String {
    p.by_object.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(o, _)| o.clone()).unwrap_or_default()
}

/// Objects with more than 0.5 k instructions per request in either profile, costliest first.
fn objects(a: &Profile, b: &Profile) -> Vec<String> {
    let mut list: Vec<(String, f64)> = b
        .by_object
        .iter()
        .map(|(o, v)| (o.clone(), v.max(a.by_object.get(o).copied().unwrap_or(0.0))))
        .filter(|(_, v)| *v > 500.0)
        .collect();
    list.sort_by(|x, y| y.1.total_cmp(&x.1));
    list.into_iter().map(|(o, _)| o).collect()
}

/// A function name as the tables show it: addresses without their leading zeros.
fn short(name: &str) -> String {
    match name.strip_prefix("0x") {
        Some(hex) => format!("0x{}", hex.trim_start_matches('0')),
        None => name.chars().take(60).collect(),
    }
}

// ------------------------------------------------------------------ wall clock

async fn time_requests(variants: &[Variant]) -> anyhow::Result<Wall> {
    let generator = loadgen::version().await.context("the load generator (make bench installs nghttp2-client)")?;
    let mut meshes = Vec::new();
    for v in variants {
        meshes.push(Topology::start(v.options.clone()).await.with_context(|| format!("starting the {} mesh", v.name))?);
    }
    eprintln!("wall clock: warm-up");
    let [c1, c64] = SATURATION_CONNECTIONS;
    for mesh in &meshes {
        saturate(mesh, c64, WARM_UP_RUN).await?;
        load(mesh, Shape::Churn, REQUESTS_PER_ROUND).await?;
    }
    // The first variant is the baseline: plain, unless BENCH_VARIANTS leaves it out.
    let baseline = meshes.first().context("no variant selected")?;
    let calibration_rps = saturate(baseline, c1, SATURATION_RUN).await?.0.per_second;
    let per_connection = (calibration_rps * FIXED_RATE_SHARE / FIXED_RATE_CONNECTIONS as f64).round().max(1.0) as u32;
    let fixed_rate = per_connection * FIXED_RATE_CONNECTIONS as u32;
    eprintln!("wall clock: {calibration_rps:.0} requests/s with one connection, fixed rate {fixed_rate}/s");
    let mut timed: BTreeMap<usize, Timed> = BTreeMap::new();
    for round in 0..ROUNDS {
        eprintln!("wall clock: round {}/{ROUNDS}", round + 1);
        for k in 0..meshes.len() {
            let i = (k + round) % meshes.len();
            let Some(mesh) = meshes.get(i) else { continue };
            let t = timed.entry(i).or_default();
            for (n, connections) in SATURATION_CONNECTIONS.into_iter().enumerate() {
                let (outcome, cpu) = saturate(mesh, connections, SATURATION_RUN).await?;
                if let (Some(cpu_us), Some(rps)) = (t.cpu_us.get_mut(n), t.rps.get_mut(n)) {
                    cpu_us.push(cpu.as_secs_f64() * 1e6 / outcome.requests as f64);
                    rps.push(outcome.per_second);
                }
            }
            let outcome = generate(mesh, FIXED_RATE_CONNECTIONS, FIXED_RATE_RUN, Some(per_connection)).await?;
            let ms = sorted_ms(&outcome.latencies);
            t.p50_ms.push(plot::quantile(&ms, 0.5));
            t.p99_ms.push(plot::quantile(&ms, 0.99));
            t.fixed_rate_latencies.extend(outcome.latencies);

            let before = mesh.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
            let started = Instant::now();
            let latencies = load(mesh, Shape::Churn, REQUESTS_PER_ROUND).await?;
            let wall = started.elapsed().as_secs_f64();
            let cpu = mesh.waypoint_cpu_time().context("reading the waypoint's CPU time")?.saturating_sub(before);
            t.churn_cpu_us.push(cpu.as_secs_f64() * 1e6 / REQUESTS_PER_ROUND as f64);
            t.churn_rps.push(REQUESTS_PER_ROUND as f64 / wall);
            t.churn_p99_ms.push(plot::quantile(&sorted_ms(&latencies), 0.99));

            let rss = mesh.memory().into_iter().find(|(name, _)| name == "waypoint").map(|(_, b)| b).unwrap_or(0);
            t.rss_mib.push(rss as f64 / (1024.0 * 1024.0));
        }
    }
    Ok(Wall { timed, fixed_rate, calibration_rps, generator })
}

/// The load generator as fast as the mesh answers: what it measured and the
/// waypoint's CPU time meanwhile.
async fn saturate(
    mesh: &Topology,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(loadgen::Outcome, Duration)> {
    let before = mesh.waypoint_cpu_time().context("reading the waypoint's CPU time")?;
    let outcome = generate(mesh, connections, duration, None).await?;
    let cpu = mesh.waypoint_cpu_time().context("reading the waypoint's CPU time")?.saturating_sub(before);
    Ok((outcome, cpu))
}

/// The load generator on keep-alive connections to the entry the harness's clients
/// use (ztunnel-a's outbound listener for curl), the same requests as theirs.
async fn generate(
    mesh: &Topology,
    connections: usize,
    duration: Duration,
    rate_per_connection: Option<u32>,
) -> anyhow::Result<loadgen::Outcome> {
    let run = loadgen::Run {
        entry: mesh.plan.outbound(mesh.plan.curl()),
        authority: traffic::service_host(),
        path: "/request/load".to_owned(),
        headers: vec![("baggage".to_owned(), traffic::app_baggage(0))],
        connections,
        duration,
        rate_per_connection,
        log: workspace_root().join("target/bench/h2load.log"),
    };
    Ok(run.run().await?)
}

fn sorted_ms(latencies: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn report_wall(
    out: &mut String,
    results: &mut serde_json::Map<String, serde_json::Value>,
    variants: &[Variant],
    wall: &Wall,
) {
    let Some(plain) = wall.timed.get(&0) else { return };
    let [c1, c64] = SATURATION_CONNECTIONS;
    let _ = writeln!(
        out,
        "\n### Wall clock (noisy: medians of {ROUNDS} rounds, the order of the variants rotating each round; \
         min-max in brackets)\n\n\
         Load generator: `{}`, HTTP/1.1 keep-alive connections to curl's entry (ztunnel-a). Saturation: \
         {} s runs with {c1} and with {c64} connections, the waypoint's CPU per request in each. Fixed rate: \
         **{} requests/s** for every variant ({:.0} % of the {:.0} requests/s of `{}` with one connection in a \
         calibration run), {FIXED_RATE_CONNECTIONS} connections, {} s per round.\n",
        wall.generator,
        SATURATION_RUN.as_secs(),
        wall.fixed_rate,
        FIXED_RATE_SHARE * 100.0,
        wall.calibration_rps,
        variants.first().map(|v| v.name).unwrap_or_default(),
        FIXED_RATE_RUN.as_secs(),
    );
    let _ = writeln!(
        out,
        "| variant | requests/s, {c1} connection | requests/s, {c64} connections | p50 ms at {r}/s | p99 ms at {r}/s | \
         CPU µs/request, {c1} conn. | CPU µs/request, {c64} conn. | RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        r = wall.fixed_rate
    );
    for (i, v) in variants.iter().enumerate() {
        let Some(t) = wall.timed.get(&i) else { continue };
        let [cpu1, cpu64] = &t.cpu_us;
        let [rps1, rps64] = &t.rps;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            spread_cell(rps1, 0),
            spread_cell(rps64, 0),
            spread_cell(&t.p50_ms, 2),
            spread_cell(&t.p99_ms, 2),
            spread_cell(cpu1, 1),
            spread_cell(cpu64, 1),
            spread_cell(&t.rss_mib, 0)
        );
        let ([plain_cpu1, plain_cpu64], [plain_rps1, plain_rps64]) = (&plain.cpu_us, &plain.rps);
        // (the median's name, its ratio's name, this variant's samples, plain's)
        let figures = [
            ("rps_c1", "rps_ratio_c1", rps1, plain_rps1),
            ("rps_c64", "rps_ratio_c64", rps64, plain_rps64),
            ("p50_ms", "p50_ratio", &t.p50_ms, &plain.p50_ms),
            ("p99_ms", "p99_ratio", &t.p99_ms, &plain.p99_ms),
            ("cpu_us_c1", "cpu_ratio_keepalive", cpu1, plain_cpu1),
            ("cpu_us_c64", "cpu_ratio_c64", cpu64, plain_cpu64),
            ("rss_mib", "rss_ratio", &t.rss_mib, &plain.rss_mib),
            ("cpu_us_churn", "cpu_ratio_churn", &t.churn_cpu_us, &plain.churn_cpu_us),
            ("rps_churn", "rps_ratio_churn", &t.churn_rps, &plain.churn_rps),
            ("p99_ms_churn", "p99_ratio_churn", &t.churn_p99_ms, &plain.churn_p99_ms),
        ];
        for (absolute, ratio, x, base) in figures {
            results.insert(format!("{}_{absolute}", v.name), median(x).into());
            if i > 0 {
                results.insert(format!("{}_{ratio}", v.name), (median(x) / median(base)).into());
            }
        }
    }
    results.insert("fixed_rate_rps".to_owned(), wall.fixed_rate.into());
    let _ = writeln!(
        out,
        "\nNew connection every 10 requests ({CLIENTS} concurrent clients of the harness, {REQUESTS_PER_ROUND} \
         requests per round):\n\n\
         | variant | CPU µs/request | requests/s | p99 ms |\n|---|---:|---:|---:|"
    );
    for (i, v) in variants.iter().enumerate() {
        let Some(t) = wall.timed.get(&i) else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            v.name,
            spread_cell(&t.churn_cpu_us, 1),
            spread_cell(&t.churn_rps, 0),
            spread_cell(&t.churn_p99_ms, 2)
        );
    }
    let _ = writeln!(out);
    for (to, from) in [
        ("waypoint_cpu_ratio", "wasm_cpu_ratio_keepalive"),
        ("waypoint_rps_ratio_c1", "wasm_rps_ratio_c1"),
        ("waypoint_rps_ratio_c64", "wasm_rps_ratio_c64"),
        ("waypoint_p50_ratio", "wasm_p50_ratio"),
        ("waypoint_p99_ratio", "wasm_p99_ratio"),
        ("waypoint_rss_ratio", "wasm_rss_ratio"),
        ("native_cpu_ratio", "native_cpu_ratio_keepalive"),
    ] {
        if let Some(v) = results.get(from).cloned() {
            results.insert(to.to_owned(), v);
        }
    }
}

/// `median (min-max)` with `decimals` decimals.
fn spread_cell(samples: &[f64], decimals: usize) -> String {
    format!("{:.decimals$} ({:.decimals$}-{:.decimals$})", median(samples), min(samples), max(samples))
}

/// The fixed-rate latencies of every variant, all rounds pooled.
fn latency_plot(variants: &[Variant], wall: &Wall) -> String {
    let series: Vec<Series> = variants
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let t = wall.timed.get(&i)?;
            Some(Series { label: v.name.to_owned(), latencies: t.fixed_rate_latencies.clone() })
        })
        .collect();
    plot::latency_cdf(
        &format!(
            "Latency through the mesh at {} requests/s ({FIXED_RATE_CONNECTIONS} keep-alive connections, {ROUNDS} rounds pooled)",
            wall.fixed_rate
        ),
        &series,
    )
}

/// The figures `cargo bench -p host-shim --bench tunnel` writes to `TUNNEL_RESULT`.
#[derive(serde::Deserialize)]
struct Tunnel {
    mib: usize,
    runs: usize,
    plain_mib_per_s: f64,
    tunnel_mib_per_s: f64,
}

impl Tunnel {
    fn read(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
    }
}

fn report_tunnel(out: &mut String, results: &mut serde_json::Map<String, serde_json::Value>, t: &Tunnel) {
    let ratio = t.tunnel_mib_per_s / t.plain_mib_per_s;
    let _ = writeln!(
        out,
        "\n### HBONE tunnel\n\n\
         `cargo bench -p host-shim --bench tunnel`: {} MiB one way through one HBONE tunnel between two host-shims \
         (mTLS + HTTP/2 CONNECT) against a plain rustls TLS 1.3 stream between the same tasks, same process, \
         certificates and cipher suites; best of {}:\n\n\
         | stream | MiB/s |\n|---|---:|\n\
         | plain rustls TLS stream | {:.1} |\n\
         | HBONE tunnel (2 shims) | {:.1} |\n\
         | **tunnel / TLS** | **{ratio:.2}** (goal ≥ 0.6) |\n",
        t.mib, t.runs, t.plain_mib_per_s, t.tunnel_mib_per_s
    );
    results.insert("tunnel_plain_tls_mib_per_s".to_owned(), t.plain_mib_per_s.into());
    results.insert("tunnel_hbone_mib_per_s".to_owned(), t.tunnel_mib_per_s.into());
    results.insert("tunnel_throughput_ratio".to_owned(), ratio.into());
}

/// The ratio table that opens the report, from the figures the phases put in results.json.
fn report_ratios(out: &mut String, results: &serde_json::Map<String, serde_json::Value>, variants: &[Variant]) {
    let columns = [
        ("instructions_ratio_keepalive", "instructions, keep-alive"),
        ("instructions_ratio_churn", "instructions, new conn. every 10"),
        ("cpu_ratio_keepalive", "CPU/request, 1 conn."),
        ("cpu_ratio_churn", "CPU/request, new conn. every 10"),
        ("rps_ratio_c1", "requests/s, 1 conn."),
        ("rps_ratio_c64", "requests/s, 64 conn."),
        ("p50_ratio", "p50 at the fixed rate"),
        ("p99_ratio", "p99 at the fixed rate"),
        ("rss_ratio", "RSS"),
    ];
    let Some(plain) = variants.first() else { return };
    let _ = writeln!(out, "\n### Ratios (variant / {}, medians; the figures behind them below)\n", plain.name);
    let _ = writeln!(out, "| variant | {} |\n|---|{}", columns.map(|c| c.1).join(" | "), "---:|".repeat(columns.len()));
    for v in variants.iter().skip(1) {
        let cells: Vec<String> = columns
            .iter()
            .map(|(key, _)| {
                results
                    .get(&format!("{}_{key}", v.name))
                    .and_then(|r| r.as_f64())
                    .map_or("–".to_owned(), |r| format!("{r:.2}"))
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", v.name, cells.join(" | "));
    }
    let over_floor: Vec<String> = [("wasm", "noop-wasm"), ("native", "noop-native")]
        .iter()
        .filter_map(|(ours, floor)| {
            let r = results.get(&format!("{ours}_over_floor_instructions_ratio_keepalive"))?.as_f64()?;
            Some(format!("{ours} / {floor} {r:.3}×"))
        })
        .collect();
    if !over_floor.is_empty() {
        let _ = writeln!(
            out,
            "\nInstructions of our module over its do-nothing module, keep-alive: {} (goal ≤ 1.10×).",
            over_floor.join(", ")
        );
    }
    if let Some(r) = results.get("tunnel_throughput_ratio").and_then(|r| r.as_f64()) {
        let _ = writeln!(out, "\nHBONE tunnel / plain rustls stream, throughput: {r:.2} (goal ≥ 0.6).");
    }
}

// ------------------------------------------------------------------ load

/// `requests` requests through the mesh from [`CLIENTS`] concurrent clients in
/// `shape`; every one must succeed. Returns each request's latency.
async fn load(topology: &Topology, shape: Shape, requests: usize) -> anyhow::Result<Vec<Duration>> {
    let entry = topology.plan.outbound(topology.plan.curl());
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let share = requests / CLIENTS + usize::from(n < requests % CLIENTS);
        clients.push(tokio::spawn(timed_client(entry, share, shape.per_connection(), traffic::app_baggage(n))));
    }
    let mut latencies = Vec::with_capacity(requests);
    for client in clients {
        latencies.extend(client.await??);
    }
    Ok(latencies)
}

/// Single requests until one succeeds: under valgrind the first requests through a
/// fresh waypoint (V8 compiling the module's functions on their first call) can take
/// longer than the east-west gateway waits for a tunnel's TLS handshake.
async fn settle(topology: &Topology) -> anyhow::Result<()> {
    let entry = topology.plan.outbound(topology.plan.curl());
    let mut last = None;
    for _ in 0..SETTLE_ATTEMPTS {
        match timed_client(entry, 1, 1, traffic::app_baggage(0)).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")).context("the waypoint never answered 200"))
}

/// One client: `requests` requests to the echo service, a new connection every
/// `per_connection` requests.
async fn timed_client(
    entry: SocketAddr,
    requests: usize,
    per_connection: usize,
    baggage: String,
) -> anyhow::Result<Vec<Duration>> {
    let host = traffic::service_host();
    let headers = [("baggage", baggage.as_str())];
    let mut latencies = Vec::with_capacity(requests);
    let mut connection: Option<Connection> = None;
    for n in 0..requests {
        if n % per_connection == 0 {
            connection = None;
        }
        let started = Instant::now();
        let open = match connection.as_mut() {
            Some(open) => open,
            None => connection.insert(Connection::open(entry).await?),
        };
        let reply = open.get(&host, &format!("/request/{n}"), &headers).await?;
        if !reply.status.is_success() {
            bail!("request {n} answered {}", reply.status);
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

// ------------------------------------------------------------------ figures

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(0.0, f64::max)
}

/// (max − min) / median.
fn spread(samples: &[f64]) -> f64 {
    (max(samples) - min(samples)) / median(samples)
}

fn position(variants: &[Variant], name: &str) -> Option<usize> {
    variants.iter().position(|v| v.name == name)
}

/// CPU model, cores, kernel and date, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{} × {cores}, Linux {}, {date}", model.unwrap_or("unknown CPU"), kernel.trim())
}
