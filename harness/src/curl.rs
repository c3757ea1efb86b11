//! `/usr/bin/curl` as a client app: HTTP/1.1 or HTTP/2 with prior knowledge (h2c),
//! the service's name in the URL and `--connect-to` standing in for iptables capture
//! (the TCP connection goes to ztunnel-a's outbound listener).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::HarnessError;

pub const CURL: &str = "/usr/bin/curl";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `--http1.1`
    Http1,
    /// `--http2-prior-knowledge`
    Http2PriorKnowledge,
}

/// One transfer as curl reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlReply {
    pub status: u16,
    /// curl's `%{http_version}`: `1.1` or `2`.
    pub http_version: String,
    pub body: String,
    /// curl's stderr for the whole invocation (why a transfer failed).
    pub stderr: String,
}

impl CurlReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

const MARK: &str = "<<curl-transfer ";

/// GETs `http://<host><path>` for each path (`host` may carry a port), in order. HTTP/1.1
/// reuses one connection for all paths; HTTP/2 opens one connection per path, because
/// curl 7.88.1 (this machine's) fails every transfer after the first on a reused h2c
/// prior-knowledge connection ("Error in the HTTP2 framing layer", exit 16), also against
/// a plain hyper h2c server with no mesh in between.
pub async fn get(
    entry: SocketAddr,
    host: &str,
    paths: &[&str],
    protocol: Protocol,
    headers: &[(&str, &str)],
) -> Result<Vec<CurlReply>, HarnessError> {
    if protocol == Protocol::Http1 {
        return transfers(entry, host, paths, protocol, headers).await;
    }
    let mut replies = Vec::new();
    for path in paths {
        replies.extend(transfers(entry, host, &[path], protocol, headers).await?);
    }
    Ok(replies)
}

/// One curl invocation: every path on one connection.
async fn transfers(
    entry: SocketAddr,
    host: &str,
    paths: &[&str],
    protocol: Protocol,
    headers: &[(&str, &str)],
) -> Result<Vec<CurlReply>, HarnessError> {
    let curl = PathBuf::from(CURL);
    if !curl.is_file() {
        return Err(HarnessError::Missing { what: "curl".into(), path: curl, hint: "install curl" });
    }
    let mut command = tokio::process::Command::new(&curl);
    command.args(["--silent", "--show-error", "--max-time", "20"]);
    command.arg(match protocol {
        Protocol::Http1 => "--http1.1",
        Protocol::Http2PriorKnowledge => "--http2-prior-knowledge",
    });
    // `--connect-to NAME:PORT:IP:PORT`: the URL's host and port, redirected to the capture listener.
    let (name, port) = host.rsplit_once(':').unwrap_or((host, "80"));
    command.arg("--connect-to").arg(format!("{name}:{port}:{}:{}", entry.ip(), entry.port()));
    command.arg("--write-out").arg(format!("\n{MARK}%{{http_code}} %{{http_version}}>>\n"));
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    for path in paths {
        command.arg(format!("http://{host}{path}"));
    }
    command.kill_on_drop(true);
    let output = command.output().await.map_err(|e| HarnessError::io(CURL, e))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut replies = parse(&stdout);
    for reply in &mut replies {
        reply.stderr.clone_from(&stderr);
    }
    if replies.len() != paths.len() {
        return Err(HarnessError::Http(format!(
            "curl made {} of {} transfers (exit {:?}): {}\n{stdout}",
            replies.len(),
            paths.len(),
            output.status.code(),
            stderr
        )));
    }
    Ok(replies)
}

fn parse(stdout: &str) -> Vec<CurlReply> {
    let mut replies = Vec::new();
    let mut rest = stdout;
    while let Some((body, after)) = rest.split_once(MARK) {
        let Some((facts, after)) = after.split_once(">>\n") else { break };
        let (status, version) = facts.split_once(' ').unwrap_or((facts, ""));
        replies.push(CurlReply {
            status: status.parse().unwrap_or(0),
            http_version: version.to_owned(),
            body: body.strip_suffix('\n').unwrap_or(body).to_owned(),
            stderr: String::new(),
        });
        rest = after;
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_split_at_curls_write_out() {
        let out = "{\"a\":1}\n<<curl-transfer 200 2>>\n\n<<curl-transfer 503 1.1>>\n";
        let replies = parse(out);
        assert_eq!(replies.len(), 2);
        assert_eq!(
            (replies[0].status, replies[0].http_version.as_str(), replies[0].body.as_str()),
            (200, "2", "{\"a\":1}")
        );
        assert_eq!((replies[1].status, replies[1].body.as_str()), (503, ""));
    }
}
