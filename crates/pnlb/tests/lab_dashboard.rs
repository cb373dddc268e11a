//! The web dashboard in headless Chromium (Debian's chromium) against a
//! running `pnlb run` in the lab: what the page shows, after its scripts
//! have polled the API a few times, matches what the API says.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

mod support;

use pnlb_lab::{Lab, LabSpec, VIP4};
use support::*;

/// The page as Chromium renders it after `budget_ms` of (virtual) time.
fn rendered_page(lab: &Lab, budget_ms: u32) -> String {
    let budget = format!("--virtual-time-budget={budget_ms}");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.lb,
            "timeout",
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .args([
            "--disable-gpu",
            "--no-first-run",
            &budget,
            "--dump-dom",
            "http://127.0.0.1:9180/",
        ])
        .output()
        .expect("run chromium (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The data-* attributes of every element that has `marker` among them.
fn rows(page: &str, marker: &str) -> Vec<HashMap<String, String>> {
    page.split('<')
        .filter(|tag| tag.contains(&format!("{marker}=\"")))
        .map(|tag| {
            let tag = tag.split('>').next().unwrap_or("");
            tag.split("data-")
                .skip(1)
                .filter_map(|attr| {
                    let (key, rest) = attr.split_once("=\"")?;
                    let value = rest.split('"').next()?;
                    Some((key.to_string(), value.to_string()))
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_dashboard_shows_what_the_api_says_and_keeps_updating() {
    if !privileged() {
        return;
    }
    let lab = Lab::up(&LabSpec::default()).expect("lab");
    let (_, daemon) = start_with_api(&lab, true);
    spread(&lab, std::net::IpAddr::V4(VIP4), 12);
    let (status, answer) = api(
        &lab,
        "POST",
        "/api/v1/services/web/backends/10.77.1.12/drain",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{answer}");

    let page = rendered_page(&lab, 3500);
    let (_, body) = api(&lab, "GET", "/api/v1/status", None, None);
    let api_status: Value = serde_json::from_str(&body).unwrap();

    let summary = rows(&page, "data-polls");
    assert_eq!(summary.len(), 1, "{page}");
    let polls: u32 = summary[0]["polls"].parse().unwrap();
    assert!(
        polls >= 3,
        "the page polled {polls} time(s) in 3.5 s without being reloaded"
    );
    assert_eq!(
        summary[0]["version"],
        api_status["config_version"].to_string()
    );

    let services: Vec<String> = rows(&page, "data-service")
        .into_iter()
        .map(|r| r["service"].clone())
        .collect();
    let listed: Vec<String> = api_status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(services, listed);

    let shown = rows(&page, "data-backend");
    let mut expected = 0;
    for service in api_status["services"].as_array().unwrap() {
        for backend in service["backends"].as_array().unwrap() {
            expected += 1;
            let key = format!(
                "{} {}:{}",
                service["name"].as_str().unwrap(),
                backend["address"].as_str().unwrap(),
                backend["port"]
            );
            let row = shown
                .iter()
                .find(|r| r["backend"] == key)
                .unwrap_or_else(|| panic!("no row for {key} in {page}"));
            assert_eq!(row["health"], backend["health"].as_str().unwrap(), "{key}");
            assert_eq!(
                row["weight"],
                backend["effective_weight"].to_string(),
                "{key}"
            );
            assert_eq!(row["drained"], backend["drained"].to_string(), "{key}");
        }
    }
    assert_eq!(shown.len(), expected);
    assert!(shown
        .iter()
        .any(|r| r["drained"] == "true" && r["weight"] == "0"));
    daemon.stop(Duration::from_secs(10));
}
