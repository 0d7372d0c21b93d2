//! The real `dialog-events` binary as a child process, for tests that kill, restart or need it
//! on a fixed address.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_dialog-events");

/// A `dialog-events serve --config {dir}/node.toml` child, killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub base: String,
}

impl NodeProcess {
    /// Starts the node and waits for its `listening on` line.
    pub fn start(dir: &Path) -> NodeProcess {
        let mut child = spawn(dir);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on http://") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("the node's output");
                panic!(
                    "the node did not log its listening line; its stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let at = line.find("http://").expect("url") + "http://".len();
        let addr: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        NodeProcess {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGKILL: no drain, no flush, nothing.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dialog-events serve` on `{dir}/node.toml`, with no `DIALOG_EVENTS*` variable of the test's
/// environment, its output piped.
pub fn spawn(dir: &Path) -> Child {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DIALOG_EVENTS") {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// A loopback port that was free a moment ago, for a server a test starts itself (or a node that
/// must come back on the same port). It is picked below Linux's ephemeral range (32768 and up):
/// the kernel gives ports in that range to outgoing connections, so one picked there can be taken
/// by some client's connection before the server binds it. Each call in a test binary gets
/// another port, starting from an offset of the process id, so parallel tests do not collide.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}
