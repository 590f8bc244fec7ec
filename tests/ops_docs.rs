//! `cairn completions` and `cairn man` (issue 15): completion scripts that the shells accept and that know
//! the subcommands, and manual pages that are valid roff naming the commands.

mod harness;

use std::fs;
use std::process::Command;

use harness::*;

/// Subcommands every generated document must know.
const COMMANDS: [&str; 8] = [
    "backup",
    "restore",
    "snapshots",
    "forget",
    "instance",
    "run-due",
    "stats",
    "completions",
];

fn out(args: &[&str]) -> String {
    ok(Command::new(cairn_bin()).args(args))
}

#[test]
fn completions_for_bash_zsh_and_fish_know_every_subcommand() {
    let bash = out(&["completions", "bash"]);
    for c in COMMANDS {
        assert!(bash.contains(c), "bash completion lacks {c}");
    }
    // bash loads it and registers a completion for cairn.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("cairn.bash");
    fs::write(&script, &bash).unwrap();
    let registered = ok(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p cairn",
        script.display()
    )));
    assert!(registered.contains("cairn"), "{registered}");
    // Completing `cairn ins` offers `instance`; `cairn instance ` offers its actions.
    let complete = |line: &str| {
        ok(Command::new("bash").arg("-c").arg(format!(
            "source '{}'; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             [[ '{line}' == *' ' ]] && COMP_WORDS+=('') && COMP_CWORD=$((COMP_CWORD+1)); \
             COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; _cairn cairn; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        )))
    };
    assert!(complete("cairn ins").lines().any(|l| l == "instance"));
    let actions = complete("cairn instance ");
    for a in ["add", "list", "backup", "restore"] {
        assert!(
            actions.lines().any(|l| l == a),
            "{a} not offered: {actions}"
        );
    }
    let zsh = out(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef cairn"), "{}", &zsh[..40]);
    let fish = out(&["completions", "fish"]);
    for c in COMMANDS {
        assert!(
            zsh.contains(c) && fish.contains(c),
            "zsh/fish completion lacks {c}"
        );
    }
    assert!(fish.contains("complete -c cairn"));
    // A script is data on stdout: --json does not apply.
    fails(
        Command::new(cairn_bin()).args(["--json", "completions", "bash"]),
        2,
    );
    let (code, _, err) = run(Command::new(cairn_bin()).args(["completions", "tcsh"]));
    assert!(code == 2 && err.contains("possible values"), "{err}");
}

/// Renders a page with groff, failing on any warning; returns the text.
fn groff(page: &std::path::Path) -> Option<String> {
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-b"])
        .arg(page)
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.trim().is_empty(),
        "groff on {}: {err}",
        page.display()
    );
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn man_pages_are_valid_roff_naming_the_commands() {
    let page = out(&["man"]);
    assert!(
        page.contains(".TH cairn 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("stdout.1");
    fs::write(&main, &page).unwrap();
    match groff(&main) {
        Some(text) => {
            // Hyphenation and formatting aside, the command names are in the rendered page.
            let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for c in COMMANDS {
                assert!(flat.contains(c), "man page lacks {c}: {flat}");
            }
        }
        None => eprintln!("groff not found: checking the roff source only"),
    }
    for c in COMMANDS {
        // roff writes a literal hyphen as `\-`.
        assert!(
            page.contains(&c.replace('-', "\\-")),
            "man page source lacks {c}"
        );
    }

    let pages = dir.path().join("man1");
    let listed: serde_json::Value = serde_json::from_str(&ok(Command::new(cairn_bin())
        .args(["--json", "man", "--dir"])
        .arg(&pages)))
    .unwrap();
    let files = listed["files"].as_array().unwrap();
    for name in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-instance.1",
        "cairn-instance-add.1",
        "cairn-run-due.1",
    ] {
        let p = pages.join(name);
        assert!(
            files.iter().any(|f| f == p.to_str().unwrap()),
            "{name} not listed"
        );
        let src = fs::read_to_string(&p).unwrap();
        assert!(
            src.starts_with(".ie") || src.contains(".TH"),
            "{name}: {src}"
        );
        groff(&p);
    }
    let add = fs::read_to_string(pages.join("cairn-instance-add.1")).unwrap();
    assert!(
        add.contains("ping\\-url") || add.contains("ping-url"),
        "{add}"
    );
    fails(Command::new(cairn_bin()).args(["--json", "man"]), 2);
}
