//! # Reading a store: ls, inspect, diff, verify, gc, export
//!
//! Readers take no lock: they read `index.json` once (it is replaced atomically) and follow it.
//! `gc` takes the store's lock, like `build`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndexBuilder, ImageManifest, MediaType,
};
use serde::Serialize;

use crate::BadInput;
use crate::compress::Compression;
use crate::layer::for_each_in_tar;
use crate::oci::split_name;
use crate::store::{ImageRecord, LayerRecord, Store, StoreRecord, TMP_PREFIX, hash_reader};

/// `verify` found problems.
#[derive(Debug, thiserror::Error)]
#[error("the store is damaged: {} problem(s); first: {}", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
pub struct Damaged(pub Vec<String>);

/// An opened store with its index and record.
pub struct View {
    pub store: Store,
    pub index: oci_spec::image::ImageIndex,
    pub record: StoreRecord,
}

impl View {
    pub fn open(root: &Path) -> Result<View> {
        let store = Store::open(root)?;
        let index = store.read_index()?;
        let record = store.read_record(&index)?;
        Ok(View {
            store,
            index,
            record,
        })
    }

    fn entry_name(d: &Descriptor) -> String {
        crate::oci::entry_name(d)
    }

    /// Finds an image by full name, by tag when unambiguous, or by manifest digest.
    pub fn find(&self, query: &str) -> Result<(String, Descriptor)> {
        let all: Vec<(String, &Descriptor)> = self
            .index
            .manifests()
            .iter()
            .map(|d| (Self::entry_name(d), d))
            .collect();
        let hits: Vec<&(String, &Descriptor)> = all
            .iter()
            .filter(|(n, d)| {
                n == query
                    || split_name(n).1 == query
                    || d.digest().to_string() == query
                    || d.digest()
                        .digest()
                        .starts_with(query.trim_start_matches("sha256:"))
                        && query.len() >= 12
            })
            .collect();
        match hits.as_slice() {
            [(n, d)] => Ok((n.clone(), (*d).clone())),
            [] => {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                let hint = crate::recipe::nearest(query, &names)
                    .map(|n| format!(" Did you mean {n}?"))
                    .unwrap_or_default();
                Err(BadInput(format!(
                    "no image {query:?} in {}; it holds: {}.{hint}",
                    self.store.root.display(),
                    names.join(", ")
                ))
                .into())
            }
            many => Err(BadInput(format!(
                "{query:?} matches several images: {}",
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    pub fn manifest(&self, d: &Descriptor) -> Result<ImageManifest> {
        self.store.read_manifest(d.digest())
    }

    pub fn config(&self, m: &ImageManifest) -> Result<ImageConfiguration> {
        let data = self.store.read_blob(m.config().digest())?;
        serde_json::from_slice(&data)
            .with_context(|| format!("parsing config {}", m.config().digest()))
    }

    fn image_record(&self, name: &str) -> Option<&ImageRecord> {
        self.record.images.iter().find(|i| i.name == name)
    }

    fn layer_record(&self, digest: &Digest) -> Option<&LayerRecord> {
        self.record.layers.get(&digest.to_string())
    }
}

// ----------------------------------------------------------------------------------------- ls

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LsRow {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub uncompressed_size: Option<u64>,
    pub layers: usize,
    pub hadoop_version: Option<String>,
    pub jdk: Option<String>,
    pub carries_private_key: bool,
}

pub fn ls(root: &Path) -> Result<Vec<LsRow>> {
    let v = View::open(root)?;
    let mut rows = Vec::new();
    for d in v.index.manifests() {
        let name = View::entry_name(d);
        let m = v.manifest(d)?;
        let rec = v.image_record(&name);
        let unc: Option<u64> = m
            .layers()
            .iter()
            .map(|l| v.layer_record(l.digest()).map(|r| r.uncompressed_size))
            .sum();
        rows.push(LsRow {
            name: name.clone(),
            digest: d.digest().to_string(),
            size: m.layers().iter().map(|l| l.size()).sum::<u64>() + m.config().size(),
            uncompressed_size: unc,
            layers: m.layers().len(),
            hadoop_version: rec.and_then(|r| r.hadoop_version.clone()),
            jdk: rec.and_then(|r| r.jdk.clone()),
            carries_private_key: rec.is_some_and(|r| r.carries_private_key),
        });
    }
    Ok(rows)
}

// ------------------------------------------------------------------------------------ inspect

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Inspection {
    pub name: String,
    pub manifest: String,
    pub config: String,
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub carries_private_key: bool,
    pub layers: Vec<InspectLayer>,
    pub packages: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InspectLayer {
    pub name: Option<String>,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub uncompressed_size: Option<u64>,
    pub media_type: String,
    /// Other images of the store that carry this same blob.
    pub shared_with: Vec<String>,
    pub packages: usize,
}

pub fn inspect(root: &Path, image: &str) -> Result<Inspection> {
    let v = View::open(root)?;
    let (name, d) = v.find(image)?;
    let m = v.manifest(&d)?;
    let cfg = v.config(&m)?;
    // Which images use each blob.
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    for other in v.index.manifests() {
        let oname = View::entry_name(other);
        if oname == name {
            continue;
        }
        for l in v.manifest(other)?.layers() {
            users
                .entry(l.digest().to_string())
                .or_default()
                .push(oname.clone());
        }
    }
    let mut packages = Vec::new();
    let layers = m
        .layers()
        .iter()
        .zip(cfg.rootfs().diff_ids())
        .map(|(l, diff)| {
            let rec = v.layer_record(l.digest());
            if let Some(r) = rec {
                packages.extend(r.packages.iter().cloned());
            }
            InspectLayer {
                name: rec.map(|r| r.name.clone()).or_else(|| {
                    l.annotations()
                        .as_ref()
                        .and_then(|a| a.get(crate::oci::ANNOTATION_LAYER_NAME))
                        .cloned()
                }),
                digest: l.digest().to_string(),
                diff_id: diff.clone(),
                size: l.size(),
                uncompressed_size: rec.map(|r| r.uncompressed_size),
                media_type: l.media_type().to_string(),
                shared_with: users.remove(&l.digest().to_string()).unwrap_or_default(),
                packages: rec.map(|r| r.packages.len()).unwrap_or(0),
            }
        })
        .collect();
    let c = cfg.config().clone().unwrap_or_default();
    let labels: BTreeMap<String, String> =
        c.labels().clone().unwrap_or_default().into_iter().collect();
    packages.sort();
    packages.dedup_by(|a, b| a.0 == b.0);
    Ok(Inspection {
        name: name.clone(),
        manifest: d.digest().to_string(),
        config: m.config().digest().to_string(),
        created: cfg.created().clone(),
        carries_private_key: labels
            .get(crate::oci::LABEL_PRIVATE_KEY)
            .is_some_and(|v| v == "true"),
        labels,
        env: c.env().clone().unwrap_or_default(),
        cmd: c.cmd().clone(),
        layers,
        packages,
    })
}

// --------------------------------------------------------------------------------------- diff

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub layers: Vec<LayerDiff>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LayerDiff {
    pub position: usize,
    pub a: Option<String>,
    pub b: Option<String>,
    /// Same blob in both images.
    pub shared: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// The regular files of a layer blob with their sizes (and content hashes when asked), for advice.
pub fn blob_files(
    blob: &Path,
    media_type: &str,
    hash: bool,
) -> Result<Vec<crate::policy::FileInfo>> {
    let f = std::io::BufReader::new(
        std::fs::File::open(blob).with_context(|| format!("opening {}", blob.display()))?,
    );
    let r = Compression::reader_for(&MediaType::from(media_type), f)?;
    let mut out = Vec::new();
    for_each_in_tar(r, |p, h, data| {
        if h.entry_type().is_file() {
            let sha256 = if hash {
                use sha2::Digest as _;
                let mut hs = sha2::Sha256::new();
                std::io::copy(data, &mut hs)?;
                Some(hs.finalize().into())
            } else {
                None
            };
            out.push(crate::policy::FileInfo {
                path: p.to_string(),
                size: h.size()?,
                sha256,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// path → a description of metadata and content hash.
fn layer_files(store: &Store, l: &Descriptor) -> Result<BTreeMap<String, String>> {
    let f = std::io::BufReader::new(store.open_blob(l.digest())?);
    let r = Compression::reader_for(l.media_type(), f)?;
    let mut out = BTreeMap::new();
    for_each_in_tar(r, |p, h, data| {
        let (d, n) = hash_reader(data)?;
        let link = h
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        out.insert(
            p.to_string(),
            format!(
                "{:?} {:o} {}:{} {n} {} {link}",
                h.entry_type(),
                h.mode()?,
                h.uid()?,
                h.gid()?,
                d.digest()
            ),
        );
        Ok(())
    })?;
    Ok(out)
}

pub fn diff(root: &Path, a: &str, b: &str) -> Result<DiffReport> {
    let v = View::open(root)?;
    let (an, ad) = v.find(a)?;
    let (bn, bd) = v.find(b)?;
    let am = v.manifest(&ad)?;
    let bm = v.manifest(&bd)?;
    let name_of = |l: &Descriptor| {
        v.layer_record(l.digest())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| l.digest().to_string())
    };
    let n = am.layers().len().max(bm.layers().len());
    let mut layers = Vec::new();
    for i in 0..n {
        let la = am.layers().get(i);
        let lb = bm.layers().get(i);
        let shared = matches!((la, lb), (Some(x), Some(y)) if x.digest() == y.digest());
        let (mut added, mut removed, mut changed) = (vec![], vec![], vec![]);
        if !shared {
            let fa = la
                .map(|l| layer_files(&v.store, l))
                .transpose()?
                .unwrap_or_default();
            let fb = lb
                .map(|l| layer_files(&v.store, l))
                .transpose()?
                .unwrap_or_default();
            for (p, da) in &fa {
                match fb.get(p) {
                    None => removed.push(p.clone()),
                    Some(db) if db != da => changed.push(p.clone()),
                    _ => {}
                }
            }
            added = fb
                .keys()
                .filter(|p| !fa.contains_key(*p))
                .cloned()
                .collect();
        }
        layers.push(LayerDiff {
            position: i,
            a: la.map(name_of),
            b: lb.map(name_of),
            shared,
            added,
            removed,
            changed,
        });
    }
    Ok(DiffReport {
        a: an,
        b: bn,
        layers,
    })
}

// ------------------------------------------------------------------------------------- verify

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    pub images: usize,
    pub layers_decompressed: usize,
    pub temp_files: usize,
    pub unreferenced_blobs: usize,
    pub problems: Vec<String>,
}

/// Re-hashes every blob, checks every manifest, config and diff_id.
pub fn verify(root: &Path) -> Result<VerifyReport> {
    let store = Store::open(root)?;
    let mut rep = VerifyReport::default();
    let mut present = BTreeSet::new();
    for e in std::fs::read_dir(store.blob_dir())? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            rep.temp_files += 1;
            continue;
        }
        let (d, n) = hash_reader(std::io::BufReader::new(std::fs::File::open(e.path())?))?;
        rep.blobs += 1;
        rep.bytes += n;
        if d.digest() != name {
            rep.problems
                .push(format!("blob {name} has digest {d} (corrupt)"));
        }
        present.insert(name);
    }
    let index = match store.read_index() {
        Ok(i) => i,
        Err(e) => {
            rep.problems.push(format!("index.json: {e:#}"));
            return finish(rep);
        }
    };
    let mut checked_layers: HashMap<String, Digest> = HashMap::new();
    let check_blob = |rep: &mut VerifyReport, what: &str, d: &Descriptor| -> bool {
        let p = store.blob_path(d.digest());
        match std::fs::metadata(&p) {
            Err(_) => {
                rep.problems
                    .push(format!("{what}: blob {} is missing", d.digest()));
                false
            }
            Ok(m) if m.len() != d.size() => {
                rep.problems.push(format!(
                    "{what}: blob {} is {} bytes, descriptor says {}",
                    d.digest(),
                    m.len(),
                    d.size()
                ));
                false
            }
            Ok(_) => true,
        }
    };
    if let Some(r) = index
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::store::ANNOTATION_RECORD))
    {
        let ok = r
            .parse::<Digest>()
            .ok()
            .is_some_and(|d| present.contains(d.digest()));
        if !ok {
            rep.problems
                .push(format!("the store record {r} is missing"));
        }
    }
    for d in index.manifests() {
        let name = View::entry_name(d);
        rep.images += 1;
        if !check_blob(&mut rep, &name, d) {
            continue;
        }
        let m: ImageManifest = match store.read_manifest(d.digest()) {
            Ok(m) => m,
            Err(e) => {
                rep.problems.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        if !check_blob(&mut rep, &format!("{name} config"), m.config()) {
            continue;
        }
        let cfg: ImageConfiguration = match store
            .read_blob(m.config().digest())
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(c) => c,
            Err(e) => {
                rep.problems.push(format!("{name} config: {e:#}"));
                continue;
            }
        };
        if cfg.rootfs().diff_ids().len() != m.layers().len() {
            rep.problems.push(format!(
                "{name}: {} layers but {} diff_ids",
                m.layers().len(),
                cfg.rootfs().diff_ids().len()
            ));
            continue;
        }
        for (l, want) in m.layers().iter().zip(cfg.rootfs().diff_ids()) {
            if !check_blob(&mut rep, &format!("{name} layer"), l) {
                continue;
            }
            let key = l.digest().to_string();
            let got = match checked_layers.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let f = std::io::BufReader::new(store.open_blob(l.digest())?);
                    let d = Compression::reader_for(l.media_type(), f)
                        .and_then(hash_reader)
                        .map(|(d, _)| d)
                        .with_context(|| format!("decompressing layer {key}"));
                    match d {
                        Ok(d) => {
                            rep.layers_decompressed += 1;
                            checked_layers.insert(key.clone(), d.clone());
                            d
                        }
                        Err(e) => {
                            rep.problems.push(format!("{name}: layer {key}: {e:#}"));
                            continue;
                        }
                    }
                }
            };
            if got.to_string() != *want {
                rep.problems.push(format!(
                    "{name}: layer {key} has diff_id {got}, config says {want}"
                ));
            }
        }
    }
    if let Ok(reach) = store.reachable(&index) {
        rep.unreferenced_blobs = present.iter().filter(|p| !reach.contains(*p)).count();
    }
    finish(rep)
}

fn finish(rep: VerifyReport) -> Result<VerifyReport> {
    Ok(rep)
}

/// Turns a report with problems into the error that sets the exit code.
pub fn damaged(rep: &VerifyReport) -> Result<()> {
    if rep.problems.is_empty() {
        Ok(())
    } else {
        Err(Damaged(rep.problems.clone()).into())
    }
}

// ----------------------------------------------------------------------------------------- gc

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GcReport {
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub removed_temp_files: u64,
    pub kept_blobs: usize,
    pub dry_run: bool,
}

/// Removes blobs the index does not reach, and temp files of interrupted writes.
pub fn gc(root: &Path, dry_run: bool) -> Result<GcReport> {
    let store = Store::open(root)?;
    let _lock = store.lock(|| {
        eprintln!(
            "waiting for another strata process to finish with {}",
            root.display()
        )
    })?;
    let index = store.read_index()?;
    let reach = store.reachable(&index)?;
    let mut rep = GcReport {
        removed_blobs: 0,
        removed_bytes: 0,
        removed_temp_files: 0,
        kept_blobs: 0,
        dry_run,
    };
    for (name, size) in store.blob_names()? {
        if reach.contains(&name) {
            rep.kept_blobs += 1;
            continue;
        }
        rep.removed_blobs += 1;
        rep.removed_bytes += size;
        if !dry_run {
            std::fs::remove_file(store.blob_dir().join(&name))?;
        }
    }
    if !dry_run {
        rep.removed_temp_files = store.clean_temp()?;
    }
    Ok(rep)
}

// ------------------------------------------------------------------------------------- export

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExportReport {
    pub file: PathBuf,
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

/// Docker's `manifest.json` entry (written beside the OCI layout so `docker load` of Docker
/// 20.10, which cannot read a pure OCI archive, loads the archive too).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes the chosen images (all when none is named) as one tar: an OCI image layout plus
/// Docker's `manifest.json`. Deterministic: the same images give the same archive bytes.
pub fn export_oci_archive(root: &Path, images: &[String], file: &Path) -> Result<ExportReport> {
    let v = View::open(root)?;
    let chosen: Vec<(String, Descriptor)> = if images.is_empty() {
        v.index
            .manifests()
            .iter()
            .map(|d| (View::entry_name(d), d.clone()))
            .collect()
    } else {
        images.iter().map(|q| v.find(q)).collect::<Result<_>>()?
    };
    let mut blobs: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut docker = Vec::new();
    for (name, d) in &chosen {
        let m = v.manifest(d)?;
        blobs.insert((d.digest().digest().to_string(), d.size()));
        blobs.insert((m.config().digest().digest().to_string(), m.config().size()));
        for l in m.layers() {
            blobs.insert((l.digest().digest().to_string(), l.size()));
        }
        docker.push(DockerManifest {
            config: format!("blobs/sha256/{}", m.config().digest().digest()),
            repo_tags: vec![name.clone()],
            layers: m
                .layers()
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest().digest()))
                .collect(),
        });
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(chosen.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>())
        .build()?;
    let epoch = v
        .record
        .recipes
        .values()
        .filter_map(|r| r.get("epoch").and_then(|e| e.as_u64()))
        .max()
        .unwrap_or(0);
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)?;
    let mut bytes = 0;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let mut b = tar::Builder::new(&mut out);
        let add = |b: &mut tar::Builder<_>,
                   path: &str,
                   data: &mut dyn Read,
                   size: u64,
                   dir: bool|
         -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_path(path)?;
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_size(size);
            h.set_mtime(epoch);
            h.set_cksum();
            b.append(&h, data)?;
            Ok(())
        };
        let docker_json = serde_json::to_vec(&docker)?;
        let index_json = crate::store::canonical_json(&index)?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(&mut b, "blobs/", &mut std::io::empty(), 0, true)?;
        add(&mut b, "blobs/sha256/", &mut std::io::empty(), 0, true)?;
        for (hex, size) in &blobs {
            let d: Digest = format!("sha256:{hex}").parse()?;
            let mut f = v.store.open_blob(&d)?;
            add(&mut b, &format!("blobs/sha256/{hex}"), &mut f, *size, false)?;
            bytes += size;
        }
        add(
            &mut b,
            "index.json",
            &mut &index_json[..],
            index_json.len() as u64,
            false,
        )?;
        add(
            &mut b,
            "manifest.json",
            &mut &docker_json[..],
            docker_json.len() as u64,
            false,
        )?;
        add(
            &mut b,
            "oci-layout",
            &mut &layout[..],
            layout.len() as u64,
            false,
        )?;
        b.finish()?;
        drop(b);
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(ExportReport {
        file: file.to_path_buf(),
        images: chosen.into_iter().map(|(n, _)| n).collect(),
        blobs: blobs.len(),
        bytes,
    })
}

/// Fails unless `names` are images of the store (for commands that take several).
pub fn check_images(root: &Path, names: &[String]) -> Result<()> {
    let v = View::open(root)?;
    for n in names {
        v.find(n)?;
    }
    if names.is_empty() && v.index.manifests().is_empty() {
        bail!("{} holds no image", root.display());
    }
    Ok(())
}
