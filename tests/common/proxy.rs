//! # A fault proxy in front of a real server
//!
//! Faults a real Glance will not produce on demand — a connection cut mid-upload, a storm of
//! 503s, a server that stops answering — come from this proxy on 127.0.0.1, which forwards
//! everything else to the real server unchanged. Standard library only.
//!
//! Each client connection gets its own upstream connection. The client's requests are parsed
//! one by one (request line, headers, a `Content-Length` or chunked body), so a fault hits the
//! request it is meant for even on a kept-alive connection that served other requests first;
//! the server's bytes go back to the client as they come. Clients do not pipeline (reqwest,
//! ureq, curl), so the bytes that follow a request are its response.
//!
//! ```text
//! let proxy = Proxy::start(cloud.glance_addr());
//! proxy.add(Rule::new("PUT", "/file", Fault::CutAfterRequestBytes(1 << 20)).times(1));
//! // … point the client at proxy.url(), run it, then look at Glance itself.
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest request head the proxy reads (Glance's own limit is 64 KiB too).
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does to a request that matches a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward the request head and this many bytes of its body (as sent: chunk framing
    /// counts), then cut the client's and the server's connections: a connection dropped
    /// mid-upload.
    CutAfterRequestBytes(u64),
    /// Answer `503 Service Unavailable` (a load balancer's small HTML page, `Connection:
    /// close`) to this many matching requests without forwarding them; later ones go through.
    Status503Times(u32),
    /// Read the request and answer nothing; when the duration has passed, close the
    /// connection. The request never reaches the server (a hung front end).
    StallFor(Duration),
    /// Forward the request, hold the server's answer for the duration, then relay it: the
    /// server did the work, the client may have given up waiting (a lost answer).
    DelayResponse(Duration),
    /// Forward the request with the first occurrence of `from` in its target replaced by
    /// `to` (a registry's mount POST made to name a repository that lacks the blob, so the
    /// real registry answers 202 and opens an upload instead).
    RewriteTarget { from: String, to: String },
    /// Forward the request; relay this many bytes of the server's answer (head included), then
    /// cut both connections: a download dropped midway.
    CutResponseAfterBytes(u64),
}

/// A fault for the requests whose method and path match.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `PUT`, `POST`… exactly, or `*` for any.
    pub method: String,
    /// A substring of the request target (path and query), e.g. `/file`.
    pub path_contains: String,
    pub fault: Fault,
    /// How many more requests it applies to (None: all). `Status503Times(n)` starts at n.
    pub remaining: Option<u32>,
}

impl Rule {
    pub fn new(method: &str, path_contains: &str, fault: Fault) -> Rule {
        let remaining = match fault {
            Fault::Status503Times(n) => Some(n),
            _ => None,
        };
        Rule {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault,
            remaining,
        }
    }

    /// Applies to the next `n` matching requests only.
    pub fn times(mut self, n: u32) -> Rule {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && target.contains(&self.path_contains)
            && self.remaining != Some(0)
    }
}

/// A request the proxy saw, and what it did with it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Body bytes read from the client (as sent, chunk framing included).
    pub body_bytes: u64,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

impl Shared {
    /// The first matching rule's fault (counting it down).
    fn take_fault(&self, method: &str, target: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| r.matches(method, target))?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }

    fn record(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(client, &s));
            }
        });
        Proxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule (after the existing ones: the first that matches a request applies).
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Removes every rule: from now on everything is forwarded.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests a fault was applied to.
    pub fn faults_applied(&self) -> usize {
        self.requests().iter().filter(|s| s.fault.is_some()).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The parsed head of a request, and its bytes as received (forwarded unchanged).
struct Head {
    raw: Vec<u8>,
    method: String,
    target: String,
    body: Framing,
    expect_continue: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Reads one request head; None at a clean end of the connection.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request head cut",
            ));
        }
        if raw.len() > MAX_HEAD {
            return Err(io::Error::other("request head over 64 KiB"));
        }
        let line = &raw[before..];
        if (line == b"\r\n" || line == b"\n") && before > 0 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let mut body = Framing::None;
    let mut expect_continue = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" if body != Framing::Chunked => {
                let n = value
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad Content-Length {value:?}")))?;
                body = Framing::Length(n);
            }
            "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => {
                body = Framing::Chunked;
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    Ok(Some(Head {
        raw,
        method,
        target,
        body,
        expect_continue,
    }))
}

/// Passes bytes on, counting them; past `limit` it writes no more and fails with `Cut`.
struct Meter<W> {
    out: W,
    count: u64,
    limit: Option<u64>,
}

#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cut by the proxy")
    }
}

impl std::error::Error for Cut {}

impl<W: Write> Write for Meter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit.map_or(u64::MAX, |l| l - self.count);
        if room == 0 {
            return Err(io::Error::other(Cut));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.out.write_all(&buf[..n])?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Copies one request body from the client to `out` as it was sent.
fn copy_body<W: Write>(
    r: &mut impl BufRead,
    framing: Framing,
    out: &mut Meter<W>,
) -> io::Result<()> {
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => {
            let copied = io::copy(&mut r.take(n), out)?;
            if copied < n {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut"));
            }
            Ok(())
        }
        Framing::Chunked => loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunked body cut",
                ));
            }
            out.write_all(&line)?;
            let size = String::from_utf8_lossy(&line);
            let size = size.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t)? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "trailers cut"));
                    }
                    out.write_all(&t)?;
                    if t == b"\r\n" || t == b"\n" {
                        return Ok(());
                    }
                }
            }
            // The chunk and its CRLF.
            let copied = io::copy(&mut r.take(size + 2), out)?;
            if copied < size + 2 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk cut"));
            }
        },
    }
}

/// The request head with `from` replaced by `to` in its request line only.
fn rewrite_target(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
    let end = raw
        .iter()
        .position(|b| *b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let line = String::from_utf8_lossy(&raw[..end]).replacen(from, to, 1);
    let mut out = line.into_bytes();
    out.extend_from_slice(&raw[end..]);
    out
}

const BODY_503: &str = "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n";

/// The upstream side of one client connection.
struct Upstream {
    stream: TcpStream,
    /// A delay for the next bytes of the answer (DelayResponse).
    delay: Arc<Mutex<Option<Duration>>>,
    /// Bytes of the answer still relayed before a cut (CutResponseAfterBytes).
    cut: Arc<Mutex<Option<u64>>>,
    pump: std::thread::JoinHandle<()>,
}

fn connect(shared: &Shared, client: &TcpStream) -> io::Result<Upstream> {
    let stream = TcpStream::connect(shared.upstream)?;
    let delay: Arc<Mutex<Option<Duration>>> = Arc::default();
    let mut from = stream.try_clone()?;
    let mut to = client.try_clone()?;
    let d = delay.clone();
    let cut: Arc<Mutex<Option<u64>>> = Arc::default();
    let c = cut.clone();
    let pump = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let hold = d.lock().unwrap().take();
            if let Some(hold) = hold {
                std::thread::sleep(hold);
            }
            let left = *c.lock().unwrap();
            if let Some(left) = left {
                let k = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                let _ = to.write_all(&buf[..k]);
                if k < n || left == k as u64 {
                    let _ = from.shutdown(Shutdown::Both);
                    break;
                }
                *c.lock().unwrap() = Some(left - k as u64);
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // The server closed: so does the client's connection, as it would without the proxy.
        let _ = to.shutdown(Shutdown::Both);
    });
    Ok(Upstream {
        stream,
        delay,
        cut,
        pump,
    })
}

fn serve(client: TcpStream, shared: &Shared) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut upstream: Option<Upstream> = None;
    // Until the client leaves (or sends something that is not HTTP).
    while let Ok(Some(head)) = read_head(&mut reader) {
        let fault = shared.take_fault(&head.method, &head.target);
        let mut seen = Seen {
            method: head.method.clone(),
            target: head.target.clone(),
            body_bytes: 0,
            fault: fault.clone(),
        };
        match fault {
            Some(Fault::Status503Times(_)) => {
                // Read the body (unless the client waits for 100 Continue) so the client reads
                // the answer instead of a reset, then close, as a load balancer does.
                if !head.expect_continue {
                    let mut sink = Meter {
                        out: io::sink(),
                        count: 0,
                        limit: None,
                    };
                    let _ = copy_body(&mut reader, head.body, &mut sink);
                    seen.body_bytes = sink.count;
                }
                shared.record(seen);
                let mut c = &client;
                let _ = write!(
                    c,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n{BODY_503}",
                    BODY_503.len()
                );
                break;
            }
            Some(Fault::StallFor(d)) => {
                shared.record(seen);
                let end = Instant::now() + d;
                let mut buf = [0u8; 16 * 1024];
                // Keep reading (a client uploading is not blocked by a full window) until the
                // time is up or the client leaves.
                while let Some(left) = end.checked_duration_since(Instant::now()) {
                    if left.is_zero() || reader.get_ref().set_read_timeout(Some(left)).is_err() {
                        break;
                    }
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                break;
            }
            _ => {}
        }
        if upstream.is_none() {
            match connect(shared, &client) {
                Ok(u) => upstream = Some(u),
                Err(_) => {
                    shared.record(seen);
                    break;
                }
            }
        }
        let up = upstream.as_ref().unwrap();
        if let Some(Fault::DelayResponse(d)) = fault {
            *up.delay.lock().unwrap() = Some(d);
        }
        // A cut applies to this request's answer only.
        *up.cut.lock().unwrap() = match fault {
            Some(Fault::CutResponseAfterBytes(n)) => Some(n),
            _ => None,
        };
        let limit = match fault {
            Some(Fault::CutAfterRequestBytes(n)) => Some(n),
            _ => None,
        };
        let mut out = Meter {
            out: &up.stream,
            count: 0,
            limit,
        };
        let raw = match &fault {
            Some(Fault::RewriteTarget { from, to }) => rewrite_target(&head.raw, from, to),
            _ => head.raw.clone(),
        };
        let sent = (&up.stream)
            .write_all(&raw)
            .and_then(|()| copy_body(&mut reader, head.body, &mut out));
        seen.body_bytes = out.count;
        shared.record(seen);
        // A cut ends the connection, even when the body was shorter than the cut point; so
        // does a client or server that went away.
        if limit.is_some() || sent.is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    if let Some(up) = upstream {
        let _ = up.stream.shutdown(Shutdown::Both);
        let _ = up.pump.join();
    }
}

#[cfg(test)]
mod tests {
    //! The proxy against a tiny HTTP/1.1 server made here (keep-alive, Content-Length and
    //! chunked request bodies), and raw sockets as the client.

    use super::*;

    /// What the test server received: one entry per request (method, target, body), and
    /// how many connections it accepted.
    #[derive(Default)]
    struct Log {
        requests: Vec<(String, String, Vec<u8>)>,
        connections: usize,
        /// Body bytes of requests that ended before their body did.
        partial: Vec<usize>,
    }

    /// An HTTP/1.1 server that answers `200` with `METHOD TARGET LEN` and keeps the
    /// connection open.
    fn server() -> (SocketAddr, Arc<Mutex<Log>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Log>> = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                l.lock().unwrap().connections += 1;
                let l = l.clone();
                std::thread::spawn(move || server_conn(s, &l));
            }
        });
        (addr, log)
    }

    fn server_conn(s: TcpStream, log: &Mutex<Log>) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        loop {
            let mut request_line = String::new();
            if r.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut len = 0usize;
            let mut chunked = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                    chunked = true;
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size).unwrap();
                    let size = size.trim().split(';').next().unwrap();
                    let n = usize::from_str_radix(size, 16).unwrap();
                    let mut chunk = vec![0u8; n + 2];
                    r.read_exact(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                let got = (&mut r)
                    .take(len as u64)
                    .read_to_end(&mut body)
                    .unwrap_or(0);
                if got < len {
                    log.lock().unwrap().partial.push(got);
                    return;
                }
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap().to_string();
            let target = parts.next().unwrap().to_string();
            let answer = format!("{method} {target} {}", body.len());
            log.lock().unwrap().requests.push((method, target, body));
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if w.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Sends a request with a Content-Length body on a raw connection.
    fn send(c: &mut TcpStream, method: &str, target: &str, body: &[u8]) -> io::Result<()> {
        write!(
            c,
            "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        c.write_all(body)
    }

    /// Reads one response (head and Content-Length body); None when the connection ended
    /// before a response.
    fn response(r: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
        let mut status = String::new();
        if r.read_line(&mut status).ok()? == 0 {
            return None;
        }
        let code = status.split_whitespace().nth(1)?.parse().ok()?;
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().ok()?;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
        Some((code, String::from_utf8(body).ok()?))
    }

    fn client(p: &Proxy) -> (TcpStream, BufReader<TcpStream>) {
        let c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(c.try_clone().unwrap());
        (c, r)
    }

    #[test]
    fn forwards_keep_alive_requests_and_applies_a_fault_to_the_matching_one_only() {
        let (up, log) = server();
        let p = Proxy::start(up);
        p.add(Rule::new("PUT", "/file", Fault::CutAfterRequestBytes(100)));
        let (mut c, mut r) = client(&p);
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        assert_eq!(response(&mut r), Some((200, "GET /v2/images 0".into())));
        send(&mut c, "POST", "/v2/images", b"{}").unwrap();
        assert_eq!(response(&mut r), Some((200, "POST /v2/images 2".into())));
        // The same connection now uploads: the fault applies to this request alone.
        let _ = send(&mut c, "PUT", "/v2/images/x/file", &[7u8; 5000]);
        assert_eq!(response(&mut r), None, "a cut upload gets no answer");
        std::thread::sleep(Duration::from_millis(100));
        let log = log.lock().unwrap();
        assert_eq!(log.connections, 1, "one kept-alive upstream connection");
        assert_eq!(log.requests.len(), 2);
        assert_eq!(
            log.partial,
            vec![100],
            "the server got exactly 100 body bytes"
        );
        let seen = p.requests();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].fault, Some(Fault::CutAfterRequestBytes(100)));
        assert_eq!(seen[2].body_bytes, 100);
        assert_eq!(p.faults_applied(), 1);
    }

    #[test]
    fn a_chunked_body_goes_through_intact() {
        let (up, log) = server();
        let p = Proxy::start(up);
        let (mut c, mut r) = client(&p);
        c.write_all(
            b"PUT /v2/images/x/file HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            response(&mut r),
            Some((200, "PUT /v2/images/x/file 11".into()))
        );
        assert_eq!(log.lock().unwrap().requests[0].2, b"hello world");
        // And the connection still serves the next request.
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        assert_eq!(response(&mut r), Some((200, "GET /v2/images 0".into())));
    }

    #[test]
    fn status_503_a_given_number_of_times_then_forwards() {
        let (up, log) = server();
        let p = Proxy::start(up);
        p.add(Rule::new("POST", "/v2/images", Fault::Status503Times(2)));
        for expected in [503, 503, 200] {
            let (mut c, mut r) = client(&p);
            send(&mut c, "POST", "/v2/images", &[b'x'; 3000]).unwrap();
            let (code, _) = response(&mut r).expect("an answer");
            assert_eq!(code, expected);
        }
        // Other methods were never touched.
        let (mut c, mut r) = client(&p);
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        assert_eq!(response(&mut r).unwrap().0, 200);
        assert_eq!(
            log.lock().unwrap().requests.len(),
            2,
            "503s never reach the server"
        );
        assert_eq!(p.faults_applied(), 2);
    }

    #[test]
    fn stall_answers_nothing_and_never_forwards() {
        let (up, log) = server();
        let p = Proxy::start(up);
        p.add(Rule::new(
            "*",
            "/v2/images",
            Fault::StallFor(Duration::from_millis(400)),
        ));
        let (mut c, mut r) = client(&p);
        let t = Instant::now();
        send(&mut c, "POST", "/v2/images", b"{}").unwrap();
        assert_eq!(response(&mut r), None, "closed without an answer");
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(log.lock().unwrap().connections, 0);
        // A client that gives up first sees a read timeout.
        let (mut c, mut r) = client(&p);
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        let mut byte = [0u8; 1];
        let e = r.read(&mut byte).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn delay_response_forwards_at_once_and_answers_late() {
        let (up, log) = server();
        let p = Proxy::start(up);
        p.add(
            Rule::new(
                "POST",
                "/v2/images",
                Fault::DelayResponse(Duration::from_millis(400)),
            )
            .times(1),
        );
        let (mut c, mut r) = client(&p);
        let t = Instant::now();
        send(&mut c, "POST", "/v2/images", b"{}").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log.lock().unwrap().requests.len(), 1, "forwarded at once");
        assert_eq!(response(&mut r).unwrap().0, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );
        // `times(1)`: the next one is not delayed.
        let t = Instant::now();
        send(&mut c, "POST", "/v2/images", b"{}").unwrap();
        assert_eq!(response(&mut r).unwrap().0, 200);
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn rewrite_target_changes_the_request_line_only() {
        let (up, log) = server();
        let p = Proxy::start(up);
        p.add(Rule::new(
            "POST",
            "from=src",
            Fault::RewriteTarget {
                from: "from=src".into(),
                to: "from=nowhere".into(),
            },
        ));
        let (mut c, mut r) = client(&p);
        send(
            &mut c,
            "POST",
            "/v2/x/blobs/uploads/?mount=d&from=src",
            b"{}",
        )
        .unwrap();
        assert_eq!(
            response(&mut r),
            Some((
                200,
                "POST /v2/x/blobs/uploads/?mount=d&from=nowhere 2".into()
            ))
        );
        assert_eq!(log.lock().unwrap().requests[0].2, b"{}");
        assert_eq!(
            p.requests()[0].target,
            "/v2/x/blobs/uploads/?mount=d&from=src"
        );
    }

    #[test]
    fn clear_removes_the_faults() {
        let (up, _log) = server();
        let p = Proxy::start(up);
        p.add(Rule::new("GET", "/", Fault::Status503Times(100)));
        let (mut c, mut r) = client(&p);
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        assert_eq!(response(&mut r).unwrap().0, 503);
        p.clear();
        let (mut c, mut r) = client(&p);
        send(&mut c, "GET", "/v2/images", b"").unwrap();
        assert_eq!(response(&mut r).unwrap().0, 200);
    }
}
