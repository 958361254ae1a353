//! # External tools, run one way
//!
//! mmdebstrap (and, as the product grows, mke2fs, sfdisk, qemu-img...) run through [`run`], which
//! puts the command line and the tail of stderr into the error, and names the Debian package to
//! install when the tool is missing.

use std::io::Read;
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// The Debian package that provides a tool.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "mmdebstrap" => "mmdebstrap",
        "skopeo" => "skopeo",
        "umoci" => "umoci",
        "mke2fs" | "e2fsck" => "e2fsprogs (from bookworm-backports, >= 1.47.1)",
        "sfdisk" => "fdisk",
        "mkfs.fat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "grub-mkimage" => "grub-pc-bin (and grub-common)",
        "objcopy" | "objdump" => "binutils",
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "docker" | "dockerd" => "docker.io",
        "pigz" => "pigz",
        _ => "(unknown package)",
    }
}

/// Fails, naming the Debian package, unless `tool` is installed.
pub fn require(tool: &str) -> Result<()> {
    if !tool.contains('/') && !have(tool) {
        bail!(
            "`{tool}` is not installed: install the Debian package {}",
            package_of(tool)
        );
    }
    Ok(())
}

/// Checks the program is installed; returns the command line for messages.
fn prepare(cmd: &Command) -> Result<String> {
    require(&cmd.get_program().to_string_lossy())?;
    Ok(describe(cmd))
}

/// True if `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            f.is_file()
        })
    })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.contains('\'') {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command to completion. Each line it writes to stderr (where mmdebstrap and most tools
/// report progress) goes to `on_line`; the last lines are kept for the error.
pub fn run(mut cmd: Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    let line = prepare(&cmd)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting `{line}`: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut tail: std::collections::VecDeque<String> = Default::default();
    if let Some(err) = child.stderr.take() {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            on_line(&l);
            if tail.len() == 15 {
                tail.pop_front();
            }
            tail.push_back(l);
        }
    }
    let status = child.wait()?;
    let _ = out_thread.join();
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        bail!(
            "`{line}` failed ({status}); the end of its output:\n{}",
            tail.join("\n")
        );
    }
    Ok(())
}

/// Runs a command and returns its stdout; errors like [`run`].
pub fn output(mut cmd: Command) -> Result<Vec<u8>> {
    let line = prepare(&cmd)?;
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("starting `{line}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "`{line}` failed ({}); the end of its output:\n{}",
            out.status,
            tail.join("\n")
        );
    }
    Ok(out.stdout)
}
