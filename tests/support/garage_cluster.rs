//! A real distributed S3 store for the tests: a Garage cluster of several nodes on
//! 127.0.0.1 (random free ports, temporary directories), replication factor 3, one
//! zone, a layout assigned and applied through Garage's own CLI, and a bucket with a key
//! that may read and write it. Every node answers S3; a node can be killed and started
//! again on the same ports and data, to show that a mirror survives a node going away
//! (issue #13: "the distributed case").
//!
//! Skips like [`super::garage::Garage::start`]: a visible `SKIP` line when `garage` is not
//! installed, a failure under CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::garage::{
    GARAGE_VERSION, REGION, available, free_port, garage_cli, hex, s3_answers, seed,
};
use super::wait_until;

/// How long a node, the cluster's layout or the bucket may take to appear.
const DEADLINE: Duration = Duration::from_secs(60);

/// One node of a [`Cluster`].
pub struct Node {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    s3_port: u16,
    rpc_port: u16,
}

impl Node {
    /// The node's S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn answers(&self) -> bool {
        s3_answers(self.s3_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }
}

/// A running Garage cluster.
pub struct Cluster {
    nodes: Vec<Node>,
    _dir: TempDir,
    /// The bucket every node serves.
    pub bucket: String,
    /// A key that may read and write it.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

impl Cluster {
    /// Starts `n` nodes (n ≥ 3 for replication factor 3) and makes them one cluster with
    /// a bucket and a key; or prints `SKIP` and returns `None` when Garage is missing.
    pub fn start(test: &str, n: usize) -> Option<Cluster> {
        if !available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "garage {GARAGE_VERSION} is not on PATH under CI: .ci/run must install it"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: garage {GARAGE_VERSION} is not on PATH (cargo install garage --version {GARAGE_VERSION} --locked)"
            );
            return None;
        }
        let dir = tempfile::Builder::new().prefix("garage-cluster-").tempdir().expect("temp dir");
        let s = seed();
        let rpc_secret = hex(64, s);
        let token = hex(32, s.rotate_left(7));
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                let (rpc, s3, admin) = (free_port(), free_port(), free_port());
                let config = node_dir.join("garage.toml");
                let text = format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{rpc_secret}\"\n\n\
                     [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{token}\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                );
                std::fs::write(&config, text).expect("write garage.toml");
                Node { child: None, dir: node_dir, config, s3_port: s3, rpc_port: rpc }
            })
            .collect();
        for node in &mut nodes {
            node.child = Some(spawn(&node.config, &node.dir));
        }
        let mut cluster = Cluster {
            nodes,
            _dir: dir,
            bucket: format!("mirror-{}", hex(8, s.rotate_left(3))),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..n {
            cluster.wait_answering(i);
        }
        cluster.form();
        Some(cluster)
    }

    /// Connects every node to the first, assigns each a role in one zone and applies
    /// the layout; then makes the bucket and the key.
    fn form(&mut self) {
        let ids: Vec<String> = (0..self.nodes.len())
            .map(|i| self.cli(i, &["node", "id", "-q"]).expect("garage node id").trim().to_owned())
            .collect();
        for id in &ids[1..] {
            self.cli(0, &["node", "connect", id]).expect("garage node connect");
        }
        for id in &ids {
            let short = id.split('@').next().unwrap_or(id);
            self.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short])
                .expect("garage layout assign");
        }
        self.cli(0, &["layout", "apply", "--version", "1"]).expect("garage layout apply");
        let made =
            wait_until(DEADLINE, || self.cli(0, &["bucket", "create", &self.bucket]).is_ok());
        assert!(made, "the cluster never took a bucket:\n{}", self.logs());
        let out = self.cli(0, &["key", "create", "mirror"]).expect("garage key create");
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
        };
        (self.key_id, self.secret) = (field("Key ID:"), field("Secret key:"));
        let (bucket, key) = (self.bucket.clone(), self.key_id.clone());
        self.cli(0, &["bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key])
            .expect("garage bucket allow");
    }

    fn wait_answering(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let ready = wait_until(DEADLINE, || node.answers() || !node.running());
        assert!(ready && node.running(), "garage node {i} did not start:\n{}", node.log());
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Kills node `i` (its data stays).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its ports and data; waits until it answers S3.
    pub fn start_again(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.child = Some(spawn(&node.config, &node.dir));
        self.wait_answering(i);
    }

    /// `garage -c NODE-i-CONFIG ARGS…` (the CLI talks to that node over RPC).
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        garage_cli(&self.nodes[i].config, args)
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i} (rpc {}) ---\n{}", n.rpc_port, n.log()))
            .collect()
    }

    /// The variables that make `G:` an rclone remote through node `i`.
    pub fn rclone_env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RCLONE_CONFIG", "/dev/null".to_owned()),
            ("RCLONE_CONFIG_G_TYPE", "s3".to_owned()),
            ("RCLONE_CONFIG_G_PROVIDER", "Other".to_owned()),
            ("RCLONE_CONFIG_G_ENDPOINT", self.nodes[i].endpoint()),
            ("RCLONE_CONFIG_G_REGION", REGION.to_owned()),
            ("RCLONE_CONFIG_G_FORCE_PATH_STYLE", "true".to_owned()),
            ("RCLONE_CONFIG_G_ACCESS_KEY_ID", self.key_id.clone()),
            ("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// `rclone ARGS…` through node `i`.
    pub fn rclone(&self, i: usize, args: &[&std::ffi::OsStr]) -> std::process::Output {
        Command::new("rclone").args(args).envs(self.rclone_env(i)).output().expect("run rclone")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}

fn spawn(config: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))
        .expect("garage log");
    Command::new("garage")
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start garage")
}
