//! The status page as a browser shows it: headless Chromium loads `/` (over TCP; the page
//! has no external assets), its rendered DOM must show the numbers `/status` gives, and a
//! screenshot must be a real rendering (a PNG of the asked size, too large to be a blank
//! page). Skipped, visibly, without Chromium.

use std::process::Command;

use crate::support::{CONVERGE, Tree, wait_until};

use super::get_tcp;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

fn headless(browser: &str, extra: &[&str], url: &str) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn the_page_renders_the_numbers_in_chromium() {
    let Some(browser) = chromium() else {
        crate::support::skip("the_page_renders_the_numbers_in_chromium", "no chromium installed");
        return;
    };
    let t = Tree::new();
    for i in 0..7 {
        t.file(format!("f{i}"), "12345");
    }
    let svc = t.spawn(&["--status-addr", "127.0.0.1:0", "--interval", "1h"]);
    assert!(svc.wait_log(CONVERGE, "status endpoint listening"), "{}", svc.log());
    let log = svc.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("status endpoint listening addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap();
    assert!(
        wait_until(CONVERGE, || get_tcp(&addr, "/readyz").is_some_and(|a| a.code == 200)),
        "{}",
        svc.log()
    );
    let url = format!("http://{addr}/");

    let dom = headless(browser, &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The last pass: 7 files + the root scanned, 35 bytes copied, 8 changes.
    for (label, value) in [
        ("Last pass: entries", "7"),
        ("Last pass: bytes", "35"),
        ("Last pass: errors", "0"),
        ("Replication lag (s)", "0.000"),
        ("Queue depth", "0"),
    ] {
        let row = format!("<th>{label}</th><td>{value}</td>");
        assert!(dom.contains(&row), "{row} not rendered; DOM:\n{dom}");
    }
    assert!(dom.contains(">ready</b>"), "not shown as ready:\n{dom}");
    assert!(dom.contains(&t.src().display().to_string()), "SOURCE not shown:\n{dom}");

    let shot = t.base().join("page.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = headless(browser, &[&arg, "--window-size=800,600"], &url);
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!("no screenshot ({e}); chromium said:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (800, 600));
    // A blank page compresses to almost nothing; a page of text and table rules does not.
    assert!(png.len() > 8_000, "the screenshot looks blank ({} bytes)", png.len());
}
