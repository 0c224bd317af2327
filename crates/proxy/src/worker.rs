//! Which data-plane worker a thread is: per-worker state such as the upstream pools is indexed
//! by it.

thread_local! {
    /// 1 + the index of the data-plane worker running on this thread; 0 on any other thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Which data-plane worker this thread is (1-based), or 0 when it is not one. Per-worker state
/// such as the upstream pools is indexed by it.
pub(crate) fn worker_index() -> usize {
    WORKER.with(|w| w.get())
}

/// Marks this thread as data-plane worker `index` (1-based).
pub(crate) fn enter(index: usize) {
    WORKER.with(|w| w.set(index));
}
