//! Property tests: the path normalizer and the tar writer's determinism, over generated inputs
//! (proptest; 256 cases each by default, `PROPTEST_CASES=10000` for a longer run).

use proptest::prelude::*;
use strata::layer::{Content, Entry, Kind, TarPolicy, check_relative, clean_tar_path, normalize};

/// Path components from a small alphabet, so that `.`, `..`, empty parts and repeats happen.
fn raw_path() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        "[a-c]{1,3}",
        "[a-z0-9._ -]{1,12}",
    ];
    (
        any::<bool>(),
        prop::collection::vec(comp, 0..6),
        any::<bool>(),
    )
        .prop_map(|(lead, parts, trail)| {
            let mut s = if lead { "/".to_string() } else { String::new() };
            s.push_str(&parts.join("/"));
            if trail {
                s.push('/');
            }
            s
        })
}

proptest! {
    /// What the normalizer accepts is a clean relative layer path, and normalizing it again
    /// changes nothing; what it refuses had `..` or was absolute.
    #[test]
    fn clean_tar_path_gives_clean_paths_or_refuses(raw in raw_path()) {
        match clean_tar_path(&raw) {
            Ok(Some(p)) => {
                prop_assert!(check_relative(&p).is_ok(), "{raw:?} -> {p:?}");
                prop_assert_eq!(clean_tar_path(&p).unwrap(), Some(p.clone()));
                prop_assert!(!raw.starts_with('/'));
            }
            Ok(None) => prop_assert!(raw.split('/').all(|c| c.is_empty() || c == ".")),
            Err(_) => prop_assert!(raw.starts_with('/') || raw.split('/').any(|c| c == "..")),
        }
    }
}

/// A set of layer entries: files with contents, modes and owners, and symlinks, at distinct
/// paths under a few directories.
fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let one = (
        "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..3000).prop_map(Some),
            Just(None)
        ],
        prop_oneof![Just(0o644u32), Just(0o755), Just(0o600), Just(0o4755)],
        0u32..3,
    );
    prop::collection::btree_map("[a-c]{1,2}(/[a-c]{1,2}){0,2}", one, 1..12).prop_map(|m| {
        // A path that is also another's parent must be a directory: keep the deepest.
        let keys: Vec<String> = m.keys().cloned().collect();
        m.into_iter()
            .filter(|(p, _)| !keys.iter().any(|k| k.starts_with(&format!("{p}/"))))
            .map(|(path, (target, data, mode, owner))| match data {
                Some(d) => Entry::file(&path, Content::bytes(d), mode, owner, owner),
                None => Entry::symlink(&path, &target),
            })
            .collect()
    })
}

fn tar_of(entries: Vec<Entry>, epoch: u64) -> Vec<u8> {
    let mut out = Vec::new();
    strata::layer::write_tar(&normalize(entries).unwrap(), epoch, &mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same entries give the same tar bytes whatever order they come in, every time; and
    /// the tar reads back to the same paths, kinds and modes.
    #[test]
    fn the_tar_writer_is_deterministic(es in entries(), seed in any::<u64>(), epoch in 0u64..4_000_000_000) {
        let mut shuffled = es.clone();
        // A deterministic shuffle from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let a = tar_of(es.clone(), epoch);
        prop_assert_eq!(&a, &tar_of(shuffled, epoch));
        prop_assert_eq!(&a, &tar_of(es.clone(), epoch));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.tar");
        std::fs::write(&f, &a).unwrap();
        let back = strata::layer::read_tar_file(&f, TarPolicy { allow_devices: true, allow_setid: true }).unwrap();
        let want = normalize(es).unwrap();
        prop_assert_eq!(back.len(), want.len());
        for (b, w) in back.iter().zip(&want) {
            prop_assert_eq!(&b.path, &w.path);
            prop_assert_eq!(b.mode, w.mode);
            prop_assert_eq!((b.uid, b.gid), (w.uid, w.gid));
            match (&b.kind, &w.kind) {
                (Kind::File(x), Kind::File(y)) => prop_assert_eq!(x.read_all().unwrap(), y.read_all().unwrap()),
                (Kind::Symlink(x), Kind::Symlink(y)) => prop_assert_eq!(x, y),
                (Kind::Dir, Kind::Dir) => {}
                (x, y) => prop_assert!(false, "{} read back as {:?}, written as {:?}", b.path, x, y),
            }
        }
    }
}
