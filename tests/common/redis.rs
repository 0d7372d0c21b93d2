//! A real `redis-server` per test, on a free loopback port, that a test can kill and restart.
#![allow(dead_code)]

use super::process::free_port;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    /// The running server; `None` while killed.
    child: Mutex<Option<Child>>,
}

/// A throwaway directory for a server's files: on tmpfs when there is one, where fsync on every
/// write is cheap (it is slow on a shared disk).
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = scratch_dir();
        let port = free_port();
        let server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
            child: Mutex::new(None),
        };
        server.spawn();
        server
    }

    fn spawn(&self) {
        let child = Command::new("redis-server")
            // AOF with fsync on every write: a killed and restarted server keeps what it acknowledged,
            // as the contract requires of a production Redis.
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not be started ({e}): install it, e.g. `apt-get install redis-server`")
            });
        *self.child.lock().expect("lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf)
                        && buf[..n].starts_with(b"+PONG")
                    {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server abruptly (an outage).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port; it reloads its append-only file.
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster: three masters with one replica each, every `redis-server` on free
/// loopback ports (its cluster bus too), built with `redis-cli --cluster create`.
pub struct RedisCluster {
    /// `redis://127.0.0.1:{port}` of each server, masters first as created.
    pub urls: Vec<String>,
    pub ports: Vec<u16>,
    /// Each server's cluster-bus port.
    buses: Vec<u16>,
    dir: tempfile::TempDir,
    children: Mutex<Vec<Option<Child>>>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = scratch_dir();
        // Six server ports and six cluster-bus ports, each taken once.
        let mut picked: Vec<u16> = Vec::new();
        while picked.len() < 12 {
            let p = free_port();
            if !picked.contains(&p) {
                picked.push(p);
            }
        }
        let (ports, buses) = (picked[..6].to_vec(), picked[6..].to_vec());
        let cluster = RedisCluster {
            buses,
            urls: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            ports: ports.clone(),
            dir,
            children: Mutex::new((0..6).map(|_| None).collect()),
        };
        for i in 0..6 {
            cluster.spawn(i);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok(&ports);
        cluster
    }

    fn spawn(&self, i: usize) {
        let port = self.ports[i];
        let node_dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--cluster-port", &self.buses[i].to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not be started ({e}): install it, e.g. `apt-get install redis-server`")
            });
        self.children.lock().expect("lock")[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(port, &["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every live server of `ports` reports `cluster_state:ok` and every master
    /// has its replica in sync.
    pub fn wait_until_ok(&self, ports: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = ports.iter().all(|p| {
                cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            }) && self.masters().len() == 3
                && self.masters().iter().all(|p| {
                    cli(*p, &["INFO", "replication"]).is_some_and(|i| {
                        i.contains("connected_slaves:1") && i.contains("state=online")
                    })
                });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seeds as `redis.url` takes them.
    pub fn url(&self) -> String {
        self.urls.join(",")
    }

    /// Ports of the live servers that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| {
                cli(*p, &["ROLE"]).is_some_and(|r| r.lines().next() == Some("master"))
                    && self.alive(*p)
            })
            .collect()
    }

    fn alive(&self, port: u16) -> bool {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("our port");
        self.children.lock().expect("lock")[i].is_some()
    }

    /// Kills the server on `port` abruptly.
    pub fn kill(&self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("our port");
        if let Some(mut child) = self.children.lock().expect("lock")[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server on `port` again: it rejoins the cluster (as a replica when its
    /// slots were taken over) and waits until the cluster is whole.
    pub fn restart(&self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("our port");
        self.spawn(i);
        self.wait_until_ok(&self.ports);
    }

    /// Moves hash slot `slot` with its keys from the master on `from` to the master on `to`, the
    /// way a resharding does: the target imports, the source migrates its keys in batches with
    /// `MIGRATE`, then every master learns the slot's new owner (and the source drops the
    /// slot's shard-channel subscribers).
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        let from_id = cli(from, &["CLUSTER", "MYID"]).expect("source id");
        let to_id = cli(to, &["CLUSTER", "MYID"]).expect("target id");
        let ok = |port: u16, args: &[&str]| {
            let out = cli(port, args).unwrap_or_default();
            assert_eq!(out, "OK", "{args:?} on {port}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).expect("keys");
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for other in self.masters() {
            if other != from && other != to {
                ok(other, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
    }

    /// Waits until a replica took over every slot of a killed master.
    pub fn wait_for_failover(&self) {
        let live: Vec<u16> = self
            .ports
            .iter()
            .copied()
            .filter(|p| self.alive(*p))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.masters().len() == 3
            && live.iter().all(|p| {
                cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            }))
        {
            assert!(Instant::now() < deadline, "no replica took over");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.lock().expect("lock").iter_mut() {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `redis-cli -p port args…`'s output, `None` when the server does not answer.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}
