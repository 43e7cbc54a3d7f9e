//! `pm-replay report` in a real browser: the page of a corpus file is opened
//! in headless Chromium, driven over the DevTools protocol (a real mouse
//! click on an eversion), and must show that eversion's input events and
//! actions without making any network request.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). Without
//! it this test says it is skipped and why; with `CI` set it fails instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The Chromium binary, if there is one.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Kills the browser when the test ends, however it ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts headless Chromium with a DevTools port; returns it and the port.
fn start_browser(binary: &Path, profile: &Path) -> (Browser, u16) {
    let mut child = Command::new(binary)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,900",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
            let port = rest.split('/').next().unwrap().parse().unwrap();
            return (browser, port);
        }
    }
    panic!("chromium exited without opening its DevTools port");
}

/// The DevTools WebSocket address of the browser's page.
fn page_socket(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The DevTools server keeps the connection open: read by Content-Length.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let targets: Vec<Value> = serde_json::from_slice(&body).unwrap();
    targets
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target")
        .to_string()
}

/// A DevTools session on one page: commands and the events seen so far.
struct Session {
    socket: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Session {
    fn connect(url: &str) -> Self {
        let (socket, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Self {
            socket,
            next_id: 1,
            events: Vec::new(),
        }
    }

    fn receive(&mut self) -> Value {
        loop {
            match self.socket.read().expect("a DevTools message") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(_) => panic!("DevTools closed the connection"),
                _ => continue,
            }
        }
    }

    /// Sends a command and returns its result; events met meanwhile are kept.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap();
        loop {
            let message = self.receive();
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
            self.events.push(message);
        }
    }

    /// Waits for an event with this method.
    fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        loop {
            let message = self.receive();
            let found = message["method"] == method;
            self.events.push(message);
            if found {
                return;
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }
}

/// The data the page embeds.
fn embedded_data(html: &str) -> Value {
    let start = html
        .find(r#"<script id="report-data" type="application/json">"#)
        .unwrap();
    let rest = &html[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(&json.replace("<\\/", "</")).unwrap()
}

#[test]
fn the_report_shows_a_clicked_eversions_batch_and_actions_without_network() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required in CI (.ci/run installs Debian's chromium)"
        );
        eprintln!(
            "SKIPPED: no Chromium (install Debian's `chromium` package or set CHROMIUM=path)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/replays/lifecycle.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_pm-replay"))
        .args(["report", corpus, "--path", "pcls[clid=1]", "-o"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    let data = embedded_data(&html);

    // The eversion to click: the first whose batch has events and actions.
    let chosen = data["eversions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            !e["inputs"].as_array().unwrap().is_empty()
                && !e["actions"].as_array().unwrap().is_empty()
        })
        .expect("an eversion with inputs and actions")
        .clone();
    let eversion = chosen["eversion"].as_i64().unwrap();
    // Its actions are what `pm-replay actions` says.
    let listed = Command::new(env!("CARGO_BIN_EXE_pm-replay"))
        .args(["actions", corpus, "--eversion", &eversion.to_string()])
        .output()
        .unwrap();
    let listed: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let action_types: Vec<&str> = listed.iter().map(|a| a["type"].as_str().unwrap()).collect();
    let shown_types: Vec<&str> = chosen["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(shown_types, action_types);

    let profile = dir.path().join("profile");
    let (_browser, port) = start_browser(&binary, &profile);
    let mut session = Session::connect(&page_socket(port));
    session.call("Network.enable", json!({}));
    session.call("Page.enable", json!({}));
    let url = format!("file://{}", page.display());
    let started = Instant::now();
    session.call("Page.navigate", json!({"url": url}));
    session.wait_for("Page.loadEventFired");
    let loaded_in = started.elapsed();

    // A real mouse click on the eversion's number in the timeline header.
    let point = session.eval(&format!(
        "(() => {{ const c = document.querySelector('.ev[data-eversion=\"{eversion}\"]'); \
         c.scrollIntoView(); const r = c.getBoundingClientRect(); \
         return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()"
    ));
    for kind in ["mousePressed", "mouseReleased"] {
        session.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": point["x"], "y": point["y"], "button": "left", "clickCount": 1}),
        );
    }
    let details = session.eval("document.getElementById('details').innerText");
    let details = details.as_str().unwrap();
    assert!(
        details.contains(&format!("Eversion {eversion}")),
        "{details}"
    );
    for input in chosen["inputs"].as_array().unwrap() {
        let line = format!(
            "revision {} {}",
            input["revision"],
            input["type"].as_str().unwrap()
        );
        assert!(details.contains(&line), "{line:?} not in {details}");
    }
    for kind in &action_types {
        assert!(details.contains(kind), "{kind} not in {details}");
    }
    // (Section titles are upper-cased by CSS, which innerText follows.)
    assert!(
        details
            .to_lowercase()
            .contains("changes from the previous eversion"),
        "{details}"
    );

    // No request but the page itself.
    let requests: Vec<String> = session
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| e["params"]["request"]["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(requests, [url], "the page made requests");
    let resources = session.eval("performance.getEntriesByType('resource').length");
    assert_eq!(resources, json!(0));
    eprintln!("report page loaded in {loaded_in:?}");
}
