//! A real browser for the console's tests: Debian's chromium, headless,
//! driven over WebDriver by chromedriver on a loopback port.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::{PATIENCE, standin::free_port};

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session. Panics naming
    /// the missing package when either is not installed (`.ci/run` installs
    /// `chromium` and `chromium-driver`).
    pub async fn start() -> Self {
        let port = free_port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) is not installed");
        let (tx, rx) = mpsc::channel();
        let stdout = driver.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(PATIENCE)
            .expect("chromedriver did not say it started");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,860",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                ],
            }
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session (Debian package chromium)");
        Self { client, driver }
    }

    /// Waits (on the page, bounded) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE * 2)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page in time: {e}"))
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Saves what the browser shows as `<dir>/<name>.png`: `target/screenshots`,
    /// or the README's `docs/screenshots` with `ODP_UPDATE_SCREENSHOTS=1` (so a
    /// test run leaves the checkout as it found it).
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = if std::env::var("ODP_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            root.join("docs/screenshots")
        } else {
            root.join("target/screenshots")
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
