//! A real headless Chromium driven over WebDriver's JSON API (chromedriver on a
//! loopback port, plain HTTP through ureq): navigate, fill, click, read, screenshot.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Laptop and tablet widths (CSS pixels) the screenshots are taken at.
pub const WIDTHS: [(&str, u32, u32); 2] = [("laptop", 1366, 900), ("tablet", 820, 1180)];

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a profile in `profile`.
    pub fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver did not start ({e}): install Debian's `chromium` and \
                     `chromium-driver` (scripts/test does)"
                )
            });
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromium is installed (Debian's `chromium`; scripts/test installs it)");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let v: Value = match res {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(_, r)) => {
                let v: Value = r.into_json().unwrap_or_default();
                panic!("WebDriver {method} {path}: {v}");
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    pub fn size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub fn count(&self, css: &str) -> usize {
        let v = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array().map_or(0, Vec::len)
    }

    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks a link or a form's button and waits (up to 10 s) for the next page: the
    /// old page's root element gone stale.
    pub fn click(&self, css: &str) {
        let root = self.find("html");
        self.tap(css);
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("{}/session/{}/element/{root}/name", self.base, self.session);
        while ureq::get(&url).call().is_ok() {
            assert!(
                Instant::now() < deadline,
                "no new page after clicking {css}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks an element that does not leave the page.
    fn tap(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Chooses the option of the `<select>` at `css` whose value is `value`.
    pub fn choose(&self, css: &str, value: &str) {
        self.tap(&format!("{css} option[value=\"{value}\"]"));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The visible text of the whole page.
    pub fn page_text(&self) -> String {
        self.text("body")
    }

    /// The names of the page's form fields that no label names (none should be).
    pub fn unlabelled_fields(&self) -> Vec<String> {
        let script = "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]\
                      .filter(e => e.labels.length === 0).map(e => e.name || e.id);";
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        );
        serde_json::from_value(v).unwrap()
    }

    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Checks every form field has a label, then saves a PNG of the page at each of
    /// [`WIDTHS`] (tall enough for the whole page, up to 4000 px) as
    /// `dir/NAME-WIDTH.png`, copied to `target/console-screenshots/`.
    pub fn screenshots(&self, dir: &Path, name: &str) {
        let unlabelled = self.unlabelled_fields();
        assert!(
            unlabelled.is_empty(),
            "{name}: fields without a label: {unlabelled:?}"
        );
        let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&keep).unwrap();
        for (width_name, w, h) in WIDTHS {
            self.size(w, h);
            let full = self
                .call(
                    "POST",
                    "/execute/sync",
                    Some(json!({"script": "return document.documentElement.scrollHeight", "args": []})),
                )
                .as_u64()
                .unwrap_or(u64::from(h));
            self.size(w, (full as u32 + 140).clamp(h, 4000));
            let b64 = self.call("GET", "/screenshot", None);
            let png = base64_decode(b64.as_str().unwrap());
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            let file = format!("{name}-{width_name}.png");
            std::fs::write(dir.join(&file), &png).unwrap();
            std::fs::write(keep.join(&file), &png).unwrap();
        }
        self.size(WIDTHS[0].1, WIDTHS[0].2);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
