//! What the micro-benchmarks of this folder share.

use std::time::Instant;

/// Time `f` over `iters` calls (after a tenth as many to warm up) and print the mean and the
/// throughput over `bytes`. `f` returns something derived from its work, so that the optimiser
/// cannot drop it. A first command-line argument runs only the lines whose name contains it.
pub fn time(name: &str, bytes: usize, iters: u32, mut f: impl FnMut() -> usize) {
    if std::env::args()
        .nth(1)
        .is_some_and(|filter| !name.contains(&filter))
    {
        return;
    }
    let mut sink = 0;
    for _ in 0..iters / 10 {
        sink += f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        sink += f();
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(iters);
    println!(
        "{name:<34} {bytes:>7} B  {ns:>10.0} ns  {:>6.2} GB/s  (check {})",
        bytes as f64 / ns,
        sink % 7
    );
}
