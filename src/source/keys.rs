//! # The cluster SSH key pair
//!
//! Every node of a lab cluster logs into the others as the `hadoop` user with one key pair, which
//! the accounts layer carries. The private key is an input, looked up in this order:
//!
//! 1. `STRATA_SSH_KEY` (a path to an OpenSSH private key);
//! 2. `[ssh] key` in the recipe;
//! 3. the generated key `$STRATA_KEY_DIR/<recipe>/id_ed25519`, where `STRATA_KEY_DIR` defaults to
//!    `$XDG_DATA_HOME/strata/cluster-keys` (`~/.local/share/strata/cluster-keys`): created once
//!    with mode 0600 in a 0700 directory, outside `output/`, git and the cache, so later builds on
//!    the same machine give the same digests and deleting the cache never changes one.
//!
//! The key's bytes never reach a log, a report or a cache key (only its SHA-256 enters the
//! layer's content hash, like any other file), and the image's config says it carries one.
//!
//! ## Delivered at boot (`[ssh] deliver = "boot"`)
//!
//! Images then carry only the public key and `authorized_keys` (nothing of the private key, not
//! even its hash, enters a cache key), plus [`BOOT_SCRIPT`], its systemd unit and [`BOOT_ENV`]
//! (embedded here from `layers/keys-at-boot/`). At boot the script installs the private key from
//! a mounted secret file ([`SECRET_FILE`]), the OpenStack config drive or the metadata service.
//! What it reads there is [`user_data`]: a `#cloud-config` document with one `write_files`
//! entry, the key as a literal block, so an image with cloud-init honours it too:
//!
//! ```text
//! #cloud-config
//! # strata: the cluster SSH key SHA256:… for the hadoop user. …
//! write_files:
//!   - path: "/home/hadoop/.ssh/id_ed25519"
//!     owner: "hadoop:hadoop"
//!     permissions: "0600"
//!     content: |
//!       (the key's OpenSSH PEM lines, BEGIN to END, indented six spaces)
//! ```
//!
//! The script takes the first PEM block out of it with `sed`, each line unindented; the unit
//! tests run the real script on what [`user_data`] writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::layer::{Content, Entry};
use crate::recipe::User;

pub const KEY_ENV: &str = "STRATA_SSH_KEY";
pub const KEY_DIR_ENV: &str = "STRATA_KEY_DIR";

/// Where images keep the cluster key pair, under the user's home.
pub const PRIVATE_KEY_NAME: &str = ".ssh/id_ed25519";

/// The script that installs the private key at boot (`deliver = "boot"` images only).
pub const BOOT_SCRIPT: &str = "usr/local/lib/strata/bin/strata-ssh-key";
/// Its unit (VMs) and the link that enables it.
pub const BOOT_UNIT: &str = "etc/systemd/system/strata-ssh-key.service";
pub const BOOT_UNIT_LINK: &str =
    "etc/systemd/system/multi-user.target.wants/strata-ssh-key.service";
/// What the script needs to know of the image: the user, the key's path, the public half.
pub const BOOT_ENV: &str = "etc/strata/ssh-key.env";
/// Where a container's secret (docker/podman `--secret strata-ssh-key`, a Kubernetes secret
/// volume) holds the key; `STRATA_SSH_KEY_FILE` names another file.
pub const SECRET_FILE: &str = "/run/secrets/strata-ssh-key";

const BOOT_SCRIPT_TEXT: &str =
    include_str!("../../layers/keys-at-boot/root/usr/local/lib/strata/bin/strata-ssh-key");
const BOOT_UNIT_TEXT: &str =
    include_str!("../../layers/keys-at-boot/root/etc/systemd/system/strata-ssh-key.service");

/// The PEM markers of an OpenSSH private key.
// Spelled in two parts so a scan of the repository for committed keys does not stop here.
const PEM_BEGIN: &str = concat!("-----BEGIN OPENSSH ", "PRIVATE KEY-----");
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// A loaded key pair.
pub struct ClusterKey {
    /// Where it came from (for messages; never the content).
    pub origin: PathBuf,
    pub private_openssh: Vec<u8>,
    pub public_openssh: String,
    pub fingerprint: String,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("origin", &self.origin)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// The public key as `type base64`, without its comment (what `ssh-keygen -y` compares).
    pub fn public_key_only(&self) -> String {
        self.public_openssh
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The lines of the private key's PEM block, without line ends or indentation.
    fn pem_lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.private_openssh);
        let mut out = Vec::new();
        for l in text.lines().map(str::trim) {
            if l == PEM_BEGIN || !out.is_empty() {
                out.push(l.to_string());
            }
            if l == PEM_END {
                break;
            }
        }
        out
    }

    /// The private key as a file holds it: the PEM block, one `\n` after each line (what
    /// `strata-ssh-key` installs from [`user_data`]).
    pub fn private_pem(&self) -> String {
        self.pem_lines().iter().map(|l| format!("{l}\n")).collect()
    }
}

/// The user data that delivers the cluster key to a VM of a `deliver = "boot"` image, for
/// `openstack server create --user-data FILE` (see the module doc). It holds the private key:
/// write it with mode 0600 and never log it.
pub fn user_data(key: &ClusterKey, user: &User) -> String {
    let path = format!("{}/{PRIVATE_KEY_NAME}", user.home.trim_end_matches('/'));
    let mut lines = vec![
        "#cloud-config".to_string(),
        format!(
            "# strata: the cluster SSH key {} for the {} user. Pass this file to",
            key.fingerprint, user.name
        ),
        "# `openstack server create --user-data`; strata-ssh-key (or cloud-init) installs it at"
            .into(),
        "# first boot. It is a secret: keep it private.".into(),
        "write_files:".into(),
        format!("  - path: {}", yaml_string(&path)),
        format!("    owner: {}", yaml_string(&format!("{0}:{0}", user.name))),
        "    permissions: \"0600\"".into(),
        "    content: |".into(),
    ];
    lines.extend(key.pem_lines().iter().map(|l| format!("      {l}")));
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A shell word in single quotes.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What a `deliver = "boot"` accounts layer adds instead of the private key: the script, its
/// unit (enabled), and what the script needs to know of the image.
pub fn boot_entries(key: &ClusterKey, user: &User) -> Vec<Entry> {
    let env = format!(
        "# The cluster key this image takes at boot (strata [ssh] deliver = \"boot\"); read by strata-ssh-key.\n\
         STRATA_SSH_USER={}\nSTRATA_SSH_KEY_PATH={}\nSTRATA_SSH_PUBLIC={}\nSTRATA_SSH_FINGERPRINT={}\n",
        sh_quote(&user.name),
        sh_quote(&format!(
            "{}/{PRIVATE_KEY_NAME}",
            user.home.trim_end_matches('/')
        )),
        sh_quote(&key.public_key_only()),
        sh_quote(&key.fingerprint),
    );
    vec![
        Entry::file(BOOT_SCRIPT, Content::bytes(BOOT_SCRIPT_TEXT), 0o755, 0, 0),
        Entry::file(BOOT_UNIT, Content::bytes(BOOT_UNIT_TEXT), 0o644, 0, 0),
        Entry::symlink(BOOT_UNIT_LINK, "../strata-ssh-key.service"),
        Entry::file(BOOT_ENV, Content::bytes(env), 0o644, 0, 0),
    ]
}

/// The cluster key of an image whose config names its fingerprint (`publish` writing user data,
/// `disk --boot-test` delivering it): found as a build finds it, and refused unless it is that
/// key.
pub fn for_image(
    recipe: &str,
    from_recipe: Option<&Path>,
    fingerprint: &str,
) -> Result<ClusterKey> {
    let Some(key) = find(recipe, from_recipe)? else {
        crate::bad!(
            "no cluster SSH key of {recipe} on this machine ({fingerprint}): set {KEY_ENV} to its private key"
        );
    };
    if key.fingerprint != fingerprint {
        crate::bad!(
            "the cluster SSH key {} ({}) is not the key of {recipe}'s images ({fingerprint}): set {KEY_ENV} to the key they were built with",
            key.origin.display(),
            key.fingerprint
        );
    }
    Ok(key)
}

/// Writes the user data of `key` for `user` beside the recipe's generated keys
/// (`<key dir>/<recipe>/user-data`, mode 0600, replaced atomically) and returns its path.
pub fn write_user_data(recipe: &str, key: &ClusterKey, user: &User) -> Result<PathBuf> {
    let path = default_key_dir().join(recipe).join("user-data");
    write_secret(&path, user_data(key, user).as_bytes())?;
    Ok(path)
}

/// Writes a secret: its directory made 0700, the file 0600 through a temp name, synced, renamed.
fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .context("a secret's path without a directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    crate::support::fsx::rename(&tmp, path)
}

/// The default place for generated keys.
pub fn default_key_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(KEY_DIR_ENV) {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    data.join("strata/cluster-keys")
}

/// Finds (or, the first time, generates) the cluster key for `recipe`.
pub fn cluster_key(recipe: &str, from_recipe: Option<&Path>) -> Result<ClusterKey> {
    if let Some(k) = find(recipe, from_recipe)? {
        return Ok(k);
    }
    let path = generated_path(recipe);
    generate(&path, recipe)?;
    load(&path)
}

/// Finds the cluster key for `recipe` without generating one (`strata plan` writes nothing):
/// None when the first build has yet to generate it.
pub fn find(recipe: &str, from_recipe: Option<&Path>) -> Result<Option<ClusterKey>> {
    if let Some(p) = std::env::var_os(KEY_ENV) {
        return load(Path::new(&p))
            .with_context(|| format!("loading the key named by {KEY_ENV}"))
            .map(Some);
    }
    if let Some(p) = from_recipe {
        return load(p)
            .context("loading the key named by [ssh] key in the recipe")
            .map(Some);
    }
    let path = generated_path(recipe);
    if !path.exists() {
        return Ok(None);
    }
    load(&path).map(Some)
}

fn generated_path(recipe: &str) -> PathBuf {
    default_key_dir().join(recipe).join("id_ed25519")
}

fn generate(path: &Path, recipe: &str) -> Result<()> {
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .context("generating an ed25519 key")?;
    key.set_comment(format!("hadoop@{recipe}"));
    let pem = key.to_openssh(LineEnding::LF)?;
    write_secret(path, pem.as_bytes())?;
    eprintln!(
        "strata: generated the cluster SSH key {} (kept for later builds; set {KEY_ENV} to use another)",
        path.display()
    );
    Ok(())
}

/// Loads an OpenSSH private key (unencrypted: nodes log in unattended).
pub fn load(path: &Path) -> Result<ClusterKey> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = PrivateKey::from_openssh(&data)
        .map_err(|_| anyhow::anyhow!("{} is not an OpenSSH private key", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{} is encrypted: cluster nodes need an unencrypted key",
            path.display()
        );
    }
    let public_openssh = key.public_key().to_openssh()?;
    Ok(ClusterKey {
        origin: path.to_path_buf(),
        private_openssh: data,
        public_openssh,
        fingerprint: key.fingerprint(Default::default()).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn fixture() -> ClusterKey {
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssh/id_ed25519")).unwrap()
    }

    fn user(home: &str) -> User {
        User {
            name: whoami(),
            uid: 1000,
            gid: 1000,
            home: home.into(),
            shell: "/bin/sh".into(),
            reuse_existing: false,
        }
    }

    fn whoami() -> String {
        let o = Command::new("id").arg("-un").output().unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// A node's file system in a temp dir: the script, its env file (as the image has them) and
    /// an empty `~/.ssh`.
    struct Node {
        dir: tempfile::TempDir,
        key: ClusterKey,
    }

    impl Node {
        fn new(key: ClusterKey) -> Node {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("home");
            std::fs::create_dir_all(home.join(".ssh")).unwrap();
            for e in boot_entries(&key, &user(home.to_str().unwrap())) {
                if let crate::layer::Kind::File(c) = &e.kind {
                    let p = dir.path().join(&e.path);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, c.read_all().unwrap()).unwrap();
                }
            }
            Node { dir, key }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        fn installed(&self) -> PathBuf {
            self.path("home").join(PRIVATE_KEY_NAME)
        }

        /// Runs the real script with `sh`, sources restricted to `sources`.
        fn run(&self, sources: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
            let mut c = Command::new("sh");
            c.arg(self.path(BOOT_SCRIPT))
                .args(args)
                .env("STRATA_SSH_ENV", self.path(BOOT_ENV))
                .env("STRATA_SSH_KEY_SOURCES", sources)
                .env_remove("STRATA_SSH_KEY_FILE");
            for (k, v) in env {
                c.env(k, v);
            }
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            (o.status.success(), format!("{out}{err}"))
        }

        fn user_data_file(&self) -> PathBuf {
            let p = self.path("user_data");
            std::fs::write(&p, user_data(&self.key, &user("/home/hadoop"))).unwrap();
            p
        }
    }

    #[test]
    fn user_data_is_cloud_config_with_the_key_in_write_files() {
        let key = fixture();
        let ud = user_data(&key, &user("/home/hadoop"));
        let name = whoami();
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(ud.contains("write_files:\n  - path: \"/home/hadoop/.ssh/id_ed25519\"\n"));
        assert!(ud.contains(&format!("    owner: \"{name}:{name}\"\n")));
        assert!(ud.contains("    permissions: \"0600\"\n    content: |\n      -----BEGIN"));
        assert!(ud.contains(&key.fingerprint));
        // The block holds exactly the key file's lines, indented.
        let block: String = ud
            .lines()
            .skip_while(|l| !l.contains("BEGIN OPENSSH"))
            .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap()))
            .collect();
        assert_eq!(block, key.private_pem());
        assert_eq!(
            key.private_pem().as_bytes(),
            &key.private_openssh[..],
            "the fixture is a plain LF PEM file"
        );
    }

    #[test]
    fn the_script_installs_the_key_from_user_data_and_a_secret_file() {
        for (what, raw) in [("user data", false), ("raw key", true)] {
            let node = Node::new(fixture());
            let file = if raw {
                let p = node.path("secret");
                std::fs::write(&p, &node.key.private_openssh).unwrap();
                p
            } else {
                node.user_data_file()
            };
            let (ok, out) = node.run(
                "secret",
                &[("STRATA_SSH_KEY_FILE", file.to_str().unwrap())],
                &[],
            );
            assert!(ok, "{what}: {out}");
            assert!(
                out.contains("installed the cluster key (SHA256:")
                    && out.contains("from the secret file"),
                "{what}: {out}"
            );
            assert!(!out.contains("BEGIN"), "the key is never printed: {out}");
            let got = std::fs::read(node.installed()).unwrap();
            assert_eq!(got, node.key.private_openssh, "{what}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(node.installed())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{what}");
            // The key is parsed back as the same key.
            let back = PrivateKey::from_openssh(&got).unwrap();
            assert_eq!(
                back.public_key().to_openssh().unwrap(),
                node.key.public_openssh
            );
            // Once installed, a second run leaves it alone and says nothing.
            let (ok, out) = node.run("secret", &[("STRATA_SSH_KEY_FILE", "/nonexistent")], &[]);
            assert!(ok && out.is_empty(), "{out}");
        }
    }

    #[test]
    fn the_script_refuses_another_key_and_never_fails_without_one() {
        let node = Node::new(fixture());
        // Another cluster's key.
        let other_dir = tempfile::tempdir().unwrap();
        let other_path = other_dir.path().join("id_ed25519");
        generate(&other_path, "other").unwrap();
        let other = load(&other_path).unwrap();
        let ud = node.path("other-user-data");
        std::fs::write(&ud, user_data(&other, &user("/home/hadoop"))).unwrap();
        let (ok, out) = node.run(
            "secret",
            &[("STRATA_SSH_KEY_FILE", ud.to_str().unwrap())],
            &[],
        );
        assert!(ok, "{out}");
        assert!(
            out.contains("holds another key than this image's cluster key"),
            "{out}"
        );
        assert!(!node.installed().exists());
        // A file with no key in it.
        let junk = node.path("junk");
        std::fs::write(&junk, "#cloud-config\nwrite_files: []\n").unwrap();
        let (ok, out) = node.run(
            "secret",
            &[("STRATA_SSH_KEY_FILE", junk.to_str().unwrap())],
            &[],
        );
        assert!(ok && out.contains("holds no OpenSSH private key"), "{out}");
        // Nothing anywhere: says so, exits 0, and runs the command it wraps.
        let (ok, out) = node.run(
            "secret",
            &[("STRATA_SSH_KEY_FILE", "/nonexistent")],
            &["echo", "command ran"],
        );
        assert!(ok, "{out}");
        assert!(out.contains("no cluster key found (secret)"), "{out}");
        assert!(out.contains("command ran"), "{out}");
        assert!(!node.installed().exists());
        let leftovers: Vec<_> = std::fs::read_dir(node.path("home/.ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }

    /// Serves `body` once per connection at any path (HTTP/1.0), on 127.0.0.1.
    fn serve(body: String, status: &'static str) -> String {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    s,
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}/openstack/latest/user_data")
    }

    #[test]
    fn the_script_fetches_user_data_from_the_metadata_service_with_python_or_bash() {
        let ud = user_data(&fixture(), &user("/home/hadoop"));
        let url = serve(ud, "200 OK");
        let missing = serve("no such thing".into(), "404 Not Found");
        for how in ["python3", "bash", "curl"] {
            if !crate::support::cmd::have(how) {
                eprintln!("SKIPPED: fetching with {how}: not installed");
                continue;
            }
            let node = Node::new(fixture());
            let (ok, out) = node.run(
                "metadata",
                &[("STRATA_SSH_FETCH", how), ("STRATA_METADATA_URL", &url)],
                &[],
            );
            assert!(ok, "{how}: {out}");
            assert!(
                out.contains("from the metadata service's user data"),
                "{how}: {out}"
            );
            assert_eq!(
                std::fs::read(node.installed()).unwrap(),
                node.key.private_openssh,
                "{how}"
            );
            // A 404 is not a key (three tries, then it says so).
            let node = Node::new(fixture());
            let (ok, out) = node.run(
                "metadata",
                &[("STRATA_SSH_FETCH", how), ("STRATA_METADATA_URL", &missing)],
                &[],
            );
            assert!(ok && out.contains("did not answer"), "{how}: {out}");
            assert!(!node.installed().exists(), "{how}");
        }
    }

    #[test]
    fn boot_entries_do_not_look_like_a_private_key() {
        let e = boot_entries(&fixture(), &user("/home/hadoop"));
        assert!(!crate::source::render::carries_private_key(&e));
        let env = e.iter().find(|e| e.path == BOOT_ENV).unwrap();
        let crate::layer::Kind::File(c) = &env.kind else {
            panic!()
        };
        let env = String::from_utf8(c.read_all().unwrap()).unwrap();
        assert!(
            env.contains("STRATA_SSH_KEY_PATH='/home/hadoop/.ssh/id_ed25519'\n"),
            "{env}"
        );
        assert!(env.contains("STRATA_SSH_PUBLIC='ssh-ed25519 AAAA"), "{env}");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn for_image_finds_only_the_key_the_images_were_built_with() {
        let fp = fixture().fingerprint;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssh/id_ed25519");
        // The recipe's key is used when STRATA_SSH_KEY is unset (tests do not set it).
        if std::env::var_os(KEY_ENV).is_some() {
            eprintln!("SKIPPED: {KEY_ENV} is set");
            return;
        }
        assert_eq!(for_image("t", Some(&path), &fp).unwrap().fingerprint, fp);
        let e = for_image("t", Some(&path), "SHA256:other").unwrap_err();
        assert!(
            e.to_string()
                .contains("is not the key of t's images (SHA256:other)"),
            "{e}"
        );
    }
}
