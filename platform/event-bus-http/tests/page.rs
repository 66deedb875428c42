//! The status page (`/`) as a person sees it: headless Chromium (Debian's
//! `chromium` package, installed by `scripts/install-test-deps.sh`) renders
//! it, and the test reads both the rendered text and the screenshot's
//! pixels. A stalled consumer shows as a red NOT READY badge; once it
//! catches up, the page turns green.

use event_bus_testkit::wait;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
mod common;
use common::{get, StalledMailer};

/// The badge colours of the page's stylesheet: `.bad` background, `.ok` background.
const RED: [u8; 3] = [0xcc, 0x00, 0x00];
const GREEN: [u8; 3] = [0xd4, 0xf4, 0xd4];

/// Runs headless Chromium on `url` with `args` (bounded to 60 s); its stdout.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "no chromium found: run ./scripts/install-test-deps.sh (Debian's chromium package)"
            )
        });
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
            "--window-size=1000,700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed on {url}: {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts the screenshot's pixels of each colour (exact RGB).
fn count_colours(png_path: &Path, colours: &[[u8; 3]]) -> Vec<usize> {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(
        info.width >= 800 && info.height >= 600,
        "{}x{}",
        info.width,
        info.height
    );
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let mut counts = vec![0; colours.len()];
    for px in buf[..info.buffer_size()].chunks_exact(step) {
        for (i, c) in colours.iter().enumerate() {
            if px[..3] == c[..] {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// Renders `/` in Chromium: (visible text, red pixels, green pixels).
async fn look(addr: std::net::SocketAddr) -> (String, usize, usize) {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/");
        let dom = chromium(&url, &["--dump-dom"], &dir.path().join("profile-dom"));
        let shot = dir.path().join("page.png");
        chromium(
            &url,
            &[&format!("--screenshot={}", shot.display())],
            &dir.path().join("profile-shot"),
        );
        let counts = count_colours(&shot, &[RED, GREEN]);
        (dom, counts[0], counts[1])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_stalled_consumer_in_red_and_recovery_in_green() {
    let mailer = StalledMailer::start().await;
    let addr = mailer.addr;
    wait::until_async(Duration::from_secs(10), "the mailer to stall", || async {
        get(addr, "/readyz").await.0 == 503
    })
    .await;
    let (dom, red, green) = look(addr).await;
    assert!(dom.contains("NOT READY"), "{dom}");
    assert!(dom.contains("mailer STALL"), "{dom}");
    assert!(!dom.contains("<script"), "the page needs no JavaScript");
    // The NOT READY badge and the consumers' verdict: thousands of red pixels.
    assert!(red > 2_000, "red pixels: {red}");

    mailer.catch_up().await;
    wait::until_async(Duration::from_secs(10), "the mailer to recover", || async {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
    let (dom, red, green_after) = look(addr).await;
    assert!(dom.contains("READY") && !dom.contains("NOT READY"), "{dom}");
    assert_eq!(red, 0, "no red left once ready");
    assert!(
        green_after > green && green_after > 2_000,
        "green pixels: {green} then {green_after}"
    );
}
