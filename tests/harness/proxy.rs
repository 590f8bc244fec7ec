//! A fault-injecting proxy on 127.0.0.1 in front of the S3 test server (see [`super::store`]): what the
//! S3 tests put between a `cairn` process and the server to play a flaky network, a middlebox, a buggy
//! S3-compatible server or the server vanishing.
//!
//! It owns its listener, its threads and every connection it carries; it works in one of two modes:
//! - [`Proxy::tcp`]: bytes are copied both ways as they come, connections stay open as long as the client
//!   keeps them (keep-alive), and a client's bytes can be held back before they reach the server;
//! - [`Proxy::http`]: one request per connection (`Connection: close` both ways, which every HTTP client
//!   handles), read whole and handed to the [`Faults`] before it is forwarded, and its response read whole
//!   and handed to them before it goes back; they can change either, answer in the server's place, take a
//!   request's body slowly, or cut a response short.
//!
//! Invariants: [`Proxy::kill`] (and dropping the proxy) stops accepting and shuts down every connection still
//! open, which also ends every hold; [`Proxy::restart`] listens again on the same port. The [`Faults`] are
//! reached through the proxy (`Deref`), so a test arms and reads them as the proxy's own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::store::s3_endpoint;

/// What a test does to the traffic. Every hook has a default that changes nothing.
pub trait Faults: Send + Sync + 'static {
    /// Whether `start`, the beginning of what a client sent (in TCP mode each piece as it is read, in HTTP
    /// mode a request's first line), is held back from the server for now: asked again every 10 ms until it
    /// says no or the proxy is killed.
    fn hold(&self, _start: &[u8]) -> bool {
        false
    }

    /// HTTP mode: a request whose head is read (its body not yet); may change its headers.
    fn request(&self, _req: &mut Request) -> Before {
        Before::Forward
    }

    /// HTTP mode: the server's answer to `req`, before it goes back to the client.
    fn response(&self, _req: &Request, resp: Response) -> Response {
        resp
    }
}

/// No faults: a plain proxy.
impl Faults for () {}

/// [`Faults`] that only rewrite responses, with the given function.
pub struct OnResponse<F>(pub F);

impl<F: Fn(&Request, Response) -> Response + Send + Sync + 'static> Faults for OnResponse<F> {
    fn response(&self, req: &Request, resp: Response) -> Response {
        (self.0)(req, resp)
    }
}

/// What happens to a request once [`Faults::request`] has seen its head.
#[derive(Debug)]
pub enum Before {
    Forward,
    /// Its body is taken from the client at this many bytes a second (a slow uplink), then it is forwarded.
    Pace(u64),
    /// It is answered with this, never forwarded (after its body is read).
    Answer(Response),
}

/// One HTTP request as the proxy saw it (its body is forwarded as read).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// One HTTP response: status, headers without the framing ones (the proxy frames the body itself) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection is closed after this many bytes of the body, which `Content-Length` still says is
    /// whole; `None`: all of it is sent.
    pub cut_at: Option<usize>,
    /// The server's `Content-Length` of a `HEAD` answer, which has no body: the object's length.
    head_length: Option<String>,
}

impl Response {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            cut_at: None,
            head_length: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Tcp,
    Http,
}

/// What the proxy's threads share.
struct Shared<F> {
    faults: F,
    mode: Mode,
    upstream: String,
    stop: AtomicBool,
    /// Client bytes being held now (see [`Faults::hold`]).
    held: AtomicUsize,
    /// Every connection open now, by a number of its own, for [`Proxy::kill`] to shut down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

/// The proxy (see the module docs).
pub struct Proxy<F: Faults> {
    port: u16,
    shared: Arc<Shared<F>>,
    accept: Option<JoinHandle<()>>,
}

impl<F: Faults> Proxy<F> {
    /// A proxy copying bytes as they come (see the module docs).
    pub fn tcp(faults: F) -> Proxy<F> {
        Proxy::start(faults, Mode::Tcp)
    }

    /// A proxy that reads each request and response whole (see the module docs).
    pub fn http(faults: F) -> Proxy<F> {
        Proxy::start(faults, Mode::Http)
    }

    fn start(faults: F, mode: Mode) -> Proxy<F> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = Arc::new(Shared {
            faults,
            mode,
            upstream: s3_endpoint().trim_start_matches("http://").to_string(),
            stop: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
        });
        let mut p = Proxy {
            port: listener.local_addr().unwrap().port(),
            shared,
            accept: None,
        };
        p.listen(listener);
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn listen(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let sh = self.shared.clone();
        self.accept = Some(std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let sh = sh.clone();
                        std::thread::spawn(move || match sh.mode {
                            Mode::Tcp => sh.splice(client),
                            Mode::Http => drop(sh.exchange(client)),
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        }));
    }

    /// The server vanishes: no more connections are accepted and every open one is cut.
    pub fn kill(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for (_, c) in self.shared.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The server is back, on the same address.
    pub fn restart(&mut self) {
        self.shared.stop.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.listen(listener);
    }

    /// Waits until some client bytes are being held (see [`Faults::hold`]).
    pub fn wait_held(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.shared.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "nothing came to be held");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl<F: Faults> Deref for Proxy<F> {
    type Target = F;

    fn deref(&self) -> &F {
        &self.shared.faults
    }
}

impl<F: Faults> Drop for Proxy<F> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keeps a connection in [`Shared::conns`] while it lives.
struct Tracked<'a, F> {
    shared: &'a Shared<F>,
    id: u64,
}

impl<F> Drop for Tracked<'_, F> {
    fn drop(&mut self) {
        self.shared.conns.lock().unwrap().remove(&self.id);
    }
}

impl<F: Faults> Shared<F> {
    /// Tracks `s` while the result lives; an error if the proxy was killed meanwhile (`s` is shut down then:
    /// [`Proxy::kill`] sets `stop` before it shuts down what it finds, so a connection is found or sees it).
    fn track(&self, s: &TcpStream) -> std::io::Result<Tracked<'_, F>> {
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        self.conns.lock().unwrap().insert(id, s.try_clone()?);
        let tracked = Tracked { shared: self, id };
        if self.stop.load(Ordering::SeqCst) {
            let _ = s.shutdown(Shutdown::Both);
            return Err(std::io::Error::other("the proxy was killed"));
        }
        Ok(tracked)
    }

    /// Waits while the faults hold `start` and the proxy runs.
    fn hold(&self, start: &[u8]) {
        if !self.faults.hold(start) {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        while self.faults.hold(start) && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    /// TCP mode: connects `client` to the server and copies both ways until either side closes.
    fn splice(&self, client: TcpStream) {
        let Ok(server) = TcpStream::connect(&self.upstream) else {
            return;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        std::thread::scope(|s| {
            s.spawn(|| self.pump(client, server, true));
            s.spawn(|| self.pump(s2, c2, false));
        });
    }

    /// Copies `from` to `to` until either closes; what a client sends (`from_client`) may be held.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, from_client: bool) {
        let Ok(_tracked) = self.track(&from) else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if from_client {
                self.hold(&buf[..n]);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    }

    /// HTTP mode: reads one request of `client`, forwards it (or not) and answers, as the faults say.
    fn exchange(&self, client: TcpStream) -> std::io::Result<()> {
        let _tracked = self.track(&client)?;
        let mut reader = BufReader::new(Paced::new(client.try_clone()?));
        let Some((line, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        self.hold(line.as_bytes());
        let mut parts = line.split(' ');
        let mut req = Request {
            method: parts.next().unwrap_or("").to_string(),
            target: parts.next().unwrap_or("").to_string(),
            headers,
        };
        let before = self.faults.request(&mut req);
        if let Before::Pace(rate) = before {
            reader.get_mut().pace(rate);
        }
        let body = read_body(&mut reader, &req.headers, false)?;
        let resp = match before {
            Before::Answer(resp) => resp,
            Before::Forward | Before::Pace(_) => {
                let resp = self.forward(&line, &req, &body)?;
                self.faults.response(&req, resp)
            }
        };
        write_response(client, &req, &resp)
    }

    /// Sends `req` (its first line `line`) with `body` to the server; returns its answer.
    fn forward(&self, line: &str, req: &Request, body: &[u8]) -> std::io::Result<Response> {
        let mut server = TcpStream::connect(&self.upstream)?;
        let _tracked = self.track(&server)?;
        let mut head = format!("{line}\r\n");
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("connection") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        server.write_all(head.as_bytes())?;
        server.write_all(body)?;
        let mut reader = BufReader::new(server);
        let (status_line, headers) = read_head(&mut reader)?.unwrap_or_default();
        let body = if req.method == "HEAD" {
            Vec::new()
        } else {
            read_body(&mut reader, &headers, true)?
        };
        let framing = ["content-length", "transfer-encoding", "connection"];
        Ok(Response {
            status: status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(502),
            head_length: header(&headers, "content-length").map(str::to_string),
            headers: headers
                .into_iter()
                .filter(|(k, _)| !framing.iter().any(|f| k.eq_ignore_ascii_case(f)))
                .collect(),
            body,
            cut_at: None,
        })
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request or status line and its headers.
type Head = (String, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

/// A message's body as `headers` frame it (chunked, `Content-Length`, or else to the end if `to_eof`).
fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header(headers, "content-length").and_then(|v| v.parse().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Sends `resp` to the client (framed by `Content-Length`, cut where it says) and closes the connection.
fn write_response(mut client: TcpStream, req: &Request, resp: &Response) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Proxied\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let len = match (req.method.as_str(), &resp.head_length) {
        ("HEAD", Some(n)) => n.clone(),
        _ => resp.body.len().to_string(),
    };
    head.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    client.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        let sent = resp.cut_at.unwrap_or(resp.body.len()).min(resp.body.len());
        client.write_all(&resp.body[..sent])?;
    }
    client.shutdown(Shutdown::Both)
}

/// A reader that, once paced, gives no more than `rate` bytes a second (counted from then).
struct Paced<R> {
    inner: R,
    pace: Option<(u64, Instant, u64)>,
}

impl<R> Paced<R> {
    fn new(inner: R) -> Paced<R> {
        Paced { inner, pace: None }
    }

    fn pace(&mut self, rate: u64) {
        self.pace = Some((rate, Instant::now(), 0));
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some((rate, started, total)) = &mut self.pace {
            *total += n as u64;
            let due = Duration::from_secs_f64(*total as f64 / *rate as f64);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
        Ok(n)
    }
}
