//! `cairn serve --tls-cert F --tls-key F`: HTTPS checked by a client that verifies the server's certificate
//! against a CA made for the test, and the listening rules (a non-loopback address needs TLS or
//! `--insecure-http`).

mod harness;
mod serve_support;

use std::fs;
use std::path::{Path, PathBuf};

use harness::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use serve_support::{agent, token, Server};

/// A CA and a server certificate it signed (for `localhost` and 127.0.0.1), as PEM files in `dir`.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
    fs::write(&cert_file, leaf.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: cert_file,
        key: key_file,
    }
}

fn tls_args(p: &Pki) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        p.cert.display().to_string(),
        "--tls-key".into(),
        p.key.display().to_string(),
    ]
}

#[test]
fn serve_tls_answers_over_https_to_a_client_that_verifies_the_certificate() {
    let (dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let src = dir.path().join("files");
    build_rich_tree(&src, 5);
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    let p = pki(dir.path());
    let args = tls_args(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start_with(&repo, &args, Some(&p.ca_pem), &[]);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);

    // The verifying client gets the API, by address and by name.
    assert_eq!(
        s.get("/api/v1/health", None),
        (200, json!({"status": "ok"}))
    );
    let (code, list) = s.get("/api/v1/instances", Some(&viewer));
    assert_eq!(code, 200, "{list}");
    assert_eq!(list[0]["instance"], "app");
    let by_name = s.base.replace("127.0.0.1", "localhost");
    let (code, _) = Server::answer(
        s.agent
            .get(format!("{by_name}/api/v1/instances"))
            .header("Authorization", format!("Bearer {viewer}"))
            .call(),
    );
    assert_eq!(code, 200);

    // A client that does not trust the CA gets no answer at all (the handshake fails)...
    let stranger = agent(None);
    assert!(stranger.get(s.url("/api/v1/health")).call().is_err());
    // ... and neither does one speaking plain HTTP to the HTTPS port: no token travels in clear.
    let plain = s.base.replace("https://", "http://");
    let r = agent(None)
        .get(format!("{plain}/api/v1/instances"))
        .header("Authorization", format!("Bearer {viewer}"))
        .call();
    assert!(
        r.as_ref().map_or(true, |a| a.status() != 200),
        "plain HTTP was served: {r:?}"
    );
    // The failed handshakes did not hurt the server.
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
}

#[test]
fn serve_tls_listens_on_a_non_loopback_address_and_plain_http_needs_insecure_http() {
    let (dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let p = pki(dir.path());

    // With TLS a wildcard address is fine, without --insecure-http.
    let mut args = tls_args(&p);
    args.extend(["--listen".into(), "0.0.0.0:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start_with(&repo, &args, Some(&p.ca_pem), &[]);
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
    drop(s);

    // Plain HTTP there is refused (usage error, nothing listened)...
    let err = fails(
        cairn(&repo).args(["serve", "--no-schedule", "--listen", "0.0.0.0:0"]),
        2,
    );
    assert!(
        err.contains("--insecure-http") && err.contains("--tls-cert"),
        "{err}"
    );
    // ... unless asked for.
    let s = Server::start(&repo, &["--listen", "0.0.0.0:0", "--insecure-http"]);
    assert!(s.base.starts_with("http://"), "{}", s.base);
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
}

#[test]
fn serve_tls_refuses_to_start_with_a_bad_certificate_or_key() {
    let (dir, repo) = new_repo();
    let p = pki(dir.path());
    let other = pki(&{
        let d = dir.path().join("other");
        fs::create_dir(&d).unwrap();
        d
    });
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "not a certificate\n").unwrap();
    let serve = |cert: &Path, key: &Path| {
        let mut c = cairn(&repo);
        c.args(["serve", "--no-schedule", "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        c
    };
    // Each is one error line naming the file, and no server.
    for (cert, key, want) in [
        (&missing, &p.key, "missing.pem"),
        (&p.cert, &missing, "missing.pem"),
        (&empty, &p.key, "no PEM certificate"),
        (&p.cert, &empty, "no PEM private key"),
        (&p.cert, &other.key, "--tls-key"),
    ] {
        let err = fails(&mut serve(cert, key), 1);
        assert!(err.contains(want), "{cert:?} {key:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // One without the other is a usage error.
    let (code, _, err) = run(cairn(&repo)
        .args(["serve", "--no-schedule", "--tls-cert"])
        .arg(&p.cert));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}
