//! Load for the overload test: an HTTP/1.1 server of the test's own inside the third party's
//! network namespace, and keep-alive clients that call it from many threads, with large
//! bodies both ways. Plain `std` sockets, so that the load is as heavy as this machine can
//! make it and every request is checked.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Paths of the calls the load makes; the test counts calls by this prefix.
pub const PREFIX: &str = "/overload/";

/// Socket timeouts: a request that hangs this long fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A server answering the load's calls, listening in a network namespace. Stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listens on `addr` inside network namespace `netns` (made with `ip netns add`).
    ///
    /// # Panics
    /// If the namespace cannot be entered or the address bound.
    #[must_use]
    pub fn start(netns: &str, addr: SocketAddr) -> Self {
        let ns = File::open(format!("/run/netns/{netns}"))
            .unwrap_or_else(|e| panic!("network namespace {netns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            // A thread may join another network namespace alone: the listener, and the
            // connections it accepts, live in the third party's; the test stays in the host's.
            // SAFETY: a valid namespace fd; affects only this thread.
            let listener = if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                TcpListener::bind(addr).map_err(|e| format!("bind: {e}"))
            } else {
                Err(format!("setns: {}", std::io::Error::last_os_error()))
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || serve(conn));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("load server on {addr} in {netns}: {e}"),
            Err(e) => panic!("load server thread: {e}"),
        }
        Self { addr, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// One HTTP/1.1 message as read: its start line and body size.
struct Message {
    start: String,
    body: usize,
}

/// Reads one message (head, then a `Content-Length` body into `body`); `None` at a clean
/// end of stream before its first byte.
fn read_message(
    r: &mut BufReader<&TcpStream>,
    body: &mut Vec<u8>,
) -> std::io::Result<Option<Message>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let start = line.trim_end().to_owned();
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v
                .trim()
                .parse()
                .map_err(|e| std::io::Error::other(format!("bad Content-Length {v}: {e}")))?;
        }
    }
    body.resize(len, 0);
    r.read_exact(body)?;
    Ok(Some(Message { start, body: len }))
}

/// JSON of about `size` bytes with personal data at the start, as an API body would carry.
#[must_use]
pub fn json_body(size: usize) -> Vec<u8> {
    let head =
        br#"{"customer":{"email":"lucy.smith@example.com","phone":"+1 415 555 2671"},"blob":""#;
    let mut b = Vec::with_capacity(size.max(head.len() + 2));
    b.extend_from_slice(head);
    b.resize(size.saturating_sub(2).max(head.len()), b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// Answers requests on one connection until the client closes it: `GET /overload/big`
/// with a large JSON body, other GETs with a small one, POSTs with `201` and the size read.
fn serve(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    // Reads and writes on the one fd: the agent follows a connection by its fd, and a
    // `try_clone` (dup) would be another fd it never saw connect.
    let mut writer = &conn;
    let mut reader = BufReader::with_capacity(64 * 1024, &conn);
    let big = json_body(BIG);
    let mut body = Vec::new();
    let mut out = Vec::new();
    while let Ok(Some(m)) = read_message(&mut reader, &mut body) {
        out.clear();
        let (status, payload): (&str, Vec<u8>) = if m.start.starts_with("POST ") {
            (
                "201 Created",
                format!("{{\"received\":{}}}", m.body).into_bytes(),
            )
        } else if m.start.contains("/big") {
            ("200 OK", big.clone())
        } else {
            ("200 OK", b"{\"ok\":true}".to_vec())
        };
        // Head and body in one write, as servers do for bodies they hold in memory.
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        out.extend_from_slice(&payload);
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// Size of the large bodies, both ways.
pub const BIG: usize = 256 * 1024;

/// What the load asks for.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Client threads, each with one connection at a time.
    pub clients: usize,
    /// Connections each client opens, one after the other.
    pub connections: usize,
    /// Keep-alive calls per connection: in turn a POST of [`BIG`] bytes, a GET answered
    /// with [`BIG`] bytes, a small GET.
    pub calls: usize,
}

impl Load {
    /// Calls the whole load makes.
    #[must_use]
    pub const fn total(&self) -> usize {
        self.clients * self.connections * self.calls
    }
}

/// What a load run did (every call of the load, or it panicked).
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// Body bytes moved, both ways.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Runs `load` against `server`; every call must succeed.
///
/// # Panics
/// If any call fails: a connection error, a timeout, a wrong status or body size.
#[must_use]
pub fn run(server: SocketAddr, host: &str, load: Load) -> Done {
    let started = Instant::now();
    let threads: Vec<_> = (0..load.clients)
        .map(|c| {
            let host = host.to_owned();
            thread::spawn(move || client(server, &host, c, load))
        })
        .collect();
    let mut bytes = 0;
    for t in threads {
        match t.join() {
            Ok(Ok(b)) => bytes += b,
            Ok(Err(e)) => panic!("a client failed: {e}"),
            Err(_) => panic!("a client thread panicked"),
        }
    }
    Done {
        bytes,
        elapsed: started.elapsed(),
    }
}

/// One client: `load.connections` keep-alive connections, `load.calls` calls on each.
/// Returns the body bytes moved.
fn client(server: SocketAddr, host: &str, id: usize, load: Load) -> Result<u64, String> {
    let upload = json_body(BIG);
    let mut request = Vec::new();
    let mut body = Vec::new();
    let mut bytes = 0u64;
    for c in 0..load.connections {
        let conn = TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .map_err(|e| format!("client {id} connection {c}: {e}"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let mut writer = &conn;
        let mut reader = BufReader::with_capacity(64 * 1024, &conn);
        for n in 0..load.calls {
            request.clear();
            let (method, path, sent, want_status, want_body) = match n % 3 {
                0 => ("POST", "upload", upload.len(), "HTTP/1.1 201", None),
                1 => ("GET", "big", 0, "HTTP/1.1 200", Some(BIG)),
                _ => ("GET", "small", 0, "HTTP/1.1 200", None),
            };
            let _ = write!(
                request,
                "{method} {PREFIX}{path}/{id}/{c}/{n} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {sent}\r\n\r\n"
            );
            if sent > 0 {
                request.extend_from_slice(&upload);
            }
            writer
                .write_all(&request)
                .map_err(|e| format!("client {id} call {n}: write: {e}"))?;
            let m = read_message(&mut reader, &mut body)
                .map_err(|e| format!("client {id} call {n}: read: {e}"))?
                .ok_or_else(|| format!("client {id} call {n}: connection closed"))?;
            if !m.start.starts_with(want_status) || want_body.is_some_and(|b| b != m.body) {
                return Err(format!(
                    "client {id} call {n}: {} with {} bytes",
                    m.start, m.body
                ));
            }
            bytes += (sent + m.body) as u64;
        }
    }
    Ok(bytes)
}
