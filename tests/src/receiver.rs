//! An HTTP receiver on loopback standing in for Slack, a webhook endpoint or Alertmanager: it
//! records every POST it acknowledges, and can be switched to answer 503 (an outage).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// One request the receiver acknowledged with 200.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// The body is not JSON.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A receiver running on its own thread.
pub struct Receiver {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Received>>>,
    refused: Arc<AtomicU64>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        headers,
        body,
    })
}

impl Receiver {
    /// Starts listening on a free loopback port.
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let down = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let (d, g, f) = (Arc::clone(&down), Arc::clone(&got), Arc::clone(&refused));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (d, g, f) = (Arc::clone(&d), Arc::clone(&g), Arc::clone(&f));
                thread::spawn(move || serve(stream, &d, &g, &f));
            }
        });
        Self {
            addr,
            down,
            got,
            refused,
        }
    }

    /// `http://127.0.0.1:PORT` plus `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Switches the outage on (503 to everything) or off.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Requests answered 503 so far.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Everything acknowledged so far.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `done` holds for what was received, for at most `secs` seconds.
    pub fn wait_for(&self, secs: u64, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if done(&got) || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve(stream: TcpStream, down: &AtomicBool, got: &Mutex<Vec<Received>>, refused: &AtomicU64) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    while let Some(req) = read_request(&mut r) {
        let status = if down.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        } else {
            got.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(req);
            "200 OK"
        };
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
