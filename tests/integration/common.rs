//! The test fixture: start a real server on port 0 over a temp dir, wait until health says
//! SERVING, hand out clients ([`Api`], which a [`TestServer`] derefs to), and shut it down
//! (or restart it on the same dir). Also what many tests check: errors, metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::prefixes_client::PrefixesClient;
use ipam_bindings::pb::api::routing_client::RoutingClient;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use ipam_bindings::pb::api::services_client::ServicesClient;
use ipam_bindings::server::{Listeners, ServerOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

pub use ipam_bindings::domain::service::{CDN_ID as CDN, MAGIC_TRANSIT_ID as MAGIC_TRANSIT, SPECTRUM_ID as SPECTRUM};

/// Upper bound for anything a test waits on, so a broken server fails the test instead of
/// hanging it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Clients of one server, and shortcuts for the calls most tests make.
pub struct Api {
    pub channel: Channel,
}

pub struct TestServer {
    pub address: SocketAddr,
    /// Where `GET /metrics` is served.
    pub metrics_address: SocketAddr,
    /// Where the v4 JSON API is served (under `/client/v4`).
    pub http_address: SocketAddr,
    api: Api,
    /// Keeps the temporary directory alive for the server's lifetime (None when the caller
    /// owns the directory).
    _temp_dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ipam_bindings::server::ServeError>>>,
    /// What it was started with, for a restart.
    options: ServerOptions,
}

impl TestServer {
    /// A fresh server whose rollout activates bindings after `provisioning_delay`.
    pub async fn start_with_delay(provisioning_delay: Duration) -> TestServer {
        let temp_dir = tempfile::tempdir().expect("temp dir");
        let dir = temp_dir.path().to_path_buf();
        let mut server = TestServer::start_on(&dir, provisioning_delay).await;
        server._temp_dir = Some(temp_dir);
        server
    }

    /// A fresh server whose bindings stay PROVISIONING for the whole test (1 hour).
    pub async fn start() -> TestServer {
        TestServer::start_with_delay(Duration::from_secs(3600)).await
    }

    pub async fn start_on(dir: &Path, provisioning_delay: Duration) -> TestServer {
        TestServer::start_with_options(ServerOptions::new(dir.to_path_buf(), provisioning_delay)).await
    }

    /// A server with these options (its data dir is the caller's), serving metrics too.
    ///
    /// sled releases a closed database's directory lock lazily (its memory reclamation runs
    /// later, on some other thread's schedule), so right after a server in this same process
    /// stopped, the directory may still be locked for a moment: wait for it. (A real process
    /// releases the lock when it exits.)
    pub async fn start_with_options(options: ServerOptions) -> TestServer {
        wait_until_unlocked(&options.data_dir).await;
        TestServer::start_now(options).await
    }

    async fn start_now(options: ServerOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local addr");
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_address = metrics_listener.local_addr().expect("metrics addr");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_address = http_listener.local_addr().expect("http addr");
        let (shutdown, signal) = oneshot::channel::<()>();
        let started_with = options.clone();
        let listeners = Listeners {
            grpc: listener,
            metrics: Some(metrics_listener),
            http: Some(http_listener),
        };
        let task = tokio::spawn(serve(options, listeners, async move {
            let _ = signal.await;
        }));
        // Every call's answer must start within `PATIENCE` (the channel's timeout covers the
        // response's headers, not a stream's later messages), so that a server that holds an
        // answer back (a write buffered and not flushed: `server/connection.rs` defers large
        // flushes) fails a test instead of hanging it.
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .timeout(PATIENCE)
            .connect_lazy();
        let server = TestServer {
            address,
            metrics_address,
            http_address,
            api: Api { channel },
            _temp_dir: None,
            shutdown: Some(shutdown),
            task: Some(task),
            options: started_with,
        };
        wait_until_serving(&server.channel).await;
        server
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(&mut self) -> Result<(), ipam_bindings::server::ServeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(PATIENCE, task)
                .await
                .expect("shutdown in time")
                .expect("join"),
            None => Ok(()),
        }
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self) -> TestServer {
        self.restart_after(|_| ()).await
    }

    /// Stops the server, removes the snapshot its stop wrote and starts a new one on the same
    /// data directory: the state is then rebuilt from the log alone, event by event.
    pub async fn restart_from_the_log(self) -> TestServer {
        self.restart_after(|dir| std::fs::remove_file(dir.join("state.snapshot")).expect("the stop wrote a snapshot"))
            .await
    }

    /// Stops the server, does `while_stopped` to its data directory, and starts a new one there.
    async fn restart_after(mut self, while_stopped: impl FnOnce(&Path)) -> TestServer {
        self.stop().await.expect("clean stop");
        while_stopped(&self.options.data_dir);
        let mut next = TestServer::start_with_options(self.options.clone()).await;
        next._temp_dir = self._temp_dir.take();
        next
    }
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    pub fn new(channel: Channel) -> Api {
        Api { channel }
    }

    pub fn prefixes(&self) -> PrefixesClient<Channel> {
        PrefixesClient::new(self.channel.clone())
    }

    pub fn bindings(&self) -> ServiceBindingsClient<Channel> {
        ServiceBindingsClient::new(self.channel.clone())
    }

    pub fn services(&self) -> ServicesClient<Channel> {
        ServicesClient::new(self.channel.clone())
    }

    pub fn routing(&self) -> RoutingClient<Channel> {
        RoutingClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    // ---- shortcuts ----------------------------------------------------------------------

    pub async fn create_prefix(&self, account_id: &str, cidr: &str) -> api::Prefix {
        self.try_create_prefix(account_id, cidr)
            .await
            .unwrap_or_else(|status| panic!("create {cidr}: {status:?}"))
    }

    pub async fn try_create_prefix(&self, account_id: &str, cidr: &str) -> Result<api::Prefix, Status> {
        let request = api::CreatePrefixRequest {
            account_id: account_id.into(),
            cidr: cidr.into(),
            asn: None,
            description: String::new(),
            validate_only: false,
        };
        self.prefixes()
            .create_prefix(request)
            .await
            .map(|response| response.into_inner())
    }

    pub async fn try_bind(
        &self,
        prefix: &api::Prefix,
        cidr: &str,
        service_id: &str,
    ) -> Result<api::ServiceBinding, Status> {
        let request = api::CreateServiceBindingRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            cidr: cidr.into(),
            service_id: service_id.into(),
            request_id: String::new(),
            validate_only: false,
        };
        self.bindings()
            .create_service_binding(request)
            .await
            .map(|response| response.into_inner())
    }

    pub async fn bind(&self, prefix: &api::Prefix, cidr: &str, service_id: &str) -> api::ServiceBinding {
        self.try_bind(prefix, cidr, service_id)
            .await
            .unwrap_or_else(|status| panic!("bind {cidr}: {status:?}"))
    }

    pub async fn delete_binding(&self, binding: &api::ServiceBinding) -> Result<(), Status> {
        let request = api::DeleteServiceBindingRequest {
            account_id: binding.account_id.clone(),
            prefix_id: binding.prefix_id.clone(),
            binding_id: binding.id.clone(),
            validate_only: false,
        };
        self.bindings().delete_service_binding(request).await.map(|_| ())
    }

    pub async fn list_all_bindings(&self, prefix: &api::Prefix, page_size: i32) -> Vec<api::ServiceBinding> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = api::ListServiceBindingsRequest {
                account_id: prefix.account_id.clone(),
                prefix_id: prefix.id.clone(),
                page_size,
                page_token: page_token.clone(),
            };
            let page = self
                .bindings()
                .list_service_bindings(request)
                .await
                .expect("list")
                .into_inner();
            all.extend(page.bindings);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The log revision that ListServiceBindings reports for `prefix` (the server's head).
pub async fn list_revision(channel: &Channel, prefix: &api::Prefix) -> u64 {
    let request = api::ListServiceBindingsRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        page_size: 1,
        page_token: String::new(),
    };
    ServiceBindingsClient::new(channel.clone())
        .list_service_bindings(request)
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// Waits (bounded by [`PATIENCE`]) until no sled handle in this process holds `dir`'s lock.
pub async fn wait_until_unlocked(dir: &Path) {
    // sled holds an exclusive flock on <dir>/db; probe it the same way (not with sled, whose
    // own handle would release lazily in turn).
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Polls grpc.health.v1 Check until the server reports SERVING (bounded by [`PATIENCE`]).
pub async fn wait_until_serving(channel: &Channel) {
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        if let Ok(response) = health.check(request).await
            && response.into_inner().status == ServingStatus::Serving as i32
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "server never became SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh random account id.
pub fn account() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Asserts the status code, the ErrorInfo reason, domain and numeric code, and (when given)
/// the one BadRequest field.
pub fn assert_error(status: &Status, code: Code, reason: &str, numeric: u32, field: Option<&str>) {
    assert_eq!(status.code(), code, "status {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "ipam-bindings.addressing.v1");
    assert_eq!(
        info.metadata.get("code").map(String::as_str),
        Some(numeric.to_string().as_str()),
        "{status:?}"
    );
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|bad_request| bad_request.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    match field {
        Some(field) => assert!(
            fields.iter().any(|f| f == field),
            "expected field {field} in {fields:?}"
        ),
        None => assert!(fields.is_empty(), "unexpected field violations {fields:?}"),
    }
}

/// Scrapes `GET /metrics` and parses the text exposition into sample `name{labels}` -> value.
pub async fn scrape_metrics(address: SocketAddr) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut samples = HashMap::new();
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        // Chunked transfer encoding puts chunk sizes on their own lines: skip what is not a sample.
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(value) = value.parse::<f64>() {
            samples.insert(name.to_string(), value);
        }
    }
    samples
}

/// An HTTP/1.1 response: status, headers (lowercase names) and the body parsed as JSON
/// (`Null` when it is not JSON).
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub json: serde_json::Value,
}

/// One HTTP/1.1 request on its own connection (`Connection: close`): enough for the v4 JSON
/// API, without an HTTP client crate.
pub async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
        json: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

/// `ipamctl` against the server at `address`, acting for `account_id`, printing JSON lines.
pub fn ipamctl_json(address: SocketAddr, account_id: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ipamctl"));
    command.args([
        "--server",
        &address.to_string(),
        "--account",
        account_id,
        "--output",
        "json",
    ]);
    command
}

/// The server binary on a loopback port of its choosing, with JSON logs on stdout.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// The gRPC address it said it listens on.
    pub address: SocketAddr,
    /// Its log lines, as they come.
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The lines read before `listening`.
    pub before_listening: Vec<String>,
}

impl ServerProcess {
    /// Starts `ipam-bindings --listen 127.0.0.1:0 --log-format json --data-dir DIR ARGS` with
    /// `env`, and waits until it says where it listens and health is SERVING.
    pub async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
            .arg(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut before_listening = Vec::new();
        let address = loop {
            let line = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            before_listening.push(line);
            if value["message"] == "listening" {
                break value["address"].as_str().unwrap().parse().unwrap();
            }
        };
        wait_until_serving(
            &Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .connect_lazy(),
        )
        .await;
        ServerProcess {
            child,
            address,
            lines,
            before_listening,
        }
    }

    pub fn api(&self) -> Api {
        Api::new(
            Channel::from_shared(format!("http://{}", self.address))
                .unwrap()
                .connect_lazy(),
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on, for a process the test starts later (nats-server, the binary).
///
/// Taken below Linux's ephemeral range (32768 and up), so no test binding port 0 in the
/// meantime can be handed the same port, and from a per-process cursor, so two calls never
/// return the same one. A port that some other program holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + CURSOR.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// A unary call of `method` with `request` as the message's bytes, and the answer with its
/// message's bytes as received.
pub async fn raw_call(
    server: &TestServer,
    method: &'static str,
    request: tonic::Request<Vec<u8>>,
) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    let mut client = tonic::client::Grpc::new(server.channel.clone());
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    client.unary(request, path, RawCodec).await
}

/// A message's bytes as they are, both ways: sends what a generated client would not (any
/// bytes as a request) and keeps an answer's bytes as received.
#[derive(Clone, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let remaining = prost::bytes::Buf::remaining(buf);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(buf, remaining).to_vec()))
    }
}
