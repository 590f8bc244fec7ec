//! The dashboard of `cairn serve` in a real headless Chromium, driven over the DevTools protocol: a person's
//! path through it (token, overview, instance page, "Back up now", a restore confirmed by typing the
//! instance's name) with the outcomes checked in the repository and on disk, the keyboard and phone-sized
//! layouts, and the screenshots README shows (docs/screenshots/, or `$CAIRN_SCREENSHOTS` when set).
//!
//! Chromium is Debian's `chromium` package (scripts/test installs it when it can). Without it this test
//! fails, saying so: it never passes without having looked at the page.

mod harness;
mod serve_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use serve_support::{token, Server};

/// The Chromium to drive: `$CHROME`, else the first of Debian's names on PATH. None is a failure.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROME") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the dashboard test needs Chromium and found none on PATH: install Debian's `chromium` package \
         (`apt-get install chromium`; scripts/test does it when run as root) or set CHROME=/path/to/chrome"
    );
}

fn launch() -> Browser {
    let exe = chromium();
    let opts = LaunchOptions::default_builder()
        .path(Some(exe.clone()))
        .headless(true)
        // Tests run as root, where Chromium's sandbox cannot start.
        .sandbox(false)
        .window_size(Some((1280, 900)))
        .idle_browser_timeout(Duration::from_secs(600))
        .args(vec![
            std::ffi::OsStr::new("--disable-dev-shm-usage"),
            std::ffi::OsStr::new("--hide-scrollbars"),
            std::ffi::OsStr::new("--lang=en-GB"),
        ])
        .build()
        .expect("launch options");
    Browser::new(opts).unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()))
}

/// No script error, unhandled rejection or content-security-policy violation was recorded on the page.
fn assert_no_page_errors(tab: &Tab) {
    assert_eq!(
        js(tab, "window.__pageErrors"),
        serde_json::json!([]),
        "script errors or content-security-policy violations in the page"
    );
}

/// Makes every page of the tab collect its uncaught script errors, unhandled promise rejections and
/// content-security-policy violations in `window.__pageErrors` (injected by the protocol, so the page's own
/// policy does not apply to it).
fn record_page_errors(tab: &Tab) {
    let source = "window.__pageErrors = [];\
        addEventListener('error', (e) => __pageErrors.push('error: ' + e.message));\
        addEventListener('unhandledrejection', (e) => __pageErrors.push('rejection: ' + e.reason));\
        document.addEventListener('securitypolicyviolation', (e) =>\
            __pageErrors.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));";
    tab.call_method(Page::AddScriptToEvaluateOnNewDocument {
        source: source.to_string(),
        world_name: None,
        include_command_line_api: None,
        run_immediately: None,
    })
    .expect("the error recorder");
}

/// Evaluates `expr` in the page; its value as JSON (the page answers `JSON.stringify(...)`).
fn js(tab: &Tab, expr: &str) -> Value {
    let wrapped = format!("JSON.stringify((() => {{ return {expr}; }})())");
    let r = tab
        .evaluate(&wrapped, false)
        .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"));
    match r.value {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Waits until `expr` is truthy in the page (polled); returns its value.
fn wait_for(tab: &Tab, expr: &str, what: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = js(tab, expr);
        if !matches!(v, Value::Null | Value::Bool(false))
            && v != Value::String(String::new())
            && v != serde_json::json!(0)
        {
            return v;
        }
        if Instant::now() > deadline {
            let banner = js(tab, "document.getElementById('banner').textContent");
            let job = js(tab, "document.getElementById('job').textContent");
            panic!("timed out waiting for {what} ({expr}); banner: {banner}; job: {job}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clicks the element `selector` (waiting for it to exist), as a mouse would.
fn click(tab: &Tab, selector: &str) {
    let e = tab
        .wait_for_element(selector)
        .unwrap_or_else(|e| panic!("no {selector}: {e}"));
    e.click()
        .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
}

fn text_of(tab: &Tab, selector: &str) -> String {
    js(
        tab,
        &format!("(document.querySelector({selector:?}) || {{}}).textContent || ''"),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CAIRN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots"))
}

/// Writes a PNG of the page as it is now; returns its path.
fn screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{name}: not a picture"
    );
    let dir = screenshot_dir();
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, png).unwrap();
    path
}

/// The viewport of a phone (CSS pixels), or back to the desktop window.
fn viewport(tab: &Tab, size: Option<(u32, u32)>) {
    match size {
        Some((width, height)) => {
            tab.call_method(Emulation::SetDeviceMetricsOverride {
                width,
                height,
                device_scale_factor: 2.0,
                mobile: true,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .expect("phone viewport");
        }
        None => {
            tab.call_method(Emulation::ClearDeviceMetricsOverride(None))
                .expect("desktop viewport");
        }
    }
}

/// RFC 3339 time `days` ago.
fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339()
}

/// Two instances with a history, so that the size chart and the timeline have something to show: `shop`
/// (files, snapshots three, two and one week old, and a pre-hook that makes each later job last two seconds,
/// so the page can be seen mid-job) and `crm`, backed up ten days ago and whose last backup failed (the
/// overview must flag it).
fn setup(dir: &Path, repo: &Path) -> PathBuf {
    let src = dir.join("shop-files");
    build_rich_tree(&src, 40);
    ok(cairn(repo)
        .args(["instance", "add", "shop", "--priority", "manual", "--path"])
        .arg(&src));
    for (seed, days) in [(1, 21), (2, 14), (3, 7)] {
        fs::write(
            src.join("orders.db"),
            pseudo_random((1 + seed) << 20, seed as u64),
        )
        .unwrap();
        ok(cairn(repo).args(["instance", "backup", "shop", "--time", &days_ago(days)]));
    }
    ok(cairn(repo).args(["instance", "set", "shop", "--pre-hook", "sleep 2"]));
    let crm = dir.join("crm-files");
    fs::create_dir_all(&crm).unwrap();
    fs::write(crm.join("contacts.csv"), pseudo_random(4 << 20, 9)).unwrap();
    ok(cairn(repo)
        .args(["instance", "add", "crm", "--priority", "manual", "--path"])
        .arg(&crm));
    ok(cairn(repo).args(["instance", "backup", "crm", "--time", &days_ago(10)]));
    fs::remove_dir_all(&crm).unwrap();
    let (code, _, _) = run(cairn(repo).args(["instance", "backup", "crm"]));
    assert_ne!(code, 0, "crm's backup was meant to fail");
    src
}

#[test]
fn serve_dashboard_in_chromium_backs_up_and_restores_with_screenshots() {
    // First, so that a machine without Chromium fails at once, saying so.
    let browser = launch();
    let (dir, repo) = new_repo();
    let src = setup(dir.path(), &repo);
    let admin = token(&repo, "web", "admin");
    let server = Server::start(&repo, &[]);
    let tab: Arc<Tab> = browser.new_tab().expect("a tab");
    tab.set_default_timeout(Duration::from_secs(60));
    record_page_errors(&tab);

    // The token, typed and sent with the keyboard.
    tab.navigate_to(&server.base)
        .and_then(|t| t.wait_until_navigated())
        .expect("the dashboard loads");
    click(&tab, "#token");
    tab.type_str(&admin)
        .and_then(|t| t.press_key("Enter"))
        .unwrap();

    // Overview: both instances, the failed one highlighted and named in the banner, the size chart drawn
    // from the snapshots.
    wait_for(
        &tab,
        "document.querySelectorAll('#instances tr').length === 2",
        "the instance rows",
        30,
    );
    let rows = js(
        &tab,
        "[...document.querySelectorAll('#instances tr')].map(r => ({cls: r.className, \
         cells: [...r.cells].map(c => c.textContent)}))",
    );
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["cells"][0] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {rows}"))
            .clone()
    };
    let (shop, crm) = (row("shop"), row("crm"));
    assert_eq!(shop["cells"][1], "ok", "{shop}");
    assert_eq!(shop["cells"][2], "no", "{shop}");
    assert_eq!(shop["cells"][5], "3", "{shop}");
    assert!(shop["cells"][6].as_str().unwrap().contains("MiB"), "{shop}");
    assert!(shop["cells"][8].as_str().unwrap().ends_with('×'), "{shop}");
    assert_eq!(crm["cells"][1], "failed", "{crm}");
    assert_eq!(crm["cls"], "trouble", "{crm}");
    let banner = text_of(&tab, "#banner");
    assert!(
        banner.contains("need attention") && banner.contains("crm failed"),
        "{banner}"
    );
    assert_eq!(
        js(
            &tab,
            "document.querySelectorAll('#size-chart circle').length"
        ),
        4,
        "one point per snapshot"
    );
    assert!(
        js(
            &tab,
            "document.querySelector('#size-chart path.stored').getAttribute('d')"
        )
        .as_str()
        .is_some_and(|d| d.starts_with('M')),
        "no size line"
    );
    check_labels(&tab);
    screenshot(&tab, "overview.png");
    check_size_history(&server, &admin);

    // The phone-sized overview: no sideways scrolling, each cell labelled with its column.
    viewport(&tab, Some((390, 844)));
    wait_for(
        &tab,
        "getComputedStyle(document.querySelector('#instances td'), '::before').content.includes('Instance')",
        "the card layout",
        10,
    );
    assert_eq!(
        js(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth"
        ),
        true,
        "the phone layout scrolls sideways"
    );
    screenshot(&tab, "overview-phone.png");
    viewport(&tab, None);

    // The instance page: its snapshots on the timeline and in the table, its run log.
    click(&tab, "#instances a[href='#/instance/shop']");
    wait_for(
        &tab,
        "document.getElementById('inst-name').textContent === 'shop' && \
         document.querySelectorAll('#snapshots tr').length === 3",
        "the instance page",
        30,
    );
    assert_eq!(
        js(
            &tab,
            "document.querySelectorAll('#timeline [tabindex=\"0\"][role=button]').length"
        ),
        3
    );
    assert_eq!(
        js(&tab, "document.activeElement.id"),
        "inst-name",
        "the page's heading takes the focus"
    );
    assert!(text_of(&tab, "#runs").contains("backup"));
    check_labels(&tab);

    // "Back up now": the job runs (its progress shown), completes, and a fourth snapshot is listed.
    click(&tab, "#backup-now");
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'running' && \
         document.getElementById('backup-now').disabled",
        "the backup job running",
        30,
    );
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'completed' && \
         document.querySelectorAll('#snapshots tr').length === 4",
        "the backup job completed",
        120,
    );
    assert!(text_of(&tab, "#banner").contains("backup of shop completed"));
    let jobs = server.get_ok("/api/v1/jobs?instance=shop", &admin);
    assert_eq!(jobs[0]["kind"], "backup", "{jobs}");
    assert_eq!(jobs[0]["status"], "completed", "{jobs}");
    let snaps = server.get_ok("/api/v1/instances/shop/snapshots", &admin);
    assert_eq!(snaps.as_array().unwrap().len(), 4, "{snaps}");
    let oldest = snaps[0]["id"].as_str().unwrap().to_string();

    // The keyboard reaches a snapshot on the timeline; Escape closes the dialog and restores nothing.
    js(&tab, "document.querySelector('#timeline .mark').focus()");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "document.getElementById('restore-dialog').open && document.activeElement.id === 'rd-confirm'",
        "the restore dialog from the keyboard",
        10,
    );
    tab.type_str("shop").unwrap();
    tab.press_key("Escape").unwrap();
    wait_for(
        &tab,
        "!document.getElementById('restore-dialog').open",
        "the dialog closed",
        10,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server
            .get_ok("/api/v1/jobs?instance=shop", &admin)
            .as_array()
            .unwrap()
            .len(),
        1,
        "Escape started a restore"
    );

    // The restore of the oldest snapshot: the dialog says what is replaced and needs the name typed.
    fs::write(src.join("orders.db"), b"changed after the last backup").unwrap();
    tab.find_elements("#snapshots button.restore")
        .expect("restore buttons")
        .last()
        .expect("one per snapshot")
        .click()
        .unwrap();
    wait_for(
        &tab,
        "document.getElementById('restore-dialog').open",
        "the restore dialog",
        10,
    );
    let what = text_of(&tab, "#rd-what");
    assert!(what.contains(src.to_str().unwrap()), "{what}");
    assert_eq!(text_of(&tab, "#rd-snap"), &oldest[..10]);
    tab.type_str("sho").unwrap();
    assert_eq!(js(&tab, "document.getElementById('rd-go').disabled"), true);
    tab.press_key("Enter").unwrap(); // no default button yet: nothing happens
    assert_eq!(
        js(&tab, "document.getElementById('restore-dialog').open"),
        true
    );
    tab.type_str("p").unwrap();
    assert_eq!(js(&tab, "document.getElementById('rd-go').disabled"), false);
    screenshot(&tab, "restore-dialog.png");
    tab.press_key("Enter").unwrap();

    // Live progress while it runs (the safety snapshot's pre-hook holds it for two seconds at least).
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'running' && \
         document.getElementById('job-label').textContent.startsWith('restore') && \
         document.getElementById('job-text').textContent.startsWith('safety snapshot')",
        "the restore job running",
        30,
    );
    js(&tab, "window.scrollTo(0, 0)");
    screenshot(&tab, "restore-progress.png");
    let step = text_of(&tab, "#job-text");
    assert_eq!(
        js(&tab, "document.getElementById('job').dataset.status"),
        "running",
        "the screenshot was meant to show the restore running ({step})"
    );
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'completed'",
        "the restore job completed",
        120,
    );
    assert!(text_of(&tab, "#banner").contains("restore of shop completed"));
    assert!(text_of(&tab, "#job-text").contains("safety snapshot"));

    // On disk: the oldest snapshot's bytes are back; the state replaced is kept in a safety snapshot.
    assert_eq!(
        fs::read(src.join("orders.db")).unwrap(),
        pseudo_random(2 << 20, 1),
        "the three-week-old orders.db is back"
    );
    let jobs = server.get_ok("/api/v1/jobs?instance=shop&kind=restore", &admin);
    let restore = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "restore")
        .expect("the restore job");
    assert_eq!(restore["status"], "completed", "{restore}");
    assert_eq!(restore["snapshot_id"], oldest.as_str(), "{restore}");
    let safety = restore["safety_snapshot_id"].as_str().expect("a safety id");
    let safety_snap = server.get_ok(&format!("/api/v1/snapshots/{safety}"), &admin);
    assert_eq!(safety_snap["tags"], serde_json::json!(["safety"]));
    wait_for(
        &tab,
        "document.querySelectorAll('#timeline .mark.safety').length === 1",
        "the safety snapshot on the timeline",
        30,
    );
    // The instance page on a phone: no sideways scrolling either, the timeline still there.
    viewport(&tab, Some((390, 844)));
    wait_for(
        &tab,
        "getComputedStyle(document.querySelector('#snapshots td'), '::before').content.includes('Time')",
        "the card layout of the snapshots",
        10,
    );
    assert_eq!(
        js(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth && \
             document.querySelector('#timeline svg').getBoundingClientRect().width <= window.innerWidth"
        ),
        true,
        "the instance page scrolls sideways on a phone"
    );
    assert_no_page_errors(&tab);
    drop(server);
    ok(cairn(&repo).arg("check"));
}

/// The chart's data, `GET /stats`'s `size_history`: one point per snapshot, oldest first, its stored bytes
/// the running sum of what each snapshot added, its logical bytes the newest snapshot of each instance.
fn check_size_history(server: &Server, token: &str) {
    let stats = server.get_ok("/api/v1/stats", token);
    let points = stats["size_history"].as_array().expect("size_history");
    let snaps = server.get_ok("/api/v1/instances/shop/snapshots", token);
    let crm = server.get_ok("/api/v1/instances/crm/snapshots", token);
    let mut all: Vec<&Value> = snaps.as_array().unwrap().iter().collect();
    all.extend(crm.as_array().unwrap());
    all.sort_by_key(|s| chrono::DateTime::parse_from_rfc3339(s["time"].as_str().unwrap()).unwrap());
    assert_eq!(points.len(), all.len(), "{stats}");
    let (mut stored, mut newest) = (0, std::collections::BTreeMap::new());
    for (p, s) in points.iter().zip(&all) {
        assert_eq!(p["snapshot_id"], s["id"], "{stats}");
        assert_eq!(p["instance"], s["instance"], "{stats}");
        stored += s["summary"]["bytes_added"].as_u64().unwrap();
        newest.insert(
            s["instance"].as_str().unwrap().to_string(),
            s["summary"]["bytes_total"].as_u64().unwrap(),
        );
        assert_eq!(p["stored_bytes"], stored, "{stats}");
        assert_eq!(p["logical_bytes"], newest.values().sum::<u64>(), "{stats}");
    }
}

/// Every form control and button shown has a name a screen reader can say, and can take the focus.
fn check_labels(tab: &Tab) {
    let shown = "[...document.querySelectorAll('input, button, a[href], [role=button]')]\
                 .filter(e => e.getClientRects().length > 0)";
    let unnamed = js(
        tab,
        &format!(
            "{shown}.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') \
             && !e.textContent.trim()).map(e => e.outerHTML)"
        ),
    );
    assert_eq!(unnamed, serde_json::json!([]), "controls without a name");
    let unfocusable = js(
        tab,
        &format!("{shown}.filter(e => e.tabIndex < 0).map(e => e.outerHTML)"),
    );
    assert_eq!(
        unfocusable,
        serde_json::json!([]),
        "controls the keyboard cannot reach"
    );
    assert!(
        js(tab, &format!("{shown}.length")).as_u64().unwrap() > 0,
        "no controls shown"
    );
}

/// The dashboard follows a job whose server is killed (-9) and started again on the same address: while
/// nothing answers it keeps asking (saying so), then shows the job as the next server lists it,
/// `interrupted`, and stops asking.
#[test]
fn serve_dashboard_following_a_job_shows_it_interrupted_after_a_server_restart() {
    let browser = launch();
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    build_rich_tree(&src, 10);
    ok(cairn(&repo)
        .args(["instance", "add", "shop", "--priority", "manual", "--path"])
        .arg(&src));
    // The backup stays in its pre-hook long enough for the server to be killed under it.
    ok(cairn(&repo).args(["instance", "set", "shop", "--pre-hook", "sleep 20"]));
    let admin = token(&repo, "web", "admin");
    let mut server = Server::start(&repo, &[]);
    let tab: Arc<Tab> = browser.new_tab().expect("a tab");
    tab.set_default_timeout(Duration::from_secs(60));
    record_page_errors(&tab);
    tab.navigate_to(&format!("{}/#/instance/shop", server.base))
        .and_then(|t| t.wait_until_navigated())
        .expect("the dashboard loads");
    click(&tab, "#token");
    tab.type_str(&admin)
        .and_then(|t| t.press_key("Enter"))
        .unwrap();
    wait_for(
        &tab,
        "document.getElementById('inst-name').textContent === 'shop'",
        "the instance page",
        30,
    );
    // Counts the page's requests for a job (evaluated through the protocol: the page's policy allows it).
    js(
        &tab,
        "(() => { window.__jobPolls = 0; const f = window.fetch; \
         window.fetch = (u, o) => { if (String(u).includes('/api/v1/jobs/')) __jobPolls++; return f(u, o); }; \
         return true; })()",
    );
    click(&tab, "#backup-now");
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'running'",
        "the backup job running",
        30,
    );
    let jobs = server.get_ok("/api/v1/jobs?instance=shop", &admin);
    let id = jobs[0]["id"].as_str().expect("the job's id").to_string();
    assert_eq!(jobs[0]["status"], "running", "{jobs}");

    // kill -9: the page keeps asking and says that nothing answers.
    server.kill9();
    wait_for(
        &tab,
        "document.getElementById('job-text').textContent.includes('has not answered since')",
        "the page saying the server does not answer",
        30,
    );
    assert_eq!(
        js(&tab, "document.getElementById('backup-now').disabled"),
        true,
        "the page stopped following the job while the server was down"
    );

    // The next server on the same address lists the job interrupted; the page shows it and stops asking.
    let listen = server.base.trim_start_matches("http://").to_string();
    let server = Server::start(&repo, &["--listen", &listen]);
    assert_eq!(server.base, format!("http://{listen}"));
    wait_for(
        &tab,
        "document.getElementById('job').dataset.status === 'interrupted'",
        "the job shown interrupted",
        60,
    );
    let banner = text_of(&tab, "#banner");
    assert!(
        banner.starts_with("backup of shop interrupted: the server stopped"),
        "{banner}"
    );
    assert_eq!(
        js(&tab, "document.getElementById('banner').className"),
        "bad"
    );
    assert!(text_of(&tab, "#job-label").starts_with("backup interrupted"));
    assert!(!text_of(&tab, "#job-text").contains("has not answered"));
    assert_eq!(
        js(&tab, "document.getElementById('backup-now').disabled"),
        false
    );
    let polls = js(&tab, "window.__jobPolls");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        js(&tab, "window.__jobPolls"),
        polls,
        "the page still polls the job"
    );
    let job = server.get_ok(&format!("/api/v1/jobs/{id}"), &admin);
    assert_eq!(job["status"], "interrupted", "{job}");
    assert_eq!(
        server.get_ok("/api/v1/instances/shop/snapshots", &admin),
        serde_json::json!([]),
        "the interrupted backup wrote a snapshot"
    );
    assert_no_page_errors(&tab);
    drop(server);
    ok(cairn(&repo).arg("check"));
}
