//! The benchmark's instruction counts: a process under valgrind's callgrind, its
//! instrumentation switched on only around the requests counted, and the counts
//! of each dump read back, split by code object and by calls between objects.
//!
//! The split is what a stripped Envoy still shows: V8's generated code (the wasm
//! module compiled, its wrappers) lives in memory with no file behind it, found in
//! the process's own memory map at each dump; a call from there into Envoy's text
//! is a host call, a call from Envoy into it enters the VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// The object name this module gives code in memory with no file behind it: V8's
/// generated code (callgrind calls it `???`, as it does some code in files).
pub const GENERATED: &str = "[generated]";
/// Callgrind's name for an object it could not name.
const UNNAMED: &str = "???";

/// The command line prefix that runs a program under callgrind with its
/// instrumentation off until [`Callgrind::instrument`]: the start-up runs at
/// valgrind's uninstrumented speed. V8 writes code it runs, hence the check of
/// self-modifying code everywhere but in files.
pub fn command(out_prefix: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--smc-check=all-non-file".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}.%p", out_prefix.display()),
    ]
}

/// One process under [`command`], driven with `callgrind_control` (through vgdb,
/// which also interrupts a process blocked in a system call).
pub struct Callgrind {
    pid: u32,
    out_prefix: PathBuf,
    dumps: usize,
}

impl Callgrind {
    pub fn new(pid: u32, out_prefix: &Path) -> Self {
        Self { pid, out_prefix: out_prefix.to_path_buf(), dumps: 0 }
    }

    /// Instrumentation on or off (off also stops counting).
    pub fn instrument(&self, on: bool) -> Result<(), HarnessError> {
        self.control(&["-i", if on { "on" } else { "off" }])
    }

    /// Sets every count to zero.
    pub fn zero(&self) -> Result<(), HarnessError> {
        self.control(&["-z"])
    }

    /// Writes the counts since the last zero or dump and reads them back.
    pub fn dump(&mut self) -> Result<Profile, HarnessError> {
        self.control(&["-d"])?;
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}.{}", self.out_prefix.display(), self.pid, self.dumps));
        let text = std::fs::read_to_string(&file).map_err(|e| HarnessError::io(&file, e))?;
        let maps_file = format!("/proc/{}/maps", self.pid);
        let maps = std::fs::read_to_string(&maps_file).map_err(|e| HarnessError::io(&maps_file, e))?;
        Ok(Profile::parse(&text).named_by(&Mappings::parse(&maps)))
    }

    fn control(&self, args: &[&str]) -> Result<(), HarnessError> {
        let output = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid.to_string())
            .output()
            .map_err(|e| HarnessError::io("callgrind_control", e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !text.contains("OK") {
            return Err(HarnessError::Setup(format!(
                "callgrind_control {} {}: {text}{}",
                args.join(" "),
                self.pid,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }
}

/// Calls along one arc of the call graph.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Calls {
    pub count: f64,
    /// Instructions inside the calls, callees' callees included.
    pub inclusive: f64,
}

/// A function: its object (file name) and its name (an address where the object
/// has no symbols).
pub type Function = (String, String);

/// One dump: instructions (`Ir`) in total, by object and by function (self cost),
/// and every arc of the call graph.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    pub total: f64,
    pub by_object: BTreeMap<String, f64>,
    pub by_function: BTreeMap<Function, f64>,
    /// (caller, callee) → calls.
    pub arcs: BTreeMap<(Function, Function), Calls>,
}

impl Profile {
    /// Reads callgrind's output format (one event, `Ir`; names compressed as `(id) name`).
    pub fn parse(text: &str) -> Self {
        let mut profile = Profile::default();
        let mut names: BTreeMap<(&str, &str), String> = BTreeMap::new();
        let (mut ob, mut func) = (String::new(), String::new());
        let (mut cob, mut cfn): (Option<String>, String) = (None, String::new());
        let mut pending_call: Option<f64> = None;
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=')
                && matches!(key, "ob" | "fl" | "fi" | "fe" | "fn" | "cob" | "cfi" | "cfl" | "cfn" | "calls")
            {
                let kind = match key {
                    "cob" => "ob",
                    "cfn" => "fn",
                    "fi" | "fe" | "cfi" | "cfl" => "fl",
                    other => other,
                };
                let mut name = || expand(&mut names, kind, value);
                match key {
                    "ob" => ob = name(),
                    "fn" => func = name(),
                    "cob" => cob = Some(name()),
                    "cfn" => cfn = name(),
                    "calls" => pending_call = value.split_whitespace().next().and_then(|n| n.parse().ok()),
                    _ => {
                        name();
                    }
                }
                continue;
            }
            if let Some(total) = line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:")) {
                profile.total = profile.total.max(total.trim().parse().unwrap_or(0.0));
                continue;
            }
            let mut fields = line.split_whitespace();
            let is_cost = fields
                .next()
                .is_some_and(|p| p.starts_with(['+', '-', '*']) || p.starts_with(|c: char| c.is_ascii_digit()));
            if !is_cost {
                continue;
            }
            let cost: f64 = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
            if let Some(count) = pending_call.take() {
                let callee = (cob.take().unwrap_or_else(|| ob.clone()), cfn.clone());
                let calls = profile.arcs.entry(((ob.clone(), func.clone()), callee)).or_default();
                calls.count += count;
                calls.inclusive += cost;
            } else {
                *profile.by_object.entry(ob.clone()).or_default() += cost;
                *profile.by_function.entry((ob.clone(), func.clone())).or_default() += cost;
            }
        }
        profile
    }

    /// This profile less `factor` times `other` (the idle process's timers, scaled to
    /// this dump's wall time), never below zero.
    pub fn minus(&self, other: &Profile, factor: f64) -> Profile {
        fn less<K: Ord + Clone>(a: &BTreeMap<K, f64>, b: &BTreeMap<K, f64>, factor: f64) -> BTreeMap<K, f64> {
            a.iter().map(|(k, v)| (k.clone(), (v - factor * b.get(k).copied().unwrap_or(0.0)).max(0.0))).collect()
        }
        let arcs = self
            .arcs
            .iter()
            .map(|(k, c)| {
                let o = other.arcs.get(k).copied().unwrap_or_default();
                let calls = Calls {
                    count: (c.count - factor * o.count).max(0.0),
                    inclusive: (c.inclusive - factor * o.inclusive).max(0.0),
                };
                (k.clone(), calls)
            })
            .collect();
        Profile {
            total: (self.total - factor * other.total).max(0.0),
            by_object: less(&self.by_object, &other.by_object, factor),
            by_function: less(&self.by_function, &other.by_function, factor),
            arcs,
        }
    }

    /// Every figure times `factor` (per request: one over the requests counted).
    pub fn scaled(&self, factor: f64) -> Profile {
        fn times<K: Ord + Clone>(a: &BTreeMap<K, f64>, factor: f64) -> BTreeMap<K, f64> {
            a.iter().map(|(k, v)| (k.clone(), v * factor)).collect()
        }
        let arcs = self
            .arcs
            .iter()
            .map(|(k, c)| (k.clone(), Calls { count: c.count * factor, inclusive: c.inclusive * factor }))
            .collect();
        Profile {
            total: self.total * factor,
            by_object: times(&self.by_object, factor),
            by_function: times(&self.by_function, factor),
            arcs,
        }
    }

    /// Calls from code of object `from` into code of object `to` (`None`: any other object).
    pub fn across(&self, from: &str, to: Option<&str>) -> Calls {
        let mut sum = Calls::default();
        for (((caller, _), (callee, _)), calls) in &self.arcs {
            if caller == from && callee != from && to.is_none_or(|t| callee == t) {
                sum.count += calls.count;
                sum.inclusive += calls.inclusive;
            }
        }
        sum
    }

    /// The functions of other objects that code of object `from` calls, with their calls.
    pub fn entered_from(&self, from: &str) -> BTreeMap<Function, Calls> {
        let mut entries: BTreeMap<Function, Calls> = BTreeMap::new();
        for (((caller, _), callee), calls) in &self.arcs {
            if caller == from && callee.0 != from {
                let entry = entries.entry(callee.clone()).or_default();
                entry.count += calls.count;
                entry.inclusive += calls.inclusive;
            }
        }
        entries
    }

    /// What `function` calls directly, with the calls.
    pub fn callees(&self, function: &Function) -> Vec<(Function, Calls)> {
        self.arcs
            .iter()
            .filter(|((caller, _), _)| caller == function)
            .map(|((_, callee), c)| (callee.clone(), *c))
            .collect()
    }
}

/// A process's memory map: address ranges and the file mapped there, if any.
pub struct Mappings(Vec<(u64, u64, Option<String>)>);

impl Mappings {
    /// `/proc/<pid>/maps`.
    pub fn parse(text: &str) -> Self {
        let ranges = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (start, end) = fields.next()?.split_once('-')?;
                let file = fields.nth(4).filter(|f| f.starts_with('/')).map(|f| short_object("ob", f));
                Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?, file))
            })
            .collect();
        Self(ranges)
    }

    /// The object at a function's address: its file, or [`GENERATED`].
    fn object_at(&self, function: &str) -> Option<String> {
        let address = u64::from_str_radix(function.strip_prefix("0x")?, 16).ok()?;
        let (_, _, file) = self.0.iter().find(|(start, end, _)| (*start..*end).contains(&address))?;
        Some(file.clone().unwrap_or_else(|| GENERATED.to_owned()))
    }
}

impl Profile {
    /// Callgrind's unnamed objects named from the memory map.
    fn named_by(self, maps: &Mappings) -> Profile {
        let name = |(ob, func): Function| -> Function {
            if ob == UNNAMED { (maps.object_at(&func).unwrap_or(ob), func) } else { (ob, func) }
        };
        let mut profile = Profile { total: self.total, ..Profile::default() };
        for (function, cost) in self.by_function {
            let function = name(function);
            *profile.by_object.entry(function.0.clone()).or_default() += cost;
            *profile.by_function.entry(function).or_default() += cost;
        }
        for ((caller, callee), calls) in self.arcs {
            let arc = profile.arcs.entry((name(caller), name(callee))).or_default();
            arc.count += calls.count;
            arc.inclusive += calls.inclusive;
        }
        profile
    }
}

/// `(id) name` defines a compressed name, `(id)` uses it, a bare name is itself.
fn expand<'a>(names: &mut BTreeMap<(&'a str, &'a str), String>, kind: &'a str, value: &'a str) -> String {
    let Some(rest) = value.strip_prefix('(') else { return value.to_owned() };
    let Some((id, name)) = rest.split_once(')') else { return value.to_owned() };
    let name = name.trim();
    if name.is_empty() {
        return names.get(&(kind, id)).cloned().unwrap_or_default();
    }
    names.insert((kind, id), short_object(kind, name));
    short_object(kind, name)
}

/// Objects by file name only, so that one binary has one name in every run.
fn short_object(kind: &str, name: &str) -> String {
    if kind == "ob" {
        Path::new(name).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_owned())
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_costs_and_calls_across_objects() {
        let text = "\
events: Ir
summary: 1000
ob=(1) /usr/bin/envoy
fl=(1) ???
fn=(1) 0x10
0 100
cob=(2) ???
cfn=(2) 0x90
calls=2 0
0 300
cfn=(3) 0x20
calls=1 0
0 50
ob=(2)
fn=(2)
0 200
cob=(1)
cfn=(1)
calls=3 0
0 60
totals: 1000
";
        let maps = Mappings::parse(
            "00000010-00000080 r-xp 00000000 fe:00 1 /usr/bin/envoy\n00000080-000000a0 rwxp 00000000 00:00 0 \n",
        );
        let p = Profile::parse(text).named_by(&maps);
        assert_eq!(p.total, 1000.0);
        assert_eq!(p.by_object.get("envoy"), Some(&100.0));
        assert_eq!(p.by_object.get(GENERATED), Some(&200.0));
        assert_eq!(p.across("envoy", Some(GENERATED)), Calls { count: 2.0, inclusive: 300.0 });
        assert_eq!(p.across(GENERATED, None), Calls { count: 3.0, inclusive: 60.0 });
        let into_envoy = p.entered_from(GENERATED);
        assert_eq!(into_envoy.get(&("envoy".into(), "0x10".into())), Some(&Calls { count: 3.0, inclusive: 60.0 }));
        assert_eq!(p.by_function.get(&(GENERATED.into(), "0x90".into())), Some(&200.0));
        let callees = p.callees(&("envoy".into(), "0x10".into()));
        assert_eq!(callees.len(), 2);
        let idle = p.minus(&p, 0.5);
        assert_eq!(idle.total, 500.0);
        assert_eq!(idle.by_object.get("envoy"), Some(&50.0));
    }
}
