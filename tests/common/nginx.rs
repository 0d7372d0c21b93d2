//! nginx on loopback in front of test nodes, with the routing rules `deploy/nginx` ships
//! (`routes.conf` included as it is), as an unprivileged child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "nginx is required by the load-balancer tests: install it (scripts/test does, with \
         `apt-get install nginx-light` on Debian/Ubuntu)"
    );
}

impl Nginx {
    /// Starts nginx on a free loopback port in front of `upstreams` (`http://127.0.0.1:PORT`).
    pub fn start(upstreams: &[String]) -> Nginx {
        Nginx::start_on(super::process::free_port(), upstreams)
    }

    /// As `start`, on `port`.
    pub fn start_on(port: u16, upstreams: &[String]) -> Nginx {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
        let dir = tempfile::tempdir().expect("nginx prefix");
        let servers: String = upstreams
            .iter()
            .map(|u| {
                let addr = u.trim_start_matches("http://");
                format!("server {addr} max_fails=1 fail_timeout=2s;\n        ")
            })
            .collect();
        let conf = std::fs::read_to_string(deploy.join("nginx.test.conf.template"))
            .expect("the nginx template")
            .replace("@PREFIX@", &dir.path().display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@UPSTREAMS@", servers.trim_end())
            .replace(
                "@ROUTES@",
                &deploy.join("routes.conf").display().to_string(),
            );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx listens: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            base,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
