//! # Entry points for the fuzz targets (`fuzz/`): every reader of untrusted bytes
//!
//! Each function takes the bytes as a user or a hostile file would give them, runs the same code
//! strata runs on them, and checks what must hold whatever the input: errors are fine, panics,
//! hangs and results that break the store's rules are not. The fuzz targets call these (and
//! only these), so the module stays the one list of what is fuzzed.
//!
//! Not part of strata's interface: hidden from the docs, stable only for `fuzz/`.

use std::path::Path;
use std::sync::OnceLock;

use oci_spec::image::{Digest, MediaType};

use crate::layer::{TarPolicy, check_relative};
use crate::recipe::hadoop::Catalogue;

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        Catalogue::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("hadoop-versions"))
            .expect("the repository's catalogue loads")
    })
}

/// A recipe: parsed, then validated against a project root that does not exist (validation
/// must not need one). A recipe that validates has a name usable as an image name.
pub fn recipe(src: &str) {
    let file = Path::new("recipes/fuzz.toml");
    let Ok(raw) = crate::recipe::parse(file, src) else {
        return;
    };
    let root = Path::new("/nonexistent/strata-fuzz");
    if let Ok(r) = crate::recipe::validate(file, src, &raw, root, catalogue()) {
        assert!(!r.name.is_empty() && !r.name.contains('/'));
        assert!(!r.versions.is_empty());
    }
}

/// A layer directory holding only `layer.toml` = `src` (in `dir`, reused between runs):
/// rendered as a shared layer. Every entry it yields has a clean relative path.
pub fn layer_toml(dir: &Path, src: &str) {
    std::fs::write(dir.join("layer.toml"), src).expect("writing layer.toml");
    let cx = crate::source::render::Context {
        recipe: serde_json::json!({"name": "fuzz", "epoch": 1}),
        user: crate::recipe::User {
            name: "hadoop".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/hadoop".into(),
            shell: "/bin/bash".into(),
            reuse_existing: false,
        },
        hadoop: None,
        jdk: None,
        vars: serde_json::json!({}),
    };
    if let Ok(entries) = crate::source::render::render_dir(dir, &cx)
        && let Ok(entries) = crate::layer::normalize(entries)
    {
        for e in &entries {
            assert!(check_relative(&e.path).is_ok(), "{:?}", e.path);
        }
    }
}

/// A tarball (written to `path`), read as a release tarball and as a root filesystem. What is
/// accepted has clean relative paths, and a release tarball yields no device and no set-id file.
pub fn tarball(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("writing the tarball");
    for foreign in [true, false] {
        let policy = TarPolicy {
            allow_devices: !foreign,
            allow_setid: !foreign,
        };
        let Ok(entries) = crate::layer::read_tar_file(path, policy) else {
            continue;
        };
        for e in &entries {
            assert!(check_relative(&e.path).is_ok(), "{:?}", e.path);
            if foreign {
                assert!(e.mode & 0o6000 == 0 || !matches!(e.kind, crate::layer::Kind::File(_)));
                assert!(!matches!(
                    e.kind,
                    crate::layer::Kind::Char(..)
                        | crate::layer::Kind::Block(..)
                        | crate::layer::Kind::Fifo
                ));
            }
        }
        // What was accepted packs into a layer.
        if let Ok(entries) = crate::layer::normalize(entries) {
            let _ = crate::layer::write_tar(&entries, 1, &mut std::io::sink());
        }
    }
}

/// An OCI layer blob (written to `path`) of each media type strata reads, listed as `inspect`
/// and the advice do.
pub fn layer_blob(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("writing the blob");
    for mt in [
        MediaType::ImageLayer,
        MediaType::ImageLayerGzip,
        MediaType::ImageLayerZstd,
    ] {
        let _ = crate::layer::blob_files(path, &mt, true);
    }
}

/// The store record blob.
pub fn store_record(data: &[u8]) {
    let digest: Digest = crate::support::hash::sha256_of(data);
    let _ = crate::oci::record::StoreRecord::parse(data, &digest);
}

/// A store whose `index.json` is `data` (in `dir`, reused between runs): opened as every command
/// opens it, an image looked up, the reachable blobs listed.
pub fn store_index(dir: &Path, data: &[u8]) {
    std::fs::write(
        dir.join(crate::oci::store::OCI_LAYOUT),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("writing oci-layout");
    std::fs::create_dir_all(dir.join(crate::oci::store::BLOBS)).expect("blobs dir");
    std::fs::write(dir.join(crate::oci::store::INDEX_JSON), data).expect("writing index.json");
    if let Ok(store) = crate::oci::store::Store::open(dir)
        && let Ok(index) = store.read_index()
    {
        let _ = store.reachable(&index);
        let _ = store.read_record(&index);
    }
    if let Ok(view) = crate::oci::view::View::open(dir) {
        let _ = view.find("fuzz:3.3.6");
        let _ = view.find("3.3.6");
    }
}
