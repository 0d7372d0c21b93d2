//! The real binary (SPEC 2): `--version`/`--help`, `serve` configured by file and environment, its
//! start-up log line, refusal of invalid configuration naming the key, `token` minting tokens the
//! running server accepts, and SIGTERM ending the process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The port picker `redis_server` uses.
#[path = "common/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "common/redis.rs"]
mod redis_server;

const BIN: &str = env!("CARGO_BIN_EXE_dialog-events");
const RESOURCE: &str = "urn:altinn:resource:cli-service";
const ORG: &str = "991825827";
const PERSON: &str = "08895699684";
const SO: &str = "digdir:dialogporten.serviceprovider";
/// Bound on every wait for a child process.
const DEADLINE: Duration = Duration::from_secs(20);

/// A command for the binary with a clean configuration environment, run in `dir` with its keys
/// in `dir` and a free loopback port.
fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("DIALOG_EVENTS") || name == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(dir)
        .env("DIALOG_EVENTS__DATA_DIR", dir)
        .env("DIALOG_EVENTS__HTTP__BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a finished process printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, killing it and failing if it outlives `DEADLINE`.
fn run(mut cmd: Command) -> Finished {
    let mut child = Guard(cmd.spawn().expect("binary starts"));
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let status = child.wait_until(Instant::now() + DEADLINE);
    let text = |buf: Arc<Mutex<String>>, reader: std::thread::JoinHandle<()>| {
        let _ = reader.join();
        buf.lock().map(|s| s.clone()).unwrap_or_default()
    };
    Finished {
        status,
        stdout: text(stdout.0, stdout.1),
        stderr: text(stderr.0, stderr.1),
    }
}

/// Reads a pipe to its end on a thread.
fn drain(
    mut pipe: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        if let Ok(mut b) = out.lock() {
            b.push_str(&text);
        }
    });
    (buf, handle)
}

/// A child process that is killed and reaped when dropped.
struct Guard(Child);

impl Guard {
    /// Waits for the exit, failing (and killing the child on drop) after `until`.
    fn wait_until(&mut self, until: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "process {} did not exit in time",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `serve` with its stdout lines.
struct Server {
    child: Guard,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every stdout line read so far.
    seen: Vec<String>,
    port: u16,
}

impl Server {
    /// Starts `serve [--config FILE]` in `dir` with extra `env` and waits for the `listening on` line.
    fn start(dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Server {
        let mut cmd = command(dir);
        cmd.arg("serve");
        if let Some(file) = config {
            cmd.arg("--config").arg(file);
        }
        cmd.envs(env.iter().copied());
        let mut child = Guard(cmd.spawn().expect("serve starts"));
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (stderr, _) = drain(child.0.stderr.take().expect("stderr"));
        let mut server = Server {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            port: 0,
        };
        let line = server.line_containing("listening on http://");
        server.port = port_of(&line);
        server
    }

    /// The first stdout line (from now on) containing `needle`, within `DEADLINE`.
    fn line_containing(&mut self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no line containing {needle:?} in time; stdout: {:?}; stderr: {}",
                    self.seen,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "stdout closed before a line containing {needle:?}; stdout: {:?}; stderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The port of `listening on http://127.0.0.1:PORT` in a log line.
fn port_of(line: &str) -> u16 {
    let prefix = "listening on http://127.0.0.1:";
    let start = line
        .find(prefix)
        .unwrap_or_else(|| panic!("{line:?} names no loopback address"))
        + prefix.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let port: u16 = digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"));
    assert_ne!(port, 0, "the real port, not the configured 0: {line:?}");
    port
}

/// One HTTP/1.1 request over a blocking socket; returns status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the node");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let payload = body.map(Value::to_string).unwrap_or_default();
    if body.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!(
        "Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    ));
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write_config(dir: &Path, name: &str, toml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Mints a token with `dialog-events token ARGS`, asserting success and one JWT on stdout.
fn mint(dir: &Path, args: &[&str]) -> String {
    let mut cmd = command(dir);
    cmd.arg("token").args(args);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "token {args:?} failed: {}",
        out.stderr
    );
    let token = out.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token:?}");
    token
}

#[test]
fn version_and_help_describe_the_binary_and_its_subcommands() {
    let dir = tempdir();
    let mut cmd = command(dir.path());
    cmd.arg("--version");
    let out = run(cmd);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {:?}",
        out.stdout
    );
    assert!(out.stdout.contains("dialog-events"), "{:?}", out.stdout);

    let mut cmd = command(dir.path());
    cmd.arg("--help");
    let out = run(cmd);
    assert!(out.status.success(), "{}", out.stderr);
    for sub in ["serve", "token"] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help lists {sub}: {}",
            out.stdout
        );
    }
}

#[test]
fn serve_logs_the_real_port_it_listens_on_and_answers_health_checks() {
    let dir = tempdir();
    let server = Server::start(dir.path(), None, &[]);
    // The log goes to a pipe here: plain text, no terminal colour codes.
    assert!(
        server.seen.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI escapes when stdout is not a terminal: {:?}",
        server.seen
    );
    let (status, body) = http(server.port, "GET", "/health/live", None, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(server.port, "GET", "/health/ready", None, None);
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).expect("JSON readiness");
    assert_eq!(ready["status"], "ready");
    assert!(
        dir.path().join("keys.json").exists(),
        "the generated keys are kept in data_dir"
    );
}

#[test]
fn json_log_format_makes_every_line_including_the_listening_line_a_json_object() {
    let dir = tempdir();
    let server = Server::start(dir.path(), None, &[("DIALOG_EVENTS__LOG__FORMAT", "json")]);
    for line in &server.seen {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        assert!(parsed.is_object(), "{line:?}");
    }
    let last = server.seen.last().expect("the listening line");
    let parsed: Value = serde_json::from_str(last).expect("JSON");
    let message = parsed["message"].as_str().unwrap_or_else(|| {
        panic!("the JSON line has a message field: {last}");
    });
    assert!(message.contains("listening on http://"), "{message}");
    assert_eq!(port_of(message), server.port);
    let (status, _) = http(server.port, "GET", "/health/live", None, None);
    assert_eq!(status, 200);
}

#[test]
fn environment_overrides_the_config_file_which_overrides_the_defaults() {
    let dir = tempdir();
    let file = write_config(dir.path(), "node.toml", "[node]\nid = \"from-file\"\n");
    let node_of = |server: &Server| {
        let (status, body) = http(server.port, "GET", "/health/ready", None, None);
        assert_eq!(status, 200, "{body}");
        let ready: Value = serde_json::from_str(&body).expect("JSON");
        ready["node"].clone()
    };

    let server = Server::start(dir.path(), None, &[]);
    let default_id = node_of(&server);
    assert!(
        default_id
            .as_str()
            .is_some_and(|id| !id.is_empty() && id != "from-file"),
        "the default node.id is a random name: {default_id}"
    );
    drop(server);

    let server = Server::start(dir.path(), Some(&file), &[]);
    assert_eq!(node_of(&server), "from-file", "the file sets node.id");
    drop(server);

    let server = Server::start(
        dir.path(),
        Some(&file),
        &[("DIALOG_EVENTS__NODE__ID", "from-env")],
    );
    assert_eq!(node_of(&server), "from-env", "the environment wins");
}

#[test]
fn invalid_configuration_stops_start_up_with_a_message_naming_the_key() {
    let dir = tempdir();
    let bad_duration = write_config(
        dir.path(),
        "bad.toml",
        "[dialogs]\nidle_timeout = \"soon\"\n",
    );
    let unknown_key = write_config(dir.path(), "typo.toml", "[http]\nbindd = \"127.0.0.1:0\"\n");
    let missing = dir.path().join("does-not-exist.toml");
    let path = |p: &Path| p.to_str().expect("utf8 path").to_owned();
    let (bad_duration, unknown_key, missing) =
        (path(&bad_duration), path(&unknown_key), path(&missing));
    let serve = |what: &str, args: &[&str], env: &[(&str, &str)], key: &str| {
        let out = assert_fails(dir.path(), what, &[&["serve"], args].concat(), env, key);
        assert!(
            !out.stdout.contains("listening on"),
            "{what}: never listened: {}",
            out.stdout
        );
    };
    serve(
        "unparsable bind address",
        &[],
        &[("DIALOG_EVENTS__HTTP__BIND", "nonsense")],
        "bind",
    );
    serve(
        "unparsable duration in the config file",
        &["--config", &bad_duration],
        &[],
        "idle_timeout",
    );
    serve("unknown key", &["--config", &unknown_key], &[], "bindd");
    serve(
        "missing config file",
        &["--config", &missing],
        &[],
        "does-not-exist.toml",
    );
    serve(
        "dev issuer on a public bind",
        &[],
        &[("DIALOG_EVENTS__HTTP__BIND", "0.0.0.0:0")],
        "auth.dev_issuer.allow_public",
    );
    serve(
        "unknown log format",
        &[],
        &[("DIALOG_EVENTS__LOG__FORMAT", "fancy")],
        "format",
    );
}

/// Runs the binary with `args` and extra `env`, asserting a non-zero exit whose stderr contains
/// `needle`.
fn assert_fails(
    dir: &Path,
    what: &str,
    args: &[&str],
    env: &[(&str, &str)],
    needle: &str,
) -> Finished {
    let mut cmd = command(dir);
    cmd.args(args).envs(env.iter().copied());
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{what}: must fail; stdout: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains(needle),
        "{what}: the message mentions {needle:?}: {}",
        out.stderr
    );
    out
}

#[test]
fn a_cli_token_is_accepted_by_a_running_server_sharing_the_data_dir() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "registry.toml",
        &format!(
            "[[resources]]\nid = \"{RESOURCE}\"\nowner = \"urn:altinn:organization:identifier-no:{ORG}\"\n"
        ),
    );
    let server = Server::start(dir.path(), Some(&config), &[]);
    let config_arg = config.to_str().expect("utf8 path");

    let owner = mint(
        dir.path(),
        &["--config", config_arg, "--scope", SO, "--org", ORG],
    );
    let (status, body) = http(
        server.port,
        "GET",
        "/api/v1/serviceowner/dialogs",
        Some(&owner),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let dialog = json!({
        "serviceResource": RESOURCE,
        "party": format!("urn:altinn:person:identifier-no:{PERSON}"),
        "status": "InProgress",
        "content": {"title": [{"value": "Søknad", "languageCode": "nb"}]}
    });
    let (status, body) = http(
        server.port,
        "POST",
        "/api/v1/serviceowner/dialogs",
        Some(&owner),
        Some(&dialog),
    );
    assert_eq!(status, 201, "{body}");

    let person = mint(
        dir.path(),
        &[
            "--scope",
            "digdir:dialogporten",
            "--pid",
            PERSON,
            "--ttl",
            "60",
        ],
    );
    let (status, body) = http(
        server.port,
        "GET",
        "/api/v1/enduser/dialogs",
        Some(&person),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        body.contains(RESOURCE),
        "the person sees the dialog: {list}"
    );

    // A token from another data dir (another dev-issuer key) is refused.
    let other = tempdir();
    let foreign = mint(other.path(), &["--scope", SO, "--org", ORG]);
    let (status, body) = http(
        server.port,
        "GET",
        "/api/v1/serviceowner/dialogs",
        Some(&foreign),
        None,
    );
    assert_eq!(status, 401, "{body}");
}

#[test]
fn token_refuses_bad_parties_and_a_disabled_dev_issuer() {
    let dir = tempdir();
    let token = |what: &str, args: &[&str], env: &[(&str, &str)], needle: &str| {
        let out = assert_fails(dir.path(), what, &[&["token"], args].concat(), env, needle);
        assert!(
            out.stdout.trim().is_empty(),
            "{what}: no token printed: {}",
            out.stdout
        );
    };
    token(
        "short pid",
        &["--scope", "digdir:dialogporten", "--pid", "123"],
        &[],
        "pid",
    );
    token("short org", &["--scope", SO, "--org", "12"], &[], "org");
    token(
        "dev issuer disabled",
        &["--scope", SO, "--org", ORG],
        &[("DIALOG_EVENTS__AUTH__DEV_ISSUER__ENABLED", "false")],
        "disabled",
    );
}

#[test]
fn sigterm_makes_serve_exit_promptly_and_cleanly() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), None, &[]);
    let (status, _) = http(server.port, "GET", "/health/live", None, None);
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = server
        .child
        .wait_until(Instant::now() + Duration::from_secs(10));
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}; stderr: {}",
        server.stderr()
    );
}

#[test]
fn in_redis_mode_a_cli_token_uses_the_cluster_keys_and_is_accepted_by_the_node() {
    let redis = redis_server::RedisServer::start();
    let env = [
        ("DIALOG_EVENTS__REDIS__URL", redis.url.as_str()),
        ("DIALOG_EVENTS__REDIS__PREFIX", "cli"),
    ];
    let node_dir = tempdir();
    let server = Server::start(node_dir.path(), None, &env);
    // Another data_dir: the token's key must come from Redis, not from any file.
    let cli_dir = tempdir();
    let mut cmd = command(cli_dir.path());
    cmd.args(["token", "--scope", SO, "--org", ORG]);
    cmd.envs(env);
    let out = run(cmd);
    assert!(out.status.success(), "token failed: {}", out.stderr);
    let token = out.stdout.trim().to_owned();
    let (status, body) = http(
        server.port,
        "GET",
        "/api/v1/serviceowner/dialogs",
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn backup_copies_a_running_and_a_stopped_store_and_a_node_starts_from_the_copy() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "registry.toml",
        &format!(
            "[[resources]]\nid = \"{RESOURCE}\"\nowner = \"urn:altinn:organization:identifier-no:{ORG}\"\n"
        ),
    );
    let config_arg = config.to_str().expect("utf8 path").to_owned();
    let server = Server::start(dir.path(), Some(&config), &[]);
    let owner = mint(
        dir.path(),
        &["--config", &config_arg, "--scope", SO, "--org", ORG],
    );
    let dialog = json!({
        "serviceResource": RESOURCE,
        "party": format!("urn:altinn:person:identifier-no:{PERSON}"),
        "status": "InProgress",
        "content": {"title": [{"value": "Søknad", "languageCode": "nb"}]}
    });
    let (status, id) = http(
        server.port,
        "POST",
        "/api/v1/serviceowner/dialogs",
        Some(&owner),
        Some(&dialog),
    );
    assert_eq!(status, 201, "{id}");
    let id: String = serde_json::from_str(&id).expect("id");

    // Hot: the running node takes the copy.
    let hot = dir.path().join("hot.redb");
    let mut cmd = command(dir.path());
    let url = format!("http://127.0.0.1:{}", server.port);
    cmd.args(["backup", "--config", &config_arg, "--url", &url, "--to"])
        .arg(&hot);
    let out = run(cmd);
    assert!(out.status.success(), "hot backup: {}", out.stderr);
    assert!(hot.metadata().expect("the copy").len() > 0);
    // Refuses to overwrite.
    let mut again = command(dir.path());
    again
        .args(["backup", "--config", &config_arg, "--url", &url, "--to"])
        .arg(&hot);
    assert!(
        !run(again).status.success(),
        "an existing file is not overwritten"
    );
    drop(server);

    // Cold: the stopped node's file is read directly.
    let cold = dir.path().join("cold.redb");
    let mut cmd = command(dir.path());
    cmd.args(["backup", "--config", &config_arg, "--to"])
        .arg(&cold);
    let out = run(cmd);
    assert!(out.status.success(), "cold backup: {}", out.stderr);

    // Restore: a new data_dir with the copy as its store (and the same keys) serves the dialog.
    for copy in [&hot, &cold] {
        let restored = tempdir();
        std::fs::copy(copy, restored.path().join("store.redb")).expect("restore");
        std::fs::copy(
            dir.path().join("keys.json"),
            restored.path().join("keys.json"),
        )
        .expect("keys");
        let server = Server::start(restored.path(), Some(&config), &[]);
        let (status, body) = http(
            server.port,
            "GET",
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            Some(&owner),
            None,
        );
        assert_eq!(status, 200, "{} restored: {body}", copy.display());
    }
}
