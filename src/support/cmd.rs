//! # External tools, run one way
//!
//! Every external tool (mmdebstrap, mke2fs, sfdisk, qemu-img, qemu, git…) runs through this
//! module: [`run`] and [`output`] to completion, [`spawn`] for a process watched while it runs
//! (QEMU). In each, stdin is closed, stderr is drained as bytes until the pipe closes (a tool
//! that writes non-UTF-8 never blocks on a full pipe), its last lines are kept, and a failure's
//! error carries the command line and that tail. A missing tool is named with the Debian package
//! that provides it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};

/// Lines of stderr kept for an error.
const TAIL_LINES: usize = 15;
/// Bytes of one stderr line kept for an error.
const TAIL_LINE_BYTES: usize = 400;

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
        "docker-registry" => "docker-registry",
        "htpasswd" => "apache2-utils",
        "pigz" => "pigz",
        "git" => "git",
        "ssh" | "ssh-keygen" => "openssh-client",
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

/// True if `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The command line, quoted where needed, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '\'', '"', '$']) {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Drains a pipe line by line as bytes (lossily decoded), handing each line to `on_line`;
/// returns the last lines.
fn drain(pipe: impl Read, mut on_line: impl FnMut(&str)) -> Vec<String> {
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        // Progress bars rewrite a line with \r: keep what the last rewrite says.
        let line = text
            .trim_end()
            .rsplit('\r')
            .next()
            .unwrap_or("")
            .to_string();
        on_line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        let mut cut = line.len().min(TAIL_LINE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        tail.push_back(line[..cut].to_string());
    }
    tail.into()
}

fn failed(line: &str, status: ExitStatus, tail: &[String]) -> anyhow::Error {
    anyhow!(
        "`{line}` failed ({status}); the end of its output:\n{}",
        tail.join("\n")
    )
}

fn start(cmd: &mut Command, stdout: Stdio) -> Result<(Child, String)> {
    start_with(cmd, stdout, Stdio::null())
}

fn start_with(cmd: &mut Command, stdout: Stdio, stdin: Stdio) -> Result<(Child, String)> {
    require(&cmd.get_program().to_string_lossy())?;
    let line = describe(cmd);
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| anyhow!("starting `{line}`: {e}"))?;
    Ok((child, line))
}

/// Runs a command to completion. Each line it writes to stderr (where mmdebstrap and most tools
/// report progress) goes to `on_line`; the last lines go into the error.
pub fn run(cmd: Command, on_line: impl FnMut(&str)) -> Result<()> {
    run_output(cmd, on_line).map(|_| ())
}

/// Runs a command and returns its stdout; errors like [`run`].
pub fn output(cmd: Command) -> Result<Vec<u8>> {
    run_output(cmd, |_| {})
}

/// Runs a command with `input` on its stdin and returns its stdout, for a tool that reads its
/// question on stdin and reports failures on stdout (Docker's credential helpers: the host in,
/// "credentials not found in native keychain" out): the error carries that last line. Only for
/// tools whose stdout on failure holds no secret; the input is never put into an error.
pub fn output_with_stdin(mut cmd: Command, input: &[u8]) -> Result<Vec<u8>> {
    cmd.stderr(Stdio::piped());
    let line = describe(&cmd);
    require(&cmd.get_program().to_string_lossy())?;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| anyhow!("starting `{line}`: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| anyhow!("waiting for `{line}`: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        let said = String::from_utf8_lossy(if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        })
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(TAIL_LINE_BYTES)
        .collect::<String>();
        return Err(anyhow!("`{line}` failed ({}): {said}", out.status));
    }
    Ok(out.stdout)
}

fn run_output(mut cmd: Command, on_line: impl FnMut(&str)) -> Result<Vec<u8>> {
    let (child, line) = start(&mut cmd, Stdio::piped())?;
    collect(child, &line, on_line)
}

fn collect(mut child: Child, line: &str, on_line: impl FnMut(&str)) -> Result<Vec<u8>> {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let tail = drain(child.stderr.take().expect("piped stderr"), on_line);
    let status = child
        .wait()
        .map_err(|e| anyhow!("waiting for `{line}`: {e}"))?;
    let out = out_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(line, status, &tail));
    }
    Ok(out)
}

/// A process watched while it runs (stdout discarded, stderr drained into a tail).
pub struct Running {
    child: Child,
    line: String,
    stderr: Option<JoinHandle<Vec<String>>>,
}

/// Starts a command that the caller watches and stops ([`Running::try_wait`], [`Running::stop`]).
pub fn spawn(mut cmd: Command) -> Result<Running> {
    let (mut child, line) = start(&mut cmd, Stdio::null())?;
    let err = child.stderr.take().expect("piped stderr");
    let stderr = Some(std::thread::spawn(move || drain(err, |_| {})));
    Ok(Running {
        child,
        line,
        stderr,
    })
}

impl Running {
    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| anyhow!("watching `{}`: {e}", self.line))
    }

    /// The error for a process that ended by itself when it should not have: the command line,
    /// its status and the tail of its stderr.
    pub fn ended_early(mut self, status: ExitStatus) -> anyhow::Error {
        let tail = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        failed(&self.line, status, &tail)
    }

    /// Kills the process and reaps it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a tool running behind an error.
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_that_is_not_utf8_is_drained_and_reported() {
        let mut c = Command::new("sh");
        // Far more than a pipe buffer of non-UTF-8 bytes, then a failure.
        c.args([
            "-c",
            "head -c 300000 /dev/zero | tr '\\0' '\\377' >&2; echo; echo last words >&2; exit 3",
        ]);
        let e = run(c, |_| {}).unwrap_err().to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("last words"), "{e}");
        assert!(e.len() < 20_000, "the tail is bounded: {} bytes", e.len());
    }

    #[test]
    fn output_returns_stdout_and_names_a_missing_tool() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo hello"]);
        assert_eq!(output(c).unwrap(), b"hello\n");
        let e = output(Command::new("no-such-tool-here")).unwrap_err();
        assert!(e.to_string().contains("not installed"), "{e}");
    }

    #[test]
    fn a_watched_process_reports_its_stderr_when_it_ends_early() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'qemu: cannot open' >&2; exit 1"]);
        let mut r = spawn(c).unwrap();
        let status = loop {
            if let Some(s) = r.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let e = r.ended_early(status).to_string();
        assert!(e.contains("cannot open"), "{e}");
    }
}
