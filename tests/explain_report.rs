//! The HTML explanation report opened in a real browser: headless Chromium (Debian `chromium`,
//! installed by scripts/test.sh) renders it to a PNG, which must not be blank and must show the
//! heat map's colours: the strong red of the copied code and the blue of units that work
//! against the answer. The page must also need nothing from outside itself.

mod common;

use std::process::Command;

use finllm::explain::{explain, ExplainOptions, Granularity, Method};
use finllm::Prompt;

fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(c).exists() {
            return c;
        }
    }
    panic!("chromium is missing: apt-get install chromium (scripts/test.sh does)");
}

#[test]
fn the_report_renders_with_its_heat_map_in_headless_chromium() {
    let model = common::smollm2();
    let a = explain(
        &model,
        &Prompt::Text("The code is 4711. Repeat the code:".into()),
        &ExplainOptions {
            method: Method::Occlusion,
            granularity: Granularity::Word,
            answer: Some(" 4711".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        a.units.iter().any(|u| u.score < 0.0),
        "the test wants units of both signs"
    );
    let html = a.to_html();
    // Self-contained: no script and no address to fetch.
    for needle in ["<script", "http://", "https://", "src=", "url("] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    let dir = std::env::temp_dir().join(format!("finllm-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    let shot = dir.join("report.png");
    std::fs::write(&page, &html).unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,700",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let (mut white, mut red, mut blue) = (0usize, 0usize, 0usize);
    for &[r, g, b] in &pixels {
        let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
        if r > 245 && g > 245 && b > 245 {
            white += 1;
        }
        // The strongest unit: rgba(220,38,38,0.85) over white is about (225, 71, 71).
        if r >= 180 && g <= 140 && b <= 140 && r - g >= 60 {
            red += 1;
        }
        // Units against the answer: faint blue over white.
        if b >= r + 6 && b >= g + 3 {
            blue += 1;
        }
    }
    let n = pixels.len();
    eprintln!(
        "{}x{}: {n} pixels, {white} white, {red} red, {blue} blue",
        info.width, info.height
    );
    assert!(white < n * 99 / 100, "the page is blank");
    assert!(red >= 300, "the heat map's red is missing ({red} pixels)");
    assert!(blue >= 100, "the heat map's blue is missing ({blue} pixels)");
    let _ = std::fs::remove_dir_all(&dir);
}
