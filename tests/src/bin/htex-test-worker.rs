//! A worker built the way users build theirs: the stock built-ins plus functions of its own.

use std::time::Duration;

use htex_worker::Registry;

fn main() {
    let mut registry = Registry::with_builtins();
    // Writes the worker's pid to a file, then sleeps: lets a test find and kill a busy worker.
    registry.register("pid_then_sleep", |(path, ms): (String, u64)| {
        std::fs::write(&path, std::process::id().to_string()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    });
    registry.register("pid", |()| Ok::<_, String>(std::process::id()));
    registry.register("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
    if let Err(e) = htex_worker::serve(&registry) {
        eprintln!("htex-test-worker: {e}");
        std::process::exit(1);
    }
}
