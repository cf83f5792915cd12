//! A real S3 store for the tests: a single-node Garage on 127.0.0.1 with random free
//! ports and its own temporary directories, started per test and killed on drop. Made
//! with Garage's own `--single-node --default-bucket` start-up (NOTES.md §7); extra buckets
//! and keys through its CLI. Also the environments replicad and rclone read to reach it.
//!
//! When `garage` is not on PATH a test prints a visible `SKIP` line and returns — except
//! under CI (`CI` set), where a missing Garage fails the test: `.ci/run` installs it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::wait_until;

/// The Garage version the tests (and `.ci/run`) pin.
pub const GARAGE_VERSION: &str = "2.5.0";
/// The bucket every Garage starts with.
pub const BUCKET: &str = "replicad-test";
/// The S3 region Garage answers as.
pub const REGION: &str = "garage";
/// How long Garage may take to answer after start (it takes ~0.1 s on a quiet machine).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running single-node Garage.
pub struct Garage {
    child: Child,
    dir: TempDir,
    config: PathBuf,
    s3_port: u16,
    admin_port: u16,
    admin_token: String,
    /// The default key's id (`GK…`).
    pub key_id: String,
    /// The default key's secret.
    pub secret: String,
}

/// A free TCP port on loopback for a server to bind next. Taken below the kernel's
/// ephemeral range (32768 up): a port from that range, released, can become the local
/// port of any outgoing connection (rclone's, replicad's) before Garage binds it.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = seed();
    for i in 0..1000u64 {
        let n = start.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)).wrapping_add(i);
        let port = 20_000 + (n % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub(crate) fn hex(n: usize, seed: u64) -> String {
    // Unique enough per test process and call; no cryptographic need (loopback only).
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

pub(crate) fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919);
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) ^ n
}

/// True if `garage` runs and prints the pinned version.
pub fn available() -> bool {
    Command::new("garage").arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(GARAGE_VERSION)
    })
}

impl Garage {
    /// Starts a Garage, or prints `SKIP` and returns `None` when it is not installed
    /// (panics instead under CI, which must have it).
    pub fn start(test: &str) -> Option<Garage> {
        if !available() {
            if std::env::var_os("CI").is_some() {
                panic!("garage {GARAGE_VERSION} is not on PATH under CI: .ci/run must install it");
            }
            // Straight to fd 2: libtest captures `eprintln!` of passing tests, and a skip
            // must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: garage {GARAGE_VERSION} is not on PATH (cargo install garage --version 2.5.0 --locked)"
            );
            return None;
        }
        // A port taken between our probe and Garage's bind makes it exit at start: try
        // again on other ports.
        let mut last = String::new();
        for _ in 0..3 {
            match Garage::start_now() {
                Ok(g) => return Some(g),
                Err(log) => last = log,
            }
        }
        panic!("garage did not start (3 tries):\n{last}");
    }

    fn start_now() -> Result<Garage, String> {
        let dir = tempfile::Builder::new().prefix("garage-").tempdir().expect("temp dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let s = seed();
        let config = dir.path().join("garage.toml");
        let text = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{token}\"\n",
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            secret = hex(64, s),
            token = hex(32, s.rotate_left(7)),
        );
        let admin_token = hex(32, s.rotate_left(7));
        std::fs::write(&config, text).expect("write garage.toml");
        let key_id = format!("GK{}", hex(24, s.rotate_left(13)));
        let secret = hex(64, s.rotate_left(29));
        let child = spawn(&config, dir.path(), &key_id, &secret);
        let mut g = Garage {
            child,
            dir,
            config,
            s3_port: s3,
            admin_port: admin,
            admin_token,
            key_id,
            secret,
        };
        let ready = wait_until(START_DEADLINE, || g.answers() || g.exited());
        if !ready || g.exited() {
            return Err(format!("it did not answer:\n{}", g.log()));
        }
        // The default bucket and key are made just after the API opens; wait for them too.
        let bucket =
            wait_until(START_DEADLINE, || g.exited() || g.cli(&["bucket", "info", BUCKET]).is_ok());
        if !bucket || g.exited() {
            return Err(format!("its default bucket never appeared:\n{}", g.log()));
        }
        Ok(g)
    }

    /// Kills the node (its data stays); requests to it now fail to connect.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped node again on the same ports and data, and waits until it answers.
    pub fn start_again(&mut self) {
        self.child = spawn(&self.config, self.dir.path(), &self.key_id, &self.secret);
        let ready = wait_until(START_DEADLINE, || self.answers() || self.exited());
        assert!(ready && !self.exited(), "garage did not start again:\n{}", self.log());
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// True once the S3 port answers an HTTP request (any status).
    fn answers(&self) -> bool {
        s3_answers(self.s3_port)
    }

    /// S3 requests Garage has answered so far, by endpoint (`ListObjectsV2`, `HeadObject`,
    /// `PutObject`, …), from its Prometheus metrics on the admin port.
    pub fn s3_requests(&self) -> std::collections::BTreeMap<String, u64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).expect("admin port");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /metrics HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            self.admin_token
        );
        s.write_all(req.as_bytes()).expect("ask for metrics");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read metrics");
        let mut out = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("api_s3_request_counter{")) {
            let endpoint = line.split("api_endpoint=\"").nth(1).and_then(|r| r.split('"').next());
            let count = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok());
            if let (Some(e), Some(n)) = (endpoint, count) {
                *out.entry(e.to_owned()).or_default() += n as u64;
            }
        }
        assert!(!out.is_empty(), "no S3 request counters in Garage's metrics:\n{text}");
        out
    }

    /// Garage's own log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Runs `garage -c CONFIG ARGS…`; stdout, or stderr as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        garage_cli(&self.config, args)
    }

    /// Makes a bucket the default key may read and write.
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]).expect("garage bucket create");
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.key_id])
            .expect("garage bucket allow");
    }

    /// Makes a new key with no rights on any bucket; returns (id, secret).
    pub fn create_key(&self, name: &str) -> (String, String) {
        let out = self.cli(&["key", "create", name]).expect("garage key create");
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
        };
        (field("Key ID:"), field("Secret key:"))
    }

    /// The variables replicad reads to reach `bucket` with the default key.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// A lookup over [`Garage::env`], for `S3Settings::from_env`.
    pub fn lookup(&self) -> impl Fn(&str) -> Option<String> + use<> {
        let env = self.env();
        move |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    /// The variables that make `G:` an rclone remote for this Garage (no config file).
    pub fn rclone_env(&self) -> Vec<(String, OsString)> {
        [
            ("RCLONE_CONFIG", "/dev/null".to_owned()),
            ("RCLONE_CONFIG_G_TYPE", "s3".to_owned()),
            ("RCLONE_CONFIG_G_PROVIDER", "Other".to_owned()),
            ("RCLONE_CONFIG_G_ENDPOINT", self.endpoint()),
            ("RCLONE_CONFIG_G_REGION", REGION.to_owned()),
            ("RCLONE_CONFIG_G_FORCE_PATH_STYLE", "true".to_owned()),
            ("RCLONE_CONFIG_G_ACCESS_KEY_ID", self.key_id.clone()),
            ("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), OsString::from(v)))
        .collect()
    }

    /// `rclone ARGS…` against this Garage, with its output.
    pub fn rclone(&self, args: &[&std::ffi::OsStr]) -> std::process::Output {
        Command::new("rclone").args(args).envs(self.rclone_env()).output().expect("run rclone")
    }

    /// Where this Garage keeps its files (for tests that need scratch space beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `garage server --single-node --default-bucket` with the default key and bucket.
fn spawn(config: &Path, dir: &Path, key_id: &str, secret: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))
        .expect("garage log");
    Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", key_id)
        .env("GARAGE_DEFAULT_SECRET_KEY", secret)
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start garage")
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once the S3 port answers an HTTP request (any status).
pub(crate) fn s3_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"HTTP/"))
}

/// Runs `garage -c CONFIG ARGS…`; stdout, or stdout and stderr as the error.
pub(crate) fn garage_cli(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
