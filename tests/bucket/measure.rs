//! Numbers, not assertions about speed (benchmarks never gate `cargo test`): run with
//! `cargo test --test tests bucket_measure -- --ignored --nocapture`. Uploads a few
//! thousand small files through the module, then times a no-op pass's quick check (LIST +
//! manifest) against one HEAD per object.

use std::time::Instant;

use replicad::bucket::Known;

use super::{connect, mirror_tree};
use crate::support::Tree;
use crate::support::garage::Garage;

#[test]
#[ignore = "a measurement; run by hand"]
fn bucket_measure_quick_check_against_heads() {
    let Some(g) = Garage::start("bucket_measure_quick_check_against_heads") else { return };
    const FILES: usize = 2_000;
    let t = Tree::new();
    for i in 0..FILES {
        t.file(format!("d{:02}/f{i:05}", i % 20), vec![b'x'; (i * 37) % 4096]);
    }
    let b = connect(&g, "measure");

    let started = Instant::now();
    mirror_tree(&b, t.src());
    let upload = started.elapsed();

    let started = Instant::now();
    let mut m = b.load_manifest().unwrap();
    let listing = b.list().unwrap();
    let mut remembered = 0;
    for o in &listing.objects {
        if matches!(b.attrs(&o.listed, &mut m).unwrap(), Known::Remembered(_)) {
            remembered += 1;
        }
    }
    let quick = started.elapsed();
    assert_eq!(remembered, listing.objects.len(), "a no-op pass needs no HEAD");

    let started = Instant::now();
    for o in &listing.objects {
        b.head(&o.listed.key).unwrap();
    }
    let heads = started.elapsed();

    let ms_precision =
        listing.objects.iter().filter(|o| o.listed.last_modified_ns % 1_000_000_000 != 0).count();
    eprintln!(
        "{} objects: sequential upload {upload:.2?} ({:.1} ms/object); no-op quick check \
         (GET manifest + LIST + manifest) {quick:.2?}; one HEAD per object {heads:.2?} ({:.1}x); \
         {ms_precision} Last-Modified values with sub-second digits",
        listing.objects.len(),
        upload.as_secs_f64() * 1e3 / listing.objects.len() as f64,
        heads.as_secs_f64() / quick.as_secs_f64(),
    );
}
