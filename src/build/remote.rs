//! # The remote layer cache: `build --cache-from REF --cache-to REF`
//!
//! A registry repository (`REF` = `REGISTRY/REPO`) holds, append-only, one tag per key:
//! ```text
//! REPO:k-<layer key>    OCI artifact manifest, artifactType application/vnd.strata.layer-cache.v1
//!                       config = the layer's facts (digest, diff_id, sizes, media type, entries,
//!                       packages, private-key flag: application/vnd.strata.layer-facts.v1+json)
//!                       layers = [the layer blob]
//! REPO:b-<base key>     artifactType application/vnd.strata.base-facts.v1, no layers
//!                       config = what planning needs of a mmdebstrap or tarball base without its
//!                       root filesystem: its identity (the rootfs SHA-256 every key on it
//!                       derives from), package list, account files and Java homes
//! ```
//! Keys are hashes of a layer's inputs (64 hex digits, see `plan`): they carry no secret. The
//! accounts layer's key hashes its files' content hashes, the private key's among them when the
//! image carries it (a hash of a hash: nothing to recover); delivered at boot, nothing of the
//! private key enters it. Both manifests are canonical JSON of their content only, so runners
//! pushing one key at once PUT the same bytes; a tag that exists is never written again (it is
//! HEADed first), and there is no shared document that runners read, modify and rewrite.
//!
//! **Reading** (`--cache-from`, repeatable, tried in order): the base's facts are looked up by
//! its key before anything is built, so a base whose root filesystem is not in the local cache is
//! not made (no mmdebstrap) unless a layer on it is in no cache. Each layer missing from the
//! local cache is looked up by its key; its facts and blob are fetched into the local cache as
//! if built there. Checks: the facts must describe the artifact's own layer descriptor; the blob
//! is verified while streaming (digest and size, nothing half-written); then it is decompressed
//! and its tar stream hashed: the diff_id and uncompressed size must equal the facts (the
//! image config lists the diff_ids, so a lie there would make images that `verify` refuses),
//! and the private-key flag is recomputed from the files. The package list, entry and byte
//! counts are taken as given. Whatever fails — an unreachable registry, a refusal, a corrupt
//! blob — is a warning: that layer is built here; a registry that cannot be reached or refuses
//! is not asked again during the build. A cache never fails a build.
//!
//! **Writing** (`--cache-to`, after the store is committed): every layer of the build the
//! repository has no tag for (blob, facts, then the tag last), then the base's facts. A layer
//! holding a private key is not written unless `--allow-private-key`. A blob fetched from a
//! `--cache-from` repository of the same registry is mounted, not sent. A failure here fails the
//! command (exit 1, or 6 refused) after the store was committed: the images are built, only the
//! cache is behind; a second run sends what is missing.
//!
//! **Trust**: a digest proves the bytes are the ones the artifact names, not who built them.
//! Whoever can push to the cache repository can put layers into every later build that reads
//! it: give CI write access, and developers read access only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};
use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use crate::cache::Cache;
use crate::layer::{self, compress::Compression};
use crate::oci::record::LayerFacts;
use crate::registry::manifest::{OCI_MANIFEST, artifact_manifest};
use crate::registry::reference::valid_tag;
use crate::registry::{BlobOutcome, BlobSource, Client, Reference, RegistryError, UploadOptions};
use crate::support::error::{BadInput, ChecksumMismatch};
use crate::support::fsx::TMP_PREFIX;
use crate::support::hash::{canonical_json, key_of, sha256_digest};
use crate::support::progress::Progress;
use crate::support::units::human;

use super::plan::{KnownBase, Plan, Producer, known_path};
use super::produce::cached_layer;

pub const LAYER_ARTIFACT: &str = "application/vnd.strata.layer-cache.v1";
pub const FACTS_MEDIA_TYPE: &str = "application/vnd.strata.layer-facts.v1+json";
pub const BASE_ARTIFACT: &str = "application/vnd.strata.base-facts.v1";
pub const BASE_MEDIA_TYPE: &str = "application/vnd.strata.base-facts.v1+json";

/// Bounds on the JSON blobs read from a cache (a layer's facts, a base's facts).
const MAX_FACTS: u64 = 1 << 20;
const MAX_BASE_FACTS: u64 = 32 << 20;

/// `--cache-from`, `--cache-to` and how to reach their registries.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    pub from: Vec<Reference>,
    pub to: Option<Reference>,
    pub registry: crate::registry::Options,
    /// Write layers that hold a private key to `to` too.
    pub allow_private_key: bool,
}

/// A cache reference: `REGISTRY/REPO`, no tag, no digest (bad input otherwise, exit 2).
pub fn parse_ref(flag: &str, s: &str) -> Result<Reference, BadInput> {
    let r: Reference = s
        .parse()
        .map_err(|e: BadInput| BadInput(format!("{flag}: {}", e.0)))?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(BadInput(format!(
            "{flag} {s:?}: a layer cache is a repository, REGISTRY/REPO without :TAG or @DIGEST \
             (strata names its entries itself), e.g. {}",
            r.repo_name()
        )));
    }
    Ok(r)
}

/// `k-<key>`: the tag of a layer's entry (a key that is not a valid tag is hashed).
pub fn layer_tag(key: &str) -> String {
    tag("k", key)
}

/// `b-<key>`: the tag of a base's facts.
pub fn base_tag(key: &str) -> String {
    tag("b", key)
}

fn tag(prefix: &str, key: &str) -> String {
    let t = format!("{prefix}-{key}");
    if valid_tag(&t) {
        t
    } else {
        format!("{prefix}-{}", key_of(&key))
    }
}

/// What `--cache-to` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CachePush {
    #[serde(rename = "ref")]
    pub reference: String,
    /// Layer entries written.
    pub layers_pushed: usize,
    /// Layer entries the repository had already.
    pub layers_present: usize,
    /// Layers that hold a private key, not written (no `--allow-private-key`).
    pub skipped_private_key: Vec<String>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub bytes_sent: u64,
    /// `pushed` or `present`; absent for an OCI base (its layers are local inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_facts: Option<&'static str>,
    /// Why the cache is behind (the command then fails, after the store was committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One cache repository and its client.
struct Repo {
    reference: Reference,
    client: Client,
    /// Unreachable or refusing: not asked again.
    off: AtomicBool,
}

/// The remote caches of one build.
pub(crate) struct Remote<'p> {
    from: Vec<Repo>,
    to: Option<Repo>,
    allow_private_key: bool,
    progress: &'p Progress,
    warnings: Mutex<Vec<String>>,
}

impl<'p> Remote<'p> {
    pub fn open(opts: &RemoteOptions, progress: &'p Progress) -> Result<Remote<'p>> {
        // Reading a cache must not hold a build up for long: fewer retries.
        let read_opts = crate::registry::Options {
            retries: opts.registry.retries.min(1),
            ..opts.registry.clone()
        };
        let repo = |r: &Reference, o: &crate::registry::Options| -> Result<Repo> {
            Ok(Repo {
                reference: r.clone(),
                client: Client::new(&r.registry, o, progress)?,
                off: AtomicBool::new(false),
            })
        };
        Ok(Remote {
            from: opts
                .from
                .iter()
                .map(|r| repo(r, &read_opts))
                .collect::<Result<_>>()?,
            to: opts
                .to
                .as_ref()
                .map(|r| repo(r, &opts.registry))
                .transpose()?,
            allow_private_key: opts.allow_private_key,
            progress,
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// The warnings so far (for the report).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("warnings").clone()
    }

    fn warn(&self, msg: String) {
        self.progress.say(format!("warning: {msg}"));
        self.warnings.lock().expect("warnings").push(msg);
    }

    /// A read that failed: a warning; an unreachable or refusing registry is not asked again.
    fn failed(&self, repo: &Repo, what: &str, e: &anyhow::Error) {
        let give_up = e.chain().any(|c| match c.downcast_ref::<RegistryError>() {
            Some(RegistryError::Unreachable { .. }) => true,
            Some(r) => r.refused(),
            None => false,
        });
        let mut msg = format!(
            "remote cache {}: {what}: {e:#}; built here instead",
            repo.reference.repo_name()
        );
        if give_up && !repo.off.swap(true, Ordering::SeqCst) {
            msg.push_str(" (this cache is not asked again during this build)");
        }
        self.warn(msg);
    }

    fn active(&self) -> impl Iterator<Item = &Repo> {
        self.from.iter().filter(|r| !r.off.load(Ordering::SeqCst))
    }

    /// The facts of the base with input key `key`, from the first cache that has them;
    /// remembered in the local cache (`known.json`).
    pub fn base_facts(&self, key: &str, cache: &Cache) -> Option<KnownBase> {
        for repo in self.active() {
            match self.try_base(repo, key, cache) {
                Ok(Some(k)) => {
                    self.progress.say(format!(
                        "base: its facts from the remote cache {} (its root filesystem is made \
                         only if a layer on it is in no cache)",
                        repo.reference.repo_name()
                    ));
                    return Some(k);
                }
                Ok(None) => {}
                Err(e) => self.failed(repo, "the base's facts", &e),
            }
        }
        None
    }

    fn try_base(&self, repo: &Repo, key: &str, cache: &Cache) -> Result<Option<KnownBase>> {
        let name = &repo.reference.repository;
        let Some(m) = repo.client.get_manifest(name, &base_tag(key))? else {
            return Ok(None);
        };
        let (config, _) = artifact_parts(&m.bytes, BASE_ARTIFACT, BASE_MEDIA_TYPE, 0)?;
        let tmp = temp_dir(cache)?;
        let k: KnownBase = fetch_json(&repo.client, name, &config, tmp.path(), MAX_BASE_FACTS)?;
        ensure!(
            k.key == key,
            "the entry {} names base {}, not {key}",
            base_tag(key),
            k.key
        );
        if cache.writable() {
            cache.write_json(&known_path(cache, key), &k)?;
        }
        Ok(Some(k))
    }

    /// Fetches every needed layer the local cache lacks and a cache has; returns, by layer
    /// key, the repository each came from.
    pub fn fetch_missing(&self, plan: &Plan, cache: &Cache) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        if self.from.is_empty() {
            return Ok(out);
        }
        for idx in plan.needed() {
            let pl = &plan.layers[idx];
            if matches!(pl.producer, Producer::Imported(..) | Producer::Pending(..))
                || cached_layer(cache, &pl.key, &pl.name, self.progress)?.is_some()
            {
                continue;
            }
            for repo in self.active() {
                match self.try_layer(repo, &pl.key, &pl.name, cache) {
                    Ok(true) => {
                        out.insert(pl.key.clone(), repo.reference.repo_name());
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => self.failed(repo, &format!("layer {}", pl.name), &e),
                }
            }
        }
        Ok(out)
    }

    /// One layer's entry into the local cache (false: the repository has no entry for `key`).
    fn try_layer(&self, repo: &Repo, key: &str, name: &str, cache: &Cache) -> Result<bool> {
        let repository = &repo.reference.repository;
        let Some(m) = repo.client.get_manifest(repository, &layer_tag(key))? else {
            return Ok(false);
        };
        let (config, layers) = artifact_parts(&m.bytes, LAYER_ARTIFACT, FACTS_MEDIA_TYPE, 1)?;
        let desc = &layers[0];
        let tmp = temp_dir(cache)?;
        let mut facts: LayerFacts =
            fetch_json(&repo.client, repository, &config, tmp.path(), MAX_FACTS)?;
        ensure!(
            facts.digest == *desc.digest()
                && facts.size == desc.size()
                && facts.media_type == *desc.media_type(),
            "the entry's facts ({} bytes, {}) do not describe its layer ({} bytes, {})",
            facts.size,
            facts.digest,
            desc.size(),
            desc.digest()
        );
        let blob = cache.blob_dir().join(facts.digest.digest());
        let fetched = !cache.blob_is(&blob, &facts.digest)?;
        if fetched {
            if std::fs::symlink_metadata(&blob).is_ok() {
                crate::support::fsx::remove_file(&blob)?;
            }
            let task = self.progress.task(
                format!(
                    "layer {name}: from the remote cache {}",
                    repo.reference.repo_name()
                ),
                Some(facts.size),
            );
            let got = AtomicU64::new(0);
            let res = repo.client.fetch_blob(
                repository,
                &facts.digest,
                facts.size,
                &cache.blob_dir(),
                &got,
            );
            task.finish(match &res {
                Ok(_) => human(facts.size),
                Err(_) => "refused".into(),
            });
            res?;
        }
        match scan_layer(&blob, &facts) {
            Ok(has_key) => facts.private_key |= has_key,
            Err(e) => {
                if fetched {
                    let _ = std::fs::remove_file(&blob);
                }
                return Err(e);
            }
        }
        cache.remember(&blob, facts.digest.digest())?;
        cache.write_json(&cache.layer_record_path(key), &facts)?;
        if !fetched {
            self.progress.say(format!(
                "layer {name}: its facts from the remote cache {}, its blob already here",
                repo.reference.repo_name()
            ));
        }
        Ok(true)
    }

    /// `--cache-to`: writes what the repository lacks. None without `--cache-to`; otherwise the
    /// report and, when the cache could not be written, why.
    pub fn push(
        &self,
        plan: &Plan,
        built: &HashMap<usize, (LayerFacts, PathBuf)>,
        origins: &HashMap<String, String>,
        cache: &Cache,
    ) -> Option<(CachePush, Option<anyhow::Error>)> {
        let to = self.to.as_ref()?;
        let mut rep = CachePush {
            reference: to.reference.repo_name(),
            ..CachePush::default()
        };
        let res = self.push_all(to, plan, built, origins, cache, &mut rep);
        let err = res.err().map(|e| {
            e.context(format!(
                "--cache-to {}: the images are built and in the store, but the cache is \
                 behind; run the build again to send what is missing",
                to.reference.repo_name()
            ))
        });
        rep.error = err.as_ref().map(|e| format!("{e:#}"));
        let mut msg = format!(
            "remote cache {}: {} layers written, {} there already",
            rep.reference, rep.layers_pushed, rep.layers_present
        );
        if let Some(b) = rep.base_facts {
            msg.push_str(&format!(", base facts {b}"));
        }
        self.progress.say(msg);
        Some((rep, err))
    }

    fn push_all(
        &self,
        to: &Repo,
        plan: &Plan,
        built: &HashMap<usize, (LayerFacts, PathBuf)>,
        origins: &HashMap<String, String>,
        cache: &Cache,
        rep: &mut CachePush,
    ) -> Result<()> {
        let repository = &to.reference.repository;
        let tmp = temp_dir(cache)?;
        let up = UploadOptions::default();
        let mut done = HashSet::new();
        for idx in plan.needed() {
            let pl = &plan.layers[idx];
            if matches!(pl.producer, Producer::Imported(..)) || !done.insert(&pl.key) {
                continue;
            }
            let (facts, blob) = &built[&idx];
            if facts.private_key && !self.allow_private_key {
                self.progress.say(format!(
                    "remote cache {}: layer {} holds a private key: not written \
                     (--allow-private-key writes it)",
                    rep.reference, pl.name
                ));
                rep.skipped_private_key.push(pl.name.clone());
                continue;
            }
            let tag = layer_tag(&pl.key);
            if to.client.head_manifest(repository, &tag)?.is_some() {
                rep.layers_present += 1;
                continue;
            }
            let mount_from = origins
                .get(&pl.key)
                .and_then(|from| from.split_once('/'))
                .filter(|(reg, repo)| *reg == to.reference.registry && *repo != repository)
                .map(|(_, repo)| repo);
            let outcome = to.client.push_blob(
                repository,
                &BlobSource {
                    digest: &facts.digest,
                    size: facts.size,
                    path: blob,
                    mount_from,
                },
                &up,
            )?;
            match outcome {
                BlobOutcome::Uploaded => {
                    rep.blobs_uploaded += 1;
                    rep.bytes_sent += facts.size;
                }
                BlobOutcome::Mounted => rep.blobs_mounted += 1,
                BlobOutcome::Present => {}
            }
            let config = push_json(&to.client, repository, FACTS_MEDIA_TYPE, facts, tmp.path())?;
            let layer = Descriptor::new(facts.media_type.clone(), facts.size, facts.digest.clone());
            let m = artifact_manifest(LAYER_ARTIFACT, &config, &[layer], None, &BTreeMap::new())?;
            to.client.put_manifest(repository, &tag, OCI_MANIFEST, &m)?;
            rep.layers_pushed += 1;
        }
        // The base's facts last: a runner that finds them finds the layers on the base too.
        if let Some(k) = &plan.base_facts {
            let tag = base_tag(&k.key);
            if to.client.head_manifest(repository, &tag)?.is_some() {
                rep.base_facts = Some("present");
            } else {
                let config = push_json(&to.client, repository, BASE_MEDIA_TYPE, k, tmp.path())?;
                let m = artifact_manifest(BASE_ARTIFACT, &config, &[], None, &BTreeMap::new())?;
                to.client.put_manifest(repository, &tag, OCI_MANIFEST, &m)?;
                rep.base_facts = Some("pushed");
            }
        }
        Ok(())
    }
}

/// A temp directory in the cache (the same file system as its blobs), removed on drop.
fn temp_dir(cache: &Cache) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(&cache.root)
        .with_context(|| format!("creating a temp directory in {}", cache.root.display()))
}

/// The config and layers of an artifact manifest of `artifact_type`, checked.
fn artifact_parts(
    bytes: &[u8],
    artifact_type: &str,
    config_type: &str,
    layers: usize,
) -> Result<(Descriptor, Vec<Descriptor>)> {
    let m: ImageManifest =
        serde_json::from_slice(bytes).context("the entry is not an OCI image manifest")?;
    let found = m.artifact_type().as_ref().map(MediaType::to_string);
    ensure!(
        found.as_deref() == Some(artifact_type)
            && m.config().media_type().to_string() == config_type
            && m.layers().len() == layers,
        "the entry is not a strata cache entry ({artifact_type} with a {config_type} config and \
         {layers} layer(s)): artifactType {found:?}, {} layer(s)",
        m.layers().len()
    );
    Ok((m.config().clone(), m.layers().clone()))
}

/// Downloads a small JSON blob (verified) and parses it.
fn fetch_json<T: DeserializeOwned>(
    client: &Client,
    repository: &str,
    desc: &Descriptor,
    dir: &Path,
    max: u64,
) -> Result<T> {
    ensure!(
        desc.size() <= max,
        "the entry's config is {} bytes, more than the {max} a cache entry holds",
        desc.size()
    );
    let got = AtomicU64::new(0);
    let path = client.fetch_blob(repository, desc.digest(), desc.size(), dir, &got)?;
    serde_json::from_slice(&crate::support::fsx::read(&path)?).with_context(|| {
        format!(
            "the entry's config {} is not what strata wrote",
            desc.digest()
        )
    })
}

/// Uploads `v` as a canonical JSON blob of `media_type`; returns its descriptor.
fn push_json<T: Serialize>(
    client: &Client,
    repository: &str,
    media_type: &str,
    v: &T,
    dir: &Path,
) -> Result<Descriptor> {
    let bytes = canonical_json(v)?;
    let digest = crate::support::hash::sha256_of(&bytes);
    let path = dir.join(digest.digest());
    crate::support::fsx::write(&path, &bytes)?;
    client.push_blob(
        repository,
        &BlobSource {
            digest: &digest,
            size: bytes.len() as u64,
            path: &path,
            mount_from: None,
        },
        &UploadOptions::default(),
    )?;
    Ok(Descriptor::new(
        MediaType::Other(media_type.into()),
        bytes.len() as u64,
        digest,
    ))
}

/// Hashes (SHA-256) and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Decompresses a fetched layer blob: its tar stream must hash to the facts' diff_id and have
/// their uncompressed size. Returns whether a file holds a private key (as a build decides it:
/// a regular file under 64 KiB with a PEM private key marker).
fn scan_layer(blob: &Path, facts: &LayerFacts) -> Result<bool> {
    const MARK: &[u8] = b"PRIVATE KEY-----";
    let f = std::io::BufReader::with_capacity(1 << 20, crate::support::fsx::open(blob)?);
    let mut r = Hashing {
        inner: Compression::reader_for(&facts.media_type, f)?,
        hasher: Sha256::new(),
        n: 0,
    };
    let mut key = false;
    let what = || format!("reading the layer {} from the remote cache", facts.digest);
    layer::for_each_in_tar(&mut r, |_, h, data| {
        if h.entry_type().is_file() && h.size()? < 64 * 1024 {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf)?;
            key |= buf.windows(MARK.len()).any(|w| w == MARK);
        }
        Ok(())
    })
    .with_context(what)?;
    io::copy(&mut r, &mut io::sink()).with_context(what)?;
    let diff_id = sha256_digest(&r.hasher.finalize().into());
    if diff_id != facts.diff_id || r.n != facts.uncompressed_size {
        return Err(ChecksumMismatch {
            what: format!(
                "the uncompressed tar of layer {} from the remote cache",
                facts.digest
            ),
            algorithm: "sha256",
            expected: format!("{} ({} bytes)", facts.diff_id, facts.uncompressed_size),
            found: format!("{diff_id} ({} bytes)", r.n),
        }
        .into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip layer of `files` in `dir`, and its true facts.
    fn layer_blob(dir: &Path, files: &[(&str, &str)]) -> (PathBuf, LayerFacts) {
        use std::io::Write;
        let entries: Vec<layer::Entry> = files
            .iter()
            .map(|(p, c)| layer::Entry::file(p, layer::Content::bytes(c.as_bytes()), 0o600, 0, 0))
            .collect();
        let mut tar = Vec::new();
        let stats = layer::write_tar(&entries, 1_700_000_000, &mut tar).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let path = dir.join("blob");
        std::fs::write(&path, &blob).unwrap();
        let facts = LayerFacts {
            digest: crate::support::hash::sha256_of(&blob),
            diff_id: crate::support::hash::sha256_of(&tar),
            size: blob.len() as u64,
            uncompressed_size: tar.len() as u64,
            media_type: MediaType::ImageLayerGzip,
            entries: stats.entries,
            file_bytes: stats.file_bytes,
            packages: vec![],
            private_key: false,
        };
        (path, facts)
    }

    #[test]
    fn a_fetched_layer_must_have_its_diff_id_and_its_key_flag_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let (blob, facts) = layer_blob(dir.path(), &[("etc/motd", "hello\n")]);
        assert!(!scan_layer(&blob, &facts).unwrap());
        let mut lying = facts.clone();
        lying.diff_id = crate::support::hash::sha256_of(b"another tar");
        let e = scan_layer(&blob, &lying).unwrap_err();
        assert!(e.downcast_ref::<ChecksumMismatch>().is_some(), "{e:#}");
        let mut lying = facts.clone();
        lying.uncompressed_size += 512;
        assert!(scan_layer(&blob, &lying).is_err());
        // Facts that say "no key" for a layer holding one are corrected.
        let pem = concat!("-----BEGIN OPENSSH ", "PRIVATE KEY-----\nxx\n");
        let (blob, facts) = layer_blob(dir.path(), &[("home/u/.ssh/id_ed25519", pem)]);
        assert!(!facts.private_key);
        assert!(scan_layer(&blob, &facts).unwrap());
    }

    #[test]
    fn tags_are_valid_and_refs_are_repositories() {
        let key = "ab".repeat(32);
        assert_eq!(layer_tag(&key), format!("k-{key}"));
        assert!(valid_tag(&layer_tag(&key)));
        let odd = "not a/tag".repeat(20);
        assert!(valid_tag(&base_tag(&odd)));
        assert_eq!(base_tag(&odd), base_tag(&odd));
        assert!(parse_ref("--cache-from", "127.0.0.1:5000/strata-cache").is_ok());
        for bad in [
            "127.0.0.1:5000/c:latest",
            "h:1/Upper",
            "",
            "h:1/c@sha256:00",
        ] {
            let e = parse_ref("--cache-to", bad).unwrap_err().0;
            assert!(e.starts_with("--cache-to"), "{bad}: {e}");
        }
    }
}
