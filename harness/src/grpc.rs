//! A real gRPC app for the mesh: a tonic server on a pod's address and a tonic client
//! that dials ztunnel-a's outbound listener (h2c) with the service's name as authority.
//!
//! The messages are hand-written prost structs and the service is dispatched by hand
//! over tonic's generic `server::Grpc` / `client::Grpc`, which is exactly what
//! tonic-build would generate: the machine has no `protoc`, and a build script for four
//! methods would hide what the test relies on. The wire is tonic's and hyper's own
//! (HTTP/2 framing, length-prefixed messages, `grpc-status` in trailers or, for an
//! error without messages, in the headers of a trailers-only response).
//!
//! Methods of `mesh.test.Echo`:
//! - `Unary`: answers, or with `fail_with` != 0 fails with that code; tonic sends such
//!   an error as a trailers-only response (status in the response headers). A code
//!   outside gRPC's 0..=16 (which tonic would turn into 2) is written by hand, as given,
//!   in a trailers-only response, so the waypoint sees the out-of-range value;
//! - `FailInTrailers`: response headers, then trailers with `grpc-status: 14`,
//!   `grpc-message` and an app trailer `x-echo-trailer: kept` (a unary call for the client);
//! - `Stream`: `count` replies, then `grpc-status: 0` in the trailers;
//! - `Collect`: client streaming, one reply counting the request messages;
//! - `NoStatus`: a 200 `application/grpc` response with one message and no
//!   `grpc-status` anywhere (written by hand: tonic never does this).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut as _, BytesMut};
use http::Version;
use http::uri::PathAndQuery;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::HarnessError;

pub const SERVICE: &str = "mesh.test.Echo";
pub const UNARY: &str = "/mesh.test.Echo/Unary";
pub const FAIL_IN_TRAILERS: &str = "/mesh.test.Echo/FailInTrailers";
pub const STREAM: &str = "/mesh.test.Echo/Stream";
pub const COLLECT: &str = "/mesh.test.Echo/Collect";
pub const NO_STATUS: &str = "/mesh.test.Echo/NoStatus";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// `Unary`: the gRPC code to fail with; 0 answers.
    #[prost(int32, tag = "2")]
    pub fail_with: i32,
    /// `Stream`: how many replies.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The pod that answered.
    #[prost(string, tag = "2")]
    pub workload: String,
    /// Position in a stream, from 1.
    #[prost(uint32, tag = "3")]
    pub sequence: u32,
    /// `Collect`: request messages received.
    #[prost(uint32, tag = "4")]
    pub received: u32,
}

/// One call as it reached the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcSeen {
    pub path: String,
    pub version: Version,
    /// Request headers in arrival order (lower-case names, lossy UTF-8 values).
    pub headers: Vec<(String, String)>,
}

/// A tonic server answering as pod `workload`.
pub struct GrpcServer {
    pub workload: String,
    pub address: SocketAddr,
    seen: Arc<Mutex<Vec<GrpcSeen>>>,
    task: JoinHandle<()>,
}

impl GrpcServer {
    pub async fn start(workload: &str, address: SocketAddr) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind(address).await.map_err(|e| HarnessError::io(address.to_string(), e))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = EchoService { workload: workload.into(), seen: seen.clone() };
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Ok(Self { workload: workload.to_owned(), address, seen, task })
    }

    /// Every call received so far.
    pub fn seen(&self) -> Vec<GrpcSeen> {
        self.seen.lock().clone()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `mesh.test.Echo`, dispatched on the path as tonic-build's generated servers do.
#[derive(Clone)]
struct EchoService {
    workload: Arc<str>,
    seen: Arc<Mutex<Vec<GrpcSeen>>>,
}

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let record = GrpcSeen {
            path: request.uri().path().to_owned(),
            version: request.version(),
            headers: request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        };
        self.seen.lock().push(record);
        let workload = self.workload.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let path = request.uri().path().to_owned();
            let response = match path.as_str() {
                UNARY => {
                    let (parts, body) = request.into_parts();
                    let Ok(body) = http_body_util::Limited::new(body, MAX_REQUEST).collect().await else {
                        return Ok(Status::resource_exhausted("request too large").into_http());
                    };
                    let body = body.to_bytes();
                    if let Some(code) = code_outside_grpc(&body) {
                        return Ok(trailers_only(code));
                    }
                    let request = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
                    grpc.unary(tower::service_fn(move |r| unary(workload.clone(), r)), request).await
                }
                FAIL_IN_TRAILERS => grpc.server_streaming(tower::service_fn(fail_in_trailers), request).await,
                STREAM => grpc.server_streaming(tower::service_fn(move |r| stream(workload.clone(), r)), request).await,
                COLLECT => {
                    grpc.client_streaming(tower::service_fn(move |r| collect(workload.clone(), r)), request).await
                }
                NO_STATUS => no_status(&workload),
                _ => Status::unimplemented(path).into_http(),
            };
            Ok(response)
        })
    }
}

/// A unary request is one small message; anything larger is refused before decoding.
const MAX_REQUEST: usize = 64 * 1024;

/// `fail_with` of a unary request when it is not one of gRPC's codes 0..=16.
fn code_outside_grpc(body: &[u8]) -> Option<i32> {
    let (prefix, rest) = body.split_first_chunk::<5>()?;
    let [0, length @ ..] = *prefix else { return None };
    let message = rest.get(..usize::try_from(u32::from_be_bytes(length)).ok()?)?;
    let request = EchoRequest::decode(message).ok()?;
    (!(0..=16).contains(&request.fail_with)).then_some(request.fail_with)
}

/// A trailers-only error with `grpc-status` exactly `code`: headers with END_STREAM, no body.
fn trailers_only(code: i32) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert("content-type", http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", http::HeaderValue::from(code));
    if let Ok(message) = http::HeaderValue::from_str(&format!("asked to fail with {code}")) {
        headers.insert("grpc-message", message);
    }
    response
}

fn reply(workload: &str, message: &str, sequence: u32) -> EchoReply {
    EchoReply { message: message.to_owned(), workload: workload.to_owned(), sequence, received: 0 }
}

async fn unary(workload: Arc<str>, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
    let request = request.into_inner();
    match request.fail_with {
        0 => Ok(Response::new(reply(&workload, &request.message, 1))),
        code => Err(Status::new(Code::from(code), format!("asked to fail with {code}"))),
    }
}

type ReplyStream = tokio_stream::Iter<std::vec::IntoIter<Result<EchoReply, Status>>>;

/// Headers go out when the response is returned; the stream's only item is the error,
/// which tonic writes into the trailers.
async fn fail_in_trailers(_request: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
    let mut trailers = MetadataMap::new();
    trailers.insert("x-echo-trailer", MetadataValue::from_static("kept"));
    let status = Status::with_metadata(Code::Unavailable, "backend draining", trailers);
    Ok(Response::new(tokio_stream::iter(vec![Err(status)])))
}

async fn stream(workload: Arc<str>, request: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
    let request = request.into_inner();
    let replies: Vec<Result<EchoReply, Status>> =
        (1..=request.count).map(|n| Ok(reply(&workload, &request.message, n))).collect();
    Ok(Response::new(tokio_stream::iter(replies)))
}

async fn collect(workload: Arc<str>, request: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
    let mut messages = request.into_inner();
    let mut received = 0u32;
    let mut last = String::new();
    while let Some(message) = messages.next().await {
        last = message?.message;
        received += 1;
    }
    Ok(Response::new(EchoReply { received, ..reply(&workload, &last, 1) }))
}

/// One length-prefixed message and END_STREAM: no trailers, no `grpc-status`.
fn no_status(workload: &str) -> http::Response<Body> {
    let message = reply(workload, "no status", 1).encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(frame.freeze())));
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response
}

/// A tonic client of `mesh.test.Echo` on one HTTP/2 connection to `entry` (ztunnel-a's
/// outbound listener), addressing the service as `http://<host>:<port>`.
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    pub async fn connect(entry: SocketAddr, host: &str, port: u16) -> Result<Self, HarnessError> {
        let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| HarnessError::Http(format!("gRPC endpoint {host}:{port}: {e}")))?;
        // Every connection goes to the capture listener, whatever the URI says (iptables' job).
        let connector = tower::service_fn(move |_: http::Uri| async move {
            let tcp = TcpStream::connect(entry).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(TokioIo::new(tcp))
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| HarnessError::Http(format!("gRPC connect via {entry}: {e}")))?;
        Ok(Self { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }

    pub async fn unary(&mut self, message: &str, fail_with: i32) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let request = EchoRequest { message: message.to_owned(), fail_with, count: 0 };
        self.grpc.unary(Request::new(request), PathAndQuery::from_static(UNARY), ProstCodec::default()).await
    }

    pub async fn fail_in_trailers(&mut self, message: &str) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let request = EchoRequest { message: message.to_owned(), fail_with: 0, count: 0 };
        let path = PathAndQuery::from_static(FAIL_IN_TRAILERS);
        self.grpc.unary(Request::new(request), path, ProstCodec::default()).await
    }

    /// Every reply of a `Stream` call, and the trailers that ended it.
    pub async fn stream(&mut self, message: &str, count: u32) -> Result<(Vec<EchoReply>, MetadataMap), Status> {
        self.ready().await?;
        let request = EchoRequest { message: message.to_owned(), fail_with: 0, count };
        let path = PathAndQuery::from_static(STREAM);
        let mut replies = self.grpc.server_streaming(Request::new(request), path, ProstCodec::default()).await?;
        let body = replies.get_mut();
        let mut all = Vec::new();
        while let Some(reply) = body.message().await? {
            all.push(reply);
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        Ok((all, trailers))
    }

    /// Sends `messages` as one client stream.
    pub async fn collect(&mut self, messages: &[&str]) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let requests: Vec<EchoRequest> =
            messages.iter().map(|m| EchoRequest { message: (*m).to_owned(), fail_with: 0, count: 0 }).collect();
        let path = PathAndQuery::from_static(COLLECT);
        self.grpc.client_streaming(Request::new(tokio_stream::iter(requests)), path, ProstCodec::default()).await
    }

    pub async fn no_status(&mut self) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let request = EchoRequest { message: "no status".into(), fail_with: 0, count: 0 };
        self.grpc.unary(Request::new(request), PathAndQuery::from_static(NO_STATUS), ProstCodec::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(request: &EchoRequest) -> Vec<u8> {
        let message = request.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        body
    }

    #[test]
    fn only_codes_outside_0_to_16_are_answered_by_hand() {
        let with = |fail_with| framed(&EchoRequest { message: "m".into(), fail_with, count: 0 });
        assert_eq!(code_outside_grpc(&with(0)), None);
        assert_eq!(code_outside_grpc(&with(16)), None);
        assert_eq!(code_outside_grpc(&with(17)), Some(17));
        assert_eq!(code_outside_grpc(&with(-1)), Some(-1));
        assert_eq!(code_outside_grpc(&with(200)), Some(200));
        assert_eq!(code_outside_grpc(&[0, 0, 0, 0, 9, 1]), None, "truncated");
        assert_eq!(code_outside_grpc(&[1, 0, 0, 0, 0]), None, "compressed: not ours");
    }
}
