//! Build script: names the git commit and the cargo profile for `--version` and `foo_build_info`.
//!
//! From a checkout (a `.git` beside Cargo.toml) the commit is `git rev-parse
//! HEAD`, and the script runs again when HEAD or the branch it names moves.
//! From a crate tarball there is no `.git`: the commit is `unknown`, never a
//! guess. Uncommitted changes are not detected (the script does not rerun on
//! every source edit).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = if dir.join(".git").exists() {
        watch_head(&dir);
        git(&dir, &["rev-parse", "HEAD"])
            .filter(|c| c.len() >= 12 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|c| c.chars().take(12).collect::<String>())
    } else {
        None
    };
    println!(
        "cargo:rustc-env=FOO_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // OUT_DIR is target/[TRIPLE/]PROFILE/build/PKG-HASH/out: the profile's
    // directory names the profile (`dist` too, where PROFILE says release).
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let profile = out
        .ancestors()
        .nth(3)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(|n| if n == "debug" { "dev" } else { n })
        .unwrap_or("unknown")
        .to_string();
    println!("cargo:rustc-env=FOO_BUILD_PROFILE={profile}");
}

/// Reruns the script when HEAD, the branch it points to or the packed refs
/// change (each only if it exists: a missing one would rerun every build).
fn watch_head(dir: &Path) {
    let mut files = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        files.push(branch);
    }
    for name in files {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// One line of git's output, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_string())
}
