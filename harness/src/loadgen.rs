//! The benchmark's load generator: Debian's `h2load` (package `nghttp2-client`, which
//! `make bench` installs), over HTTP/1.1 keep-alive connections to the mesh's client
//! entry, either as fast as the mesh answers or at a fixed rate per connection
//! (`--rps`), every request's latency read back from its `--log-file`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::HarnessError;

/// The program, on `PATH`.
pub const PROGRAM: &str = "h2load";
/// How much longer than its duration a run may take before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// `h2load nghttp2/1.52.0`: the version line, for the record.
pub async fn version() -> Result<String, HarnessError> {
    let output = tokio::process::Command::new(PROGRAM)
        .arg("--version")
        .output()
        .await
        .map_err(|e| HarnessError::io(PROGRAM, e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(line) if output.status.success() => Ok(line.trim().to_owned()),
        _ => Err(HarnessError::Setup(format!("{PROGRAM} --version: {text}"))),
    }
}

/// One h2load run.
pub struct Run {
    /// Where the connections go (`--connect-to`): the mesh's client entry.
    pub entry: SocketAddr,
    /// The `Host` of every request, `host:port`.
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub connections: usize,
    pub duration: Duration,
    /// Requests per second of each connection; `None`: as fast as the answers come.
    pub rate_per_connection: Option<u32>,
    /// Where h2load writes one line per request.
    pub log: PathBuf,
}

/// What a run measured; every request answered 2xx.
pub struct Outcome {
    /// Requests completed.
    pub requests: usize,
    /// Requests completed per second of the run, as h2load counts them.
    pub per_second: f64,
    /// Each completed request's latency, from sending it to the end of its response.
    pub latencies: Vec<Duration>,
}

impl Run {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--h1".to_owned(),
            format!("--clients={}", self.connections),
            format!("--duration={}", self.duration.as_secs()),
            format!("--connect-to={}", self.entry),
            format!("--log-file={}", self.log.display()),
        ];
        if let Some(rate) = self.rate_per_connection {
            args.push(format!("--rps={rate}"));
        }
        for (name, value) in &self.headers {
            args.push(format!("--header={name}: {value}"));
        }
        args.push(format!("http://{}{}", self.authority, self.path));
        args
    }

    /// Runs h2load and fails unless every request it completed was answered 2xx.
    pub async fn run(&self) -> Result<Outcome, HarnessError> {
        // h2load appends to its log.
        if let Err(e) = std::fs::remove_file(&self.log)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(HarnessError::io(&self.log, e));
        }
        let child = tokio::process::Command::new(PROGRAM).args(self.args()).kill_on_drop(true).output();
        let output = tokio::time::timeout(self.duration + GRACE, child)
            .await
            .map_err(|_| HarnessError::NotReady(format!("{PROGRAM} ran longer than {:?}", self.duration + GRACE)))?
            .map_err(|e| HarnessError::io(PROGRAM, e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(self.failed(&format!(
                "exit {}: {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let summary = Summary::parse(&text).ok_or_else(|| self.failed(&format!("no summary in: {text}")))?;
        if summary.done == 0
            || summary.succeeded != summary.done
            || summary.failed + summary.errored + summary.timeout > 0
        {
            return Err(self.failed(&format!("not every request answered 2xx: {text}")));
        }
        let log = std::fs::read_to_string(&self.log).map_err(|e| HarnessError::io(&self.log, e))?;
        let latencies = parse_log(&log).map_err(|line| self.failed(&format!("log line `{line}`")))?;
        Ok(Outcome { requests: latencies.len(), per_second: summary.per_second, latencies })
    }

    fn failed(&self, what: &str) -> HarnessError {
        HarnessError::Http(format!("{PROGRAM} {}: {what}", self.args().join(" ")))
    }
}

/// The figures of h2load's summary that say whether the run is usable.
#[derive(Debug, PartialEq)]
struct Summary {
    per_second: f64,
    done: usize,
    succeeded: usize,
    failed: usize,
    errored: usize,
    timeout: usize,
}

impl Summary {
    /// From `finished in 3.00s, 2345.67 req/s, ...` and
    /// `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout`.
    fn parse(text: &str) -> Option<Self> {
        let finished = text.lines().find_map(|l| l.strip_prefix("finished in "))?;
        let per_second = finished.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()?;
        let requests = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
        let count = |what: &str| -> Option<usize> {
            requests.split(", ").find_map(|part| part.strip_suffix(what)?.trim().parse().ok())
        };
        Some(Self {
            per_second,
            done: count(" done")?,
            succeeded: count(" succeeded")?,
            failed: count(" failed")?,
            errored: count(" errored")?,
            timeout: count(" timeout")?,
        })
    }
}

/// Each request's latency from the log's `start µs \t status \t µs to the end of the
/// response` lines; the first line that is not a 2xx answer is the error.
fn parse_log(log: &str) -> Result<Vec<Duration>, String> {
    log.lines()
        .map(|line| {
            let mut columns = line.split('\t');
            let status: i32 = columns.nth(1).and_then(|s| s.trim().parse().ok()).ok_or_else(|| line.to_owned())?;
            let micros: u64 = columns.next().and_then(|s| s.trim().parse().ok()).ok_or_else(|| line.to_owned())?;
            if (200..300).contains(&status) { Ok(Duration::from_micros(micros)) } else { Err(line.to_owned()) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_of_h2load_1_52() {
        let text = "finished in 2.00s, 42.50 req/s, 5.50KB/s\n\
                    requests: 85 total, 87 started, 85 done, 85 succeeded, 0 failed, 0 errored, 0 timeout\n\
                    status codes: 87 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(
            Summary::parse(text),
            Some(Summary { per_second: 42.5, done: 85, succeeded: 85, failed: 0, errored: 0, timeout: 0 })
        );
        assert_eq!(Summary::parse("requests: 85 total\n"), None);
    }

    #[test]
    fn reads_latencies_and_refuses_a_failed_request() {
        let log = "1764650000000000\t200\t1234\n1764650000001000\t200\t987\n";
        assert_eq!(parse_log(log), Ok(vec![Duration::from_micros(1234), Duration::from_micros(987)]));
        assert_eq!(parse_log("1764650000000000\t-1\t1234\n"), Err("1764650000000000\t-1\t1234".to_owned()));
        assert_eq!(parse_log("1764650000000000\t503\t1234\n"), Err("1764650000000000\t503\t1234".to_owned()));
    }

    #[test]
    fn passes_the_rate_and_headers() {
        let run = Run {
            entry: "127.0.0.1:15001".parse().unwrap(),
            authority: "echo.default.svc.cluster.local:8080".to_owned(),
            path: "/request/x".to_owned(),
            headers: vec![("baggage".to_owned(), "user=a".to_owned())],
            connections: 4,
            duration: Duration::from_secs(3),
            rate_per_connection: Some(250),
            log: PathBuf::from("/tmp/h2load.log"),
        };
        assert_eq!(
            run.args(),
            [
                "--h1",
                "--clients=4",
                "--duration=3",
                "--connect-to=127.0.0.1:15001",
                "--log-file=/tmp/h2load.log",
                "--rps=250",
                "--header=baggage: user=a",
                "http://echo.default.svc.cluster.local:8080/request/x",
            ]
        );
    }
}
