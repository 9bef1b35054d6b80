//! A real S3 server for the s3 plugin's tests: moto (`moto[server]` from PyPI, installed
//! in a venv by `scripts/setup-s3-test-server.sh`), started on a free 127.0.0.1 port and
//! killed, with its whole process group, on drop. Every wait here is bounded.
//!
//! [`Proxy`] sits between a mount and moto: it counts the HTTP requests that pass and can
//! cut the connection (every open one closed, new ones refused) to make the server
//! unreachable without losing moto's in-memory data.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The venv holding moto and boto3.
pub fn venv() -> PathBuf {
    match std::env::var_os("PLUGFS_MOTO_VENV") {
        Some(v) => PathBuf::from(v),
        None => crate::target_dir().parent().map(|p| p.join("moto-venv")).unwrap_or_else(|| "target/moto-venv".into()),
    }
}

/// A moto server. Dropping it kills it.
pub struct Moto {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Whether an HTTP server answers on `port` (any status).
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

impl Moto {
    /// Starts moto and waits (at most 30 s) until it answers. Panics, with the fix, when
    /// the venv is missing.
    pub fn start() -> Moto {
        let venv = venv();
        let server = venv.join("bin/moto_server");
        assert!(
            server.is_file(),
            "{} is missing: run scripts/setup-s3-test-server.sh (it installs moto[server] and boto3 in a venv)",
            server.display()
        );
        let port = free_port();
        let log = std::env::temp_dir().join(format!("plugfs-moto-{port}.log"));
        let out = std::fs::File::create(&log).expect("moto log file");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            // Its own process group: Drop kills moto and anything it started.
            .process_group(0)
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            if Instant::now() > deadline || matches!(moto.child.try_wait(), Ok(Some(_))) {
                let text = std::fs::read_to_string(&moto.log).unwrap_or_default();
                moto.kill();
                panic!("moto did not answer on 127.0.0.1:{port} within 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `code` with the venv's python, after a prelude that defines `s3` (a boto3
    /// client of this server) and `sys.argv[1:]` = `args`. Returns (exit code, stdout +
    /// stderr). Bounded: killed after 60 s.
    pub fn python(&self, code: &str, args: &[&str]) -> (i32, String) {
        python_at(&self.endpoint(), code, args)
    }

    /// Stops the server (SIGSTOP to its process group): connections stay open and nothing
    /// answers, and nothing is lost (moto keeps its data in memory).
    pub fn pause(&self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGSTOP) };
    }

    /// Resumes a paused server.
    pub fn resume(&self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGCONT) };
    }

    fn kill(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// [`Moto::python`] against any endpoint.
pub fn python_at(endpoint: &str, code: &str, args: &[&str]) -> (i32, String) {
    let prelude = format!(
        "import sys, boto3, botocore.config\n\
         s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id='test', \
         aws_secret_access_key='test', region_name='us-east-1', \
         config=botocore.config.Config(connect_timeout=5, read_timeout=30, retries={{'max_attempts': 2}}))\n"
    );
    let mut child = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(format!("{prelude}{code}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (-1, "python timed out after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python output");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// A TCP proxy from a free 127.0.0.1 port to a server, counting requests, that can be cut.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    up: AtomicBool,
    stop: AtomicBool,
    requests: AtomicU64,
    /// Bytes from the client to the server (requests and their bodies).
    sent: AtomicU64,
    /// Both ends of every open connection, to shut them down when cut.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl Proxy {
    /// Starts forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(ProxyState {
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            conns: Mutex::default(),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                if !st.up.load(Ordering::SeqCst) {
                    // Down: the connection is accepted and dropped at once (a reset).
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    st.conns.lock().unwrap().push((c2, s2));
                }
                let (c_read, s_write) = (client.try_clone(), server.try_clone());
                let counter = st.clone();
                // client -> server, counting request lines.
                std::thread::spawn(move || {
                    let (Ok(mut from), Ok(mut to)) = (c_read, s_write) else { return };
                    let mut buf = vec![0u8; 64 << 10];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        counter.sent.fetch_add(n as u64, Ordering::SeqCst);
                        // Count "HTTP/1.1\r\n" (request lines) across read boundaries.
                        tail.extend_from_slice(&buf[..n]);
                        let needle = b" HTTP/1.1\r\n";
                        let mut i = 0;
                        while i + needle.len() <= tail.len() {
                            if &tail[i..i + needle.len()] == needle {
                                counter.requests.fetch_add(1, Ordering::SeqCst);
                                i += needle.len();
                            } else {
                                i += 1;
                            }
                        }
                        let keep = tail.len().min(needle.len() - 1);
                        tail.drain(..tail.len() - keep);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                // server -> client.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (server, client);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        Proxy { port, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests forwarded so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the client to the server so far.
    pub fn bytes_sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    /// Makes the server unreachable: open connections are closed, new ones reset.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for (c, s) in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Makes the server reachable again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}
