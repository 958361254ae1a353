//! # ls, inspect, diff: what the store holds, read without a lock

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::layer::compress::Compression;
use crate::layer::for_each_in_tar;
use crate::oci::image::{ANNOTATION_LAYER_NAME, LABEL_PRIVATE_KEY, LABEL_SSH_DELIVER, entry_name};
use crate::oci::store::Store;
use crate::oci::view::View;
use crate::support::hash::hash_reader;

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
    /// Built with `[ssh] deliver = "boot"`: the private key is installed at boot.
    pub keys_at_boot: bool,
}

pub fn ls(root: &Path) -> Result<Vec<LsRow>> {
    let v = View::open(root)?;
    let mut rows = Vec::new();
    for d in v.index.manifests() {
        let name = entry_name(d);
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
            keys_at_boot: rec.is_some_and(|r| r.keys_at_boot),
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
    /// The config's `io.strata.ssh.deliver` is `boot`: the private key is installed at boot.
    pub keys_at_boot: bool,
    pub layers: Vec<InspectLayer>,
    pub packages: Vec<(String, String)>,
    /// Where this image was published (`strata publish`), oldest first.
    pub publications: Vec<crate::oci::disks::Publication>,
    /// The last `strata run --smoke` of this very build (None: never run on it).
    pub smoke: Option<crate::oci::smoke::SmokeRecord>,
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
        let oname = entry_name(other);
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
                        .and_then(|a| a.get(ANNOTATION_LAYER_NAME))
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
        carries_private_key: labels.get(LABEL_PRIVATE_KEY).is_some_and(|v| v == "true"),
        keys_at_boot: labels.get(LABEL_SSH_DELIVER).is_some_and(|v| v == "boot"),
        labels,
        env: c.env().clone().unwrap_or_default(),
        cmd: c.cmd().clone(),
        layers,
        packages,
        publications: crate::oci::disks::read_publications(root)?
            .into_iter()
            .filter(|p| p.image == name)
            .collect(),
        smoke: crate::oci::smoke::current(root, &name, d.digest()),
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
