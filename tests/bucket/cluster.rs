//! The distributed store itself, before replicad meets it (issue #13): a three-node
//! Garage cluster with replication factor 3 keeps taking writes and serving reads through
//! the nodes that are up while one is down, and the node that comes back serves what was
//! written meanwhile. Driven by real rclone, so the harness is proven independently of
//! replicad's own client.

use std::ffi::OsStr;
use std::fs;

use crate::support::garage_cluster::Cluster;

fn names(c: &Cluster, node: usize, remote: &str) -> Vec<String> {
    let out = c.rclone(node, &[OsStr::new("lsf"), OsStr::new(remote)]);
    assert!(
        out.status.success(),
        "rclone lsf through node {node}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let mut names: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    names.sort();
    names
}

fn copy(c: &Cluster, node: usize, from: &std::path::Path, remote: &str) {
    let out = c.rclone(node, &[OsStr::new("copy"), from.as_os_str(), OsStr::new(remote)]);
    assert!(
        out.status.success(),
        "rclone copy through node {node}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
}

#[test]
fn a_three_node_cluster_keeps_serving_with_one_node_down() {
    let Some(mut c) = Cluster::start("a_three_node_cluster_keeps_serving_with_one_node_down", 3)
    else {
        return;
    };
    let remote = format!("G:{}/p", c.bucket);
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    fs::write(first.join("a"), b"written with every node up").unwrap();
    fs::write(second.join("b"), b"written with node 0 down").unwrap();

    copy(&c, 0, &first, &remote);
    assert_eq!(names(&c, 2, &remote), ["a"], "node 2 does not serve what node 0 took");
    c.stop(0);
    assert_eq!(names(&c, 1, &remote), ["a"], "the cluster lost an object with one node down");
    copy(&c, 2, &second, &remote);
    assert_eq!(names(&c, 1, &remote), ["a", "b"]);
    c.start_again(0);
    assert_eq!(names(&c, 0, &remote), ["a", "b"], "the node that came back misses a write");
}
