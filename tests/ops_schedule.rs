//! `cairn schedule crontab|systemd` (issue 15, "Scheduling"): the generated entries run for a non-root user,
//! with a repository path holding spaces, both quotes, `$`, `%` and a backslash, a log under
//! `$XDG_STATE_HOME` that stays bounded, and the S3 flags but never a secret.

mod harness;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

const NOBODY: u32 = 65534;

/// A directory tree owned by the unprivileged user: home, a source tree, and a repository path that
/// needs every kind of quoting.
struct Setup {
    _dir: tempfile::TempDir,
    home: PathBuf,
    repo: PathBuf,
    src: PathBuf,
}

fn setup() -> Option<Setup> {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let src = dir.path().join("src");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), pseudo_random(100_000, 7)).unwrap();
    let repo = dir
        .path()
        .join(r#"re po 'sq' "dq" $HOME ${X} %p %% a\%b \n `id`"#);
    let chowned = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    let probe = as_nobody(&home)
        .args([cairn_bin(), "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !chowned || !probe {
        eprintln!("SKIPPED: cannot run cairn as uid {NOBODY} (chown or setpriv failed)");
        return None;
    }
    Some(Setup {
        _dir: dir,
        home,
        repo,
        src,
    })
}

/// A command run as the unprivileged user with a cron-like environment: only HOME and PATH.
fn as_nobody(home: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
    ])
    .env_clear()
    .env("HOME", home)
    .env("PATH", "/usr/bin:/bin")
    .stdin(Stdio::null());
    c
}

fn nobody_cairn(s: &Setup) -> Command {
    let mut c = as_nobody(&s.home);
    c.arg(cairn_bin()).arg("--repo").arg(&s.repo);
    c
}

/// An instance due every second, in a repository owned by the unprivileged user.
fn due_instance(s: &Setup) {
    // Plaintext: these entries run without a password source (encrypted repositories: the tests below).
    ok(nobody_cairn(s).args(["init", "--insecure-no-encryption"]));
    ok(nobody_cairn(s)
        .args([
            "instance",
            "add",
            "web",
            "--schedule",
            "* * * * * *",
            "--keep-last",
            "10",
            "--path",
        ])
        .arg(&s.src));
}

fn snapshot_count(repo: &Path) -> usize {
    let v: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap();
    assert!(v.iter().all(|s| s["instance"] == "web"));
    v.len()
}

/// The command of a crontab entry as cron hands it to `sh -c`: after five time fields, with `\%` turned
/// into `%` (an unescaped `%` would end the command there: asserted absent).
fn cron_command(crontab: &str) -> String {
    let line = crontab
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("an entry line");
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(' ').unwrap()..];
    }
    let (mut out, mut escaped) = (String::new(), false);
    for c in rest.trim_start().chars() {
        match (escaped, c) {
            (true, '%') => {
                out.pop();
                out.push('%');
            }
            (false, '%') => panic!("unescaped % in the crontab line: {line}"),
            _ => out.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    out
}

#[test]
fn schedule_crontab_runs_for_a_non_root_user_with_any_path_and_keeps_its_log_bounded() {
    let Some(s) = setup() else { return };
    due_instance(&s);
    std::thread::sleep(Duration::from_millis(1100));
    let crontab = ok(nobody_cairn(&s).args(["schedule", "crontab"]));
    let log = s.home.join(".local/state/cairn/run-due.log");
    assert!(crontab.contains(log.to_str().unwrap()), "{crontab}");
    assert!(!crontab.contains("/var/log"), "{crontab}");
    let command = cron_command(&crontab);
    let run_cron = || {
        let (code, out, err) = run(as_nobody(&s.home).args(["sh", "-c", &command]));
        assert_eq!(
            code, 0,
            "cron command {command}\nstdout: {out}\nstderr: {err}"
        );
    };
    run_cron();
    assert_eq!(snapshot_count(&s.repo), 1, "the entry did not back up");
    let meta = fs::metadata(&log).expect("the log under XDG_STATE_HOME's default");
    assert_eq!(meta.uid(), NOBODY);
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(fs::read_to_string(&log).unwrap().contains("web"));

    // A full log is moved aside before the next run writes: two files at most.
    let old = "x".repeat(1 << 20);
    fs::write(&log, &old).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    run_cron();
    assert_eq!(
        snapshot_count(&s.repo),
        2,
        "second run: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        fs::read_to_string(log.with_extension("log.1")).unwrap(),
        old
    );
    let fresh = fs::read_to_string(&log).unwrap();
    assert!(fresh.len() < 10_000 && fresh.contains("web"), "{fresh}");

    // XDG_STATE_HOME wins over HOME.
    let state = s.home.join("state");
    let crontab = ok(nobody_cairn(&s)
        .env("XDG_STATE_HOME", &state)
        .args(["schedule", "crontab"]));
    assert!(crontab.contains(&format!("'{}/cairn/run-due.log'", state.display())));
}

/// A double-quoted unit-file value decoded as systemd does for what cairn writes: `\\`, `\"`, `%%`, and
/// `$$` where variables are expanded.
fn systemd_unquote(word: &str, exec: bool) -> String {
    let inner = word
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not quoted: {word}"));
    let (mut out, mut chars) = (String::new(), inner.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap()),
            '%' => assert_eq!(chars.next(), Some('%'), "lone % in {word}"),
            '$' if exec => assert_eq!(chars.next(), Some('$'), "lone $ in {word}"),
            '"' => panic!("unescaped quote in {word}"),
            _ => {}
        }
        if !matches!(c, '\\') {
            out.push(c);
        }
    }
    out
}

/// The `"..."` words of an `ExecStart=` value.
fn exec_words(value: &str) -> Vec<String> {
    let (mut words, mut cur, mut in_q, mut esc) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        if c == ' ' && !in_q {
            words.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(c);
        if c == '"' && !esc {
            in_q = !in_q;
        }
        esc = c == '\\' && !esc;
    }
    words.push(cur);
    words.iter().map(|w| systemd_unquote(w, true)).collect()
}

fn service_of(doc: &serde_json::Value) -> (String, String) {
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let f = &files[0];
    (
        f["path"].as_str().unwrap().to_string(),
        f["content"].as_str().unwrap().to_string(),
    )
}

#[test]
fn schedule_systemd_units_quote_every_value_and_run_as_the_generating_user() {
    let Some(s) = setup() else { return };
    due_instance(&s);
    let doc: serde_json::Value =
        serde_json::from_str(&ok(nobody_cairn(&s).args(["--json", "schedule", "systemd"])))
            .unwrap();
    let (path, service) = service_of(&doc);
    assert_eq!(path, "/etc/systemd/system/cairn-run-due.service");
    assert!(
        service.lines().any(|l| l == format!("User={NOBODY}")),
        "{service}"
    );

    // systemd's own parser finds nothing to complain about.
    verify_units(&doc);

    // Decoded as systemd does, the values run the backup of the hostile repository path.
    let mut env = Vec::new();
    let mut exec = Vec::new();
    for line in service.lines() {
        if let Some(v) = line.strip_prefix("Environment=") {
            let kv = systemd_unquote(v, false);
            let (k, v) = kv.split_once('=').unwrap();
            env.push((k.to_string(), v.to_string()));
        } else if let Some(v) = line.strip_prefix("ExecStart=") {
            exec = exec_words(v);
        }
    }
    assert_eq!(
        env,
        vec![(
            "CAIRN_REPO".to_string(),
            s.repo.to_str().unwrap().to_string()
        )]
    );
    assert_eq!(exec, vec![cairn_bin().to_string(), "run-due".to_string()]);
    std::thread::sleep(Duration::from_millis(1100));
    ok(as_nobody(&s.home).args(&exec).envs(env));
    assert_eq!(snapshot_count(&s.repo), 1);

    // Root's system units carry no User=; user units never do and live in the user's directory.
    let doc: serde_json::Value =
        serde_json::from_str(&ok(cairn(&s.repo).args(["--json", "schedule", "systemd"]))).unwrap();
    assert!(!service_of(&doc).1.contains("User="));
    let doc: serde_json::Value = serde_json::from_str(&ok(
        nobody_cairn(&s).args(["--json", "schedule", "systemd", "--user"])
    ))
    .unwrap();
    let (path, service) = service_of(&doc);
    assert_eq!(path, "~/.config/systemd/user/cairn-run-due.service");
    assert!(!service.contains("User="), "{service}");
}

#[test]
fn schedule_entries_carry_the_s3_repository_and_flags_but_no_secret() {
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let entry = |args: &[&str]| {
        ok(Command::new(cairn_bin())
            .args([
                "--repo",
                "s3://bucket/some prefix",
                "--s3-endpoint",
                "http://127.0.0.1:9000/a%b",
                "--s3-path-style",
            ])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("HOME", "/home/u")
            .env_remove("XDG_STATE_HOME"))
    };
    let crontab = entry(&["schedule", "crontab"]);
    let command = cron_command(&crontab);
    for want in [
        "'--repo' 's3://bucket/some prefix'",
        "'--s3-endpoint' 'http://127.0.0.1:9000/a'%'b'",
        "'--s3-path-style'",
    ] {
        assert!(command.contains(want), "{want} missing: {command}");
    }
    let units = entry(&["schedule", "systemd"]);
    for want in [
        r#"Environment="CAIRN_REPO=s3://bucket/some prefix""#,
        r#"Environment="CAIRN_S3_ENDPOINT=http://127.0.0.1:9000/a%%b""#,
        r#"Environment="CAIRN_S3_PATH_STYLE=true""#,
    ] {
        assert!(units.contains(want), "{want} missing: {units}");
    }
    for text in [&crontab, &units] {
        assert!(
            !text.contains(secret) && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
    }
    // A newline cannot be carried by either format: refused, not written half.
    for kind in ["crontab", "systemd"] {
        let err = fails(
            Command::new(cairn_bin()).args(["--repo", "/tmp/a\nb", "schedule", kind]),
            1,
        );
        assert!(err.contains("control character"), "{err}");
    }
}

/// The password file of an encrypted repository, owned by the unprivileged user (0600), with a name that
/// needs quoting in both formats; and the repository itself, with a due instance.
fn encrypted_due_instance(s: &Setup) -> PathBuf {
    let pw = s.home.join("pass word 'sq' $X %p");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    Command::new("chown")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(&pw)
        .status()
        .unwrap();
    ok(nobody_cairn(s)
        .env("CAIRN_KDF_MEMORY_KIB", "1024")
        .env("CAIRN_KDF_ITERATIONS", "1")
        .arg("--password-file")
        .arg(&pw)
        .arg("init"));
    ok(nobody_cairn(s)
        .arg("--password-file")
        .arg(&pw)
        .args([
            "instance",
            "add",
            "web",
            "--schedule",
            "* * * * * *",
            "--keep-last",
            "10",
            "--path",
        ])
        .arg(&s.src));
    pw
}

/// Runs a crontab entry's command as cron would (the unprivileged user, only HOME and PATH, `sh -c`).
fn run_cron_entry(s: &Setup, crontab: &str) -> (i32, String, String) {
    run(as_nobody(&s.home).args(["sh", "-c", &cron_command(crontab)]))
}

#[test]
fn schedule_entries_of_an_encrypted_repository_name_the_password_file_or_command_and_run() {
    let Some(s) = setup() else { return };
    let pw = encrypted_due_instance(&s);
    let pw_text = pw.to_str().unwrap();

    // No file or command: refused in one line with exit 12, whatever else holds the password (the entry
    // must never carry the password itself).
    for kind in ["crontab", "systemd"] {
        for env in [None, Some(PASSWORD)] {
            let mut c = nobody_cairn(&s);
            if let Some(p) = env {
                c.env("CAIRN_PASSWORD", p);
            }
            let (code, out, err) = run(c.args(["schedule", kind]));
            assert_eq!(code, 12, "{kind}: {out}{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("--password-file"), "{err}");
            assert!(!out.contains(PASSWORD), "{out}");
        }
    }
    // A file that does not exist is refused too, before anything is printed.
    let (code, out, err) = run(nobody_cairn(&s)
        .args(["schedule", "crontab", "--password-file"])
        .arg(s.home.join("missing")));
    assert_eq!((code, out.as_str()), (12, ""), "{err}");

    // crontab, with the file given on the command line or by CAIRN_PASSWORD_FILE (this run's source is
    // the default): the line names the file, not the password, and run as cron runs it, backs up.
    std::thread::sleep(Duration::from_millis(1100));
    let crontab = ok(nobody_cairn(&s)
        .args(["schedule", "crontab", "--password-file"])
        .arg(&pw));
    assert!(!crontab.contains(PASSWORD), "{crontab}");
    // As `sh -c` gets it: shell quotes, each `%` outside them.
    let quoted = pw_text.replace('\'', r"'\''").replace('%', "'%'");
    assert!(
        cron_command(&crontab).contains(&format!("'--password-file' '{quoted}'")),
        "{crontab}"
    );
    assert_eq!(
        ok(nobody_cairn(&s)
            .env("CAIRN_PASSWORD_FILE", &pw)
            .args(["schedule", "crontab"])),
        crontab
    );
    let (code, out, err) = run_cron_entry(&s, &crontab);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(snapshot_count(&s.repo), 1, "the entry did not back up");

    // A password command works the same way.
    std::thread::sleep(Duration::from_millis(1100));
    let cmd = format!("cat '{}'", pw_text.replace('\'', r"'\''"));
    let crontab = ok(nobody_cairn(&s).args(["schedule", "crontab", "--password-command", &cmd]));
    assert!(crontab.contains("'--password-command'"), "{crontab}");
    let (code, out, err) = run_cron_entry(&s, &crontab);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(snapshot_count(&s.repo), 2);

    // When the file the entry names is gone, the run fails with exit 12 and one line, and backs up nothing.
    let crontab_file = ok(nobody_cairn(&s)
        .args(["schedule", "crontab", "--password-file"])
        .arg(&pw));
    let moved = s.home.join("moved");
    fs::rename(&pw, &moved).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (code, out, err) = run_cron_entry(&s, &crontab_file);
    let log = fs::read_to_string(s.home.join(".local/state/cairn/run-due.log")).unwrap_or_default();
    fs::rename(&moved, &pw).unwrap();
    assert_eq!(code, 12, "run without its password file: {out}{err}{log}");
    let said = format!("{err}{log}");
    assert!(
        said.lines()
            .any(|l| l.contains("cannot read the password file")),
        "{said}"
    );
    assert_eq!(snapshot_count(&s.repo), 2);
}

/// Checks a unit with `systemd-analyze verify` (skipped with a note when the tool is missing).
fn verify_units(doc: &serde_json::Value) {
    let unit_dir = tempfile::tempdir().unwrap();
    for f in doc["files"].as_array().unwrap() {
        let name = Path::new(f["path"].as_str().unwrap()).file_name().unwrap();
        fs::write(unit_dir.path().join(name), f["content"].as_str().unwrap()).unwrap();
    }
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit_dir.path().join("cairn-run-due.service"))
        .output()
    {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "systemd-analyze: {err}");
            assert!(
                !err.contains("cairn-run-due"),
                "systemd-analyze complains: {err}"
            );
        }
        Err(e) => eprintln!("systemd-analyze not run ({e}); checking the unit by hand only"),
    }
}

#[test]
fn schedule_systemd_of_an_encrypted_repository_loads_the_password_file_as_a_credential() {
    let Some(s) = setup() else { return };
    let pw = encrypted_due_instance(&s);
    let doc: serde_json::Value = serde_json::from_str(&ok(nobody_cairn(&s)
        .args(["--json", "schedule", "systemd", "--password-file"])
        .arg(&pw)))
    .unwrap();
    let (_, service) = service_of(&doc);
    assert!(!service.contains(PASSWORD), "{service}");
    verify_units(&doc);

    // LoadCredential= takes the rest of the line as the path, with specifiers (`%%`) expanded.
    let cred = service
        .lines()
        .find_map(|l| l.strip_prefix("LoadCredential=cairn-password:"))
        .unwrap_or_else(|| panic!("no LoadCredential=: {service}"));
    assert_eq!(cred.replace("%%", "%"), pw.to_str().unwrap());
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let words: Vec<String> = exec
        .split(' ')
        .map(|w| {
            w.strip_prefix('"')
                .and_then(|w| w.strip_suffix('"'))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        words[1..],
        [
            "--password-file",
            "${CREDENTIALS_DIRECTORY}/cairn-password",
            "run-due"
        ]
    );

    // Run as systemd would: the credential copied into a directory of the service's own, the variable set.
    let creds = s.home.join("creds");
    fs::create_dir(&creds).unwrap();
    fs::copy(&pw, creds.join("cairn-password")).unwrap();
    Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(&creds)
        .status()
        .unwrap();
    let argv: Vec<String> = words
        .iter()
        .map(|w| w.replace("${CREDENTIALS_DIRECTORY}", creds.to_str().unwrap()))
        .collect();
    std::thread::sleep(Duration::from_millis(1100));
    ok(as_nobody(&s.home)
        .args(&argv)
        .env("CAIRN_REPO", &s.repo)
        .env("CREDENTIALS_DIRECTORY", &creds));
    assert_eq!(snapshot_count(&s.repo), 1);

    // A password command goes into the environment (the command, never its output).
    let cmd = "cat /etc/cairn/password";
    let doc: serde_json::Value = serde_json::from_str(&ok(nobody_cairn(&s).args([
        "--json",
        "schedule",
        "systemd",
        "--user",
        "--password-command",
        cmd,
    ])))
    .unwrap();
    let (_, service) = service_of(&doc);
    assert!(
        service.contains(&format!("Environment=\"CAIRN_PASSWORD_COMMAND={cmd}\"")),
        "{service}"
    );
    assert!(!service.contains("LoadCredential"), "{service}");
    verify_units(&doc);

    // A plaintext repository's units name no password source, even when this run has one.
    let plain = s.home.join("plain");
    ok(cairn(&plain).args(["init", "--insecure-no-encryption"]));
    let units = ok(cairn(&plain)
        .args(["schedule", "systemd", "--password-file"])
        .arg(&pw));
    assert!(
        !units.contains("LoadCredential") && !units.contains("password"),
        "{units}"
    );
}
