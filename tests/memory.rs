//! Heap use of the embedding path, counted by this binary's global allocator: a task's
//! pooled vectors must be built once, where they are kept, not captured and then copied
//! for each request. Alone in its binary so that no other test's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::embeddings::pool::{Pool, Pooled, PooledCapture};
use harness::embeddings::session::{Session, SessionOptions};

/// The system allocator, keeping the bytes in use now and their highest mark.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // The old and new blocks may both exist during the move: count the new one
            // before releasing the old.
            grew(new_size);
            IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The highest number of heap bytes in use while `f` ran, above what was in use
/// before it, and its result.
fn peak_during<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let base = IN_USE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (PEAK.load(Ordering::SeqCst) - base, r)
}

#[test]
fn pooled_vectors_are_held_once_and_land_in_the_right_rows() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let model = harness::model::source::load(&dir.display().to_string()).unwrap();
    let opts = SessionOptions {
        use_cache: false,
        quiet: true,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, opts).unwrap();
    // Many short texts, so the vectors dwarf every per-text cost and one batch's
    // activations; every pooling, a repeated text and a reordered subset, as the
    // requests of several tasks give.
    let texts: Vec<String> = (0..6000).map(|i| format!("review {i} was fine")).collect();
    let mut all = texts.clone();
    all.push(texts[7].clone());
    let part: Vec<String> = texts.iter().rev().step_by(2).cloned().collect();
    let requests = vec![
        (all.clone(), Pool::Mean),
        (all.clone(), Pool::MeanSkipFirst),
        (all.clone(), Pool::First),
        (part, Pool::Last),
    ];
    let cfg = &model.model.config;
    let (depth, hidden) = (cfg.num_layers, cfg.hidden_size);
    let rows: usize = requests.iter().map(|(t, _)| t.len()).sum();
    let kept = rows * (depth + 1) * hidden * std::mem::size_of::<f32>();

    let borrowed: Vec<(&[String], Pool)> = requests.iter().map(|(t, p)| (&t[..], *p)).collect();
    let (peak, done) = peak_during(|| session.prefetch(&borrowed));
    done.unwrap();
    // Token ids, the texts' index and one batch's activations come to about a third
    // of the vectors here; a second copy of the vectors would at least double them.
    assert!(
        peak < kept * 3 / 2,
        "embedding {kept} bytes of vectors peaked at {peak} bytes of heap"
    );

    // The same pass over the distinct texts, every pooling, one row per text.
    let seqs = session.encode(&texts).unwrap();
    let mut plain = PooledCapture::new(&Pool::ALL, texts.len(), depth, hidden);
    session.run_capture(&seqs, &mut plain, "embed").unwrap();
    let plain: HashMap<Pool, Pooled> = plain.into_pooled().into_iter().collect();
    let position: HashMap<&str, usize> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    for (texts, pool) in &requests {
        let got = session.embeddings(texts, *pool).unwrap();
        let rows: Vec<usize> = texts.iter().map(|t| position[t.as_str()]).collect();
        assert!(
            got.data == plain[pool].select(&rows).data,
            "{pool} vectors are not those of their texts"
        );
    }
}
