//! The systemd units in `deploy/systemd/`, checked by systemd's own tools
//! against a root laid out as `deploy/install.sh` lays out a host: the
//! built binaries in `/usr/local/bin`, the nginx helpers in
//! `/usr/local/lib/ferry`, the units in `/etc/systemd/system`, and this
//! machine's own system units beside them.
//!
//! `systemd-analyze verify` loads each unit as the service manager would:
//! an unknown or misspelt directive, a bad value, or an `ExecStart` that is
//! not an executable at the installed path is reported. `systemd-analyze
//! security --offline` scores each service's sandbox; the agent and the
//! coordinator must stay at "OK" (exposure 4.0 or lower on systemd's 0–10
//! scale). The machine has no systemd as PID 1, so the units are not
//! started here; the sandbox's effect on the agent is what these checks
//! cannot show.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_integration_tests::bin;

/// systemd's `--threshold` is the exposure × 10.
const MAX_EXPOSURE_X10: u32 = 40;

fn systemd_analyze() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/systemd-analyze");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "systemd-analyze is missing, and the unit checks must run in CI (scripts/test.sh installs systemd)"
    );
    eprintln!("skipped: systemd-analyze not installed (Debian package systemd)");
    None
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// A root with the units and binaries where `deploy/install.sh` puts them.
fn installed_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let units = repo.join("deploy/systemd");
    for unit in [
        "ferry-agent.service",
        "ferry-coordinator.service",
        "ferry-nginx-reload.path",
        "ferry-nginx-reload.service",
    ] {
        copy(&units.join(unit), &r.join("etc/systemd/system").join(unit));
    }
    for helper in ["ferry-nginx-reload", "ferry-nginx-reload-wait"] {
        copy(
            &units.join(helper),
            &r.join("usr/local/lib/ferry").join(helper),
        );
    }
    for binary in ["ferry-agent", "ferry-coordinator", "ferry"] {
        let to = r.join("usr/local/bin").join(binary);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // A link where the file system allows it: the debug binaries are large.
        if std::fs::hard_link(bin::path(binary), &to).is_err() {
            copy(&bin::path(binary), &to);
        }
    }
    // The targets the units hang off (sysinit.target, multi-user.target…).
    let system = Path::new("/usr/lib/systemd/system");
    for entry in std::fs::read_dir(system).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            copy(
                &entry.path(),
                &r.join("usr/lib/systemd/system").join(entry.file_name()),
            );
        }
    }
    root
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run systemd-analyze");
    eprintln!(
        "{:?}: {}\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_units_load_cleanly_as_installed() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let root = installed_root();
    let out = run(Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args([
            "ferry-agent.service",
            "ferry-coordinator.service",
            "ferry-nginx-reload.path",
            "ferry-nginx-reload.service",
        ])
        .current_dir(root.path().join("etc/systemd/system")));
    assert!(out.status.success(), "systemd-analyze verify failed");
    // Unknown directives are only warnings: any output is a finding.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "systemd-analyze verify reported problems"
    );
}

#[test]
fn a_misspelt_directive_or_a_missing_binary_is_caught() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let root = installed_root();
    let units = root.path().join("etc/systemd/system");
    let unit = units.join("ferry-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &unit,
        text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
    )
    .unwrap();
    let verify = |units: &Path| {
        run(Command::new(&analyze)
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .arg("ferry-agent.service")
            .current_dir(units))
    };
    let out = verify(&units);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown key 'ProtectSytem'"),
        "the check must see a misspelt directive"
    );
    std::fs::remove_file(root.path().join("usr/local/bin/ferry-agent")).unwrap();
    let out = verify(&units);
    assert!(
        !out.status.success(),
        "a missing ExecStart binary must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/local/bin/ferry-agent"),
        "the failure names the binary"
    );
}

#[test]
fn the_agent_and_coordinator_sandboxes_rate_ok() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let root = installed_root();
    for unit in ["ferry-agent.service", "ferry-coordinator.service"] {
        let out = run(Command::new(&analyze)
            .args(["security", "--offline=yes"])
            .arg(format!("--root={}", root.path().display()))
            .arg(format!("--threshold={MAX_EXPOSURE_X10}"))
            .arg(unit)
            .current_dir(root.path().join("etc/systemd/system")));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let overall = stdout
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no overall exposure for {unit}"));
        assert!(
            out.status.success(),
            "{unit}: exposure above {}: {overall}",
            f64::from(MAX_EXPOSURE_X10) / 10.0
        );
    }
}
