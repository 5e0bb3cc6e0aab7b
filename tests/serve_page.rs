//! The page of `udit serve` in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), driven over WebDriver: pick a class, generate, wait for the
//! images, check they are displayed, save a screenshot. The bundled model, so the screenshot
//! is the README's (`assets/serve.png` is a copy of `$CARGO_TARGET_TMPDIR/serve-page.png`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port; killed when dropped.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver(child, port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("http://127.0.0.1:{port}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn the_page_generates_and_shows_images_in_headless_chromium() {
    let started = Instant::now();
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "this test needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`; .ci/run does)"
    );
    let server = Server::start(&["--preview-every".into(), "2".into()]);
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rect = runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,900",
            "--hide-scrollbars",
        ];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        caps.insert("goog:chromeOptions".into(), json!({"binary": CHROMIUM, "args": args}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.1))
            .await
            .expect("a Chromium session");

        client.goto(&server.base).await.unwrap();
        // The form fills itself from /api/model: the class names of the bundled model.
        let sneaker =
            client.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#class option[value='7']"));
        assert_eq!(sneaker.await.unwrap().text().await.unwrap(), "7 · Sneaker");
        client.find(Locator::Css("#new-seed")).await.unwrap().click().await.unwrap();
        let slide_cfg = "const c = document.getElementById('cfg'); c.value = 4; c.dispatchEvent(new Event('input'));";
        client.execute(slide_cfg, vec![]).await.unwrap();
        assert_eq!(client.find(Locator::Css("#cfg-value")).await.unwrap().text().await.unwrap(), "4.0");
        for (class, name) in [("7", "Sneaker"), ("8", "Bag")] {
            client.find(Locator::Css("#class")).await.unwrap().select_by_value(class).await.unwrap();
            for (field, value) in [("#seed", "1"), ("#steps", "20")] {
                let input = client.find(Locator::Css(field)).await.unwrap();
                input.clear().await.unwrap();
                input.send_keys(value).await.unwrap();
            }
            client.find(Locator::Css("#generate")).await.unwrap().click().await.unwrap();
            // The bundled model is an interpolant: the page's default sampler is Heun's.
            let done = format!("{name} · guidance 4 · heun2, 20 steps · seed 1");

            // Four images displayed: loaded, decoded, 32 pixels wide, laid out on screen.
            let shown = "return [...document.querySelectorAll('#images img.final')]
                .filter(i => i.complete && i.naturalWidth === 32 && i.getBoundingClientRect().width > 0).length";
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let n = client.execute(shown, vec![]).await.unwrap();
                let status = client.find(Locator::Css("#status")).await.unwrap().text().await.unwrap();
                // The previous job's images and status stay shown until this one ends: wait for
                // this job's status.
                if n == json!(4) && status.starts_with("done in ") && status.ends_with(&done) {
                    break;
                }
                let error = client.find(Locator::Css("#error")).await.unwrap().text().await.unwrap();
                assert!(Instant::now() < deadline, "images not shown after 60 s: {n} ({status}; {error})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let caption = client.execute("return document.querySelector('#images figcaption').textContent", vec![]);
            assert_eq!(caption.await.unwrap(), json!(format!("{name} PNG")));
        }
        let cards = client.find_all(Locator::Css("#cards .card")).await.unwrap();
        assert_eq!(cards.len(), 2, "the gallery holds both results");
        assert!(cards[0].text().await.unwrap().starts_with("Bag"), "newest first");
        let rect = "const r = document.querySelector('#images img.final').getBoundingClientRect();
            return [r.left, r.top, r.width, r.height].map(Math.round)";
        let rect: Vec<u32> = serde_json::from_value(client.execute(rect, vec![]).await.unwrap()).unwrap();
        let png = client.screenshot().await.unwrap();
        std::fs::write(&screenshot, &png).unwrap();
        client.close().await.unwrap();
        rect
    });
    // The first image is on the screenshot: not a flat area.
    let shot = image::open(&screenshot).unwrap().to_luma8();
    assert!(shot.width() == 1100 && shot.height() >= 600, "{}x{}", shot.width(), shot.height());
    let [x, y, w, h] = rect[..] else { panic!("{rect:?}") };
    let values: Vec<u8> =
        (y..y + h).flat_map(|y| (x..x + w).map(move |x| (x, y))).map(|(x, y)| shot[(x, y)][0]).collect();
    let (lo, hi) = (values.iter().min().unwrap(), values.iter().max().unwrap());
    assert!(hi - lo > 100, "the first image looks flat on the screenshot: {lo}..{hi}");
    drop(driver);
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}
